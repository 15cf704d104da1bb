/**
 * Plugin manifests: reading the `milterd` key of package.json, defaults, entry file discovery,
 * every validation error naming the file, the plugin and the key path, and the SDK range check.
 */
import assert from 'node:assert/strict';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Ajv } from 'ajv';
import { isErrorCode, MilterdError } from '../../../src/errors.ts';
import { checkSdkCompatibility, DEFAULT_PLUGIN_LIMITS, readManifest, type PluginManifest } from '../../../src/plugins/manifest.ts';
import { fixture, rejectsWith, Scratch } from './plugin-test-helpers.ts';

const scratch = new Scratch();
before(() => scratch.setup());
after(() => scratch.cleanup());

let n = 0;
/** A throw-away plugin package: `pkg` is its package.json, `files` its other files. */
function plugin(pkg: object, files: Record<string, string> = { 'src/index.ts': 'export default {};\n' }): Promise<string> {
  n += 1;
  return scratch.write(`p${n}`, { 'package.json': pkg, ...files });
}

/** package.json with a valid manifest, `milterd` keys overridden by `m`. */
function pkgWith(m: Record<string, unknown>, top: Record<string, unknown> = {}): object {
  return { name: 'test-plugin', version: '1.0.0', ...top, milterd: { sdk: '^0.1.0', ...m } };
}

function isDeepFrozen(o: unknown, path = '$'): void {
  if (o === null || typeof o !== 'object') return;
  assert.ok(Object.isFrozen(o), `${path} is not frozen`);
  for (const [k, v] of Object.entries(o)) isDeepFrozen(v, `${path}.${k}`);
}

describe('DEFAULT_PLUGIN_LIMITS', () => {
  it('has the documented values and is frozen', () => {
    assert.deepEqual(DEFAULT_PLUGIN_LIMITS, { memoryMb: 64, cpuMs: 200, wallMs: 1000, messageMs: 5000 });
    assert.ok(Object.isFrozen(DEFAULT_PLUGIN_LIMITS));
  });
});

describe('readManifest: valid plugins', () => {
  it('reads every field of ok-ts, fills defaults, finds src/index.ts, and freezes the result', async () => {
    const dir = fixture('ok-ts');
    const m = await readManifest(dir);
    assert.deepEqual(m, {
      name: 'ok-ts',
      version: '1.0.0',
      sdk: '^1.0.0',
      entry: join(dir, 'src/index.ts'),
      hooks: ['eom'],
      actions: ['addHeader'],
      capabilities: ['log'],
      limits: { memoryMb: 64, cpuMs: 50, wallMs: 1000, messageMs: 5000 },
      macros: { connect: ['j', '{daemon_name}'], eom: ['i'] },
      optionsSchema: {
        type: 'object',
        properties: { header: { type: 'string' } },
        additionalProperties: false,
      },
      reads: { headers: true, body: true },
      dir,
    } satisfies PluginManifest);
    isDeepFrozen(m);
  });

  it('the frozen options schema still compiles (the loader validates options with it)', async () => {
    const m = await readManifest(fixture('ok-ts'));
    const validate = new Ajv().compile(m.optionsSchema!);
    assert.equal(validate({ header: 'X-A' }), true);
    assert.equal(validate({ header: 1 }), false);
  });

  it('ok-js: scoped name, entry from main, defaults for everything optional', async () => {
    const dir = fixture('ok-js');
    const m = await readManifest(dir);
    assert.deepEqual(m, {
      name: '@fixtures/ok-js',
      version: '0.2.0',
      sdk: '>=0.1.0 <1',
      entry: join(dir, 'index.js'),
      actions: [],
      capabilities: [],
      limits: { ...DEFAULT_PLUGIN_LIMITS },
      macros: {},
      reads: { headers: true, body: true },
      dir,
    });
    assert.equal('hooks' in m, false);
    assert.equal('optionsSchema' in m, false);
  });

  it('normalises the folder path and ignores the other package.json keys', async () => {
    const dir = await plugin({ ...pkgWith({}), description: 'x', scripts: { build: 'tsc' }, dependencies: {} });
    const m = await readManifest(`${dir}/../${basename(dir)}/`);
    assert.equal(m.dir, dir);
    assert.equal(m.entry, join(dir, 'src/index.ts'));
  });

  it('merges partial limits over the defaults', async () => {
    const dir = await plugin(pkgWith({ limits: { memoryMb: 128, messageMs: 20000 } }));
    assert.deepEqual((await readManifest(dir)).limits, { memoryMb: 128, cpuMs: 200, wallMs: 1000, messageMs: 20000 });
  });

  it('accepts any valid semver range for sdk, and every hook, action and capability', async () => {
    const dir = await plugin(
      pkgWith({
        sdk: '*',
        hooks: ['connect', 'helo', 'envfrom', 'envrcpt', 'data', 'header', 'eoh', 'body', 'eom', 'abort', 'close', 'unknown'],
        actions: ['addHeader', 'changeHeader', 'replaceBody', 'addRcpt', 'delRcpt', 'changeFrom', 'quarantine'],
        capabilities: ['log', 'kv', 'dns', 'clock'],
        macros: { connect: ['_'], helo: [], envfrom: ['{auth_authen}'], envrcpt: ['{rcpt_addr}'], data: ['i'], eoh: [], eom: ['{msg_id}'] },
      }),
    );
    const m = await readManifest(dir);
    assert.equal(m.hooks?.length, 12);
    assert.equal(m.actions.length, 7);
    assert.equal(m.capabilities.length, 4);
    assert.deepEqual(m.macros.envfrom, ['{auth_authen}']);
  });
});

