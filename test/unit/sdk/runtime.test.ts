/**
 * The SDK runtime against fake host References: state per connection and message, the
 * end-of-message replay, verdict checking, modifications and host services.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRuntime, captureHostGlobals, type HostServices, type Runtime } from '../../../sdk/src/runtime.ts';
import { definePlugin, verdict, type Plugin, type PluginContext, type PluginState } from '../../../sdk/src/index.ts';
import type { WireCall, WireResult } from '../../../sdk/src/protocol.ts';
import { base, eomCall, fakeRef, hdrs } from './helpers.ts';

function runtime<C extends object = PluginState, M extends object = PluginState>(def: Plugin<C, M>, host: HostServices = {}): Runtime {
  const rt = createRuntime(host);
  rt.register(def);
  return rt;
}

const call = (phase: 'connect' | 'data' | 'abort' | 'close', conn = 'c1', msg = 1): WireCall => ({ ...base(conn, msg), phase });
const rcpt = (address: string, conn = 'c1', msg = 1): WireCall => ({ ...base(conn, msg), phase: 'envrcpt', arg: { address, args: [] } });

/** Asserts a promise rejects with an Error carrying `code` and a message matching `re`. */
async function rejectsWith(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (err: Error & { code?: string }) => {
    assert.equal(err.code, code, err.message);
    assert.match(err.message, re);
    return true;
  });
}

test('registration checks the plugin shape and describes its hooks', () => {
  const rt = createRuntime({});
  assert.throws(() => rt.describe(), { code: 'MILTERD_PLUGIN_LOAD' });
  assert.throws(() => rt.register(null), { code: 'MILTERD_PLUGIN_LOAD', message: /must be an object/ });
  assert.throws(() => rt.register({}), { code: 'MILTERD_PLUGIN_LOAD', message: /at least one hook/ });
  assert.throws(() => rt.register({ envRcpt() {} }), { code: 'MILTERD_PLUGIN_LOAD', message: /unknown plugin property "envRcpt"/ });
  assert.throws(() => rt.register({ eom: 'x' }), { code: 'MILTERD_PLUGIN_LOAD', message: /hook "eom" must be a function/ });
  assert.throws(() => rt.register({ eom() {}, state: { con: () => ({}) } }), { message: /unknown state property "con"/ });
  assert.throws(() => definePlugin({} as Plugin), { code: 'MILTERD_PLUGIN_LOAD' });
  class Counter {
    envrcpt(): void {}
    close(): void {}
  }
  rt.register(new Counter()); // inherited hooks count
  assert.deepEqual(rt.describe(), { protocol: 1, sdkVersion: '1.0.0', hooks: ['envrcpt', 'close'] });
  assert.throws(() => rt.register({ eom() {} }), { message: /already registered/ });
});

test('connection state lives until close; message state is fresh per message and after abort', async () => {
  const seen: string[] = [];
  const rt = runtime(
    definePlugin({
      state: { conn: () => ({ rcpts: 0 }), msg: () => ({ rcpts: [] as string[] }) },
      envrcpt(ctx, r) {
        ctx.conn.rcpts++;
        ctx.msg.rcpts.push(r.address);
        seen.push(`${ctx.conn.rcpts}:${ctx.msg.rcpts.join(',')}`);
      },
      abort(ctx) {
        seen.push(`abort:${ctx.msg.rcpts.join(',')}`);
      },
      close(ctx) {
        seen.push(`close:${ctx.conn.rcpts}`);
      },
    }),
  );
  await rt.dispatch(rcpt('a', 'c1', 1));
  await rt.dispatch(rcpt('b', 'c1', 1));
  await rt.dispatch(rcpt('x', 'c2', 1)); // another connection: its own state
  await rt.dispatch(rcpt('c', 'c1', 2)); // new message on c1
  await rt.dispatch(call('abort', 'c1', 2));
  await rt.dispatch(rcpt('d', 'c1', 2)); // same msg number after an abort: still fresh
  await rt.dispatch(call('close', 'c1', 2));
  await rt.dispatch(rcpt('e', 'c1', 3)); // a connection id seen again after close starts over
  assert.deepEqual(seen, ['1:a', '2:a,b', '1:x', '3:c', 'abort:c', '4:d', 'close:4', '1:e']);
});

