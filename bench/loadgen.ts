/**
 * MTA-side load generator: N concurrent simulated Postfix sessions against a milter, each
 * negotiating, sending CONNECT and HELO, then M messages (MAIL, RCPT×R, DATA, H headers, EOH,
 * body, EOM, ABORT) and QUIT, over and over. It honours the negotiated NO* and NR_* flags exactly
 * like Postfix (test/support/mta-client.ts), so a filter that negotiates no-reply phases saves
 * the round trips, and a filter that does not pays for them.
 *
 * Every message is validated: the verdict must be continue or accept, and with `--expect
 * inspect` the only modification must be the `X-Inspect` header with the exact counts and byte
 * sum of what was sent (`--expect inspect+stamp`: that, then `X-Stamp: qid <the message's queue
 * id macro>`). Anything else (timeouts, closed connections, protocol violations,
 * unexpected replies) is counted as an error.
 *
 * Runs as its own process (bench/run.ts spawns it) so the server under test keeps the other
 * core. With an IPC channel it reports `{type:'phase'}` and `{type:'result'}` messages;
 * standalone it prints a summary and the JSON result.
 *
 *   node bench/loadgen.ts --address inet:PORT@127.0.0.1 [--concurrency 32] [--messages 5]
 *     [--headers 10] [--body 2048] [--rcpts 2] [--warmup 2] [--duration 6 | --sessions N]
 *     [--expect none|inspect|inspect+stamp] [--timeout 30000] [--json]
 * @module
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { SMFIP } from '../src/protocol/index.ts';
import { MtaClient } from '../test/support/mta-client.ts';
import type { MacroInput, MessageSpec } from '../test/support/mta-client.ts';

/** Load shape and run length. */
export interface LoadOptions {
  /** libmilter-syntax address of the filter. */
  readonly address: string;
  /** Concurrent SMTP sessions (one milter connection each). */
  readonly concurrency: number;
  /** Messages per session. */
  readonly messages: number;
  /** Headers per message. */
  readonly headers: number;
  /** Body size in bytes. */
  readonly bodySize: number;
  /** Recipients per message. */
  readonly rcpts: number;
  /** Warm-up in seconds, excluded from the figures (duration mode only). */
  readonly warmupS: number;
  /** Measured seconds; ignored when `sessions` is set. */
  readonly durationS: number;
  /** Run exactly this many sessions instead of a timed run (no warm-up). */
  readonly sessions: number | undefined;
  /**
   * What the filter must add: nothing, the inspect filter's X-Inspect header, or X-Inspect then
   * header-stamp's `X-Stamp: qid <queue id>` (the plugin chains of bench/server.ts).
   */
  readonly expect: Expect;
  /** Bound of every wait, in ms. */
  readonly timeoutMs: number;
}

/** What the filter under test must add to every message. */
export type Expect = 'none' | 'inspect' | 'inspect+stamp';
const EXPECTS: readonly Expect[] = ['none', 'inspect', 'inspect+stamp'];

/** Latency percentiles of one message (MAIL sent to EOM verdict received), in ms. */
export interface LatencySummary {
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly mean: number;
}

/** What one load run measured. */
export interface LoadResult {
  readonly options: LoadOptions;
  /** Messages completed and validated inside the measured window. */
  readonly messages: number;
  /** Sessions completed inside the measured window. */
  readonly sessions: number;
  /** Length of the measured window, in seconds. */
  readonly seconds: number;
  readonly msgPerSec: number;
  readonly latencyMs: LatencySummary;
  /** Errors over the whole run, warm-up included. */
  readonly errors: { readonly total: number; readonly byKind: Record<string, number>; readonly examples: string[] };
  /** Protocol flags and actions the filter negotiated (from the first session). */
  readonly negotiated: { readonly version: number; readonly actions: number; readonly protocol: number } | undefined;
  /** CPU time of this load generator during the window, as a share of one core. */
  readonly loadgenCpu: number;
}

const DEFAULTS: Omit<LoadOptions, 'address'> = {
  concurrency: 32,
  messages: 5,
  headers: 10,
  bodySize: 2048,
  rcpts: 2,
  warmupS: 2,
  durationS: 6,
  sessions: undefined,
  expect: 'none',
  timeoutMs: 30_000,
};

// --- the message -----------------------------------------------------------------------

