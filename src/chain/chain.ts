/**
 * Runs the filters of a chain with the semantics of an MTA that talks to several milters
 * (Postfix `smtpd_milters = a, b`, Sendmail `InputMailFilters=a,b`):
 *
 * - Envelope phases go to the filters in order and stop at the first non-continue verdict.
 * - REJECT/TEMPFAIL at RCPT refuse that recipient only; later filters never see it.
 * - A filter that ACCEPTs is out for the rest of the message (at connect/helo: the connection).
 * - DISCARD, and REJECT/TEMPFAIL elsewhere, end the message for every filter.
 * - At end of message each filter in turn sees the headers and body as edited by the filters
 *   before it; the session turns the final state into one minimal set of actions.
 *
 * Hooks that return plain values are run synchronously: no promise, timer or allocation per
 * call on the hot path. Only a hook that returns a promise gets a timer.
 * @module
 */
import { performance } from 'node:perf_hooks';
import { MilterdError, type ErrorCode } from '../errors.ts';
import { checkReplyClass, formatReplyCode } from '../protocol/reply-code.ts';
import { MILTER_CHUNK_SIZE } from '../protocol/constants.ts';
import { countFailure, countShadow as countShadowMetric } from '../metrics.ts';
import { BodyStore, type BodyStoreOptions } from './content.ts';
import type {
  ChainEntry,
  ConnectionInfo,
  EnvelopeAddress,
  EomMessage,
  FailurePolicy,
  Filter,
  FilterAction,
  FilterContext,
  FilterLogger,
  HeaderField,
  HookResult,
  MacroStage,
  Verdict,
} from './filter.ts';
import { describeEdit, diffToActions, MessageEditor, type MessageSnapshot } from './message.ts';
import type { MilterReply } from '../protocol/types.ts';

/** Phases a filter can have a hook for. */
export type Phase = 'connect' | 'helo' | 'envfrom' | 'envrcpt' | 'data' | 'unknown' | 'eom';

/** What the chain decided for one MTA command. `reply` is a validated SMFIR_REPLYCODE text. */
export type Outcome =
  | { readonly type: 'continue' }
  | { readonly type: 'accept' }
  | { readonly type: 'discard' }
  | { readonly type: 'reject' | 'tempfail'; readonly reply?: string };

/** End of message: a verdict, and for continue/accept the final message state. */
export type EomOutcome =
  | { readonly type: 'accept'; readonly final: MessageSnapshot }
  | { readonly type: 'reject' | 'tempfail'; readonly reply?: string }
  | { readonly type: 'discard' };

/** Host-wide defaults for chain entries, from configuration. */
export interface ChainDefaults {
  readonly onError: FailurePolicy;
  readonly timeoutMs: number;
  readonly messageBudgetMs: number;
}

/** Built-in defaults (configuration overrides them). */
export const DEFAULT_CHAIN_DEFAULTS: ChainDefaults = {
  onError: 'tempfail', // like Postfix's milter_default_action
  timeoutMs: 10_000, // below Postfix's 30 s milter_command_timeout
  messageBudgetMs: 60_000,
};

/** What the whole chain needs from the MTA; drives negotiation. */
export interface ChainNeeds {
  readonly hooks: ReadonlySet<Phase>;
  readonly headers: boolean;
  readonly body: boolean;
  readonly actions: ReadonlySet<FilterAction>;
  readonly macros: ReadonlyMap<MacroStage, ReadonlySet<string>>;
}

interface CompiledEntry {
  readonly filter: Filter;
  readonly name: string;
  readonly onError: FailurePolicy;
  readonly timeoutMs: number;
  readonly messageBudgetMs: number;
  readonly actions: ReadonlySet<FilterAction>;
  readonly shadow: boolean;
}

const ENVELOPE_PHASES: readonly Phase[] = ['connect', 'helo', 'envfrom', 'envrcpt', 'data', 'unknown', 'eom'];

