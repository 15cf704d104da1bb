/**
 * milterd behind a real Postfix under less friendly conditions: bodies far above one milter
 * packet (64 KiB) and above milterd's in-memory limit (spilled to disk) with a body
 * replacement, filters that throw (failure policy `tempfail`), many SMTP sessions at once,
 * and a unix-domain milter socket.
 */
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { MilterServer } from '../../src/server/server.ts';
import type { Filter, FilterContext } from '../../src/chain/filter.ts';
import { mtaGate } from '../support/mta-available.ts';
import { startMilterTap, type MilterTap } from '../support/milter-tap.ts';
import { makeChain } from '../support/mta-filters.ts';
import {
  SmtpClient,
  buildMessage,
  queueIdOf,
  startPostfix,
  uniqueMessageId,
  type PostfixInstance,
} from '../support/postfix.ts';

const gate = mtaGate('postfix');
const APPENDED = 'Appended after a big body.';

function header(headers: readonly { name: string; value: string }[], name: string): string | undefined {
  return headers.find((h) => h.name.toLowerCase() === name.toLowerCase())?.value;
}

/** Appends a line to every body and reports the size and a checksum of what it read. */
const bodyFilter: Filter = {
  name: 'big-body',
  actions: ['addHeader', 'replaceBody'],
  async eom(_ctx, msg) {
    const body = Buffer.from(await msg.body());
    let sum = 0;
    for (const b of body) sum = (sum + b) % 65521;
    msg.addHeader('X-Body-Seen', `size=${body.length} sum=${sum} bodySize=${msg.bodySize}`);
    msg.replaceBody(Buffer.concat([body, Buffer.from(`${APPENDED}\r\n`)]));
  },
};

/** Throws where told to; its chain entry has onError 'tempfail'. */
const crashingFilter: Filter = {
  name: 'crashing',
  actions: ['addHeader'],
  envrcpt(_ctx, rcpt) {
    if (rcpt.address.startsWith('<crash')) throw new Error('envrcpt crashed on purpose');
  },
  eom(ctx: FilterContext, msg) {
    if (header(msg.headers, 'Subject') === 'crash at eom') throw new Error('eom crashed on purpose');
    msg.addHeader('X-Session-Check', `${ctx.from?.address} ${ctx.rcpts.map((r) => r.address).join(',')} ${header(msg.headers, 'Subject')}`);
  },
};

/** A body of `size` bytes: numbered 78-character lines (CRLF), with a leading-dot line. */
function bigBody(size: number): string {
  const lines: string[] = ['.a line starting with a dot'];
  let n = lines[0]!.length + 2;
  for (let i = 0; n < size; i++) {
    const line = `${String(i).padStart(8, '0')} ${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2).slice(0, 69)}`;
    lines.push(line);
    n += line.length + 2;
  }
  return `${lines.join('\r\n')}\r\n`;
}

function checksum(s: string): number {
  let sum = 0;
  for (const b of Buffer.from(s, 'latin1')) sum = (sum + b) % 65521;
  return sum;
}

