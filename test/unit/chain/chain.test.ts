/**
 * Chain and ChainRun with in-process filters: multi-milter semantics (order, first
 * non-continue wins, accept = out for the message or connection), failure policies, time
 * budgets, reply codes, end-of-message hand-over between filters, defineFilter replay,
 * abort/close notifications and what the chain needs from negotiation.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Chain, ChainRun, DEFAULT_CHAIN_DEFAULTS, type Outcome, type RunEnv } from '../../../src/chain/chain.ts';
import { BodyStore } from '../../../src/chain/content.ts';
import { defineFilter } from '../../../src/chain/define.ts';
import type {
  ChainEntry,
  ConnectionInfo,
  EnvelopeAddress,
  Filter,
  FilterAction,
  FilterContext,
  FilterLogger,
  HookResult,
  Verdict,
} from '../../../src/chain/filter.ts';
import { diffToActions, type MessageSnapshot, type WorkHeader } from '../../../src/chain/message.ts';
import { silentLogger } from '../../../src/log.ts';

const ALL_ACTIONS: readonly FilterAction[] = [
  'addHeader',
  'changeHeader',
  'replaceBody',
  'addRcpt',
  'delRcpt',
  'changeFrom',
  'quarantine',
];

const CONN: ConnectionInfo = { hostname: 'mail.example.org', family: 'inet', address: '192.0.2.7', port: 40000, helo: undefined };
const FROM: EnvelopeAddress = { address: '<sender@example.org>', args: [] };
const rcpt = (a: string): EnvelopeAddress => ({ address: `<${a}>`, args: [] });

interface LogRecord {
  readonly level: string;
  readonly obj: object | string;
  readonly msg: string | undefined;
}

/** A logger that records every line (child loggers write into the same list). */
function captureLogger(records: LogRecord[]): FilterLogger & { child(b: object): FilterLogger } {
  const at =
    (level: string) =>
    (obj: object | string, msg?: string): void => {
      records.push({ level, obj, msg });
    };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => captureLogger(records) };
}

/** Error codes of the filter failures the chain logged, in order. */
function failureCodes(records: readonly LogRecord[]): string[] {
  return records
    .filter((r) => r.level === 'warn' && typeof r.obj === 'object' && 'code' in r.obj)
    .map((r) => String((r.obj as { code: unknown }).code));
}

function env(over: Partial<RunEnv> = {}): RunEnv {
  const logger = silentLogger();
  return {
    connection: () => CONN,
    from: () => FROM,
    rcpts: () => [],
    getSymbol: () => undefined,
    log: () => logger,
    negotiated: new Set(ALL_ACTIONS),
    addRcptArgs: true,
    bodyStore: { memoryLimit: 1 << 20 },
    ...over,
  };
}

function run(entries: readonly ChainEntry[], over: Partial<RunEnv> = {}): ChainRun {
  return new ChainRun(new Chain(entries), env(over));
}

function isPromise(v: unknown): boolean {
  return v instanceof Promise;
}

/** The outcome of a synchronous chain call; fails if it returned a promise. */
function sync(o: Outcome | Promise<Outcome>): Outcome {
  assert.ok(!isPromise(o), 'expected a synchronous outcome');
  return o as Outcome;
}

function headers(list: ReadonlyArray<readonly [string, string]>): WorkHeader[] {
  return list.map(([name, value], i) => ({ name, value, raw: ` ${value}`, orig: i }));
}

function body(...chunks: string[]): BodyStore {
  const b = new BodyStore({ memoryLimit: 1 << 20 });
  for (const c of chunks) b.append(Buffer.from(c, 'latin1'));
  return b;
}

function message(over: Partial<MessageSnapshot> = {}): MessageSnapshot {
  return {
    headers: over.headers ?? headers([
      ['From', 'a@example.org'],
      ['Subject', 'hello'],
    ]),
    body: over.body ?? body('line 1\r\n', 'line 2\r\n'),
    from: over.from ?? FROM,
    rcpts: over.rcpts ?? [rcpt('r@example.net')],
    quarantine: over.quarantine,
  };
}

/** Busy-waits `ms` milliseconds (a slow synchronous hook). */
function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // spin
  }
}

describe('Chain construction and needs', () => {
  it('rejects duplicate and empty filter names', () => {
    assert.throws(() => new Chain([{ filter: { name: 'a' } }, { filter: { name: 'b' } }, { filter: { name: 'a' } }]), {
      name: 'TypeError',
      message: 'filter name a appears twice in the chain',
    });
    assert.throws(() => new Chain([{ filter: { name: '' } }]), { name: 'TypeError', message: 'every filter needs a non-empty name' });
  });

  it('applies defaults per entry, entry settings first', () => {
    const chain = new Chain(
      [{ filter: { name: 'a' } }, { filter: { name: 'b' }, onError: 'reject', timeoutMs: 5, messageBudgetMs: 7 }],
      { onError: 'continue', timeoutMs: 100, messageBudgetMs: 200 },
    );
    assert.deepEqual(
      chain.entries.map((e) => [e.name, e.onError, e.timeoutMs, e.messageBudgetMs]),
      [
        ['a', 'continue', 100, 200],
        ['b', 'reject', 5, 7],
      ],
    );
    assert.deepEqual(DEFAULT_CHAIN_DEFAULTS, { onError: 'tempfail', timeoutMs: 10_000, messageBudgetMs: 60_000 });
    assert.equal(new Chain([{ filter: { name: 'x' } }]).entries[0]!.onError, 'tempfail');
  });

  it('an empty chain needs nothing', () => {
    const n = new Chain([]).needs;
    assert.deepEqual([...n.hooks], []);
    assert.equal(n.headers, false);
    assert.equal(n.body, false);
    assert.deepEqual([...n.actions], []);
    assert.equal(n.macros.size, 0);
  });

  it('hooks set, actions union, macros union', () => {
    const n = new Chain([
      {
        filter: {
          name: 'a',
          actions: ['addHeader', 'quarantine'],
          macros: { connect: ['{client_addr}'], envfrom: ['{auth_authen}'] },
          connect: () => undefined,
          envrcpt: () => undefined,
        },
      },
      {
        filter: {
          name: 'b',
          actions: ['addHeader', 'delRcpt'],
          macros: { envfrom: ['{mail_addr}', '{auth_authen}'], eom: ['{msg_id}'] },
          helo: () => undefined,
          unknown: () => undefined,
          data: () => undefined,
        },
      },
    ]).needs;
    assert.deepEqual([...n.hooks].sort(), ['connect', 'data', 'envrcpt', 'helo', 'unknown']);
    assert.deepEqual([...n.actions].sort(), ['addHeader', 'delRcpt', 'quarantine']);
    assert.deepEqual(
      [...n.macros].map(([s, m]) => [s, [...m].sort()]).sort(),
      [
        ['connect', ['{client_addr}']],
        ['envfrom', ['{auth_authen}', '{mail_addr}']],
        ['eom', ['{msg_id}']],
      ],
    );
    // 'b' may add (insert) headers: the index of an insert needs the real header list.
    assert.equal(n.headers, true, 'header edits need the headers');
    assert.equal(n.body, false, 'no eom: no body');
    const plain = new Chain([{ filter: { name: 'p', actions: ['delRcpt'], helo: () => undefined } }]).needs;
    assert.equal(plain.headers, false, 'no eom and no header edits: no headers');
  });

  it('eom without reads → headers and body; reads narrows it; any filter can widen it', () => {
    const needs = (...fs: Filter[]) => new Chain(fs.map((filter) => ({ filter }))).needs;
    const eom = () => undefined;
    let n = needs({ name: 'a', eom });
    assert.deepEqual([n.headers, n.body, n.hooks.has('eom')], [true, true, true]);
    n = needs({ name: 'a', eom, reads: { headers: true, body: false } });
    assert.deepEqual([n.headers, n.body], [true, false]);
    n = needs({ name: 'a', eom, reads: { headers: false } });
    assert.deepEqual([n.headers, n.body], [false, true]);
    n = needs({ name: 'a', eom, reads: { headers: false, body: false } }, { name: 'b', eom, reads: { body: false } });
    assert.deepEqual([n.headers, n.body], [true, false]);
    // `reads` without eom means nothing.
    n = needs({ name: 'a', reads: { headers: true, body: true } });
    assert.deepEqual([n.headers, n.body, n.hooks.has('eom')], [false, false, false]);
  });

  it('defineFilter: only a header hook → headers only; only a body hook → body only; eom → both', () => {
    const needs = (f: Filter) => new Chain([{ filter: f }]).needs;
    let n = needs(defineFilter({ name: 'h', header: () => undefined }));
    assert.deepEqual([n.headers, n.body, n.hooks.has('eom')], [true, false, true]);
    n = needs(defineFilter({ name: 'b', body: () => undefined }));
    assert.deepEqual([n.headers, n.body], [false, true]);
    n = needs(defineFilter({ name: 'e', eoh: () => undefined }));
    assert.deepEqual([n.headers, n.body, n.hooks.has('eom')], [false, false, true]);
    n = needs(defineFilter({ name: 'x', header: () => undefined, eom: () => undefined }));
    assert.deepEqual([n.headers, n.body], [true, true]);
    n = needs(defineFilter({ name: 'y', header: () => undefined, reads: { headers: false, body: true } }));
    assert.deepEqual([n.headers, n.body], [false, true]);
    // Envelope-only classic filter: no eom at all.
    n = needs(defineFilter({ name: 'z', envfrom: () => undefined }));
    assert.deepEqual([n.headers, n.body, n.hooks.has('eom'), n.hooks.has('envfrom')], [false, false, false, true]);
  });
});