/** An immutable, validated chain, shared by every connection that negotiated with it. */
export class Chain {
  readonly entries: readonly CompiledEntry[];
  readonly needs: ChainNeeds;
  /** Verdicts of shadow filters, by filter then verdict (continue, accept, reject, ..., error). */
  readonly shadowCounts = new Map<string, Record<string, number>>();

  /** Counts one verdict of a shadow filter. */
  countShadow(filter: string, verdict: string): void {
    countShadowMetric(filter, verdict);
    let c = this.shadowCounts.get(filter);
    if (c === undefined) this.shadowCounts.set(filter, (c = {}));
    c[verdict] = (c[verdict] ?? 0) + 1;
  }

  constructor(entries: readonly ChainEntry[], defaults: ChainDefaults = DEFAULT_CHAIN_DEFAULTS) {
    const names = new Set<string>();
    this.entries = entries.map((e) => {
      const name = e.filter.name;
      if (typeof name !== 'string' || name === '') throw new TypeError('every filter needs a non-empty name');
      if (names.has(name)) throw new TypeError(`filter name ${name} appears twice in the chain`);
      names.add(name);
      return {
        filter: e.filter,
        name,
        onError: e.onError ?? defaults.onError,
        timeoutMs: e.timeoutMs ?? defaults.timeoutMs,
        messageBudgetMs: e.messageBudgetMs ?? defaults.messageBudgetMs,
        actions: new Set(e.filter.actions ?? []),
        shadow: e.shadow === true,
      };
    });
    const hooks = new Set<Phase>();
    const actions = new Set<FilterAction>();
    const macros = new Map<MacroStage, Set<string>>();
    let headers = false;
    let body = false;
    for (const e of this.entries) {
      const f = e.filter;
      for (const p of ENVELOPE_PHASES) if (typeof f[p] === 'function') hooks.add(p);
      if (typeof f.eom === 'function') {
        headers ||= f.reads?.headers ?? true;
        body ||= f.reads?.body ?? true;
      }
      for (const a of e.actions) actions.add(a);
      // Changing or inserting headers needs the real header list, even if the filter never
      // reads it: without it a change would turn into a duplicate and indices would be wrong.
      if (e.actions.has('changeHeader') || e.actions.has('addHeader')) headers = true;
      for (const [stage, list] of Object.entries(f.macros ?? {}) as [MacroStage, readonly string[]][]) {
        let set = macros.get(stage);
        if (set === undefined) macros.set(stage, (set = new Set()));
        for (const m of list) set.add(m);
      }
    }
    this.needs = { hooks, headers, body, actions, macros };
  }
}

/** What a connection's chain run needs from its session. */
export interface RunEnv {
  readonly connection: () => ConnectionInfo;
  readonly from: () => EnvelopeAddress | undefined;
  readonly rcpts: () => readonly EnvelopeAddress[];
  readonly getSymbol: (name: string) => string | undefined;
  /** Logger bound to session (and queue id when known). */
  readonly log: () => FilterLogger & { child(b: object): FilterLogger };
  /** Actions the MTA granted in negotiation. */
  readonly negotiated: ReadonlySet<FilterAction>;
  /** SMFIF_ADDRCPT_PAR granted. */
  readonly addRcptArgs: boolean;
  readonly bodyStore: BodyStoreOptions;
  /**
   * Told of every hook call and the chain's decision on it (the testing kit's steps). Unset in
   * the daemon: the hot path then pays one property read per call.
   */
  readonly onCall?: (call: CallRecord) => void;
}

/** One hook call as the chain judged it: its verdict, or the failure its policy answered. */
export interface CallRecord {
  readonly filter: string;
  readonly phase: Phase;
  readonly decision: Decision;
  readonly ms: number;
  /** The entry is in shadow mode: the decision was logged, not applied. */
  readonly shadow: boolean;
}

