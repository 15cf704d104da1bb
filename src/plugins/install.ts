/**
 * Plugin package management behind `milterd plugin add | list | remove`: installing a plugin
 * package into the plugin folder (`pluginDir`) with npm, checking it the way the daemon will load
 * it, and editing the configuration's `chain` without losing its comments and layout.
 *
 * Adding follows one rule: nothing an operator or a running daemon can see changes until the
 * plugin has passed every check. The package is installed (never running its install scripts),
 * then its manifest is read, its SDK range checked, it is bundled, its capabilities are compared
 * with the grants, and (unless the entry is disabled) it is started once in a sandbox. Only then
 * is the configuration rewritten, atomically. Any failure undoes the install (npm uninstall, or
 * the plugin folder's package.json and lock file restored when the package was there before) and
 * leaves the configuration untouched.
 * @module
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, realpath, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { gunzipSync } from 'node:zlib';
import semver from 'semver';
import { isMap, isScalar, isSeq, parseDocument, type Document, type Pair, type ToStringOptions, type YAMLMap, type YAMLSeq } from 'yaml';
import { CAPABILITIES, type Capability } from '../../sdk/src/protocol.ts';
import type { FailurePolicy } from '../chain/filter.ts';
import { parseConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { MilterdError } from '../errors.ts';
import { silentLogger } from '../log.ts';
import { bundlePlugin } from './bundle.ts';
import { contextFromConfig, loadPlugin, loadSdkRuntime, type PluginEntryConfig } from './load.ts';
import { checkSdkCompatibility, readManifest } from './manifest.ts';
import { resolvePlugin } from './resolve.ts';

/** The plugin folder used when the configuration names none: `plugins` next to the configuration file. */
export const DEFAULT_PLUGIN_DIR = 'plugins';

/** Failure policies a chain entry may name. */
export const FAILURE_POLICIES: readonly FailurePolicy[] = ['continue', 'accept', 'tempfail', 'reject'];

/** npm package names, scope included (validate-npm-package-name's rules for new names). */
const NPM_NAME = /^(?:@[a-z0-9-~][a-z0-9-._~]*\/)?[a-z0-9-~][a-z0-9-._~]*$/;

/** True for a valid npm package name. */
export function isPackageName(name: string): boolean {
  return name.length <= 214 && NPM_NAME.test(name);
}

// ---------------------------------------------------------------------------------------------
// What `plugin add` was given

/** A `plugin add` argument, classified. */
export type PluginSource =
  /** A folder, referenced by path in the chain, not installed. */
  | { readonly kind: 'folder'; readonly dir: string }
  /** A package tarball (`npm pack` output), installed with npm. */
  | { readonly kind: 'tarball'; readonly file: string }
  /** Anything else npm installs: `name`, `name@range`, `@scope/name@tag`, a URL... */
  | { readonly kind: 'npm'; readonly spec: string; readonly name: string | undefined };

const TARBALL = /\.(?:tgz|tar\.gz|tar)$/i;

/**
 * Classifies `spec`: a path (absolute, `./`, `../`, `~/`, `file:`, or an existing path that is not
 * an npm name) is a folder or a tarball; the rest goes to npm. Relative paths are taken from `cwd`.
 */
export async function classifySpec(spec: string, cwd: string): Promise<PluginSource> {
  let path: string | undefined;
  if (spec.startsWith('file:')) path = spec.slice('file:'.length);
  else if (isAbsolute(spec) || spec === '.' || spec === '..' || /^\.{1,2}[\\/]/.test(spec)) path = spec;
  else if (spec.startsWith('~/')) path = join(process.env.HOME ?? '~', spec.slice(2));
  else if ((TARBALL.test(spec) || npmSpecName(spec) === undefined) && (await exists(resolve(cwd, spec)))) path = spec;
  if (path === undefined) return { kind: 'npm', spec, name: npmSpecName(spec) };

  const abs = resolve(cwd, path);
  let st;
  try {
    st = await stat(abs);
  } catch {
    throw new MilterdError('MILTERD_PLUGIN_NOT_FOUND', `plugin ${JSON.stringify(spec)} not found: ${abs}: no such file or folder`, {
      details: { plugin: spec },
    });
  }
  if (st.isDirectory()) return { kind: 'folder', dir: await realpath(abs) };
  if (st.isFile() && TARBALL.test(abs)) return { kind: 'tarball', file: await realpath(abs) };
  throw new MilterdError(
    'MILTERD_PLUGIN_NOT_FOUND',
    `plugin ${JSON.stringify(spec)}: ${abs} is neither a folder nor a package tarball (.tgz, as npm pack makes them)`,
    { details: { plugin: spec } },
  );
}

/** The package name in `name`, `name@range`, `@scope/name`, `@scope/name@range`; undefined for other npm specs. */
export function npmSpecName(spec: string): string | undefined {
  const m = /^((?:@[^/@\s]+\/)?[^/@\s:]+)(?:@\S*)?$/.exec(spec);
  return m !== null && isPackageName(m[1]!) ? m[1] : undefined;
}

