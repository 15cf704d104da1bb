/**
 * Tests of the MTA simulator itself (test/support/mta-client.ts) against a tiny scripted fake
 * filter built on the codec, not against MilterServer: the simulator must be right before it
 * can judge the server.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { decodeCommand, encodeCommand, encodeReply, FrameReader, SMFIF, SMFIM, SMFIP } from '../../src/protocol/index.ts';
import type { MilterCommand, MilterReply } from '../../src/protocol/index.ts';
import { MtaClient, MtaClientError, parseMilterAddress } from '../support/mta-client.ts';

/** What the fake filter answers to one command: replies to send (none = stay silent). */
type Script = (cmd: MilterCommand) => readonly MilterReply[];

interface FakeFilter {
  readonly address: string;
  /** Every command received, in order. */
  readonly commands: MilterCommand[];
  /** Command kinds decoded from each socket read, to see what shared a write. */
  readonly reads: string[][];
  close(): Promise<void>;
}

const OK: readonly MilterReply[] = [{ kind: 'continue' }];

/** A fake filter: negotiates `optneg`, then answers each command as `script` says. */
async function fakeFilter(
  optneg: { actions: number; protocol: number; symlists?: { stage: 0 | 1 | 2 | 3 | 4 | 5 | 6; macros: string[] }[] },
  script: Script,
  listen: { path?: string } = {},
): Promise<FakeFilter> {
  const commands: MilterCommand[] = [];
  const reads: string[][] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    const reader = new FrameReader();
    sock.on('data', (chunk: Buffer) => {
      reader.push(chunk);
      const kinds: string[] = [];
      for (let f = reader.next(); f !== null; f = reader.next()) {
        const cmd = decodeCommand(f);
        commands.push(cmd);
        kinds.push(cmd.kind);
        if (cmd.kind === 'optneg') {
          sock.write(encodeReply({ kind: 'optneg', version: 6, ...optneg }));
          continue;
        }
        if (cmd.kind === 'quit') {
          sock.end();
          continue;
        }
        for (const r of script(cmd)) sock.write(encodeReply(r));
      }
      reads.push(kinds);
    });
  });
  await new Promise<void>((resolve) => (listen.path ? server.listen(listen.path, resolve) : server.listen(0, '127.0.0.1', resolve)));
  const addr = server.address() as net.AddressInfo | string;
  return {
    address: typeof addr === 'string' ? `unix:${addr}` : `inet:${addr.port}@127.0.0.1`,
    commands,
    reads,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The usual answer of a filter: silence for no-reply kinds, continue otherwise. */
function answering(protocol: number, extra: (cmd: MilterCommand) => readonly MilterReply[] | undefined = () => undefined): Script {
  const nr: Partial<Record<MilterCommand['kind'], number>> = {
    connect: SMFIP.NR_CONN,
    helo: SMFIP.NR_HELO,
    mail: SMFIP.NR_MAIL,
    rcpt: SMFIP.NR_RCPT,
    data: SMFIP.NR_DATA,
    header: SMFIP.NR_HDR,
    eoh: SMFIP.NR_EOH,
    body: SMFIP.NR_BODY,
    unknown: SMFIP.NR_UNKN,
  };
  return (cmd) => {
    const special = extra(cmd);
    if (special !== undefined) return special;
    if (cmd.kind === 'macro' || cmd.kind === 'abort' || cmd.kind === 'quitNc') return [];
    const flag = nr[cmd.kind];
    if (flag !== undefined && (protocol & flag) !== 0) return [];
    return OK;
  };
}

const MESSAGE = {
  from: '<alice@example.org>',
  rcpts: ['<bob@example.net>', ['<carol@example.net>', 'NOTIFY=NEVER']] as Array<string | string[]>,
  headers: [
    ['From', ' alice@example.org'],
    ['Subject', ' hello'],
  ] as Array<[string, string]>,
  body: 'line 1\r\nline 2\r\n',
};

const filters: FakeFilter[] = [];
after(async () => {
  for (const f of filters) await f.close();
});
async function start(...args: Parameters<typeof fakeFilter>): Promise<FakeFilter> {
  const f = await fakeFilter(...args);
  filters.push(f);
  return f;
}

describe('MtaClient', () => {
  test('parses libmilter addresses', () => {
    assert.deepEqual(parseMilterAddress('inet:8891@127.0.0.1'), { kind: 'inet', host: '127.0.0.1', port: 8891 });
    assert.deepEqual(parseMilterAddress('inet6:8891@::1'), { kind: 'inet', host: '::1', port: 8891 });
    assert.deepEqual(parseMilterAddress('inet6:8891@[::1]'), { kind: 'inet', host: '::1', port: 8891 });
    assert.deepEqual(parseMilterAddress('inet:8891'), { kind: 'inet', host: '127.0.0.1', port: 8891 });
    assert.deepEqual(parseMilterAddress('unix:/run/m.sock'), { kind: 'unix', path: '/run/m.sock' });
    assert.deepEqual(parseMilterAddress('local:/run/m.sock'), { kind: 'unix', path: '/run/m.sock' });
    assert.deepEqual(parseMilterAddress('/run/m.sock'), { kind: 'unix', path: '/run/m.sock' });
    assert.throws(() => parseMilterAddress('tcp:1@x'), TypeError);
    assert.throws(() => parseMilterAddress('inet:0@x'), TypeError);
  });

  test('sends NR_* phases without waiting, all in one write with EOM', async () => {
    const protocol =
      SMFIP.NR_CONN | SMFIP.NR_HELO | SMFIP.NR_MAIL | SMFIP.NR_RCPT | SMFIP.NR_DATA | SMFIP.NR_HDR | SMFIP.NR_EOH | SMFIP.NR_BODY;
    const f = await start({ actions: SMFIF.ADDHDRS, protocol }, answering(protocol));
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    const neg = await c.negotiate();
    assert.equal(neg.protocol, protocol);
    assert.equal(await c.connect(), 'noreply');
    assert.equal(await c.helo('client.example.org'), 'noreply');
    const r = await c.runMessage({ ...MESSAGE, macros: { mail: { i: 'QID1' } }, abortAfter: true });
    assert.equal(r.mail, 'noreply');
    assert.deepEqual(r.rcpts, ['noreply', 'noreply']);
    assert.equal(r.data, 'noreply');
    assert.deepEqual(r.headers, ['noreply', 'noreply']);
    assert.equal(r.eoh, 'noreply');
    assert.equal(r.body, 'noreply');
    assert.equal(r.endedAt, 'eom');
    assert.deepEqual(r.verdict, { kind: 'continue' });
    await c.quit();
    assert.equal(c.unexpectedReplies, 0);
    assert.deepEqual(c.violations, []);

    // The whole message, macros included, went out in one write (one read on loopback), here
    // together with CONNECT and HELO, which needed no reply either.
    assert.ok(
      f.reads.some((k) => k.join(' ').endsWith('macro mail rcpt rcpt data header header eoh body eob')),
      `reads: ${JSON.stringify(f.reads)}`,
    );
    // The leading space after the colon is removed when HDR_LEADSPC is not negotiated.
    const hdr = f.commands.find((x) => x.kind === 'header' && x.name === 'Subject');
    assert.deepEqual(hdr, { kind: 'header', name: 'Subject', value: 'hello' });
    // ABORT went out after the message, QUIT last.
    assert.deepEqual(
      f.commands.slice(-2).map((x) => x.kind),
      ['abort', 'quit'],
    );
  });

  test('waits for every reply without NR_* flags, and skips NO* phases but still sends their macros', async () => {
    const protocol = SMFIP.NOCONNECT | SMFIP.NOHELO | SMFIP.NODATA | SMFIP.NOEOH | SMFIP.HDR_LEADSPC;
    const f = await start({ actions: 0, protocol }, answering(protocol));
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate();
    assert.equal(await c.connect({}, { j: 'mx.example.org' }), 'skipped');
    assert.equal(await c.helo('client'), 'skipped');
    const r = await c.runMessage({ ...MESSAGE, macros: { data: { i: 'QID' } } });
    assert.deepEqual(r.mail, { kind: 'continue' });
    assert.deepEqual(r.rcpts, [{ kind: 'continue' }, { kind: 'continue' }]);
    assert.equal(r.data, 'skipped');
    assert.deepEqual(r.headers, [{ kind: 'continue' }, { kind: 'continue' }]);
    assert.equal(r.eoh, 'skipped');
    assert.deepEqual(r.body, { kind: 'continue' });
    await c.close();

    const kinds = f.commands.map((x) => x.kind);
    assert.ok(!kinds.includes('connect') && !kinds.includes('helo') && !kinds.includes('data') && !kinds.includes('eoh'));
    const macros = f.commands.filter((x) => x.kind === 'macro');
    assert.deepEqual(
      macros.map((m) => String.fromCharCode(m.stage)),
      ['C', 'T'],
    );
    // HDR_LEADSPC: the header text goes out exactly as after the colon.
    assert.ok(f.commands.some((x) => x.kind === 'header' && x.value === ' hello'));
    // Without NR flags each command waited for its reply: no read carried two replied-to commands.
    for (const read of f.reads) assert.ok(read.filter((k) => k !== 'macro').length <= 1, JSON.stringify(f.reads));
    assert.equal(c.unexpectedReplies, 0);
  });

  test('collects end-of-message modifications and progress until the verdict', async () => {
    const mods: MilterReply[] = [
      { kind: 'progress' },
      { kind: 'addheader', name: 'X-Test', value: 'yes' },
      { kind: 'chgheader', index: 1, name: 'Subject', value: 'changed' },
      { kind: 'progress' },
      { kind: 'addrcpt', rcpt: '<dave@example.net>' },
      { kind: 'quarantine', reason: 'looks odd' },
      { kind: 'accept' },
    ];
    const protocol = SMFIP.NR_HDR;
    const f = await start(
      { actions: SMFIF.ADDHDRS | SMFIF.CHGHDRS | SMFIF.ADDRCPT | SMFIF.QUARANTINE, protocol },
      answering(protocol, (cmd) => (cmd.kind === 'eob' ? mods : undefined)),
    );
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate();
    const r = await c.runMessage(MESSAGE);
    assert.equal(r.endedAt, 'eom');
    assert.deepEqual(r.eom, {
      modifications: mods.filter((m) => m.kind !== 'progress' && m.kind !== 'accept'),
      verdict: { kind: 'accept' },
      progressCount: 2,
    });
    await c.close();
    assert.deepEqual(c.violations, []);
  });

  test('flags a modification whose action was not negotiated', async () => {
    const f = await start(
      { actions: SMFIF.ADDHDRS, protocol: 0 },
      answering(0, (cmd) => (cmd.kind === 'eob' ? [{ kind: 'delrcpt', rcpt: '<bob@example.net>' }, { kind: 'continue' }] : undefined)),
    );
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate();
    const r = await c.eom();
    assert.deepEqual(r.verdict, { kind: 'continue' });
    assert.equal(c.violations.length, 1);
    assert.match(c.violations[0] as string, /delrcpt.*0x8/);
    await c.close();
  });

  test('a reply to ABORT is counted as unexpected, not taken as the next answer', async () => {
    const f = await start(
      { actions: 0, protocol: 0 },
      answering(0, (cmd) => (cmd.kind === 'abort' ? [{ kind: 'continue' }] : undefined)),
    );
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate();
    assert.deepEqual(await c.mail('<a@example.org>'), { kind: 'continue' });
    c.abort();
    assert.equal(await c.settle(100), 1);
    assert.match(c.violations[0] as string, /unexpected reply 'continue'.*ABORT/);
    // The stray reply is not consumed by the next command.
    assert.deepEqual(await c.mail('<a@example.org>'), { kind: 'continue' });
    assert.equal(c.strayReplies.length, 1);
    const { unexpectedReplies } = await c.close();
    assert.equal(unexpectedReplies, 1);
  });

  test('stops sending body chunks after SMFIR_SKIP', async () => {
    const protocol = SMFIP.SKIP;
    const f = await start({ actions: 0, protocol }, answering(protocol, (cmd) => (cmd.kind === 'body' ? [{ kind: 'skip' }] : undefined)));
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate();
    const r = await c.runMessage({ ...MESSAGE, body: Buffer.alloc(200_000, 0x61) });
    assert.deepEqual(r.body, { kind: 'skip' });
    assert.equal(r.endedAt, 'eom');
    await c.close();
    const bodies = f.commands.filter((x) => x.kind === 'body');
    assert.equal(bodies.length, 1);
    assert.equal(bodies[0]?.kind === 'body' && bodies[0].chunk.length, 65535);
    assert.deepEqual(c.violations, []);
  });

  test('ends the message at the first non-continue verdict; RCPT reject drops one recipient', async () => {
    const f = await start(
      { actions: 0, protocol: 0 },
      answering(0, (cmd) => {
        if (cmd.kind === 'rcpt' && cmd.args[0] === '<bob@example.net>') return [{ kind: 'reject' }];
        if (cmd.kind === 'header') return [{ kind: 'replycode', text: '550 5.7.1 no thanks' }];
        return undefined;
      }),
    );
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate();
    const r = await c.runMessage(MESSAGE);
    assert.deepEqual(r.rcpts, [{ kind: 'reject' }, { kind: 'continue' }]);
    assert.equal(r.endedAt, 'header');
    assert.deepEqual(r.verdict, { kind: 'replycode', text: '550 5.7.1 no thanks' });
    assert.equal(r.headers.length, 1);
    assert.equal(r.eom, undefined);
    await c.close();
    assert.ok(!f.commands.some((x) => x.kind === 'eob'));
  });

  test('sends only the macros named in the SETSYMLIST answer', async () => {
    const f = await start(
      { actions: SMFIF.SETSYMLIST, protocol: 0, symlists: [{ stage: SMFIM.ENVFROM, macros: ['{mail_addr}', 'i'] }] },
      answering(0),
    );
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    const neg = await c.negotiate();
    assert.deepEqual(neg.symlists, [{ stage: SMFIM.ENVFROM, macros: ['{mail_addr}', 'i'] }]);
    await c.mail('<a@example.org>', { i: 'Q1', '{mail_addr}': 'a@example.org', '{auth_type}': 'PLAIN' });
    await c.rcpt('<b@example.org>', { '{rcpt_addr}': 'b@example.org' });
    await c.close();
    const macros = f.commands.filter((x) => x.kind === 'macro');
    assert.deepEqual(macros, [
      {
        kind: 'macro',
        stage: 0x4d,
        macros: [
          ['i', 'Q1'],
          ['{mail_addr}', 'a@example.org'],
        ],
      },
      { kind: 'macro', stage: 0x52, macros: [['{rcpt_addr}', 'b@example.org']] },
    ]);
  });

  test('records a negotiation answer outside the offer', async () => {
    const f = await start({ actions: SMFIF.ADDHDRS | SMFIF.CHGBODY, protocol: SMFIP.NR_HDR }, answering(0));
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate({ version: 6, actions: SMFIF.ADDHDRS, protocol: 0 });
    assert.equal(c.violations.length, 2);
    assert.match(c.violations[0] as string, /actions 0x3 exceed/);
    assert.match(c.violations[1] as string, /protocol 0x80 exceeds/);
    // Only what was offered applies: headers wait for replies.
    assert.deepEqual(await c.header('Subject', 'x'), { kind: 'continue' });
    await c.close();
  });

  test('every wait is bounded: a silent filter gives a timeout error', async () => {
    const f = await start({ actions: 0, protocol: 0 }, answering(0, (cmd) => (cmd.kind === 'mail' ? [] : undefined)));
    const c = await MtaClient.connect(f.address, { timeoutMs: 150 });
    await c.negotiate();
    const t0 = performance.now();
    await assert.rejects(c.mail('<a@example.org>'), (e: unknown) => e instanceof MtaClientError && e.code === 'timeout');
    assert.ok(performance.now() - t0 < 1000);
    await c.close(100);
  });

  test('sendRaw and readReply for hand-made input; closure is reported', async () => {
    const f = await start({ actions: 0, protocol: 0 }, (cmd) => (cmd.kind === 'helo' ? [{ kind: 'tempfail' }] : []));
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    c.sendRaw(encodeCommand({ kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0 }));
    assert.equal((await c.readReply()).kind, 'optneg');
    c.sendRaw(encodeCommand({ kind: 'helo', name: 'x' }));
    assert.deepEqual(await c.readReply(), { kind: 'tempfail' });
    // A filter that closes while a reply is due makes the wait fail with 'closed'.
    c.sendRaw(encodeCommand({ kind: 'quit' }), 0);
    await c.waitClosed(1000);
    await assert.rejects(c.readReply(100), (e: unknown) => e instanceof MtaClientError && e.code === 'closed');
    assert.equal(c.unexpectedReplies, 0);
  });

  test('connects over a unix socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mta-client-'));
    const f = await start({ actions: 0, protocol: SMFIP.NR_HELO }, answering(SMFIP.NR_HELO), { path: path.join(dir, 'f.sock') });
    const c = await MtaClient.connect(f.address, { timeoutMs: 2000 });
    await c.negotiate();
    assert.equal(await c.helo('x'), 'noreply');
    await c.quit();
    assert.deepEqual(c.violations, []);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
