/**
 * Bundling plugins: one ES module with dependencies inlined and only `@milterd/sdk` imported,
 * inline source maps, the list of input files, and every refusal (Node built-ins, isolated-vm,
 * dynamic import, import.meta, syntax errors, missing modules) with its code, the plugin's name
 * and the file:line that caused it.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { bundlePlugin, type PluginBundle } from '../../../src/plugins/bundle.ts';
import { readManifest, type PluginManifest } from '../../../src/plugins/manifest.ts';
import { fixture, rejectsWith, Scratch } from './plugin-test-helpers.ts';

const scratch = new Scratch();
before(() => scratch.setup());
after(() => scratch.cleanup());

let n = 0;
/** A throw-away plugin package `tmp-N` with `files` (src/index.ts is its entry by default). */
async function tmpPlugin(files: Record<string, string | object>): Promise<PluginManifest> {
  n += 1;
  const dir = await scratch.write(`tmp-${n}`, {
    'package.json': { name: `tmp-${n}`, version: '1.0.0', type: 'module', milterd: { sdk: '*' } },
    ...files,
  });
  return readManifest(dir);
}

/** Every module specifier the code imports statically or dynamically. */
function specifiers(code: string): string[] {
  const out: string[] = [];
  for (const m of code.matchAll(/^\s*(?:import|export)\b[^'"]*?\bfrom\s*["']([^"']+)["']/gm)) out.push(m[1]!);
  for (const m of code.matchAll(/^\s*import\s*["']([^"']+)["']/gm)) out.push(m[1]!);
  for (const m of code.matchAll(/\bimport\s*\(/g)) out.push(`import( at ${m.index}`);
  return out;
}

/** The inline source map of a bundle. */
function sourceMap(code: string): { sources: string[]; sourcesContent?: unknown } {
  const m = /\/\/# sourceMappingURL=data:application\/json;base64,([A-Za-z0-9+/=]+)\s*$/.exec(code);
  assert.ok(m, 'no inline source map');
  return JSON.parse(Buffer.from(m[1]!, 'base64').toString('utf8')) as { sources: string[] };
}

/**
 * Runs a bundle as an ES module in this process, with a stand-in SDK whose definePlugin returns
 * the plugin object, and calls its eom hook with a message that records added headers.
 */
async function runEom(code: string): Promise<Array<[string, string]>> {
  const sdk = `data:text/javascript,${encodeURIComponent('export const definePlugin = (p) => p;')}`;
  const linked = code.replaceAll('"@milterd/sdk"', JSON.stringify(sdk));
  const mod = (await import(`data:text/javascript;base64,${Buffer.from(linked).toString('base64')}`)) as {
    default: { eom(ctx: unknown, msg: unknown): Promise<void> };
  };
  const added: Array<[string, string]> = [];
  await mod.default.eom({}, { addHeader: (name: string, value: string) => added.push([name, value]) });
  return added;
}

describe('bundlePlugin: plugins that bundle', () => {
  let okTs: PluginBundle;
  before(async () => {
    okTs = await bundlePlugin(await readManifest(fixture('ok-ts')));
  });

  it('ok-ts: one ES module, tiny-dep inlined, @milterd/sdk the only import', () => {
    assert.equal(typeof okTs.code, 'string');
    assert.deepEqual(specifiers(okTs.code), ['@milterd/sdk']);
    assert.match(okTs.code, /function greeting\(word\)/, 'tiny-dep is inlined');
    assert.match(okTs.code, /^export \{\n\s+index_default as default\n\};$/m);
    assert.deepEqual(okTs.warnings, []);
  });

  it('ok-ts: the bundle runs as an ES module and the plugin works', async () => {
    assert.deepEqual(await runEom(okTs.code), [['X-Ok', 'tiny-dep:yes']]);
  });

  it('ok-ts: files lists every input, absolute (for the reload watcher)', () => {
    assert.deepEqual(
      [...okTs.files].sort(),
      [join(fixture('ok-ts'), 'node_modules/tiny-dep/index.js'), join(fixture('ok-ts'), 'src/index.ts')],
    );
  });

  it('ok-ts: inline source map with paths relative to the package root, without sources', () => {
    const map = sourceMap(okTs.code);
    assert.deepEqual([...map.sources].sort(), ['node_modules/tiny-dep/index.js', 'src/index.ts']);
    assert.equal(map.sourcesContent, undefined);
  });

  it('ok-js: a JS plugin with its entry from main', async () => {
    const b = await bundlePlugin(await readManifest(fixture('ok-js')));
    assert.deepEqual(specifiers(b.code), ['@milterd/sdk']);
    assert.deepEqual(b.files, [join(fixture('ok-js'), 'index.js')]);
    assert.deepEqual(await runEom(b.code), [['X-Ok', 'yes']]);
  });

  it('CommonJS and JSON dependencies are inlined; process.env.NODE_ENV reads "production"', async () => {
    const m = await tmpPlugin({
      'src/index.ts': [
        "import { definePlugin } from '@milterd/sdk';",
        "import cjs from 'cjs-dep';",
        "import data from './data.json';",
        'export default definePlugin({ async eom(ctx: unknown, msg: any) { msg.addHeader(cjs.name + data.n, process.env.NODE_ENV); } });',
      ].join('\n'),
      'src/data.json': { n: 1 },
      'node_modules/cjs-dep/package.json': { name: 'cjs-dep', version: '1.0.0', main: 'lib.js' },
      'node_modules/cjs-dep/lib.js': "exports.name = 'cjs';\n",
    });
    const b = await bundlePlugin(m);
    assert.deepEqual(specifiers(b.code), ['@milterd/sdk']);
    assert.deepEqual(await runEom(b.code), [['cjs1', 'production']]);
    assert.equal(b.files.length, 3);
  });

  it('prefers a dependency\'s "module" field and the milterd export condition', async () => {
    const m = await tmpPlugin({
      'src/index.ts': "import a from 'fields';\nimport b from 'conds';\nexport default { async eom(c: unknown, msg: any) { msg.addHeader(a, b); } };\n",
      'node_modules/fields/package.json': { name: 'fields', version: '1.0.0', main: 'main.js', module: 'esm.js' },
      'node_modules/fields/main.js': "module.exports = 'main';\n",
      'node_modules/fields/esm.js': "export default 'module';\n",
      'node_modules/conds/package.json': {
        name: 'conds',
        version: '1.0.0',
        exports: { node: './node.js', milterd: './milterd.js', default: './default.js' },
      },
      'node_modules/conds/node.js': "export default 'node';\n",
      'node_modules/conds/milterd.js': "export default 'milterd';\n",
      'node_modules/conds/default.js': "export default 'default';\n",
    });
    assert.deepEqual(await runEom((await bundlePlugin(m)).code), [['module', 'milterd']]);
  });

  it('returns esbuild warnings as file:line:column: text', async () => {
    const m = await tmpPlugin({ 'src/index.ts': "const x: unknown = 1;\nif (typeof x === 'strng') x;\nexport default {};\n" });
    const b = await bundlePlugin(m);
    assert.deepEqual(b.warnings, ['src/index.ts:2:18: The "typeof" operator will never evaluate to "strng"']);
  });

  it("uses the plugin's own tsconfig.json, never one from a folder above it", async () => {
    // A tsconfig.json above the plugin maps "magic"; esbuild would otherwise pick it up.
    await scratch.write('nest', {
      'tsconfig.json': { compilerOptions: { paths: { magic: ['./nested/src/magic.ts'] } } },
      'nested/package.json': { name: 'nested', version: '1.0.0', milterd: { sdk: '*' } },
      'nested/src/index.ts': "import m from 'magic';\nexport default m;\n",
      'nested/src/magic.ts': 'export default 1;\n',
    });
    await rejectsWith(bundlePlugin(await readManifest(join(scratch.dir, 'nest/nested'))), 'MILTERD_PLUGIN_BUNDLE', [
      'src/index.ts:1:15: Could not resolve "magic"',
    ]);
    const own = await tmpPlugin({
      'tsconfig.json': { compilerOptions: { paths: { magic: ['./src/magic.ts'] } } },
      'src/index.ts': "import m from 'magic';\nexport default { m };\n",
      'src/magic.ts': 'export default 1;\n',
    });
    const b = await bundlePlugin(own);
    assert.equal(b.files.length, 2);
  });
});

describe('bundlePlugin: forbidden imports (MILTERD_PLUGIN_FORBIDDEN_IMPORT)', () => {
  it('uses-fs: node:fs, with the importing file:line:column', async () => {
    const err = await rejectsWith(bundlePlugin(await readManifest(fixture('uses-fs'))), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', []);
    assert.equal(
      err.message,
      `plugin "uses-fs" (${fixture('uses-fs')}): src/index.ts:4:30: imports "node:fs", a Node built-in: plugins run in an isolate without Node APIs (use the host services of @milterd/sdk)`,
    );
    assert.equal(err.details?.plugin, 'uses-fs');
  });

  it('uses-builtin-bare: a bare built-in name ("crypto")', async () => {
    await rejectsWith(bundlePlugin(await readManifest(fixture('uses-builtin-bare'))), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', [
      `plugin "uses-builtin-bare" (${fixture('uses-builtin-bare')}): src/index.ts:4:28: imports "crypto", a Node built-in`,
    ]);
  });

  it('built-in subpaths and node:-only modules, every one listed', async () => {
    const m = await tmpPlugin({
      'src/index.ts': "import 'fs/promises';\nimport 'node:sqlite';\nimport 'node:nope';\nexport default {};\n",
    });
    const err = await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', []);
    const lines = err.message.split('\n');
    assert.equal(lines.length, 3, err.message);
    assert.ok(lines.some((l) => l.includes('src/index.ts:1:8: imports "fs/promises"')), err.message);
    assert.ok(lines.some((l) => l.includes('src/index.ts:2:8: imports "node:sqlite"')), err.message);
    assert.ok(lines.some((l) => l.includes('src/index.ts:3:8: imports "node:nope"')), err.message);
  });

  it('a dependency that requires a built-in names the dependency file and line', async () => {
    const m = await tmpPlugin({
      'src/index.ts': "import dep from 'needs-os';\nexport default { dep };\n",
      'node_modules/needs-os/package.json': { name: 'needs-os', version: '1.0.0', main: 'index.js' },
      'node_modules/needs-os/index.js': "'use strict';\nmodule.exports = require('os').hostname();\n",
    });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', [
      `plugin "tmp-${n}" (${m.dir}): node_modules/needs-os/index.js:2:26: imports "os", a Node built-in`,
    ]);
  });

  it('isolated-vm and its subpaths', async () => {
    const m = await tmpPlugin({ 'src/index.ts': "import ivm from 'isolated-vm';\nexport default { ivm };\n" });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', [
      'src/index.ts:1:17: imports "isolated-vm", the sandbox library itself, which plugins must not reach',
    ]);
    const m2 = await tmpPlugin({ 'src/index.ts': "export * from 'isolated-vm/lib/x.js';\nexport default {};\n" });
    await rejectsWith(bundlePlugin(m2), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', ['imports "isolated-vm/lib/x.js"']);
  });

  it('@milterd/sdk subpaths, and require() of @milterd/sdk', async () => {
    const m = await tmpPlugin({ 'src/index.ts': "import { x } from '@milterd/sdk/internal';\nexport default { x };\n" });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', [
      'src/index.ts:1:19: imports "@milterd/sdk/internal", a subpath of @milterd/sdk: the sandbox provides only "@milterd/sdk" itself',
    ]);
    const m2 = await tmpPlugin({
      'src/index.ts': "import dep from 'cjs-sdk';\nexport default dep;\n",
      'node_modules/cjs-sdk/package.json': { name: 'cjs-sdk', version: '1.0.0', main: 'index.js' },
      'node_modules/cjs-sdk/index.js': "module.exports = require('@milterd/sdk');\n",
    });
    await rejectsWith(bundlePlugin(m2), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', [
      'node_modules/cjs-sdk/index.js:1:26: require-call of "@milterd/sdk": the sandbox links @milterd/sdk only to import statements',
    ]);
  });

  it('dynamic-import: import() of a literal path, even a local file', async () => {
    await rejectsWith(bundlePlugin(await readManifest(fixture('dynamic-import'))), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', [
      `plugin "dynamic-import" (${fixture('dynamic-import')}): src/index.ts:7:33: dynamic import("./helper.ts"): the sandbox does not support import(); use a static import`,
    ]);
  });

  it('import() of a computed name, located through the source map', async () => {
    const m = await tmpPlugin({
      'src/index.ts': "const name: string = ['./a', '.js'].join('');\n\nexport const later = () =>\n  import(name);\nexport default {};\n",
    });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_FORBIDDEN_IMPORT', [
      `plugin "tmp-${n}" (${m.dir}): src/index.ts:4:`,
      'dynamic import() of a computed module name: the sandbox does not support import()',
    ]);
  });
});