/** package.json of a package tarball (gzip'd or plain tar), read without unpacking it. */
export async function readTarballPackageJson(file: string): Promise<Record<string, unknown>> {
  const fail = (why: string): never => {
    throw new MilterdError('MILTERD_PLUGIN_MANIFEST', `${file}: ${why}`, { details: { plugin: basename(file), file } });
  };
  let tar = await readFile(file);
  if (tar[0] === 0x1f && tar[1] === 0x8b) {
    try {
      tar = gunzipSync(tar, { maxOutputLength: 512 * 1024 * 1024 });
    } catch (err) {
      return fail(`not a valid gzip file: ${(err as Error).message}`);
    }
  }
  const text = (b: Uint8Array) => {
    const nul = b.indexOf(0);
    return Buffer.from(nul === -1 ? b : b.subarray(0, nul)).toString('utf8');
  };
  let off = 0;
  let longPath: string | undefined;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const size = Number.parseInt(text(h.subarray(124, 136)).trim() || '0', 8);
    if (!Number.isFinite(size) || size < 0) return fail('not a valid tar archive');
    const type = String.fromCharCode(h[156]!);
    const prefix = text(h.subarray(345, 500));
    const path = longPath ?? (prefix === '' ? text(h.subarray(0, 100)) : `${prefix}/${text(h.subarray(0, 100))}`);
    longPath = undefined;
    const data = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === 'x') {
      // pax extended header: "<len> path=<value>\n" records.
      const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString('utf8'));
      if (m !== null) longPath = m[1];
    } else if (type === 'L') {
      longPath = text(data);
    } else if ((type === '0' || type === '\0') && /^[^/]+\/package\.json$/.test(path.replace(/^\.\//, ''))) {
      try {
        const json: unknown = JSON.parse(data.toString('utf8'));
        if (json !== null && typeof json === 'object' && !Array.isArray(json)) return json as Record<string, unknown>;
      } catch {
        // reported below
      }
      return fail(`${path}: not a valid package.json`);
    }
  }
  return fail('no package.json at the top of the archive: not an npm package tarball');
}

// ---------------------------------------------------------------------------------------------
// npm

/** How npm is run: `npm` from PATH, or the command in MILTERD_NPM. */
function npmCommand(): string {
  return process.env.MILTERD_NPM ?? 'npm';
}

/** Flags on every npm call: no install scripts, no audit, no funding or update nagging. */
const NPM_FLAGS = ['--ignore-scripts', '--no-audit', '--no-fund', '--no-update-notifier'] as const;

const NPM_TIMEOUT_MS = 10 * 60_000;

/** Runs npm; resolves with its output, rejects with MILTERD_PLUGIN_INSTALL and npm's own error lines. */
async function npm(args: readonly string[], what: string, plugin: string): Promise<string> {
  const cmd = npmCommand();
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, [...args], { stdio: ['ignore', 'pipe', 'pipe'], env: process.env, timeout: NPM_TIMEOUT_MS });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('error', (err) => {
      reject(new MilterdError('MILTERD_PLUGIN_INSTALL', `${what}: cannot run ${cmd}: ${err.message} (set MILTERD_NPM to the npm command)`, { details: { plugin } }));
    });
    child.on('close', (code, signal) => {
      if (code === 0) return resolvePromise(out);
      const lines = out
        .split('\n')
        .filter((l) => l.trim() !== '' && !/^npm warn Unknown (?:user|project|env) config/.test(l))
        .slice(-15);
      const how = signal === null ? `exit code ${code}` : `killed by ${signal}${signal === 'SIGTERM' ? ` after ${NPM_TIMEOUT_MS / 1000} s` : ''}`;
      reject(
        new MilterdError('MILTERD_PLUGIN_INSTALL', `${what}: ${cmd} ${args.join(' ')} failed (${how}):\n${lines.map((l) => `  ${l}`).join('\n')}`, {
          details: { plugin, npm: lines },
        }),
      );
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The plugin folder

/** The plugin folder's package.json `dependencies`: what `plugin add` installed. */
export async function pluginDirDependencies(pluginDir: string): Promise<Record<string, string>> {
  try {
    const pkg = JSON.parse(await readFile(join(pluginDir, 'package.json'), 'utf8')) as { dependencies?: unknown };
    const deps = pkg.dependencies;
    if (deps === null || typeof deps !== 'object' || Array.isArray(deps)) return {};
    return Object.fromEntries(Object.entries(deps).filter((e): e is [string, string] => typeof e[1] === 'string'));
  } catch {
    return {};
  }
}

/** What the plugin folder looked like before an install, to put it back. */
interface Snapshot {
  readonly dir: string;
  readonly createdDir: boolean;
  readonly packageJson: Buffer | undefined;
  readonly lock: Buffer | undefined;
  readonly hadNodeModules: boolean;
  readonly deps: Readonly<Record<string, string>>;
}

const PLUGIN_DIR_PACKAGE = {
  private: true,
  description: 'Plugins installed by `milterd plugin add`; manage them with milterd plugin list/remove.',
  dependencies: {},
};

/** Creates the plugin folder and its package.json if missing; returns what was there before. */
async function prepare(dir: string): Promise<Snapshot> {
  const createdDir = !(await exists(dir));
  await mkdir(dir, { recursive: true });
  const packageJson = await readOptional(join(dir, 'package.json'));
  const snapshot: Snapshot = {
    dir,
    createdDir,
    packageJson,
    lock: await readOptional(join(dir, 'package-lock.json')),
    hadNodeModules: await exists(join(dir, 'node_modules')),
    deps: await pluginDirDependencies(dir),
  };
  // Without a package.json of its own, npm would install into the nearest folder above that has one.
  if (packageJson === undefined) await writeFile(join(dir, 'package.json'), `${JSON.stringify(PLUGIN_DIR_PACKAGE, null, 2)}\n`);
  return snapshot;
}

/** Puts the plugin folder back as `s` recorded it. Returns problems (the original error matters more). */
async function undo(s: Snapshot, name: string | undefined): Promise<string[]> {
  const problems: string[] = [];
  const attempt = async (what: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
    } catch (err) {
      problems.push(`${what}: ${(err as Error).message}`);
    }
  };
  if (s.createdDir) {
    await attempt(`removing ${s.dir}`, () => rm(s.dir, { recursive: true, force: true }));
    return problems;
  }
  const deps = await pluginDirDependencies(s.dir);
  const restoreFiles = async () => {
    await restoreFile(join(s.dir, 'package.json'), s.packageJson);
    await restoreFile(join(s.dir, 'package-lock.json'), s.lock);
  };
  if (name !== undefined && s.deps[name] === undefined && deps[name] !== undefined) {
    // A new package: uninstall it, then put package.json and the lock file back byte for byte.
    await attempt(`npm uninstall ${name}`, () => npm(['uninstall', ...NPM_FLAGS, '--prefix', s.dir, name], `undoing the install of ${name}`, name));
    await attempt('restoring package.json', restoreFiles);
  } else if (name !== undefined && s.deps[name] !== undefined) {
    // It was installed before (another version): restore the files and let npm restore the tree.
    await attempt('restoring package.json', restoreFiles);
    await attempt('npm install', () => npm(['install', ...NPM_FLAGS, '--prefix', s.dir], `restoring ${s.dir}`, name));
  } else {
    await attempt('restoring package.json', restoreFiles);
  }
  if (!s.hadNodeModules && Object.keys(s.deps).length === 0) {
    await attempt('removing node_modules', () => rm(join(s.dir, 'node_modules'), { recursive: true, force: true }));
  }
  return problems;
}

async function restoreFile(file: string, content: Buffer | undefined): Promise<void> {
  if (content === undefined) await rm(file, { force: true });
  else await writeFile(file, content);
}

// ---------------------------------------------------------------------------------------------
// The chain as the configuration file has it

/** One chain entry, with what its package turned out to be. */
export interface ChainEntryInfo {
  /** 1-based position in the file's chain (disabled entries count). */
  readonly position: number;
  /** `plugin` as written. */
  readonly spec: string;
  readonly enabled: boolean;
  readonly capabilities: readonly Capability[];
  readonly onError: FailurePolicy | undefined;
  /** Package root, when the plugin could be found. */
  readonly dir?: string;
  readonly name?: string;
  readonly version?: string;
  /** Capabilities the manifest asks for, when it could be read. */
  readonly asks?: readonly Capability[];
  /** folder: a path; pluginDir: installed in the plugin folder; node_modules: found by Node resolution. */
  readonly source: 'folder' | 'pluginDir' | 'node_modules' | 'missing';
  /** Why the plugin could not be found or read. */
  readonly problem?: string;
}

/** The configuration file, read and validated, with its YAML document for editing. */
interface ConfigFile {
  readonly file: string;
  readonly baseDir: string;
  readonly text: string;
  readonly config: Config;
  /** Absolute plugin folder, when the configuration names one. */
  readonly pluginDir: string | undefined;
}

async function openConfig(file: string): Promise<ConfigFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new MilterdError('MILTERD_CONFIG_READ', `${file}: cannot read: ${(err as Error).message}`, { cause: err });
  }
  const config = parseConfig(text, file);
  const baseDir = dirname(resolve(file));
  return { file, baseDir, text, config, pluginDir: config.pluginDir === undefined ? undefined : resolve(baseDir, config.pluginDir) };
}

