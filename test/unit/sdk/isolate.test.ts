/**
 * The built single-file runtime in a real isolated-vm isolate, loaded the way milterd loads it:
 * host References on hidden globals, the SDK module evaluated first, then a bootstrap module
 * importing the plugin and registering it, then calls copied in and results copied out.
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
  await g.set('__milterd_log', new ivm.Reference((...args: unknown[]) => void logged.push(args)));
  await g.set('__milterd_clock', new ivm.Reference(() => 1_700_000_000_000));
  await g.set(
    '__milterd_kv',
    new ivm.Reference(async (op: string, key: string, by: number) => {
      // Failures are resolved as data, never rejected (see HostFailure in sdk/src/runtime.ts).
      if (key === 'down') return { error: { code: 'MILTERD_PLUGIN_KV', message: 'store unreachable' } };
      if (op !== 'incr') return null;
      const n = (counters.get(key) ?? 0) + by;
      counters.set(key, n);
      return n;
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
    protocol: 1,
    sdkVersion: '1.0.0',
    hooks: ['header', 'eom'],
  });

  const dispatchRef = await sdk.namespace.get('__dispatch', { reference: true });
  const dispatch = async (call: WireCall): Promise<WireResult> =>
    (await dispatchRef.apply(undefined, [call], {
      arguments: { copy: true },
      result: { promise: true, copy: true },
      timeout: 1000,
    })) as WireResult;

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
