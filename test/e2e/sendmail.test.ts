/**
 * milterd behind a real Sendmail 8.17: `sendmail -bs` sessions with a generated .cf whose
 * INPUT_MAIL_FILTER points at milterd through a packet tap, delivery mode queue, and the queued
 * qf/df files read back (test/support/sendmail.ts). Same chain and checks as the Postfix test.
 * On failure the packets and Sendmail's milter debug log are printed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { MilterServer } from '../../src/server/server.ts';
import { mtaGate } from '../support/mta-available.ts';
import { startMilterTap, type MilterTap } from '../support/milter-tap.ts';
import {
  BODY_APPEND,
  CHGFROM_ARGS,
  QUARANTINE_REASON,
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
  buildMessage,
  createSendmail,
  sendmailQueueIdOf,
  uniqueMessageId,
  type SendmailInstance,
  type TransactionResult,
} from '../support/sendmail.ts';

const gate = mtaGate('sendmail');

describe('Sendmail → milterd: two-filter chain', { skip: gate.skip, timeout: 180_000 }, () => {
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let sendmail: SendmailInstance | undefined;
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
    sendmail = await createSendmail({
      milters: [{ name: 'milterd', socket: tap.address, flags: 'T', timeouts: 'C:5s;S:10s;R:10s;E:1m' }],
    });
  });

  after(async () => {
    await sendmail?.cleanup();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
  });

  /** Runs `fn`; on failure prints the packets and Sendmail's debug log, then fails. */
  async function explained(t: TestContext, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      t.diagnostic(`milter packets:\n${tap?.dump() ?? '(no tap)'}`);
      t.diagnostic(`sendmail debug log:\n${(await sendmail?.debugLog()) ?? '(none)'}`);
      throw err;
    }
  }

  test('edits of both filters are in the queued message; recipients rejected and tempfailed per filter B', async (t) => {
    const sm = sendmail as SendmailInstance;
    await explained(t, async () => {
      const session = await sm.session();
      assert.equal(session.greeting.code, 220, session.greeting.raw);
      const { client } = session;
      try {
        assert.equal((await client.command('EHLO client.milterd.test')).code, 250);
        const messageId = uniqueMessageId('sendmail-chain');
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
        // Sendmail prefixes a rejected recipient's reply text with the address.
        assert.equal(carol?.reply.code, 550, carol?.reply.raw);
        assert.equal(carol?.reply.enhanced, '5.7.1', carol?.reply.raw);
        assert.deepEqual(carol?.reply.lines, [`<reject-carol@example.test>... ${RCPT_REJECT_TEXT}`]);
        assert.equal(dave?.reply.code, 451, dave?.reply.raw);
        assert.equal(dave?.reply.enhanced, '4.7.1', dave?.reply.raw);
        assert.ok(dave?.reply.lines.at(-1)?.endsWith(RCPT_TEMPFAIL_TEXT), dave?.reply.raw);
        assert.equal(result.data?.code, 354, result.data?.raw);
        assert.equal(result.dataEnd?.code, 250, result.dataEnd?.raw);
        const queueId = sendmailQueueIdOf(result.dataEnd?.raw ?? '');

        const msg = await sm.waitQueued(queueId);
        assert.equal(msg.quarantined, false);
        assert.equal(msg.sender, '<alice@example.test>');
        assert.deepEqual(msg.recipients.map((r) => r.address), ['<bob@example.test>']);
        assert.deepEqual(msg.all('Message-ID'), [`<${messageId}>`]);
        assert.deepEqual(msg.all('X-Filter-A'), ['seen']);
        assert.deepEqual(msg.all('Subject'), [`[A] ${subject}`]);
        assert.deepEqual(msg.all('X-Filter-B'), [expectedFilterB(subject)]);
        // Sendmail stores the body with LF line ends.
        assert.equal(msg.body, `First line of the body.\nSecond line.\n${BODY_APPEND}\n`);
        const names = msg.headers.map((h) => h.name);
        assert.deepEqual(names.slice(-2), ['X-Filter-A', 'X-Filter-B']);
        assert.ok(names.indexOf('Subject') < names.indexOf('X-Filter-A'), `Subject changed in place: ${names.join(', ')}`);

        const eomA = events.find((e) => e.filter === 'filter-a' && e.hook === 'eom');
        assert.deepEqual(eomA?.detail, {
          subject,
          body: 'First line of the body.\r\nSecond line.\r\n',
          rcpts: ['<bob@example.test>'],
          i: queueId,
        });
      } finally {
        await session.close();
      }
    });
  });

  test('a message filter B rejects at end of message gets 5xx after DATA and is not queued', async (t) => {
    const sm = sendmail as SendmailInstance;
    await explained(t, async () => {
      const session = await sm.session();
      const { client } = session;
      const before = new Set((await sm.queued()).map((m) => m.id));
      try {
        assert.equal((await client.command('EHLO client.milterd.test')).code, 250);
        const rejectedId = uniqueMessageId('sendmail-eom-reject');
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

        const sentinelId = uniqueMessageId('sendmail-after-reject');
        const sentinel = await client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test'],
          data: buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'Fine', messageId: sentinelId, body: 'Fine.\r\n' }),
        });
        assert.equal(sentinel.dataEnd?.code, 250, sentinel.dataEnd?.raw);
        const queued = await sm.waitQueued(sendmailQueueIdOf(sentinel.dataEnd?.raw ?? ''));
        assert.deepEqual(queued.all('Subject'), ['[A] Fine']);

        const added = (await sm.queued()).filter((m) => !before.has(m.id));
        assert.deepEqual(
          added.map((m) => m.all('Message-ID')),
          [[`<${sentinelId}>`]],
          'only the second message may be queued',
        );
      } finally {
        await session.close();
      }
    });
  });
});