const BASE_HEADERS: ReadonlyArray<readonly [string, string]> = [
  ['Received', ' from client.example.org (client.example.org [192.0.2.1]) by mx.example.net (Postfix) with ESMTPS id 4Zx0Yq1bcdz9sWm'],
  ['From', ' Alice Example <alice@example.org>'],
  ['To', ' Bob Example <bob@example.net>, Carol Example <carol@example.net>'],
  ['Subject', ' Quarterly figures and the benchmark of a milter daemon'],
  ['Date', ' Tue, 14 Oct 2025 10:21:07 +0200'],
  ['Message-ID', ' <20251014082107.4Zx0Yq1bcdz9sWm@client.example.org>'],
  ['MIME-Version', ' 1.0'],
  ['Content-Type', ' text/plain; charset=us-ascii'],
  ['Content-Transfer-Encoding', ' 7bit'],
  ['User-Agent', ' loadgen/1.0 (milterd benchmark)'],
];

/** `n` realistic headers (raw text after the colon, leading space included). */
export function makeHeaders(n: number): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i < n; i++) {
    const base = BASE_HEADERS[i];
    out.push(base !== undefined ? [base[0], base[1]] : [`X-Bench-${i}`, ` value of extra header number ${i} for the benchmark`]);
  }
  return out;
}

/** An ASCII body of exactly `size` bytes in CRLF lines of at most 78 characters. */
export function makeBody(size: number): Buffer {
  const words = 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore '.repeat(2);
  const buf = Buffer.alloc(size);
  let pos = 0;
  let w = 0;
  while (pos < size) {
    const lineLen = Math.min(76, size - pos);
    for (let i = 0; i < lineLen; i++) buf[pos + i] = words.charCodeAt((w + i) % words.length);
    w += 7;
    pos += lineLen;
    if (pos < size) buf[pos++] = 0x0d;
    if (pos < size) buf[pos++] = 0x0a;
  }
  return buf;
}

/** The X-Inspect value the inspect filters must add for this message (as libmilter sees headers). */
export function expectedInspect(headers: ReadonlyArray<readonly [string, string]>, body: Uint8Array): string {
  let bytes = 0;
  let sum = 0;
  for (const [name, raw] of headers) {
    // The filter sees the value without the one space after the colon.
    const value = raw.startsWith(' ') ? raw.slice(1) : raw;
    for (const s of [name, value]) {
      const b = Buffer.from(s, 'utf8');
      bytes += b.length;
      for (const x of b) sum = (sum + x) >>> 0;
    }
  }
  for (const x of body) sum = (sum + x) >>> 0;
  return `headers=${headers.length} bytes=${bytes} body=${body.length} sum=${sum}`;
}

// Macros as Postfix sends them by default (values it has without TLS or SASL).
const CONNECT_MACROS: MacroInput = [
  ['j', 'mx.example.net'],
  ['{daemon_name}', 'mx.example.net'],
  ['{daemon_addr}', '198.51.100.25'],
  ['v', 'Postfix 3.7.11'],
  ['_', 'client.example.org [192.0.2.1]'],
];

function messageMacros(qid: string): NonNullable<MessageSpec['macros']> {
  return {
    mail: [
      ['i', qid],
      ['{mail_addr}', 'alice@example.org'],
      ['{mail_host}', 'example.org'],
      ['{mail_mailer}', 'smtp'],
    ],
    rcpt: [
      ['i', qid],
      ['{rcpt_addr}', 'bob@example.net'],
      ['{rcpt_host}', 'example.net'],
      ['{rcpt_mailer}', 'smtp'],
    ],
    data: [['i', qid]],
    eoh: [['i', qid]],
    eom: [['i', qid]],
  };
}

// --- the run ---------------------------------------------------------------------------

function summarize(samples: Float64Array, n: number): LatencySummary {
  if (n === 0) return { p50: 0, p90: 0, p99: 0, max: 0, mean: 0 };
  const s = samples.slice(0, n).sort();
  const at = (q: number): number => s[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))] as number;
  let total = 0;
  for (let i = 0; i < n; i++) total += s[i] as number;
  const r = (x: number): number => Math.round(x * 1000) / 1000;
  return { p50: r(at(0.5)), p90: r(at(0.9)), p99: r(at(0.99)), max: r(s[n - 1] as number), mean: r(total / n) };
}

