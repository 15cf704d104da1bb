/**
 * docs/plugin-authoring.md stays true: its package.json and tsconfig.json (section 1) and its
 * example plugins (sections 2, 6 and 8) type-check together with the author's tsc, its test
 * (section 10) passes against its greylisting plugin when run from another folder, and its
 * chain entry (section 11) loads that plugin with the options it shows.
 *
 * The one liberty taken: the test imports the kit from this checkout's source instead of
 * `@milterd/sdk/testing` (published.test.ts covers that import from packed packages).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { loadTestChain } from '../../src/testing/index.ts';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const DOC = join(ROOT, 'docs/plugin-authoring.md');

/** The fenced code blocks of each numbered section ("## 8. Example: greylisting" → 8). */
async function sections(): Promise<Map<number, { lang: string; code: string }[]>> {
  const text = await readFile(DOC, 'utf8');
  const out = new Map<number, { lang: string; code: string }[]>();
  let current = 0;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const h = /^## (\d+)\. /.exec(lines[i]!);
    if (h) current = Number(h[1]);
    else if (/^## /.test(lines[i]!)) current = 0;
    const f = /^```(\w*)$/.exec(lines[i]!);
    if (!f) continue;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i] !== '```'; i++) body.push(lines[i]!);
    if (current > 0) out.set(current, [...(out.get(current) ?? []), { lang: f[1] ?? '', code: `${body.join('\n')}\n` }]);
  }
  return out;
}

function block(s: Map<number, { lang: string; code: string }[]>, section: number, lang: string, nth = 0): string {
  const b = (s.get(section) ?? []).filter((x) => x.lang === lang)[nth];
  assert.ok(b, `section ${section} of ${DOC} has no ${lang} block #${nth + 1}`);
  return b.code;
}

test('docs/plugin-authoring.md: the walk-through type-checks, its test passes, its chain entry loads', { timeout: 120_000 }, async (t) => {
  const s = await sections();
  const dir = await mkdtemp(join(tmpdir(), 'milterd-authoring-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const pkg = JSON.parse(block(s, 1, 'json', 0)) as { milterd: { actions: string[] }; scripts?: Record<string, string> };
  assert.equal(pkg.scripts?.test, 'node --test');
  await writeFile(join(dir, 'package.json'), JSON.stringify(pkg, null, 2));
  await writeFile(join(dir, 'tsconfig.json'), block(s, 1, 'json', 1));
  await mkdir(join(dir, 'src'));
  await mkdir(join(dir, 'test'));
  await mkdir(join(dir, 'node_modules/@milterd'), { recursive: true });
  await symlink(join(ROOT, 'sdk'), join(dir, 'node_modules/@milterd/sdk'));
  await writeFile(join(dir, 'src/index.ts'), block(s, 8, 'ts'));
  await writeFile(join(dir, 'src/first.ts'), block(s, 2, 'ts'));
  await writeFile(join(dir, 'src/state.ts'), block(s, 6, 'ts'));

  // The author's type check (section 1's tsconfig: the sandbox's globals only).
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  const checked = await run(process.execPath, [tsc, '-p', join(dir, 'tsconfig.json')], { cwd: dir }).then(
    () => '',
    (err: { stdout?: string; stderr?: string }) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
  );
  assert.equal(checked, '', 'tsc -p tsconfig.json');

  // Section 10's test, started from another folder (the kit loads the package root, not the cwd).
  const kit = pathToFileURL(join(ROOT, 'src/testing/index.ts')).href;
  const testCode = block(s, 10, 'ts');
  assert.match(testCode, /from '@milterd\/sdk\/testing'/);
  await writeFile(join(dir, 'test/greylist.test.ts'), testCode.replace("'@milterd/sdk/testing'", `'${kit}'`));
  // Without NODE_TEST_CONTEXT, which would make the child report to this runner instead.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const r = await run(process.execPath, ['--conditions=milterd-source', '--test', join(dir, 'test/greylist.test.ts')], { cwd: tmpdir(), env, timeout: 60_000 }).then(
    (o) => ({ code: 0, out: o.stdout + o.stderr }),
    (err: { code?: number; stdout?: string; stderr?: string }) => ({ code: err.code ?? 1, out: `${err.stdout ?? ''}${err.stderr ?? ''}` }),
  );
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /ℹ pass 1/);

  // Section 11's chain entry, pointed at the plugin: its options pass the manifest's schema.
  const yaml = parse(block(s, 11, 'yaml')) as { chain: { plugin: string }[] };
  const entry = { ...yaml.chain[0]!, plugin: dir };
  const chain = await loadTestChain([entry] as Parameters<typeof loadTestChain>[0]);
  t.after(() => chain.close());
  const m = await chain.run({ from: 'alice@example.org', rcpts: ['bob@example.net'], client: { address: '198.51.100.7' } });
  assert.equal(m.rcpts[0]?.verdict, 'tempfail');
});
