/**
 * `milterd plugin add | list | remove | new`, run as a process against a configuration in a
 * temporary folder. Packages are real npm tarballs (`npm pack` of test/fixtures/packages/*, or of
 * variants written here), installed by real npm with no network. The fixture package has
 * preinstall/install/postinstall scripts that write a marker file: it must never appear.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadConfig } from '../../src/config/load.ts';
import { resolvePlugin } from '../../src/plugins/resolve.ts';
import { loadTestChain, type TestMessage, type TestResult } from '../../src/testing/index.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'bin/milterd.js');
const FIXTURE = join(ROOT, 'test/fixtures/packages/stamp-plugin');
const exec = promisify(execFile);

/** Per-test time bound: a few npm runs and sandbox starts. */
const TIMEOUT = { timeout: 180_000 };

let scratch: string;
/** Where the fixture's install scripts would write if they ever ran. */
let marker: string;
/** Tarballs: the good fixture and broken variants of it. */
const tgz: Record<'good' | 'sdk9' | 'wantsKv' | 'syntax', string> = { good: '', sdk9: '', wantsKv: '', syntax: '' };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function milterd(args: readonly string[], cwd = scratch): Promise<Run> {
  return exec(process.execPath, [BIN, ...args], {
    cwd,
    timeout: 120_000,
    env: { ...process.env, MILTERD_TEST_MARKER: marker },
  }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

/** `npm pack` of `dir` into `dest` (scripts off: packing must not run them either); the tarball's path. */
async function pack(dir: string, dest: string): Promise<string> {
  const { stdout } = await exec('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dest, dir], { cwd: dest, timeout: 60_000 });
  const [info] = JSON.parse(stdout) as Array<{ filename: string }>;
  return join(dest, info!.filename);
}

/** A copy of the fixture with its package.json and entry changed. */
async function variant(name: string, edit: (pkg: Record<string, unknown> & { milterd: Record<string, unknown> }) => void, source?: string): Promise<string> {
  const dir = join(scratch, 'variants', name);
  await cp(FIXTURE, dir, { recursive: true });
  const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as Record<string, unknown> & { milterd: Record<string, unknown> };
  pkg.name = name;
  edit(pkg);
  await writeFile(join(dir, 'package.json'), JSON.stringify(pkg, null, 2));
  if (source !== undefined) await writeFile(join(dir, 'src/index.ts'), source);
  return pack(dir, join(scratch, 'tarballs'));
}

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'milterd-plugin-cli-'));
  marker = join(scratch, 'INSTALL-SCRIPT-RAN');
  await mkdir(join(scratch, 'tarballs'), { recursive: true });
  tgz.good = await pack(FIXTURE, join(scratch, 'tarballs'));
  tgz.sdk9 = await variant('milterd-fixture-sdk9', (p) => (p.milterd.sdk = '^9.0.0'));
  tgz.wantsKv = await variant('milterd-fixture-wants-kv', (p) => (p.milterd.capabilities = ['kv', 'log']));
  tgz.syntax = await variant('milterd-fixture-syntax', () => undefined, "import { definePlugin } from '@milterd/sdk';\nexport default definePlugin({\n  eom(ctx, message) {\n    message.addHeader('X', (;\n  },\n});\n");
});

after(async () => {
  if (scratch !== undefined) await rm(scratch, { recursive: true, force: true });
});

/** A folder with a configuration file of the given text; returns the file's path. */
async function project(name: string, config: string): Promise<string> {
  const dir = join(scratch, name);
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'milterd.yaml');
  await writeFile(file, config);
  return file;
}

