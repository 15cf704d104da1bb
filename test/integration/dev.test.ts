/** `milterd dev <folder>`: readable logs with each message's verdict and edits, reload on save. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MtaClient } from '../support/mta-client.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

test('dev: a message shows its verdict and edits; saving the plugin reloads it', { timeout: 60_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-dev-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const plugin = join(dir, 'stamp');
  await cp(join(ROOT, 'plugins/header-stamp'), plugin, { recursive: true });
  const proc = spawn(process.execPath, ['bin/milterd.js', 'dev', plugin, '--listen', 'inet:0@127.0.0.1', '--options', '{"name":"X-Dev","value":"one"}'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  t.after(() => proc.kill('SIGKILL'));
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  const waitFor = async (re: RegExp): Promise<RegExpExecArray> => {
    for (let i = 0; i < 300; i++) {
      const m = re.exec(out);
      if (m) return m;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.fail(`no ${re} in:\n${out}`);
  };
  const address = (await waitFor(/milterd dev: .* on (inet:\d+@127\.0\.0\.1);/))[1]!;
  const c = await MtaClient.connect(address);
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], headers: [['Subject', ' hi']], body: 'x', macros: { mail: { i: 'QDEV1' } } });
  await waitFor(/end of message: accept, 1 edit\(s\).*add header X-Dev: one/);
  assert.doesNotMatch(out, /^\{"level"/m, 'readable lines, not JSON');

  const src = join(plugin, 'src/index.ts');
  await writeFile(src, (await readFile(src, 'utf8')).replace("message.addHeader(name, value);", "message.addHeader(name, value + '-reloaded');"));
  await waitFor(/chain reloaded/);
  await c.runMessage({ from: '<a@b>', rcpts: ['<c@d>'], headers: [['Subject', ' hi']], body: 'x' });
  await waitFor(/add header X-Dev: one-reloaded/);
  await c.quit();
  proc.kill('SIGTERM');
  const [code] = await once(proc, 'exit');
  assert.equal(code, 0);
});
