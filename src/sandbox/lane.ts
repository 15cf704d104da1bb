/**
 * A lane of a plugin's sandbox process: one worker thread, one isolate running the plugin, and
 * a pipe of its own to the daemon (frames.ts) for the calls of the connections the daemon
 * assigned to it. Lanes let the connections of one plugin run in parallel: plugin code that
 * spins until its CPU limit holds only its own lane's thread, the other lanes keep answering.
 * The process's main thread (worker.ts) owns the kv store and the stuck-entry watchdog.
 *
 * Per call, one synchronous entry into the isolate (see Slot) on this thread: no thread hop,
 * and the call's CPU limit is isolated-vm's `timeout` on each entry. The memory limit is the
 * isolate heap limit. A call over either limit, or over its wall-clock limit while it waits
 * for a host service, recycles the isolate: a plugin that misbehaved once is not trusted with
 * its state again.
 * @module
 */
import ivm from 'isolated-vm';
import { Socket } from 'node:net';
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import type { Capability, WireCall, WireDescription, WireResult } from '../../sdk/src/protocol.ts';
import type { FromSandbox, LaneData, PluginLog, SandboxFailure, ToLane, ToMain } from './messages.ts';
import { badArgument } from './kv.ts';
import { FrameSplitter, encodeFrames } from './frames.ts';

type Init = LaneData['init'];

const MAX_LOGS_PER_CALL = 100;
const MAX_LOG_CHARS = 4000;

/**
 * How long past an entry's timeout the stuck-entry watchdog (worker.ts) waits before it ends
 * the process. isolated-vm's timeout stops interruptible code within a millisecond or two;
 * the margin is for a machine so loaded that a thread is not scheduled on time.
 */
const STUCK_GRACE_MS = 300;

const data = workerData as LaneData;
/** This lane's slot of the watchdog's shared deadlines: when the entry in progress must have returned, or 0. */
const stuck = new Float64Array(data.stuck);
const lane = data.lane;
const pipe = new Socket({ fd: data.fd, readable: true, writable: true });

/** Results of this event-loop turn, written together (one write instead of one each). */
let outbox: FromSandbox[] = [];

function flush(): void {
  const items = outbox;
  outbox = [];
  if (items.length === 0 || pipe.destroyed) return;
  // A write to a daemon that has gone fails here (EPIPE); the process exits on 'disconnect'.
  pipe.write(encodeFrames(items), () => undefined);
}

function send(m: FromSandbox): void {
  outbox.push(m);
  if (m.type === 'fatal') flush();
  else if (outbox.length === 1) setImmediate(flush);
}

/** kv calls go to the main thread, which holds the plugin's one store (shared by all lanes). */
const kvWaiting = new Map<number, (value: unknown) => void>();
let kvSeq = 0;
function kvRemote(op: unknown, key: unknown, value: unknown, ttl: unknown): Promise<unknown> {
  const id = ++kvSeq;
  return new Promise((resolve) => {
    kvWaiting.set(id, resolve);
    parentPort!.postMessage({ type: 'kv', id, op, key, value, ttl } satisfies ToMain);
  });
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
  logs: PluginLog[];
  done: boolean;
  /** Time it may still spend inside the isolate, ms (its CPU limit). */
  cpuLeft: number;
  /** When it started running (Date.now()), for its wall-clock limit. */
  started: number;
  /** Its wall-clock timer, armed only while it waits for a host service. */
  wall: NodeJS.Timeout | undefined;
}

const COPY = Object.freeze({ copy: true as const });

