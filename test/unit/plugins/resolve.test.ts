/**
 * Resolving a plugin spec from the configuration: folder paths (absolute or relative to the
 * configuration's folder), npm names in the plugin folder, then Node resolution; real paths
 * returned; MILTERD_PLUGIN_NOT_FOUND saying where it looked.
 */
import assert from 'node:assert/strict';
import { mkdir, realpath, symlink } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { resolvePlugin } from '../../../src/plugins/resolve.ts';
import { FIXTURES, fixture, rejectsWith, Scratch } from './plugin-test-helpers.ts';

const REPO = fileURLToPath(new URL('../../../', import.meta.url)).replace(/\/$/, '');
const scratch = new Scratch();
/** A package.json for a package called `name`. */
const pkg = (name: string) => ({ 'package.json': { name, version: '1.0.0', milterd: { sdk: '*' } } });

before(async () => {
  await scratch.setup();
  // root/
  //   etc/milterd/             baseDir (the configuration's folder)
  //   plugins/node_modules/    pluginDir: spf, @acme/dkim, shadowed
  //   node_modules/            found by Node resolution from baseDir: shadowed, hidden-pkg-json
  await mkdir(join(scratch.dir, 'etc/milterd'), { recursive: true });
  await scratch.write('plugins/node_modules/spf', pkg('spf'));
  await scratch.write('plugins/node_modules/@acme/dkim', pkg('@acme/dkim'));
  await scratch.write('plugins/node_modules/shadowed', pkg('shadowed'));
  await scratch.write('node_modules/shadowed', pkg('shadowed'));
  await scratch.write('node_modules/hidden-pkg-json', {
    'package.json': { name: 'hidden-pkg-json', version: '1.0.0', exports: { '.': './index.js' }, milterd: { sdk: '*' } },
    'index.js': 'export default {};\n',
  });
  await scratch.write('not-a-package', { 'README.md': '#' });
  await scratch.write('file-spec', { 'plugin.js': '' });
  // A workspace-style link: node_modules/linked → ../real/linked
  await scratch.write('real/linked', pkg('linked'));
  await symlink(join(scratch.dir, 'real/linked'), join(scratch.dir, 'node_modules/linked'));
});
after(() => scratch.cleanup());

const base = () => join(scratch.dir, 'etc/milterd');

describe('resolvePlugin: folder paths', () => {
  it('absolute path', async () => {
    assert.equal(await resolvePlugin(fixture('ok-ts'), { baseDir: '/nonexistent' }), fixture('ok-ts'));
  });

  it('./ and ../ paths relative to baseDir, normalised', async () => {
    assert.equal(await resolvePlugin('./ok-js', { baseDir: FIXTURES }), fixture('ok-js'));
    assert.equal(await resolvePlugin('./ok-js/', { baseDir: FIXTURES }), fixture('ok-js'));
    assert.equal(await resolvePlugin('../plugins/ok-js', { baseDir: FIXTURES }), fixture('ok-js'));
    assert.equal(await resolvePlugin('.', { baseDir: fixture('ok-ts') }), fixture('ok-ts'));
    assert.equal(await resolvePlugin('..', { baseDir: join(fixture('ok-ts'), 'src') }), fixture('ok-ts'));
    const rel = relative(REPO, fixture('ok-ts'));
    assert.equal(await resolvePlugin(`./${rel}`, { baseDir: REPO }), fixture('ok-ts'));
  });

  it('a path never falls back to the plugin folder or Node resolution', async () => {
    await rejectsWith(resolvePlugin('./spf', { baseDir: base(), pluginDir: '../../plugins' }), 'MILTERD_PLUGIN_NOT_FOUND', [
      `plugin "./spf" not found: ${join(base(), 'spf')}: no such folder`,
    ]);
  });

  it('refuses a folder without package.json, and a file', async () => {
    await rejectsWith(resolvePlugin('../../not-a-package', { baseDir: base() }), 'MILTERD_PLUGIN_NOT_FOUND', [
      `plugin "../../not-a-package" not found: ${join(scratch.dir, 'not-a-package')}: no package.json in it`,
    ]);
    const file = join(scratch.dir, 'file-spec/plugin.js');
    await rejectsWith(resolvePlugin(file, { baseDir: base() }), 'MILTERD_PLUGIN_NOT_FOUND', [
      `plugin ${JSON.stringify(file)} not found: ${file}: not a folder`,
    ]);
  });

  it('returns the real path of a symlinked folder', async () => {
    assert.equal(await resolvePlugin('../../node_modules/linked', { baseDir: base() }), await realpath(join(scratch.dir, 'real/linked')));
  });
});

