/**
 * Builds the JavaScript that the published `milterd` package runs (`npm run build`; `prepare`,
 * i.e. npm install in a checkout, and `prepack` run it too). A checkout runs the TypeScript
 * sources directly; an installed copy cannot, because Node refuses to strip types under node_modules
 * (ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING). That is what broke `@milterd/sdk/testing`
 * for plugin authors outside this repository.
 *
 * One esbuild pass over the entry points, with shared code split into chunks:
 * - dist/cli/main.js       the command line (bin/milterd.js runs it when src/ is absent),
 * - dist/index.js          `milterd` as a library,
 * - dist/testing/index.js  `milterd/testing`, which `@milterd/sdk/testing` re-exports,
 * - dist/sandbox/worker.js the sandbox process the supervisor forks.
 * npm packages stay imports (they are dependencies); relative imports, including the constants
 * shared with the SDK in sdk/src/protocol.ts, are bundled in. Declarations of the two library
 * entry points come from `tsc -p tsconfig.build.json` (dist/types).
 * @module
 */
import { rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Bundles the entry points into `outdir` (relative to the package root, or absolute), emptied first. */
export async function buildDaemon(outdir = 'dist'): Promise<void> {
  outdir = resolve(root, outdir);
  await rm(outdir, { recursive: true, force: true });
  await build({
    absWorkingDir: root,
    entryPoints: ['src/cli/main.ts', 'src/index.ts', 'src/testing/index.ts', 'src/sandbox/worker.ts'],
    outbase: 'src',
    outdir,
    entryNames: '[dir]/[name]',
    chunkNames: 'chunks/[name]-[hash]',
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node24',
    packages: 'external',
    sourcemap: 'linked',
    legalComments: 'none',
    logLevel: 'warning',
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await buildDaemon();