describe('Sendmail → milterd: every modification applied by Sendmail', { skip: gate.skip, timeout: 180_000 }, () => {
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let sendmail: SendmailInstance | undefined;

  before(async () => {
    gate.require();
    const { headers, envelope } = makeModificationsChain();
    server = new MilterServer({ listen: 'inet:0@127.0.0.1', chain: [{ filter: headers }, { filter: envelope }] });
    await server.start();
    tap = await startMilterTap(server.addresses()[0] as string);
    sendmail = await createSendmail({ milters: [{ name: 'milterd', socket: tap.address }] });
  });

  after(async () => {
    await sendmail?.cleanup();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
  });

  test('headers, body, sender and recipients as edited; quarantine makes an hf (held) file', async (t) => {
    const sm = sendmail as SendmailInstance;
    try {
      const session = await sm.session();
      const send = (subject: string): Promise<TransactionResult> =>
        session.client.send({
          from: 'alice@example.test',
          rcpts: ['keep@example.test', 'deleted@example.test'],
          data: buildMessage({
            from: 'alice@example.test',
            to: ['keep@example.test'],
            subject,
            messageId: uniqueMessageId('sendmail-mods'),
            body: 'Original body.\r\n',
            headers: [['X-Remove-Me', 'please']],
          }),
        });
      let edited: TransactionResult;
      let held: TransactionResult;
      try {
        assert.equal((await session.client.command('EHLO client.milterd.test')).code, 250);
        edited = await send('Hello');
        held = await send(QUARANTINE_SUBJECT);
      } finally {
        await session.close();
      }
      assert.equal(edited.dataEnd?.code, 250, edited.dataEnd?.raw);
      assert.equal(held.dataEnd?.code, 250, held.dataEnd?.raw);

      const msg = await sm.waitQueued(sendmailQueueIdOf(edited.dataEnd?.raw ?? ''));
      assert.equal(msg.quarantined, false);
      // Sender and its ESMTP args: ENVID is the Z line, RET=HDRS the `n` envelope flag.
      assert.equal(msg.sender, '<new-sender@example.test>');
      assert.deepEqual(CHGFROM_ARGS.split(' ').sort(), ['ENVID=milterd-test', 'RET=HDRS']);
      assert.equal(msg.envid, 'milterd-test');
      assert.ok(msg.envelopeFlags.includes('n'), `RET=HDRS sets flag n: F${msg.envelopeFlags}`);
      // Recipients: deleted one gone, both added; NOTIFY=NEVER is flag N.
      assert.deepEqual(
        msg.recipients.map((r) => r.address),
        ['<keep@example.test>', '<added@example.test>', '<added-par@example.test>'],
      );
      const addedPar = msg.recipients.find((r) => r.address === '<added-par@example.test>');
      assert.ok(addedPar?.flags.includes('N') && !/[SFD]/.test(addedPar.flags), `NOTIFY=NEVER: R${addedPar?.flags}`);
      // Headers: Sendmail's own Return-Path (written at delivery, flag P) stays first; index 0
      // lands above Sendmail's Received: header, as with Postfix. An insert between headers
      // cannot land exactly in Sendmail: its list holds the .cf's conditional header templates,
      // which are counted but not written ("there is no reliable way to insert a header at an
      // exact position (except at the front or end)", sendmail/headers.c insheader). It does
      // land below the top and above the header it was meant to precede.
      const names = msg.headers.map((h) => h.name);
      assert.deepEqual(
        names.filter((n) => n !== 'X-Middle'),
        ['Return-Path', 'X-Inserted', 'Received', 'From', 'To', 'Subject', 'Message-ID', 'Date', 'MIME-Version', 'Content-Type', 'X-Added'],
      );
      assert.ok(names.indexOf('X-Middle') > names.indexOf('Received') && names.indexOf('X-Middle') < names.indexOf('Subject'), names.join(', '));
      assert.equal(msg.get('X-Inserted'), 'inserted at top');
      assert.equal(msg.get('Subject'), 'Changed: Hello');
      assert.equal(msg.get('X-Added'), 'added value');
      assert.equal(msg.body, 'Replaced body.\n');

      const q = await sm.waitQueued(sendmailQueueIdOf(held.dataEnd?.raw ?? ''));
      assert.equal(q.quarantined, true, 'quarantined messages get an hf file');
      assert.equal(q.quarantineReason, QUARANTINE_REASON);
      assert.equal(q.get('Subject'), `Changed: ${QUARANTINE_SUBJECT}`);
    } catch (err) {
      t.diagnostic(`milter packets:\n${tap?.dump() ?? ''}`);
      t.diagnostic(`sendmail debug log:\n${await sm.debugLog()}`);
      throw err;
    }
  });
});

