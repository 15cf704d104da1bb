/**
 * `milterd test <message.eml>`: run as a process with the default configuration (the example
 * plugins in their sandboxes), and the pure diff formatter behind its "Modifications" section.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { bodyDiff, diffLines, formatModifications, headerDiff, style, wantColor } from '../../src/cli/format.ts';
import { envelopeFor, parseAddressList } from '../../src/cli/test-message.ts';

const FIXTURE = 'test/fixtures/eml/simple.eml';

const run = (args: string[], env: NodeJS.ProcessEnv = process.env) =>
  promisify(execFile)(process.execPath, ['bin/milterd.js', ...args], { timeout: 60_000, env }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

/** The lines of one section of the report (from its heading to the next blank line). */
const section = (out: string, heading: string): string => {
  const start = out.indexOf(`\n${heading}`);
  assert.notEqual(start, -1, `no section ${heading} in:\n${out}`);
  const end = out.indexOf('\n\n', start + 1);
  return out.slice(start + 1, end === -1 ? undefined : end);
};

// --- The command, as a process --------------------------------------------------------------

test('test: an .eml through the example plugins prints envelope, calls with times, verdicts and the diff', async () => {
  const r = await run(['test', FIXTURE]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /\x1b\[/, 'no colour when stdout is not a TTY');
  // 1. The envelope: the message's From: and To: addresses.
  const env = section(r.stdout, 'Envelope');
  assert.match(env, /client +client\.example\.org \[192\.0\.2\.1\]/);
  assert.match(env, /MAIL FROM +<alice@example\.org>/);
  assert.match(env, /RCPT TO +<bob@example\.net>\n +<carol@example\.net>/);
  // 2. Each plugin in chain order with its calls (phase, verdict, time with one decimal).
  const plugins = section(r.stdout, 'Plugins');
  assert.match(
    plugins,
    /1\. @milterd\/plugin-recipient-policy@1\.0\.0 +2 calls, \d+\.\d ms\n +envrcpt +continue +\d+\.\d ms\n +envrcpt +continue +\d+\.\d ms\n/,
  );
  assert.match(plugins, /2\. @milterd\/plugin-inspect@1\.0\.0 +1 call, \d+\.\d ms\n +eom +continue +\d+\.\d ms\n/);
  assert.match(plugins, /3\. @milterd\/plugin-header-stamp@1\.0\.0 +1 call, \d+\.\d ms\n +eom +continue +\d+\.\d ms$/);
  // 3. and 4. Verdicts.
  assert.match(section(r.stdout, 'Recipients'), /<bob@example\.net> +accepted\n +<carol@example\.net> +accepted/);
  assert.match(section(r.stdout, 'Verdict'), /^ +accept +\(at eom\)$/m);
  // 5. The two added headers with +, after the last header of the message.
  const mods = r.stdout.slice(r.stdout.indexOf('\nModifications'));
  assert.match(mods, /Modifications \(2 actions for the MTA: addheader x2\)/);
  assert.match(
    mods,
    /\n {4}Content-Type: text\/plain; charset=utf-8\n {2}\+ X-Inspect: headers=8 bytes=\d+ body=82 sum=\d+\n {2}\+ X-Filtered-By: milterd \(queue id unknown\)/,
  );
});

test('test: --rcpt, --macro, --from: the nobody recipient is rejected with 550 5.1.1, the others go on', async () => {
  const r = await run(['test', FIXTURE, '--rcpt', 'nobody@example.org', '--rcpt', 'bob@example.net', '--macro', 'i=4Z1abc', '--from', 'bounce@example.org']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(section(r.stdout, 'Envelope'), /MAIL FROM +<bounce@example\.org>\n +RCPT TO +<nobody@example\.org>\n +<bob@example\.net>\n +macros +i=4Z1abc/);
  assert.match(section(r.stdout, 'Plugins'), /envrcpt +reject +\d+\.\d ms +550 5\.1\.1 Recipient not accepted here/);
  assert.match(section(r.stdout, 'Plugins'), /log info: recipient rejected by policy \{"rcpt":"nobody@example\.org"\}/);
  const rcpts = section(r.stdout, 'Recipients');
  assert.match(rcpts, /<nobody@example\.org> +rejected +550 5\.1\.1 Recipient not accepted here/);
  assert.match(rcpts, /<bob@example\.net> +accepted$/m);
  assert.match(section(r.stdout, 'Verdict'), /accept/);
  assert.match(r.stdout, /\+ X-Filtered-By: milterd \(queue id 4Z1abc\)/);
});

test('a shadow entry: test marks its verdicts as not applied (the recipient goes through), check marks the entry', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-test-shadow-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'milterd.yaml');
  const root = join(import.meta.dirname, '../..');
  await writeFile(
    file,
    ['chain:', `  - plugin: ${join(root, 'plugins/recipient-policy')}`, '    capabilities: [log]', "    options: { reject: ['^nobody@'] }", '    shadow: true', ''].join('\n'),
  );
  const r = await run(['test', FIXTURE, '--config', file, '--rcpt', 'nobody@example.org']);
  assert.equal(r.code, 0, r.stderr);
  const plugins = section(r.stdout, 'Plugins');
  assert.match(plugins, /1\. @milterd\/plugin-recipient-policy@1\.0\.0 +1 call, \d+\.\d ms \(shadow: its verdicts and edits are not applied\)/);
  assert.match(plugins, /envrcpt +reject +\d+\.\d ms +550 5\.1\.1 Recipient not accepted here \(shadow: not applied\)/);
  assert.match(section(r.stdout, 'Recipients'), /<nobody@example\.org> +accepted/);
  const c = await run(['check', '--config', file]);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stdout, /1\. @milterd\/plugin-recipient-policy@1\.0\.0 \(.*\) \[shadow: verdicts and edits logged, not applied\]/);
});

