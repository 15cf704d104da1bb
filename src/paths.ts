/**
 * Where milterd's own files are. The same code runs from the TypeScript sources in a checkout
 * (src/, Node's type stripping) and from the published build (dist/, bundled by
 * scripts/build.ts, because Node refuses to strip types under node_modules), and the two sit
 * at different depths: so paths are taken from the package root, found by walking up to
 * milterd's package.json, never from `import.meta.url` plus a fixed number of `..`.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown }).name === 'milterd') return dir;
      } catch {
        // not a package.json we can read: keep walking
      }
    }
    if (dirname(dir) === dir) throw new Error(`milterd's package.json not found above ${from}`);
  }
}

/** The milterd package's root directory (package.json, config/, templates/, plugins/). */
export const PACKAGE_ROOT: string = findRoot(dirname(fileURLToPath(import.meta.url)));

/** milterd's own version (package.json). */
export const VERSION: string = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** True when running the bundled JavaScript of dist/, false when running the sources. */
export const BUILT: boolean = import.meta.url.endsWith('.js');
