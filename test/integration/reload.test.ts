/**
 * Hot reload with real sandboxed plugins: file changes and configuration changes are applied
 * under continuous load without losing or failing a message; a broken change keeps the running
 * version; SIGHUP reloads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../src/config/load.ts';
import { startDaemon, type Daemon } from '../../src/daemon.ts';
import { MtaClient } from '../support/mta-client.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

async function project(t: { after(fn: () => unknown): void }, version: number, watch = true): Promise<{ dir: string; config: string; source: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-reload-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const plugin = join(dir, 'versioned');
  await mkdir(join(plugin, 'src'), { recursive: true });
  await writeFile(
    join(plugin, 'package.json'),
    JSON.stringify({ name: 'versioned', version: '1.0.0', type: 'module', milterd: { sdk: '^1.0.0', actions: ['addHeader'] } }),
  );
  const source = join(plugin, 'src/index.ts');
  await writeVersion(source, version);
  const config = join(dir, 'milterd.yaml');
  await writeFile(
    config,
    [
      '# test configuration',
      'listen: ["inet:0@127.0.0.1"]',
      'log: { level: warn }',
      `reload: { watch: ${watch}, debounceMs: 20 }`,
      'chain:',
      '  - plugin: ./versioned',
      '',
    ].join('\n'),
  );
  return { dir, config, source };
}

function writeVersion(file: string, v: number | string): Promise<void> {
  return writeFile(
    file,
    `import { definePlugin } from '@milterd/sdk';\nexport default definePlugin({ eom(ctx, m) { m.addHeader('X-Version', '${v}'); } });\n`,
  );
}

async function start(t: { after(fn: () => unknown): void }, config: string, dir: string): Promise<Daemon> {
  const d = await startDaemon(await loadConfig(config), { baseDir: dir, configFile: config, signals: false });
  t.after(() => d.stop(2000));
  return d;
}

/** One message; returns the X-Version value (or the verdict kind if not accepted). */
async function send(c: MtaClient, n: number): Promise<string> {
  const r = await c.runMessage({ from: `<s${n}@example.org>`, rcpts: ['<r@example.net>'], headers: [['Subject', ' x']], body: 'b\r\n', abortAfter: true });
  if (r.eom?.verdict.kind !== 'accept') return `verdict:${JSON.stringify(r.verdict)}`;
  const h = r.eom.modifications.find((m) => m.kind === 'addheader' && m.name === 'X-Version');
  return h !== undefined && h.kind === 'addheader' ? h.value.trim() : 'no-header';
}

