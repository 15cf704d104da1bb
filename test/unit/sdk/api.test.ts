/**
 * The public API: its types (checked by `npm run typecheck`, which compiles this file) and the
 * version the runtime reports.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as sdk from '../../../sdk/src/index.ts';
import { definePlugin, verdict, SDK_VERSION, type EomMessage, type Plugin, type PluginContext } from '../../../sdk/src/index.ts';

test('SDK_VERSION is the package version', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../../sdk/package.json', import.meta.url), 'utf8')) as { version: string };
  assert.equal(SDK_VERSION, pkg.version);
});

test('the module exports the public API and the host entry points, nothing else', () => {
  assert.deepEqual(Object.keys(sdk).sort(), [
    'SDK_VERSION',
    '__describe',
    '__dispatch',
    '__register',
    'definePlugin',
    'verdict',
  ]);
  assert.ok(Object.isFrozen(verdict) && Object.isFrozen(verdict.accept()));
});

// Compile-time checks: never run, only type-checked.
export function typeChecks(): void {
  // State types are inferred from the factories.
  definePlugin({
    state: { conn: () => ({ messages: 0 }), msg: () => ({ score: 0, tags: [] as string[] }) },
    envfrom(ctx) {
      ctx.conn.messages++;
      ctx.msg.tags.push('x');
      // @ts-expect-error: not in the state
      ctx.msg.nope = 1;
    },
    async eom(ctx, message) {
      message.addHeader('X-Score', String(ctx.msg.score));
      return ctx.msg.score > 5 ? verdict.quarantine('spam') : undefined;
    },
  });
  // Without factories the state is an open record.
  definePlugin({
    connect(ctx) {
      ctx.conn.anything = 1;
    },
  });
  definePlugin({
    // @ts-expect-error: skip is for the body hook only
    envrcpt: () => verdict.skip(),
  });
  definePlugin({
    // @ts-expect-error: quarantine only at end of message
    connect: () => verdict.quarantine('x'),
  });
  definePlugin({ body: () => verdict.skip(), header: () => verdict.quarantine('x') });
  definePlugin({
    // @ts-expect-error: abort and close give no verdict
    abort: () => verdict.accept(),
  });
  // @ts-expect-error: hooks are named exactly
  definePlugin({ envRcpt() {} });
  // @ts-expect-error: a reply code is a string
  verdict.reject({ code: 550 });
  const m = {} as EomMessage;
  // @ts-expect-error: (name, value, index), not libmilter's (index, name, value)
  m.insertHeader(0, 'X-A', 'b');
  m.changeHeader('Subject', 'x', 2);
  m.addRcpt('<a@example.org>', ['NOTIFY=NEVER']);
  const ctx = {} as PluginContext;
  void ctx.kv.set('k', 'v', { ttlMs: 1000 });
  // @ts-expect-error: kv values are strings
  void ctx.kv.set('k', 1);
  const p: Plugin = { eom() {} };
  void p;
}
