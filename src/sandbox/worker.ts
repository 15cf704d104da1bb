/**
 * The sandbox process of one plugin (started by the supervisor with `--no-node-snapshot`, as
 * isolated-vm asks). It owns a pool of isolates running the plugin and answers calls from the
 * daemon over IPC. Nothing else runs here: if plugin code takes V8 down (catastrophic
 * out-of-memory, an uninterruptible operation), only this process dies, and the daemon that
 * owns the MTA connections gives the calls in flight the plugin's failure policy.
 *
 * Per call: one watchdog bounds CPU time (read from the isolate's cpuTime, so code resumed
 * after a host promise counts too) and wall-clock time including awaits; the isolate heap
 * limit bounds memory. Any of the three recycles the isolate: a plugin that misbehaved once is
 * not trusted with its state again.
 * @module
 */
import ivm from 'isolated-vm';
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Capability, WireCall, WireDescription, WireResult } from '../../sdk/src/protocol.ts';
import type { FromSandbox, PluginLog, SandboxFailure, SandboxLimits, ToSandbox } from './messages.ts';
import { badArgument, createKv, type KvStore } from './kv.ts';

type Init = Extract<ToSandbox, { type: 'init' }>;

const MAX_LOGS_PER_CALL = 100;
const MAX_LOG_CHARS = 4000;

/** Results of this event-loop turn, written together (one IPC write instead of one each). */
let outbox: FromSandbox[] = [];

function flush(): void {
  const items = outbox;
  outbox = [];
  if (items.length === 0) return;
  rawSend(items.length === 1 ? items[0]! : { type: 'batch', items });
}

function send(m: FromSandbox): void {
  if (m.type !== 'result') {
    flush();
    rawSend(m);
    return;
  }
  outbox.push(m);
  if (outbox.length === 1) setImmediate(flush);
}

function rawSend(m: FromSandbox): void {
  // With a callback, a write to a daemon that has gone (EPIPE, channel closed) is reported
  // here instead of as an 'error' event, which crashed the process noisily when the daemon
  // stopped it with calls in flight. Nothing to do then: the 'disconnect' handler exits.
  // (Serialization errors still throw, for #finish to handle.)
  if (process.connected) process.send?.(m, undefined, undefined, () => undefined);
}

function failure(code: string, message: string): SandboxFailure {
  return { code, message };
}

const DNS_TYPES = new Set(['A', 'AAAA', 'MX', 'TXT', 'PTR']);
const HOSTNAME = /^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$/;