test('20 reloads under continuous load lose and fail no message; save-to-serving time is measured', { timeout: 120_000 }, async (t) => {
  const { dir, config, source } = await project(t, 0);
  const d = await start(t, config, dir);
  await d.reloader!.ready();
  const address = d.server.addresses()[0]!;

  let stop = false;
  const seen: string[] = [];
  const failures: string[] = [];
  const load = Array.from({ length: 4 }, async (_, i) => {
    const c = await MtaClient.connect(address, { timeoutMs: 10_000 });
    await c.negotiate();
    await c.connect();
    await c.helo('h');
    let n = 0;
    while (!stop) {
      const v = await send(c, i * 100_000 + n++);
      if (!/^\d+$/.test(v)) failures.push(v);
      seen.push(v);
    }
    await c.quit();
  });

  const latencies: number[] = [];
  const probe = await MtaClient.connect(address);
  await probe.negotiate();
  await probe.connect();
  await probe.helo('probe');
  for (let v = 1; v <= 20; v++) {
    const t0 = performance.now();
    await writeVersion(source, v);
    let got = '';
    for (let i = 0; i < 400 && got !== String(v); i++) {
      got = await send(probe, 1_000_000 + v * 1000 + i);
      if (got !== String(v)) await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(got, String(v), `version ${v} never served`);
    latencies.push(performance.now() - t0);
  }
  stop = true;
  await Promise.all(load);
  await probe.quit();

  assert.deepEqual(failures, [], 'a message failed during reloads');
  assert.ok(seen.length > 100, `only ${seen.length} messages under load`);
  const versions = new Set(seen);
  assert.ok(versions.size > 5, `load saw only versions ${[...versions].join(',')}`);
  const ok = d.reloader!.history.filter((h) => h.ok);
  assert.ok(ok.length >= 20, `${ok.length} successful reloads`);
  latencies.sort((a, b) => a - b);
  const median = latencies[10]!;
  t.diagnostic(`save → new version serving: median ${median.toFixed(0)} ms, max ${latencies.at(-1)!.toFixed(0)} ms over 20 reloads; ${seen.length} messages under load`);
  // Not a timing test (the benchmark reports it): only a sanity bound for a loaded 2-core machine.
  assert.ok(median < 3000, `median ${median} ms`);
});

test('a broken change keeps the running version and logs the file and line; a fix is picked up', { timeout: 60_000 }, async (t) => {
  const { dir, config, source } = await project(t, 1);
  const d = await start(t, config, dir);
  await d.reloader!.ready();
  const c = await MtaClient.connect(d.server.addresses()[0]!);
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  assert.equal(await send(c, 1), '1');

  const before = d.reloader!.history.length;
  await writeFile(source, "import { definePlugin } from '@milterd/sdk';\nexport default definePlugin({ eom(ctx, m) { m.addHeader('X', 'y' }); } });\n");
  for (let i = 0; i < 200 && d.reloader!.history.length === before; i++) await new Promise((r) => setTimeout(r, 10));
  const failed = d.reloader!.history.at(-1)!;
  assert.equal(failed.ok, false);
  assert.match(failed.error!.message, /src\/index\.ts:2:\d+/);
  assert.equal((failed.error as { code?: string }).code, 'MILTERD_PLUGIN_BUNDLE');
  assert.equal(await send(c, 2), '1', 'still the previous version');

  await writeVersion(source, 2);
  let got = '';
  for (let i = 0; i < 300 && got !== '2'; i++) {
    got = await send(c, 10 + i);
    if (got !== '2') await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(got, '2', JSON.stringify(d.reloader!.history.map((h) => ({ ok: h.ok, e: h.error?.message }))));
  await c.quit();
});

test('configuration changes (a new plugin, order, disabling) apply the same way', { timeout: 60_000 }, async (t) => {
  const { dir, config } = await project(t, 1);
  const d = await start(t, config, dir);
  await d.reloader!.ready();
  const c = await MtaClient.connect(d.server.addresses()[0]!);
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  const headersOf = async (n: number): Promise<string[]> => {
    const r = await c.runMessage({ from: `<s${n}@x>`, rcpts: ['<r@y>'], headers: [['Subject', ' x']], body: 'b', abortAfter: true });
    return (r.eom?.modifications ?? []).flatMap((m) => (m.kind === 'addheader' ? [m.name] : []));
  };
  assert.deepEqual(await headersOf(1), ['X-Version']);

  const stamp = join(ROOT, 'plugins/header-stamp');
  const waitFor = async (want: string[]): Promise<void> => {
    let got: string[] = [];
    for (let i = 0; i < 300; i++) {
      got = await headersOf(100 + i);
      if (JSON.stringify(got) === JSON.stringify(want)) return;
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.deepEqual(got, want);
  };
  const base = ['listen: ["inet:0@127.0.0.1"]', 'log: { level: warn }', 'reload: { watch: true, debounceMs: 20 }', 'chain:'];
  await writeFile(config, [...base, `  - plugin: ${stamp}`, '    capabilities: [log]', '  - plugin: ./versioned', ''].join('\n'));
  await waitFor(['X-Filtered-By', 'X-Version']);
  await writeFile(config, [...base, '  - plugin: ./versioned', `  - plugin: ${stamp}`, ''].join('\n'));
  await waitFor(['X-Version', 'X-Filtered-By']);
  await writeFile(config, [...base, '  - plugin: ./versioned', '    enabled: false', `  - plugin: ${stamp}`, ''].join('\n'));
  await waitFor(['X-Filtered-By']);
  // The reused header-stamp kept its sandbox process across the last two reloads.
  const last = d.reloader!.history.at(-1)!;
  assert.deepEqual(last.reused, ['@milterd/plugin-header-stamp']);
  await c.quit();
});

test('SIGHUP reloads the configuration in the daemon process', { timeout: 60_000 }, async (t) => {
  const { dir, config, source } = await project(t, 1, false);
  const proc = spawn(process.execPath, ['bin/milterd.js', 'start', '--config', config, '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => proc.kill('SIGKILL'));
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  for (let i = 0; i < 200 && !/"listen":\["inet:\d+@127\.0\.0\.1"\]/.test(out); i++) await new Promise((r) => setTimeout(r, 50));
  const address = /"listen":\["([^"]+)"\]/.exec(out)![1]!;
  const c = await MtaClient.connect(address);
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  assert.equal(await send(c, 1), '1');
  await writeVersion(source, 2); // not watched (reload.watch false): nothing happens yet
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await send(c, 2), '1');
  proc.kill('SIGHUP');
  let got = '';
  for (let i = 0; i < 200 && got !== '2'; i++) {
    got = await send(c, 10 + i);
    if (got !== '2') await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(got, '2');
  assert.match(out, /chain reloaded \(SIGHUP\)/);
  // --log-level overrides the file's `log: { level: warn }`, at start and at the reload alike:
  // the reload does not take the override for an edit of the file that needs a restart.
  assert.doesNotMatch(out, /configuration key/);
  await c.quit();
  proc.kill('SIGTERM');
  const [code] = await once(proc, 'exit');
  assert.equal(code, 0);
});

/** Polls `file` until its text matches `re` (pino writes log.file asynchronously). */
async function fileMatches(file: string, re: RegExp, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms;
  let text = '';
  for (;;) {
    text = await readFile(file, 'utf8').catch(() => '');
    if (re.test(text) || Date.now() > deadline) return text;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('log.file is reopened by SIGUSR2 and by SIGHUP (logrotate): new lines go to the new file, none are lost', { timeout: 60_000 }, async (t) => {
  const { dir, config } = await project(t, 1, false);
  const log = join(dir, 'milterd.log');
  await writeFile(config, (await readFile(config, 'utf8')).replace('log: { level: warn }', `log: { level: info, file: ${JSON.stringify(log)} }`));
  const proc = spawn(process.execPath, ['bin/milterd.js', 'start', '--config', config], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => proc.kill('SIGKILL'));
  let stderr = '';
  proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const first = await fileMatches(log, /"listen":\["inet:\d+@127\.0\.0\.1"\]/);
  const address = /"listen":\["([^"]+)"\]/.exec(first)?.[1];
  assert.ok(address, `no listen line in ${log}: ${first}${stderr}`);

  // logrotate without copytruncate: rename, then signal.
  await rename(log, `${log}.1`);
  proc.kill('SIGUSR2');
  const second = await fileMatches(log, /log file reopened/);
  assert.match(second, /"signal":"SIGUSR2".*log file reopened/);
  assert.doesNotMatch(second, /chain reloaded/, 'SIGUSR2 does not reload');

  // A message after the rotation: its lines (a connection at debug would be too chatty; the
  // reload below is logged at info) land in the new file, and mail still flows.
  const c = await MtaClient.connect(address);
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  assert.equal(await send(c, 1), '1');
  await c.quit();

  await rename(log, `${log}.2`);
  proc.kill('SIGHUP');
  const third = await fileMatches(log, /chain reloaded \(SIGHUP\)/);
  assert.match(third, /"signal":"SIGHUP".*log file reopened/);
  assert.match(third, /chain reloaded \(SIGHUP\)/, 'the reload logs to the new file');
  proc.kill('SIGTERM');
  const [code] = await once(proc, 'exit');
  assert.equal(code, 0, stderr);
  // Nothing went back into the rotated files once they were reopened away from.
  assert.doesNotMatch(await readFile(`${log}.1`, 'utf8'), /log file reopened|chain reloaded/);
  assert.doesNotMatch(await readFile(`${log}.2`, 'utf8'), /chain reloaded/);
  assert.match(await readFile(log, 'utf8'), /stopping/, 'the shutdown lines are in the current file');
});

test('a reload applies a new pluginDir (packages are looked up there), with no restart warning', { timeout: 60_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-reload-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const [folder, v] of [['a', 'A'], ['b', 'B']] as const) {
    const plugin = join(dir, folder, 'node_modules', 'versioned');
    await mkdir(join(plugin, 'src'), { recursive: true });
    await writeFile(join(plugin, 'package.json'), JSON.stringify({ name: 'versioned', version: '1.0.0', type: 'module', milterd: { sdk: '^1.0.0', actions: ['addHeader'] } }));
    await writeVersion(join(plugin, 'src/index.ts'), v);
  }
  const log = join(dir, 'milterd.log');
  const config = join(dir, 'milterd.yaml');
  const write = (pluginDir: string): Promise<void> =>
    writeFile(
      config,
      ['listen: ["inet:0@127.0.0.1"]', `log: { level: info, file: ${JSON.stringify(log)} }`, 'reload: { watch: false }', `pluginDir: ${pluginDir}`, 'chain:', '  - plugin: versioned', ''].join('\n'),
    );
  await write('a');
  const d = await start(t, config, dir);
  const c = await MtaClient.connect(d.server.addresses()[0]!);
  await c.negotiate();
  await c.connect();
  await c.helo('h');
  assert.equal(await send(c, 1), 'A');
  await write('b');
  const r = await d.reloader!.reload('test');
  assert.equal(r.ok, true);
  assert.equal(await send(c, 2), 'B');
  await c.quit();
  const text = await fileMatches(log, /chain reloaded \(test\)/);
  assert.match(text, /chain reloaded \(test\)/);
  assert.doesNotMatch(text, /configuration key/);
});