/** Per filter, per connection. */
class Slot implements FilterContext {
  readonly entry: CompiledEntry;
  readonly #env: RunEnv;
  connOut = false;
  msgOut = false;
  msgElapsed = 0;
  connState: Record<string, unknown> = {};
  msgState: Record<string, unknown> = {};
  controller: AbortController | undefined;
  #log: FilterLogger | undefined;

  constructor(entry: CompiledEntry, env: RunEnv) {
    this.entry = entry;
    this.#env = env;
  }
  get filter(): string {
    return this.entry.name;
  }
  get connection(): ConnectionInfo {
    return this.#env.connection();
  }
  get from(): EnvelopeAddress | undefined {
    return this.#env.from();
  }
  get rcpts(): readonly EnvelopeAddress[] {
    return this.#env.rcpts();
  }
  getSymbol(name: string): string | undefined {
    return this.#env.getSymbol(name);
  }
  get log(): FilterLogger {
    return (this.#log ??= this.#env.log().child({ filter: this.entry.name }));
  }
  /** Created on first use: most hooks never look at it. */
  get signal(): AbortSignal {
    return (this.controller ??= new AbortController()).signal;
  }
  resetMessage(): void {
    this.msgOut = false;
    this.msgElapsed = 0;
    this.msgState = {};
    this.#log = undefined; // the queue id changes
  }
}

/** A hook's result after checks: a verdict, or a failure to be turned into the policy. */
export type Decision = { readonly ok: true; readonly verdict: Outcome } | { readonly ok: false; readonly error: MilterdError };

const CONTINUE: Outcome = { type: 'continue' };
const ACCEPT: Outcome = { type: 'accept' };
/** What a non-continue verdict ends: the connection (connect, HELO) or the message. */
type Scope = 'connection' | 'message';

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return v !== null && typeof v === 'object' && typeof (v as { then?: unknown }).then === 'function';
}

/** Runs one connection's filters. Created per connection (and again after QUIT_NC). */
export class ChainRun {
  readonly chain: Chain;
  readonly #env: RunEnv;
  readonly #slots: Slot[];

  constructor(chain: Chain, env: RunEnv) {
    this.chain = chain;
    this.#env = env;
    this.#slots = chain.entries.map((e) => new Slot(e, env));
  }