test('without state factories conn and msg are plain objects', async () => {
  let ctxSeen: PluginContext | undefined;
  const rt = runtime({
    connect(ctx) {
      ctx.conn.hits = 1;
      ctxSeen = ctx;
    },
  });
  await rt.dispatch(call('connect'));
  assert.deepEqual(ctxSeen!.conn, { hits: 1 });
  assert.deepEqual(ctxSeen!.msg, {});
  assert.throws(() => {
    (ctxSeen as { msg: unknown }).msg = {};
  }, TypeError);
});

test('context: connection, envelope and macros (i and {i} are the same)', async () => {
  const rt = runtime({
    envfrom(ctx, from) {
      assert.deepEqual(from, { address: '<alice@example.net>', args: ['SIZE=100'] });
      assert.ok(Object.isFrozen(from) && Object.isFrozen(from.args));
      assert.equal(ctx.connection.address, '192.0.2.10');
      assert.equal(ctx.connection.helo, 'client.example.net');
      assert.equal(ctx.envelope.from?.address, '<alice@example.net>');
      assert.deepEqual(ctx.envelope.rcpts, [{ address: '<bob@example.org>', args: [] }]);
      assert.equal(ctx.getSymbol('i'), 'QID1');
      assert.equal(ctx.getSymbol('{i}'), 'QID1');
      assert.equal(ctx.getSymbol('{auth_authen}'), 'alice');
      assert.equal(ctx.getSymbol('auth_authen'), 'alice');
      assert.equal(ctx.getSymbol('toString'), undefined);
      assert.equal(ctx.getSymbol('{}'), undefined);
    },
    connect(ctx, info) {
      assert.equal(info, ctx.connection);
      assert.equal(info.helo, undefined); // null on the wire
      assert.equal(ctx.envelope.from, undefined);
    },
  });
  const from = { address: '<alice@example.net>', args: ['SIZE=100'] };
  await rt.dispatch({ ...base(), phase: 'envfrom', arg: from });
  await rt.dispatch({
    ...base('c1', 0, { from: null, rcpts: [], connection: { ...base().connection, helo: null } }),
    phase: 'connect',
  });
});

test('verdicts: helpers, plain objects, undefined, and anything else is refused', async () => {
  const results: unknown[] = [
    undefined,
    verdict.continue(),
    verdict.accept(),
    verdict.discard(),
    verdict.reject(),
    verdict.reject('No such user'),
    verdict.tempfail('Try later'),
    verdict.reject({ code: '550', xcode: '5.7.1', text: ['line 1', 'line 2'] }),
    { type: 'tempfail', reply: { code: '421', text: 'bye' }, extra: 1 },
  ];
  let next = 0;
  const rt = runtime({ envrcpt: () => results[next++] as undefined });
  const verdicts = [];
  for (let i = 0; i < results.length; i++) verdicts.push((await rt.dispatch(rcpt('a'))).verdict);
  assert.deepEqual(verdicts, [
    { type: 'continue' },
    { type: 'continue' },
    { type: 'accept' },
    { type: 'discard' },
    { type: 'reject' },
    { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: 'No such user' } },
    { type: 'tempfail', reply: { code: '451', xcode: '4.7.1', text: 'Try later' } },
    { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: ['line 1', 'line 2'] } },
    { type: 'tempfail', reply: { code: '421', text: 'bye' } },
  ]);
  assert.ok(Object.isFrozen(verdict.reject({ code: '550', text: ['a'] }).reply!.text));

  for (const [bad, re] of [
    [null, /returned null, which is not a verdict/],
    ['reject', /returned "reject"/],
    [{ type: 'nope' }, /returned \{ type: "nope" \}/],
    [{ type: 'skip' }, /only the body hook/],
    [{ type: 'quarantine', reason: 'x' }, /only possible at end of message/],
  ] as const) {
    const r = runtime({ envrcpt: () => bad as unknown as undefined });
    await rejectsWith(r.dispatch(rcpt('a')), 'MILTERD_FILTER_BAD_VERDICT', re);
  }
  const badReply = runtime({ envrcpt: () => ({ type: 'reject', reply: { code: 550 } }) as never });
  await rejectsWith(badReply.dispatch(rcpt('a')), 'MILTERD_FILTER_BAD_REPLY', /code must be a string/);
  assert.throws(() => verdict.reject({ code: '550', text: [1] as never }), { code: 'MILTERD_FILTER_BAD_REPLY' });
  assert.throws(() => verdict.quarantine(''), { code: 'MILTERD_FILTER_BAD_MODIFICATION' });
});

