/**
 * The plugin testing kit: the example plugins through the real sandbox with no MTA, and the
 * import path a plugin author uses (`@milterd/sdk/testing` re-exporting `milterd/testing`) is
 * tested with the packages as npm installs them in published.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadTestChain, loadTestPlugin, parseEml } from '../../src/testing/index.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

test('parseEml keeps header text after the colon exactly, joins folded lines with LF, makes the body CRLF', () => {
  const p = parseEml('Subject: hi\nX-Tight:v\nX-Fold: a\n\tb\n\nline 1\nline 2\n');
  assert.deepEqual(p.headers, [
    ['Subject', ' hi'],
    ['X-Tight', 'v'],
    ['X-Fold', ' a\n\tb'],
  ]);
  assert.equal(Buffer.from(p.body).toString(), 'line 1\r\nline 2\r\n');
});

test('the inspect plugin through its sandbox: counts every header and body byte', async (t) => {
  const plugin = await loadTestPlugin(join(ROOT, 'plugins/inspect'));
  t.after(() => plugin.close());
  const r = await plugin.run({ eml: 'Subject: hi\nFrom: me\n\nhello\n' });
  assert.equal(r.verdict, 'accept');
  // headers: "Subject"+"hi" + "From"+"me" = 9 + 6 bytes; body "hello\r\n" = 7 bytes.
  const sum = [...Buffer.from('SubjecthiFromme')].reduce((a, b) => a + b, 0) + [...Buffer.from('hello\r\n')].reduce((a, b) => a + b, 0);
  assert.deepEqual(r.actions, [{ kind: 'addheader', name: 'X-Inspect', value: ` headers=2 bytes=15 body=7 sum=${sum}` }]);
  assert.equal(r.headers.at(-1)?.name, 'X-Inspect');
});

test('a chain of the example plugins: per-recipient verdicts, per-plugin steps, final message', async (t) => {
  const chain = await loadTestChain(
    [
      { plugin: './plugins/recipient-policy', capabilities: ['log'], options: { reject: ['^nobody@'], tempfail: ['@maintenance\\.example$'] } },
      { plugin: './plugins/inspect' },
      { plugin: './plugins/header-stamp', capabilities: ['log'], options: { name: 'X-Stamp', value: 'qid {qid}' } },
    ],
    { baseDir: ROOT },
  );
  t.after(() => chain.close());
  const r = await chain.run({
    headers: [['Subject', 'x']],
    body: 'b\n',
    rcpts: ['bob@example.net', 'nobody@example.net', 'ops@maintenance.example'],
    macros: { i: 'QID42' },
  });
  assert.equal(r.verdict, 'accept');
  assert.deepEqual(
    r.rcpts.map((x) => [x.address, x.verdict, x.reply]),
    [
      ['<bob@example.net>', 'continue', undefined],
      ['<nobody@example.net>', 'reject', '550 5.1.1 Recipient not accepted here'],
      ['<ops@maintenance.example>', 'tempfail', '451 4.3.2 Recipient temporarily unavailable'],
    ],
  );
  assert.deepEqual(r.finalRcpts, ['<bob@example.net>']);
  assert.deepEqual(r.headers.map((h) => `${h.name}:${h.value}`).slice(1, 2), ['X-Inspect:headers=1 bytes=8 body=3 sum=' + ([...Buffer.from('Subjectxb\r\n')].reduce((a, b) => a + b, 0))]);
  assert.equal(r.headers.at(-1)?.value, 'qid QID42');
  assert.deepEqual(
    r.steps.map((s) => `${s.filter.replace('@milterd/plugin-', '')}:${s.phase}:${s.verdict}`),
    ['recipient-policy:envrcpt:continue', 'recipient-policy:envrcpt:reject', 'recipient-policy:envrcpt:tempfail', 'inspect:eom:continue', 'header-stamp:eom:continue'],
  );
});

test('a plugin that declares reads.body=false is not handed the body: a 40 MB message passes a 32 MB plugin', async (t) => {
  const plugin = await loadTestPlugin(join(ROOT, 'plugins/header-stamp'), { capabilities: ['log'] });
  t.after(() => plugin.close());
  const body = Buffer.alloc(40 * 1024 * 1024, 'a');
  const r = await plugin.run({ headers: [['Subject', 'big']], body });
  assert.equal(r.verdict, 'accept');
  assert.equal(r.body.length, body.length);
  assert.deepEqual(r.actions, [{ kind: 'addheader', name: 'X-Filtered-By', value: ' milterd' }]);
});

test('a reply the chain refuses shows as an error step with its code, and the recipient gets the failure policy', async (t) => {
  const plugin = await loadTestPlugin(join(ROOT, 'test/fixtures/hostile/bad-reply'), { options: { kind: 'class' } });
  t.after(() => plugin.close());
  const r = await plugin.run({ from: 'hostile@example.org', rcpts: ['bob@example.net'] });
  const step = r.steps.find((s) => s.phase === 'envrcpt');
  assert.equal(step?.verdict, 'error', JSON.stringify(r.steps));
  assert.equal(step?.error?.code, 'MILTERD_FILTER_BAD_REPLY');
  assert.equal(step?.reply, undefined, 'the refused reply is not shown as if sent');
  assert.equal(r.rcpts[0]?.verdict, 'tempfail'); // the default failure policy
});