  connect(info: ConnectionInfo): Outcome | Promise<Outcome> {
    return this.#run('connect', 'connection', 0, (f) => f.connect && ((s) => f.connect!(s, info)));
  }
  helo(name: string): Outcome | Promise<Outcome> {
    return this.#run('helo', 'connection', 0, (f) => f.helo && ((s) => f.helo!(s, name)));
  }
  /** MAIL: also starts a new message for every filter. */
  envfrom(from: EnvelopeAddress): Outcome | Promise<Outcome> {
    for (const s of this.#slots) s.resetMessage();
    return this.#run('envfrom', 'message', 0, (f) => f.envfrom && ((s) => f.envfrom!(s, from)));
  }
  envrcpt(rcpt: EnvelopeAddress): Outcome | Promise<Outcome> {
    return this.#run('envrcpt', 'message', 0, (f) => f.envrcpt && ((s) => f.envrcpt!(s, rcpt)));
  }
  data(): Outcome | Promise<Outcome> {
    return this.#run('data', 'message', 0, (f) => f.data && ((s) => f.data!(s)));
  }
  /**
   * An SMTP command the MTA did not know. Inside a message, an accept or discard is about the
   * message, as Postfix's milter8.c treats it; outside one, about the connection.
   */
  unknown(command: string, inMessage: boolean): Outcome | Promise<Outcome> {
    return this.#run('unknown', inMessage ? 'message' : 'connection', 0, (f) => f.unknown && ((s) => f.unknown!(s, command)));
  }

  /** True when no filter is left for this message: the MTA may be told ACCEPT. */
  #allOut(scope: Scope): boolean {
    if (this.#slots.length === 0) return false;
    return this.#slots.every((s) => s.connOut || (scope === 'message' && s.msgOut));
  }

  /**
   * Runs one envelope phase from filter `from` on. `pick` returns the filter's hook for this
   * phase, or undefined when it has none (then it is not called and costs nothing).
   */
  #run(phase: Phase, scope: Scope, from: number, pick: (f: Filter) => ((s: Slot) => HookResult) | undefined): Outcome | Promise<Outcome> {
    const slots = this.#slots;
    for (let i = from; i < slots.length; i++) {
      const slot = slots[i]!;
      if (slot.connOut || (slot.msgOut && scope === 'message')) continue;
      const hook = pick(slot.entry.filter);
      if (hook === undefined) continue;
      const d = this.#call(slot, phase, () => hook(slot));
      if (isThenable(d)) {
        return d.then((dd) => this.#after(slot, phase, scope, dd) ?? this.#run(phase, scope, i + 1, pick));
      }
      const stop = this.#after(slot, phase, scope, d);
      if (stop !== undefined) return stop;
    }
    return this.#allOut(scope) ? ACCEPT : CONTINUE;
  }

  /** Applies a decision to the slot; returns an Outcome when the chain stops here. */
  #after(slot: Slot, phase: Phase, scope: Scope, d: Decision): Outcome | undefined {
    if (slot.entry.shadow) return this.#shadow(slot, phase, scope, d);
    let v: Outcome;
    if (d.ok) v = d.verdict;
    else {
      this.#logFailure(slot, phase, d.error);
      switch (slot.entry.onError) {
        case 'continue':
          // Skip the failing filter for the rest of the message (the connection at connect/helo).
          if (scope === 'connection') slot.connOut = true;
          else slot.msgOut = true;
          return undefined;
        case 'accept':
          return ACCEPT_STOP;
        case 'tempfail':
          return { type: 'tempfail' };
        case 'reject':
          return { type: 'reject' };
      }
    }
    switch (v.type) {
      case 'continue':
        return undefined;
      case 'accept':
        if (scope === 'connection') slot.connOut = true;
        else slot.msgOut = true;
        return undefined;
      case 'discard':
        // libmilter: "SMFIS_DISCARD should not be returned by a connection-oriented routine".
        if (scope === 'connection') {
          return this.#after(slot, phase, scope, fail('MILTERD_FILTER_BAD_VERDICT', `discard is not allowed in ${phase} outside a message`));
        }
        return v;
      default:
        return v;
    }
  }

