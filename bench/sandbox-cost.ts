/**
 * Where a sandboxed plugin's time goes, without the milter protocol around it: the same
 * end-of-message calls the daemon makes for one bench message (WireCall with 10 headers, a
 * 2 KiB body, the macros; one `close` per 5 messages), `--inflight` of them outstanding at a
 * time, through one of these paths:
 *
 * - `ipc-echo`: Node IPC (fork, `serialization: 'advanced'`, as the supervisor uses) to a child
 *   that answers every call at once with a fixed result: the cost of the process hop alone.
 * - `ipc-echo-json`: the same with `serialization: 'json'` (the body as an array of numbers
 *   would be unfair; it is sent as base64 here).
 * - `isolate`: in this process, isolated-vm exactly as src/sandbox/worker.ts calls it
 *   (`__dispatch.apply` with `arguments: {copy}`, `result: {promise, copy}`, a CPU timeout,
 *   a wall-clock watchdog timer): the cost of the isolate crossing plus the plugin's own work.
 * - `sandbox`: the real thing: src/sandbox/worker.ts forked as the Supervisor forks it, the
 *   plugin bundled and loaded by it.
 *
 * `--call envrcpt` sends one small envrcpt call per "message" instead of the end-of-message
 * call (what recipient-policy costs per recipient).
 *
 * Prints calls/s and CPU µs per call of this process and of the child (all its threads).
 * Run it pinned to one core to match bench/run.ts (`taskset -c 1 node bench/sandbox-cost.ts`).
 *
 *   node bench/sandbox-cost.ts [--mode sandbox|isolate|ipc-echo|ipc-echo-json|all] [--plugin ./plugins/inspect]
 *     [--calls 20000] [--inflight 32] [--pool 2] [--call eom|envrcpt] [--cpu-prof DIR] [--worker src/sandbox/worker.ts]
 *
 * `--worker` runs another copy of the sandbox worker (an experiment on a patched copy, say).
 * @module
 */
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import ivm from 'isolated-vm';
import type { WireCall, WireResult } from '../sdk/src/protocol.ts';
import { bundlePlugin } from '../src/plugins/bundle.ts';
import { loadSdkRuntime } from '../src/plugins/load.ts';
import { readManifest } from '../src/plugins/manifest.ts';
import { makeBody, makeHeaders } from './loadgen.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_WORKER = path.join(ROOT, 'src/sandbox/worker.ts');

/** The calls of one connection of the bench load: 5 messages, then close. */
function callsFor(conn: string, firstMsg: number, kind: 'eom' | 'envrcpt'): WireCall[] {
  const headers = makeHeaders(10).map(([name, raw]) => ({ name, value: raw.replace(/^ /, ''), raw }));
  const body = new Uint8Array(makeBody(2048));
  const base = (msg: number, qid: string) => ({
    conn,
    msg,
    connection: { hostname: 'client.example.org', family: 'inet' as const, address: '192.0.2.1', port: 40000, helo: 'client.example.org' },
    from: { address: '<alice@example.org>', args: ['SIZE=4096', 'BODY=8BITMIME'] },
    rcpts: [
      { address: '<rcpt0@example.net>', args: [] },
      { address: '<rcpt1@example.net>', args: [] },
    ],
    macros: {
      i: qid,
      j: 'mx.example.net',
      _: 'client.example.org [192.0.2.1]',
      v: 'Postfix 3.7.11',
      daemon_name: 'mx.example.net',
      daemon_addr: '198.51.100.25',
      mail_addr: 'alice@example.org',
      mail_host: 'example.org',
      mail_mailer: 'smtp',
      rcpt_addr: 'bob@example.net',
      rcpt_host: 'example.net',
      rcpt_mailer: 'smtp',
    },
  });
  const out: WireCall[] = [];
  for (let m = 0; m < 5; m++) {
    const msg = firstMsg + m;
    if (kind === 'eom') out.push({ ...base(msg, `4Zx${msg}`), phase: 'eom', headers, body, actions: ['addHeader'] });
    else out.push({ ...base(msg, `4Zx${msg}`), phase: 'envrcpt', arg: { address: '<rcpt0@example.net>', args: [] } });
  }
  out.push({ ...base(firstMsg + 4, `4Zx${firstMsg + 4}`), phase: 'close' });
  return out;
}