async function dnsLookup(type: unknown, name: unknown, timeoutMs: unknown): Promise<unknown> {
  if (typeof type !== 'string' || !DNS_TYPES.has(type.toUpperCase())) throw badArgument(`dns type must be one of ${[...DNS_TYPES].join(', ')}`);
  if (typeof name !== 'string') throw badArgument('dns name must be a string');
  const t = type.toUpperCase();
  if (t === 'PTR' ? isIP(name) === 0 && !HOSTNAME.test(name) : !HOSTNAME.test(name)) throw badArgument(`invalid DNS name ${JSON.stringify(name).slice(0, 80)}`);
  const ms = typeof timeoutMs === 'number' && timeoutMs > 0 ? Math.min(timeoutMs, 10_000) : 2000;
  const r = new Resolver({ timeout: ms, tries: 1 });
  try {
    switch (t) {
      case 'A':
        return await r.resolve4(name);
      case 'AAAA':
        return await r.resolve6(name);
      case 'MX':
        return (await r.resolveMx(name)).map((m) => ({ exchange: m.exchange, priority: m.priority }));
      case 'TXT':
        return (await r.resolveTxt(name)).map((parts) => parts.join(''));
      default:
        return isIP(name) !== 0 ? await r.reverse(name) : await r.resolvePtr(name);
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'ERROR';
    // NXDOMAIN and "no data" are answers, not failures.
    if (code === 'ENOTFOUND' || code === 'ENODATA') return [];
    throw new Error(`[MILTERD_PLUGIN_DNS] ${t} ${name}: ${code}`);
  }
}

interface Job {
  /** 0: a one-way notification (abort, close), never answered. */
  readonly id: number;
  readonly call: WireCall;
  /** Date.now() when the call reached this process. */
  readonly received: number;
  logs: PluginLog[];
  done: boolean;
}

/** One isolate running the plugin, one call at a time. */
class Slot {
  readonly #init: Init;
  readonly #kv: KvStore;
  #isolate: ivm.Isolate | undefined;
  #dispatch: ivm.Reference | undefined;
  #ready: Promise<void> | undefined;
  readonly #queue: Job[] = [];
  #current: Job | undefined;
  description: WireDescription | undefined;

  constructor(init: Init, kv: KvStore) {
    this.#init = init;
    this.#kv = kv;
  }

  /** (Re)creates the isolate: SDK runtime, then the plugin, then a bootstrap that registers it. */
  start(): Promise<void> {
    this.#ready = this.#create();
    return this.#ready;
  }

  async #create(): Promise<void> {
    const init = this.#init;
    const isolate = new ivm.Isolate({
      memoryLimit: Math.max(8, init.limits.memoryMb),
      onCatastrophicError: (message: string) => {
        // After a catastrophic error only process.abort() ends the process (isolated-vm#457).
        send({ type: 'fatal', message });
        process.abort();
      },
    });
    this.#isolate = isolate;
    const context = await isolate.createContext();
    const jail = context.global;
    const grant = new Set<Capability>(init.capabilities);
    // Host services as References on hidden globals; the SDK runtime captures and deletes them.
    if (grant.has('log')) {
      await jail.set(
        '__milterd_log',
        new ivm.Reference((level: unknown, msg: unknown, fields: unknown) => this.#log(level, msg, fields)),
      );
    }
    // Async services resolve to `{ error }` instead of rejecting: a rejection's code does not
    // cross the isolate boundary, and an early one surfaces as an unhandled rejection here
    // (isolated-vm #314, #417), which would let a plugin crash its own sandbox.
    const settle = async (fn: () => unknown): Promise<unknown> => {
      try {
        return await fn();
      } catch (err) {
        const m = err instanceof Error ? err.message : String(err);
        const pre = /^\[(MILTERD_[A-Z_]+)\]\s*(.*)$/s.exec(m);
        return { error: pre ? { code: pre[1], message: pre[2] } : { message: m } };
      }
    };
    if (grant.has('kv')) {
      await jail.set(
        '__milterd_kv',
        new ivm.Reference((op: unknown, key: unknown, value: unknown, ttl: unknown) => settle(() => this.#kv.run(op, key, value, ttl))),
      );
    }
    if (grant.has('dns')) {
      // Default lookup timeout: half the call's wall-clock limit, so a slow resolver fails the
      // lookup (the plugin can handle that) rather than the whole call.
      const dnsDefault = Math.max(100, Math.min(2000, Math.floor(init.limits.wallMs / 2)));
      await jail.set(
        '__milterd_dns',
        new ivm.Reference((type: unknown, name: unknown, timeoutMs: unknown) =>
          settle(() => dnsLookup(type, name, timeoutMs === undefined || timeoutMs === null ? dnsDefault : timeoutMs)),
        ),
      );
    }
    if (grant.has('clock')) {
      await jail.set('__milterd_clock', new ivm.Reference(() => Date.now()));
    }
    await jail.set('__milterd_options', new ivm.ExternalCopy(init.options ?? {}).copyInto());
    const sdk = await isolate.compileModule(init.sdkCode, { filename: 'milterd:sdk' });
    const plugin = await isolate.compileModule(init.pluginCode, { filename: `plugin:${init.plugin}` });
    const boot = await isolate.compileModule(
      "import plugin from 'plugin';\nimport { __register } from '@milterd/sdk';\n__register(plugin);\n",
      { filename: 'milterd:boot' },
    );
    const resolve = (spec: string): ivm.Module => {
      if (spec === '@milterd/sdk') return sdk;
      if (spec === 'plugin') return plugin;
      throw new Error(`module ${JSON.stringify(spec)} is not available in the sandbox`);
    };
    await sdk.instantiate(context, resolve);
    // The SDK runs first: it captures the host References and deletes them from the global
    // object before any plugin code exists in this context.
    await sdk.evaluate({ timeout: 1000 });
    await plugin.instantiate(context, resolve);
    await boot.instantiate(context, resolve);
    await boot.evaluate({ timeout: Math.max(1000, init.limits.cpuMs * 10) });
    this.#dispatch = await sdk.namespace.get('__dispatch', { reference: true });
    const describe = await sdk.namespace.get('__describe', { reference: true });
    this.description = (await describe.apply(undefined, [], { result: { copy: true }, timeout: 1000 })) as WireDescription;
    describe.release();
  }

  #log(level: unknown, msg: unknown, fields: unknown): void {
    const job = this.#current;
    if (job === undefined || job.logs.length >= MAX_LOGS_PER_CALL) return;
    const lvl = level === 'debug' || level === 'warn' || level === 'error' ? level : 'info';
    // The arguments are whatever isolated-vm made of them, and the plugin controls that: its
    // transfer options are read with ordinary property lookups, so a plugin that sets
    // `Object.prototype.promise = true` makes them arrive here as host Promises. Keep plain
    // data only: anything else would make the result message uncloneable, and the call would
    // never be answered (the daemon then kills the whole sandbox process at its own timeout).
    const text = (typeof msg === 'string' ? msg : describe(msg)).slice(0, MAX_LOG_CHARS);
    const plain = fields !== null && typeof fields === 'object' && !Array.isArray(fields) ? plainData(fields, 0) : undefined;
    const record: PluginLog =
      plain !== null && typeof plain === 'object' && !Array.isArray(plain)
        ? { level: lvl, msg: text, fields: plain as Record<string, unknown> }
        : { level: lvl, msg: text };
    job.logs.push(record);
  }

  enqueue(job: Job): void {
    this.#queue.push(job);
    if (this.#current === undefined) void this.#next();
  }

  async #next(): Promise<void> {
    const job = this.#queue.shift();
    if (job === undefined) return;
    this.#current = job;
    try {
      await this.#run(job);
    } finally {
      this.#current = undefined;
      void this.#next();
    }
  }

  async #run(job: Job): Promise<void> {
    try {
      await this.#ready;
    } catch (err) {
      this.#finish(job, undefined, failure('MILTERD_PLUGIN_LOAD', (err as Error).message));
      this.start().catch(() => undefined);
      return;
    }
    const { cpuMs, wallMs } = this.#init.limits;
    // A call's wall-clock limit counts from when it reached this process, not from when its
    // isolate got free: an isolate runs one call at a time, so calls queue behind slow ones
    // (a plugin awaiting DNS, many connections on one isolate). Counted from the start, a queue
    // longer than wallMs went unanswered until the daemon's own timer killed the whole sandbox
    // as hung, failing every call in flight. Now a call that cannot start in time is answered
    // here, and the isolate (not at fault) is kept. One-way calls (abort, close) always run:
    // they drop the connection's state.
    const t0 = job.id === 0 ? Date.now() : job.received;
    const waited = Date.now() - t0;
    if (waited >= wallMs) {
      this.#finish(
        job,
        undefined,
        failure('MILTERD_PLUGIN_WALL', `${job.call.phase} waited ${waited} ms for its isolate (busy with other connections' calls, or restarting) and did not start within ${wallMs} ms`),
      );
      return;
    }
    const isolate = this.#isolate!;
    let watchdogFired = false;
    let wall: (v: typeof WALL) => void = () => undefined;
    const walled = new Promise<typeof WALL>((r) => (wall = r));
    // One watchdog for both limits. CPU time is read from the isolate (cpuTime counts the
    // time its thread runs this isolate, also after an await), not enforced with isolated-vm's
    // per-call `timeout`: that arms a timer thread on every call, which measured 25-50 µs a
    // call, a large share of a plugin call's cost. Dispose stops the isolate either way.
    const cpu0 = isolate.cpuTime;
    const stop = (code: string, why: string): void => {
      watchdogFired = true;
      this.#finish(job, undefined, failure(code, `${job.call.phase} ${why}`));
      this.#recycle(isolate);
      wall(WALL);
    };
    let watchdog: NodeJS.Timeout;
    const check = (): void => {
      const usedCpu = Number(isolate.cpuTime - cpu0) / 1e6;
      const usedWall = Date.now() - t0;
      if (usedCpu >= cpuMs) return stop('MILTERD_PLUGIN_CPU', `used more than ${cpuMs} ms of CPU time`);
      if (usedWall >= wallMs) return stop('MILTERD_PLUGIN_WALL', `ran longer than ${wallMs} ms${waited > 0 ? ` (${waited} ms of it queued)` : ''}`);
      watchdog = setTimeout(check, Math.max(1, Math.min(cpuMs - usedCpu, wallMs - usedWall)));
    };
    watchdog = setTimeout(check, Math.min(cpuMs, wallMs - waited));
    try {
      const call = this.#dispatch!.apply(undefined, [job.call], {
        arguments: { copy: true },
        result: { promise: true, copy: true },
      }) as Promise<WireResult>;
      call.catch(() => undefined); // may settle after the watchdog, or never
      // Stop waiting at the watchdog. Code V8 cannot interrupt (a huge BigInt to string) keeps
      // the disposed isolate's thread busy and this promise pending for seconds: waiting for it
      // held every later call of this slot (other connections, and each `close`) until the
      // daemon killed the whole sandbox process at its own timeout.
      const result = await Promise.race([call, walled]);
      if (result === WALL) return;
      const over = outputProblem(job.call, result);
      this.#finish(job, over === undefined ? result : undefined, over === undefined ? undefined : failure('MILTERD_PLUGIN_OUTPUT', over));
    } catch (err) {
      if (!watchdogFired) {
        const f = classify(err, isolate);
        this.#finish(job, undefined, f);
        if (f.code === 'MILTERD_PLUGIN_CPU' || f.code === 'MILTERD_PLUGIN_MEMORY') this.#recycle(isolate);
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  #recycle(isolate: ivm.Isolate): void {
    if (this.#isolate !== isolate) return;
    this.#dispatch = undefined;
    this.#isolate = undefined;
    try {
      if (!isolate.isDisposed) isolate.dispose();
    } catch {
      // already gone
    }
    this.start().catch(() => undefined);
  }

  #finish(job: Job, result: WireResult | undefined, error: SandboxFailure | undefined): void {
    if (job.done) return;
    job.done = true;
    if (job.id === 0) {
      if (error !== undefined) send({ type: 'notice', phase: job.call.phase, error, logs: job.logs });
      return;
    }
    try {
      if (error !== undefined) send({ type: 'result', id: job.id, error, logs: job.logs });
      else send({ type: 'result', id: job.id, result: result!, logs: job.logs });
    } catch (err) {
      // Something in the answer could not be serialized: answer anyway, or the daemon waits
      // for this call until it kills the process.
      send({
        type: 'result',
        id: job.id,
        error: failure('MILTERD_PLUGIN_OUTPUT', `the plugin's answer could not be sent: ${err instanceof Error ? err.message : String(err)}`),
        logs: [],
      });
    }
  }
}