describe('ChainRun: envelope phases', () => {
  it('calls filters in order with ctx and arguments, and continues when all continue', () => {
    const calls: string[] = [];
    const mk = (name: string): Filter => ({
      name,
      connect: (ctx, info) => void calls.push(`${name}:connect:${ctx.filter}:${info.address}`),
      helo: (ctx, h) => void calls.push(`${name}:helo:${h}`),
      envfrom: (ctx, f) => void calls.push(`${name}:envfrom:${f.address}`),
      envrcpt: (ctx, r) => void calls.push(`${name}:envrcpt:${r.address}:${r.args.join(',')}`),
      data: () => void calls.push(`${name}:data`),
      unknown: (ctx, c) => void calls.push(`${name}:unknown:${c}`),
    });
    const r = run([{ filter: mk('a') }, { filter: mk('b') }]);
    assert.deepEqual(sync(r.connect(CONN)), { type: 'continue' });
    assert.deepEqual(sync(r.helo('client.example')), { type: 'continue' });
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' });
    assert.deepEqual(sync(r.envrcpt({ address: '<x@example.net>', args: ['NOTIFY=NEVER'] })), { type: 'continue' });
    assert.deepEqual(sync(r.data()), { type: 'continue' });
    assert.deepEqual(sync(r.unknown('XYZZY', false)), { type: 'continue' });
    assert.deepEqual(calls, [
      'a:connect:a:192.0.2.7',
      'b:connect:b:192.0.2.7',
      'a:helo:client.example',
      'b:helo:client.example',
      'a:envfrom:<sender@example.org>',
      'b:envfrom:<sender@example.org>',
      'a:envrcpt:<x@example.net>:NOTIFY=NEVER',
      'b:envrcpt:<x@example.net>:NOTIFY=NEVER',
      'a:data',
      'b:data',
      'a:unknown:XYZZY',
      'b:unknown:XYZZY',
    ]);
  });

  it('stops at the first non-continue verdict', () => {
    for (const v of [{ type: 'reject' }, { type: 'tempfail' }, { type: 'discard' }] as const) {
      const calls: string[] = [];
      const r = run([
        { filter: { name: 'a', envfrom: () => void calls.push('a') } },
        { filter: { name: 'b', envfrom: () => (calls.push('b'), v) } },
        { filter: { name: 'c', envfrom: () => void calls.push('c') } },
      ]);
      assert.deepEqual(sync(r.envfrom(FROM)), v);
      assert.deepEqual(calls, ['a', 'b']);
    }
  });

  it('an explicit continue verdict is the same as returning nothing', () => {
    const calls: string[] = [];
    const r = run([
      { filter: { name: 'a', envfrom: () => (calls.push('a'), { type: 'continue' }) } },
      { filter: { name: 'b', envfrom: () => void calls.push('b') } },
    ]);
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' });
    assert.deepEqual(calls, ['a', 'b']);
  });

  it('RCPT reject/tempfail return that outcome; the next recipient goes through the chain again', () => {
    const seenByB: string[] = [];
    const r = run([
      {
        filter: {
          name: 'a',
          envrcpt: (_c, to) =>
            to.address === '<bad@example.net>'
              ? { type: 'reject', reply: { code: '550', xcode: '5.1.1', text: 'no such user' } }
              : to.address === '<later@example.net>'
                ? { type: 'tempfail' }
                : undefined,
        },
      },
      { filter: { name: 'b', envrcpt: (_c, to) => void seenByB.push(to.address) } },
    ]);
    sync(r.envfrom(FROM));
    assert.deepEqual(sync(r.envrcpt(rcpt('bad@example.net'))), { type: 'reject', reply: '550 5.1.1 no such user' });
    assert.deepEqual(sync(r.envrcpt(rcpt('later@example.net'))), { type: 'tempfail' });
    assert.deepEqual(sync(r.envrcpt(rcpt('good@example.net'))), { type: 'continue' });
    assert.deepEqual(seenByB, ['<good@example.net>']);
  });

  it('discard at RCPT is allowed (it discards the message)', () => {
    const r = run([{ filter: { name: 'a', envrcpt: () => ({ type: 'discard' }) } }]);
    sync(r.envfrom(FROM));
    assert.deepEqual(sync(r.envrcpt(rcpt('x@example.net'))), { type: 'discard' });
  });

  it('a filter that accepts is skipped for the rest of the message, and called again for the next message', async () => {
    const calls: string[] = [];
    const r = run([
      {
        filter: {
          name: 'a',
          envfrom: (ctx) => {
            calls.push('a:envfrom');
            return ctx.connState.n === undefined ? ((ctx.connState.n = 1), { type: 'accept' }) : undefined;
          },
          envrcpt: () => void calls.push('a:envrcpt'),
          data: () => void calls.push('a:data'),
          eom: () => void calls.push('a:eom'),
        },
      },
      {
        filter: {
          name: 'b',
          envfrom: () => void calls.push('b:envfrom'),
          envrcpt: () => void calls.push('b:envrcpt'),
          eom: () => void calls.push('b:eom'),
        },
      },
    ]);
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' }, 'b is still in');
    sync(r.envrcpt(rcpt('x@example.net')));
    sync(r.data());
    const out = await r.eom(message());
    assert.equal(out.type, 'accept');
    await r.endMessage(false);
    assert.deepEqual(calls, ['a:envfrom', 'b:envfrom', 'b:envrcpt', 'b:eom']);

    calls.length = 0;
    sync(r.envfrom(FROM));
    sync(r.envrcpt(rcpt('x@example.net')));
    sync(r.data());
    await r.eom(message());
    assert.deepEqual(calls, ['a:envfrom', 'b:envfrom', 'a:envrcpt', 'b:envrcpt', 'a:data', 'a:eom', 'b:eom']);
  });

  it('envfrom alone (no endMessage in between) starts a new message', () => {
    const calls: string[] = [];
    const r = run([
      { filter: { name: 'a', envfrom: () => ({ type: 'accept' }), envrcpt: () => void calls.push('a') } },
      { filter: { name: 'b', envrcpt: () => void calls.push('b') } },
    ]);
    sync(r.envfrom(FROM));
    sync(r.envrcpt(rcpt('x@example.net')));
    sync(r.envfrom(FROM));
    sync(r.envrcpt(rcpt('x@example.net')));
    assert.deepEqual(calls, ['b', 'b']);
    // a accepts every message at envfrom, so it never sees a recipient.
  });

  it('accept at connect puts the filter out for the whole connection', async () => {
    const calls: string[] = [];
    const r = run([
      {
        filter: {
          name: 'a',
          connect: () => (calls.push('a:connect'), { type: 'accept' }),
          helo: () => void calls.push('a:helo'),
          envfrom: () => void calls.push('a:envfrom'),
          envrcpt: () => void calls.push('a:envrcpt'),
          unknown: () => void calls.push('a:unknown'),
          eom: () => void calls.push('a:eom'),
          abort: () => void calls.push('a:abort'),
          close: () => void calls.push('a:close'),
        },
      },
      { filter: { name: 'b', connect: () => void calls.push('b:connect'), envfrom: () => void calls.push('b:envfrom') } },
    ]);
    assert.deepEqual(sync(r.connect(CONN)), { type: 'continue' });
    sync(r.helo('h'));
    for (let m = 0; m < 2; m++) {
      sync(r.envfrom(FROM));
      sync(r.envrcpt(rcpt('x@example.net')));
      sync(r.unknown('FOO', false));
      await r.eom(message());
      await r.endMessage(true);
    }
    await r.close();
    assert.deepEqual(calls, ['a:connect', 'b:connect', 'b:envfrom', 'b:envfrom', 'a:close']);
  });

  it('accept at helo also puts the filter out for the connection', () => {
    const calls: string[] = [];
    const r = run([
      { filter: { name: 'a', helo: () => ({ type: 'accept' }), envfrom: () => void calls.push('a') } },
      { filter: { name: 'b', envfrom: () => void calls.push('b') } },
    ]);
    sync(r.helo('h'));
    sync(r.envfrom(FROM));
    sync(r.envfrom(FROM));
    assert.deepEqual(calls, ['b', 'b']);
  });

  it('when all filters are out the outcome is accept', () => {
    const acc = (): Verdict => ({ type: 'accept' });
    let r = run([{ filter: { name: 'a', connect: acc } }, { filter: { name: 'b', connect: acc } }]);
    assert.deepEqual(sync(r.connect(CONN)), { type: 'accept' });

    r = run([{ filter: { name: 'a', envfrom: acc } }, { filter: { name: 'b', envfrom: acc } }]);
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'accept' });

    // One out for the connection, the other for the message.
    r = run([{ filter: { name: 'a', connect: acc } }, { filter: { name: 'b', envrcpt: acc } }]);
    sync(r.connect(CONN));
    sync(r.envfrom(FROM));
    assert.deepEqual(sync(r.envrcpt(rcpt('x@example.net'))), { type: 'accept' });
    // Next message: b is back in.
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' });

    // One accepts, the other has no hook but is still in (it may have eom).
    r = run([{ filter: { name: 'a', envfrom: acc } }, { filter: { name: 'b', eom: () => undefined } }]);
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' });
  });

  it('an empty chain continues', () => {
    const r = run([]);
    assert.deepEqual(sync(r.connect(CONN)), { type: 'continue' });
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' });
  });

  it('discard at connect, helo or unknown is a BAD_VERDICT and the failure policy applies', () => {
    for (const phase of ['connect', 'helo', 'unknown'] as const) {
      const records: LogRecord[] = [];
      const calls: string[] = [];
      const hook = () => ({ type: 'discard' }) as const;
      // Default policy: tempfail.
      let r = run([{ filter: { name: 'a', [phase]: hook } }], { log: () => captureLogger(records) });
      const call = (rr: ChainRun) =>
        phase === 'connect' ? rr.connect(CONN) : phase === 'helo' ? rr.helo('h') : rr.unknown('FOO', false);
      assert.deepEqual(sync(call(r)), { type: 'tempfail' }, phase);
      assert.deepEqual(failureCodes(records), ['MILTERD_FILTER_BAD_VERDICT']);
      // Policy continue: the filter is skipped and the chain goes on.
      r = run([
        { filter: { name: 'a', [phase]: hook }, onError: 'continue' },
        { filter: { name: 'b', [phase]: () => void calls.push('b') } },
      ]);
      assert.deepEqual(sync(call(r)), { type: 'continue' }, phase);
      assert.deepEqual(calls, ['b']);
    }
  });

  it('hooks get the session view through ctx: connection, from, rcpts, macros, logger, states', () => {
    const seen: unknown[] = [];
    const r = run(
      [
        {
          filter: {
            name: 'a',
            envrcpt: (ctx) => {
              seen.push(ctx.filter, ctx.connection.hostname, ctx.from?.address, ctx.rcpts.map((x) => x.address));
              seen.push(ctx.getSymbol('i'), ctx.getSymbol('{i}'), typeof ctx.log.info, ctx.signal.aborted);
            },
          },
        },
      ],
      {
        rcpts: () => [rcpt('one@example.net')],
        getSymbol: (n) => (n === 'i' || n === '{i}' ? 'QID123' : undefined),
      },
    );
    sync(r.envfrom(FROM));
    sync(r.envrcpt(rcpt('two@example.net')));
    assert.deepEqual(seen, ['a', 'mail.example.org', '<sender@example.org>', ['<one@example.net>'], 'QID123', 'QID123', 'function', false]);
  });
});