function isPathSpec(spec: string): boolean {
  return isAbsolute(spec) || spec === '.' || spec === '..' || spec.startsWith('./') || spec.startsWith('../');
}

async function describeEntries(cfg: ConfigFile): Promise<ChainEntryInfo[]> {
  return Promise.all(
    cfg.config.chain.map(async (e, i): Promise<ChainEntryInfo> => {
      const base = {
        position: i + 1,
        spec: e.plugin,
        enabled: e.enabled !== false,
        capabilities: e.capabilities ?? [],
        onError: e.onError,
      };
      let dir: string;
      try {
        dir = await resolvePlugin(e.plugin, { baseDir: cfg.baseDir, ...(cfg.pluginDir === undefined ? {} : { pluginDir: cfg.pluginDir }) });
      } catch (err) {
        return { ...base, source: 'missing', problem: (err as Error).message };
      }
      let source: ChainEntryInfo['source'] = 'node_modules';
      if (isPathSpec(e.plugin)) source = 'folder';
      else if (cfg.pluginDir !== undefined && isInside(dir, await realpathOr(join(cfg.pluginDir, 'node_modules')))) source = 'pluginDir';
      try {
        const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { name?: unknown; version?: unknown; milterd?: { capabilities?: unknown } };
        const asks = Array.isArray(pkg.milterd?.capabilities)
          ? (pkg.milterd.capabilities.filter((c) => (CAPABILITIES as readonly unknown[]).includes(c)) as Capability[])
          : [];
        return {
          ...base,
          dir,
          source,
          asks,
          ...(typeof pkg.name === 'string' ? { name: pkg.name } : {}),
          ...(typeof pkg.version === 'string' ? { version: pkg.version } : {}),
        };
      } catch (err) {
        return { ...base, dir, source, problem: `${join(dir, 'package.json')}: ${(err as Error).message}` };
      }
    }),
  );
}

/** True when `entry` is the plugin `name` (as written, or its package name). */
function entryMatches(entry: ChainEntryInfo, name: string): boolean {
  return entry.spec === name || entry.name === name;
}

function describeList(entries: readonly ChainEntryInfo[]): string {
  if (entries.length === 0) return 'the chain is empty';
  return `the chain has: ${entries.map((e) => e.spec).join(', ')}`;
}

// ---------------------------------------------------------------------------------------------
// Editing the YAML document