/** A short description of a value that is not a string, without calling into it. */
function describe(v: unknown): string {
  if (v === null || (typeof v !== 'object' && typeof v !== 'function')) return String(v);
  return Object.prototype.toString.call(v);
}

const MAX_FIELD_DEPTH = 4;
/** Values (MAX_FIELD_NODES) and string characters (MAX_FIELD_CHARS) kept of one record's fields. */
const MAX_FIELD_NODES = 200;
const MAX_FIELD_CHARS = 16_384;

/**
 * A copy of log fields that is plain data (null, booleans, finite numbers, strings, arrays and
 * plain objects), bounded in depth and in total size (up to 100 records per call are kept);
 * anything else becomes a short description.
 */
function plainData(v: unknown, depth: number, budget = { nodes: MAX_FIELD_NODES, chars: MAX_FIELD_CHARS }): unknown {
  if (--budget.nodes < 0) return '[truncated]';
  if (v === null || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : String(v);
  if (typeof v === 'string') {
    const kept = v.slice(0, Math.max(0, budget.chars));
    budget.chars -= kept.length;
    return kept;
  }
  if (typeof v !== 'object' || depth >= MAX_FIELD_DEPTH) return describe(v);
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString();
  if (Array.isArray(v)) return v.slice(0, Math.max(0, budget.nodes)).map((x) => plainData(x, depth + 1, budget));
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return describe(v);
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(v)) {
    if (budget.nodes <= 0) break;
    const d = Object.getOwnPropertyDescriptor(v, k);
    out[k.slice(0, 100)] = d !== undefined && 'value' in d ? plainData(d.value, depth + 1, budget) : '[accessor]';
  }
  return out;
}

