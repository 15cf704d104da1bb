/**
 * milterd behind a real Postfix: a private instance (test/support/postfix.ts) with
 * `smtpd_milters` pointing at milterd through a packet tap, relaying to smtp-sink. The chain is
 * filter A then filter B (test/support/mta-filters.ts). On failure the packets and Postfix's
 * maillog are printed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import { MilterServer } from '../../src/server/server.ts';
import { mtaGate } from '../support/mta-available.ts';
import { startMilterTap, type MilterTap } from '../support/milter-tap.ts';
import {
  BODY_APPEND,
  CHGFROM_ARGS,
  QUARANTINE_SUBJECT,
  headerEdgeCase,
  headerEdgeExpected,
  headerEdgeSeen,
  makeModificationsChain,
  tightHeaderFilter,
  EOM_REJECT_MARKER,
  EOM_REJECT_TEXT,
  RCPT_REJECT_TEXT,
  RCPT_TEMPFAIL_TEXT,
  expectedFilterB,
  makeChain,
  type HookEvent,
} from '../support/mta-filters.ts';
import {
  SmtpClient,
  buildMessage,
  queueIdOf,
  startPostfix,
  uniqueMessageId,
  type PostfixInstance,
  type TransactionResult,
} from '../support/postfix.ts';

const gate = mtaGate('postfix');

describe('Postfix → milterd: two-filter chain', { skip: gate.skip, timeout: 180_000 }, () => {
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let postfix: PostfixInstance | undefined;
  let events: HookEvent[] = [];

  before(async () => {
    gate.require();
    const chain = makeChain();
    events = chain.events;
    server = new MilterServer({
      listen: 'inet:0@127.0.0.1',
      chain: [{ filter: chain.filterA }, { filter: chain.filterB, onError: 'tempfail' }],
    });
    await server.start();
    tap = await startMilterTap(server.addresses()[0] as string);
    postfix = await startPostfix({ milters: [tap.address], defaultAction: 'tempfail' });
  });

  after(async () => {
    await postfix?.stop();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
  });

  /** Runs `fn`; on failure prints the packets and the maillog, then fails. */
  async function explained(t: TestContext, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      t.diagnostic(`milter packets:\n${tap?.dump() ?? '(no tap)'}`);
      t.diagnostic(`postfix maillog:\n${(await postfix?.maillog()) ?? '(no instance)'}`);
      throw err;
    }
  }

  test('edits of both filters are delivered; recipients rejected and tempfailed per filter B', async (t) => {
    const pf = postfix as PostfixInstance;
    await explained(t, async () => {
      const { client, greeting } = await SmtpClient.connect(pf.smtpPort);
      assert.equal(greeting.code, 220, greeting.raw);
      try {
        assert.equal((await client.command('EHLO client.milterd.test')).code, 250);
        const messageId = uniqueMessageId('postfix-chain');
        const subject = 'Quarterly report';
        const result = await client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test', 'reject-carol@example.test', 'tempfail-dave@example.test'],
          data: buildMessage({
            from: 'alice@example.test',
            to: ['bob@example.test'],
            subject,
            messageId,
            body: 'First line of the body.\r\nSecond line.\r\n',
          }),
        });
        assert.equal(result.mail.code, 250, result.mail.raw);
        const [bob, carol, dave] = result.rcpts;
        assert.equal(bob?.reply.code, 250, bob?.reply.raw);
        // Filter B's reply, as Postfix relays it to the client.
        assert.equal(carol?.reply.code, 550, carol?.reply.raw);
        assert.equal(carol?.reply.enhanced, '5.7.1', carol?.reply.raw);
        assert.deepEqual(carol?.reply.lines, [RCPT_REJECT_TEXT]);
        assert.equal(dave?.reply.code, 451, dave?.reply.raw);
        assert.equal(dave?.reply.enhanced, '4.7.1', dave?.reply.raw);
        assert.deepEqual(dave?.reply.lines, [RCPT_TEMPFAIL_TEXT]);
        assert.equal(result.data?.code, 354, result.data?.raw);
        assert.equal(result.dataEnd?.code, 250, result.dataEnd?.raw);
        const queueId = queueIdOf(result.dataEnd?.raw ?? '');

        const msg = await pf.waitForDelivery(queueId, messageId, 30_000);
        // Only the accepted recipient got it.
        assert.deepEqual(
          msg.envelope.rcptArgs.map((a) => a.split(' ')[0]),
          ['<bob@example.test>'],
        );
        assert.equal(msg.envelope.mailArgs?.split(' ')[0], '<alice@example.test>');
        // Filter A: added header, changed Subject (one Subject, changed in place), body edit.
        assert.deepEqual(msg.all('X-Filter-A'), ['seen']);
        assert.deepEqual(msg.all('Subject'), [`[A] ${subject}`]);
        assert.equal(msg.body, `First line of the body.\nSecond line.\n${BODY_APPEND}\n`);
        // Filter B ran after A and saw all three of its edits.
        assert.deepEqual(msg.all('X-Filter-B'), [expectedFilterB(subject)]);
        // Header order: the message's own headers, then A's, then B's additions.
        const names = msg.headers.map((h) => h.name);
        assert.deepEqual(names.slice(-2), ['X-Filter-A', 'X-Filter-B']);
        assert.ok(names.indexOf('Subject') < names.indexOf('X-Filter-A'), `Subject changed in place: ${names.join(', ')}`);

        // What the filters were given.
        const eomA = events.find((e) => e.filter === 'filter-a' && e.hook === 'eom');
        assert.deepEqual(eomA?.detail, {
          subject,
          body: 'First line of the body.\r\nSecond line.\r\n',
          rcpts: ['<bob@example.test>'],
          i: queueId,
        });
        const rcptsB = events.filter((e) => e.filter === 'filter-b' && e.hook === 'envrcpt').map((e) => (e.detail as { address: string }).address);
        assert.deepEqual(rcptsB, ['<bob@example.test>', '<reject-carol@example.test>', '<tempfail-dave@example.test>']);

        const log = await pf.maillog();
        assert.match(log, new RegExp(`milter-reject: RCPT from [^\\n]*: 550 5\\.7\\.1 ${RCPT_REJECT_TEXT};[^\\n]*to=<reject-carol@example\\.test>`));
        assert.match(log, new RegExp(`milter-reject: RCPT from [^\\n]*: 451 4\\.7\\.1 ${RCPT_TEMPFAIL_TEXT};[^\\n]*to=<tempfail-dave@example\\.test>`));
      } finally {
        await client.quit();
      }
    });
  });

  test('a message filter B rejects at end of message gets 5xx after DATA and is not delivered', async (t) => {
    const pf = postfix as PostfixInstance;
    await explained(t, async () => {
      const { client } = await SmtpClient.connect(pf.smtpPort);
      try {
        assert.equal((await client.command('EHLO client.milterd.test')).code, 250);
        const rejectedId = uniqueMessageId('postfix-eom-reject');
        const rejected = await client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test'],
          data: buildMessage({
            from: 'alice@example.test',
            to: ['bob@example.test'],
            subject: 'Bad content',
            messageId: rejectedId,
            body: `This body contains ${EOM_REJECT_MARKER}.\r\n`,
          }),
        });
        assert.equal(rejected.rcpts[0]?.reply.code, 250, rejected.rcpts[0]?.reply.raw);
        assert.equal(rejected.data?.code, 354, rejected.data?.raw);
        assert.equal(rejected.dataEnd?.code, 550, rejected.dataEnd?.raw);
        assert.equal(rejected.dataEnd?.enhanced, '5.7.0', rejected.dataEnd?.raw);
        assert.deepEqual(rejected.dataEnd?.lines, [EOM_REJECT_TEXT]);

        // A second message on the same session goes through: the session is still usable and,
        // once it is delivered, anything the first one would have produced is there too.
        const sentinelId = uniqueMessageId('postfix-after-reject');
        const sentinel = await client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test'],
          data: buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'Fine', messageId: sentinelId, body: 'Fine.\r\n' }),
        });
        assert.equal(sentinel.dataEnd?.code, 250, sentinel.dataEnd?.raw);
        const delivered = await pf.waitForDelivery(queueIdOf(sentinel.dataEnd?.raw ?? ''), sentinelId, 30_000);
        assert.deepEqual(delivered.all('Subject'), ['[A] Fine']);

        const all = await pf.delivered();
        const leaked = all.filter((m) => m.all('Message-ID').includes(`<${rejectedId}>`));
        assert.deepEqual(leaked.map((m) => m.file), [], 'the rejected message must not be delivered');
        assert.match(await pf.maillog(), new RegExp(`milter-reject: END-OF-MESSAGE from [^\\n]*: 5\\.7\\.0 ${EOM_REJECT_TEXT};`));
      } finally {
        await client.quit();
      }
    });
  });
});

