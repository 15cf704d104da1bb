/** Shadow (evaluation) mode: a filter runs, its verdicts and edits are logged and counted, never applied. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defineFilter } from '../../src/chain/define.ts';
import { startServer } from '../support/server.ts';

test('a shadow filter that would reject and edit changes nothing; what it would do is logged and counted', async (t) => {
  const strict = defineFilter({
    name: 'strict',
    actions: ['addHeader', 'changeHeader'],
    envrcpt: (_ctx, r) => (r.address.includes('spam') ? { type: 'reject', reply: { code: '550', text: 'would block' } } : undefined),
    eom(_ctx, m) {
      m.addHeader('X-Strict', 'seen');
      m.changeHeader('Subject', 1, '[SPAM] hi');
      return { type: 'reject' };
    },
  });
  const stamp = defineFilter({ name: 'stamp', actions: ['addHeader'], eom: (_ctx, m) => m.addHeader('X-Stamp', 'yes') });
  const s = await startServer([{ filter: strict, shadow: true }, { filter: stamp }]);
  t.after(() => s.stop());
  const c = await s.connect();
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  const r = await c.runMessage({ from: '<a@b>', rcpts: ['<spam@x>', '<ok@x>'], headers: [['Subject', ' hi']], body: 'x' });
  assert.deepEqual(r.rcpts, [{ kind: 'continue' }, { kind: 'continue' }], 'the shadow reject was not applied');
  assert.equal(r.eom?.verdict.kind, 'accept');
  assert.deepEqual(r.eom?.modifications, [{ kind: 'addheader', name: 'X-Stamp', value: ' yes' }]);

  const shadow = s.logs.filter((l) => l.shadow === true);
  assert.deepEqual(
    shadow.map((l) => [l.filter, l.hook, l.verdict]),
    [
      ['strict', 'envrcpt', 'reject'],
      ['strict', 'eom', 'reject'],
    ],
  );
  assert.deepEqual(shadow[1]!.edits, ['change header Subject #1: [SPAM] hi', 'add header X-Strict: seen']);
  assert.deepEqual(s.server.chain.shadowCounts.get('strict'), { reject: 2, continue: 1 });
  await c.close();
});
