/**
 * `milterd plugin new`: a new TypeScript plugin package from the templates in templates/plugin/.
 * Every template file ends in `.tmpl` (so no tool of this repository mistakes it for its own
 * source, test or package) and may use `{{name}}`, `{{shortName}}`, `{{headerName}}`,
 * `{{sdkRange}}`, `{{milterdRange}}` and `{{tarballName}}` (npm pack's file name, without the
 * version). `gitignore.tmpl` becomes `.gitignore`.
 * @module
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import semver from 'semver';
import { isPackageName } from './install.ts';
import { PACKAGE_ROOT } from '../paths.ts';

/** Where the templates are. */
export const TEMPLATE_DIR = join(PACKAGE_ROOT, 'templates', 'plugin');

/** A mistake in what `plugin new` was asked (bad name, folder in the way). */
export class ScaffoldError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScaffoldError';
  }
}

export interface ScaffoldOptions {
  /** npm package name of the plugin. */
  readonly name: string;
  /** Folder to create; default `./<name without scope>` in the current folder. */
  readonly dir?: string;
  /** The SDK version this milterd ships (the manifest gets `^<major>.0.0`). */
  readonly sdkVersion: string;
  /** This milterd's version (the testing kit's devDependency gets a caret range of it). */
  readonly milterdVersion: string;
}

export interface ScaffoldResult {
  readonly dir: string;
  /** Files written, relative to `dir`. */
  readonly files: readonly string[];
}

/** `milterd-acme.filter` → `X-Milterd-Acme-Filter`: a header name derived from the package name. */
export function headerNameFor(shortName: string): string {
  const words = shortName.split(/[^A-Za-z0-9]+/).filter((w) => w !== '');
  return `X-${words.map((w) => w[0]!.toUpperCase() + w.slice(1)).join('-') || 'Plugin'}`;
}

/** Writes the package; refuses a bad name or a folder that exists and is not empty. */
export async function scaffoldPlugin(o: ScaffoldOptions): Promise<ScaffoldResult> {
  if (!isPackageName(o.name)) {
    throw new ScaffoldError(`${JSON.stringify(o.name)} is not a valid npm package name (lower case letters, digits, - . _ ~; optionally @scope/name)`);
  }
  const shortName = o.name.replace(/^@[^/]+\//, '');
  const dir = resolve(o.dir ?? shortName);
  try {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new ScaffoldError(`${dir} exists and is not a folder`);
    if ((await readdir(dir)).length > 0) throw new ScaffoldError(`${dir} exists and is not empty; choose another folder with --dir`);
  } catch (err) {
    if (err instanceof ScaffoldError) throw err;
    // Missing: created below.
  }

  const vars: Record<string, string> = {
    name: o.name,
    shortName,
    headerName: headerNameFor(shortName),
    tarballName: o.name.replace(/^@/, '').replace('/', '-'),
    sdkRange: `^${semver.major(o.sdkVersion)}.0.0`,
    milterdRange: `^${o.milterdVersion}`,
  };
  const templates = await listTemplates(TEMPLATE_DIR);
  const files: string[] = [];
  for (const t of templates) {
    const text = (await readFile(join(TEMPLATE_DIR, t), 'utf8')).replace(/\{\{(\w+)\}\}/g, (all, key: string) => vars[key] ?? all);
    let out = t.replace(/\.tmpl$/, '');
    if (out === 'gitignore') out = '.gitignore';
    const file = join(dir, out);
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, text, { flag: 'wx' });
    files.push(out);
  }
  return { dir, files };
}

async function listTemplates(root: string, sub = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(root, sub), { withFileTypes: true })) {
    const rel = sub === '' ? e.name : `${sub}/${e.name}`;
    if (e.isDirectory()) out.push(...(await listTemplates(root, rel)));
    else if (e.name.endsWith('.tmpl')) out.push(rel);
  }
  return out.sort();
}
