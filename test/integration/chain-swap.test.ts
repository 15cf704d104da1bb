/**
 * Swapping the chain under open connections (the mechanism behind hot reload): a message in
 * progress finishes on the chain it started with, the next message moves to the new one, and
 * the old chain is retired only when nobody uses it any more.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defineFilter } from '../../src/chain/define.ts';
import type { Filter } from '../../src/chain/filter.ts';
import { startServer } from '../support/server.ts';
import type { MtaClient } from '../support/mta-client.ts';

const stamp = (value: string, gate?: Promise<void>): Filter =>
  defineFilter({
    name: 'stamp',
    actions: ['addHeader'],
    async eom(_ctx, m) {
      await gate;
      m.addHeader('X-Version', value);
    },
  });

async function open(c: MtaClient): Promise<void> {
  await c.negotiate();
  await c.connect();
  await c.helo('h');
}

const versionOf = (r: Awaited<ReturnType<MtaClient['runMessage']>>): string | undefined =>
  r.eom?.modifications.find((m) => m.kind === 'addheader' && m.name === 'X-Version')?.kind === 'addheader'
    ? (r.eom!.modifications.find((m) => m.kind === 'addheader' && m.name === 'X-Version') as { value: string }).value.trim()
    : undefined;

test('a message in progress finishes on its chain; the next one and new connections use the new chain; the old is retired after', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const s = await startServer([{ filter: stamp('A', gate) }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c);
  const inProgress = c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' });
  await new Promise((r) => setTimeout(r, 50));

  let retired = 0;
  s.server.setChain([{ filter: stamp('B') }], () => retired++);
  assert.equal(s.server.draining, 1);

  const fresh = await s.connect();
  await open(fresh);
  assert.equal(versionOf(await fresh.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' })), 'B');

  release();
  assert.equal(versionOf(await inProgress), 'A', 'the message in progress kept its chain');
  assert.equal(retired, 0, 'still held by the open connection until its next message');
  assert.equal(versionOf(await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' })), 'B');
  assert.equal(retired, 1);
  assert.equal(s.server.draining, 0);
  await c.close();
  await fresh.close();
});

test('a new chain that does not fit what a connection negotiated waits for that connection to end', async (t) => {
  const s = await startServer([{ filter: stamp('A') }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await open(c); // negotiated with no RCPT hook: NR_RCPT
  let retired = 0;
  // B needs answers at RCPT, which this connection told the MTA it would not give.
  const b = defineFilter({ name: 'b', actions: ['addHeader'], envrcpt: () => undefined, eom: (_ctx, m) => m.addHeader('X-Version', 'B') });
  s.server.setChain([{ filter: b }], () => retired++);
  assert.equal(versionOf(await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' })), 'A');
  assert.equal(retired, 0);
  await c.quit();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(retired, 1, 'retired when the connection ended');
  const fresh = await s.connect();
  await open(fresh);
  assert.equal(versionOf(await fresh.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], body: 'x' })), 'B');
  await fresh.close();
});