test('end of message replays header, eoh, body in 65535-byte chunks, then eom', async () => {
  const order: string[] = [];
  const body = new Uint8Array(65535 * 2 + 10).fill(0x61);
  const rt = runtime({
    header(_ctx, h) {
      assert.ok(Object.isFrozen(h));
      order.push(`header:${h.name}=${h.value}`);
    },
    eoh() {
      order.push('eoh');
    },
    body(_ctx, chunk) {
      order.push(`body:${chunk.length}`);
    },
    eom(_ctx, m) {
      order.push(`eom:${m.body.length}`);
    },
  });
  const r = await rt.dispatch(eomCall({ body, headers: hdrs(['A', '1'], ['B', '2']) }));
  assert.deepEqual(r, { verdict: { type: 'continue' }, mods: [] });
  assert.deepEqual(order, ['header:A=1', 'header:B=2', 'eoh', 'body:65535', 'body:65535', 'body:10', 'eom:131080']);

  order.length = 0;
  await rt.dispatch(eomCall({ body: new Uint8Array(0), headers: [] }));
  assert.deepEqual(order, ['eoh', 'eom:0'], 'no body hook for an empty body');
});

test('the first verdict other than continue ends the replay; skip only ends the body', async () => {
  const order: string[] = [];
  const rt = runtime({
    header(_ctx, h) {
      order.push(h.name);
      if (h.name === 'Subject') return verdict.reject('bad subject');
    },
    eom() {
      order.push('eom');
    },
  });
  const r = await rt.dispatch(eomCall());
  assert.deepEqual(r.verdict, { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: 'bad subject' } });
  assert.deepEqual(order, ['From', 'Subject']);

  const chunks: number[] = [];
  let eom = false;
  const skipper = runtime({
    body(_ctx, chunk) {
      chunks.push(chunk.length);
      return verdict.skip();
    },
    eom() {
      eom = true;
      return verdict.accept();
    },
  });
  const s = await skipper.dispatch(eomCall({ body: new Uint8Array(70000) }));
  assert.deepEqual(chunks, [65535]);
  assert.ok(eom);
  assert.deepEqual(s.verdict, { type: 'accept' });

  for (const hook of ['header', 'eoh', 'eom'] as const) {
    const bad = runtime({ [hook]: () => verdict.skip() } as Plugin);
    await rejectsWith(bad.dispatch(eomCall()), 'MILTERD_FILTER_BAD_VERDICT', new RegExp(`the ${hook} hook returned skip`));
  }
});

