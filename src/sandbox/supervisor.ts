/**
 * Supervises one plugin's sandbox process: starts it, routes calls to it, restarts it with
 * backoff when it dies, kills it when it goes over its process memory limit or stops
 * answering, and switches the plugin off with a circuit breaker when it keeps failing.
 *
 * Why one process per plugin (and a pool of isolates inside it): a V8 fatal error or a
 * catastrophic out-of-memory in one vendor's plugin then costs only that plugin's calls in
 * flight, never another plugin's, and the memory guard, restarts and breaker are per plugin,
 * which is how an administrator thinks about them. The price is one Node process (~45 MB) per
 * plugin. See docs/architecture.md.
 * @module
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MilterdError, type ErrorCode, ERRORS } from '../errors.ts';
import { BUILT, PACKAGE_ROOT } from '../paths.ts';
import { BREAKER_DEFAULTS } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { countBreakerOpen, countRestart, setStorageUp } from '../metrics.ts';
import type { Capability, WireCall, WireDescription, WireResult } from '../../sdk/src/protocol.ts';
import type { FromSandbox, PluginLog, SandboxLimits, ToSandbox } from './messages.ts';
import type { StorageSettings } from './kv.ts';

// From the sources, the worker beside this file; from the build, its own entry point in dist/.
const WORKER = BUILT ? join(PACKAGE_ROOT, 'dist', 'sandbox', 'worker.js') : fileURLToPath(new URL('./worker.ts', import.meta.url));

/** How a supervisor runs its plugin. */
export interface SupervisorOptions {
  readonly plugin: string;
  readonly sdkCode: string;
  readonly pluginCode: string;
  readonly capabilities: readonly Capability[];
  readonly limits: SandboxLimits;
  readonly poolSize: number;
  readonly options: unknown;
  /** Where the plugin's kv data lives (configuration `storage`); default: in memory. */
  readonly storage?: StorageSettings;
  /** RSS above which the sandbox process is killed, MB (backs the soft isolate limit). */
  readonly processMemoryMb: number;
  readonly logger: Logger;
  /** Consecutive failures of one hook (crash, CPU, wall, memory) that open the breaker. Default BREAKER_DEFAULTS. */
  readonly breakerThreshold?: number;
  /** First breaker cool-down, ms; doubles on each failed retry up to 5 min. Default BREAKER_DEFAULTS. */
  readonly breakerCooldownMs?: number;
}

/** What a call returns. */
export interface CallResult {
  readonly result: WireResult;
  readonly logs: readonly PluginLog[];
}

/** Failures that count against the circuit breaker: the plugin, not its input, is at fault. */
const BREAKER_CODES: ReadonlySet<string> = new Set([
  'MILTERD_PLUGIN_CRASHED',
  'MILTERD_PLUGIN_CPU',
  'MILTERD_PLUGIN_WALL',
  'MILTERD_PLUGIN_MEMORY',
]);

/** Breaker counts whose successes the supervisor never sees (see #succeeded). */
const UNSEEN_SUCCESS = ['abort', 'close', 'process'] as const;

interface Pending {
  readonly resolve: (r: CallResult) => void;
  readonly reject: (e: MilterdError) => void;
  readonly timer: NodeJS.Timeout;
  /** The call's phase (failures count against the breaker per hook). */
  readonly phase: string;
  /** The call was written to the process's pipe (it may have been read). */
  sent: boolean;
}

function pluginError(code: string, message: string, plugin: string, logs?: readonly PluginLog[]): MilterdError {
  const c = (code in ERRORS ? code : 'MILTERD_FILTER_THREW') as ErrorCode;
  return new MilterdError(c, message, { details: { plugin, ...(logs && logs.length > 0 ? { logs } : {}) } });
}

/** Call errors raised because the call never reached the sandbox process. */
const NOT_SENT = new WeakSet<object>();

/** True when `child` was killed or has died (it may still look `connected` for a while). */
function isDying(child: ChildProcess): boolean {
  return child.killed || child.exitCode !== null || child.signalCode !== null;
}

/**
 * A process's resident set size in MB, from /proc (Linux). Read synchronously: a few µs for
 * this small file, where an async readFile measured ~300 µs of CPU, 20 times a second per plugin.
 */