describe('Postfix → milterd: big bodies, failing filters, concurrency', { skip: gate.skip, timeout: 240_000 }, () => {
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let postfix: PostfixInstance | undefined;
  let spillBase: string | undefined;

  before(async () => {
    gate.require();
    spillBase = await mkdtemp(path.join(os.tmpdir(), 'milterd-spill-test-'));
    server = new MilterServer({
      listen: 'inet:0@127.0.0.1',
      // A small memory limit, so the 1.5 MB body goes through a spill file under spillBase.
      bodyMemoryLimit: 256 * 1024,
      tmpDir: spillBase,
      chain: [{ filter: bodyFilter }, { filter: crashingFilter, onError: 'tempfail' }],
    });
    await server.start();
    tap = await startMilterTap(server.addresses()[0] as string);
    postfix = await startPostfix({ milters: [tap.address] });
  });

  after(async () => {
    await postfix?.stop();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
    if (spillBase) await rm(spillBase, { recursive: true, force: true });
  });

  async function explained(t: TestContext, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      // Body packets are summarised by the tap (first 200 bytes each).
      t.diagnostic(`milter packets (last 200):\n${tap?.dump().split('\n').slice(-200).join('\n')}`);
      t.diagnostic(`postfix maillog:\n${(await postfix?.maillog()) ?? ''}`);
      throw err;
    }
  }

  for (const size of [200 * 1024, 1536 * 1024]) {
    test(`a ${size / 1024} KiB body is read whole and replaced whole`, async (t) => {
      const pf = postfix as PostfixInstance;
      await explained(t, async () => {
        tap?.clear();
        const body = bigBody(size);
        const { client } = await SmtpClient.connect(pf.smtpPort);
        const messageId = uniqueMessageId('postfix-big');
        let result;
        try {
          await client.command('EHLO client.milterd.test');
          result = await client.send({
            from: 'alice@example.test',
            rcpts: ['bob@example.test'],
            data: buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'big', messageId, body }),
          });
        } finally {
          await client.quit();
        }
        assert.equal(result.dataEnd?.code, 250, result.dataEnd?.raw);
        const msg = await pf.waitForDelivery(queueIdOf(result.dataEnd?.raw ?? ''), messageId, 60_000);
        const expected = `${body}${APPENDED}\r\n`.replace(/\r\n/g, '\n');
        assert.equal(msg.body.length, expected.length, 'delivered body length');
        assert.ok(msg.body === expected, 'delivered body differs from the original plus the appended line');
        assert.equal(msg.get('X-Body-Seen'), `size=${body.length} sum=${checksum(body)} bodySize=${body.length}`);
        // Replacement went out in packets the MTA accepts: none above 65535 bytes.
        const replaced = tap?.select('milter', 'b') ?? [];
        assert.ok(replaced.length >= Math.ceil((body.length + APPENDED.length + 2) / 65535), `${replaced.length} SMFIR_REPLBODY packets`);
        for (const f of replaced) assert.ok(f.payload.length <= 65535, `SMFIR_REPLBODY of ${f.payload.length} bytes`);
        assert.equal(
          replaced.reduce((n, f) => n + f.payload.length, 0),
          body.length + APPENDED.length + 2,
        );
        if (size > 256 * 1024) {
          // The body went to a spill file under the configured tmpDir, removed after the message.
          const base = spillBase as string;
          const folders = await readdir(base);
          assert.equal(folders.length, 1, `one spill folder under tmpDir ${base}: ${folders.join(', ')}`);
          assert.deepEqual(await readdir(path.join(base, folders[0] as string)), [], 'spill files left behind');
        }
      });
    });
  }

  test('a filter that throws: its recipient and its message are tempfailed (onError tempfail)', async (t) => {
    const pf = postfix as PostfixInstance;
    await explained(t, async () => {
      const { client } = await SmtpClient.connect(pf.smtpPort);
      try {
        await client.command('EHLO client.milterd.test');
        const okId = uniqueMessageId('crash-rcpt');
        const r1 = await client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test', 'crash-me@example.test'],
          data: buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'ok', messageId: okId, body: 'x\r\n' }),
        });
        assert.equal(r1.rcpts[0]?.reply.code, 250, r1.rcpts[0]?.reply.raw);
        assert.equal(Math.floor((r1.rcpts[1]?.reply.code ?? 0) / 100), 4, `crashing RCPT must get 4xx: ${r1.rcpts[1]?.reply.raw}`);
        assert.equal(r1.dataEnd?.code, 250, r1.dataEnd?.raw);

        const crashId = uniqueMessageId('crash-eom');
        const r2 = await client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test'],
          data: buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'crash at eom', messageId: crashId, body: 'x\r\n' }),
        });
        assert.equal(Math.floor((r2.dataEnd?.code ?? 0) / 100), 4, `crashing eom must get 4xx: ${r2.dataEnd?.raw}`);
        // The failing filter's tempfail must not have been turned into an accept: nothing
        // with that Message-ID may be delivered, once the first message is.
        const delivered = await pf.waitForDelivery(queueIdOf(r1.dataEnd?.raw ?? ''), okId, 30_000);
        assert.deepEqual(delivered.envelope.rcptArgs.map((a) => a.split(' ')[0]), ['<bob@example.test>']);
        const leaked = (await pf.delivered()).filter((m) => m.all('Message-ID').includes(`<${crashId}>`));
        assert.equal(leaked.length, 0, 'the tempfailed message was delivered');
      } finally {
        await client.quit();
      }
    });
  });

  test('20 messages over 10 simultaneous SMTP sessions each get their own envelope', async (t) => {
    const pf = postfix as PostfixInstance;
    await explained(t, async () => {
      const sessions = Array.from({ length: 10 }, (_, s) => s);
      const sent: Array<{ id: string; queueId: string; from: string; rcpt: string; subject: string }> = [];
      await Promise.all(
        sessions.map(async (s) => {
          const { client } = await SmtpClient.connect(pf.smtpPort);
          try {
            await client.command(`EHLO client${s}.milterd.test`);
            for (let m = 0; m < 2; m++) {
              const from = `sender${s}-${m}@example.test`;
              const rcpt = `rcpt${s}-${m}@example.test`;
              const subject = `session ${s} message ${m}`;
              const id = uniqueMessageId(`conc-${s}-${m}`);
              const r = await client.send({ from, rcpts: [rcpt], data: buildMessage({ from, to: [rcpt], subject, messageId: id, body: `${subject}\r\n` }) });
              assert.equal(r.dataEnd?.code, 250, r.dataEnd?.raw);
              sent.push({ id, queueId: queueIdOf(r.dataEnd?.raw ?? ''), from, rcpt, subject });
            }
          } finally {
            await client.quit();
          }
        }),
      );
      assert.equal(sent.length, 20);
      for (const m of sent) {
        const got = await pf.waitForDelivery(m.queueId, m.id, 60_000);
        assert.equal(got.get('X-Session-Check'), `<${m.from}> <${m.rcpt}> ${m.subject}`);
        assert.equal(got.body, `${m.subject}\n${APPENDED}\n`);
      }
    });
  });
});