test('modifications are recorded in order and the headers view follows them', async () => {
  let view: unknown;
  const rt = runtime({
    eom(_ctx, m) {
      assert.equal(m.header('subject'), 'hi');
      m.addHeader('X-Spam', 'no');
      m.insertHeader('X-Top', 'first');
      m.insertHeader('X-Far', 'clamped', 99);
      m.changeHeader('Subject', '[tag] hi');
      m.changeHeader('X-Missing', 'added');
      m.deleteHeader('To');
      m.deleteHeader('To'); // already gone: a no-op on the view, still sent (the host decides)
      m.addHeader('X-Folded', 'a\r\n\tb');
      m.addRcpt('<carol@example.org>');
      m.addRcpt('<dave@example.org>', ['NOTIFY=NEVER', 'ORCPT=rfc822;d@example.org']);
      m.delRcpt('bob@example.org');
      m.changeFrom('<bounce@example.net>', 'SIZE=100');
      m.replaceBody('new\nbody\n');
      m.quarantine('suspicious');
      view = m.headers.map((h) => `${h.name}:${h.raw}`);
      assert.equal(m.header('subject'), '[tag] hi');
      assert.equal(m.header('X-Folded'), 'a\n\tb');
      assert.equal(m.bodyText(), 'new\r\nbody\r\n');
      assert.ok(Object.isFrozen(m.headers));
      return verdict.quarantine('second reason');
    },
  });
  const all = ['addHeader', 'changeHeader', 'replaceBody', 'addRcpt', 'delRcpt', 'changeFrom', 'quarantine'] as const;
  const r: WireResult = await rt.dispatch(eomCall({ actions: [...all] }));
  assert.deepEqual(view, [
    'X-Top: first',
    'From: alice@example.net',
    'Subject: [tag] hi',
    'X-Spam: no',
    'X-Far: clamped',
    'X-Missing: added',
    'X-Folded: a\n\tb',
  ]);
  assert.deepEqual(r, {
    verdict: { type: 'continue' },
    mods: [
      { op: 'addHeader', name: 'X-Spam', value: 'no' },
      { op: 'insertHeader', index: 0, name: 'X-Top', value: 'first' },
      { op: 'insertHeader', index: 99, name: 'X-Far', value: 'clamped' },
      { op: 'changeHeader', name: 'Subject', index: 1, value: '[tag] hi' },
      { op: 'changeHeader', name: 'X-Missing', index: 1, value: 'added' },
      { op: 'changeHeader', name: 'To', index: 1, value: '' },
      { op: 'changeHeader', name: 'To', index: 1, value: '' },
      { op: 'addHeader', name: 'X-Folded', value: 'a\r\n\tb' },
      { op: 'addRcpt', rcpt: '<carol@example.org>' },
      { op: 'addRcpt', rcpt: '<dave@example.org>', args: 'NOTIFY=NEVER ORCPT=rfc822;d@example.org' },
      { op: 'delRcpt', rcpt: 'bob@example.org' },
      { op: 'changeFrom', from: '<bounce@example.net>', args: 'SIZE=100' },
      { op: 'replaceBody', body: new TextEncoder().encode('new\r\nbody\r\n') },
      { op: 'quarantine', reason: 'suspicious' },
      { op: 'quarantine', reason: 'second reason' },
    ],
  });
});

test('changeHeader keeps the leading white space style and the n-th header of a name', async () => {
  const rt = runtime({
    eom(_ctx, m) {
      m.changeHeader('received', 'two*', 2);
      m.changeHeader('X-Tight', 'y');
      assert.deepEqual(
        m.headers.map((h) => [h.name, h.value, h.raw]),
        [
          ['Received', 'one', ' one'],
          ['Received', 'two*', '\ttwo*'],
          ['X-Tight', 'y', 'y'],
        ],
      );
      assert.equal(m.header('Received', 2), 'two*');
      assert.equal(m.header('Received', 3), undefined);
    },
  });
  await rt.dispatch(
    eomCall({
      actions: ['changeHeader'],
      headers: [
        { name: 'Received', value: 'one', raw: ' one' },
        { name: 'Received', value: 'two', raw: '\ttwo' },
        { name: 'X-Tight', value: 'x', raw: 'x' },
      ],
    }),
  );
});