function rssMb(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

function forkSandbox(): ChildProcess {
  return fork(WORKER, [], {
    execArgv: ['--no-node-snapshot', '--disable-warning=ExperimentalWarning'],
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: {}, // plugins get no environment, and the sandbox process needs none
  });
}

/**
 * A started sandbox process waiting for its plugin (Node booted, isolated-vm loaded: most of a
 * sandbox's start-up time). Kept only while hot reload is on, so a reload does not wait for a
 * process to boot. Each one is used at most once, for one plugin.
 */
let spare: ChildProcess | undefined;
let keepSpare = false;

function freshSpare(): ChildProcess {
  const c = forkSandbox();
  c.unref();
  c.channel?.unref();
  // A spare that dies before use is simply not used.
  c.once('exit', () => {
    if (spare === c) spare = undefined;
  });
  return c;
}

/** A sandbox process for a new plugin: the warm spare if there is one, else a new one. */
function takeSandboxProcess(): ChildProcess {
  const c = spare;
  spare = undefined;
  if (keepSpare) spare = freshSpare();
  if (c !== undefined && c.connected && c.exitCode === null) {
    c.ref();
    c.channel?.ref();
    return c;
  }
  return forkSandbox();
}

/** Keeps (or stops keeping) one warm sandbox process ready, for fast reloads. */
export function keepWarmSandbox(on: boolean): void {
  keepSpare = on;
  if (on && spare === undefined) spare = freshSpare();
  if (!on && spare !== undefined) {
    spare.kill('SIGKILL'); // it ignores SIGTERM (worker.ts), and holds nothing yet
    spare = undefined;
  }
}

/** One plugin's sandbox process. */
export class Supervisor {
  readonly #o: SupervisorOptions;
  readonly #log: Logger;
  #child: ChildProcess | undefined;
  #ready: Promise<WireDescription> | undefined;
  readonly #pending = new Map<number, Pending>();
  #outbox: { readonly msg: ToSandbox; readonly done: (err: Error | null) => void }[] = [];
  #seq = 0;
  #stopped = false;
  #restarts = 0;
  #backoff = 0;
  #startedAt = 0;
  #killReason: { code: ErrorCode; message: string } | undefined;
  #memTimer: NodeJS.Timeout | undefined;
  /**
   * Failures in a row, per hook. Per hook, not per plugin: a plugin that crashes at every end
   * of message but answers its envelope calls would otherwise never reach the threshold, each
   * good envrcpt resetting the count.
   */
  readonly #consecutive = new Map<string, number>();
  /** Since when the kv storage is down (0: up, or not used yet); kept across process restarts. */
  #storageDownSince = 0;
  #openUntil = 0;
  #cooldown: number;
  description: WireDescription | undefined;

  constructor(options: SupervisorOptions) {
    this.#o = options;
    this.#log = options.logger.child({ plugin: options.plugin });
    this.#cooldown = options.breakerCooldownMs ?? BREAKER_DEFAULTS.cooldownMs;
  }

  /** Starts the sandbox and loads the plugin; rejects with MILTERD_PLUGIN_LOAD if it fails. */
  async start(): Promise<WireDescription> {
    this.#ready = this.#spawn();
    try {
      this.description = await this.#ready;
    } catch (err) {
      // A plugin that cannot load is not restarted: stop, so nothing keeps the process alive.
      await this.stop();
      throw err;
    }
    return this.description;
  }

  /** For diagnostics and `milterd check`. */
  status(): { state: 'running' | 'starting' | 'open' | 'stopped'; restarts: number; pid: number | undefined } {
    const state = this.#stopped ? 'stopped' : Date.now() < this.#openUntil ? 'open' : this.#child?.connected ? 'running' : 'starting';
    return { state, restarts: this.#restarts, pid: this.#child?.pid };
  }

  #spawn(): Promise<WireDescription> {
    const o = this.#o;
    this.#killReason = undefined;
    const child = takeSandboxProcess();
    this.#child = child;
    this.#startedAt = Date.now();
    const ready = new Promise<WireDescription>((resolve, reject) => {
      const onMessage = (m: FromSandbox): void => {
        if (m.type === 'ready') {
          child.off('exit', onEarlyExit);
          resolve(m.description);
        } else if (m.type === 'init-error') {
          child.off('exit', onEarlyExit);
          child.kill('SIGKILL');
          reject(pluginError('MILTERD_PLUGIN_LOAD', `plugin ${o.plugin} failed to load: ${m.error.message}`, o.plugin));
        }
      };
      const onEarlyExit = (code: number | null, signal: NodeJS.Signals | null): void => {
        reject(pluginError('MILTERD_PLUGIN_LOAD', `sandbox of ${o.plugin} exited while loading (${signal ?? code})`, o.plugin));
      };
      child.on('message', onMessage);
      child.once('exit', onEarlyExit);
    });
    child.on('message', (m: FromSandbox) => this.#onMessage(m));
    child.once('exit', (code, signal) => this.#onExit(child, code, signal));
    child.on('error', (err) => this.#log.error({ code: 'MILTERD_PLUGIN_CRASHED', err: err.message }, 'sandbox process error'));
    const init: ToSandbox = {
      type: 'init',
      plugin: o.plugin,
      sdkCode: o.sdkCode,
      pluginCode: o.pluginCode,
      capabilities: o.capabilities,
      limits: o.limits,
      poolSize: o.poolSize,
      options: o.options,
      ...(o.storage === undefined ? {} : { storage: o.storage }),
    };
    child.send(init);
    this.#watchMemory(child);
    return ready;
  }

  #watchMemory(child: ChildProcess): void {
    clearInterval(this.#memTimer);
    // The isolate limit is soft ("a determined attacker could use 2-3 times this limit"):
    // the process's RSS is the hard line.
    this.#memTimer = setInterval(() => {
      if (child.pid === undefined || child.exitCode !== null) return;
      {
        const mb = rssMb(child.pid);
        if (mb !== undefined && mb > this.#o.processMemoryMb && child.exitCode === null) {
          this.#killReason = {
            code: 'MILTERD_PLUGIN_MEMORY',
            message: `sandbox process used ${Math.round(mb)} MB, over its ${this.#o.processMemoryMb} MB limit`,
          };
          this.#log.error({ code: 'MILTERD_PLUGIN_MEMORY', rssMb: Math.round(mb) }, this.#killReason.message);
          child.kill('SIGKILL');
        }
      }
    }, 50);
    this.#memTimer.unref();
  }

  #onMessage(m: FromSandbox): void {
    switch (m.type) {
      case 'batch':
        for (const x of m.items) this.#onMessage(x);
        return;
      case 'result': {
        const p = this.#pending.get(m.id);
        if (p === undefined) return; // answered late, after our own watchdog
        this.#pending.delete(m.id);
        clearTimeout(p.timer);
        if (m.error !== undefined) {
          this.#fail(m.error.code, p.phase);
          p.reject(pluginError(m.error.code, m.error.message, this.#o.plugin, m.logs));
        } else {
          this.#succeeded(p.phase);
          if (this.#openUntil !== 0) {
            // The retry after a cool-down succeeded: the breaker is closed, and a later opening
            // starts again from the first cool-down.
            this.#openUntil = 0;
            this.#cooldown = this.#o.breakerCooldownMs ?? BREAKER_DEFAULTS.cooldownMs;
            this.#log.info(`plugin ${this.#o.plugin} works again: switched back on`);
          }
          p.resolve({ result: m.result!, logs: m.logs });
        }
        return;
      }
      case 'storage':
        this.#storage(m.up, m.where, m.reason);
        return;
      case 'notice':
        this.#fail(m.error.code, m.phase);
        this.#log.warn(
          { hook: m.phase, code: m.error.code, err: m.error.message },
          `plugin ${this.#o.plugin} failed in ${m.phase}: ${m.error.message}`,
        );
        return;
      case 'fatal':
        this.#killReason = { code: 'MILTERD_PLUGIN_CRASHED', message: `V8 fatal error in the sandbox: ${m.message}` };
        this.#log.error({ code: 'MILTERD_PLUGIN_CRASHED', err: m.message }, 'catastrophic error in the sandbox');
        return;
      default:
        return;
    }
  }

  #onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.#child !== child) return;
    clearInterval(this.#memTimer);
    const reason = this.#killReason ?? {
      code: 'MILTERD_PLUGIN_CRASHED' as ErrorCode,
      message: `sandbox process exited (${signal ?? `code ${code}`})`,
    };
    // The hooks whose calls died with the process (once each), or the process itself.
    const phases = new Set([...this.#pending.values()].map((p) => p.phase));
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      clearTimeout(p.timer);
      const e = pluginError(reason.code, reason.message, this.#o.plugin);
      // Never written to the pipe: the process did not see it, call() sends it to the successor.
      if (!p.sent) NOT_SENT.add(e);
      p.reject(e);
    }
    if (this.#stopped) return;
    // A kill by our own call watchdog was already counted when it fired.
    if (!(this.#killReason?.code === 'MILTERD_PLUGIN_WALL')) {
      if (phases.size === 0) phases.add('process');
      for (const phase of phases) this.#fail(reason.code, phase);
    }
    this.#restarts++;
    countRestart(this.#o.plugin, reason.code);
    // Backoff doubles while the process keeps dying young; a process that lived 30 s resets it.
    this.#backoff = Date.now() - this.#startedAt > 30_000 ? 100 : Math.min(Math.max(100, this.#backoff * 2), 5000);
    this.#log.warn({ code: reason.code, restartInMs: this.#backoff, restarts: this.#restarts }, `${reason.message}; restarting`);
    const delay = this.#backoff;
    this.#ready = new Promise<void>((r) => setTimeout(r, delay)).then(() => {
      if (this.#stopped) throw pluginError('MILTERD_PLUGIN_CRASHED', 'stopped', this.#o.plugin);
      return this.#spawn();
    });
    this.#ready.catch((err: unknown) => {
      if (!this.#stopped) this.#log.error({ code: (err as MilterdError).code, err: (err as Error).message }, 'sandbox restart failed');
    });
  }

  /**
   * A good call ends the run of failures of its hook. It also ends those whose successes are
   * never seen: one-way calls (abort, close) and a process death with no call in flight. Left
   * alone, those counts would add up rare failures over days until the breaker opened.
   */
  #succeeded(phase: string): void {
    this.#consecutive.delete(phase);
    for (const unseen of UNSEEN_SUCCESS) this.#consecutive.delete(unseen);
  }

  /**
   * The sandbox lost or regained its kv storage. Logged once per outage, whichever process
   * reports it: a sandbox restarted during an outage reports it again, and says nothing new.
   */
  #storage(up: boolean, where: string, reason: string | undefined): void {
    setStorageUp(this.#o.plugin, up);
    if (!up && this.#storageDownSince === 0) {
      this.#storageDownSince = Date.now();
      this.#log.warn(
        { code: 'MILTERD_PLUGIN_KV', storage: where, err: reason },
        `storage ${where} unavailable (${reason ?? 'disconnected'}): kv calls of ${this.#o.plugin} fail until it is back`,
      );
    } else if (up && this.#storageDownSince !== 0) {
      const downMs = Date.now() - this.#storageDownSince;
      this.#storageDownSince = 0;
      this.#log.info({ storage: where, downMs }, `storage ${where} reachable again after ${(downMs / 1000).toFixed(1)} s`);
    }
  }

  /**
   * Counts a failure against the breaker; opens it at the threshold, or at once when the
   * failure was the retry after a cool-down (half-open), then for twice as long.
   *
   * `#openUntil` is 0 while the breaker is closed. It used to stay set after a successful
   * retry: the breaker then needed `threshold` more failures to reopen after a failed retry,
   * doubled its cool-down on the next opening even after long healthy periods, and logged
   * "retrying a switched-off plugin" before every later call.
   */
  #fail(code: string, phase: string): void {
    if (!BREAKER_CODES.has(code)) return;
    const n = (this.#consecutive.get(phase) ?? 0) + 1;
    this.#consecutive.set(phase, n);
    const threshold = this.#o.breakerThreshold ?? BREAKER_DEFAULTS.threshold;
    const now = Date.now();
    const failedRetry = this.#openUntil !== 0 && now >= this.#openUntil;
    if (failedRetry || n >= threshold) {
      if (failedRetry) this.#cooldown = Math.min(this.#cooldown * 2, BREAKER_DEFAULTS.maxCooldownMs);
      this.#openUntil = now + this.#cooldown;
      this.#consecutive.clear();
      countBreakerOpen(this.#o.plugin);
      this.#log.error(
        { code: 'MILTERD_PLUGIN_CIRCUIT_OPEN', cause: code, retryInMs: this.#cooldown },
        `plugin ${this.#o.plugin} keeps failing (${code}): switched off for ${this.#cooldown} ms`,
      );
    }
  }

  /**
   * Runs one call. Rejects with a MilterdError whose code says what went wrong (the chain
   * turns it into the plugin's failure policy).
   */
  async call(call: WireCall, timeoutMs: number): Promise<CallResult> {
    if (this.#stopped) throw pluginError('MILTERD_PLUGIN_CRASHED', `plugin ${this.#o.plugin} is stopped`, this.#o.plugin);
    const now = Date.now();
    if (now < this.#openUntil) {
      throw pluginError('MILTERD_PLUGIN_CIRCUIT_OPEN', `plugin ${this.#o.plugin} is switched off after repeated failures`, this.#o.plugin);
    }
    if (this.#openUntil !== 0) {
      // Half-open: this call is the retry. Success closes the breaker (see #onMessage).
      this.#log.info('retrying a switched-off plugin');
    }
    const child = this.#child;
    if (child === undefined || !child.connected || isDying(child)) await this.#restarted(child, timeoutMs);
    try {
      return await this.#send(call, timeoutMs);
    } catch (err) {
      // Not delivered: the process died after the check above, before the call was written
      // to its pipe. Safe to send again once, to its successor.
      if (!NOT_SENT.has(err as object) || this.#stopped) throw err;
      await this.#restarted(child, timeoutMs);
      return await this.#send(call, timeoutMs);
    }
  }

  /**
   * Waits, within `timeoutMs`, until `child` (a process that was killed or died) has exited and
   * its successor has loaded. A dead process stays `connected` until its exit is processed,
   * and `#ready` becomes the restart only in #onExit: a call sent in between failed with EPIPE,
   * so after each kill by the call watchdog or the memory guard the next message (often
   * another connection's) got the failure policy too.
   */
  async #restarted(child: ChildProcess | undefined, timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    // #onExit listens first (see #spawn): when this resolves, #ready is the restart.
    const exited =
      child === undefined || child.exitCode !== null || child.signalCode !== null
        ? Promise.resolve()
        : new Promise<void>((r) => child.once('exit', () => r()));
    try {
      await Promise.race([
        exited.then(() => this.#ready),
        new Promise((_, rej) => {
          timer = setTimeout(() => rej(pluginError('MILTERD_PLUGIN_CRASHED', `plugin ${this.#o.plugin} is restarting`, this.#o.plugin)), timeoutMs);
          timer.unref();
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    if (this.#stopped) throw pluginError('MILTERD_PLUGIN_CRASHED', `plugin ${this.#o.plugin} is stopped`, this.#o.plugin);
  }

  /**
   * A call nobody waits for (abort and close have no verdict): one IPC message instead of a
   * round trip. Dropped if the sandbox is not running (its state died with it anyway).
   */
  notify(call: WireCall): void {
    const child = this.#child;
    if (this.#stopped || child === undefined || !child.connected) return;
    const msg: ToSandbox = { type: 'notify', call };
    this.#post(child, msg, () => undefined);
  }

  /**
   * Calls of one event-loop turn go out in one IPC write: with many connections in flight, one
   * write (and one wake-up of the sandbox process) per turn instead of one per call.
   */
  #post(child: ChildProcess, msg: ToSandbox, done: (err: Error | null) => void): void {
    this.#outbox.push({ msg, done });
    if (this.#outbox.length === 1) setImmediate(() => this.#flush(child));
  }

  #flush(child: ChildProcess): void {
    const items = this.#outbox;
    this.#outbox = [];
    if (items.length === 0) return;
    const callback = (err: Error | null): void => {
      for (const i of items) i.done(err);
    };
    if (!child.connected) {
      callback(new Error('the sandbox process is gone'));
      return;
    }
    const msg: ToSandbox = items.length === 1 ? items[0]!.msg : { type: 'batch', items: items.map((i) => i.msg) };
    child.send(msg, callback);
  }

  #send(call: WireCall, timeoutMs: number): Promise<CallResult> {
    const child = this.#child!;
    const id = ++this.#seq;
    return new Promise<CallResult>((resolve, reject) => {
      // The sandbox answers a runaway call itself at wallMs; if it does not, it is stuck in
      // something V8 cannot interrupt: kill it (its other calls get the policy, it restarts).
      const timer = setTimeout(() => {
        if (!this.#pending.has(id)) return;
        this.#pending.delete(id);
        this.#killReason = { code: 'MILTERD_PLUGIN_WALL', message: `sandbox did not answer ${call.phase} within ${timeoutMs} ms` };
        this.#log.error({ code: 'MILTERD_PLUGIN_WALL', hook: call.phase }, `${this.#killReason.message}; killing it`);
        this.#fail('MILTERD_PLUGIN_WALL', call.phase);
        reject(pluginError('MILTERD_PLUGIN_WALL', this.#killReason.message, this.#o.plugin));
        child.kill('SIGKILL');
      }, timeoutMs);
      const pending: Pending = { resolve, reject, timer, phase: call.phase, sent: false };
      this.#pending.set(id, pending);
      const msg: ToSandbox = { type: 'call', id, call };
      this.#post(child, msg, (err) => {
        if (!err) pending.sent = true;
        else if (this.#pending.has(id)) {
          this.#pending.delete(id);
          clearTimeout(timer);
          const e = pluginError('MILTERD_PLUGIN_CRASHED', `cannot reach the sandbox: ${err.message}`, this.#o.plugin);
          NOT_SENT.add(e);
          reject(e);
        }
      });
    });
  }

  /** Stops the sandbox process (calls in flight fail). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#memTimer);
    const child = this.#child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.disconnect?.();
    const t = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(t);
  }
}