describe('readManifest: the entry file', () => {
  const idx = 'export default {};\n';

  it('takes milterd.entry first', async () => {
    const dir = await plugin(pkgWith({ entry: 'lib/plugin.ts' }, { main: 'index.js' }), { 'lib/plugin.ts': idx, 'index.js': idx });
    assert.equal((await readManifest(dir)).entry, join(dir, 'lib/plugin.ts'));
  });

  it('then exports["."] (Node gives exports precedence over main), under the milterd/import/default conditions', async () => {
    const files = { 'a.js': idx, 'b.js': idx, 'c.js': idx, 'index.js': idx };
    const cases: Array<[unknown, string]> = [
      ['./a.js', 'a.js'],
      [{ '.': './b.js', './extra': './c.js' }, 'b.js'],
      [{ '.': { require: './c.js', import: './a.js' } }, 'a.js'],
      [{ require: './c.js', milterd: './b.js', default: './a.js' }, 'b.js'],
      [{ '.': [{ node: './c.js' }, './a.js'] }, 'a.js'],
    ];
    for (const [exp, want] of cases) {
      const dir = await plugin(pkgWith({}, { main: 'index.js', exports: exp }), files);
      assert.equal((await readManifest(dir)).entry, join(dir, want), JSON.stringify(exp));
    }
  });

  it('then main, when exports has no usable "."', async () => {
    const dir = await plugin(pkgWith({}, { main: 'index.js', exports: { './x': './a.js' } }), { 'index.js': idx, 'a.js': idx });
    assert.equal((await readManifest(dir)).entry, join(dir, 'index.js'));
  });

  it('then src/index.ts, src/index.js, index.ts, index.js in that order', async () => {
    const all = ['src/index.ts', 'src/index.js', 'index.ts', 'index.js'];
    for (let i = 0; i < all.length; i++) {
      const files = Object.fromEntries(all.slice(i).map((f) => [f, idx]));
      const dir = await plugin(pkgWith({}), files);
      assert.equal((await readManifest(dir)).entry, join(dir, all[i]!));
    }
  });

  it('refuses a package with no entry file at all, listing what it tried', async () => {
    const dir = await plugin(pkgWith({}), { 'README.md': '#' });
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', [
      `${join(dir, 'package.json')} (plugin "test-plugin"): milterd.entry: missing, and none of src/index.ts, src/index.js, index.ts, index.js exists`,
    ]);
  });

  it('refuses a named entry that does not exist, on the key that named it', async () => {
    const dir = await plugin(pkgWith({ entry: 'src/nope.ts' }));
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', [`milterd.entry: file not found: ${join(dir, 'src/nope.ts')}`]);
    const dir2 = await plugin(pkgWith({}, { main: 'dist/index.js' }));
    await rejectsWith(readManifest(dir2), 'MILTERD_PLUGIN_MANIFEST', [
      `main: file not found: ${join(dir2, 'dist/index.js')} (build the package, or set milterd.entry to its source)`,
    ]);
    const dir3 = await plugin(pkgWith({}, { exports: './dist/index.js' }));
    await rejectsWith(readManifest(dir3), 'MILTERD_PLUGIN_MANIFEST', ['exports: file not found']);
  });

  it('refuses an entry outside the package, or the package folder itself', async () => {
    const dir = await plugin(pkgWith({ entry: '../p1/src/index.ts' }));
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', ['milterd.entry: expected a file inside the package, got "../p1/src/index.ts"']);
    const dir2 = await plugin(pkgWith({ entry: '/etc/passwd' }));
    await rejectsWith(readManifest(dir2), 'MILTERD_PLUGIN_MANIFEST', ['milterd.entry: expected a file inside the package, got "/etc/passwd"']);
    const dir3 = await plugin(pkgWith({ entry: '.' }));
    await rejectsWith(readManifest(dir3), 'MILTERD_PLUGIN_MANIFEST', ['milterd.entry: expected a file inside the package, got "."']);
  });

  it('refuses an entry that is a folder', async () => {
    const dir = await plugin(pkgWith({ entry: 'src' }));
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', [`milterd.entry: file not found: ${join(dir, 'src')}`]);
  });
});