  /**
   * Shadow (evaluation) mode: the filter runs and what it decides is logged and counted, but
   * never applied. It leaves the message when it would have (accept), or when it fails.
   */
  #shadow(slot: Slot, phase: Phase, scope: Scope, d: Decision, edits?: readonly MilterReply[]): undefined {
    const verdict = d.ok ? d.verdict.type : 'error';
    this.chain.countShadow(slot.entry.name, verdict);
    if (!d.ok || d.verdict.type === 'accept') {
      if (scope === 'connection') slot.connOut = true;
      else slot.msgOut = true;
    }
    if (verdict !== 'continue' || (edits !== undefined && edits.length > 0)) {
      this.#env.log().info(
        {
          filter: slot.entry.name,
          hook: phase,
          shadow: true,
          verdict,
          ...(d.ok && 'reply' in d.verdict && d.verdict.reply ? { reply: d.verdict.reply } : {}),
          ...(d.ok ? {} : { code: d.error.code, err: d.error.message }),
          ...(edits !== undefined && edits.length > 0 ? { edits: edits.map(describeEdit) } : {}),
        },
        `shadow: ${slot.entry.name} would ${verdict === 'error' ? 'fail' : verdict} in ${phase}${edits?.length ? ` with ${edits.length} edit(s)` : ''}`,
      );
    }
    return undefined;
  }

  #logFailure(slot: Slot, phase: Phase, err: MilterdError): void {
    countFailure(slot.entry.name, err.code);
    this.#env.log().warn(
      { filter: slot.entry.name, hook: phase, code: err.code, err: err.message, policy: slot.entry.onError },
      `filter ${slot.entry.name} failed in ${phase}: ${err.message}`,
    );
  }

  /**
   * Calls one hook with the filter's time budgets: a Decision for a synchronous hook, a
   * promise of one otherwise. A hook that settles after its timeout is ignored entirely.
   */
  #call(slot: Slot, phase: Phase, fn: () => HookResult): Decision | Promise<Decision> {
    const observe = this.#env.onCall;
    if (observe === undefined) return this.#invoke(slot, phase, fn);
    const t0 = performance.now();
    const report = (decision: Decision): Decision => {
      observe({ filter: slot.entry.name, phase, decision, ms: performance.now() - t0, shadow: slot.entry.shadow === true });
      return decision;
    };
    const d = this.#invoke(slot, phase, fn);
    return isThenable(d) ? d.then(report) : report(d);
  }

  #invoke(slot: Slot, phase: Phase, fn: () => HookResult): Decision | Promise<Decision> {
    const budget = slot.entry.messageBudgetMs - slot.msgElapsed;
    if (budget <= 0) {
      return fail('MILTERD_FILTER_MESSAGE_BUDGET', `used its ${slot.entry.messageBudgetMs} ms budget for this message`);
    }
    slot.controller = undefined;
    const start = performance.now();
    let r: HookResult;
    try {
      r = fn();
    } catch (err) {
      slot.msgElapsed += performance.now() - start;
      return thrown(err);
    }
    if (!isThenable(r)) {
      slot.msgElapsed += performance.now() - start;
      return checkVerdict(phase, r);
    }
    const limit = Math.min(slot.entry.timeoutMs, budget);
    return new Promise<Decision>((resolve) => {
      let settled = false;
      const settle = (d: Decision): void => {
        if (settled) return; // late: the timeout already decided
        settled = true;
        clearTimeout(timer);
        slot.msgElapsed += performance.now() - start;
        resolve(d);
      };
      const timer = setTimeout(() => {
        slot.controller?.abort(new MilterdError('MILTERD_FILTER_TIMEOUT', 'hook timed out'));
        settle(fail('MILTERD_FILTER_TIMEOUT', `${phase} did not settle within ${Math.round(limit)} ms`));
      }, limit);
      (r as PromiseLike<Verdict | undefined | void>).then(
        (v) => settle(checkVerdict(phase, v)),
        (err: unknown) => settle(thrown(err)),
      );
    });
  }

  /**
   * End of message: each filter with an eom hook in turn, on the message as left by the ones
   * before it. Filters out for the message (accepted, failed with 'continue') are skipped.
   */
  async eom(base: MessageSnapshot): Promise<EomOutcome> {
    // Bodies created here (replaced bodies) that do not survive are disposed before returning.
    const created: BodyStore[] = [];
    const finish = async (o: EomOutcome): Promise<EomOutcome> => {
      const keep = o.type === 'accept' ? o.final.body : undefined;
      await Promise.all(created.filter((b) => b !== keep).map((b) => b.dispose()));
      return o;
    };
    let current = base;
    for (const slot of this.#slots) {
      if (slot.connOut || slot.msgOut) continue;
      const hook = slot.entry.filter.eom;
      if (typeof hook !== 'function') continue;
      const editor = new MessageEditor(current, slot.entry.actions, this.#env.negotiated, this.#env.addRcptArgs);
      const view = new EomView(editor);
      const d = await this.#call(slot, 'eom', () => hook.call(slot.entry.filter, slot, view));
      editor.closed = true;
      if (slot.entry.shadow) {
        // Compute what it would have changed, log it, and drop it.
        let edits: MilterReply[] = [];
        if (d.ok) {
          const would = commit(editor, current, this.#env.bodyStore, created);
          edits = diffToActions(current, would, { leadingSpace: false });
          if (would.body !== current.body) edits.push({ kind: 'replbody', chunk: new Uint8Array(0) });
        }
        this.#shadow(slot, 'eom', 'message', d, edits);
        continue;
      }
      if (!d.ok) {
        this.#logFailure(slot, 'eom', d.error);
        switch (slot.entry.onError) {
          case 'continue':
            slot.msgOut = true;
            continue; // its edits are dropped
          case 'accept':
            return finish({ type: 'accept', final: current });
          case 'tempfail':
            return finish({ type: 'tempfail' });
          case 'reject':
            return finish({ type: 'reject' });
        }
      }
      const v = d.verdict;
      if (v.type === 'discard') return finish({ type: 'discard' });
      if (v.type === 'reject' || v.type === 'tempfail') return finish(v);
      current = commit(editor, current, this.#env.bodyStore, created);
      if (v.type === 'accept') slot.msgOut = true;
    }
    return finish({ type: 'accept', final: current });
  }

  /** SMFIC_ABORT or end of message: tell filters that saw the message, reset message state. */
  async endMessage(aborted: boolean): Promise<void> {
    if (aborted) {
      for (const s of this.#slots) {
        const abort = s.entry.filter.abort;
        if (typeof abort !== 'function' || s.connOut) continue;
        await this.#notify(s, 'abort', () => abort.call(s.entry.filter, s));
      }
    }
    for (const s of this.#slots) s.resetMessage();
  }

  /** The connection ended (QUIT, QUIT_NC, socket closed). */
  async close(): Promise<void> {
    for (const s of this.#slots) {
      const close = s.entry.filter.close;
      if (typeof close !== 'function') continue;
      await this.#notify(s, 'close', () => close.call(s.entry.filter, s));
    }
  }

  /** Calls a notification hook (no verdict); failures are logged, never fatal. */
  async #notify(slot: Slot, hook: string, fn: () => void | Promise<void>): Promise<void> {
    try {
      const r = fn();
      if (isThenable(r)) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          r,
          new Promise((_, rej) => {
            timer = setTimeout(() => rej(new MilterdError('MILTERD_FILTER_TIMEOUT', `${hook} timed out`)), slot.entry.timeoutMs);
          }),
        ]).finally(() => clearTimeout(timer));
      }
    } catch (err) {
      const e = err instanceof MilterdError ? err : new MilterdError('MILTERD_FILTER_THREW', String((err as Error)?.message ?? err), { cause: err });
      this.#env.log().warn({ filter: slot.entry.name, hook, code: e.code, err: e.message }, `filter ${slot.entry.name} failed in ${hook}`);
    }
  }
}