/** Runs the load and returns the figures. `onPhase` is told when measuring starts and ends. */
export async function runLoad(options: LoadOptions, onPhase?: (phase: 'measure' | 'done') => void): Promise<LoadResult> {
  const o = options;
  const headers = makeHeaders(o.headers);
  const body = makeBody(o.bodySize);
  const expectValue = expectedInspect(headers, body);
  const rcpts = Array.from({ length: o.rcpts }, (_, i) => `<rcpt${i}@example.net>`);

  const errorsByKind: Record<string, number> = {};
  const examples: string[] = [];
  let errorTotal = 0;
  const error = (kind: string, detail: string): void => {
    errorTotal++;
    errorsByKind[kind] = (errorsByKind[kind] ?? 0) + 1;
    if (examples.length < 10) examples.push(`${kind}: ${detail}`);
  };

  let latencies = new Float64Array(1 << 16);
  let latencyCount = 0;
  let measuredMessages = 0;
  let measuredSessions = 0;
  let negotiated: LoadResult['negotiated'];
  let qidCounter = 0;

  const timed = o.sessions === undefined;
  const start = performance.now();
  let measureStart = timed ? start + o.warmupS * 1000 : start;
  let measureEnd = timed ? measureStart + o.durationS * 1000 : Infinity;
  let sessionsLeft = o.sessions ?? Infinity;
  let cpuAtStart = process.cpuUsage();
  let measuring = !timed;
  if (measuring) onPhase?.('measure');

  let cpuInWindow: NodeJS.CpuUsage | undefined;
  let windowEnd = 0;
  const finish = (): void => {
    if (cpuInWindow !== undefined) return;
    cpuInWindow = process.cpuUsage(cpuAtStart);
    windowEnd = performance.now();
    onPhase?.('done');
  };

  const stop = (): boolean => (timed ? performance.now() >= measureEnd : false);

  const timers: NodeJS.Timeout[] = [];
  if (timed) {
    timers.push(
      setTimeout(() => {
        measuring = true;
        measureStart = performance.now();
        measureEnd = measureStart + o.durationS * 1000;
        cpuAtStart = process.cpuUsage();
        onPhase?.('measure');
        // The window closes on time, whatever messages are still in flight.
        timers.push(setTimeout(finish, o.durationS * 1000));
      }, o.warmupS * 1000),
    );
  }

  const session = async (): Promise<void> => {
    let client: MtaClient | undefined;
    try {
      client = await MtaClient.connect(o.address, { timeoutMs: o.timeoutMs });
      const neg = await client.negotiate();
      negotiated ??= { version: neg.version, actions: neg.actions, protocol: neg.protocol };
      await client.connect({ hostname: 'client.example.org', family: 'inet', address: '192.0.2.1', port: 40000 }, CONNECT_MACROS);
      await client.helo('client.example.org');
      for (let m = 0; m < o.messages && !stop(); m++) {
        const qid = `4Zx${(qidCounter++).toString(36).padStart(8, '0').toUpperCase()}`;
        const t0 = performance.now();
        const r = await client.runMessage({
          from: ['<alice@example.org>', 'SIZE=4096', 'BODY=8BITMIME'],
          rcpts,
          headers,
          body,
          macros: messageMacros(qid),
          abortAfter: true,
        });
        const t1 = performance.now();
        if (r.endedAt !== 'eom' || r.eom === undefined) {
          error('ended-early', `message ended at ${r.endedAt} with ${JSON.stringify(r.verdict)}`);
          continue;
        }
        const v = r.eom.verdict.kind;
        if (v !== 'continue' && v !== 'accept') {
          error('bad-verdict', JSON.stringify(r.eom.verdict));
          continue;
        }
        const mods = r.eom.modifications;
        // With SMFIP_HDR_LEADSPC the MTA adds no space after the colon: the filter must send it.
        const lead = (client.protocol & SMFIP.HDR_LEADSPC) !== 0 ? ' ' : '';
        const wanted: Array<[string, string]> =
          o.expect === 'none' ? [] : o.expect === 'inspect' ? [['X-Inspect', expectValue]] : [['X-Inspect', expectValue], ['X-Stamp', `qid ${qid}`]];
        const okMods =
          mods.length === wanted.length &&
          wanted.every(([n, v], i) => {
            const m = mods[i];
            return m?.kind === 'addheader' && m.name === n && m.value === `${lead}${v}`;
          });
        if (!okMods) {
          error('bad-modifications', `expected ${JSON.stringify(wanted)}, got ${JSON.stringify(mods)}`);
          continue;
        }
        if (measuring && t1 >= measureStart && t1 <= measureEnd) {
          measuredMessages++;
          if (latencyCount === latencies.length) {
            const bigger = new Float64Array(latencies.length * 2);
            bigger.set(latencies);
            latencies = bigger;
          }
          latencies[latencyCount++] = t1 - t0;
        }
      }
      await client.quit();
      if (measuring && performance.now() <= measureEnd) measuredSessions++;
    } catch (err) {
      const e = err as { code?: string; message?: string };
      error(typeof e.code === 'string' ? e.code : 'exception', e.message ?? String(err));
      client?.destroy();
      await new Promise((r) => setTimeout(r, 10));
    } finally {
      if (client !== undefined) {
        if (client.unexpectedReplies > 0) error('unexpected-replies', `${client.unexpectedReplies} in one session`);
        for (const v of client.violations) error('violation', v);
      }
    }
  };

  const worker = async (): Promise<void> => {
    while (!stop() && sessionsLeft > 0) {
      sessionsLeft--;
      await session();
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, () => worker()));
  for (const t of timers) clearTimeout(t);

  finish();
  const end = timed ? Math.min(measureEnd, windowEnd) : windowEnd;
  const cpu = cpuInWindow as NodeJS.CpuUsage;
  const seconds = Math.max(0.001, (end - measureStart) / 1000);
  return {
    options: o,
    messages: measuredMessages,
    sessions: measuredSessions,
    seconds: Math.round(seconds * 1000) / 1000,
    msgPerSec: Math.round((measuredMessages / seconds) * 10) / 10,
    latencyMs: summarize(latencies, latencyCount),
    errors: { total: errorTotal, byKind: errorsByKind, examples },
    negotiated,
    loadgenCpu: Math.round(((cpu.user + cpu.system) / 1000 / (end - measureStart)) * 1000) / 1000,
  };
}