describe('Postfix → milterd: every modification applied by Postfix', { skip: gate.skip, timeout: 180_000 }, () => {
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let postfix: PostfixInstance | undefined;

  before(async () => {
    gate.require();
    const { headers, envelope } = makeModificationsChain();
    server = new MilterServer({ listen: 'inet:0@127.0.0.1', chain: [{ filter: headers }, { filter: envelope }] });
    await server.start();
    tap = await startMilterTap(server.addresses()[0] as string);
    postfix = await startPostfix({ milters: [tap.address] });
  });

  after(async () => {
    await postfix?.stop();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
  });

  test('headers, body, sender and recipients as edited; quarantine puts the message on hold', async (t) => {
    const pf = postfix as PostfixInstance;
    try {
      const { client } = await SmtpClient.connect(pf.smtpPort);
      const send = (subject: string, messageId: string): Promise<TransactionResult> =>
        client.send({
          from: 'alice@example.test',
          rcpts: ['keep@example.test', 'deleted@example.test'],
          data: buildMessage({
            from: 'alice@example.test',
            to: ['keep@example.test'],
            subject,
            messageId,
            body: 'Original body.\r\n',
            headers: [['X-Remove-Me', 'please']],
          }),
        });
      let editedId: string;
      let edited: TransactionResult;
      let held: TransactionResult;
      try {
        assert.equal((await client.command('EHLO client.milterd.test')).code, 250);
        editedId = uniqueMessageId('postfix-mods');
        edited = await send('Hello', editedId);
        held = await send(QUARANTINE_SUBJECT, uniqueMessageId('postfix-hold'));
      } finally {
        await client.quit();
      }
      assert.equal(edited.dataEnd?.code, 250, edited.dataEnd?.raw);
      assert.equal(held.dataEnd?.code, 250, held.dataEnd?.raw);
      const msg = await pf.waitForDelivery(queueIdOf(edited.dataEnd?.raw ?? ''), editedId, 30_000);

      // Envelope: sender changed with its ESMTP args (Postfix 3.7 keeps RET and ENVID), the
      // deleted recipient gone, both added ones there, NOTIFY=NEVER kept for the one added
      // with args.
      const [from, ...fromArgs] = (msg.envelope.mailArgs ?? '').split(' ');
      assert.equal(from, '<new-sender@example.test>');
      assert.deepEqual(fromArgs.sort(), CHGFROM_ARGS.split(' ').sort());
      const rcpts = new Map(msg.envelope.rcptArgs.map((a) => [a.split(' ')[0], a.split(' ').slice(1)]));
      assert.deepEqual([...rcpts.keys()].sort(), ['<added-par@example.test>', '<added@example.test>', '<keep@example.test>']);
      assert.ok(rcpts.get('<added-par@example.test>')?.includes('NOTIFY=NEVER'), msg.envelope.rcptArgs.join(' | '));

      // Headers. Postfix counts its own Received: header (which milters never see) in
      // SMFIR_INSHEADER indices, so index 0 lands above it.
      assert.deepEqual(
        msg.headers.map((h) => h.name),
        ['X-Inserted', 'Received', 'From', 'To', 'X-Middle', 'Subject', 'Message-ID', 'Date', 'MIME-Version', 'Content-Type', 'X-Added'],
      );
      assert.equal(msg.get('X-Inserted'), 'inserted at top');
      assert.match(msg.get('Received') ?? '', /\(Postfix\)/);
      assert.equal(msg.get('Subject'), 'Changed: Hello');
      assert.equal(msg.get('X-Added'), 'added value');
      assert.equal(msg.body, 'Replaced body.\n');

      // Quarantine: Postfix's hold queue, never delivered.
      const heldId = queueIdOf(held.dataEnd?.raw ?? '');
      assert.deepEqual(await pf.held(), [heldId]);
      const log = await pf.maillog();
      assert.match(log, new RegExp(`${heldId}: milter-hold: END-OF-MESSAGE`));
      assert.equal((await pf.delivered()).length, 1, 'only the first message was delivered');
      // Postfix applied every request: no complaint about any of them.
      assert.doesNotMatch(log, /warning: .*(ESMTP|[Mm]ilter|SMFI)/);
    } catch (err) {
      t.diagnostic(`milter packets:\n${tap?.dump() ?? ''}`);
      t.diagnostic(`postfix maillog:\n${await pf.maillog()}`);
      throw err;
    }
  });
});