const ACCEPT_STOP: Outcome = { type: 'accept' };

function fail(code: ErrorCode, message: string): Decision {
  return { ok: false, error: new MilterdError(code, message) };
}

function thrown(err: unknown): Decision {
  // Keep the code of errors that say what the filter or plugin did wrong (a plugin's CPU, wall,
  // memory, crash, capability...): the log line must tell them apart.
  if (err instanceof MilterdError && (err.area === 'filter' || err.area === 'plugin')) return { ok: false, error: err };
  const msg = err instanceof Error ? err.message : String(err);
  return { ok: false, error: new MilterdError('MILTERD_FILTER_THREW', msg, { cause: err }) };
}

/** Validates what a hook returned, including its reply code (never sent if invalid). */
function checkVerdict(phase: Phase, v: unknown): Decision {
  if (v === undefined) return { ok: true, verdict: CONTINUE };
  if (v === null || typeof v !== 'object' || typeof (v as { type?: unknown }).type !== 'string') {
    return fail('MILTERD_FILTER_BAD_VERDICT', `${phase} returned ${describe(v)}, not a verdict`);
  }
  const verdict = v as Verdict;
  switch (verdict.type) {
    case 'continue':
      return { ok: true, verdict: CONTINUE };
    case 'accept':
      return { ok: true, verdict: ACCEPT };
    case 'discard':
      return { ok: true, verdict: { type: 'discard' } };
    case 'reject':
    case 'tempfail': {
      const spec = verdict.reply;
      if (spec === undefined) return { ok: true, verdict: { type: verdict.type } };
      try {
        if (spec === null || typeof spec !== 'object') throw new MilterdError('MILTERD_FILTER_BAD_REPLY', 'reply must be an object');
        checkReplyClass(verdict.type, spec.code);
        const lines = spec.text === undefined ? [] : typeof spec.text === 'string' ? [spec.text] : [...spec.text];
        return { ok: true, verdict: { type: verdict.type, reply: formatReplyCode(spec.code, spec.xcode, lines) } };
      } catch (err) {
        return thrown(err);
      }
    }
    default:
      return fail('MILTERD_FILTER_BAD_VERDICT', `${phase} returned unknown verdict type ${describe((v as { type: unknown }).type)}`);
  }
}

