/**
 * Runs one message through a chain with no MTA and no sockets: the same Chain, the same
 * filters (sandboxed plugins included), the same validation and the same minimal action set
 * an MTA would get. Used by the plugin testing kit and by `milterd test`.
 * @module
 */
import { Chain, ChainRun, DEFAULT_CHAIN_DEFAULTS, type CallRecord, type Outcome } from '../chain/chain.ts';
import { BodyStore } from '../chain/content.ts';
import type { ChainEntry, ConnectionInfo, EnvelopeAddress, FilterAction, HeaderField } from '../chain/filter.ts';
import { diffToActions, headerValue, type MessageSnapshot, type WorkHeader } from '../chain/message.ts';
import { silentLogger, type Logger } from '../log.ts';
import type { MilterReply } from '../protocol/types.ts';
import { macroKey } from '../session/macros.ts';
import { parseEml } from './eml.ts';

/** A message to test with: an .eml, or headers and body; plus the envelope. */
export interface TestMessage {
  /** A raw message (headers, blank line, body). */
  readonly eml?: string | Uint8Array;
  /** Headers as `[name, value]` (used when there is no `eml`). */
  readonly headers?: ReadonlyArray<readonly [string, string]>;
  readonly body?: string | Uint8Array;
  /** Envelope sender; `<sender@example.org>` by default. Angle brackets are added if missing. */
  readonly from?: string;
  /** Envelope recipients; `<rcpt@example.net>` by default. */
  readonly rcpts?: readonly string[];
  readonly client?: { readonly hostname?: string; readonly address?: string; readonly port?: number; readonly helo?: string };
  /** Macros, e.g. `{ i: 'QUEUEID', '{auth_authen}': 'alice' }`. */
  readonly macros?: Readonly<Record<string, string>>;
}

/**
 * What one filter decided in one call. A sandboxed plugin's header, eoh and body hooks run
 * inside its end-of-message call (the SDK replays the message), so they show as its `eom` step.
 */
export interface TestStep {
  readonly filter: string;
  /** connect, helo, envfrom, envrcpt, data, unknown or eom. */
  readonly phase: string;
  /**
   * continue, accept, reject, tempfail, discard, or error: the call failed (threw, timed out,
   * a limit, or returned an invalid verdict or reply; `error` says which), and the filter's
   * failure policy applied.
   */
  readonly verdict: string;
  readonly reply?: string;
  readonly ms: number;
  readonly error?: { readonly code: string; readonly message: string };
  /** The entry is in shadow mode: this verdict (and its edits) were logged, not applied. */
  readonly shadow?: true;
}

/** The outcome of a test run. */
export interface TestResult {
  /** The message's final verdict. */
  readonly verdict: 'accept' | 'reject' | 'tempfail' | 'discard';
  /** The SMTP reply text a reject or tempfail carries, if a filter set one. */
  readonly reply: string | undefined;
  /** Where the verdict was reached. */
  readonly phase: string;
  /** Each recipient with its own verdict. */
  readonly rcpts: ReadonlyArray<{ readonly address: string; readonly verdict: string; readonly reply?: string }>;
  /** Every filter call, in order. */
  readonly steps: readonly TestStep[];
  /** The modifications the MTA would receive (SMFIR_* actions). */
  readonly actions: readonly MilterReply[];
  /** The message after all edits (when accepted). */
  readonly headers: readonly HeaderField[];
  readonly body: Uint8Array;
  readonly from: string;
  readonly finalRcpts: readonly string[];
  readonly quarantine: string | undefined;
}

const ALL_ACTIONS: ReadonlySet<FilterAction> = new Set([
  'addHeader', 'changeHeader', 'replaceBody', 'addRcpt', 'delRcpt', 'changeFrom', 'quarantine',
]);

const angle = (a: string): string => (a.startsWith('<') ? a : `<${a}>`);

function split(a: string): EnvelopeAddress {
  const [addr, ...args] = a.trim().split(/\s+/);
  return { address: angle(addr ?? ''), args };
}

/** A step of the report from the chain's own record of a call. */
function step(c: CallRecord): TestStep {
  const d = c.decision;
  return {
    filter: c.filter,
    phase: c.phase,
    verdict: d.ok ? d.verdict.type : 'error',
    ...(d.ok && 'reply' in d.verdict && d.verdict.reply !== undefined ? { reply: d.verdict.reply } : {}),
    ms: c.ms,
    ...(d.ok ? {} : { error: { code: d.error.code, message: d.error.message } }),
    ...(c.shadow ? { shadow: true as const } : {}),
  };
}