describe('ChainRun: synchronous and asynchronous hooks', () => {
  it('sync hooks return synchronously in every envelope phase (no promise on the hot path)', () => {
    const f: Filter = {
      name: 'a',
      connect: () => undefined,
      helo: () => ({ type: 'continue' }),
      envfrom: () => undefined,
      envrcpt: () => undefined,
      data: () => undefined,
      unknown: () => undefined,
    };
    const r = run([{ filter: f }, { filter: { ...f, name: 'b' } }, { filter: { name: 'no-hooks' } }]);
    for (const o of [r.connect(CONN), r.helo('h'), r.envfrom(FROM), r.envrcpt(rcpt('x@y')), r.data(), r.unknown('X', false)]) {
      assert.equal(isPromise(o), false);
      assert.deepEqual(o, { type: 'continue' });
    }
    // Verdicts and failures of sync hooks are synchronous too.
    const r2 = run([
      { filter: { name: 'a', envfrom: () => ({ type: 'reject' }) } },
    ]);
    assert.deepEqual(sync(r2.envfrom(FROM)), { type: 'reject' });
    const r3 = run([
      {
        filter: {
          name: 'a',
          envfrom: () => {
            throw new Error('boom');
          },
        },
      },
    ]);
    assert.deepEqual(sync(r3.envfrom(FROM)), { type: 'tempfail' });
  });

  it('an async hook makes the outcome a promise; the chain continues after it', async () => {
    const calls: string[] = [];
    const r = run([
      { filter: { name: 'a', envfrom: () => void calls.push('a') } },
      {
        filter: {
          name: 'b',
          envfrom: async () => {
            await sleep(1);
            calls.push('b');
          },
        },
      },
      { filter: { name: 'c', envfrom: () => (calls.push('c'), { type: 'reject', reply: { code: '554' } }) } },
      { filter: { name: 'd', envfrom: () => void calls.push('d') } },
    ]);
    const o = r.envfrom(FROM);
    assert.equal(isPromise(o), true);
    assert.deepEqual(await o, { type: 'reject', reply: '554' });
    assert.deepEqual(calls, ['a', 'b', 'c']);
  });

  it('an async accept puts the filter out like a sync one', async () => {
    const calls: string[] = [];
    const r = run([
      {
        filter: {
          name: 'a',
          envfrom: async () => ({ type: 'accept' }) as const,
          envrcpt: () => void calls.push('a'),
        },
      },
      { filter: { name: 'b', envrcpt: () => void calls.push('b') } },
    ]);
    assert.deepEqual(await r.envfrom(FROM), { type: 'continue' });
    sync(r.envrcpt(rcpt('x@y')));
    assert.deepEqual(calls, ['b']);
  });
});