/** What the watchdog's promise resolves to. */
const WALL: unique symbol = Symbol('wall');

/** Most modifications one plugin may return for one message (the daemon's own cap). */
const MAX_MODS = 10_000;
/**
 * Most characters of header names and values, addresses, ESMTP arguments and reasons one
 * plugin may return for one message. Real filters add a few headers; Sendmail refuses a header
 * section over 32 KiB by default (MaxHeadersLength). The daemon checks each header (63 KiB) but
 * not their sum, and every later plugin in the chain gets the headers in its eom call: 1 000
 * headers of 60 KiB made the next plugin's sandbox go over its memory limit.
 */
const MAX_META_CHARS = 1 << 20;
/** Bodies one plugin may return for one message: twice the body it got plus this, in bytes. */
const BODY_ALLOWANCE = 4 << 20;

/**
 * Why an end-of-message result is too large to ship to the daemon, or undefined. Checked here,
 * in the sandbox process: a 200 MB body sent over IPC blocked the daemon's event loop for a
 * second while it was deserialized (even after the call had timed out), delaying every
 * connection, and the daemon's memory grew by five times that.
 */
function outputProblem(call: WireCall, result: WireResult): string | undefined {
  if (call.phase !== 'eom') return undefined;
  const mods: unknown = (result as { mods?: unknown } | null | undefined)?.mods;
  if (!Array.isArray(mods)) return undefined; // the daemon refuses anything that is not a list
  if (mods.length > MAX_MODS) return `${mods.length} modifications in one message (at most ${MAX_MODS})`;
  const maxBody = 2 * call.body.byteLength + BODY_ALLOWANCE;
  let chars = 0;
  let bytes = 0;
  for (const mod of mods) {
    if (mod === null || typeof mod !== 'object') continue;
    for (const v of Object.values(mod as Record<string, unknown>)) {
      if (typeof v === 'string') chars += v.length;
      else if (ArrayBuffer.isView(v)) bytes += v.byteLength;
    }
  }
  if (chars > MAX_META_CHARS) return `modifications with ${chars} characters of headers and addresses (at most ${MAX_META_CHARS})`;
  if (bytes > maxBody) return `${bytes} bytes of replaced body for a ${call.body.byteLength}-byte message (at most ${maxBody})`;
  return undefined;
}