/** A configuration with comments, odd spacing and quoting, and two example plugins. */
function exampleConfig(): string {
  return [
    '# milterd for mx1.',
    'listen:',
    '  - inet:8890@127.0.0.1    # local only',
    'filters:',
    '  onError: tempfail',
    'chain:',
    '  # Refuses recipients matching a pattern.',
    `  - plugin: ${join(ROOT, 'plugins/recipient-policy')}`,
    '    capabilities: [log]',
    '    options:',
    "      reject: ['^nobody@']",
    '',
    '  # Stamps every message.',
    `  - plugin: ${join(ROOT, 'plugins/header-stamp')}`,
    '    capabilities: [log]   # it logs',
    '    options: { name: X-Stamp, value: "mx1 {qid}" }',
    '# end of file',
    '',
  ].join('\n');
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Every file name under `dir`, recursively (to look for a stray marker). */
async function allFiles(dir: string): Promise<string[]> {
  if (!(await exists(dir))) return [];
  return (await readdir(dir, { recursive: true })).map(String);
}

/** Loads the chain the configuration file describes (pluginDir included) with the testing kit and runs `msg`. */
async function runConfiguredChain(file: string, msg: TestMessage): Promise<TestResult> {
  const config = await loadConfig(file);
  const baseDir = dirname(file);
  const pluginDir = config.pluginDir === undefined ? undefined : resolve(baseDir, config.pluginDir);
  const entries = await Promise.all(
    config.chain.map(async (e) => ({ ...e, plugin: await resolvePlugin(e.plugin, { baseDir, ...(pluginDir === undefined ? {} : { pluginDir }) }) })),
  );
  const chain = await loadTestChain(entries, { baseDir });
  try {
    return await chain.run(msg);
  } finally {
    await chain.close();
  }
}

test('the fixture install scripts do run under a plain npm install (so their absence below means something)', TIMEOUT, async () => {
  const dir = join(scratch, 'control');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'package.json'), '{"private":true}\n');
  const controlMarker = join(scratch, 'control-marker');
  await exec('npm', ['install', '--no-audit', '--no-fund', '--prefix', dir, tgz.good], {
    cwd: dir,
    timeout: 60_000,
    env: { ...process.env, MILTERD_TEST_MARKER: controlMarker },
  });
  assert.ok(await exists(controlMarker), 'the postinstall script should have written its marker');
});