describe('ChainRun: failure policies', () => {
  type Failure = { name: string; code: string; hook: () => HookResult };
  const failures: Failure[] = [
    {
      name: 'throw',
      code: 'MILTERD_FILTER_THREW',
      hook: () => {
        throw new Error('boom');
      },
    },
    { name: 'rejected promise', code: 'MILTERD_FILTER_THREW', hook: () => Promise.reject(new Error('async boom')) },
    { name: 'timeout', code: 'MILTERD_FILTER_TIMEOUT', hook: () => new Promise<undefined>(() => {}) },
    { name: 'bad verdict object', code: 'MILTERD_FILTER_BAD_VERDICT', hook: () => ({ type: 'maybe' }) as unknown as Verdict },
    { name: 'non-object verdict', code: 'MILTERD_FILTER_BAD_VERDICT', hook: () => 'reject' as unknown as Verdict },
    { name: 'null verdict', code: 'MILTERD_FILTER_BAD_VERDICT', hook: () => null as unknown as Verdict },
    {
      name: '550 with a 4.x.x xcode',
      code: 'MILTERD_FILTER_BAD_REPLY',
      hook: () => ({ type: 'reject', reply: { code: '550', xcode: '4.7.1', text: 'x' } }),
    },
    { name: 'reject with code 451', code: 'MILTERD_FILTER_BAD_REPLY', hook: () => ({ type: 'reject', reply: { code: '451' } }) },
    { name: 'tempfail with code 550', code: 'MILTERD_FILTER_BAD_REPLY', hook: () => ({ type: 'tempfail', reply: { code: '550' } }) },
    {
      name: 'reply text with CRLF',
      code: 'MILTERD_FILTER_BAD_REPLY',
      hook: () => ({ type: 'reject', reply: { code: '550', text: 'a\r\nb' } }),
    },
    { name: 'reply not an object', code: 'MILTERD_FILTER_BAD_REPLY', hook: () => ({ type: 'reject', reply: 'x' }) as unknown as Verdict },
  ];

  const policies = [
    { policy: 'continue', expect: { type: 'continue' }, nextCalled: true },
    { policy: 'accept', expect: { type: 'accept' }, nextCalled: false },
    { policy: 'tempfail', expect: { type: 'tempfail' }, nextCalled: false },
    { policy: 'reject', expect: { type: 'reject' }, nextCalled: false },
    { policy: undefined, expect: { type: 'tempfail' }, nextCalled: false },
  ] as const;

  for (const f of failures) {
    for (const p of policies) {
      it(`${f.name} with policy ${p.policy ?? '(default)'} → ${p.expect.type}`, async () => {
        const records: LogRecord[] = [];
        const calls: string[] = [];
        const r = run(
          [
            { filter: { name: 'bad', envfrom: f.hook }, timeoutMs: 20, ...(p.policy === undefined ? {} : { onError: p.policy }) },
            { filter: { name: 'next', envfrom: () => void calls.push('next') } },
          ],
          { log: () => captureLogger(records) },
        );
        assert.deepEqual(await r.envfrom(FROM), p.expect);
        assert.deepEqual(calls, p.nextCalled ? ['next'] : []);
        assert.deepEqual(failureCodes(records), [f.code]);
      });
    }
  }

  it("policy 'continue' skips the failing filter for the rest of the message, not the next one", async () => {
    const calls: string[] = [];
    let fail = true;
    const r = run([
      {
        filter: {
          name: 'a',
          envfrom: () => {
            calls.push('a:envfrom');
            if (fail) throw new Error('x');
          },
          envrcpt: () => void calls.push('a:envrcpt'),
          eom: () => void calls.push('a:eom'),
        },
        onError: 'continue',
      },
      { filter: { name: 'b', envrcpt: () => void calls.push('b:envrcpt') } },
    ]);
    sync(r.envfrom(FROM));
    sync(r.envrcpt(rcpt('x@y')));
    await r.eom(message());
    await r.endMessage(false);
    fail = false;
    sync(r.envfrom(FROM));
    sync(r.envrcpt(rcpt('x@y')));
    assert.deepEqual(calls, ['a:envfrom', 'b:envrcpt', 'a:envfrom', 'a:envrcpt', 'b:envrcpt']);
  });

  it("policy 'continue' at connect skips the filter for the whole connection", () => {
    const calls: string[] = [];
    const r = run([
      {
        filter: {
          name: 'a',
          connect: () => {
            throw new Error('x');
          },
          helo: () => void calls.push('a:helo'),
          envfrom: () => void calls.push('a:envfrom'),
        },
        onError: 'continue',
      },
      { filter: { name: 'b', envfrom: () => void calls.push('b:envfrom') } },
    ]);
    assert.deepEqual(sync(r.connect(CONN)), { type: 'continue' });
    sync(r.helo('h'));
    sync(r.envfrom(FROM));
    sync(r.envfrom(FROM));
    assert.deepEqual(calls, ['b:envfrom', 'b:envfrom']);
  });

  it("policy 'continue' for the only filter: everyone is out, so the outcome is accept", () => {
    const r = run([
      {
        filter: {
          name: 'a',
          envfrom: () => {
            throw new Error('x');
          },
        },
        onError: 'continue',
      },
    ]);
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'accept' });
  });

  it('the default policy comes from the chain defaults', () => {
    const chain = new Chain(
      [
        {
          filter: {
            name: 'a',
            envfrom: () => {
              throw new Error('x');
            },
          },
        },
      ],
      { ...DEFAULT_CHAIN_DEFAULTS, onError: 'reject' },
    );
    assert.deepEqual(sync(new ChainRun(chain, env()).envfrom(FROM)), { type: 'reject' });
  });

  it('a timed-out hook gets its AbortSignal aborted', async () => {
    let signal: AbortSignal | undefined;
    const r = run([
      {
        filter: {
          name: 'a',
          envfrom: (ctx) => {
            signal = ctx.signal;
            return new Promise<undefined>(() => {});
          },
        },
        timeoutMs: 20,
        onError: 'tempfail',
      },
    ]);
    const t0 = performance.now();
    assert.deepEqual(await r.envfrom(FROM), { type: 'tempfail' });
    assert.ok(performance.now() - t0 < 1000);
    assert.ok(signal !== undefined);
    assert.equal(signal.aborted, true);
    assert.equal((signal.reason as { code?: string }).code, 'MILTERD_FILTER_TIMEOUT');
  });

  it(
    "a timed-out hook that settles later does not clear the next call's AbortSignal",
    async () => {
      let second: AbortSignal | undefined;
      const r = run([
        {
          filter: {
            name: 'a',
            // Times out at 50 ms and settles at 75 ms, while envrcpt is running.
            envfrom: () => sleep(75).then(() => undefined),
            envrcpt: (ctx) => {
              second = ctx.signal;
              return new Promise<undefined>(() => {});
            },
          },
          timeoutMs: 50,
          onError: 'tempfail',
        },
      ]);
      assert.deepEqual(await r.envfrom(FROM), { type: 'tempfail' }); // timed out at 50 ms
      assert.deepEqual(await r.envrcpt(rcpt('x@y')), { type: 'tempfail' }); // 50 ms more; envfrom's promise settled at 75
      assert.ok(second !== undefined);
      assert.equal(second.aborted, true);
    },
  );
});

