/**
 * The packages as people outside this repository get them: milterd and @milterd/sdk packed by
 * npm and unpacked under a project's node_modules. An administrator runs the installed daemon;
 * a plugin author scaffolds a plugin with it, type-checks it and runs its test through
 * `@milterd/sdk/testing`, all with no file of this checkout on the path (Node refuses to strip
 * TypeScript types under node_modules, so this is what catches a published package that only
 * works from a checkout).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { installPublished, packPublished, ROOT, type PackedTarballs } from '../support/published.ts';

const exec = promisify(execFile);
const TIMEOUT = { timeout: 240_000 };

let scratch: string;
let packed: PackedTarballs;

before(async () => {
  scratch = await realpath(await mkdtemp(join(tmpdir(), 'milterd-published-')));
  packed = await packPublished(scratch);
});
after(() => rm(scratch, { recursive: true, force: true }));

/** Node as a user runs it: not a child of this test run, and without this repository's conditions. */
function userEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  delete env.NODE_OPTIONS;
  return env;
}

async function run(args: string[], cwd: string): Promise<{ code: number; out: string }> {
  return exec(process.execPath, args, { cwd, env: userEnv(), timeout: 120_000 }).then(
    (x) => ({ code: 0, out: x.stdout + x.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: `${e.stdout}${e.stderr}` }),
  );
}

test("milterd's tarball holds the built JavaScript, its declarations, the example configuration, plugins and templates, and no sources or tests", () => {
  const files = new Set(packed.milterdFiles);
  for (const f of [
    'package.json',
    'bin/milterd.js',
    'dist/cli/main.js',
    'dist/index.js',
    'dist/testing/index.js',
    'dist/sandbox/worker.js',
    'dist/types/src/index.d.ts',
    'dist/types/src/testing/index.d.ts',
    'config/default.yaml',
    'templates/plugin/package.json.tmpl',
    'plugins/inspect/package.json',
    'plugins/inspect/src/index.ts',
    'README.md',
  ]) {
    assert.ok(files.has(f), `${f} missing from the tarball`);
  }
  const unwanted = packed.milterdFiles.filter((f) => /^(src|test|bench|scripts|sdk)\//.test(f) || /^plugins\/[^/]+\/test\//.test(f));
  assert.deepEqual(unwanted, []);
});

test('the installed daemon: --version, and check loads the example chain in sandboxes forked from dist/', TIMEOUT, async () => {
  const project = join(scratch, 'site');
  await installPublished(project, packed);
  const bin = join(project, 'node_modules/milterd/bin/milterd.js');
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const v = await run([bin, '--version'], project);
  assert.equal(v.code, 0, v.out);
  assert.equal(v.out.trim(), pkg.version);
  const check = await run([bin, 'check'], project);
  assert.equal(check.code, 0, check.out);
  for (const p of ['recipient-policy', 'inspect', 'header-stamp']) assert.match(check.out, new RegExp(`@milterd/plugin-${p}@1\\.0\\.0`));
  assert.match(check.out, /SDK runtime: @milterd\/sdk 1\.0\.0/);
  assert.doesNotMatch(check.out, new RegExp(ROOT.replace(/[/.]/g, '\\$&') + '(src|plugins)'), 'nothing is loaded from the checkout');
});

test("a plugin author's project: plugin new, type-check, and its test through @milterd/sdk/testing pass with the installed packages", TIMEOUT, async () => {
  const project = join(scratch, 'author');
  const site = join(scratch, 'site-for-new');
  await installPublished(site, packed);
  const made = await run([join(site, 'node_modules/milterd/bin/milterd.js'), 'plugin', 'new', 'milterd-acme', '--dir', project], site);
  assert.equal(made.code, 0, made.out);
  // npm install of its devDependencies (milterd, @milterd/sdk, typescript).
  await installPublished(project, packed, ['typescript']);

  const tsc = join(project, 'node_modules/typescript/bin/tsc');
  const typecheck = await run([tsc, '-p', 'tsconfig.json'], project);
  assert.equal(typecheck.code, 0, typecheck.out);
  // The kit's declarations as an author's TypeScript test sees them.
  await writeFile(
    join(project, 'types-check.ts'),
    `import { loadTestPlugin, parseEml, type TestResult } from '@milterd/sdk/testing';
const p = await loadTestPlugin('.', { capabilities: ['log'] });
const r: TestResult = await p.run({ eml: 'Subject: x\\n\\nbody\\n' });
const verdict: string = r.verdict;
const n: number = parseEml('a: b\\n\\n').headers.length;
// @ts-expect-error -- run() wants a message
await p.run(42);
export { verdict, n };
`,
  );
  await writeFile(
    join(project, 'tsconfig.types.json'),
    JSON.stringify({
      compilerOptions: { target: 'es2024', lib: ['es2024'], types: [], module: 'nodenext', moduleResolution: 'nodenext', strict: true, noEmit: true },
      files: ['types-check.ts'],
    }),
  );
  await writeFile(join(project, 'package.json'), JSON.stringify({ ...JSON.parse(await readFile(join(project, 'package.json'), 'utf8')), type: 'module' }, null, 2));
  const types = await run([tsc, '-p', 'tsconfig.types.json'], project);
  assert.equal(types.code, 0, types.out);

  const t = await run(['--test', '--test-reporter=tap'], project);
  assert.equal(t.code, 0, t.out);
  assert.match(t.out, /# pass 2\b/);
  assert.match(t.out, /# fail 0\b/);
});
