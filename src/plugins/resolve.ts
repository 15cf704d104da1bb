/**
 * Finding a plugin's package root from how the configuration names it: a folder path, or an
 * npm package name looked up in the plugin folder first, then by Node's own resolution from the
 * configuration's folder. The result is a real path (symlinks resolved, as npm workspaces and
 * `npm link` create them), so the bundler and the file watcher see the same paths.
 * @module
 */
import { realpath, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { MilterdError } from '../errors.ts';

/** Where to look. */
export interface ResolveOptions {
  /** Folder relative paths and Node resolution start from (the configuration file's folder). */
  readonly baseDir: string;
  /** Folder plugins are installed into (`pluginDir/node_modules/<name>`); relative to baseDir. */
  readonly pluginDir?: string;
}

/** npm package names, scope included (validate-npm-package-name's rules for new names). */
const NPM_NAME = /^(?:@[a-z0-9-~][a-z0-9-._~]*\/)?[a-z0-9-~][a-z0-9-._~]*$/;

/** True when `spec` is a path rather than a package name (Node's rule for specifiers). */
function isPathSpec(spec: string): boolean {
  return isAbsolute(spec) || spec === '.' || spec === '..' || spec.startsWith('./') || spec.startsWith('../');
}

/** The absolute package root of a plugin. Throws MILTERD_PLUGIN_NOT_FOUND naming where it looked. */
export async function resolvePlugin(spec: string, opts: ResolveOptions): Promise<string> {
  const baseDir = resolve(opts.baseDir);
  if (isPathSpec(spec)) {
    const dir = resolve(baseDir, spec);
    const problem = await packageProblem(dir);
    if (problem !== undefined) notFound(spec, `${dir}: ${problem}`);
    return realpath(dir);
  }
  if (spec.length > 214 || !NPM_NAME.test(spec)) {
    notFound(spec, 'it is neither a path (start it with /, ./ or ../) nor an npm package name');
  }

  const looked: string[] = [];
  if (opts.pluginDir !== undefined) {
    const dir = join(resolve(baseDir, opts.pluginDir), 'node_modules', spec);
    looked.push(dir);
    if ((await packageProblem(dir)) === undefined) return realpath(dir);
  }

  // createRequire wants a file: a directory path would be read as a file in its parent.
  const require = createRequire(join(baseDir, '__milterd_resolve__.js'));
  try {
    return await realpath(resolve(require.resolve(`${spec}/package.json`), '..'));
  } catch {
    // Not installed, or its `exports` hides ./package.json (ERR_PACKAGE_PATH_NOT_EXPORTED):
    // walk the node_modules folders Node would, looking for the package folder itself.
  }
  const paths = require.resolve.paths(spec) ?? [];
  for (const p of paths) {
    const dir = join(p, spec);
    if ((await packageProblem(dir)) === undefined) return realpath(dir);
  }
  looked.push(`Node resolution from ${baseDir} (${paths.map((p) => join(p, spec)).join(', ')})`);
  notFound(spec, `looked in ${looked.join(', then ')}`);
}

/** Why `dir` is not a package root, or undefined when it is one. */
async function packageProblem(dir: string): Promise<string | undefined> {
  try {
    if (!(await stat(dir)).isDirectory()) return 'not a folder';
  } catch {
    return 'no such folder';
  }
  try {
    if (!(await stat(join(dir, 'package.json'))).isFile()) return 'no package.json in it';
  } catch {
    return 'no package.json in it';
  }
  return undefined;
}

function notFound(spec: string, why: string): never {
  throw new MilterdError('MILTERD_PLUGIN_NOT_FOUND', `plugin ${JSON.stringify(spec)} not found: ${why}`, { details: { plugin: spec } });
}
