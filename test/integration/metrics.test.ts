/** Prometheus metrics: served when metrics.listen is set, counting messages, failures and reloads. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { fromObject } from '../../src/config/load.ts';
import { startDaemon } from '../../src/daemon.ts';
import { MtaClient } from '../support/mta-client.ts';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

test('messages by verdict, filter failures and connections are served at /metrics', { timeout: 60_000 }, async (t) => {
  const port = await freePort();
  const config = fromObject(
    {
      listen: ['inet:0@127.0.0.1'],
      log: { level: 'silent' },
      metrics: { listen: `127.0.0.1:${port}` },
      chain: [
        { plugin: './test/fixtures/plugins/rcpt-verdicts' },
        { plugin: './plugins/recipient-policy', capabilities: ['log'], options: { reject: ['^nobody@'] } },
        { plugin: './plugins/inspect' },
      ],
    },
    'test',
  );
  const d = await startDaemon(config, { baseDir: ROOT, signals: false });
  t.after(() => d.stop(1000));
  const c = await MtaClient.connect(d.server.addresses()[0]!);
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  await c.runMessage({ from: '<a@b>', rcpts: ['<x@y>'], headers: [['Subject', ' x']], body: 'b' });
  await c.runMessage({ from: '<a@b>', rcpts: ['<x@y>'], headers: [['Subject', ' x']], body: 'b' });
  // A message discarded at RCPT counts too. (An accept at RCPT ends only that plugin's part, as
  // with several milters: the others still get the message, which ends at end of message.)
  const vip = await c.runMessage({ from: '<a@b>', rcpts: ['<vip@y>'], headers: [['Subject', ' x']], body: 'b' });
  const trash = await c.runMessage({ from: '<a@b>', rcpts: ['<trash@y>'], headers: [['Subject', ' x']], body: 'b' });
  assert.deepEqual([vip.rcpts[0], trash.rcpts[0]].map((r) => (typeof r === 'string' ? r : r?.kind)), ['continue', 'discard']);
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.match(text, /^milterd_messages_total\{verdict="accept"\} 3$/m);
  assert.match(text, /^milterd_messages_total\{verdict="discard"\} 1$/m);
  assert.match(text, /^milterd_connections 1$/m);
  assert.match(text, /^milterd_eom_seconds_count 3$/m, "three messages reached end of message");
  assert.match(text, /^milterd_process_resident_memory_bytes \d+/m);
  assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
  await c.quit();
});