describe('ChainRun: time budgets', () => {
  it('an exhausted message budget is a failure (MILTERD_FILTER_MESSAGE_BUDGET); the next message starts afresh', () => {
    const records: LogRecord[] = [];
    const r = run(
      [
        {
          filter: {
            name: 'slow',
            envfrom: () => spin(30), // synchronous: not interruptible, but counted
            envrcpt: () => undefined,
          },
          messageBudgetMs: 20,
        },
      ],
      { log: () => captureLogger(records) },
    );
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' });
    assert.deepEqual(sync(r.envrcpt(rcpt('x@y'))), { type: 'tempfail' });
    assert.deepEqual(failureCodes(records), ['MILTERD_FILTER_MESSAGE_BUDGET']);
    // New message: the budget is reset (envfrom spends 30 ms again, but is allowed to start).
    assert.deepEqual(sync(r.envfrom(FROM)), { type: 'continue' });
  });

  it('with policy continue, an exhausted budget skips the filter for the rest of the message', async () => {
    const calls: string[] = [];
    const r = run([
      {
        filter: { name: 'slow', envfrom: () => spin(30), envrcpt: () => void calls.push('slow'), eom: () => void calls.push('slow:eom') },
        messageBudgetMs: 20,
        onError: 'continue',
      },
      { filter: { name: 'b', envrcpt: () => void calls.push('b') } },
    ]);
    sync(r.envfrom(FROM));
    assert.deepEqual(sync(r.envrcpt(rcpt('x@y'))), { type: 'continue' });
    sync(r.envrcpt(rcpt('z@y')));
    await r.eom(message());
    assert.deepEqual(calls, ['b', 'b']);
  });

  it('the remaining message budget caps the per-hook timeout', async () => {
    const records: LogRecord[] = [];
    const r = run(
      [{ filter: { name: 'a', envfrom: () => new Promise<undefined>(() => {}) }, timeoutMs: 10_000, messageBudgetMs: 30 }],
      { log: () => captureLogger(records) },
    );
    const t0 = performance.now();
    assert.deepEqual(await r.envfrom(FROM), { type: 'tempfail' });
    const took = performance.now() - t0;
    assert.ok(took >= 25 && took < 2000, `took ${took} ms`);
    assert.deepEqual(failureCodes(records), ['MILTERD_FILTER_TIMEOUT']);
  });

  it(
    'a filter without a hook for the phase is not failed for an exhausted budget',
    () => {
      const r = run([{ filter: { name: 'slow', envfrom: () => spin(30) }, messageBudgetMs: 20 }]);
      sync(r.envfrom(FROM));
      // 'slow' has no envrcpt hook: nothing is called, nothing can fail.
      assert.deepEqual(sync(r.envrcpt(rcpt('x@y'))), { type: 'continue' });
    },
  );

  it(
    "a timed-out hook that settles during the next message does not eat that message's budget",
    async () => {
      const r = run([
        {
          filter: {
            name: 'a',
            envfrom: (ctx) => (ctx.connState.first === undefined ? ((ctx.connState.first = 1), sleep(150).then(() => undefined)) : undefined),
            envrcpt: () => undefined,
          },
          timeoutMs: 20,
          messageBudgetMs: 100,
          onError: 'reject',
        },
      ]);
      assert.deepEqual(await r.envfrom(FROM), { type: 'reject' }); // message 1: timed out
      await r.endMessage(true);
      assert.deepEqual(await r.envfrom(FROM), { type: 'continue' }); // message 2
      await sleep(200); // message 1's hook settles now
      assert.deepEqual(await r.envrcpt(rcpt('x@y')), { type: 'continue' });
    },
  );
});

describe('ChainRun: reply codes', () => {
  const cases: ReadonlyArray<readonly [Verdict, Outcome]> = [
    [{ type: 'reject', reply: { code: '550', xcode: '5.7.1', text: 'Spam refused' } }, { type: 'reject', reply: '550 5.7.1 Spam refused' }],
    [{ type: 'reject', reply: { code: '554', text: 'go away' } }, { type: 'reject', reply: '554 go away' }],
    [{ type: 'reject', reply: { code: '550' } }, { type: 'reject', reply: '550' }],
    [{ type: 'tempfail', reply: { code: '451', xcode: '4.7.1', text: 'later' } }, { type: 'tempfail', reply: '451 4.7.1 later' }],
    [
      { type: 'tempfail', reply: { code: '452', xcode: '4.3.1', text: ['first line', 'second line', 'last'] } },
      { type: 'tempfail', reply: '452-4.3.1 first line\r\n452-4.3.1 second line\r\n452 4.3.1 last' },
    ],
    [{ type: 'reject', reply: { code: '550', text: ['a', 'b'] } }, { type: 'reject', reply: '550-a\r\n550 b' }],
    [{ type: 'reject', reply: { code: '550', text: ['only'] } }, { type: 'reject', reply: '550 only' }],
    [{ type: 'tempfail' }, { type: 'tempfail' }],
  ];
  for (const [verdict, outcome] of cases) {
    it(`${JSON.stringify(verdict)} → ${JSON.stringify(outcome)}`, async () => {
      const r = run([{ filter: { name: 'a', envrcpt: () => verdict, eom: () => verdict } }]);
      sync(r.envfrom(FROM));
      assert.deepEqual(sync(r.envrcpt(rcpt('x@y'))), outcome);
      assert.deepEqual(await r.eom(message()), outcome);
    });
  }
});