test('a modification whose action is not allowed, or with bad arguments, throws BAD_MODIFICATION', async () => {
  const cases: [(m: Parameters<NonNullable<Plugin['eom']>>[1]) => void, RegExp][] = [
    [(m) => m.addHeader('X', 'y'), /addHeader needs the "addHeader" action/],
    [(m) => m.insertHeader('X', 'y'), /insertHeader needs the "addHeader" action/],
    [(m) => m.deleteHeader('X'), /deleteHeader needs the "changeHeader" action/],
    [(m) => m.replaceBody('x'), /replaceBody needs the "replaceBody" action/],
    [(m) => m.quarantine('x'), /quarantine needs the "quarantine" action/],
  ];
  for (const [edit, re] of cases) {
    const rt = runtime({ eom: (_ctx, m) => edit(m) });
    await rejectsWith(rt.dispatch(eomCall({ actions: ['changeFrom'] })), 'MILTERD_FILTER_BAD_MODIFICATION', re);
  }
  const q = runtime({ header: () => verdict.quarantine('x') });
  await rejectsWith(q.dispatch(eomCall()), 'MILTERD_FILTER_BAD_MODIFICATION', /quarantine needs the "quarantine" action/);

  const all: WireCall = eomCall({ actions: ['addHeader', 'changeHeader', 'replaceBody', 'addRcpt', 'changeFrom'] });
  const bad: [(m: Parameters<NonNullable<Plugin['eom']>>[1]) => void, RegExp][] = [
    [(m) => m.addHeader('Bad Name', 'y'), /invalid header name "Bad Name"/],
    [(m) => m.addHeader('X-A:', 'y'), /invalid header name/],
    [(m) => m.addHeader('X', 1 as never), /value must be a string/],
    [(m) => m.addHeader('X', 'a\0b'), /without NUL/],
    [(m) => m.insertHeader('X', 'y', -1), /index must be an integer >= 0/],
    [(m) => m.changeHeader('X', 'y', 0), /index must be an integer >= 1/],
    [(m) => m.addRcpt(''), /non-empty string/],
    [(m) => m.addRcpt('<a@b>\r\nRCPT TO:<c@d>'), /without NUL, CR or LF/],
    [(m) => m.changeFrom('<a@b>', ['X=1\n']), /ESMTP arguments/],
    [(m) => m.replaceBody(42 as never), /Uint8Array or a string/],
  ];
  for (const [edit, re] of bad) {
    const rt = runtime({ eom: (_ctx, m) => edit(m) });
    await rejectsWith(rt.dispatch(all), 'MILTERD_FILTER_BAD_MODIFICATION', re);
  }
});

test('can() reports the allowed actions; edits after eom returned are refused', async () => {
  let kept: Parameters<NonNullable<Plugin['eom']>>[1] | undefined;
  const rt = runtime({
    eom(_ctx, m) {
      assert.equal(m.can('addHeader'), true);
      assert.equal(m.can('replaceBody'), false);
      kept = m;
    },
  });
  await rt.dispatch(eomCall({ actions: ['addHeader'] }));
  assert.throws(() => kept!.addHeader('X', 'late'), { code: 'MILTERD_FILTER_BAD_MODIFICATION', message: /call is over/ });
});

test('replaceBody copies a Uint8Array, and body follows it', async () => {
  const mine = new Uint8Array([1, 2, 3]);
  const rt = runtime({
    eom(_ctx, m) {
      m.replaceBody(mine);
      mine[0] = 9;
      assert.deepEqual([...m.body], [1, 2, 3]);
    },
  });
  const r = await rt.dispatch(eomCall({ actions: ['replaceBody'] }));
  assert.deepEqual(r.mods, [{ op: 'replaceBody', body: new Uint8Array([1, 2, 3]) }]);
});