function describe(v: unknown): string {
  try {
    return typeof v === 'string' ? JSON.stringify(v).slice(0, 80) : String(v).slice(0, 80);
  } catch {
    return typeof v;
  }
}

/** Turns a finished editor into the next snapshot; a replaced body becomes a BodyStore. */
function commit(editor: MessageEditor, prev: MessageSnapshot, opts: BodyStoreOptions, created: BodyStore[]): MessageSnapshot {
  let body = prev.body;
  if (editor.body !== prev.body) {
    if (editor.body instanceof BodyStore) body = editor.body;
    else {
      body = BodyStore.from(editor.body, opts);
      created.push(body);
    }
  }
  return { headers: editor.headers, rcpts: editor.rcpts, from: editor.from, body, quarantine: editor.quarantine };
}

/** The EomMessage a filter gets: reads the editor's live state, forwards edits to it. */
class EomView implements EomMessage {
  readonly #ed: MessageEditor;
  constructor(editor: MessageEditor) {
    this.#ed = editor;
  }
  get headers(): readonly HeaderField[] {
    return this.#ed.headers;
  }
  get bodySize(): number {
    const b = this.#ed.body;
    return b instanceof BodyStore ? b.size : b.length;
  }
  body(): Promise<Uint8Array> {
    const b = this.#ed.body;
    return b instanceof BodyStore ? b.read() : Promise.resolve(b.slice());
  }
  bodyChunks(): AsyncIterable<Uint8Array> {
    const b = this.#ed.body;
    if (b instanceof BodyStore) return b.chunks();
    return (async function* () {
      for (let i = 0; i < b.length; i += MILTER_CHUNK_SIZE) yield b.slice(i, i + MILTER_CHUNK_SIZE);
    })();
  }
  addHeader(name: string, value: string): void {
    this.#ed.addHeader(name, value);
  }
  insertHeader(index: number, name: string, value: string): void {
    this.#ed.insertHeader(index, name, value);
  }
  changeHeader(name: string, index: number, value: string): void {
    this.#ed.changeHeader(name, index, value);
  }
  deleteHeader(name: string, index: number): void {
    this.#ed.deleteHeader(name, index);
  }
  addRcpt(rcpt: string, args?: string): void {
    this.#ed.addRcpt(rcpt, args);
  }
  delRcpt(rcpt: string): void {
    this.#ed.delRcpt(rcpt);
  }
  changeFrom(from: string, args?: string): void {
    this.#ed.changeFrom(from, args);
  }
  replaceBody(body: Uint8Array | string): void {
    this.#ed.replaceBody(body);
  }
  quarantine(reason: string): void {
    this.#ed.setQuarantine(reason);
  }
}