/**
 * One isolate running the plugin, one call at a time.
 *
 * Every entry into the isolate is synchronous (`applySync`), on this process's main thread,
 * under isolated-vm's `timeout` set to what is left of the call's CPU (and wall-clock) limit:
 * the start of a call, and each answer of a host service it waited for. The timeout covers the
 * microtasks that run before the entry returns, so code after an `await` is bounded too. A
 * call that awaits nothing from the host settles within its one entry and reports its outcome
 * through the `done` Reference before the entry returns: one crossing per call, no thread hop.
 * (An asynchronous `apply` costs a hop to an isolate thread and back, about 4× the CPU of a
 * synchronous entry here, and bridged promises resumed plugin code on that thread at moments
 * the host did not choose.)
 *
 * While a call waits for a host service no plugin code runs: a wall-clock timer bounds the
 * wait. Code V8 cannot interrupt (a huge BigInt to string) ignores the timeout and holds this
 * thread: the stuck-entry watchdog thread (below) then ends the process, as nothing in it can
 * answer any more.
 */
class Slot {
  readonly #init: Init;
  #isolate: ivm.Isolate | undefined;
  #start: ivm.Reference | undefined;
  #deliver: ivm.Reference | undefined;
  /** Bumped on each (re)creation: answers for an isolate that is gone are dropped. */
  #generation = 0;
  #state: 'starting' | 'live' | 'broken' = 'starting';
  #loadError = '';
  readonly #queue: Job[] = [];
  #current: Job | undefined;
  /** Id of the current call inside the isolate (matches its `done`). */
  #seq = 0;
  #inEntry = false;
  #lastCall: WireCall | undefined;
  description: WireDescription | undefined;

  constructor(init: Init) {
    this.#init = init;
  }