test('services not granted throw MILTERD_PLUGIN_CAPABILITY naming the capability', async () => {
  const rt = runtime({
    async connect(ctx) {
      assert.throws(() => ctx.log.info('x'), { code: 'MILTERD_PLUGIN_CAPABILITY', message: /capability "log"/ });
      assert.throws(() => ctx.clock.now(), { code: 'MILTERD_PLUGIN_CAPABILITY', message: /capability "clock"/ });
      await rejectsWith(ctx.kv.get('k'), 'MILTERD_PLUGIN_CAPABILITY', /capability "kv"/);
      await rejectsWith(ctx.dns.a('example.org'), 'MILTERD_PLUGIN_CAPABILITY', /capability "dns"/);
    },
  });
  await rt.dispatch(call('connect'));
});

test('host services: arguments on the wire, results normalised, failures as plain Errors with codes', async () => {
  const store = new Map<string, string>();
  const lines: unknown[][] = [];
  const host = {
    log: fakeRef((...args) => void lines.push(args)),
    clock: fakeRef(() => 1_700_000_000_000),
    kv: fakeRef((op, key, value) => {
      if (key === 'down') return { error: { code: 'MILTERD_PLUGIN_KV', message: 'store unreachable' } };
      if (key === 'reject') throw Object.assign(new Error('raw rejection'), { code: 'EREJ' });
      if (key === 'prefixed') throw new Error('[MILTERD_PLUGIN_BAD_ARGUMENT] kv is full');
      if (op === 'get') return store.get(key as string) ?? null;
      if (op === 'set') return void store.set(key as string, value as string);
      if (op === 'incr') {
        const n = Number(store.get(key as string) ?? 0) + (value as number);
        store.set(key as string, String(n));
        return n;
      }
      return void store.delete(key as string);
    }),
    dns: fakeRef((type, name) => {
      if (name === 'timeout.example') return { error: { code: 'ETIMEOUT', message: 'queryA ETIMEOUT timeout.example' } };
      if (type === 'txt') return [['v=spf1 ', '-all'], ['x']];
      if (type === 'mx') return [{ exchange: 'mx.example.org', priority: 10 }];
      return ['192.0.2.1'];
    }),
  };
  const rt = runtime(
    {
      async connect(ctx) {
        ctx.log.info('hello', { n: 1 });
        ctx.log.warn('odd fields', { fn: () => 1, ok: true });
        assert.equal(ctx.clock.now(), 1_700_000_000_000);
        assert.equal(await ctx.kv.get('k'), undefined);
        await ctx.kv.set('k', 'v', { ttlMs: 1000 });
        assert.equal(await ctx.kv.get('k'), 'v');
        assert.equal(await ctx.kv.incr('n'), 1);
        assert.equal(await ctx.kv.incr('n', { by: 5, ttlMs: 60_000 }), 6);
        await ctx.kv.del('k');
        await rejectsWith(ctx.kv.get(''), 'MILTERD_PLUGIN_BAD_ARGUMENT', /key must be a non-empty string/);
        await rejectsWith(ctx.kv.set('k', 1 as never), 'MILTERD_PLUGIN_BAD_ARGUMENT', /value must be a string/);
        await rejectsWith(ctx.kv.set('k', 'v', { ttlMs: -1 }), 'MILTERD_PLUGIN_BAD_ARGUMENT', /ttlMs/);
        await rejectsWith(ctx.kv.set('k', 'v', { ttlMs: 1.5 }), 'MILTERD_PLUGIN_BAD_ARGUMENT', /positive integer/);
        await rejectsWith(ctx.kv.incr('k', { by: 1.5 }), 'MILTERD_PLUGIN_BAD_ARGUMENT', /integer/);
        await rejectsWith(ctx.kv.get('down'), 'MILTERD_PLUGIN_KV', /^kv\.get: store unreachable$/);
        await rejectsWith(ctx.kv.get('reject'), 'EREJ', /^kv\.get: raw rejection$/);
        await rejectsWith(ctx.kv.get('prefixed'), 'MILTERD_PLUGIN_BAD_ARGUMENT', /^kv\.get: kv is full$/);
        assert.deepEqual(await ctx.dns.a('example.org', { timeoutMs: 500 }), ['192.0.2.1']);
        assert.deepEqual(await ctx.dns.txt('example.org'), ['v=spf1 -all', 'x']);
        assert.deepEqual(await ctx.dns.mx('example.org'), [{ exchange: 'mx.example.org', priority: 10 }]);
        await rejectsWith(ctx.dns.a('timeout.example'), 'ETIMEOUT', /^dns\.a\(timeout\.example\): queryA ETIMEOUT/);
        await rejectsWith(ctx.dns.ptr('192.0.2.1', { timeoutMs: 0 }), 'MILTERD_PLUGIN_BAD_ARGUMENT', /timeoutMs/);
      },
    },
    host,
  );
  await rt.dispatch(call('connect'));
  assert.deepEqual(lines, [
    ['info', 'hello', { n: 1 }],
    ['warn', 'odd fields', { fn: '() => 1', ok: true }],
  ]);
  assert.deepEqual(host.kv.calls.slice(0, 5), [
    ['get', 'k'],
    ['set', 'k', 'v', 1000],
    ['get', 'k'],
    ['incr', 'n', 1, undefined],
    ['incr', 'n', 5, 60_000],
  ]);
  assert.deepEqual(host.dns.calls[0], ['a', 'example.org', 500]);
});