/** The chain sequence node, created (as a block sequence) when the file has none. */
function chainNode(doc: Document.Parsed): YAMLSeq {
  if (doc.contents === null || !isMap(doc.contents)) {
    // An empty file (or comments only): parseConfig accepted it, so it is a map-to-be.
    const comment = doc.contents?.commentBefore ?? doc.commentBefore;
    doc.contents = doc.createNode({}) as never;
    if (comment) doc.commentBefore = comment;
  }
  const map = doc.contents as unknown as YAMLMap;
  const pair = map.items.find((p) => isScalar(p.key) && p.key.value === 'chain');
  if (pair !== undefined && isSeq(pair.value)) return pair.value;
  const seq = doc.createNode([]) as YAMLSeq;
  seq.flow = false;
  if (pair !== undefined) {
    // `chain:` with no value (null): keep its comments.
    const old = pair.value as { commentBefore?: string | null; comment?: string | null } | null;
    if (old?.comment) seq.comment = old.comment;
    pair.value = seq;
  } else {
    map.items.push(doc.createPair('chain', seq) as Pair<unknown, unknown>);
  }
  return seq;
}

/**
 * The comment above the first item of a block sequence is stored on the sequence. Splits it
 * into the part that belongs to the sequence (a comment on the `chain:` line, and paragraphs
 * separated from the first item by a blank line) and the part that describes the first item.
 */
function splitLeadComment(doc: Document.Parsed, seq: YAMLSeq, text: string): { keep: string | undefined; item: string | undefined } {
  const c = seq.commentBefore;
  if (!c || seq.flow || seq.items.length === 0) return { keep: c ?? undefined, item: undefined };
  const keep: string[] = [];
  let rest = c;
  // `chain: # ...`: the first comment line is on the key's own line.
  const pair = isMap(doc.contents) ? doc.contents.items.find((p) => p.value === seq) : undefined;
  const keyEnd = isScalar(pair?.key) ? pair.key.range?.[1] : undefined;
  if (keyEnd !== undefined) {
    const eol = text.indexOf('\n', keyEnd);
    if (text.slice(keyEnd, eol === -1 ? text.length : eol).includes('#')) {
      const nl = rest.indexOf('\n');
      keep.push(nl === -1 ? rest : rest.slice(0, nl));
      rest = nl === -1 ? '' : rest.slice(nl + 1);
    }
  }
  // A trailing newline in a comment prints as a blank line after it.
  const blank = rest.endsWith('\n') ? rest.length - 1 : rest.lastIndexOf('\n\n');
  if (blank !== -1) {
    keep.push(rest.slice(0, blank + 1));
    rest = rest.slice(blank + 2);
  }
  return { keep: keep.length === 0 ? undefined : keep.join('\n'), item: rest === '' ? undefined : rest };
}

function insertEntry(doc: Document.Parsed, text: string, index: number, entry: Record<string, unknown>): void {
  const seq = chainNode(doc);
  // `chain: []` becomes a block sequence; entries of a flow sequence with items stay flow.
  if (seq.flow && seq.items.length === 0) seq.flow = false;
  const node = doc.createNode(entry) as YAMLMap;
  if (seq.flow) node.flow = true;
  else {
    const caps = node.get('capabilities', true);
    if (isSeq(caps)) caps.flow = true;
  }
  if (index === 0 && seq.items.length > 0) {
    const { keep, item } = splitLeadComment(doc, seq, text);
    const first = seq.items[0] as { commentBefore?: string | null };
    if (item !== undefined) first.commentBefore = first.commentBefore ? `${item}\n${first.commentBefore}` : item;
    seq.commentBefore = keep ?? null;
  }
  seq.items.splice(index, 0, node);
}

function removeEntry(doc: Document.Parsed, text: string, index: number): void {
  const seq = chainNode(doc);
  if (index === 0) {
    const { keep } = splitLeadComment(doc, seq, text);
    seq.commentBefore = keep ?? null;
  }
  seq.items.splice(index, 1);
  if (seq.items.length === 0 && !seq.flow) seq.flow = true; // prints `chain: []`
}

/** Adds `pluginDir: <value>` just before `chain` (or at the end), with a comment saying what it is. */
function setPluginDir(doc: Document.Parsed, value: string): void {
  chainNode(doc);
  const map = doc.contents as unknown as YAMLMap;
  const pair = doc.createPair('pluginDir', value) as Pair<{ commentBefore?: string }, unknown>;
  pair.key!.commentBefore = ' Where `milterd plugin add` installs plugin packages (relative to this file).';
  const at = map.items.findIndex((p) => isScalar(p.key) && p.key.value === 'chain');
  map.items.splice(at === -1 ? map.items.length : at, 0, pair as Pair<unknown, unknown>);
}

