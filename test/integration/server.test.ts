/**
 * Server-level behaviour: unix sockets (stale replacement, permissions, refusing a live one),
 * graceful stop with a deadline, backpressure, and the daemon process's signals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lstat, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { defineFilter } from '../../src/chain/define.ts';
import { Chain } from '../../src/chain/chain.ts';
import { ChainHolder } from '../../src/chain/holder.ts';
import { MilterServer } from '../../src/server/server.ts';
import { Session, type Transport } from '../../src/session/session.ts';
import { encodeCommand } from '../../src/protocol/encoder.ts';
import { silentLogger } from '../../src/log.ts';
import { MtaClient } from '../support/mta-client.ts';
import { startServer } from '../support/server.ts';

async function tempDir(t: { after(fn: () => unknown): void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'milterd-test-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

test('unix socket: mode applied, stale socket replaced, a live one and a plain file refused', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'milterd.sock');
  // A stale socket: its owner was killed, so nothing unlinked the file.
  const owner = spawn(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => console.log('up'))", path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await once(owner.stdout!, 'data');
  owner.kill('SIGKILL');
  await once(owner, 'exit');
  assert.ok((await lstat(path)).isSocket(), 'a stale socket file is there');
  const s = await startServer([], { listen: `unix:${path}`, socketMode: 0o600 });
  t.after(() => s.stop());
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  const c = await s.connect();
  assert.equal((await c.negotiate()).version, 6);
  await c.close();

  const second = new MilterServer({ listen: `unix:${path}`, chain: [] });
  await assert.rejects(second.start(), { code: 'MILTERD_SERVER_LISTEN', message: /in use by a running daemon/ });

  const file = join(dir, 'not-a-socket');
  await writeFile(file, 'precious');
  const third = new MilterServer({ listen: `unix:${file}`, chain: [] });
  await assert.rejects(third.start(), { code: 'MILTERD_SERVER_LISTEN', message: /not a socket/ });
});

test('listening on an address in use fails with a typed error and closes what was opened', async (t) => {
  const s = await startServer([]);
  t.after(() => s.stop());
  const port = Number(s.address.split(':')[1]!.split('@')[0]);
  const other = new MilterServer({ listen: ['inet:0@127.0.0.1', `inet:${port}@127.0.0.1`], chain: [] });
  await assert.rejects(other.start(), { code: 'MILTERD_SERVER_LISTEN' });
  assert.deepEqual(other.addresses(), []);
});

test('stop() lets an open message finish, refuses new connections, and closes stragglers at the deadline', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const f = defineFilter({ name: 'slow', eom: () => gate.then(() => undefined) });
  const s = await startServer([{ filter: f }]);
  t.after(() => s.stop());
  const busy = await s.connect();
  await busy.negotiate();
  await busy.connect();
  await busy.helo('h');
  const pending = busy.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  const idle = await s.connect();
  await idle.negotiate();
  await new Promise((r) => setTimeout(r, 50));

  const stopping = s.server.stop({ deadlineMs: 1500 });
  await new Promise((r) => setTimeout(r, 50));
  await assert.rejects(MtaClient.connect(s.address, { timeoutMs: 500 }).then((c) => c.negotiate()));
  release();
  const r = await pending;
  assert.equal(r.eom?.verdict.kind, 'accept', 'the message in progress got its verdict');
  await busy.quit();
  // The idle connection never quits: closed at the deadline.
  const t0 = Date.now();
  await stopping;
  assert.ok(Date.now() - t0 > 1000, 'waited for the deadline');
  await idle.waitClosed(1000);
  assert.equal(s.withCode('MILTERD_SERVER_SHUTDOWN_TIMEOUT').length, 1);
});

test('backpressure: while a filter works, reading pauses above the high-water mark and resumes after', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const chain = new Chain([{ filter: defineFilter({ name: 'slow', eom: () => gate.then(() => undefined) }) }]);
  const events: string[] = [];
  const written: Uint8Array[] = [];
  const transport: Transport = {
    write: (d) => (written.push(d), true),
    pause: () => void events.push('pause'),
    resume: () => void events.push('resume'),
    end: () => void events.push('end'),
    once: () => undefined,
  };
  const session = new Session('t', transport, {
    chains: new ChainHolder(chain),
    logger: silentLogger(),
    maxFrameSize: 1 << 20,
    bodyStore: { memoryLimit: 1 << 20 },
    progressIntervalMs: 0,
    highWaterMark: 256 * 1024,
  });
  const send = (...cmds: Parameters<typeof encodeCommand>[0][]): void => {
    for (const c of cmds) session.receive(encodeCommand(c));
  };
  send(
    { kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff },
    { kind: 'connect', hostname: 'h', family: 'inet', port: 1, address: '192.0.2.1' },
    { kind: 'mail', args: ['<a@b>'] },
    { kind: 'rcpt', args: ['<c@d>'] },
    { kind: 'eob', chunk: new Uint8Array(0) },
  );
  // The filter is now busy on end of message; the MTA pipelines the next message.
  send({ kind: 'mail', args: ['<a@b>'] }, { kind: 'rcpt', args: ['<c@d>'] });
  const chunk = new Uint8Array(65535);
  for (let i = 0; i < 8; i++) send({ kind: 'body', chunk });
  assert.deepEqual(events, ['pause']);
  release();
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(events, ['pause', 'resume']);
  assert.equal(session.state, 'BODY', 'the buffered commands were processed after the pause');
  await session.end();
});

test('the daemon process: SIGTERM lets a connection finish, then exits 0; a second signal closes at once', async (t) => {
  const node = process.execPath;
  const start = (): { proc: ReturnType<typeof spawn>; address: Promise<string> } => {
    const proc = spawn(node, ['bin/milterd.js', 'start', '--listen', 'inet:0@127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.after(() => proc.kill('SIGKILL'));
    const address = new Promise<string>((resolve, reject) => {
      let buf = '';
      proc.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        const m = /"listen":\["([^"]+)"\]/.exec(buf);
        if (m) resolve(m[1]!);
      });
      proc.once('exit', (code) => reject(new Error(`exited ${code}: ${buf}`)));
      setTimeout(() => reject(new Error(`no listen line: ${buf}`)), 10_000).unref();
    });
    return { proc, address };
  };

  const a = start();
  const c = await MtaClient.connect(await a.address);
  await c.negotiate();
  a.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(a.proc.exitCode, null, 'still running while a connection is open');
  await c.connect();
  await c.quit();
  const [code] = await once(a.proc, 'exit');
  assert.equal(code, 0);

  const b = start();
  const c2 = await MtaClient.connect(await b.address);
  await c2.negotiate();
  b.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 200));
  b.proc.kill('SIGTERM');
  await c2.waitClosed(3000);
  const [code2] = await once(b.proc, 'exit');
  assert.equal(code2, 0);
});

test('signals sent to the whole process group (Ctrl-C, systemd, logrotate) leave the sandboxes serving the messages being finished, and no process behind', async (t) => {
  // The default chain: three example plugins, each in its own sandbox process.
  const proc = spawn(process.execPath, ['bin/milterd.js', 'start', '--listen', 'inet:0@127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const group = proc.pid!;
  const alive = (): boolean => {
    try {
      process.kill(-group, 0);
      return true;
    } catch {
      return false;
    }
  };
  t.after(() => {
    if (alive()) process.kill(-group, 'SIGKILL');
  });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 20_000;
  while (!/"listen":\["[^"]+"\]/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const address = /"listen":\["([^"]+)"\]/.exec(out)?.[1];
  assert.ok(address, `no listen line: ${out}`);

  const c = await MtaClient.connect(address);
  await c.negotiate();
  await c.connect();
  await c.mail('<a@example.org>');
  await c.rcpt('<b@example.net>');
  // Mid-message, signals reach the daemon and every sandbox process at once: the daemon's
  // reload and reopen-the-log signals first, then the stop.
  process.kill(-group, 'SIGHUP');
  process.kill(-group, 'SIGUSR2');
  await new Promise((r) => setTimeout(r, 100));
  process.kill(-group, 'SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  await c.data();
  await c.header('Subject', 'hi');
  await c.eoh();
  await c.body('hello\r\n');
  const r = await c.eom();
  assert.equal(r.verdict.kind, 'accept', out);
  const added = r.modifications.filter((m) => m.kind === 'addheader').map((m) => (m as { name: string }).name);
  assert.deepEqual(added, ['X-Inspect', 'X-Filtered-By'], 'inspect and header-stamp still ran');
  assert.doesNotMatch(out, /MILTERD_PLUGIN_CRASHED|sandbox process (exited|died)/);
  await c.quit();
  const [code] = await once(proc, 'exit');
  assert.equal(code, 0);
  // The sandboxes end with the daemon's IPC channel.
  const gone = Date.now() + 5000;
  while (alive() && Date.now() < gone) await new Promise((r2) => setTimeout(r2, 50));
  assert.equal(alive(), false, 'a sandbox process outlived the daemon');
});

test('a connection that ends during a slow end of message closes the filters only after it finished', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const events: string[] = [];
  const f = defineFilter({
    name: 'slow',
    eom: async () => {
      await gate;
      events.push('eom done');
    },
    close: () => void events.push('close'),
  });
  const transport: Transport = { write: () => true, pause: () => undefined, resume: () => undefined, end: () => undefined, once: () => undefined };
  const session = new Session('t', transport, {
    chains: new ChainHolder(new Chain([{ filter: f }])),
    logger: silentLogger(),
    maxFrameSize: 1 << 20,
    bodyStore: { memoryLimit: 1 << 20 },
    progressIntervalMs: 0,
    highWaterMark: 1 << 20,
  });
  for (const c of [
    { kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff },
    { kind: 'connect', hostname: 'h', family: 'inet', port: 1, address: '192.0.2.1' },
    { kind: 'mail', args: ['<a@b>'] },
    { kind: 'rcpt', args: ['<c@d>'] },
    { kind: 'eob', chunk: new Uint8Array(0) },
  ] as const) session.receive(encodeCommand(c));
  const ended = session.end();
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(events, [], 'nothing closes while the message is in progress');
  release();
  await ended;
  assert.deepEqual(events, ['eom done', 'close']);
});