test('dispatch moves MILTERD_* codes into the message, where they survive the isolate boundary', async () => {
  const rt = runtime(
    {
      async envrcpt(ctx, r) {
        if (r.address === 'mine') throw Object.assign(new RangeError('boom'), { code: 'MY_CODE' });
        if (r.address === 'kv') await ctx.kv.get('x'); // not granted
        if (r.address === 'host') await ctx.dns.a('bad name');
        return { type: 'bogus' } as never;
      },
    },
    { dns: fakeRef(() => ({ error: { message: '[MILTERD_PLUGIN_BAD_ARGUMENT] invalid DNS name "bad name"' } })) },
  );
  await assert.rejects(rt.dispatch(rcpt('mine')), (e: Error & { code?: string }) => e instanceof RangeError && e.message === 'boom' && e.code === 'MY_CODE');
  await assert.rejects(rt.dispatch(rcpt('x')), {
    code: 'MILTERD_FILTER_BAD_VERDICT',
    message: /^\[MILTERD_FILTER_BAD_VERDICT\] the envrcpt hook returned \{ type: "bogus" \}/,
  });
  await assert.rejects(rt.dispatch(rcpt('kv')), { message: /^\[MILTERD_PLUGIN_CAPABILITY\] capability "kv"/ });
  // A host error's "[CODE] " prefix becomes the code inside the isolate, and the prefix again outside.
  await assert.rejects(rt.dispatch(rcpt('host')), {
    code: 'MILTERD_PLUGIN_BAD_ARGUMENT',
    message: '[MILTERD_PLUGIN_BAD_ARGUMENT] dns.a(bad name): invalid DNS name "bad name"',
  });
});

test('captureHostGlobals takes the References off the global object', () => {
  const g: Record<string, unknown> = { __milterd_log: fakeRef(() => {}), __milterd_kv: fakeRef(() => {}), other: 1 };
  const host = captureHostGlobals(g);
  assert.deepEqual(Object.keys(host).sort(), ['kv', 'log']);
  assert.deepEqual(Object.keys(g), ['other']);
  const stuck = {};
  Object.defineProperty(stuck, '__milterd_dns', { value: fakeRef(() => {}), configurable: false });
  assert.throws(() => captureHostGlobals(stuck), { code: 'MILTERD_PLUGIN_LOAD', message: /could not hide/ });
  assert.throws(() => captureHostGlobals({ __milterd_clock: 42 }), { message: /is not a Reference/ });
});
