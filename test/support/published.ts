/**
 * milterd and @milterd/sdk as npm installs them from the registry, for tests of what people
 * outside this repository get: real `npm pack` tarballs, unpacked as real folders under a
 * project's node_modules (not symlinks into the checkout, whose real path is outside
 * node_modules and would hide what Node refuses there, such as stripping TypeScript types).
 *
 * milterd's tarball is packed from a staging folder holding the files `npm pack` would take
 * from the checkout, with dist/ freshly built (scripts/build.ts and tsconfig.build.json) rather
 * than whatever an earlier build left: so these tests always see the current sources, and
 * nothing in the checkout is rewritten under tests running next to them. The SDK is packed as
 * it is (its dist/ is built by npm install and is what every other test runs).
 *
 * The packages' own dependencies (isolated-vm, esbuild, pino, ...) are linked from this
 * checkout's node_modules: installing them from the registry would compile isolated-vm again.
 * @module
 */
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { buildDaemon } from '../../scripts/build.ts';

const exec = promisify(execFile);

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The two tarballs. */
export interface PackedTarballs {
  readonly milterd: string;
  readonly sdk: string;
  /** Paths inside milterd's tarball (without the leading `package/`). */
  readonly milterdFiles: readonly string[];
}

interface PackJson {
  filename: string;
  files: Array<{ path: string }>;
}

async function npmPack(args: string[], cwd: string): Promise<PackJson> {
  const { stdout } = await exec('npm', ['pack', '--ignore-scripts', '--json', ...args], { cwd, timeout: 120_000 });
  return (JSON.parse(stdout) as PackJson[])[0]!;
}

/** Packs milterd (fresh build) and the SDK into `scratch`. */
export async function packPublished(scratch: string): Promise<PackedTarballs> {
  const stage = await mkdtemp(join(scratch, 'stage-'));
  const listing = await npmPack(['--dry-run'], ROOT);
  for (const { path } of listing.files) {
    if (path.startsWith('dist/')) continue;
    await mkdir(dirname(join(stage, path)), { recursive: true });
    await cp(join(ROOT, path), join(stage, path));
  }
  await buildDaemon(join(stage, 'dist'));
  await exec(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(stage, 'dist/types')], {
    cwd: ROOT,
    timeout: 120_000,
  });
  const out = join(scratch, 'tarballs');
  await mkdir(out, { recursive: true });
  const milterd = await npmPack(['--pack-destination', out, stage], scratch);
  const sdk = await npmPack(['--pack-destination', out, join(ROOT, 'sdk')], scratch);
  return { milterd: join(out, milterd.filename), sdk: join(out, sdk.filename), milterdFiles: milterd.files.map((f) => f.path) };
}

/**
 * Installs the tarballs into `project`/node_modules as npm would (package folders unpacked from
 * the tarballs), with milterd's dependencies and `extra` packages linked from the checkout.
 */
export async function installPublished(project: string, packed: PackedTarballs, extra: readonly string[] = []): Promise<void> {
  const modules = join(project, 'node_modules');
  for (const [tgz, name] of [
    [packed.milterd, 'milterd'],
    [packed.sdk, '@milterd/sdk'],
  ] as const) {
    const to = join(modules, name);
    await mkdir(to, { recursive: true });
    await exec('tar', ['-xzf', tgz, '-C', to, '--strip-components=1'], { timeout: 60_000 });
  }
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  for (const dep of [...Object.keys(pkg.dependencies), ...extra]) {
    if (dep === '@milterd/sdk') continue;
    await mkdir(dirname(join(modules, dep)), { recursive: true });
    await symlink(join(ROOT, 'node_modules', dep), join(modules, dep));
  }
}