describe('resolvePlugin: npm package names', () => {
  it('looks in pluginDir/node_modules first (pluginDir relative to baseDir, or absolute)', async () => {
    const want = join(scratch.dir, 'plugins/node_modules/spf');
    assert.equal(await resolvePlugin('spf', { baseDir: base(), pluginDir: '../../plugins' }), await realpath(want));
    assert.equal(await resolvePlugin('spf', { baseDir: '/', pluginDir: join(scratch.dir, 'plugins') }), await realpath(want));
  });

  it('finds scoped packages', async () => {
    assert.equal(
      await resolvePlugin('@acme/dkim', { baseDir: base(), pluginDir: '../../plugins' }),
      await realpath(join(scratch.dir, 'plugins/node_modules/@acme/dkim')),
    );
  });

  it('prefers the plugin folder over Node resolution', async () => {
    assert.equal(
      await resolvePlugin('shadowed', { baseDir: base(), pluginDir: '../../plugins' }),
      await realpath(join(scratch.dir, 'plugins/node_modules/shadowed')),
    );
    assert.equal(await resolvePlugin('shadowed', { baseDir: base() }), await realpath(join(scratch.dir, 'node_modules/shadowed')));
  });

  it('then Node resolution from baseDir, walking up node_modules folders', async () => {
    assert.equal(
      await resolvePlugin('shadowed', { baseDir: base(), pluginDir: '../../nowhere' }),
      await realpath(join(scratch.dir, 'node_modules/shadowed')),
    );
  });

  it('finds a package whose exports hide package.json', async () => {
    assert.equal(await resolvePlugin('hidden-pkg-json', { baseDir: base() }), await realpath(join(scratch.dir, 'node_modules/hidden-pkg-json')));
  });

  it('returns real paths for linked packages (npm workspaces, npm link)', async () => {
    assert.equal(await resolvePlugin('linked', { baseDir: base() }), await realpath(join(scratch.dir, 'real/linked')));
    // The repository's own workspace link: node_modules/@milterd/sdk → sdk/
    assert.equal(await resolvePlugin('@milterd/sdk', { baseDir: REPO }), join(REPO, 'sdk'));
  });

  it('not installed: names the spec and every place it looked', async () => {
    const err = await rejectsWith(resolvePlugin('@acme/nope', { baseDir: base(), pluginDir: '../../plugins' }), 'MILTERD_PLUGIN_NOT_FOUND', [
      'plugin "@acme/nope" not found: looked in ',
      join(scratch.dir, 'plugins/node_modules/@acme/nope'),
      `, then Node resolution from ${base()} (`,
      join(base(), 'node_modules/@acme/nope'),
      join(scratch.dir, 'node_modules/@acme/nope'),
    ]);
    assert.deepEqual(err.details, { plugin: '@acme/nope' });
  });

  it('without pluginDir, only Node resolution is tried', async () => {
    const err = await rejectsWith(resolvePlugin('spf', { baseDir: base() }), 'MILTERD_PLUGIN_NOT_FOUND', [
      `plugin "spf" not found: looked in Node resolution from ${base()} (${join(base(), 'node_modules/spf')}`,
    ]);
    assert.ok(!err.message.includes('plugins/node_modules'), err.message);
  });

  it('a spec that is neither a path nor a package name says how to write a path', async () => {
    for (const spec of ['plugins/spf', 'My Plugin', 'Upper', '', '@scope', '~/plugins/x']) {
      await rejectsWith(resolvePlugin(spec, { baseDir: base() }), 'MILTERD_PLUGIN_NOT_FOUND', [
        `plugin ${JSON.stringify(spec)} not found: it is neither a path (start it with /, ./ or ../) nor an npm package name`,
      ]);
    }
  });
});
