/**
 * The built single-file runtime in a real isolated-vm isolate, loaded the way milterd loads it:
 * host References on hidden globals, the SDK module evaluated first, then a bootstrap module
 * importing the plugin and registering it; then calls entered synchronously (`__start`), the
 * outcome reported through `done`, and asynchronous host services answered by ticket through
 * `__deliver` (as src/sandbox/worker.ts does).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ivm from 'isolated-vm';
import { buildRuntime } from '../../../sdk/scripts/build.ts';
import type { WireCall, WireResult } from '../../../sdk/src/protocol.ts';
import { eomCall } from './helpers.ts';

const PLUGIN = `
import { definePlugin, verdict } from '@milterd/sdk';

export const leaked = [typeof globalThis.__milterd_kv, typeof globalThis.__milterd_log, typeof globalThis.__milterd_clock];

export default definePlugin({
  state: { msg: () => ({ subject: '' }) },
  header(ctx, h) {
    if (h.name.toLowerCase() === 'subject') ctx.msg.subject = h.value;
  },
  async eom(ctx, message) {
    const seen = await ctx.kv.incr('seen:' + ctx.envelope.from.address, { ttlMs: 60000 });
    ctx.log.info('eom', { seen, leaked });
    message.addHeader('X-Seen', String(seen) + ' at ' + ctx.clock.now());
    message.changeHeader('Subject', '[ok] ' + ctx.msg.subject);
    if (message.bodyText().includes('quarantine me')) return verdict.quarantine('asked to');
    try {
      await ctx.kv.get('down');
    } catch (err) {
      message.addHeader('X-Kv-Error', err.code + ' ' + err.message + ' ' + (err instanceof Error));
    }
    if (ctx.getSymbol('{i}') === 'QID1') return verdict.reject({ code: '550', xcode: '5.7.1', text: ['no', 'thanks'] });
  },
});
`;

// The SDK is evaluated on its own before this runs, so the import order here does not matter.
const BOOTSTRAP = `
import { __register } from '@milterd/sdk';
import plugin from 'plugin';
__register(plugin);
`;

test('the built runtime runs a plugin in an isolate: eom replay, mods, host services, hidden globals', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-sdk-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = await buildRuntime(join(dir, 'index.js'));
  const sdkSource = await readFile(file, 'utf8');
  assert.doesNotMatch(sdkSource, /^\s*import[\s{*]/m, 'the runtime bundle imports nothing');

  const isolate = new ivm.Isolate({ memoryLimit: 32 });
  t.after(() => isolate.dispose());
  const context = await isolate.createContext();
  const logged: unknown[][] = [];
  const counters = new Map<string, number>();
  const g = context.global;
  const outcomes = new Map<number, { ok: boolean; value: unknown }>();
  let deliverRef: ivm.Reference | undefined;
  await g.set('__milterd_done', new ivm.Reference((id: number, ok: boolean, value: unknown) => void outcomes.set(id, { ok, value })));
  await g.set('__milterd_log', new ivm.Reference((...args: unknown[]) => void logged.push(args)));
  await g.set('__milterd_clock', new ivm.Reference(() => 1_700_000_000_000));
  await g.set(
    '__milterd_kv',
    new ivm.Reference((ticket: number, op: string, key: string, by: number) => {
      // Failures are answered as data, never thrown (see HostFailure in sdk/src/runtime.ts).
      let value: unknown = null;
      if (key === 'down') value = { error: { code: 'MILTERD_PLUGIN_KV', message: 'store unreachable' } };
      else if (op === 'incr') {
        const n = (counters.get(key) ?? 0) + by;
        counters.set(key, n);
        value = n;
      }
      // Answered later, in an entry of its own, as the sandbox does when the store replies.
      setImmediate(() => deliverRef!.applySync(undefined, [ticket, value], { arguments: { copy: true }, timeout: 1000 }));
    }),
  );

  const refuse = (specifier: string): never => {
    throw new Error(`unexpected import ${specifier}`);
  };
  // The SDK first, alone: it captures and deletes the globals before any plugin code runs.
  const sdk = await isolate.compileModule(sdkSource, { filename: 'file:///milterd/sdk.js' });
  await sdk.instantiate(context, refuse);
  await sdk.evaluate();
  const plugin = await isolate.compileModule(PLUGIN, { filename: 'file:///plugin/index.js' });
  const bootstrap = await isolate.compileModule(BOOTSTRAP, { filename: 'file:///milterd/bootstrap.js' });
  await bootstrap.instantiate(context, (specifier) => (specifier === '@milterd/sdk' ? sdk : specifier === 'plugin' ? plugin : refuse(specifier)));
  await bootstrap.evaluate();

  const describe = await sdk.namespace.get('__describe', { reference: true });
  assert.deepEqual(await describe.apply(undefined, [], { result: { copy: true } }), {
    protocol: 2,
    sdkVersion: '1.0.0',
    hooks: ['header', 'eom'],
  });

  const startRef = await sdk.namespace.get('__start', { reference: true });
  deliverRef = await sdk.namespace.get('__deliver', { reference: true });
  let ids = 0;
  const dispatch = async (call: WireCall): Promise<WireResult> => {
    const id = ++ids;
    startRef.applySync(undefined, [id, call], { arguments: { copy: true }, timeout: 1000 });
    // This plugin awaits kv, so the outcome comes during a later __deliver entry.
    while (!outcomes.has(id)) await new Promise((r) => setImmediate(r));
    const { ok, value } = outcomes.get(id)!;
    if (!ok) throw new Error((value as { message: string }).message);
    return value as WireResult;
  };

  const first = await dispatch(eomCall({ actions: ['addHeader', 'changeHeader', 'quarantine'] }));
  assert.deepEqual(first, {
    verdict: { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: ['no', 'thanks'] } },
    mods: [
      { op: 'addHeader', name: 'X-Seen', value: '1 at 1700000000000' },
      { op: 'changeHeader', name: 'Subject', index: 1, value: '[ok] hi' },
      { op: 'addHeader', name: 'X-Kv-Error', value: 'MILTERD_PLUGIN_KV kv.get: store unreachable true' },
    ],
  });
  // The plugin's top-level code found no host globals (it logs what it saw).
  assert.deepEqual(logged, [['info', 'eom', { seen: 1, leaked: ['undefined', 'undefined', 'undefined'] }]]);

  const second = await dispatch(eomCall({ msg: 2, body: 'please quarantine me\r\n', actions: ['addHeader', 'changeHeader', 'quarantine'] }));
  assert.deepEqual(second.verdict, { type: 'continue' });
  assert.deepEqual(second.mods?.at(-1), { op: 'quarantine', reason: 'asked to' });
  assert.equal(counters.get('seen:<alice@example.net>'), 2);

  // A modification the call does not allow: the code crosses the boundary in the message.
  await assert.rejects(dispatch(eomCall({ msg: 3, actions: ['changeHeader'] })), {
    message: /^\[MILTERD_FILTER_BAD_MODIFICATION\] addHeader needs the "addHeader" action/,
  });
});
