/**
 * Builds the SDK's JavaScript: src/index.ts and everything it imports bundled into ONE
 * self-contained ES module, dist/index.js, which milterd loads into every plugin isolate with
 * isolated-vm's compileModule (no resolver for relative imports there). Fails if the output
 * imports anything. Also emits dist/testing.js (a re-export of milterd/testing).
 * Declarations come from `tsc -p tsconfig.build.json` (npm run build does both).
 *
 * Needs only esbuild, a runtime dependency of milterd, so a production install can run it.
 * @module
 */
import { fileURLToPath } from 'node:url';
import { build, type BuildOptions } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));

/** esbuild options of the runtime bundle. */
export const RUNTIME_BUILD: BuildOptions = Object.freeze({
  absWorkingDir: root,
  entryPoints: ['src/index.ts'],
  bundle: true,
  format: 'esm',
  // Neither node nor browser: an isolate has only V8's built-ins.
  platform: 'neutral',
  target: 'es2022',
  legalComments: 'none',
  logLevel: 'warning',
});

/** Builds the runtime bundle to `outfile` (default sdk/dist/index.js) and returns its path. */
export async function buildRuntime(outfile: string = fileURLToPath(new URL('../dist/index.js', import.meta.url))): Promise<string> {
  const result = await build({ ...RUNTIME_BUILD, outfile, metafile: true });
  for (const [file, out] of Object.entries(result.metafile.outputs)) {
    if (out.imports.length > 0) {
      throw new Error(`${file} imports ${out.imports.map((i) => i.path).join(', ')}: the runtime must be one self-contained module`);
    }
  }
  return outfile;
}

/** Builds dist/testing.js: the subpath re-export, left unbundled. */
async function buildTesting(): Promise<void> {
  await build({ absWorkingDir: root, entryPoints: ['src/testing.ts'], format: 'esm', platform: 'neutral', outfile: 'dist/testing.js', logLevel: 'warning' });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await buildRuntime();
  await buildTesting();
}