describe('Sendmail → milterd over a unix-domain socket', { skip: gate.skip, timeout: 120_000 }, () => {
  let server: MilterServer | undefined;
  let sendmail: SendmailInstance | undefined;
  let dir: string | undefined;

  before(async () => {
    gate.require();
    // Sendmail refuses a socket with a group- or world-writable folder on its path (so not
    // under /tmp); /run is root's own.
    dir = await mkdtemp('/run/milterd-test-');
    const socket = path.join(dir, 'milterd.sock');
    const { headers } = makeModificationsChain();
    server = new MilterServer({ listen: `unix:${socket}`, chain: [{ filter: headers }] });
    await server.start();
    sendmail = await createSendmail({ milters: [{ name: 'milterd', socket: `unix:${socket}` }] });
  });

  after(async () => {
    await sendmail?.cleanup();
    await server?.stop({ deadlineMs: 5_000 });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a message goes through and is edited', async (t) => {
    const sm = sendmail as SendmailInstance;
    try {
      const session = await sm.session();
      let r: TransactionResult;
      try {
        await session.client.command('EHLO client.milterd.test');
        r = await session.client.send({
          from: 'alice@example.test',
          rcpts: ['bob@example.test'],
          data: buildMessage({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'unix', messageId: uniqueMessageId('sendmail-unix'), body: 'Hi.\r\n' }),
        });
      } finally {
        await session.close();
      }
      assert.equal(r.dataEnd?.code, 250, r.dataEnd?.raw);
      const msg = await sm.waitQueued(sendmailQueueIdOf(r.dataEnd?.raw ?? ''));
      assert.equal(msg.get('Subject'), 'Changed: unix');
      assert.equal(msg.body, 'Replaced body.\n');
    } catch (err) {
      t.diagnostic(`sendmail debug log:\n${await sm.debugLog()}`);
      throw err;
    }
  });
});

describe('Sendmail → milterd: header edge cases', { skip: gate.skip, timeout: 120_000 }, () => {
  const messageId = uniqueMessageId('sendmail-headers');
  const edge = headerEdgeCase(messageId);
  let server: MilterServer | undefined;
  let tap: MilterTap | undefined;
  let sendmail: SendmailInstance | undefined;

  before(async () => {
    gate.require();
    server = new MilterServer({ listen: 'inet:0@127.0.0.1', chain: [{ filter: edge.filter }] });
    await server.start();
    tap = await startMilterTap(server.addresses()[0] as string);
    sendmail = await createSendmail({ milters: [{ name: 'milterd', socket: tap.address }] });
  });

  after(async () => {
    await sendmail?.cleanup();
    await tap?.close();
    await server?.stop({ deadlineMs: 5_000 });
  });

  async function send(sm: SendmailInstance, data: string): Promise<TransactionResult> {
    const session = await sm.session();
    try {
      await session.client.command('EHLO client.milterd.test');
      return await session.client.send({ from: 'alice@example.test', fromArgs: ['BODY=8BITMIME'], rcpts: ['bob@example.test'], data });
    } finally {
      await session.close();
    }
  }

  test('spacing, folding, duplicates, empty and 8-bit values survive the round trip', async (t) => {
    const sm = sendmail as SendmailInstance;
    try {
      const r = await send(sm, edge.data);
      assert.equal(r.dataEnd?.code, 250, r.dataEnd?.raw);
      const msg = await sm.waitQueued(sendmailQueueIdOf(r.dataEnd?.raw ?? ''));
      // Sendmail's own headers (Return-Path, Received, Date) are left out.
      const skip = new Set(['return-path', 'received', 'date']);
      assert.deepEqual(
        msg.headers.filter((h) => !skip.has(h.name.toLowerCase())).map((h) => `${h.name}:${h.raw}`),
        headerEdgeExpected(messageId),
      );
      assert.deepEqual(edge.seen[0], headerEdgeSeen(messageId));
    } catch (err) {
      t.diagnostic(`milter packets:\n${tap?.dump() ?? ''}`);
      t.diagnostic(`sendmail debug log:\n${await sm.debugLog()}`);
      throw err;
    }
  });

  test(
    'changing a header written without a space after the colon keeps it that way',
    async () => {
      const sm = sendmail as SendmailInstance;
      (server as MilterServer).setChain([{ filter: tightHeaderFilter }]);
      const r = await send(sm, edge.data);
      assert.equal(r.dataEnd?.code, 250, r.dataEnd?.raw);
      const msg = await sm.waitQueued(sendmailQueueIdOf(r.dataEnd?.raw ?? ''));
      assert.deepEqual(msg.headers.filter((h) => h.name === 'X-NoSpace').map((h) => h.raw), ['changed']);
    },
  );
});