/** Serialising options that reproduce the file's own layout as closely as the yaml package can. */
function layoutOf(doc: Document.Parsed, text: string): ToStringOptions {
  const indents = text
    .split('\n')
    .filter((l) => /^ +[^ #]/.test(l))
    .map((l) => l.length - l.trimStart().length);
  const indent = indents.length === 0 ? 2 : Math.min(8, Math.max(1, Math.min(...indents)));
  // Block sequences written at their key's own column (`chain:\n- plugin: x`).
  let indentSeq = true;
  if (isMap(doc.contents)) {
    for (const p of doc.contents.items) {
      if (isSeq(p.value) && !p.value.flow && p.value.range && isScalar(p.key) && p.key.range) {
        const col = (offset: number) => offset - (text.lastIndexOf('\n', offset - 1) + 1);
        indentSeq = col(p.value.range[0]) > col(p.key.range[0]);
        break;
      }
    }
  }
  // `[ log ]` or `[log]`: as most of the file's flow sequences are written.
  const code = text.replace(/#.*$/gm, '');
  const padded = (code.match(/\[ [^\s\]]/g) ?? []).length;
  const tight = (code.match(/\[[^\s\]]/g) ?? []).length;
  return { lineWidth: 0, indent, indentSeq, flowCollectionPadding: padded > tight };
}

/**
 * Edits YAML text through the yaml Document API, then keeps the file's own text everywhere the
 * edit did not reach. The yaml package keeps comments but not every detail of layout (the
 * spaces before a trailing comment, blank lines before a final comment...). So the document is
 * printed before and after the edit; the lines that differ between the two are the edit; the
 * unedited print is aligned with the original text line by line (longest common subsequence),
 * and only the edited lines replace the original's. When the result would not mean the same as
 * the edited document, the edited document is used as the yaml package prints it.
 */
function editYaml(text: string, edit: (doc: Document.Parsed, text: string) => void): string {
  const doc = parseDocument(text);
  const layout = layoutOf(doc, text);
  const before = doc.toString(layout);
  edit(doc, text);
  const after = doc.toString(layout);
  if (before === text) return after;
  const a = before.split('\n');
  const b = after.split('\n');
  const o = text.split('\n');
  const match = alignLines(a, o);
  if (match === undefined) return after;
  // The edit: a[p, e) became b[p, b.length - (a.length - e)).
  let p = 0;
  while (p < a.length && p < b.length && a[p] === b[p]) p++;
  let q = 0;
  while (q < a.length - p && q < b.length - p && a[a.length - 1 - q] === b[b.length - 1 - q]) q++;
  let e = a.length - q;
  // Where the edit's ends fall in the original. An end between two aligned lines maps to one
  // place when the original has nothing between them (the printed lines there are the yaml
  // package's additions); when the original has lines there too (printed differently), the
  // edit widens to the aligned lines, so those lines are replaced as printed, never lost.
  const gap = (x: number) => {
    let before = x - 1;
    while (before >= 0 && match[before] === -1) before--;
    let after = x;
    while (after < a.length && match[after] === -1) after++;
    return { before, after, from: before === -1 ? 0 : match[before]! + 1, to: after === a.length ? o.length : match[after]! };
  };
  const start = gap(p);
  if (start.from < start.to) p = start.before + 1;
  const end = gap(e);
  if (end.from < end.to) e = end.after;
  const merged = [...o.slice(0, start.from), ...b.slice(p, b.length - (a.length - e)), ...o.slice(end.to)].join('\n');
  const check = parseDocument(merged);
  if (check.errors.length > 0 || !isDeepStrictEqual(check.toJS(), parseDocument(after).toJS())) return after;
  return merged;
}

/**
 * For each line of `a`, the index of the line of `b` it is paired with in a longest common
 * subsequence of equal lines, or -1. Undefined for files too large to align cheaply.
 */
function alignLines(a: readonly string[], b: readonly string[]): number[] | undefined {
  const n = a.length;
  const m = b.length;
  if (n * m > 16_000_000) return undefined;
  // lcs[i][j]: length of the LCS of a[i..] and b[j..], in one flat array.
  const lcs = new Uint32Array((n + 1) * (m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * (m + 1) + j] =
        a[i] === b[j] ? lcs[(i + 1) * (m + 1) + j + 1]! + 1 : Math.max(lcs[(i + 1) * (m + 1) + j]!, lcs[i * (m + 1) + j + 1]!);
    }
  }
  const match = new Array<number>(n).fill(-1);
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      match[i++] = j++;
    } else if (lcs[(i + 1) * (m + 1) + j]! >= lcs[i * (m + 1) + j + 1]!) i++;
    else j++;
  }
  // Between two aligned lines, the lines that differ are usually the same lines printed
  // differently (spacing before a comment, `{ a: 1 }` for `{a: 1}`), plus blank lines the printer
  // added: pair them in order when their numbers agree, blank lines aside if need be.
  let prevA = -1;
  let prevB = -1;
  for (let k = 0; k <= n; k++) {
    if (k < n && match[k] === -1) continue;
    const nextB = k === n ? m : match[k]!;
    const gapA = range(prevA + 1, k);
    const gapB = range(prevB + 1, nextB);
    if (gapA.length > 0 && gapB.length > 0) {
      const nonBlank = (lines: readonly string[]) => (idx: number) => lines[idx]!.trim() !== '';
      const [pa, pb] = gapA.length === gapB.length ? [gapA, gapB] : [gapA.filter(nonBlank(a)), gapB.filter(nonBlank(b))];
      if (pa.length === pb.length) pa.forEach((x, t) => (match[x] = pb[t]!));
    }
    prevA = k;
    prevB = nextB;
  }
  return match;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, k) => from + k);
}