/** Maps an error from the isolate to a catalogue code. */
function classify(err: unknown, isolate: ivm.Isolate): SandboxFailure {
  const message = err instanceof Error ? err.message : String(err);
  if (/Script execution timed out/i.test(message)) return failure('MILTERD_PLUGIN_CPU', 'used more CPU time than its limit');
  if (/memory limit/i.test(message) || (isolate.isDisposed && /disposed/i.test(message))) {
    return failure('MILTERD_PLUGIN_MEMORY', 'went over its memory limit');
  }
  const prefixed = /^\[(MILTERD_[A-Z_]+)\]\s*(.*)$/s.exec(message);
  if (prefixed) return failure(prefixed[1]!, prefixed[2]!);
  const code = (err as { code?: unknown })?.code;
  if (typeof code === 'string' && code.startsWith('MILTERD_')) return failure(code, message);
  return failure('MILTERD_FILTER_THREW', message);
}

// ---------------------------------------------------------------------------------------

let slots: Slot[] = [];
let kv: KvStore | undefined;
const affinity = new Map<string, Slot>();
let rr = 0;

async function init(msg: Init): Promise<void> {
  // One store for the whole pool; with Redis, one connection, opened at the first kv call.
  // The daemon logs Redis outages and recoveries once each (the plugin only sees its calls fail).
  const store = createKv(msg.storage, msg.plugin, (state) => send({ type: 'storage', ...state }));
  kv = store;
  slots = Array.from({ length: Math.max(1, msg.poolSize) }, () => new Slot(msg, store));
  try {
    await Promise.all(slots.map((s) => s.start()));
  } catch (err) {
    send({ type: 'init-error', error: failure('MILTERD_PLUGIN_LOAD', err instanceof Error ? err.message : String(err)) });
    return;
  }
  send({ type: 'ready', description: slots[0]!.description! });
}

function call(id: number, c: WireCall): void {
  // Calls of one connection go to one isolate, so its per-connection state lives in one place.
  let slot = affinity.get(c.conn);
  if (slot === undefined) {
    slot = slots[rr++ % slots.length]!;
    affinity.set(c.conn, slot);
  }
  if (c.phase === 'close') affinity.delete(c.conn);
  slot.enqueue({ id, call: c, received: Date.now(), logs: [], done: false });
}

function onMessage(m: ToSandbox): void {
  if (m.type === 'init') void init(m);
  else if (m.type === 'call') call(m.id, m.call);
  else if (m.type === 'notify') call(0, m.call);
  else if (m.type === 'batch') for (const x of m.items) onMessage(x);
}
process.on('message', onMessage);
// Stop signals are for the daemon, which stops its sandboxes itself (IPC disconnect, or SIGKILL)
// once its connections are done. They reach this process too when they are sent to the whole
// process group (Ctrl-C in a terminal) or the whole cgroup (systemd's default KillMode): dying
// here would fail the calls of the messages the daemon is letting finish. The daemon's other
// signals (SIGHUP reload, SIGUSR2 reopen the log) reach it the same way (`systemctl kill -s`
// signals the whole cgroup), and their default action here would be to terminate.
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR2'] as const) process.on(signal, () => undefined);
// The daemon went away (stopped, or killed: the IPC channel closes either way): nothing left to serve.
process.on('disconnect', () => {
  kv?.close();
  process.exit(0);
});