describe('bundlePlugin: other failures (MILTERD_PLUGIN_BUNDLE)', () => {
  it('syntax-error: file:line:column and esbuild\'s text', async () => {
    const err = await rejectsWith(bundlePlugin(await readManifest(fixture('syntax-error'))), 'MILTERD_PLUGIN_BUNDLE', []);
    assert.equal(err.message, `plugin "syntax-error" (${fixture('syntax-error')}): src/index.js:8:3: Expected ")" but found "}"`);
  });

  it('a missing dependency', async () => {
    const m = await tmpPlugin({ 'src/index.ts': "import { thing } from 'not-installed';\nexport default { thing };\n" });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_BUNDLE', [
      `plugin "tmp-${n}" (${m.dir}): src/index.ts:1:23: Could not resolve "not-installed"`,
    ]);
  });

  it('import.meta, in the plugin or in a dependency', async () => {
    const m = await tmpPlugin({ 'src/index.ts': 'export const url = import.meta.url;\nexport default {};\n' });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_BUNDLE', [
      'src/index.ts:1:20: uses import.meta, which modules in the sandbox do not have',
    ]);
    const m2 = await tmpPlugin({
      'src/index.ts': "import { u } from 'meta-dep';\nexport default { u };\n",
      'node_modules/meta-dep/package.json': { name: 'meta-dep', version: '1.0.0', type: 'module', main: 'index.js' },
      'node_modules/meta-dep/index.js': '\nexport const u = new URL(".", import.meta.url);\n',
    });
    await rejectsWith(bundlePlugin(m2), 'MILTERD_PLUGIN_BUNDLE', [
      'node_modules/meta-dep/index.js:2:31: uses import.meta, which modules in the sandbox do not have',
    ]);
  });

  it('no default export', async () => {
    const m = await tmpPlugin({ 'src/index.ts': 'export const plugin = {};\n' });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_BUNDLE', [
      `plugin "tmp-${n}" (${m.dir}): src/index.ts: no default export (export default definePlugin({ ... }))`,
    ]);
  });

  it('lists the first five errors and counts the rest', async () => {
    const imports = Array.from({ length: 7 }, (_, i) => `import m${i} from 'missing-${i}';`).join('\n');
    const m = await tmpPlugin({ 'src/index.ts': `${imports}\nexport default { m0, m1, m2, m3, m4, m5, m6 };\n` });
    const err = await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_BUNDLE', []);
    const lines = err.message.split('\n');
    assert.equal(lines.length, 6, err.message);
    assert.equal(lines[5], `plugin "tmp-${n}" (${m.dir}): (2 more errors)`);
    assert.ok(lines.slice(0, 5).every((l) => /src\/index\.ts:\d+:16: Could not resolve "missing-\d"$/.test(l)), err.message);
  });

  it('an entry file esbuild has no loader for', async () => {
    const m = await tmpPlugin({
      'package.json': { name: 'wasm', version: '1.0.0', milterd: { sdk: '*', entry: 'plugin.wasm' } },
      'plugin.wasm': '\0asm',
    });
    await rejectsWith(bundlePlugin(m), 'MILTERD_PLUGIN_BUNDLE', ['plugin "wasm"', 'No loader is configured for ".wasm" files']);
  });
});