describe('ChainRun: end of message', () => {
  it('each filter sees the headers and body as edited by the ones before it', async () => {
    const seen: unknown[] = [];
    const r = run([
      {
        filter: {
          name: 'one',
          actions: ['addHeader', 'replaceBody'],
          eom: (_ctx, m) => {
            m.addHeader('X-One', 'first');
            m.replaceBody('replaced by one\r\n');
          },
        },
      },
      {
        filter: {
          name: 'two',
          actions: ['addHeader', 'changeHeader'],
          eom: async (_ctx, m) => {
            seen.push(m.headers.map((h) => `${h.name}:${h.value}`));
            seen.push(m.bodySize, Buffer.from(await m.body()).toString('latin1'));
            const chunks: string[] = [];
            for await (const c of m.bodyChunks()) chunks.push(Buffer.from(c).toString('latin1'));
            seen.push(chunks.join(''));
            m.changeHeader('x-one', 1, 'changed by two');
            m.addHeader('X-Two', 'second');
          },
        },
      },
      {
        filter: {
          name: 'three',
          eom: (_ctx, m) => void seen.push(m.headers.map((h) => `${h.name}:${h.value}`)),
        },
      },
    ]);
    const base = message();
    const out = await r.eom(base);
    assert.equal(out.type, 'accept');
    if (out.type !== 'accept') return;
    assert.deepEqual(seen, [
      ['From:a@example.org', 'Subject:hello', 'X-One:first'],
      17,
      'replaced by one\r\n',
      'replaced by one\r\n',
      ['From:a@example.org', 'Subject:hello', 'X-One:changed by two', 'X-Two:second'],
    ]);
    assert.equal(Buffer.from(await out.final.body.read()).toString('latin1'), 'replaced by one\r\n');
    assert.deepEqual(diffToActions(base, out.final, { leadingSpace: false }), [
      { kind: 'addheader', name: 'X-One', value: 'changed by two' },
      { kind: 'addheader', name: 'X-Two', value: 'second' },
    ]);
    // The base snapshot is untouched.
    assert.deepEqual(
      base.headers.map((h) => h.name),
      ['From', 'Subject'],
    );
    assert.equal(Buffer.from(await base.body.read()).toString('latin1'), 'line 1\r\nline 2\r\n');
  });

  it(
    'a filter that scribbles on the buffer from body() does not change what later filters see',
    async () => {
      const seen: string[] = [];
      const out = await run([
        { filter: { name: 'a', eom: async (_c, m) => void (await m.body()).fill(0x58) } },
        { filter: { name: 'b', eom: async (_c, m) => void seen.push(Buffer.from(await m.body()).toString('latin1')) } },
      ]).eom(message({ body: body('original\r\n') }));
      assert.equal(out.type, 'accept');
      assert.deepEqual(seen, ['original\r\n']);
    },
  );

  it('no edits: final is the base state', async () => {
    const base = message();
    const out = await run([{ filter: { name: 'a', eom: () => undefined } }]).eom(base);
    assert.equal(out.type, 'accept');
    if (out.type !== 'accept') return;
    assert.deepEqual(out.final.headers, base.headers);
    assert.equal(out.final.body, base.body);
    assert.deepEqual(out.final.rcpts, base.rcpts);
    assert.equal(out.final.quarantine, undefined);
  });

  it('envelope edits and quarantine are carried to the final state', async () => {
    const base = message();
    const out = await run([
      {
        filter: {
          name: 'a',
          actions: ['addRcpt', 'delRcpt', 'changeFrom', 'quarantine'],
          eom: (_c, m) => {
            m.delRcpt('r@example.net');
            m.addRcpt('<new@example.net>', 'NOTIFY=NEVER');
            m.changeFrom('<bounce@example.org>');
            m.quarantine('suspicious');
          },
        },
      },
    ]).eom(base);
    assert.equal(out.type, 'accept');
    if (out.type !== 'accept') return;
    assert.deepEqual(diffToActions(base, out.final, { leadingSpace: false }), [
      { kind: 'chgfrom', from: '<bounce@example.org>' },
      { kind: 'delrcpt', rcpt: '<r@example.net>' },
      { kind: 'addrcpt', rcpt: '<new@example.net>', args: 'NOTIFY=NEVER' },
      { kind: 'quarantine', reason: 'suspicious' },
    ]);
  });

  it('a filter failing in eom with policy continue has its edits dropped; later filters still run', async () => {
    for (const failing of [
      (_c: FilterContext, m: { addHeader(n: string, v: string): void }) => {
        m.addHeader('X-Failed', '1');
        throw new Error('boom');
      },
      async (_c: FilterContext, m: { addHeader(n: string, v: string): void }) => {
        m.addHeader('X-Failed', '1');
        throw new Error('async boom');
      },
      (_c: FilterContext, m: { addHeader(n: string, v: string): void }) => {
        m.addHeader('X-Failed', '1');
        return { type: 'reject', reply: { code: '451' } } as const; // bad reply
      },
    ]) {
      const seen: string[][] = [];
      const out = await run([
        { filter: { name: 'bad', actions: ['addHeader'], eom: failing }, onError: 'continue' },
        {
          filter: {
            name: 'good',
            actions: ['addHeader'],
            eom: (_c, m) => {
              seen.push(m.headers.map((h) => h.name));
              m.addHeader('X-Good', '1');
            },
          },
        },
      ]).eom(message());
      assert.equal(out.type, 'accept');
      if (out.type !== 'accept') return;
      assert.deepEqual(seen, [['From', 'Subject']]);
      assert.deepEqual(
        out.final.headers.map((h) => h.name),
        ['From', 'Subject', 'X-Good'],
      );
    }
  });

  it('a modification error (undeclared action) is a filter failure', async () => {
    const records: LogRecord[] = [];
    const out = await run(
      [{ filter: { name: 'a', eom: (_c, m) => m.addHeader('X', 'y') } }],
      { log: () => captureLogger(records) },
    ).eom(message());
    assert.deepEqual(out, { type: 'tempfail' });
    assert.deepEqual(failureCodes(records), ['MILTERD_FILTER_BAD_MODIFICATION']);
  });

  it('an action the MTA did not grant is a filter failure (MILTERD_FILTER_ACTION_NOT_NEGOTIATED)', async () => {
    const records: LogRecord[] = [];
    const out = await run(
      [{ filter: { name: 'a', actions: ['quarantine'], eom: (_c, m) => m.quarantine('x') }, onError: 'reject' }],
      { log: () => captureLogger(records), negotiated: new Set(['addHeader']) },
    ).eom(message());
    assert.deepEqual(out, { type: 'reject' });
    assert.deepEqual(failureCodes(records), ['MILTERD_FILTER_ACTION_NOT_NEGOTIATED']);
  });

  it("policy accept at eom: accept with the state the earlier filters left, later filters skipped", async () => {
    const calls: string[] = [];
    const out = await run([
      { filter: { name: 'a', actions: ['addHeader'], eom: (_c, m) => m.addHeader('X-A', '1') } },
      {
        filter: {
          name: 'b',
          actions: ['addHeader'],
          eom: (_c, m) => {
            m.addHeader('X-B', '1');
            throw new Error('x');
          },
        },
        onError: 'accept',
      },
      { filter: { name: 'c', eom: () => void calls.push('c') } },
    ]).eom(message());
    assert.equal(out.type, 'accept');
    if (out.type !== 'accept') return;
    assert.deepEqual(
      out.final.headers.map((h) => h.name),
      ['From', 'Subject', 'X-A'],
    );
    assert.deepEqual(calls, []);
  });

  it('reject, tempfail and discard at eom stop the chain', async () => {
    for (const [v, expect] of [
      [{ type: 'reject', reply: { code: '550', xcode: '5.7.1', text: 'spam' } }, { type: 'reject', reply: '550 5.7.1 spam' }],
      [{ type: 'tempfail' }, { type: 'tempfail' }],
      [{ type: 'discard' }, { type: 'discard' }],
    ] as const) {
      const calls: string[] = [];
      const out = await run([
        { filter: { name: 'a', eom: () => void calls.push('a') } },
        { filter: { name: 'b', actions: ['addHeader'], eom: (_c, m) => (calls.push('b'), m.addHeader('X', '1'), v) } },
        { filter: { name: 'c', eom: () => void calls.push('c') } },
      ]).eom(message());
      assert.deepEqual(out, expect);
      assert.deepEqual(calls, ['a', 'b']);
    }
  });

  it('accept at eom keeps the edits and lets later filters run', async () => {
    const calls: string[] = [];
    const out = await run([
      { filter: { name: 'a', actions: ['addHeader'], eom: (_c, m) => (m.addHeader('X-A', '1'), { type: 'accept' }) } },
      { filter: { name: 'b', eom: (_c, m) => void calls.push(m.headers.map((h) => h.name).join(',')) } },
    ]).eom(message());
    assert.equal(out.type, 'accept');
    if (out.type !== 'accept') return;
    assert.deepEqual(calls, ['From,Subject,X-A']);
    assert.deepEqual(
      out.final.headers.map((h) => h.name),
      ['From', 'Subject', 'X-A'],
    );
  });

  it('a timed-out eom has its late edits refused and dropped', async () => {
    let late: unknown;
    const out = await run([
      {
        filter: {
          name: 'a',
          actions: ['addHeader'],
          eom: async (_c, m) => {
            await sleep(60);
            try {
              m.addHeader('X-Late', '1');
            } catch (err) {
              late = err;
            }
          },
        },
        timeoutMs: 20,
        onError: 'continue',
      },
    ]).eom(message());
    assert.equal(out.type, 'accept');
    if (out.type !== 'accept') return;
    assert.deepEqual(
      out.final.headers.map((h) => h.name),
      ['From', 'Subject'],
    );
    await sleep(80);
    assert.equal((late as { code?: string } | undefined)?.code, 'MILTERD_FILTER_BAD_MODIFICATION');
  });

  it(
    'body chunks handed to a later filter are at most 64 KiB after an earlier filter replaced the body',
    async () => {
      const sizes: number[] = [];
      const big = Buffer.alloc(200_000, 0x61);
      const out = await run([
        { filter: { name: 'a', actions: ['replaceBody'], eom: (_c, m) => m.replaceBody(big) } },
        defineFilterEntry('b', (_c, chunk) => void sizes.push(chunk.length)),
      ]).eom(message());
      assert.equal(out.type, 'accept');
      assert.equal(
        sizes.reduce((a, b) => a + b, 0),
        200_000,
      );
      for (const s of sizes) assert.ok(s <= 65536, `chunk of ${s} bytes`);
    },
  );
});

