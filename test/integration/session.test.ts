/**
 * Whole MTA sessions against a real MilterServer, driven by the MTA simulator: lifecycle,
 * ordering rules, negotiation, content, failures. Every test ends by checking that the
 * server never answered a command that must not be answered, nor answered one twice.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { defineFilter } from '../../src/chain/define.ts';
import type { Filter } from '../../src/chain/filter.ts';
import { SMFIF, SMFIP } from '../../src/protocol/constants.ts';
import { encodeCommand } from '../../src/protocol/encoder.ts';
import type { MtaClient } from '../support/mta-client.ts';
import { startServer } from '../support/server.ts';

async function clean(c: MtaClient): Promise<void> {
  const r = await c.close(500);
  assert.deepEqual(r, { unexpectedReplies: 0, violations: [] });
}

async function open(c: MtaClient, helo = 'client.example.org'): Promise<void> {
  await c.negotiate();
  await c.connect({ hostname: 'client.example.org', family: 'inet', address: '192.0.2.7', port: 40001 }, { j: 'mx.example.org' });
  await c.helo(helo);
}

const stamp = (name: string, extra: Partial<Filter> = {}): Filter =>
  defineFilter({
    name,
    actions: ['addHeader'],
    eom(_ctx, m) {
      m.addHeader(`X-${name}`, 'seen');
    },
    ...extra,
  });

test('negotiation answers only what the MTA offered, and the chain decides the flags', async (t) => {
  const s = await startServer([{ filter: stamp('a') }]);
  t.after(() => s.stop());
  const c = await s.connect();
  const r = await c.negotiate();
  assert.equal(r.version, 6);
  assert.equal(r.actions, SMFIF.ADDHDRS);
  // Content is buffered and filtered at end of message: no answer per header/body chunk.
  for (const f of [SMFIP.NR_HDR, SMFIP.NR_BODY, SMFIP.NR_CONN, SMFIP.NR_HELO, SMFIP.NR_MAIL, SMFIP.NR_RCPT, SMFIP.HDR_LEADSPC]) {
    assert.ok((r.protocol & f) !== 0, `flag 0x${f.toString(16)} expected in 0x${r.protocol.toString(16)}`);
  }
  for (const f of [SMFIP.NOHDRS, SMFIP.NOBODY, SMFIP.NOMAIL, SMFIP.NORCPT]) assert.equal(r.protocol & f, 0);
  await clean(c);

  // A protocol v2 MTA (Sendmail 8.12 era) gets a v2 answer within its offer.
  const c2 = await s.connect();
  const r2 = await c2.negotiate({ version: 2, actions: 0x3f, protocol: 0x7f });
  assert.equal(r2.version, 2);
  assert.equal(r2.protocol & ~0x7f, 0);
  assert.equal(r2.actions & ~0x3f, 0);
  await c2.connect();
  await c2.helo('h');
  const m = await c2.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], headers: [['Subject', ' v2']], body: 'x\r\n' });
  assert.deepEqual(m.eom?.modifications, [{ kind: 'addheader', name: 'X-a', value: 'seen' }]);
  await clean(c2);
});

test('an MTA offering protocol version 1 is refused and the connection closed', async (t) => {
  const s = await startServer([]);
  t.after(() => s.stop());
  const c = await s.connect();
  c.sendRaw(encodeCommand({ kind: 'optneg', version: 1, actions: 0xf, protocol: 0x3f }), 0);
  await c.waitClosed(2000);
  assert.equal(s.withCode('MILTERD_SESSION_VERSION').length, 1);
});

test('two filters: the second sees the first one\'s edits; the MTA gets one minimal, indexed set', async (t) => {
  let seenByB: string[] = [];
  const a = defineFilter({
    name: 'a',
    actions: ['addHeader', 'changeHeader', 'replaceBody'],
    async eom(_ctx, m) {
      m.changeHeader('Subject', 1, '[a] hello');
      m.deleteHeader('X-Spam', 2);
      m.deleteHeader('X-Spam', 1);
      m.insertHeader(0, 'X-Top', 'first');
      m.addHeader('X-A', 'seen');
      const body = Buffer.from(await m.body()).toString();
      m.replaceBody(body + 'footer by a\r\n');
    },
  });
  const b = defineFilter({
    name: 'b',
    actions: ['addHeader'],
    async eom(_ctx, m) {
      seenByB = m.headers.map((h) => `${h.name}:${h.value}`);
      const body = Buffer.from(await m.body()).toString();
      m.addHeader('X-B', body.includes('footer by a') ? 'saw-footer' : 'no-footer');
    },
  });
  const s = await startServer([{ filter: a }, { filter: b }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const r = await c.runMessage({
    from: '<alice@example.org>',
    rcpts: ['<bob@example.net>'],
    headers: [
      ['X-Spam', ' one'],
      ['Subject', ' hello'],
      ['X-Spam', ' two'],
      ['From', ' alice@example.org'],
    ],
    body: 'Hi Bob\r\n',
  });
  assert.deepEqual(seenByB, ['X-Top:first', 'Subject:[a] hello', 'From:alice@example.org', 'X-A:seen']);
  assert.deepEqual(r.eom?.modifications, [
    { kind: 'chgheader', index: 1, name: 'Subject', value: ' [a] hello' },
    // Deletions after changes, highest index first (OpenDKIM CVE-2022-48521).
    { kind: 'chgheader', index: 2, name: 'X-Spam', value: '' },
    { kind: 'chgheader', index: 1, name: 'X-Spam', value: '' },
    { kind: 'insheader', index: 0, name: 'X-Top', value: ' first' },
    { kind: 'addheader', name: 'X-A', value: ' seen' },
    { kind: 'addheader', name: 'X-B', value: ' saw-footer' },
    { kind: 'replbody', chunk: Buffer.from('Hi Bob\r\nfooter by a\r\n') },
  ]);
  assert.equal(r.eom?.verdict.kind, 'accept');
  await clean(c);
});

test('RCPT reject/tempfail refuse one recipient; later filters and end of message never see it', async (t) => {
  const seen: string[] = [];
  let eomRcpts: string[] = [];
  const policy = defineFilter({
    name: 'policy',
    envrcpt(_ctx, r) {
      if (r.address.startsWith('<reject')) return { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: 'milterd says no' } };
      if (r.address.startsWith('<tempfail')) return { type: 'tempfail' };
      return undefined;
    },
  });
  const audit = defineFilter({
    name: 'audit',
    envrcpt(_ctx, r) {
      seen.push(r.address);
    },
    eom(ctx) {
      eomRcpts = ctx.rcpts.map((r) => r.address);
    },
  });
  const s = await startServer([{ filter: policy }, { filter: audit }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const r = await c.runMessage({
    from: '<a@example.org>',
    rcpts: ['<ok@example.net>', '<reject@example.net>', '<tempfail@example.net>', ['<ok2@example.net>', 'NOTIFY=NEVER']],
    headers: [['Subject', ' x']],
    body: 'x\r\n',
  });
  assert.deepEqual(r.rcpts, [
    { kind: 'continue' },
    { kind: 'replycode', text: '550 5.7.1 milterd says no' },
    { kind: 'tempfail' },
    { kind: 'continue' },
  ]);
  assert.deepEqual(seen, ['<ok@example.net>', '<ok2@example.net>']);
  assert.deepEqual(eomRcpts, ['<ok@example.net>', '<ok2@example.net>']);
  assert.equal(r.eom?.verdict.kind, 'accept');
  await clean(c);
});

test('a filter that accepts is out for the rest of the message, but not for the next one', async (t) => {
  const calls: string[] = [];
  const early = defineFilter({
    name: 'early',
    envfrom(_ctx, f) {
      calls.push(`early:mail:${f.address}`);
      return f.address === '<vip@example.org>' ? { type: 'accept' } : undefined;
    },
    eom() {
      calls.push('early:eom');
    },
  });
  const late = defineFilter({ name: 'late', eom: () => void calls.push('late:eom') });
  const s = await startServer([{ filter: early }, { filter: late }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const m1 = await c.runMessage({ from: '<vip@example.org>', rcpts: ['<x@y>'], headers: [['A', ' 1']], body: 'b\r\n' });
  // The other filter is still in: the MTA must go on (continue, not accept).
  assert.deepEqual(m1.mail, { kind: 'continue' });
  c.abort();
  const m2 = await c.runMessage({ from: '<other@example.org>', rcpts: ['<x@y>'], headers: [['A', ' 1']], body: 'b\r\n' });
  assert.equal(m2.eom?.verdict.kind, 'accept');
  assert.deepEqual(calls, ['early:mail:<vip@example.org>', 'late:eom', 'early:mail:<other@example.org>', 'early:eom', 'late:eom']);
  await clean(c);
});

test('when every filter has accepted, the MTA is told ACCEPT and the message ends early', async (t) => {
  const only = defineFilter({ name: 'only', envfrom: () => ({ type: 'accept' }), eom: () => assert.fail('must not run') });
  const s = await startServer([{ filter: only }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  assert.equal(r.endedAt, 'mail');
  assert.deepEqual(r.mail, { kind: 'accept' });
  await clean(c);
});

test('ABORT is never answered, resets the message and keeps the connection data', async (t) => {
  const events: string[] = [];
  const f = defineFilter({
    name: 'f',
    envfrom(ctx) {
      assert.equal(ctx.msgState.count, undefined, 'fresh message state');
      ctx.msgState.count = 1;
      ctx.connState.messages = ((ctx.connState.messages as number | undefined) ?? 0) + 1;
    },
    abort(ctx) {
      events.push(`abort:${ctx.connection.helo}`);
    },
    eom(ctx) {
      events.push(`eom:${ctx.connection.helo}:${ctx.connection.address}:${ctx.connState.messages}:${ctx.getSymbol('j')}`);
    },
  });
  const s = await startServer([{ filter: f }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c, 'helo.example');
  await c.mail('<a@b>');
  await c.rcpt('<c@d>');
  await c.header('Subject', ' first');
  c.abort();
  await c.settle(50);
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], headers: [['Subject', ' second']], body: 'x\r\n' });
  assert.equal(r.eom?.verdict.kind, 'accept');
  // Postfix sends ABORT after end of message too, sometimes twice.
  c.abort();
  c.abort();
  await c.settle(50);
  assert.deepEqual(events, ['abort:helo.example', 'eom:helo.example:192.0.2.7:2:mx.example.org']);
  await clean(c);
});

test('macros: x and {x} are one lookup; message macros do not leak into the next message', async (t) => {
  const seen: Array<string | undefined> = [];
  const f = defineFilter({
    name: 'f',
    macros: { envfrom: ['{auth_authen}'] },
    eom(ctx) {
      seen.push(ctx.getSymbol('i'), ctx.getSymbol('{i}'), ctx.getSymbol('auth_authen'), ctx.getSymbol('{j}'));
    },
  });
  const s = await startServer([{ filter: f }]);
  t.after(() => s.stop());
  const c = await s.connect();
  const neg = await c.negotiate();
  assert.ok((neg.actions & SMFIF.SETSYMLIST) !== 0);
  const envfrom = neg.symlists?.find((l) => l.stage === 2);
  assert.ok(envfrom?.macros.includes('{auth_authen}') && envfrom.macros.includes('i'), JSON.stringify(neg.symlists));
  await c.connect({}, { j: 'mx.example.org' });
  await c.helo('h');
  await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x', macros: { mail: { i: 'QID1', '{auth_authen}': 'alice' } } });
  await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x', macros: { mail: { i: 'QID2' } } });
  assert.deepEqual(seen, ['QID1', 'QID1', 'alice', 'mx.example.org', 'QID2', 'QID2', undefined, 'mx.example.org']);
  await clean(c);
});

test('QUIT_NC starts a new SMTP connection on the same socket without renegotiation', async (t) => {
  const events: string[] = [];
  const f = defineFilter({
    name: 'f',
    connect(ctx, info) {
      assert.deepEqual(ctx.connState, {}, 'fresh connection state');
      ctx.connState.host = info.hostname;
      events.push(`connect:${info.hostname}`);
    },
    close(ctx) {
      events.push(`close:${ctx.connState.host}`);
    },
    eom(ctx) {
      events.push(`eom:${ctx.connection.hostname}:${ctx.getSymbol('j')}`);
    },
  });
  const s = await startServer([{ filter: f }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await c.negotiate();
  await c.connect({ hostname: 'one.example' }, { j: 'mx1' });
  await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  c.quitNc();
  await c.connect({ hostname: 'two.example' });
  await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  await c.quit();
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(events, ['connect:one.example', 'eom:one.example:mx1', 'close:one.example', 'connect:two.example', 'eom:two.example:undefined', 'close:two.example']);
  await clean(c);
});

test('out-of-order commands abort the transaction as libmilter does, and are answered once', async (t) => {
  const events: string[] = [];
  const f = defineFilter({
    name: 'f',
    envrcpt: () => void events.push('rcpt'),
    abort: () => void events.push('abort'),
    eom: () => void events.push('eom'),
  });
  const s = await startServer([{ filter: f }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  // RCPT before MAIL: not valid from the between-messages state either: TEMPFAIL.
  assert.deepEqual(await c.rcpt('<c@d>'), { kind: 'tempfail' });
  // MAIL inside a message: abort the transaction, then process MAIL from the HELO state.
  await c.mail('<a@b>');
  await c.rcpt('<c@d>');
  await c.mail('<again@b>');
  await c.rcpt('<e@f>');
  const eom = await c.eom();
  assert.equal(eom.verdict.kind, 'accept');
  assert.deepEqual(events, ['rcpt', 'abort', 'rcpt', 'eom']);
  assert.equal(s.withCode('MILTERD_SESSION_OUT_OF_ORDER').length, 2);
  await clean(c);
});

test('a command before negotiation, an unknown command code, and a huge frame close the connection', async (t) => {
  const s = await startServer([{ filter: stamp('a') }]);
  t.after(() => s.stop());

  const before = await s.connect();
  before.sendRaw(encodeCommand({ kind: 'helo', name: 'x' }), 0);
  await before.waitClosed(2000);

  const unknown = await s.connect();
  await unknown.negotiate();
  unknown.sendRaw(Buffer.from([0, 0, 0, 1, 0x7a]), 0); // 'z' is no command
  await unknown.waitClosed(2000);
  assert.equal(s.withCode('MILTERD_PROTO_UNKNOWN_COMMAND').length, 1);

  // A stray HTTP request: "POST" read as a length is 1.3 GB. Refused before allocating.
  const http = await s.connect();
  http.sendRaw(Buffer.from('POST / HTTP/1.1\r\n\r\n'), 0);
  await http.waitClosed(2000);
  assert.equal(s.withCode('MILTERD_PROTO_FRAME_TOO_LARGE').length, 1);

  // The server still serves others.
  const good = await s.connect();
  await open(good);
  const r = await good.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  assert.equal(r.eom?.verdict.kind, 'accept');
  await clean(good);
});

test('a malformed payload gets TEMPFAIL, is logged, and the connection goes on', async (t) => {
  const s = await startServer([{ filter: defineFilter({ name: 'f', envrcpt: () => undefined, eom: () => undefined }) }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  await c.mail('<a@b>');
  // RCPT whose address has no NUL terminator.
  c.sendRaw(Buffer.from([0, 0, 0, 4, 0x52, 0x3c, 0x61, 0x3e]), 1);
  assert.deepEqual(await c.readReply(2000), { kind: 'tempfail' });
  assert.equal(s.withCode('MILTERD_SESSION_MALFORMED').length, 1);
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  assert.equal(r.eom?.verdict.kind, 'accept');
  await clean(c);
});

test('the abort after a malformed command completes before the next message starts (a slow abort hook cannot reset the next message)', async (t) => {
  const calls: string[] = [];
  const f = defineFilter({
    name: 'f',
    envfrom: () => ({ type: 'accept' }), // done with the message: its eom must not be called
    envrcpt: () => undefined,
    abort: async () => {
      calls.push('abort start');
      await new Promise((r) => setTimeout(r, 100));
      calls.push('abort end');
    },
    eom: () => void calls.push('eom'),
  });
  // A second filter keeps the message going after f's accept at MAIL.
  const s = await startServer([{ filter: f }, { filter: stamp('b') }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  await c.mail('<a@b>');
  c.sendRaw(Buffer.from([0, 0, 0, 4, 0x52, 0x3c, 0x61, 0x3e]), 1); // RCPT without its NUL
  assert.deepEqual(await c.readReply(2000), { kind: 'tempfail' });
  calls.push('next message');
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  assert.equal(r.eom?.verdict.kind, 'accept');
  assert.deepEqual(r.eom?.modifications, [{ kind: 'addheader', name: 'X-b', value: ' seen' }]);
  // Before the fix: MAIL was handled while the abort hook still ran, and its end reset the new
  // message's state (f's accept at MAIL was forgotten, and f's eom was called).
  assert.deepEqual(calls, ['abort start', 'abort end', 'next message']);
  await clean(c);
});

test('header values reach filters exactly as sent; added headers get their space right with and without HDR_LEADSPC', async (t) => {
  const raws: string[] = [];
  const f = defineFilter({
    name: 'f',
    actions: ['addHeader'],
    header(_ctx, _n, value, raw) {
      raws.push(`${JSON.stringify(value)}|${JSON.stringify(raw)}`);
    },
    eom(_ctx, m) {
      m.addHeader('X-Added', 'v');
    },
  });
  const s = await startServer([{ filter: f }]);
  t.after(() => s.stop());
  const lead = await s.connect();
  await open(lead);
  const r1 = await lead.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], headers: [['Subject', ':no-space'.slice(1)], ['To', '  two'], ['X-Folded', ' a\n\tb']] });
  assert.deepEqual(raws, ['"no-space"|"no-space"', '" two"|"  two"', '"a\\n\\tb"|" a\\n\\tb"']);
  assert.deepEqual(r1.eom?.modifications, [{ kind: 'addheader', name: 'X-Added', value: ' v' }]);
  await clean(lead);

  // Without HDR_LEADSPC the MTA strips the space itself and adds one to what we send.
  const plain = await s.connect();
  await plain.negotiate({ version: 6, actions: 0x1ff, protocol: 0x1fffff & ~SMFIP.HDR_LEADSPC });
  await plain.connect();
  await plain.helo('h');
  const r2 = await plain.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], headers: [['Subject', ' hi']] });
  assert.deepEqual(r2.eom?.modifications, [{ kind: 'addheader', name: 'X-Added', value: 'v' }]);
  await clean(plain);
});

test('large bodies spill to disk, filters read them whole, a replaced body goes back in 65535-byte chunks', async (t) => {
  const body = Buffer.alloc(300_000);
  for (let i = 0; i < body.length; i++) body[i] = 0x41 + (i % 26);
  let digest = '';
  const f = defineFilter({
    name: 'f',
    actions: ['replaceBody'],
    async eom(_ctx, m) {
      assert.equal(m.bodySize, body.length);
      digest = createHash('sha256').update(await m.body()).digest('hex');
      m.replaceBody(new Uint8Array(150_000).fill(0x78));
    },
  });
  const s = await startServer([{ filter: f }], { bodyMemoryLimit: 64 * 1024 });
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body });
  assert.equal(digest, createHash('sha256').update(body).digest('hex'));
  const chunks = (r.eom?.modifications ?? []).map((m) => (m.kind === 'replbody' ? m.chunk.length : -1));
  assert.deepEqual(chunks, [65535, 65535, 18930]);
  await clean(c);
});

test('a slow end of message sends SMFIR_PROGRESS so the MTA does not time out', async (t) => {
  const f = defineFilter({ name: 'slow', eom: () => new Promise<undefined>((r) => setTimeout(() => r(undefined), 400)) });
  const s = await startServer([{ filter: f }], { progressIntervalMs: 100 });
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  assert.equal(r.eom?.verdict.kind, 'accept');
  assert.ok(r.eom!.progressCount >= 2 && r.eom!.progressCount <= 4, `progress count ${r.eom!.progressCount}`);
  await clean(c);
});

test('a filter that throws or hangs gets its failure policy; the log names filter, hook and code', async (t) => {
  const thrower = defineFilter({
    name: 'thrower',
    envrcpt(_ctx, r) {
      if (r.address === '<boom@x>') throw new Error('kaboom');
    },
  });
  const hanger = defineFilter({ name: 'hanger', eom: () => new Promise<undefined>(() => undefined) });
  const s = await startServer([
    { filter: thrower, onError: 'tempfail' },
    { filter: hanger, onError: 'continue', timeoutMs: 100 },
    { filter: stamp('after') },
  ]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<boom@x>', '<fine@x>'], body: 'x' });
  assert.deepEqual(r.rcpts, [{ kind: 'tempfail' }, { kind: 'continue' }]);
  // The hanging filter is skipped after its budget; the next one still runs.
  assert.deepEqual(r.eom?.modifications, [{ kind: 'addheader', name: 'X-after', value: ' seen' }]);
  const threw = s.withCode('MILTERD_FILTER_THREW')[0]!;
  assert.equal(threw.filter, 'thrower');
  assert.equal(threw.hook, 'envrcpt');
  const timeout = s.withCode('MILTERD_FILTER_TIMEOUT')[0]!;
  assert.equal(timeout.filter, 'hanger');
  assert.equal(timeout.hook, 'eom');
  await clean(c);
});

test('an invalid reply code from a filter is never sent; the policy answers instead', async (t) => {
  const f = defineFilter({ name: 'f', envfrom: () => ({ type: 'reject', reply: { code: '550', xcode: '4.7.1', text: 'class mismatch' } }) });
  const s = await startServer([{ filter: f, onError: 'reject' }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  assert.deepEqual(await c.mail('<a@b>'), { kind: 'reject' });
  assert.equal(s.withCode('MILTERD_FILTER_BAD_REPLY').length, 1);
  await clean(c);
});

test('many concurrent connections are served independently', async (t) => {
  const f = defineFilter({
    name: 'f',
    actions: ['addHeader'],
    async eom(ctx, m) {
      await new Promise((r) => setTimeout(r, Math.random() * 5));
      m.addHeader('X-From', ctx.from?.address ?? '');
    },
  });
  const s = await startServer([{ filter: f }]);
  t.after(() => s.stop());
  await Promise.all(
    Array.from({ length: 40 }, async (_, i) => {
      const c = await s.connect();
      await open(c);
      for (let k = 0; k < 3; k++) {
        const from = `<s${i}m${k}@example.org>`;
        const r = await c.runMessage({ from, rcpts: ['<c@d>'], headers: [['Subject', ' x']], body: 'y\r\n', abortAfter: true });
        assert.deepEqual(r.eom?.modifications, [{ kind: 'addheader', name: 'X-From', value: ` ${from}` }]);
      }
      await clean(c);
    }),
  );
});