/** Parses the command line into LoadOptions. */
export function parseLoadArgs(argv: readonly string[]): LoadOptions & { json: boolean } {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      address: { type: 'string' },
      concurrency: { type: 'string' },
      messages: { type: 'string' },
      headers: { type: 'string' },
      body: { type: 'string' },
      rcpts: { type: 'string' },
      warmup: { type: 'string' },
      duration: { type: 'string' },
      sessions: { type: 'string' },
      expect: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (values.address === undefined) throw new Error('--address inet:PORT@HOST (or unix:/path) is required');
  const num = (v: string | undefined, d: number, name: string, min = 0): number => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got ${v}`);
    return n;
  };
  const expect = (values.expect ?? DEFAULTS.expect) as Expect;
  if (!EXPECTS.includes(expect)) throw new Error(`--expect must be one of ${EXPECTS.join(', ')}, got ${expect}`);
  return {
    address: values.address,
    concurrency: num(values.concurrency, DEFAULTS.concurrency, 'concurrency', 1),
    messages: num(values.messages, DEFAULTS.messages, 'messages', 1),
    headers: num(values.headers, DEFAULTS.headers, 'headers'),
    bodySize: num(values.body, DEFAULTS.bodySize, 'body'),
    rcpts: num(values.rcpts, DEFAULTS.rcpts, 'rcpts', 1),
    warmupS: num(values.warmup, DEFAULTS.warmupS, 'warmup'),
    durationS: num(values.duration, DEFAULTS.durationS, 'duration', 0.1),
    sessions: values.sessions === undefined ? undefined : num(values.sessions, 0, 'sessions', 1),
    expect,
    timeoutMs: num(values.timeout, DEFAULTS.timeoutMs, 'timeout', 1),
    json: values.json ?? false,
  };
}

async function main(): Promise<void> {
  const { json, ...options } = parseLoadArgs(process.argv.slice(2));
  const ipc = typeof process.send === 'function';
  const result = await runLoad(options, (phase) => {
    if (ipc) process.send?.({ type: 'phase', phase });
  });
  if (ipc) {
    process.send?.({ type: 'result', result });
    process.disconnect?.();
    return;
  }
  if (json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } else {
    const l = result.latencyMs;
    process.stdout.write(
      `${result.messages} messages in ${result.seconds} s: ${result.msgPerSec} msg/s; ` +
        `latency p50 ${l.p50} ms, p99 ${l.p99} ms, max ${l.max} ms; loadgen CPU ${Math.round(result.loadgenCpu * 100)}%\n`,
    );
  }
  if (result.errors.total > 0) {
    process.stderr.write(`\n!!! ${result.errors.total} ERRORS: ${JSON.stringify(result.errors.byKind)}\n`);
    for (const e of result.errors.examples) process.stderr.write(`!!!   ${e}\n`);
    process.exitCode = 1;
  }
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    process.stderr.write(`loadgen: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 2;
  });
}