describe('readManifest: errors name the file, the plugin and the key path', () => {
  it('bad-manifest: every problem, one line each, in one error', async () => {
    const dir = fixture('bad-manifest');
    const file = join(dir, 'package.json');
    const err = await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', []);
    const prefix = `${file} (plugin "bad-manifest"): `;
    const want = [
      'milterd.sdk: missing',
      'milterd.sandbox: unknown key',
      'milterd.hooks[1]: expected one of "connect", "helo", "envfrom", "envrcpt", "data", "header", "eoh", "body", "eom", "abort", "close", "unknown", got "onMessage"',
      'milterd.actions: expected array, got string "addHeader"',
      'milterd.capabilities[1]: expected one of "log", "kv", "dns", "clock", got "fs"',
      'milterd.limits.diskMb: unknown key',
      'milterd.limits.memoryMb: expected a value >= 8, got 2',
      'milterd.limits.cpuMs: expected integer, got string "fast"',
      'milterd.macros.quit: unknown key',
      'milterd.macros.eom[1]: expected a macro name: one letter, digit or _ (i, j, _), or {name} ({auth_authen}), got "not a macro"',
      'milterd.optionsSchema.type: expected one of "array", "boolean", "integer", "null", "number", "object", "string", got "strin"',
      `milterd.entry: file not found: ${join(dir, 'src/main.ts')}`,
    ];
    assert.deepEqual(err.message.split('\n'), want.map((l) => prefix + l));
    assert.deepEqual(err.details, { plugin: 'bad-manifest', file, errors: want });
  });

  it('no-manifest: says the package is not a milterd plugin', async () => {
    const dir = fixture('no-manifest');
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', [
      `${join(dir, 'package.json')} (plugin "no-manifest"): milterd: missing: this package is not a milterd plugin`,
    ]);
  });

  it('a folder without package.json, or with broken JSON, names the folder', async () => {
    const empty = await scratch.write('empty', {});
    await rejectsWith(readManifest(empty), 'MILTERD_PLUGIN_MANIFEST', [
      `${join(empty, 'package.json')} (plugin folder "empty"): cannot read: ENOENT`,
    ]);
    const broken = await scratch.write('broken', { 'package.json': '{ "name": "broken", ' });
    await rejectsWith(readManifest(broken), 'MILTERD_PLUGIN_MANIFEST', [
      `${join(broken, 'package.json')} (plugin folder "broken"): not valid JSON: `,
    ]);
    const list = await scratch.write('list', { 'package.json': '[1, 2]' });
    await rejectsWith(readManifest(list), 'MILTERD_PLUGIN_MANIFEST', ['(plugin folder "list"): (top level): expected an object']);
  });

  it('name and version: npm name rules, semver versions', async () => {
    const dir = await plugin({ name: 'My Plugin', version: 'one', milterd: { sdk: '^0.1.0' } });
    const err = await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', []);
    assert.deepEqual(err.details?.errors, [
      'name: expected an npm package name (lower case, optionally @scope/name), got "My Plugin"',
      'version: expected a semver version such as 1.0.0, got "one"',
    ]);
    assert.match(err.message, /\(plugin "My Plugin"\): name: /);
    const dir2 = await plugin({ milterd: { sdk: '^0.1.0' } });
    const err2 = await rejectsWith(readManifest(dir2), 'MILTERD_PLUGIN_MANIFEST', [`(plugin folder "p${n}"): name: missing`]);
    assert.deepEqual(err2.details?.errors, ['name: missing', 'version: missing']);
  });

  it('sdk: must be a semver range', async () => {
    const dir = await plugin(pkgWith({ sdk: 'latest' }));
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', [
      '(plugin "test-plugin"): milterd.sdk: expected a semver range such as ^1.0.0, got "latest"',
    ]);
    const dir2 = await plugin(pkgWith({ sdk: '' }));
    await rejectsWith(readManifest(dir2), 'MILTERD_PLUGIN_MANIFEST', ['milterd.sdk: expected a non-empty string']);
  });

  it('milterd itself must be an object', async () => {
    const dir = await plugin({ name: 'x', version: '1.0.0', milterd: '^0.1.0' });
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', ['(plugin "x"): milterd: expected object, got string "^0.1.0"']);
  });

  it('lists: no duplicates', async () => {
    const dir = await plugin(pkgWith({ hooks: ['eom', 'eom'], actions: ['addHeader', 'addHeader'], capabilities: ['kv', 'kv'] }));
    const err = await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', []);
    assert.deepEqual(err.details?.errors, [
      'milterd.hooks: expected no duplicates, got ["eom","eom"]',
      'milterd.actions: expected no duplicates, got ["addHeader","addHeader"]',
      'milterd.capabilities: expected no duplicates, got ["kv","kv"]',
    ]);
  });

  it('limits: integers in range, cpuMs ≤ wallMs ≤ messageMs', async () => {
    const dir = await plugin(pkgWith({ limits: { memoryMb: 1e9, wallMs: 0, messageMs: 1.5 } }));
    const err = await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', []);
    assert.deepEqual(err.details?.errors, [
      'milterd.limits.memoryMb: expected a value <= 4096, got 1000000000',
      'milterd.limits.wallMs: expected a value >= 1, got 0',
      'milterd.limits.messageMs: expected integer, got number 1.5',
    ]);
    const dir2 = await plugin(pkgWith({ limits: { cpuMs: 2000 } }));
    await rejectsWith(readManifest(dir2), 'MILTERD_PLUGIN_MANIFEST', [
      'milterd.limits.cpuMs: expected at most wallMs (1000), got 2000: raise wallMs too',
    ]);
    const dir3 = await plugin(pkgWith({ limits: { wallMs: 8000 } }));
    await rejectsWith(readManifest(dir3), 'MILTERD_PLUGIN_MANIFEST', [
      'milterd.limits.wallMs: expected at most messageMs (5000), got 8000: raise messageMs too',
    ]);
  });

  it('macros: known stages, macro names only', async () => {
    const dir = await plugin(pkgWith({ macros: { envrcpt: ['{rcpt addr}', 'ab', '{}'], header: ['i'], eom: 'i' } }));
    const err = await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', []);
    const hint = 'expected a macro name: one letter, digit or _ (i, j, _), or {name} ({auth_authen})';
    assert.deepEqual(err.details?.errors, [
      'milterd.macros.header: unknown key',
      `milterd.macros.envrcpt[0]: ${hint}, got "{rcpt addr}"`,
      `milterd.macros.envrcpt[1]: ${hint}, got "ab"`,
      `milterd.macros.envrcpt[2]: ${hint}, got "{}"`,
      'milterd.macros.eom: expected array, got string "i"',
    ]);
  });

  it('optionsSchema: an object that is a valid JSON Schema and compiles', async () => {
    const dir = await plugin(pkgWith({ optionsSchema: [] }));
    await rejectsWith(readManifest(dir), 'MILTERD_PLUGIN_MANIFEST', ['milterd.optionsSchema: expected object, got an array']);
    const dir2 = await plugin(pkgWith({ optionsSchema: { type: 'object', properties: { n: { type: 'integer', minimum: 'one' } }, required: 'n' } }));
    const err = await rejectsWith(readManifest(dir2), 'MILTERD_PLUGIN_MANIFEST', []);
    assert.deepEqual(err.details?.errors, [
      'milterd.optionsSchema.required: expected array, got string "n"',
      'milterd.optionsSchema.properties.n.minimum: expected number, got string "one"',
    ]);
    const dir3 = await plugin(pkgWith({ optionsSchema: { $ref: '#/definitions/missing' } }));
    await rejectsWith(readManifest(dir3), 'MILTERD_PLUGIN_MANIFEST', [
      "milterd.optionsSchema: not a usable JSON Schema: can't resolve reference #/definitions/missing",
    ]);
  });

  it('reads: defaults to headers and body; body: false is kept', async () => {
    const m = await readManifest(await plugin(pkgWith({ reads: { body: false } })));
    assert.deepEqual(m.reads, { headers: true, body: false });
    await assert.rejects(readManifest(await plugin(pkgWith({ reads: { body: 'no' } }))), { code: 'MILTERD_PLUGIN_MANIFEST', message: /milterd\.reads\.body/ });
  });

  it('two plugins may publish schemas with the same $id', async () => {
    const schema = { $id: 'https://example.org/options', type: 'object' };
    const a = await readManifest(await plugin(pkgWith({ optionsSchema: schema })));
    const b = await readManifest(await plugin(pkgWith({ optionsSchema: schema })));
    assert.deepEqual(a.optionsSchema, b.optionsSchema);
  });
});

