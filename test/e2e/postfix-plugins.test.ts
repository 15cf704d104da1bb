/**
 * milterd behind a real Postfix with sandboxed plugins: a private Postfix instance
 * (test/support/postfix.ts) whose smtpd_milters is milterd (through a packet tap) running the
 * three example plugins, each in its own sandbox process:
 *
 * - plugins/inspect: adds `X-Inspect: headers=… bytes=… body=… sum=…` (checked against counts
 *   computed here from what was sent, as Postfix hands it to milters);
 * - plugins/recipient-policy: rejects `^nobody@` (550 5.1.1), tempfails
 *   `@maintenance\.example$` (451 4.3.2), one recipient at a time;
 * - plugins/header-stamp: `X-Stamp: qid {qid}`, i.e. Postfix's queue id from macro `i`.
 *
 * On failure the milter packets, Postfix's maillog and milterd's log are printed.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test, type TestContext } from 'node:test';
import { pino } from 'pino';
import { loadChain, loadSdkRuntime, type LoadedPlugin } from '../../src/plugins/load.ts';
import { MilterServer } from '../../src/server/server.ts';
import { expectedInspect, milterView } from '../support/inspect-expect.ts';
import { mtaGate } from '../support/mta-available.ts';
import { startMilterTap, type MilterTap } from '../support/milter-tap.ts';
import { SmtpClient, queueIdOf, startPostfix, uniqueMessageId, type PostfixInstance } from '../support/postfix.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const gate = mtaGate('postfix');

describe('Postfix → milterd: three sandboxed plugins', { skip: gate.skip, timeout: 180_000 }, () => {
  let plugins: LoadedPlugin[] = [];
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let postfix: PostfixInstance | undefined;
  const logs: Array<Record<string, unknown>> = [];

  before(async () => {
    gate.require();
    const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    plugins = await loadChain(
      [
        { plugin: './plugins/inspect' },
        {
          plugin: './plugins/recipient-policy',
          capabilities: ['log'],
          options: { reject: ['^nobody@'], tempfail: ['@maintenance\\.example$'] },
        },
        { plugin: './plugins/header-stamp', capabilities: ['log'], options: { name: 'X-Stamp', value: 'qid {qid}' } },
      ],
      { baseDir: ROOT, sdk: await loadSdkRuntime(), logger, onError: 'tempfail' },
    );
    server = new MilterServer({ listen: 'inet:0@127.0.0.1', chain: plugins.map((p) => p.entry), logger });
    await server.start();
    tap = await startMilterTap(server.addresses()[0] as string);
    postfix = await startPostfix({ milters: [tap.address], defaultAction: 'tempfail' });
  });

  after(async () => {
    await postfix?.stop();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
    await Promise.all(plugins.map((p) => p.supervisor.stop()));
  });

  async function explained(t: TestContext, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      t.diagnostic(`milter packets:\n${tap?.dump() ?? '(no tap)'}`);
      t.diagnostic(`postfix maillog:\n${(await postfix?.maillog()) ?? '(no instance)'}`);
      t.diagnostic(`milterd log:\n${logs.map((l) => JSON.stringify(l)).join('\n')}`);
      throw err;
    }
  }

  test('X-Inspect and X-Stamp delivered; nobody@ gets 550 5.1.1, the maintenance domain 451', async (t) => {
    const pf = postfix as PostfixInstance;
    await explained(t, async () => {
      const messageId = uniqueMessageId('postfix-plugins');
      // Headers as Postfix hands them to milters: the one space after the colon dropped (and
      // only that one), folded lines joined by \n, 8-bit text as UTF-8.
      const text = [
        'From: Alice <alice@example.test>',
        'To: <good@example.test>, <nobody@example.test>',
        'Subject: Sandboxed plugins behind Postfix',
        `Message-ID: <${messageId}>`,
        'Date: Mon, 03 Nov 2025 10:00:00 +0000',
        'MIME-Version: 1.0',
        'Content-Type: text/plain; charset=utf-8',
        'Content-Transfer-Encoding: 8bit',
        'X-NoSpace:tight',
        'X-Folded: first part',
        '\tsecond part',
        'X-Unicode: Grüße ✓',
        '',
        'First line of the body.',
        'Zweite Zeile: Grüße.',
        '',
        'Last line.',
        '',
      ].join('\r\n');
      const { headers, body } = milterView(text);
      const expected = expectedInspect(headers, body);

      const { client, greeting } = await SmtpClient.connect(pf.smtpPort);
      assert.equal(greeting.code, 220, greeting.raw);
      let result;
      try {
        assert.equal((await client.command('EHLO client.milterd.test')).code, 250);
        result = await client.send({
          from: 'alice@example.test',
          fromArgs: ['BODY=8BITMIME'],
          rcpts: ['good@example.test', 'nobody@example.test', 'ops@maintenance.example'],
          // The SMTP client sends one byte per character.
          data: Buffer.from(text, 'utf8').toString('latin1'),
        });
      } finally {
        await client.quit();
      }
      assert.equal(result.mail.code, 250, result.mail.raw);
      const [good, nobody, maintenance] = result.rcpts;
      assert.equal(good?.reply.code, 250, good?.reply.raw);
      assert.equal(nobody?.reply.code, 550, nobody?.reply.raw);
      assert.equal(nobody?.reply.enhanced, '5.1.1', nobody?.reply.raw);
      assert.deepEqual(nobody?.reply.lines, ['Recipient not accepted here']);
      assert.equal(maintenance?.reply.code, 451, maintenance?.reply.raw);
      assert.equal(maintenance?.reply.enhanced, '4.3.2', maintenance?.reply.raw);
      assert.equal(result.dataEnd?.code, 250, result.dataEnd?.raw);
      const queueId = queueIdOf(result.dataEnd?.raw ?? '');

      const msg = await pf.waitForDelivery(queueId, messageId, 30_000);
      // Only the good recipient got it.
      assert.deepEqual(
        msg.envelope.rcptArgs.map((a) => a.split(' ')[0]),
        ['<good@example.test>'],
      );
      assert.deepEqual(msg.all('X-Inspect'), [expected]);
      assert.deepEqual(msg.all('X-Stamp'), [`qid ${queueId}`]);
      // Chain order: inspect's header, then header-stamp's, after the message's own.
      assert.deepEqual(
        msg.headers.slice(-2).map((h) => h.name),
        ['X-Inspect', 'X-Stamp'],
      );
      // Postfix's own Received: (not shown to milters) is there, and was not counted.
      assert.match(msg.get('Received') ?? '', /\(Postfix\)/);
      assert.ok(!headers.some((h) => h.name === 'Received'));

      const log = await pf.maillog();
      assert.match(log, /milter-reject: RCPT from [^\n]*: 550 5\.1\.1 Recipient not accepted here;[^\n]*to=<nobody@example\.test>/);
      assert.match(log, /milter-reject: RCPT from [^\n]*: 451 4\.3\.2 [^\n]*to=<ops@maintenance\.example>/);
      // recipient-policy's ctx.log (capability log) reached milterd's log, with Postfix's queue id.
      const relayed = logs.find((l) => l.pluginLog === true && l.msg === 'recipient rejected by policy');
      assert.ok(relayed, 'the plugin log line is relayed');
      assert.equal(relayed.rcpt, 'nobody@example.test');
      // No plugin failed along the way.
      assert.deepEqual(
        logs.filter((l) => typeof l.code === 'string' && /^MILTERD_(PLUGIN|FILTER)_/.test(l.code as string)),
        [],
      );
    });
  });
});