/** Spill files of this process under `dirs` (in their milterd-* folders). */
async function ownSpillFiles(...dirs: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const dir of dirs) {
    for (const d of await readdir(dir).catch(() => [] as string[])) {
      if (!d.startsWith('milterd-')) continue;
      for (const f of await readdir(join(dir, d)).catch(() => [] as string[])) {
        if (f.startsWith(`body-${process.pid}-`)) out.push(join(dir, d, f));
      }
    }
  }
  return out;
}

describe('ChainRun: replaced bodies are cleaned up', () => {
  const big = Buffer.alloc(300_000, 0x62);
  // One folder for the whole group: content.ts keeps the first spill folder for the process.
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'milterd-chain-test-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const leftOver = async (before: readonly string[]): Promise<string[]> =>
    (await ownSpillFiles(dir, tmpdir())).filter((f) => !before.includes(f));

  it('a spilled replaced body is really spilled (so the checks below can see a file)', async () => {
    const seen: string[] = [];
    const before = await ownSpillFiles(dir, tmpdir());
    const out = await run([{ filter: { name: 'a', actions: ['replaceBody'], eom: (_c, m) => m.replaceBody(big) } }], {
      bodyStore: { memoryLimit: 1024, tmpDir: dir },
    }).eom(message());
    assert.equal(out.type, 'accept');
    if (out.type !== 'accept') return;
    assert.equal(out.final.body.spilled, true);
    assert.equal(out.final.body.size, big.length);
    assert.ok(Buffer.from(await out.final.body.read()).equals(big));
    seen.push(...(await leftOver(before)));
    assert.equal(seen.length, 1);
    await out.final.body.dispose();
    assert.deepEqual(await leftOver(before), []);
  });

  it(
    'a replaced body that a later filter replaces again is disposed (no spill file left)',
    async () => {
      const before = await ownSpillFiles(dir, tmpdir());
      const out = await run(
        [
          { filter: { name: 'a', actions: ['replaceBody'], eom: (_c, m) => m.replaceBody(big) } },
          { filter: { name: 'b', actions: ['replaceBody'], eom: (_c, m) => m.replaceBody('small\r\n') } },
        ],
        { bodyStore: { memoryLimit: 1024, tmpDir: dir } },
      ).eom(message());
      assert.equal(out.type, 'accept');
      if (out.type !== 'accept') return;
      assert.equal(Buffer.from(await out.final.body.read()).toString('latin1'), 'small\r\n');
      await out.final.body.dispose(); // what the session does with the final body
      assert.deepEqual(await leftOver(before), []);
    },
  );

  it(
    'a replaced body is disposed when a later filter rejects the message',
    async () => {
      const before = await ownSpillFiles(dir, tmpdir());
      const out = await run(
        [
          { filter: { name: 'a', actions: ['replaceBody'], eom: (_c, m) => m.replaceBody(big) } },
          { filter: { name: 'b', eom: () => ({ type: 'reject' }) } },
        ],
        { bodyStore: { memoryLimit: 1024, tmpDir: dir } },
      ).eom(message());
      assert.deepEqual(out, { type: 'reject' });
      assert.deepEqual(await leftOver(before), []);
    },
  );
});

function defineFilterEntry(name: string, body: (ctx: FilterContext, chunk: Uint8Array) => HookResult): ChainEntry {
  return { filter: defineFilter({ name, body }) };
}

