/**
 * Bundling a plugin into the one ES module its isolate runs: the plugin's TS/JS and its npm
 * dependencies inlined, `@milterd/sdk` left as the only import (the sandbox links it to the SDK
 * runtime), an inline source map so errors inside the sandbox can name file and line.
 *
 * What an isolate cannot run is refused here, at load, with file and line, rather than failing
 * later inside the sandbox: Node built-ins and isolated-vm (there is no Node in an isolate),
 * dynamic `import()` (isolated-vm: "Not supported") and `import.meta` (unavailable in modules
 * the host compiles).
 * @module
 */
import { stat } from 'node:fs/promises';
import { builtinModules, SourceMap } from 'node:module';
import { join, resolve } from 'node:path';
import { build, type BuildFailure, type Message, type Metafile, type Plugin } from 'esbuild';
import { MilterdError, type ErrorCode } from '../errors.ts';
import type { PluginManifest } from './manifest.ts';

/** A bundled plugin. */
export interface PluginBundle {
  /** One ES module; its only import is `@milterd/sdk`; source map inline. */
  readonly code: string;
  /** esbuild warnings, as `file:line:column: text` (paths relative to the package root). */
  readonly warnings: string[];
  /** Absolute paths of every source file that went into the bundle (for the reload watcher). */
  readonly files: string[];
}

/** The one module the sandbox provides. */
const SDK = '@milterd/sdk';
/** esbuild plugin name, so its errors can be told apart from esbuild's own. */
const GUARD = 'milterd-import-guard';
/** How many esbuild errors a MILTERD_PLUGIN_BUNDLE message lists. */
const MAX_ERRORS = 5;
const BUILTINS: ReadonlySet<string> = new Set(builtinModules);