/** Something that answers calls. */
interface Target {
  call(c: WireCall): Promise<unknown>;
  childPid?: number;
  close(): Promise<void>;
}

function cpuOfPid(pid: number | undefined): number {
  if (pid === undefined) return 0;
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function ipcTarget(child: ChildProcess, wrap: (id: number, c: WireCall) => unknown): Target {
  const pending = new Map<number, (v: unknown) => void>();
  let seq = 0;
  child.on('message', (m: { type: string; id: number; result?: unknown }) => {
    if (m.type !== 'result') return;
    const p = pending.get(m.id);
    pending.delete(m.id);
    p?.(m.result);
  });
  return {
    childPid: child.pid,
    call(c) {
      const id = ++seq;
      return new Promise((resolve) => {
        pending.set(id, resolve);
        child.send(wrap(id, c) as object);
      });
    },
    async close() {
      const exited = new Promise((r) => child.once('exit', r));
      child.disconnect();
      await exited;
    },
  };
}

/** A child that echoes a fixed result for every call. */
const ECHO_CHILD = `
const result = { verdict: { type: 'continue' }, mods: [{ op: 'addHeader', name: 'X-Inspect', value: 'headers=10 bytes=500 body=2048 sum=123456' }] };
process.on('message', (m) => { if (m.type === 'call') process.send({ type: 'result', id: m.id, result, logs: [] }); });
process.on('disconnect', () => process.exit(0));
`;

async function echoTarget(serialization: 'advanced' | 'json'): Promise<Target> {
  const file = path.join(ROOT, '.bench-out', 'echo-child.mjs');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, ECHO_CHILD);
  const child = fork(file, [], { serialization, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return ipcTarget(child, (id, c) =>
    serialization === 'json' && c.phase === 'eom'
      ? { type: 'call', id, call: { ...c, body: Buffer.from(c.body).toString('base64') } }
      : { type: 'call', id, call: c },
  );
}

async function pluginCode(plugin: string): Promise<{ sdk: string; code: string; limits: { memoryMb: number; cpuMs: number; wallMs: number } }> {
  const sdk = await loadSdkRuntime();
  const manifest = await readManifest(path.resolve(ROOT, plugin));
  const bundle = await bundlePlugin(manifest);
  const l = manifest.limits;
  return { sdk: sdk.code, code: bundle.code, limits: { memoryMb: l.memoryMb, cpuMs: l.cpuMs, wallMs: l.wallMs } };
}

async function sandboxTarget(plugin: string, pool: number, profDir: string | undefined, worker: string): Promise<Target> {
  const p = await pluginCode(plugin);
  const execArgv = ['--no-node-snapshot', '--disable-warning=ExperimentalWarning'];
  if (profDir !== undefined) execArgv.push('--cpu-prof', `--cpu-prof-dir=${profDir}`);
  const child = fork(worker, [], { execArgv, serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: {} });
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (m: { type: string; error?: { message: string } }) => {
      if (m.type === 'ready') resolve();
      if (m.type === 'init-error') reject(new Error(m.error?.message));
    });
  });
  child.send({ type: 'init', plugin, sdkCode: p.sdk, pluginCode: p.code, capabilities: ['log'], limits: p.limits, poolSize: pool, options: {} });
  await ready;
  return ipcTarget(child, (id, c) => ({ type: 'call', id, call: c }));
}

/** isolated-vm in this process, called exactly as the sandbox worker calls it. */
async function isolateTarget(plugin: string, pool: number): Promise<Target> {
  const p = await pluginCode(plugin);
  const slots: Array<{ dispatch: ivm.Reference; busy: Promise<unknown> }> = [];
  for (let i = 0; i < pool; i++) {
    const isolate = new ivm.Isolate({ memoryLimit: p.limits.memoryMb });
    const context = await isolate.createContext();
    await context.global.set('__milterd_options', new ivm.ExternalCopy({}).copyInto());
    const sdk = await isolate.compileModule(p.sdk, { filename: 'milterd:sdk' });
    const mod = await isolate.compileModule(p.code, { filename: 'plugin' });
    const boot = await isolate.compileModule("import plugin from 'plugin';\nimport { __register } from '@milterd/sdk';\n__register(plugin);\n");
    const resolve = (spec: string): ivm.Module => (spec === 'plugin' ? mod : sdk);
    await sdk.instantiate(context, resolve);
    await sdk.evaluate();
    await mod.instantiate(context, resolve);
    await boot.instantiate(context, resolve);
    await boot.evaluate();
    slots.push({ dispatch: await sdk.namespace.get('__dispatch', { reference: true }), busy: Promise.resolve() });
  }
  const affinity = new Map<string, (typeof slots)[number]>();
  let rr = 0;
  return {
    call(c) {
      let s = affinity.get(c.conn);
      if (s === undefined) affinity.set(c.conn, (s = slots[rr++ % slots.length]!));
      const slot = s;
      const run = slot.busy.then(async () => {
        const watchdog = setTimeout(() => undefined, p.limits.wallMs);
        try {
          return (await slot.dispatch.apply(undefined, [c], {
            arguments: { copy: true },
            result: { promise: true, copy: true },
            timeout: p.limits.cpuMs,
          })) as WireResult;
        } finally {
          clearTimeout(watchdog);
        }
      });
      slot.busy = run.catch(() => undefined);
      return run;
    },
    async close() {},
  };
}