describe('Postfix → milterd over a unix-domain socket', { skip: gate.skip, timeout: 120_000 }, () => {
  let server: MilterServer | undefined;
  let postfix: PostfixInstance | undefined;
  let dir: string | undefined;

  before(async () => {
    gate.require();
    dir = await mkdtemp(path.join(os.tmpdir(), 'milterd-unix-'));
    // smtpd runs as user postfix: it must reach the socket.
    await chmod(dir, 0o755);
    const socket = path.join(dir, 'milterd.sock');
    server = new MilterServer({ listen: `unix:${socket}`, socketMode: 0o666, chain: [{ filter: bodyFilter }] });
    await server.start();
    assert.deepEqual(server.addresses(), [`unix:${socket}`]);
    postfix = await startPostfix({ milters: [`unix:${socket}`] });
  });

  after(async () => {
    await postfix?.stop();
    await server?.stop({ deadlineMs: 5_000 });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a message goes through and is edited', async (t) => {
    const pf = postfix as PostfixInstance;
    try {
      const { client } = await SmtpClient.connect(pf.smtpPort);
      const messageId = uniqueMessageId('postfix-unix');
      let r;
      try {
        await client.command('EHLO client.milterd.test');
        r = await client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test'],
          data: buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'unix', messageId, body: 'Hi.\r\n' }),
        });
      } finally {
        await client.quit();
      }
      assert.equal(r.dataEnd?.code, 250, r.dataEnd?.raw);
      const msg = await pf.waitForDelivery(queueIdOf(r.dataEnd?.raw ?? ''), messageId, 30_000);
      assert.equal(msg.body, `Hi.\n${APPENDED}\n`);
      assert.equal(msg.get('X-Body-Seen'), `size=5 sum=${checksum('Hi.\r\n')} bodySize=5`);
    } catch (err) {
      t.diagnostic(`postfix maillog:\n${await pf.maillog()}`);
      throw err;
    }
  });
});

describe('Postfix → milterd: graceful stop', { skip: gate.skip, timeout: 120_000 }, () => {
  let server: MilterServer | undefined;
  let postfix: PostfixInstance | undefined;

  before(async () => {
    gate.require();
    const { filterA, filterB } = makeChain();
    server = new MilterServer({ listen: 'inet:0@127.0.0.1', chain: [{ filter: filterA }, { filter: filterB }] });
    await server.start();
    postfix = await startPostfix({ milters: [server.addresses()[0] as string], defaultAction: 'tempfail' });
  });

  after(async () => {
    await postfix?.stop();
    await server?.stop({ deadlineMs: 0 });
  });

  test('stop() lets an SMTP session in progress finish its message; new sessions get the default action', async (t) => {
    const pf = postfix as PostfixInstance;
    const srv = server as MilterServer;
    try {
      const a = (await SmtpClient.connect(pf.smtpPort)).client;
      let stopped = false;
      let stopping: Promise<void> | undefined;
      try {
        await a.command('EHLO a.milterd.test');
        assert.equal((await a.command('MAIL FROM:<alice@example.test>')).code, 250);
        assert.equal((await a.command('RCPT TO:<bob@example.test>')).code, 250);
        assert.equal(srv.connections, 1, 'Postfix holds one milter connection for the session');

        stopping = srv.stop({ deadlineMs: 30_000 }).then(() => {
          stopped = true;
        });
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(stopped, false, 'stop() must wait for the open MTA connection');

        // A new session cannot reach milterd any more: Postfix applies milter_default_action.
        const b = (await SmtpClient.connect(pf.smtpPort)).client;
        try {
          await b.command('EHLO b.milterd.test');
          const mail = await b.command('MAIL FROM:<carol@example.test>');
          assert.equal(mail.code, 451, mail.raw);
        } finally {
          await b.quit();
        }

        // The first session's message is still filtered by both filters.
        const messageId = uniqueMessageId('postfix-stop');
        assert.equal((await a.command('DATA')).code, 354);
        const end = await a.sendContent(
          buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'during stop', messageId, body: 'x\r\n' }),
        );
        assert.equal(end.code, 250, end.raw);
        assert.equal(stopped, false, 'stop() resolved before the MTA closed its connection');
        const msg = await pf.waitForDelivery(queueIdOf(end.raw), messageId, 30_000);
        assert.equal(msg.get('Subject'), '[A] during stop');
        assert.equal(msg.get('X-Filter-A'), 'seen');
      } finally {
        await a.quit();
      }
      // QUIT makes Postfix close the milter connection; stop() then completes.
      await stopping;
      assert.equal(srv.connections, 0);
      assert.match(await pf.maillog(), /connect to Milter service inet:127\.0\.0\.1:\d+: Connection refused/);
    } catch (err) {
      t.diagnostic(`postfix maillog:\n${await pf.maillog()}`);
      throw err;
    }
  });
});