test('test --json: the TestResult with steps, actions and the body as text or base64', async () => {
  const r = await run(['test', FIXTURE, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    verdict: string;
    reply: string | null;
    steps: Array<{ filter: string; phase: string; verdict: string; ms: number }>;
    actions: Array<{ kind: string; name?: string }>;
    rcpts: Array<{ address: string; verdict: string }>;
    body: string;
    bodyEncoding: string;
    envelope: { from: string; rcpts: string[] };
  };
  assert.equal(j.verdict, 'accept');
  assert.equal(j.reply, null);
  assert.deepEqual(
    j.steps.map((s) => `${s.filter.replace('@milterd/plugin-', '')}:${s.phase}:${s.verdict}`),
    ['recipient-policy:envrcpt:continue', 'recipient-policy:envrcpt:continue', 'inspect:eom:continue', 'header-stamp:eom:continue'],
  );
  assert.ok(j.steps.every((s) => typeof s.ms === 'number' && s.ms >= 0));
  assert.deepEqual(j.actions.map((a) => `${a.kind} ${a.name}`), ['addheader X-Inspect', 'addheader X-Filtered-By']);
  assert.deepEqual(j.envelope, { ...j.envelope, from: '<alice@example.org>', rcpts: ['<bob@example.net>', '<carol@example.net>'] });
  assert.equal(j.bodyEncoding, 'utf8');
  assert.match(j.body, /^Hello Bob and Carol,\r\n\r\nthe report is attached in spirit\. Grüße!\r\n/);

  // A body that is not UTF-8 comes as base64.
  const l = await run(['test', 'test/fixtures/eml/latin1.eml', '--json']);
  assert.equal(l.code, 0, l.stderr);
  const lj = JSON.parse(l.stdout) as { body: string; bodyEncoding: string };
  assert.equal(lj.bodyEncoding, 'base64');
  assert.deepEqual(Buffer.from(lj.body, 'base64'), Buffer.from('Caf\xe9 cr\xe8me\r\n', 'latin1'));
});

test('test: a missing message file or a plugin that fails to load exits 1 with the error code', async (t) => {
  const missing = await run(['test', 'test/fixtures/eml/no-such-message.eml']);
  assert.equal(missing.code, 1);
  assert.equal(missing.stdout, '');
  assert.match(missing.stderr, /^milterd: [A-Z_]+: cannot read message file test\/fixtures\/eml\/no-such-message\.eml: no such file/);

  const dir = await mkdtemp(join(tmpdir(), 'milterd-test-cmd-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'broken'));
  await writeFile(
    join(dir, 'broken/package.json'),
    JSON.stringify({ name: 'broken-plugin', version: '1.0.0', private: true, type: 'module', main: 'index.js', milterd: { sdk: '^1.0.0' } }),
  );
  await writeFile(
    join(dir, 'broken/index.js'),
    "import { definePlugin } from '@milterd/sdk';\nthrow new Error('cannot start: no rules file');\nexport default definePlugin({ eom() {} });\n",
  );
  await writeFile(join(dir, 'config.yaml'), 'chain:\n  - plugin: ./broken\n');
  const broken = await run(['test', FIXTURE, '--config', join(dir, 'config.yaml')]);
  assert.equal(broken.code, 1);
  assert.equal(broken.stdout, '');
  assert.match(broken.stderr, /^milterd: MILTERD_PLUGIN_LOAD: plugin broken-plugin failed to load: cannot start: no rules file$/m);
});

// --- Envelope defaults -----------------------------------------------------------------------

test('envelope: From:/To: addresses from the message, options first, documented defaults last', () => {
  assert.deepEqual(parseAddressList(' "Doe, J" <j@x.example>, k@y.example (K), team: a@b.example, c@d.example;, undisclosed-recipients:;'), [
    'j@x.example',
    'k@y.example',
    'a@b.example',
    'c@d.example',
  ]);
  const headers = [
    { name: 'FROM', raw: ' Alice <alice@example.org>' },
    { name: 'To', raw: ' bob@example.net,\n\t"C" <carol@example.net>' },
    { name: 'To', raw: ' dave@example.net' },
  ];
  const e = envelopeFor({ headers }, {});
  assert.equal(e.from, '<alice@example.org>');
  assert.deepEqual(e.rcpts, ['<bob@example.net>', '<carol@example.net>', '<dave@example.net>']);
  assert.deepEqual(e.client, { address: '192.0.2.1', hostname: 'client.example.org', helo: 'client.example.org' });
  const none = envelopeFor({ headers: [{ name: 'Subject', raw: ' x' }] }, {});
  assert.equal(none.from, '<sender@example.org>');
  assert.deepEqual(none.rcpts, ['<rcpt@example.net>']);
  const opts = envelopeFor({ headers }, { from: 'x@y', rcpt: ['<z@w>'], clientIp: '198.51.100.7', macro: [['i', 'Q1']] });
  assert.deepEqual([opts.from, opts.rcpts, opts.client.address, opts.macros], ['<x@y>', ['<z@w>'], '198.51.100.7', { i: 'Q1' }]);
});

// --- The diff formatter (pure) -------------------------------------------------------------

const h = (name: string, value: string) => ({ name, raw: ` ${value}` });
const bytes = (s: string) => new Uint8Array(Buffer.from(s));
const HEADERS = [h('Received', 'from a by b'), h('From', 'a@example.org'), h('Subject', 'old'), h('Date', 'today'), h('X-Old', 'yes')];

test('diff: a changed header reads - old / + new at its place, with context', () => {
  const after = HEADERS.map((x) => (x.name === 'Subject' ? h('Subject', 'new') : x));
  assert.deepEqual(headerDiff(HEADERS, after), ['  ...', '  From: a@example.org', '- Subject: old', '+ Subject: new', '  Date: today', '  ...']);
});

test('diff: a header inserted at the top and one deleted', () => {
  const after = [h('X-Top', '1'), ...HEADERS.filter((x) => x.name !== 'X-Old')];
  assert.deepEqual(headerDiff(HEADERS, after), ['+ X-Top: 1', '  Received: from a by b', '  ...', '  Date: today', '- X-Old: yes']);
  // A folded header shows each of its lines with the mark.
  assert.deepEqual(headerDiff([h('A', 'a')], [h('A', 'a'), { name: 'X-Fold', raw: ' one\n\ttwo' }]), ['  A: a', '+ X-Fold: one', '+ \ttwo']);
});

test('diff: a body line change as a unified hunk; big bodies are truncated', () => {
  const lines = Array.from({ length: 20 }, (_, i) => `line ${i + 1}`);
  const before = bytes(`${lines.join('\r\n')}\r\n`);
  const changed = lines.map((l, i) => (i === 9 ? 'LINE 10' : l));
  assert.deepEqual(bodyDiff(before, bytes(`${changed.join('\r\n')}\r\n`)), [
    'body (171 bytes -> 171 bytes; 1 line removed, 1 line added):',
    '@@ -7,7 +7,7 @@',
    '  line 7',
    '  line 8',
    '  line 9',
    '- line 10',
    '+ LINE 10',
    '  line 11',
    '  line 12',
    '  line 13',
  ]);
  assert.deepEqual(bodyDiff(before, before), []);
  // An appended line: the hunk of the old side is counted from the line before.
  assert.deepEqual(bodyDiff(bytes('a\r\n'), bytes('a\r\nb\r\n')).slice(1), ['@@ -1,1 +1,2 @@', '  a', '+ b']);
  assert.deepEqual(bodyDiff(bytes('a\r\n'), bytes('b\r\na\r\n')).slice(1), ['@@ -1,1 +1,2 @@', '+ b', '  a']);

  // A new body of 5000 lines: 80 diff lines shown, the rest counted; long lines cut.
  const big = bytes(Array.from({ length: 5000 }, (_, i) => `new ${i} ${'x'.repeat(i === 0 ? 500 : 10)}`).join('\r\n'));
  const out = bodyDiff(before, big);
  assert.equal(out.length, 1 + 80 + 1);
  assert.match(out[0]!, /^body \(171 bytes -> \d+ bytes; 20 lines removed, 5000 lines added\):$/);
  assert.match(out.at(-1)!, /^ +\.\.\. 4941 more diff lines not shown$/);
  assert.match(out.find((l) => l.startsWith('+ new 0 '))!, /x{190}\.\.\. \(\d+ more characters\)$/);
  // Not UTF-8: sizes only.
  assert.deepEqual(bodyDiff(bytes('a'), new Uint8Array([0xff, 0xfe])), ['body replaced (1 byte -> 2 bytes; not UTF-8 text, not shown)']);
});

test('diff: envelope changes, quarantine, and "no changes"', () => {
  const before = { headers: HEADERS, body: bytes('x\r\n'), from: '<a@example.org>' };
  const out = formatModifications({
    before,
    after: { headers: HEADERS, body: bytes('x\r\n') },
    actions: [
      { kind: 'chgfrom', from: '<bounce@example.org>', args: 'SIZE=100' },
      { kind: 'delrcpt', rcpt: '<carol@example.net>' },
      { kind: 'addrcpt', rcpt: '<archive@example.net>' },
      { kind: 'quarantine', reason: 'looks odd' },
    ],
  });
  assert.deepEqual(out, [
    'envelope:',
    '- MAIL FROM:<a@example.org>',
    '+ MAIL FROM:<bounce@example.org> SIZE=100',
    '- RCPT TO:<carol@example.net>',
    '+ RCPT TO:<archive@example.net>',
    'quarantine: looks odd',
  ]);
  assert.deepEqual(formatModifications({ before, after: before, actions: [] }), ['no changes']);
});

test('diff: colour only when asked; wanted only on a TTY without NO_COLOR', () => {
  const after = [...HEADERS, h('X-New', '1')];
  assert.ok(headerDiff(HEADERS, after, { color: true }).includes(style(true).green('+ X-New: 1')));
  assert.ok(headerDiff(HEADERS, after).includes('+ X-New: 1'));
  assert.equal(wantColor({ isTTY: true }, {}), true);
  assert.equal(wantColor({ isTTY: true }, { NO_COLOR: '1' }), false);
  assert.equal(wantColor({ isTTY: false }, {}), false);
  assert.equal(wantColor({}, {}), false);
});

test('diffLines: minimal edits, removals before additions', () => {
  const d = diffLines(['a', 'b', 'c', 'd'], ['a', 'x', 'c', 'd', 'e']);
  assert.deepEqual(d.map((l) => `${l.op}${l.text}`), [' a', '-b', '+x', ' c', ' d', '+e']);
});