describe('defineFilter replay', () => {
  it('replays header, eoh, body hooks in order, then eom', async () => {
    const events: string[] = [];
    const f = defineFilter({
      name: 'classic',
      header: (ctx, name, value, raw) => void events.push(`header ${ctx.filter} ${name}=${JSON.stringify(value)} raw=${JSON.stringify(raw)}`),
      eoh: () => void events.push('eoh'),
      body: (_c, chunk) => void events.push(`body ${Buffer.from(chunk).toString('latin1')}`),
      eom: (_c, m) => void events.push(`eom ${m.bodySize}`),
    });
    const out = await run([{ filter: f }]).eom(
      message({
        headers: [
          { name: 'Subject', value: 'hi', raw: ' hi', orig: 0 },
          { name: 'X-Tight', value: 'v', raw: 'v', orig: 1 },
        ],
        body: body('AAA', 'BBB', 'CC'),
      }),
    );
    assert.equal(out.type, 'accept');
    assert.deepEqual(events, [
      'header classic Subject="hi" raw=" hi"',
      'header classic X-Tight="v" raw="v"',
      'eoh',
      'body AAA',
      'body BBB',
      'body CC',
      'eom 8',
    ]);
  });

  it("a body 'skip' stops the body replay; eom still runs", async () => {
    const events: string[] = [];
    const f = defineFilter({
      name: 'classic',
      body: (_c, chunk) => {
        events.push(`body ${Buffer.from(chunk).toString('latin1')}`);
        return { type: 'skip' };
      },
      eom: () => void events.push('eom'),
    });
    const out = await run([{ filter: f }]).eom(message({ body: body('AAA', 'BBB') }));
    assert.equal(out.type, 'accept');
    assert.deepEqual(events, ['body AAA', 'eom']);
  });

  it('a header-level reject ends the filter with that reject; eoh, body and eom are not called', async () => {
    const events: string[] = [];
    const f = defineFilter({
      name: 'classic',
      header: (_c, name) => {
        events.push(`header ${name}`);
        return name === 'Subject' ? { type: 'reject', reply: { code: '550', xcode: '5.7.0', text: 'bad subject' } } : undefined;
      },
      eoh: () => void events.push('eoh'),
      body: () => void events.push('body'),
      eom: () => void events.push('eom'),
    });
    const calls: string[] = [];
    const out = await run([{ filter: f }, { filter: { name: 'after', eom: () => void calls.push('after') } }]).eom(
      message({
        headers: headers([
          ['From', 'a'],
          ['Subject', 's'],
          ['To', 't'],
        ]),
      }),
    );
    assert.deepEqual(out, { type: 'reject', reply: '550 5.7.0 bad subject' });
    assert.deepEqual(events, ['header From', 'header Subject']);
    assert.deepEqual(calls, []);
  });

  it('eoh and body verdicts also end the filter', async () => {
    let out = await run([{ filter: defineFilter({ name: 'e', eoh: () => ({ type: 'discard' }), eom: () => assert.fail('eom') }) }]).eom(message());
    assert.deepEqual(out, { type: 'discard' });
    out = await run([{ filter: defineFilter({ name: 'b', body: () => ({ type: 'tempfail' }), eom: () => assert.fail('eom') }) }]).eom(message());
    assert.deepEqual(out, { type: 'tempfail' });
  });

  it('a body accept ends the filter with accept (its later hooks are not called)', async () => {
    const events: string[] = [];
    const out = await run([
      {
        filter: defineFilter({
          name: 'b',
          body: () => (events.push('body'), { type: 'accept' }),
          eom: () => void events.push('eom'),
        }),
      },
    ]).eom(message({ body: body('A', 'B') }));
    assert.equal(out.type, 'accept');
    assert.deepEqual(events, ['body']);
  });

  it('async classic hooks work and the replay sees the edits of earlier filters', async () => {
    const events: string[] = [];
    const out = await run([
      { filter: { name: 'first', actions: ['addHeader'], eom: (_c, m) => m.addHeader('X-First', 'yes') } },
      {
        filter: defineFilter({
          name: 'classic',
          header: async (_c, name, value) => {
            await sleep(1);
            events.push(`${name}=${value}`);
          },
        }),
      },
    ]).eom(message());
    assert.equal(out.type, 'accept');
    assert.deepEqual(events, ['From=a@example.org', 'Subject=hello', 'X-First=yes']);
  });

  it('a filter with only eom (or no content hooks) passes through unchanged', () => {
    const eom = () => undefined;
    const f = defineFilter({ name: 'x', eom, actions: ['addHeader'] });
    assert.equal(f.eom, eom);
    assert.equal(f.reads, undefined);
    assert.deepEqual(f.actions, ['addHeader']);
    const g = defineFilter({ name: 'y' });
    assert.equal('eom' in g, false);
  });
});

describe('ChainRun: abort, endMessage, close', () => {
  it('endMessage(true) calls abort hooks (not of filters out for the connection) and gives every filter a fresh msgState', async () => {
    const events: string[] = [];
    const states: Array<Record<string, unknown>> = [];
    const conns: Array<Record<string, unknown>> = [];
    const mk = (name: string, extra: Partial<Filter> = {}): Filter => ({
      name,
      envfrom: (ctx) => {
        ctx.msgState.seen = name;
        ctx.connState.count = ((ctx.connState.count as number | undefined) ?? 0) + 1;
      },
      data: (ctx) => {
        states.push(ctx.msgState);
        conns.push(ctx.connState);
      },
      abort: (ctx) => void events.push(`abort ${name} ${String(ctx.msgState.seen)}`),
      ...extra,
    });
    const r = run([
      { filter: mk('a') },
      { filter: mk('out', { connect: () => ({ type: 'accept' }) }) },
      { filter: mk('c', { envrcpt: () => ({ type: 'accept' }) }) }, // out for the message only
    ]);
    sync(r.connect(CONN));
    sync(r.envfrom(FROM));
    sync(r.envrcpt(rcpt('x@y')));
    await r.endMessage(true);
    assert.deepEqual(events, ['abort a a', 'abort c c']);
    sync(r.data()); // 'out' is out, 'a' and 'c' report their state
    assert.deepEqual(states, [{}, {}]);
    assert.deepEqual(conns, [{ count: 1 }, { count: 1 }]);
  });

  it('endMessage(false) calls no abort hook but still resets msgState', async () => {
    const events: string[] = [];
    let state: Record<string, unknown> | undefined;
    const r = run([
      {
        filter: {
          name: 'a',
          envfrom: (ctx) => void (ctx.msgState.x = 1),
          data: (ctx) => void (state = ctx.msgState),
          abort: () => void events.push('abort'),
        },
      },
    ]);
    sync(r.envfrom(FROM));
    await r.endMessage(false);
    sync(r.data());
    assert.deepEqual(events, []);
    assert.deepEqual(state, {});
  });

  it('abort hook failures are swallowed and the other filters are still told', async () => {
    const events: string[] = [];
    const r = run([
      {
        filter: {
          name: 'a',
          abort: () => {
            throw new Error('abort boom');
          },
        },
      },
      { filter: { name: 'b', abort: async () => Promise.reject(new Error('async')) } },
      { filter: { name: 'c', abort: () => void events.push('c') } },
    ]);
    await r.endMessage(true);
    assert.deepEqual(events, ['c']);
  });

  it('close() calls every close hook in order and swallows their errors', async () => {
    const records: LogRecord[] = [];
    const events: string[] = [];
    const r = run(
      [
        {
          filter: {
            name: 'a',
            close: () => {
              events.push('a');
              throw new Error('sync close boom');
            },
          },
        },
        {
          filter: {
            name: 'b',
            close: async () => {
              events.push('b');
              throw new Error('async close boom');
            },
          },
        },
        { filter: { name: 'c', close: async (ctx) => void events.push(`c ${ctx.filter}`) } },
        { filter: { name: 'd' } },
      ],
      { log: () => captureLogger(records) },
    );
    assert.equal(await r.close(), undefined);
    assert.deepEqual(events, ['a', 'b', 'c c']);
    assert.deepEqual(failureCodes(records), ['MILTERD_FILTER_THREW', 'MILTERD_FILTER_THREW']);
  });

  it('a close hook that never settles is cut off after timeoutMs', async () => {
    const events: string[] = [];
    const r = run([
      { filter: { name: 'a', close: () => new Promise<void>(() => {}) }, timeoutMs: 20 },
      { filter: { name: 'b', close: () => void events.push('b') } },
    ]);
    const t0 = performance.now();
    await r.close();
    assert.ok(performance.now() - t0 < 1000);
    assert.deepEqual(events, ['b']);
  });
});
