/**
 * The sandbox process of one plugin (started by the supervisor with `--no-node-snapshot`, as
 * isolated-vm asks). Its main thread sets up one lane thread per pool slot (lane.ts: an isolate
 * running the plugin and a pipe of its own to the daemon), holds the plugin's kv store for all
 * lanes, and watches for stuck lanes. Nothing else runs here: if plugin code takes V8 down
 * (catastrophic out-of-memory, an uninterruptible operation), only this process dies, and the
 * daemon that owns the MTA connections gives the calls in flight the plugin's failure policy.
 * @module
 */
import { Worker } from 'node:worker_threads';
import type { FromSandbox, LaneData, SandboxFailure, ToMain, ToSandbox } from './messages.ts';
import { createKv, type KvStore } from './kv.ts';

type Init = Extract<ToSandbox, { type: 'init' }>;

/** The signal the watchdog ends the process with; the supervisor reads it as "stuck" (STUCK_SIGNAL there). */
const STUCK_SIGNAL = 'SIGUSR2';
const LANE = new URL('./lane.ts', import.meta.url);

function send(m: FromSandbox): void {
  // With a callback, a write to a daemon that has gone is reported here instead of as an
  // 'error' event; the 'disconnect' handler exits.
  if (process.connected) process.send?.(m, undefined, undefined, () => undefined);
}

function failure(code: string, message: string): SandboxFailure {
  return { code, message };
}

let kv: KvStore | undefined;

/**
 * Settles a kv operation as data: failures become `{ error }` (the SDK turns them into plain
 * Errors with their code), so a lane's promise is always answered.
 */
async function kvRun(store: KvStore, m: Extract<ToMain, { type: 'kv' }>): Promise<unknown> {
  try {
    return await store.run(m.op, m.key, m.value, m.ttl);
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    const pre = /^\[(MILTERD_[A-Z_]+)\]\s*(.*)$/s.exec(text);
    return { error: pre ? { code: pre[1], message: pre[2] } : { message: text } };
  }
}

/**
 * The stuck-entry watchdog. Each lane writes, before every entry into its isolate, the time by
 * which the entry must have returned (its timeout plus a margin), and 0 after. Code V8 cannot
 * interrupt (a huge BigInt to a decimal string runs ~20 s in one C++ call) ignores isolated-vm's
 * timeout and holds its lane's thread: nothing can answer that lane's calls until it returns.
 * The watchdog then ends the process at once (the daemon gives the calls in flight the
 * plugin's failure policy and restarts it), instead of letting it burn a core until isolated-vm
 * gives up on the isolate and aborts the process anyway, seconds later.
 */
function watch(stuck: Float64Array): void {
  setInterval(() => {
    const now = Date.now();
    for (const by of stuck) if (by !== 0 && now > by) process.kill(process.pid, STUCK_SIGNAL);
  }, 50).unref();
}

async function init(msg: Init): Promise<void> {
  // One store for all lanes; with Redis, one connection, opened at the first kv call.
  const store = createKv(msg.storage, msg.plugin);
  kv = store;
  const n = Math.max(1, msg.poolSize);
  const stuck = new Float64Array(new SharedArrayBuffer(8 * n));
  const { type: _type, storage: _storage, poolSize: _pool, ...laneInit } = msg;
  const lanes = Array.from({ length: n }, (_, lane) => {
    const data: LaneData = { init: laneInit, lane, fd: 4 + lane, stuck: stuck.buffer as SharedArrayBuffer };
    const w = new Worker(LANE, { workerData: data, env: {} });
    return new Promise<ToMain & { type: 'ready' }>((resolve, reject) => {
      w.on('message', (m: ToMain) => {
        if (m.type === 'ready') resolve(m);
        else if (m.type === 'init-error') reject(new Error(m.error.message));
        else if (m.type === 'kv') void kvRun(store, m).then((value) => w.postMessage({ type: 'kv-answer', id: m.id, value }));
      });
      // A lane thread that dies takes its connections' calls with it: let the daemon restart all.
      w.on('error', (err) => {
        reject(err);
        send({ type: 'fatal', message: `lane ${lane}: ${err.message}` });
        process.exit(70);
      });
      w.on('exit', (code) => {
        if (code !== 0) process.exit(70);
      });
    });
  });
  try {
    const ready = await Promise.all(lanes);
    watch(stuck);
    send({ type: 'ready', description: ready[0]!.description });
  } catch (err) {
    send({ type: 'init-error', error: failure('MILTERD_PLUGIN_LOAD', err instanceof Error ? err.message : String(err)) });
  }
}

process.on('message', (m: ToSandbox) => {
  if (m.type === 'init') void init(m);
});
// The daemon went away: nothing left to serve.
process.on('disconnect', () => {
  kv?.close();
  process.exit(0);
});
