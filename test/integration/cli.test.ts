/** The milterd command line, run as a process. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = (args: string[]) =>
  promisify(execFile)(process.execPath, ['bin/milterd.js', ...args], { timeout: 60_000 }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

test('--help explains the commands', async () => {
  const r = await run(['--help']);
  assert.equal(r.code, 0);
  for (const c of ['start', 'check']) assert.match(r.stdout, new RegExp(`^  ${c}\\b`, 'm'));
  assert.match(r.stdout, /smtpd_milters = inet:127\.0\.0\.1:8890/);
});

test('check: the default configuration loads every example plugin and prints chain and negotiation', async () => {
  const r = await run(['check']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /chain \(3 plugins\):/);
  assert.match(r.stdout, /1\. @milterd\/plugin-recipient-policy@1\.0\.0/);
  assert.match(r.stdout, /hooks: header, body, eom/);
  assert.match(r.stdout, /protocol 0x[0-9a-f]+: .*NR_HDR.*NR_BODY/);
});

test('check: prints the limits each plugin runs with, capped by filters.timeoutMs and filters.messageBudgetMs', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'capped.yaml');
  await writeFile(
    file,
    `filters:\n  timeoutMs: 150\n  messageBudgetMs: 900\nchain:\n  - plugin: ${join(process.cwd(), 'plugins/inspect')}\n    limits: { wallMs: 5000 }\n`,
  );
  const r = await run(['check', '--config', file]);
  assert.equal(r.code, 0, r.stderr);
  // inspect's manifest: cpu 200, wall 1000, message 5000.
  assert.match(r.stdout, /limits: memory 64 MB, cpu 150 ms, wall 150 ms, message 900 ms;/);
});

test('check: a broken configuration or plugin exits 1 with the error code and what to fix', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const bad = join(dir, 'bad.yaml');
  await writeFile(bad, 'chain:\n  - plugin: ./missing-plugin\n');
  const r = await run(['check', '--config', bad]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /MILTERD_PLUGIN_NOT_FOUND: plugin "\.\/missing-plugin" not found/);

  const invalid = join(dir, 'invalid.yaml');
  await writeFile(invalid, 'limits:\n  maxFrameBytes: 12\n');
  const r2 = await run(['check', '--config', invalid]);
  assert.equal(r2.code, 1);
  assert.match(r2.stderr, /MILTERD_CONFIG_INVALID: .*invalid\.yaml: limits\.maxFrameBytes: expected a value that must be >= 66560/);
});