/** Writes the configuration atomically (temporary file, same mode, rename), if nobody changed it meanwhile. */
async function writeConfig(cfg: ConfigFile, text: string): Promise<void> {
  // Never write what the daemon would refuse.
  parseConfig(text, cfg.file);
  const real = await realpath(cfg.file);
  const now = await readFile(real, 'utf8');
  if (now !== cfg.text) {
    throw new MilterdError('MILTERD_CONFIG_READ', `${cfg.file} changed while the command ran; it was not written: run the command again`);
  }
  const mode = (await stat(real)).mode & 0o7777;
  const tmp = join(dirname(real), `.${basename(real)}.milterd-${process.pid}.tmp`);
  try {
    await writeFile(tmp, text, { mode });
    await rename(tmp, real);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new MilterdError('MILTERD_CONFIG_READ', `${cfg.file}: cannot write: ${(err as Error).message}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------
// add

/** Where in the chain a new entry goes; at most one. */
export interface Placement {
  /** 1-based position the entry gets (1 = first); up to the chain's length + 1. */
  readonly position?: number;
  /** Before the entry with this package name or spec. */
  readonly before?: string;
  /** After the entry with this package name or spec. */
  readonly after?: string;
}

export interface AddOptions extends Placement {
  /** Configuration file. */
  readonly configFile: string;
  /** npm spec, folder path or tarball path. */
  readonly spec: string;
  /** Folder relative paths in `spec` are taken from (default: the current folder). */
  readonly cwd?: string;
  /** Capabilities granted (the entry's `capabilities`); the manifest's must all be in it. */
  readonly grant?: readonly Capability[];
  readonly onError?: FailurePolicy;
  /** Add the entry with `enabled: false` (not started for the check). */
  readonly disabled?: boolean;
  /** The entry's `options` (ctx.options), checked against the plugin's optionsSchema. */
  readonly options?: Readonly<Record<string, unknown>>;
  /** Progress lines (npm runs, checks). */
  readonly progress?: (line: string) => void;
}

export interface AddResult {
  readonly name: string;
  readonly version: string;
  /** `plugin` as written in the chain. */
  readonly spec: string;
  /** 1-based position in the chain. */
  readonly position: number;
  /** The plugin folder the package was installed into (undefined for a folder). */
  readonly installedIn: string | undefined;
  /** True when the configuration got a `pluginDir` key. */
  readonly recordedPluginDir: boolean;
  /** Remarks worth printing (grants nobody asked for, bundler warnings). */
  readonly notes: readonly string[];
  /** The chain after the change. */
  readonly chain: ListResult;
}

function targetIndex(entries: readonly ChainEntryInfo[], p: Placement): number {
  const given = [p.position, p.before, p.after].filter((v) => v !== undefined).length;
  if (given > 1) throw new MilterdError('MILTERD_CONFIG_INVALID', 'give at most one of --position, --before and --after');
  if (p.position !== undefined) {
    if (!Number.isInteger(p.position) || p.position < 1 || p.position > entries.length + 1) {
      throw new MilterdError(
        'MILTERD_CONFIG_INVALID',
        `--position ${p.position}: expected 1 to ${entries.length + 1} (the chain has ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'})`,
      );
    }
    return p.position - 1;
  }
  const name = p.before ?? p.after;
  if (name === undefined) return entries.length;
  const hits = entries.filter((e) => entryMatches(e, name));
  const flag = p.before !== undefined ? '--before' : '--after';
  if (hits.length === 0) {
    throw new MilterdError('MILTERD_PLUGIN_NOT_FOUND', `${flag} ${name}: no chain entry has that package name or plugin spec; ${describeList(entries)}`, {
      details: { plugin: name },
    });
  }
  if (hits.length > 1) {
    throw new MilterdError(
      'MILTERD_CONFIG_INVALID',
      `${flag} ${name}: several chain entries match (positions ${hits.map((h) => h.position).join(', ')}); use --position`,
    );
  }
  return p.before !== undefined ? hits[0]!.position - 1 : hits[0]!.position;
}

function refuseDuplicate(entries: readonly ChainEntryInfo[], name: string, dir?: string): void {
  const dup = entries.find((e) => e.name === name || e.spec === name || (dir !== undefined && e.dir === dir));
  if (dup === undefined) return;
  throw new MilterdError(
    'MILTERD_CONFIG_INVALID',
    `plugin ${name} is already in the chain at position ${dup.position} (${dup.spec}); nothing was changed. ` +
      `To replace it, remove it first: milterd plugin remove ${dup.spec}`,
    { details: { plugin: name } },
  );
}

/** The `plugin` value for a folder: relative to the configuration file when close by, else absolute. */
function folderSpec(baseDir: string, dir: string): string {
  const rel = relative(baseDir, dir);
  if (rel === '') return '.';
  if (isAbsolute(rel) || rel.startsWith(`..${sep}..${sep}`) || rel === `..${sep}..`) return dir;
  const posix = rel.split(sep).join('/');
  return posix.startsWith('../') || posix === '..' ? posix : `./${posix}`;
}

/**
 * `milterd plugin add`: installs (or references) the plugin, checks it, and adds a chain entry.
 * Throws a MilterdError, with the plugin folder and the configuration as they were, on any failure.
 */