  /** (Re)creates the isolate: SDK runtime, then the plugin, then a bootstrap that registers it. */
  start(): Promise<void> {
    const gen = ++this.#generation;
    this.#state = 'starting';
    const ready = this.#create(gen);
    ready.then(
      () => {
        if (gen !== this.#generation) return;
        this.#state = 'live';
        this.#pump();
      },
      (err: unknown) => {
        if (gen !== this.#generation) return;
        this.#state = 'broken';
        this.#loadError = err instanceof Error ? err.message : String(err);
        this.#pump();
      },
    );
    return ready;
  }

  async #create(gen: number): Promise<void> {
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
    await jail.set(
      '__milterd_done',
      new ivm.Reference((id: unknown, ok: unknown, value: unknown) => this.#done(gen, id, ok, value)),
    );
    if (grant.has('log')) {
      await jail.set(
        '__milterd_log',
        new ivm.Reference((level: unknown, msg: unknown, fields: unknown) => this.#log(level, msg, fields)),
      );
    }
    if (grant.has('kv')) {
      await jail.set(
        '__milterd_kv',
        new ivm.Reference((ticket: unknown, op: unknown, key: unknown, value: unknown, ttl: unknown) =>
          this.#hostCall(gen, ticket, () => kvRemote(op, key, value, ttl)),
        ),
      );
    }
    if (grant.has('dns')) {
      // Default lookup timeout: half the call's wall-clock limit, so a slow resolver fails the
      // lookup (the plugin can handle that) rather than the whole call.
      const dnsDefault = Math.max(100, Math.min(2000, Math.floor(init.limits.wallMs / 2)));
      await jail.set(
        '__milterd_dns',
        new ivm.Reference((ticket: unknown, type: unknown, name: unknown, timeoutMs: unknown) =>
          this.#hostCall(gen, ticket, () => dnsLookup(type, name, timeoutMs === undefined || timeoutMs === null ? dnsDefault : timeoutMs)),
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
    const start = await sdk.namespace.get('__start', { reference: true });
    const deliver = await sdk.namespace.get('__deliver', { reference: true });
    const describe = await sdk.namespace.get('__describe', { reference: true });
    this.description = (await describe.apply(undefined, [], { result: { copy: true }, timeout: 1000 })) as WireDescription;
    describe.release();
    if (gen === this.#generation) {
      this.#start = start;
      this.#deliver = deliver;
    }
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
    if (this.#current === undefined) this.#pump();
  }

  /** Runs queued calls, one at a time; those that await nothing from the host finish right here. */
  #pump(): void {
    if (this.#inEntry) return;
    while (this.#current === undefined && this.#queue.length > 0) {
      if (this.#state === 'starting') return; // start() pumps again once the isolate is live
      if (this.#state === 'broken') {
        for (const job of this.#queue.splice(0)) this.#finish(job, undefined, failure('MILTERD_PLUGIN_LOAD', this.#loadError));
        this.start().catch(() => undefined); // try again for later calls
        return;
      }
      const job = this.#queue.shift()!;
      job.started = Date.now();
      job.cpuLeft = this.#init.limits.cpuMs;
      this.#current = job;
      this.#lastCall = job.call;
      this.#enter(job, this.#start!, [++this.#seq, job.call]);
      if (this.#current === job) this.#waitFor(job);
    }
  }

  /** The current call awaits a host service: bound the wait by its wall-clock limit. */
  #waitFor(job: Job): void {
    if (job.wall !== undefined) return;
    const left = this.#init.limits.wallMs - (Date.now() - job.started);
    job.wall = setTimeout(() => {
      if (job.done) return;
      this.#finish(job, undefined, failure('MILTERD_PLUGIN_WALL', `${job.call.phase} ran longer than ${this.#init.limits.wallMs} ms`));
      // Its promise may still settle later; a fresh isolate for the next call.
      this.#recycle();
    }, Math.max(1, left));
  }

  /** One synchronous entry into the isolate on behalf of `job`, within what is left of its limits. */
  #enter(job: Job, ref: ivm.Reference, args: unknown[]): void {
    const { cpuMs, wallMs } = this.#init.limits;
    const wallLeft = wallMs - (Date.now() - job.started);
    const byWall = wallLeft < job.cpuLeft;
    const budget = Math.max(1, Math.ceil(Math.min(job.cpuLeft, wallLeft)));
    const isolate = this.#isolate!;
    const t0 = performance.now();
    this.#inEntry = true;
    stuck[lane] = Date.now() + budget + STUCK_GRACE_MS;
    try {
      ref.applySync(undefined, args, { arguments: COPY, timeout: budget });
    } catch (err) {
      let f = classify(err, isolate);
      if (f.code === 'MILTERD_PLUGIN_CPU') {
        f = byWall
          ? failure('MILTERD_PLUGIN_WALL', `${job.call.phase} ran longer than ${wallMs} ms`)
          : failure('MILTERD_PLUGIN_CPU', `${job.call.phase} used more than ${cpuMs} ms of CPU time`);
      }
      this.#finish(job, undefined, f);
      // The SDK's entries never throw on their own: the isolate was stopped (time, memory) or
      // is broken. A plugin that misbehaved once is not trusted with its state again.
      this.#recycle();
    } finally {
      stuck[lane] = 0;
      this.#inEntry = false;
      job.cpuLeft -= performance.now() - t0;
    }
  }

  /** `done` from the isolate (inside an entry): the outcome of call `id`. */
  #done(gen: number, id: unknown, ok: unknown, value: unknown): void {
    const job = this.#current;
    if (gen !== this.#generation || job === undefined || id !== this.#seq) return; // a call already answered
    if (ok === true) {
      const result = value as WireResult;
      const over = outputProblem(job.call, result);
      this.#finish(job, over === undefined ? result : undefined, over === undefined ? undefined : failure('MILTERD_PLUGIN_OUTPUT', over));
    } else {
      const m = (value as { message?: unknown } | null)?.message;
      this.#finish(job, undefined, fromMessage(typeof m === 'string' ? m : 'the plugin failed'));
    }
  }

  /** A host service call: do the work, then enter the isolate with its answer. */
  #hostCall(gen: number, ticket: unknown, work: () => unknown): void {
    if (typeof ticket !== 'number') return;
    settle(work).then((value) => this.#answer(gen, ticket, value));
  }

  #answer(gen: number, ticket: number, value: unknown): void {
    if (gen !== this.#generation || this.#state !== 'live') return; // asked by an isolate that is gone
    if (this.#inEntry) {
      queueMicrotask(() => this.#answer(gen, ticket, value));
      return;
    }
    // An answer nobody waits for now (an earlier call did not await its kv write) still runs
    // the plugin's code after it: on behalf of the current call, or of no call.
    const job = this.#current ?? this.#orphan();
    this.#enter(job, this.#deliver!, [ticket, value]);
    if (job.done) {
      if (job === this.#current) this.#current = undefined;
      this.#pump();
    }
  }

  /** A job for plugin code that runs outside any call: its failures are reported as notices. */
  #orphan(): Job {
    const call = this.#lastCall ?? ({ phase: 'close' } as WireCall);
    return { id: 0, call, logs: [], done: false, cpuLeft: this.#init.limits.cpuMs, started: Date.now(), wall: undefined };
  }

  #recycle(): void {
    const isolate = this.#isolate;
    this.#start = undefined;
    this.#deliver = undefined;
    this.#isolate = undefined;
    try {
      if (isolate !== undefined && !isolate.isDisposed) isolate.dispose();
    } catch {
      // already gone
    }
    this.start().catch(() => undefined);
  }

  #finish(job: Job, result: WireResult | undefined, error: SandboxFailure | undefined): void {
    if (job.done) return;
    job.done = true;
    if (job.wall !== undefined) clearTimeout(job.wall);
    if (this.#current === job) this.#current = undefined;
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

/**
 * Runs a host service; failures resolve to `{ error }` instead of rejecting, so the plugin's
 * promise is always settled by a value the SDK turns into a plain Error with its code.
 */
async function settle(fn: () => unknown): Promise<unknown> {
  try {
    return await fn();
  } catch (err) {
    const m = err instanceof Error ? err.message : String(err);
    const pre = /^\[(MILTERD_[A-Z_]+)\]\s*(.*)$/s.exec(m);
    return { error: pre ? { code: pre[1], message: pre[2] } : { message: m } };
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

/** Maps an error thrown by an entry into the isolate to a catalogue code. */
function classify(err: unknown, isolate: ivm.Isolate): SandboxFailure {
  const message = err instanceof Error ? err.message : String(err);
  if (/Script execution timed out/i.test(message)) return failure('MILTERD_PLUGIN_CPU', 'used more CPU time than its limit');
  if (/memory limit/i.test(message) || (isolate.isDisposed && /disposed/i.test(message))) {
    return failure('MILTERD_PLUGIN_MEMORY', 'went over its memory limit');
  }
  return fromMessage(message);
}

/** A plugin's failure from its message: `[MILTERD_CODE] text` keeps its code, anything else threw. */
function fromMessage(message: string): SandboxFailure {
  const prefixed = /^\[(MILTERD_[A-Z_]+)\]\s*(.*)$/s.exec(message);
  if (prefixed) return failure(prefixed[1]!, prefixed[2]!);
  return failure('MILTERD_FILTER_THREW', message);
}


// ---------------------------------------------------------------------------------------

const slot = new Slot(data.init);
slot.start().then(
  () => parentPort!.postMessage({ type: 'ready', description: slot.description! } satisfies ToMain),
  (err: unknown) =>
    parentPort!.postMessage({
      type: 'init-error',
      error: failure('MILTERD_PLUGIN_LOAD', err instanceof Error ? err.message : String(err)),
    } satisfies ToMain),
);

parentPort!.on('message', (m: { type: 'kv-answer'; id: number; value: unknown }) => {
  const resolve = kvWaiting.get(m.id);
  if (resolve === undefined) return;
  kvWaiting.delete(m.id);
  resolve(m.value);
});

const frames = new FrameSplitter();
pipe.on('data', (chunk: Buffer) => {
  for (const m of frames.push(chunk) as ToLane[]) {
    slot.enqueue({ id: m.type === 'call' ? m.id : 0, call: m.call, logs: [], done: false, cpuLeft: 0, started: 0, wall: undefined });
  }
});
// The daemon closed the pipe: the process is going away (worker.ts exits on 'disconnect').
pipe.on('error', () => undefined);