describe('Postfix → milterd: header edge cases', { skip: gate.skip, timeout: 180_000 }, () => {
  const messageId = uniqueMessageId('postfix-headers');
  const edge = headerEdgeCase(messageId);
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let postfix: PostfixInstance | undefined;

  before(async () => {
    gate.require();
    server = new MilterServer({ listen: 'inet:0@127.0.0.1', chain: [{ filter: edge.filter }] });
    await server.start();
    tap = await startMilterTap(server.addresses()[0] as string);
    postfix = await startPostfix({ milters: [tap.address] });
  });

  after(async () => {
    await postfix?.stop();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
  });

  async function send(pf: PostfixInstance, data: string): Promise<TransactionResult> {
    const { client } = await SmtpClient.connect(pf.smtpPort);
    try {
      await client.command('EHLO client.milterd.test');
      return await client.send({ from: 'alice@example.test', fromArgs: ['BODY=8BITMIME'], rcpts: ['bob@example.test'], data });
    } finally {
      await client.quit();
    }
  }

  test('spacing, folding, duplicates, empty and 8-bit values survive the round trip', async (t) => {
    const pf = postfix as PostfixInstance;
    try {
      const r = await send(pf, edge.data);
      assert.equal(r.dataEnd?.code, 250, r.dataEnd?.raw);
      const msg = await pf.waitForDelivery(queueIdOf(r.dataEnd?.raw ?? ''), messageId, 30_000);
      // Postfix adds Date when missing, before the milters see the headers.
      const skip = new Set(['received', 'date']);
      assert.deepEqual(
        msg.headers.filter((h) => !skip.has(h.name.toLowerCase())).map((h) => `${h.name}:${h.raw}`),
        headerEdgeExpected(messageId),
      );
      assert.deepEqual(
        edge.seen[0]?.filter((h) => !/^date:/i.test(h)),
        headerEdgeSeen(messageId),
      );
    } catch (err) {
      t.diagnostic(`milter packets:\n${tap?.dump() ?? ''}`);
      throw err;
    }
  });

  test(
    'changing a header written without a space after the colon keeps it that way',
    async () => {
      const pf = postfix as PostfixInstance;
      (server as MilterServer).setChain([{ filter: tightHeaderFilter }]);
      const id = uniqueMessageId('postfix-tight');
      const r = await send(pf, edge.data.replace(/^Message-ID: <[^>]*>/m, `Message-ID: <${id}>`));
      assert.equal(r.dataEnd?.code, 250, r.dataEnd?.raw);
      const msg = await pf.waitForDelivery(queueIdOf(r.dataEnd?.raw ?? ''), id, 30_000);
      assert.deepEqual(msg.headers.filter((h) => h.name === 'X-NoSpace').map((h) => h.raw), ['changed']);
    },
  );
});