describe('checkSdkCompatibility', () => {
  const m = (sdk: string): PluginManifest =>
    Object.freeze({ name: 'p', version: '1.2.3', sdk, entry: '/x/index.js', actions: [], capabilities: [], limits: DEFAULT_PLUGIN_LIMITS, macros: {}, reads: { headers: true, body: true }, dir: '/x' });

  it('passes when the available version satisfies the range', () => {
    checkSdkCompatibility(m('^0.1.0'), '0.1.5');
    checkSdkCompatibility(m('>=0.1.0 <1'), '0.9.0');
    checkSdkCompatibility(m('*'), '3.0.0');
    checkSdkCompatibility(m('^1.0.0-beta.1'), '1.0.0-beta.2');
  });

  it('incompatible-sdk: names plugin, wanted range and available version', async () => {
    const manifest = await readManifest(fixture('incompatible-sdk'));
    assert.throws(
      () => checkSdkCompatibility(manifest, '0.1.0'),
      (err: unknown) => {
        assert.ok(isErrorCode(err, 'MILTERD_PLUGIN_SDK_INCOMPATIBLE'));
        assert.equal(
          err.message,
          `plugin "incompatible-sdk" 1.0.0 (${fixture('incompatible-sdk')}) wants @milterd/sdk ^9.0.0, but this milterd provides @milterd/sdk 0.1.0`,
        );
        assert.deepEqual(err.details, { plugin: 'incompatible-sdk', wanted: '^9.0.0', available: '0.1.0' });
        return true;
      },
    );
  });

  it('prereleases of the host SDK satisfy only ranges that name them', () => {
    assert.throws(() => checkSdkCompatibility(m('>=0.1.0'), '0.2.0-beta.1'), (e: unknown) => isErrorCode(e, 'MILTERD_PLUGIN_SDK_INCOMPATIBLE'));
    assert.throws(() => checkSdkCompatibility(m('^0.1.0'), '0.2.0'), (e: unknown) => isErrorCode(e, 'MILTERD_PLUGIN_SDK_INCOMPATIBLE'));
  });

  it('an invalid host version is a programming error, not a plugin error', () => {
    assert.throws(() => checkSdkCompatibility(m('*'), 'dev'), (e: unknown) => e instanceof TypeError && !(e instanceof MilterdError));
  });
});
