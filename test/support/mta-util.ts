/**
 * Small process, port and polling helpers shared by the real-MTA harnesses
 * (postfix.ts, sendmail.ts, miltertest.ts). Every wait is bounded.
 * @module
 */
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** Result of a finished child process. */
export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion, killing it (SIGKILL) after `timeoutMs`. Never throws on exit code. */
export function run(
  cmd: string,
  args: readonly string[],
  opts: { readonly timeoutMs?: number; readonly input?: string; readonly env?: NodeJS.ProcessEnv; readonly cwd?: string } = {},
): Promise<RunResult & { readonly timedOut: boolean }> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/** Runs a command and throws (with its output) unless it exits 0 in time. */
export async function runOk(
  cmd: string,
  args: readonly string[],
  opts: { readonly timeoutMs?: number; readonly input?: string; readonly env?: NodeJS.ProcessEnv; readonly cwd?: string } = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0 || r.timedOut) {
    throw new Error(
      `${cmd} ${args.join(' ')} ${r.timedOut ? 'timed out' : `exited with ${r.code ?? r.signal}`}\n` +
        `--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`,
    );
  }
  return r;
}

/**
 * A loopback TCP port free right now (bound then released). Another process could take it before
 * use; callers that can detect a bind failure should retry with a new port.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr && typeof addr === 'object') resolve(addr.port);
        else reject(new Error('no port'));
      });
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port, or throws after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs: number, what: string): Promise<void> {
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1' });
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      }),
    { timeoutMs, intervalMs: 50, what: `${what} listening on 127.0.0.1:${port}` },
  );
}

/**
 * Polls `probe` until it returns a value other than false/undefined/null, or throws after
 * `timeoutMs` with `what` (and `detail()` if given) in the message.
 */
export async function waitFor<T>(
  probe: () => T | false | undefined | null | Promise<T | false | undefined | null>,
  opts: { readonly timeoutMs: number; readonly intervalMs?: number; readonly what: string; readonly detail?: () => string | Promise<string> },
): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== false && v !== undefined && v !== null) return v;
    if (Date.now() >= deadline) {
      const detail = opts.detail ? `\n${await opts.detail()}` : '';
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${opts.what}${detail}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}

/** A fresh private temporary directory (mode 0700) whose name starts with `prefix`. */
export function tempDir(prefix: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `milterd-${prefix}-`));
}

/** `inet:PORT@HOST` (libmilter syntax, as MilterServer.addresses() gives) → host and port. */
export function parseInetSocket(spec: string): { readonly host: string; readonly port: number } {
  const m = /^inet:(\d+)@(.+)$/.exec(spec);
  if (!m) throw new Error(`not an inet:PORT@HOST milter socket: ${spec}`);
  return { host: m[2] as string, port: Number(m[1]) };
}

const exitHooks = new Set<() => void>();
let exitHookInstalled = false;

/**
 * Registers a synchronous last-resort cleanup run when the process exits (a test file that
 * times out or throws past its after() hooks must not leave a Postfix master or an smtp-sink
 * running). Returns a function that unregisters it, for the normal cleanup path.
 */
export function onProcessExit(fn: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const hook of exitHooks) {
        try {
          hook();
        } catch {
          // best effort
        }
      }
    });
  }
  exitHooks.add(fn);
  return () => exitHooks.delete(fn);
}