/** Runs `msg` through `entries` (in order) as an MTA would, and reports everything. */
export async function runMessage(entries: readonly ChainEntry[], msg: TestMessage, options: { logger?: Logger } = {}): Promise<TestResult> {
  const steps: TestStep[] = [];
  const chain = new Chain(entries, DEFAULT_CHAIN_DEFAULTS);
  const macros = new Map<string, string>(Object.entries(msg.macros ?? {}).map(([k, v]) => [macroKey(k), v]));
  const logger = options.logger ?? silentLogger();
  const c = msg.client ?? {};
  const connection: ConnectionInfo = {
    hostname: c.hostname ?? 'client.example.org',
    family: 'inet',
    address: c.address ?? '192.0.2.1',
    port: c.port ?? 40000,
    helo: c.helo ?? 'client.example.org',
  };
  const from = split(msg.from ?? '<sender@example.org>');
  const accepted: EnvelopeAddress[] = [];
  const run = new ChainRun(chain, {
    connection: () => connection,
    from: () => from,
    rcpts: () => accepted,
    getSymbol: (n) => macros.get(macroKey(n)),
    log: () => logger,
    negotiated: ALL_ACTIONS,
    addRcptArgs: true,
    bodyStore: { memoryLimit: 1 << 20 },
    onCall: (c) => steps.push(step(c)),
  });

  const parsed = msg.eml !== undefined ? parseEml(msg.eml) : undefined;
  const headerPairs = parsed?.headers ?? (msg.headers ?? [['Subject', ' test']]).map(([n, v]) => [n, v.startsWith(' ') || v.startsWith('\t') ? v : ` ${v}`] as const);
  const headers: WorkHeader[] = headerPairs.map(([name, raw], i) => ({ name, raw, value: headerValue(raw), orig: i }));
  const bodyBytes = parsed?.body ?? (typeof msg.body === 'string' ? new Uint8Array(Buffer.from(msg.body.replace(/\r?\n/g, '\r\n'))) : (msg.body ?? new Uint8Array()));

  const rcptResults: Array<{ address: string; verdict: string; reply?: string }> = [];
  const finish = async (verdict: TestResult['verdict'], phase: string, o?: Outcome, extra: Partial<TestResult> = {}): Promise<TestResult> => {
    await run.endMessage(verdict !== 'accept');
    await run.close();
    return {
      verdict,
      reply: o !== undefined && 'reply' in o ? o.reply : undefined,
      phase,
      rcpts: rcptResults,
      steps,
      actions: [],
      headers,
      body: bodyBytes,
      from: from.address,
      finalRcpts: accepted.map((r) => r.address),
      quarantine: undefined,
      ...extra,
    };
  };
  const ends = (o: Outcome): o is Extract<Outcome, { type: 'reject' | 'tempfail' | 'discard' }> =>
    o.type === 'reject' || o.type === 'tempfail' || o.type === 'discard';

  let o = await run.connect(connection);
  if (ends(o)) return finish(o.type, 'connect', o);
  o = await run.helo(connection.helo!);
  if (ends(o)) return finish(o.type, 'helo', o);
  o = await run.envfrom(from);
  if (ends(o)) return finish(o.type, 'envfrom', o);
  for (const r of msg.rcpts ?? ['<rcpt@example.net>']) {
    const rcpt = split(r);
    const v = await run.envrcpt(rcpt);
    if (v.type === 'discard') return finish('discard', 'envrcpt', v);
    rcptResults.push({ address: rcpt.address, verdict: v.type, ...('reply' in v && v.reply ? { reply: v.reply } : {}) });
    if (v.type === 'continue' || v.type === 'accept') accepted.push(rcpt);
  }
  if (accepted.length === 0) return finish('reject', 'envrcpt', { type: 'reject', reply: '554 5.5.1 No valid recipients' });
  o = await run.data();
  if (ends(o)) return finish(o.type, 'data', o);

  const body = BodyStore.from(bodyBytes, { memoryLimit: 1 << 30 });
  const base: MessageSnapshot = { headers, body, from, rcpts: accepted.slice(), quarantine: undefined };
  const e = await run.eom(base);
  if (e.type !== 'accept') return finish(e.type, 'eom', e as Outcome);
  const final = e.final;
  const actions = diffToActions(base, final, { leadingSpace: true });
  const finalBody = await final.body.read();
  if (final.body !== base.body) actions.push({ kind: 'replbody', chunk: finalBody });
  return finish('accept', 'eom', undefined, {
    actions,
    headers: final.headers.map(({ name, value, raw }) => ({ name, value, raw })),
    body: finalBody,
    from: final.from?.address ?? from.address,
    finalRcpts: final.rcpts.map((r) => r.address),
    quarantine: final.quarantine,
  });
}
