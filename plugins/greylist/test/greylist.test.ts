// The greylist plugin through the real sandbox, with the testing kit (no MTA).
// External plugin authors import the kit as '@milterd/sdk/testing' (with milterd installed);
// inside this repository it is imported from the source.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { loadTestPlugin } from '../../../src/testing/index.ts';

const dir = fileURLToPath(new URL('..', import.meta.url));
const message = { from: 'alice@example.org', rcpts: ['bob@example.net'], client: { address: '198.51.100.7' }, headers: [['Subject', 'hi']] as [string, string][] };

test('first attempt tempfailed, early retry tempfailed, retry after the delay accepted with X-Greylist', async (t) => {
  const plugin = await loadTestPlugin(dir, { capabilities: ['kv', 'clock', 'log'], options: { delaySeconds: 1 } });
  t.after(() => plugin.close());

  const first = await plugin.run(message);
  assert.equal(first.verdict, 'reject'); // every recipient refused: the MTA answers the message
  assert.deepEqual(first.rcpts[0], { address: '<bob@example.net>', verdict: 'tempfail', reply: '451 4.7.1 Greylisted, please try again later' });

  const early = await plugin.run(message);
  assert.equal(early.rcpts[0]?.verdict, 'tempfail');

  await new Promise((r) => setTimeout(r, 1100));
  const later = await plugin.run(message);
  assert.equal(later.verdict, 'accept');
  assert.match(later.headers.find((h) => h.name === 'X-Greylist')?.value ?? '', /^delayed [12] seconds by milterd$/);

  // The triplet passed: the next message goes through at once, without the header.
  const next = await plugin.run(message);
  assert.equal(next.verdict, 'accept');
  assert.equal(next.headers.find((h) => h.name === 'X-Greylist'), undefined);

  // Another client network is a new triplet.
  const other = await plugin.run({ ...message, client: { address: '203.0.113.9' } });
  assert.equal(other.rcpts[0]?.verdict, 'tempfail');
});

test('authenticated senders are never greylisted', async (t) => {
  const plugin = await loadTestPlugin(dir, { capabilities: ['kv', 'clock', 'log'] });
  t.after(() => plugin.close());
  const r = await plugin.run({ ...message, macros: { '{auth_authen}': 'alice' } });
  assert.equal(r.verdict, 'accept');
});

test('options are checked against the schema the plugin publishes', async () => {
  await assert.rejects(loadTestPlugin(dir, { capabilities: ['kv', 'clock'], options: { delaySeconds: 'soon' } }), {
    code: 'MILTERD_CONFIG_INVALID',
    message: /options\.delaySeconds: must be integer/,
  });
});