test('plugin add <tarball> --grant log --after: installed without scripts, configuration edited in place, check passes, the plugin acts; remove cleans up', TIMEOUT, async () => {
  const original = exampleConfig();
  const file = await project('add-remove', original);
  const dir = dirname(file);
  const pluginDir = join(dir, 'plugins');

  const add = await milterd(['plugin', 'add', tgz.good, '--grant', 'log', '--after', '@milterd/plugin-recipient-policy', '--config', file]);
  assert.equal(add.code, 0, add.stderr);
  assert.match(add.stdout, /^added milterd-fixture-stamp@1\.2\.3 at position 2 as "milterd-fixture-stamp"/m);
  assert.match(add.stderr, /npm install --ignore-scripts/);

  // The configuration: the entry in place, pluginDir recorded, every other byte as it was.
  const withPluginDir = original.replace(
    'chain:\n',
    '# Where `milterd plugin add` installs plugin packages (relative to this file).\npluginDir: plugins\nchain:\n',
  );
  const expected = withPluginDir.replace(
    "      reject: ['^nobody@']\n",
    "      reject: ['^nobody@']\n  - plugin: milterd-fixture-stamp\n    capabilities: [log]\n",
  );
  assert.equal(await readFile(file, 'utf8'), expected);

  // Installed in the plugin folder, its install scripts not run.
  const pkg = JSON.parse(await readFile(join(pluginDir, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  assert.deepEqual(Object.keys(pkg.dependencies), ['milterd-fixture-stamp']);
  assert.ok(await exists(join(pluginDir, 'node_modules/milterd-fixture-stamp/src/index.ts')));
  assert.equal(await exists(marker), false, 'an install script ran');
  assert.deepEqual((await allFiles(pluginDir)).filter((f) => f.includes('install-script-ran')), []);

  const check = await milterd(['check', '--config', file]);
  assert.equal(check.code, 0, check.stderr);
  assert.match(check.stdout, /chain \(3 plugins\):/);
  assert.match(check.stdout, /2\. milterd-fixture-stamp@1\.2\.3 \(.*plugins\/node_modules\/milterd-fixture-stamp\)/);

  // A message through the chain as configured: the new plugin acts, in its place.
  const r = await runConfiguredChain(file, {
    headers: [['Subject', 'hi']],
    rcpts: ['bob@example.net', 'nobody@example.net'],
    macros: { i: 'QID7' },
  });
  assert.equal(r.verdict, 'accept');
  assert.deepEqual(r.finalRcpts, ['<bob@example.net>']);
  assert.deepEqual(
    r.headers.map((h) => `${h.name}: ${h.value}`),
    ['Subject: hi', 'X-Fixture-Stamp: stamped', 'X-Stamp: mx1 QID7'],
  );
  assert.deepEqual(
    r.steps.filter((s) => s.phase === 'eom').map((s) => s.filter),
    ['milterd-fixture-stamp', '@milterd/plugin-header-stamp'],
  );

  const list = await milterd(['plugin', 'list', '--config', file]);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /^ {2}2 {2}milterd-fixture-stamp@1\.2\.3 +yes +log +default +package milterd-fixture-stamp in the plugin folder$/m);

  const remove = await milterd(['plugin', 'remove', 'milterd-fixture-stamp', '--config', file]);
  assert.equal(remove.code, 0, remove.stderr);
  assert.match(remove.stdout, /removed milterd-fixture-stamp from position 2/);
  assert.match(remove.stdout, /uninstalled milterd-fixture-stamp/);
  assert.equal(await readFile(file, 'utf8'), withPluginDir);
  assert.equal(await exists(join(pluginDir, 'node_modules/milterd-fixture-stamp')), false);
  const after = JSON.parse(await readFile(join(pluginDir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  assert.deepEqual(Object.keys(after.dependencies ?? {}), []);
  assert.equal(await exists(marker), false);

  const check2 = await milterd(['check', '--config', file]);
  assert.equal(check2.code, 0, check2.stderr);
  assert.match(check2.stdout, /chain \(2 plugins\):/);
});

test('an incompatible SDK range is refused before anything changes: configuration byte-identical, nothing installed', TIMEOUT, async () => {
  const original = exampleConfig();
  const file = await project('sdk9', original);
  const r = await milterd(['plugin', 'add', tgz.sdk9, '--grant', 'log', '--config', file]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /milterd: MILTERD_PLUGIN_SDK_INCOMPATIBLE: plugin "milterd-fixture-sdk9" 1\.2\.3 .* wants @milterd\/sdk \^9\.0\.0, but this milterd provides @milterd\/sdk 1\.0\.0/);
  assert.equal(r.stdout, '');
  assert.equal(await readFile(file, 'utf8'), original);
  // The plugin folder did not exist: it is gone again.
  assert.equal(await exists(join(dirname(file), 'plugins')), false);
  assert.equal(await exists(marker), false);
});

test('a capability not granted is refused with the flag to pass; an existing plugin folder is left byte-identical', TIMEOUT, async () => {
  const file = await project('grants', exampleConfig());
  const pluginDir = join(dirname(file), 'plugins');
  const first = await milterd(['plugin', 'add', tgz.good, '--grant', 'log', '--config', file]);
  assert.equal(first.code, 0, first.stderr);
  const config = await readFile(file, 'utf8');
  const pkg = await readFile(join(pluginDir, 'package.json'));
  const lock = await readFile(join(pluginDir, 'package-lock.json'));

  for (const grant of [[], ['--grant', 'log']]) {
    const r = await milterd(['plugin', 'add', tgz.wantsKv, ...grant, '--config', file]);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      grant.length === 0
        ? /MILTERD_PLUGIN_CAPABILITY: plugin milterd-fixture-wants-kv@1\.2\.3 asks for capabilities that were not granted: kv, log\. Grant them with --grant kv,log/
        : /MILTERD_PLUGIN_CAPABILITY: .* not granted: kv\. Grant them with --grant log,kv/,
    );
    assert.equal(await readFile(file, 'utf8'), config);
    assert.deepEqual(await readFile(join(pluginDir, 'package.json')), pkg);
    assert.deepEqual(await readFile(join(pluginDir, 'package-lock.json')), lock);
    assert.equal(await exists(join(pluginDir, 'node_modules/milterd-fixture-wants-kv')), false);
    assert.ok(await exists(join(pluginDir, 'node_modules/milterd-fixture-stamp/package.json')));
  }

  // Granted, it goes in.
  const ok = await milterd(['plugin', 'add', tgz.wantsKv, '--grant', 'log,kv', '--position', '1', '--config', file]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /^ {2}1 {2}milterd-fixture-wants-kv@1\.2\.3 +yes +log,kv /m);
  assert.equal(await exists(marker), false);
});

test('a plugin that does not bundle is refused with file and line, and uninstalled', TIMEOUT, async () => {
  const original = exampleConfig();
  const file = await project('syntax', original);
  const r = await milterd(['plugin', 'add', tgz.syntax, '--grant', 'log', '--config', file]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /MILTERD_PLUGIN_BUNDLE: plugin "milterd-fixture-syntax" \(.*\): src\/index\.ts:4:\d+: /);
  assert.match(r.stderr, /undoing the install of milterd-fixture-syntax/);
  assert.equal(await readFile(file, 'utf8'), original);
  assert.equal(await exists(join(dirname(file), 'plugins')), false);
});

test('plugin add refuses a plugin already in the chain, an unknown --before, and a bad --grant, changing nothing', TIMEOUT, async () => {
  const original = exampleConfig();
  const file = await project('refusals', original);
  const dup = await milterd(['plugin', 'add', join(ROOT, 'plugins/header-stamp'), '--grant', 'log', '--config', file]);
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, /MILTERD_CONFIG_INVALID: plugin @milterd\/plugin-header-stamp is already in the chain at position 2/);

  const before = await milterd(['plugin', 'add', tgz.good, '--grant', 'log', '--before', 'nope', '--config', file]);
  assert.equal(before.code, 1);
  assert.match(before.stderr, /MILTERD_PLUGIN_NOT_FOUND: --before nope: no chain entry has that package name or plugin spec/);

  const grant = await milterd(['plugin', 'add', tgz.good, '--grant', 'log,dnsx', '--config', file]);
  assert.equal(grant.code, 1);
  assert.match(grant.stderr, /unknown capability dnsx: expected log, kv, dns, clock/);

  const both = await milterd(['plugin', 'add', tgz.good, '--position', '1', '--after', 'x', '--config', file]);
  assert.equal(both.code, 1);
  assert.match(both.stderr, /cannot be used with/);

  assert.equal(await readFile(file, 'utf8'), original);
  assert.equal(await exists(join(dirname(file), 'plugins')), false);
});

test('plugin add <folder> references it by a path relative to the configuration; list shows the chain and unused packages', TIMEOUT, async () => {
  const file = await project('folder', exampleConfig());
  const dir = dirname(file);
  // A plugin folder next to the configuration, and a package installed by hand but not in the chain.
  await cp(FIXTURE, join(dir, 'local/stamp'), { recursive: true });
  const add = await milterd(['plugin', 'add', './local/stamp', '--grant', 'log', '--position', '1', '--on-error', 'continue', '--disabled', '--config', file], dir);
  assert.equal(add.code, 0, add.stderr);
  const text = await readFile(file, 'utf8');
  assert.match(text, /chain:\n {2}- plugin: \.\/local\/stamp\n {4}enabled: false\n {4}onError: continue\n {4}capabilities: \[log\]\n {2}# Refuses recipients/);
  assert.doesNotMatch(text, /pluginDir/, 'a folder is not installed, so no plugin folder is recorded');

  await writeFile(file, `${text}pluginDir: ./plugins\n`);
  await mkdir(join(dir, 'plugins'));
  await writeFile(join(dir, 'plugins/package.json'), '{"private":true}\n');
  await exec('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefix', join(dir, 'plugins'), tgz.sdk9], { timeout: 60_000 });

  const list = await milterd(['plugin', 'list', '--config', file]);
  assert.equal(list.code, 0, list.stderr);
  const lines = list.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^chain of .*milterd\.yaml \(3 entries\), plugin folder .*plugins:$/);
  assert.match(lines[1]!, /^ {2}# {2}plugin +enabled {2}capabilities {2}on error {2}source$/);
  assert.match(lines[2]!, /^ {2}1 {2}milterd-fixture-stamp@1\.2\.3 +no +log +continue +folder \.\/local\/stamp$/);
  assert.match(lines[3]!, /^ {2}2 {2}@milterd\/plugin-recipient-policy@1\.0\.0 +yes +log +default +folder \/.*plugins\/recipient-policy$/);
  assert.match(lines[4]!, /^ {2}3 {2}@milterd\/plugin-header-stamp@1\.0\.0 +yes +log +default +folder /);
  assert.match(lines[5]!, /^installed in the plugin folder but not in the chain/);
  assert.match(lines[6]!, /^ {2}milterd-fixture-sdk9@1\.2\.3 \(file:.*milterd-fixture-sdk9-1\.2\.3\.tgz\)$/);

  const json = JSON.parse((await milterd(['plugin', 'list', '--json', '--config', file])).stdout) as { entries: Array<{ spec: string; enabled: boolean }> };
  assert.deepEqual(json.entries.map((e) => [e.spec, e.enabled]).slice(0, 1), [['./local/stamp', false]]);

  // remove by the spec as written; an unused installed package is just uninstalled.
  const rm1 = await milterd(['plugin', 'remove', './local/stamp', '--config', file]);
  assert.equal(rm1.code, 0, rm1.stderr);
  assert.doesNotMatch(await readFile(file, 'utf8'), /local\/stamp/);
  assert.ok(await exists(join(dir, 'local/stamp/package.json')), 'a folder plugin is never deleted');
  const rm2 = await milterd(['plugin', 'remove', 'milterd-fixture-sdk9', '--config', file]);
  assert.equal(rm2.code, 0, rm2.stderr);
  assert.match(rm2.stdout, /uninstalled milterd-fixture-sdk9/);
  assert.equal(await exists(join(dir, 'plugins/node_modules/milterd-fixture-sdk9')), false);

  const rm3 = await milterd(['plugin', 'remove', 'not-there', '--config', file]);
  assert.equal(rm3.code, 1);
  assert.match(rm3.stderr, /MILTERD_PLUGIN_NOT_FOUND: plugin "not-there" is not in the chain: the chain has: /);
});

test('plugin new: the generated package has its manifest and files, a second run is refused, and plugin add accepts it', TIMEOUT, async () => {
  const dir = join(scratch, 'authoring/acme-filter');
  const r = await milterd(['plugin', 'new', '@acme/milterd-filter', '--dir', dir]);
  assert.equal(r.code, 0, r.stderr);
  for (const f of ['package.json', 'src/index.ts', 'test/plugin.test.ts', 'tsconfig.json', 'README.md', '.gitignore']) {
    assert.ok(await exists(join(dir, f)), `${f} missing`);
  }
  const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as {
    name: string;
    devDependencies: Record<string, string>;
    milterd: { sdk: string; actions: string[]; capabilities: string[] };
  };
  assert.equal(pkg.name, '@acme/milterd-filter');
  assert.deepEqual(Object.keys(pkg.devDependencies).sort(), ['@milterd/sdk', 'milterd', 'typescript']);
  assert.equal(pkg.milterd.sdk, '^1.0.0');
  assert.deepEqual(pkg.milterd.capabilities, ['log']);
  assert.ok(pkg.milterd.actions.length > 0);

  // A second time into the same folder: refused.
  const again = await milterd(['plugin', 'new', '@acme/milterd-filter', '--dir', dir]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /exists and is not empty/);
  const badName = await milterd(['plugin', 'new', 'Bad Name', '--dir', join(scratch, 'authoring/bad')]);
  assert.equal(badName.code, 1);
  assert.match(badName.stderr, /not a valid npm package name/);

  // Its type-check and its own test, with milterd and the SDK installed from their tarballs:
  // test/integration/published.test.ts.

  // And milterd takes it as it is.
  const file = await project('authoring/site', exampleConfig());
  const add = await milterd(['plugin', 'add', dir, '--grant', 'log', '--config', file]);
  assert.equal(add.code, 0, add.stderr);
  assert.match(add.stdout, /added @acme\/milterd-filter@0\.1\.0 at position 3 as "\.\.\/acme-filter"/);
  const check = await milterd(['check', '--config', file]);
  assert.equal(check.code, 0, check.stderr);
});

test('editing the chain keeps the file as written: comments above the first entry, unindented lists, flow and empty chains', TIMEOUT, async () => {
  const inspect = join(ROOT, 'plugins/inspect');
  const stamp = join(ROOT, 'plugins/header-stamp');
  const cases: Array<{ name: string; text: string; position?: number; expected: string }> = [
    {
      name: 'lead-comment',
      text: `chain: # the plugins\n  # about the chain\n\n  # inspect counts bytes\n  - plugin: ${inspect}   # counts\n`,
      position: 1,
      expected: `chain: # the plugins\n  # about the chain\n\n  - plugin: ${stamp}\n    capabilities: [log]\n  # inspect counts bytes\n  - plugin: ${inspect}   # counts\n`,
    },
    {
      name: 'unindented',
      text: `listen:\n- inet:8890@127.0.0.1\nchain:\n- plugin: ${inspect}\n# trailing\n`,
      expected: `listen:\n- inet:8890@127.0.0.1\nchain:\n- plugin: ${inspect}\n- plugin: ${stamp}\n  capabilities: [log]\n# trailing\n`,
    },
    {
      name: 'flow-empty',
      text: `# nothing yet\nchain: []\n`,
      expected: `# nothing yet\nchain:\n  - plugin: ${stamp}\n    capabilities: [log]\n`,
    },
    { name: 'empty-file', text: '', expected: `chain:\n  - plugin: ${stamp}\n    capabilities: [log]\n` },
  ];
  for (const c of cases) {
    const file = await project(`yaml-${c.name}`, c.text);
    const add = await milterd(['plugin', 'add', stamp, '--grant', 'log', ...(c.position === undefined ? [] : ['--position', String(c.position)]), '--config', file]);
    assert.equal(add.code, 0, `${c.name}: ${add.stderr}`);
    assert.equal(await readFile(file, 'utf8'), c.expected, c.name);
    const remove = await milterd(['plugin', 'remove', '@milterd/plugin-header-stamp', '--config', file]);
    assert.equal(remove.code, 0, `${c.name}: ${remove.stderr}`);
    const back = await readFile(file, 'utf8');
    if (c.name === 'empty-file') assert.equal(back, 'chain: []\n');
    else assert.equal(back, c.text, c.name);
  }
});

test('the example plugins install from their own tarballs with no registry: the SDK is a dev dependency, the sandbox provides it', TIMEOUT, async () => {
  const file = await project('example-tarball', exampleConfig());
  const greylist = await pack(join(ROOT, 'plugins/greylist'), join(scratch, 'tarballs'));
  const r = await exec(process.execPath, [BIN, 'plugin', 'add', greylist, '--grant', 'kv,clock,log', '--config', file], {
    cwd: scratch,
    timeout: 120_000,
    // Offline: npm may use nothing but the tarball (and would fail on a dependency to fetch).
    env: { ...process.env, MILTERD_TEST_MARKER: marker, npm_config_offline: 'true' },
  }).then(
    (x) => ({ code: 0, stdout: x.stdout, stderr: x.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(await readFile(file, 'utf8'), /plugin: "@milterd\/plugin-greylist"\n {4}capabilities: \[kv, clock, log\]/);
  assert.equal(await exists(join(dirname(file), 'plugins/node_modules/@milterd/sdk')), false, 'no SDK copy installed next to it');
});