interface Figures {
  readonly mode: string;
  readonly callsPerSec: number;
  readonly eomPerSec: number;
  readonly parentUsPerMsg: number;
  readonly childUsPerMsg: number;
}

async function measure(mode: string, t: Target, calls: number, inflight: number, kind: 'eom' | 'envrcpt'): Promise<Figures> {
  // Warm up, then measure.
  const drive = async (n: number): Promise<{ eoms: number }> => {
    let next = 0;
    let eoms = 0;
    let connSeq = 0;
    const worker = async (): Promise<void> => {
      while (next < n) {
        const conn = `c${++connSeq}`;
        for (const c of callsFor(conn, connSeq * 10, kind)) {
          next++;
          if (c.phase !== 'close') eoms++;
          await t.call(c);
        }
      }
    };
    await Promise.all(Array.from({ length: inflight }, worker));
    return { eoms };
  };
  await drive(Math.min(5000, calls / 4));
  const p0 = process.cpuUsage();
  const c0 = cpuOfPid(t.childPid);
  const t0 = performance.now();
  const { eoms } = await drive(calls);
  const dt = (performance.now() - t0) / 1000;
  const p = process.cpuUsage(p0);
  const c1 = cpuOfPid(t.childPid);
  return {
    mode,
    callsPerSec: calls / dt,
    eomPerSec: eoms / dt,
    parentUsPerMsg: (p.user + p.system) / eoms,
    childUsPerMsg: ((c1 - c0) * 1e6) / eoms,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mode: { type: 'string', default: 'all' },
      plugin: { type: 'string', default: './plugins/inspect' },
      calls: { type: 'string', default: '20000' },
      inflight: { type: 'string', default: '32' },
      pool: { type: 'string', default: '2' },
      'cpu-prof': { type: 'string' },
      worker: { type: 'string', default: DEFAULT_WORKER },
      call: { type: 'string', default: 'eom' },
    },
  });
  const modes = values.mode === 'all' ? ['ipc-echo', 'ipc-echo-json', 'isolate', 'sandbox'] : values.mode.split(',');
  const calls = Number(values.calls);
  const inflight = Number(values.inflight);
  const pool = Number(values.pool);
  const kind = values.call === 'envrcpt' ? 'envrcpt' : 'eom';
  for (const mode of modes) {
    let t: Target;
    switch (mode) {
      case 'ipc-echo':
        t = await echoTarget('advanced');
        break;
      case 'ipc-echo-json':
        t = await echoTarget('json');
        break;
      case 'isolate':
        t = await isolateTarget(values.plugin, pool);
        break;
      case 'sandbox':
        t = await sandboxTarget(values.plugin, pool, values['cpu-prof'], path.resolve(values.worker));
        break;
      default:
        throw new Error(`unknown mode ${mode}`);
    }
    const f = await measure(mode, t, calls, inflight, kind);
    await t.close();
    process.stdout.write(
      `${f.mode.padEnd(14)} ${Math.round(f.eomPerSec).toString().padStart(6)} msg/s  ` +
        `CPU per message: this process ${f.parentUsPerMsg.toFixed(0).padStart(4)} µs, child ${f.childUsPerMsg.toFixed(0).padStart(4)} µs, ` +
        `total ${(f.parentUsPerMsg + f.childUsPerMsg).toFixed(0).padStart(4)} µs\n`,
    );
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`sandbox-cost: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