export async function addPlugin(o: AddOptions): Promise<AddResult> {
  const progress = o.progress ?? (() => undefined);
  const cfg = await openConfig(o.configFile);
  const entries = await describeEntries(cfg);
  const index = targetIndex(entries, o);
  const grant = [...new Set(o.grant ?? [])];
  const sdk = await loadSdkRuntime();
  const source = await classifySpec(o.spec, o.cwd ?? process.cwd());

  // What can be refused before installing anything.
  let knownName: string | undefined;
  if (source.kind === 'npm') knownName = source.name;
  if (source.kind === 'tarball') {
    const pkg = await readTarballPackageJson(source.file);
    if (typeof pkg.name !== 'string' || !isPackageName(pkg.name)) {
      throw new MilterdError('MILTERD_PLUGIN_MANIFEST', `${source.file}: package.json has no valid "name"`, { details: { plugin: o.spec } });
    }
    knownName = pkg.name;
    if (!('milterd' in pkg)) {
      throw new MilterdError(
        'MILTERD_PLUGIN_MANIFEST',
        `${source.file} (plugin "${pkg.name}"): milterd: missing: this package is not a milterd plugin; nothing was installed`,
        { details: { plugin: pkg.name } },
      );
    }
  }
  if (knownName !== undefined) refuseDuplicate(entries, knownName);

  const installing = source.kind !== 'folder';
  const pluginDir = cfg.pluginDir ?? join(cfg.baseDir, DEFAULT_PLUGIN_DIR);
  let snapshot: Snapshot | undefined;
  let installedName: string | undefined;
  let done: Omit<AddResult, 'chain'>;
  try {
    let dir: string;
    if (source.kind === 'folder') {
      dir = source.dir;
    } else {
      snapshot = await prepare(pluginDir);
      const npmSpec = source.kind === 'tarball' ? source.file : source.spec;
      progress(`installing ${o.spec} into ${pluginDir} (npm install --ignore-scripts: the package's install scripts are not run)`);
      await npm(['install', ...NPM_FLAGS, '--prefix', pluginDir, npmSpec], `installing ${o.spec}`, o.spec);
      installedName = knownName ?? (await newDependency(snapshot, pluginDir));
      if (installedName === undefined) {
        throw new MilterdError('MILTERD_PLUGIN_NOT_FOUND', `installing ${o.spec}: npm added no dependency to ${join(pluginDir, 'package.json')}`, {
          details: { plugin: o.spec },
        });
      }
      dir = await resolvePlugin(installedName, { baseDir: cfg.baseDir, pluginDir });
    }

    progress(`checking ${dir}`);
    const manifest = await readManifest(dir);
    if (knownName === undefined) refuseDuplicate(entries, manifest.name, dir);
    checkSdkCompatibility(manifest, sdk.version);
    const bundle = await bundlePlugin(manifest);

    const missing = manifest.capabilities.filter((c) => !grant.includes(c));
    if (missing.length > 0) {
      const all = [...new Set([...grant, ...manifest.capabilities])];
      throw new MilterdError(
        'MILTERD_PLUGIN_CAPABILITY',
        `plugin ${manifest.name}@${manifest.version} asks for capabilities that were not granted: ${missing.join(', ')}. ` +
          `Grant them with --grant ${all.join(',')}${installing ? ' (nothing was installed or changed)' : ' (nothing was changed)'}`,
        { details: { plugin: manifest.name, missing, asked: manifest.capabilities } },
      );
    }
    const notes: string[] = [];
    const unasked = grant.filter((c) => !manifest.capabilities.includes(c));
    if (unasked.length > 0) notes.push(`granted but not asked for by the plugin (it will not get them): ${unasked.join(', ')}`);
    for (const w of bundle.warnings) notes.push(`bundler warning: ${w}`);

    const spec = source.kind === 'folder' ? folderSpec(cfg.baseDir, dir) : installedName!;
    const entry: Record<string, unknown> = { plugin: spec };
    if (o.disabled) entry.enabled = false;
    if (o.onError !== undefined) entry.onError = o.onError;
    entry.capabilities = [...grant];
    if (o.options !== undefined) entry.options = o.options;

    if (!o.disabled) {
      // Started once, as `milterd start` would: catches a plugin that throws at start-up, defines
      // no hook or hooks its manifest does not list, and options its schema refuses.
      progress(`starting ${manifest.name} in a sandbox`);
      let loaded;
      try {
        loaded = await loadPlugin(entry as unknown as PluginEntryConfig, {
          ...contextFromConfig(cfg.config, cfg.baseDir, { sdk, logger: silentLogger() }),
          pluginDir,
        });
      } catch (err) {
        if (err instanceof MilterdError && err.code === 'MILTERD_CONFIG_INVALID') {
          throw new MilterdError(err.code, `${err.message}\n(give the plugin's options with --options '<json object>', or add it with --disabled and edit them in)`, {
            cause: err,
            details: { ...err.details },
          });
        }
        throw err;
      }
      await loaded.supervisor.stop();
    }

    const recordedPluginDir = installing && cfg.config.pluginDir === undefined;
    let text = cfg.text;
    if (recordedPluginDir) text = editYaml(text, (doc) => setPluginDir(doc, DEFAULT_PLUGIN_DIR));
    text = editYaml(text, (doc, before) => insertEntry(doc, before, index, entry));
    await writeConfig(cfg, text);
    done = { name: manifest.name, version: manifest.version, spec, position: index + 1, installedIn: installing ? pluginDir : undefined, recordedPluginDir, notes };
  } catch (err) {
    if (snapshot !== undefined) {
      progress(`undoing the install of ${installedName ?? o.spec}`);
      const problems = await undo(snapshot, installedName);
      if (problems.length > 0 && err instanceof MilterdError) {
        throw new MilterdError(err.code, `${err.message}\n(undoing the install failed too: ${problems.join('; ')}; check ${snapshot.dir})`, {
          cause: err,
          ...(err.details === undefined ? {} : { details: { ...err.details } }),
        });
      }
    }
    throw err;
  }
  return { ...done, chain: await listPlugins(o.configFile) };
}

/** The dependency npm added (or changed) in the plugin folder's package.json. */
async function newDependency(s: Snapshot, dir: string): Promise<string | undefined> {
  const now = await pluginDirDependencies(dir);
  const added = Object.keys(now).filter((k) => s.deps[k] === undefined);
  if (added.length === 1) return added[0];
  const changed = Object.keys(now).filter((k) => s.deps[k] !== now[k]);
  return changed.length === 1 ? changed[0] : undefined;
}

// ---------------------------------------------------------------------------------------------
// list

/** A package installed in the plugin folder that no chain entry uses. */
export interface InstalledPackage {
  readonly name: string;
  readonly version: string | undefined;
  /** What package.json records (range, file: path...). */
  readonly spec: string;
}