/** What esbuild's `supported: { 'dynamic-import': false }` turns a non-literal `import(x)` into. */
const DYNAMIC_IMPORT_SHIM = /__toESM\(__require\(/g;

/** Why the sandbox cannot provide `path`, or undefined when it is an ordinary module. */
function forbiddenReason(path: string): string | undefined {
  if (path.startsWith('node:') || BUILTINS.has(path)) {
    return 'a Node built-in: plugins run in an isolate without Node APIs (use the host services of @milterd/sdk)';
  }
  if (path === 'isolated-vm' || path.startsWith('isolated-vm/')) return 'the sandbox library itself, which plugins must not reach';
  if (path.startsWith(`${SDK}/`)) return `a subpath of ${SDK}: the sandbox provides only "${SDK}" itself`;
  return undefined;
}

/** Refuses forbidden imports as they are resolved, so esbuild attaches the importing file:line. */
const importGuard: Plugin = {
  name: GUARD,
  setup(b) {
    b.onResolve({ filter: /.*/ }, (args) => {
      if (args.kind === 'entry-point') return undefined;
      if (args.kind === 'dynamic-import') {
        return {
          errors: [
            {
              text: `dynamic import(${JSON.stringify(args.path)}): the sandbox does not support import(); use a static import`,
              detail: 'forbidden',
            },
          ],
        };
      }
      if (args.path === SDK && args.kind !== 'import-statement') {
        return {
          errors: [{ text: `${args.kind} of "${SDK}": the sandbox links ${SDK} only to import statements`, detail: 'forbidden' }],
        };
      }
      const why = forbiddenReason(args.path);
      if (why === undefined) return undefined;
      return { errors: [{ text: `imports ${JSON.stringify(args.path)}, ${why}`, detail: 'forbidden' }] };
    });
  },
};

/**
 * Bundles the plugin at `m.entry`. Throws MILTERD_PLUGIN_FORBIDDEN_IMPORT (built-ins, isolated-vm,
 * dynamic import) or MILTERD_PLUGIN_BUNDLE (syntax errors, missing modules, import.meta, no
 * default export), each naming the plugin and `file:line:column`.
 */
export async function bundlePlugin(m: PluginManifest): Promise<PluginBundle> {
  const where = `plugin "${m.name}" (${m.dir})`;
  const fail = (code: ErrorCode, lines: readonly string[]): never => {
    throw new MilterdError(code, lines.map((l) => `${where}: ${l}`).join('\n'), { details: { plugin: m.name, errors: lines } });
  };

  // The plugin's own tsconfig.json only: without one, esbuild would walk up the folders and
  // apply whatever tsconfig.json it meets (the host's, when plugins live inside its checkout).
  const tsconfigFile = join(m.dir, 'tsconfig.json');
  const tsconfig = (await isFile(tsconfigFile)) ? { tsconfig: tsconfigFile } : { tsconfigRaw: {} };

  let result;
  try {
    result = await build({
      entryPoints: [m.entry],
      absWorkingDir: m.dir,
      write: false,
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      target: 'es2022',
      mainFields: ['module', 'main'],
      conditions: ['milterd', 'import', 'default'],
      external: [SDK],
      // Literal import() never gets here (the guard refuses it); a non-literal one becomes a
      // recognisable shim (DYNAMIC_IMPORT_SHIM). import.meta would become {} with a warning
      // (hidden inside node_modules): made an error, everywhere.
      supported: { 'dynamic-import': false, 'import-meta': false },
      logOverride: { 'empty-import-meta': 'error' },
      // Many npm packages read process.env.NODE_ENV; an isolate has no `process`.
      define: { 'process.env.NODE_ENV': '"production"' },
      loader: { '.ts': 'ts', '.mts': 'ts', '.cts': 'ts', '.js': 'js', '.mjs': 'js', '.cjs': 'js', '.json': 'json' },
      // Positions are enough to name file and line; the sources would double the bundle.
      sourcemap: 'inline',
      sourcesContent: false,
      metafile: true,
      logLevel: 'silent',
      plugins: [importGuard],
      ...tsconfig,
    });
  } catch (err) {
    const failure = err as Partial<BuildFailure>;
    if (!Array.isArray(failure.errors)) throw err;
    const forbidden = failure.errors.filter((e) => e.pluginName === GUARD && e.detail === 'forbidden');
    if (forbidden.length > 0) fail('MILTERD_PLUGIN_FORBIDDEN_IMPORT', forbidden.map(format));
    const lines = failure.errors.slice(0, MAX_ERRORS).map((e) =>
      e.id === 'empty-import-meta' ? `${location(e)}: uses import.meta, which modules in the sandbox do not have` : format(e),
    );
    if (failure.errors.length > MAX_ERRORS) lines.push(`(${failure.errors.length - MAX_ERRORS} more errors)`);
    return fail('MILTERD_PLUGIN_BUNDLE', lines);
  }

  const outputs = result.outputFiles;
  const metaOutputs = Object.values(result.metafile.outputs);
  if (outputs.length !== 1 || metaOutputs.length !== 1) {
    fail('MILTERD_PLUGIN_BUNDLE', [
      `esbuild made ${outputs.length} output files (${outputs.map((o) => o.path).join(', ')}); a plugin must bundle to one JavaScript module`,
    ]);
  }
  const code = outputs[0]!.text;
  const meta = metaOutputs[0]!;

  // The guard should have caught everything; this is the check that nothing slipped past it
  // (a require() of an external, an import added by another path).
  const stray = meta.imports.filter((i) => !(i.path === SDK && i.external === true && i.kind === 'import-statement'));
  if (stray.length > 0) {
    fail(
      'MILTERD_PLUGIN_FORBIDDEN_IMPORT',
      stray.map(
        (i) => `${importerOf(result.metafile, i.path)}: ${i.kind} of ${JSON.stringify(i.path)} stays in the bundle; the sandbox provides only import statements of "${SDK}"`,
      ),
    );
  }

  const dynamic = findDynamicImports(code);
  if (dynamic.length > 0) {
    fail(
      'MILTERD_PLUGIN_FORBIDDEN_IMPORT',
      dynamic.map((at) => `${at}: dynamic import() of a computed module name: the sandbox does not support import()`),
    );
  }

  if (!meta.exports.includes('default')) {
    fail('MILTERD_PLUGIN_BUNDLE', [`${meta.entryPoint ?? m.entry}: no default export (export default definePlugin({ ... }))`]);
  }

  return {
    code,
    warnings: result.warnings.map(format),
    files: Object.keys(result.metafile.inputs).map((f) => resolve(m.dir, f)),
  };
}

/** `file:line:column: text`; column counted from 1, paths relative to the package root. */
function format(msg: Message): string {
  return `${location(msg)}: ${msg.text}`;
}

function location(msg: Message): string {
  const l = msg.location;
  if (l === null) return '(no location)';
  return `${l.file}:${l.line}:${l.column + 1}`;
}

/** The input file that imports `path`, for errors found only in the output's metadata. */
function importerOf(meta: Metafile, path: string): string {
  for (const [file, input] of Object.entries(meta.inputs)) {
    if (input.imports.some((i) => i.path === path)) return file;
  }
  return '(bundle)';
}

/** `file:line:column` of every non-literal import() in `code`, through its inline source map. */
function findDynamicImports(code: string): string[] {
  const hits = [...code.matchAll(DYNAMIC_IMPORT_SHIM)];
  if (hits.length === 0) return [];
  const map = inlineSourceMap(code);
  return hits.map((h) => {
    const before = code.slice(0, h.index);
    const line = before.split('\n').length - 1;
    const column = h.index - (before.lastIndexOf('\n') + 1);
    const entry = map?.findEntry(line, column);
    if (entry === undefined || !('originalSource' in entry)) return `(bundle):${line + 1}:${column + 1}`;
    return `${entry.originalSource}:${entry.originalLine + 1}:${entry.originalColumn + 1}`;
  });
}

function inlineSourceMap(code: string): SourceMap | undefined {
  const m = /\/\/# sourceMappingURL=data:application\/json;base64,([A-Za-z0-9+/=]+)\s*$/.exec(code);
  if (m === null) return undefined;
  return new SourceMap(JSON.parse(Buffer.from(m[1]!, 'base64').toString('utf8')) as ConstructorParameters<typeof SourceMap>[0]);
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