export interface ListResult {
  readonly configFile: string;
  /** Absolute plugin folder, when the configuration names one. */
  readonly pluginDir: string | undefined;
  readonly entries: readonly ChainEntryInfo[];
  /** Packages installed in the plugin folder that are not in the chain. */
  readonly unused: readonly InstalledPackage[];
}

/** `milterd plugin list`: the chain in order, and installed packages that are not in it. */
export async function listPlugins(configFile: string): Promise<ListResult> {
  const cfg = await openConfig(configFile);
  const entries = await describeEntries(cfg);
  const unused: InstalledPackage[] = [];
  if (cfg.pluginDir !== undefined) {
    for (const [name, spec] of Object.entries(await pluginDirDependencies(cfg.pluginDir))) {
      const dir = await realpathOr(join(cfg.pluginDir, 'node_modules', name));
      if (entries.some((e) => e.spec === name || e.dir === dir)) continue;
      let version: string | undefined;
      try {
        version = (JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { version?: string }).version;
      } catch {
        version = undefined;
      }
      unused.push({ name, version, spec });
    }
  }
  return { configFile, pluginDir: cfg.pluginDir, entries, unused };
}

// ---------------------------------------------------------------------------------------------
// remove

export interface RemoveOptions {
  readonly configFile: string;
  /** Package name or `plugin` spec as written. */
  readonly name: string;
  /** 1-based position, to pick one of several entries of the same plugin. */
  readonly position?: number;
  readonly progress?: (line: string) => void;
}

export interface RemoveResult {
  /** The entry removed, if the plugin was in the chain. */
  readonly removed: ChainEntryInfo | undefined;
  /** Package uninstalled from the plugin folder, if any. */
  readonly uninstalled: string | undefined;
  readonly chain: ListResult;
}

/**
 * `milterd plugin remove`: removes the chain entry, then uninstalls the package from the plugin
 * folder when it was installed there and no other entry uses it. A package installed but not in
 * the chain is just uninstalled.
 */
export async function removePlugin(o: RemoveOptions): Promise<RemoveResult> {
  const progress = o.progress ?? (() => undefined);
  const cfg = await openConfig(o.configFile);
  const entries = await describeEntries(cfg);
  let hits = entries.filter((e) => entryMatches(e, o.name));
  if (o.position !== undefined) hits = hits.filter((e) => e.position === o.position);
  const deps = cfg.pluginDir === undefined ? {} : await pluginDirDependencies(cfg.pluginDir);

  if (hits.length === 0) {
    if (o.position === undefined && cfg.pluginDir !== undefined && deps[o.name] !== undefined) {
      progress(`${o.name} is not in the chain; uninstalling it from ${cfg.pluginDir}`);
      await npm(['uninstall', ...NPM_FLAGS, '--prefix', cfg.pluginDir, o.name], `uninstalling ${o.name}`, o.name);
      return { removed: undefined, uninstalled: o.name, chain: await listPlugins(o.configFile) };
    }
    const where = o.position === undefined ? '' : ` at position ${o.position}`;
    throw new MilterdError('MILTERD_PLUGIN_NOT_FOUND', `plugin ${JSON.stringify(o.name)} is not in the chain${where}: ${describeList(entries)}`, {
      details: { plugin: o.name },
    });
  }
  if (hits.length > 1) {
    throw new MilterdError(
      'MILTERD_CONFIG_INVALID',
      `plugin ${o.name} is in the chain ${hits.length} times (positions ${hits.map((h) => h.position).join(', ')}); pick one with --position`,
      { details: { plugin: o.name } },
    );
  }
  const entry = hits[0]!;
  await writeConfig(cfg, editYaml(cfg.text, (doc, text) => removeEntry(doc, text, entry.position - 1)));

  // The package goes too if `plugin add` installed it and nothing else in the chain uses it.
  let uninstalled: string | undefined;
  const pkgName = !isPathSpec(entry.spec) ? entry.spec : undefined;
  if (pkgName !== undefined && cfg.pluginDir !== undefined && deps[pkgName] !== undefined && entry.source !== 'node_modules') {
    const stillUsed = entries.some((e) => e !== entry && (e.spec === pkgName || (entry.dir !== undefined && e.dir === entry.dir)));
    if (!stillUsed) {
      progress(`uninstalling ${pkgName} from ${cfg.pluginDir}`);
      await npm(['uninstall', ...NPM_FLAGS, '--prefix', cfg.pluginDir, pkgName], `uninstalling ${pkgName} (its chain entry is already removed)`, pkgName);
      uninstalled = pkgName;
    }
  }
  return { removed: entry, uninstalled, chain: await listPlugins(o.configFile) };
}

// ---------------------------------------------------------------------------------------------

/** Parses `--grant log,kv` (repeatable); throws a message naming the valid capabilities. */
export function parseCapabilities(value: string): Capability[] {
  const caps = value
    .split(',')
    .map((c) => c.trim())
    .filter((c) => c !== '');
  const bad = caps.filter((c) => !(CAPABILITIES as readonly string[]).includes(c));
  if (bad.length > 0) throw new Error(`unknown capabilit${bad.length === 1 ? 'y' : 'ies'} ${bad.join(', ')}: expected ${CAPABILITIES.join(', ')}`);
  return caps as Capability[];
}

/** The major version of the SDK this milterd ships, as `^N.0.0`. */
export function sdkRange(version: string): string {
  return `^${semver.major(version)}.0.0`;
}

function isInside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}

async function realpathOr(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function readOptional(file: string): Promise<Buffer | undefined> {
  try {
    return await readFile(file);
  } catch {
    return undefined;
  }
}
