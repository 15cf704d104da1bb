/**
 * A plugin's manifest: the `milterd` key of its package.json, plus the package's name, version
 * and entry file. Read once at load, validated against a schema (unknown keys are errors, as in
 * the configuration: a typo must not silently fall back to a default), defaults filled in,
 * frozen. Every error names the package.json, the plugin and the key path, e.g.
 * `/srv/plugins/spf/package.json (plugin "spf"): milterd.hooks[1]: expected one of "connect", …`.
 *
 * `docs/plugin-manifest.md` documents every field.
 * @module
 */
import { readFile, stat } from 'node:fs/promises';
import { basename, isAbsolute, join, relative, resolve } from 'node:path';
import { Type, type SchemaOptions, type Static } from '@sinclair/typebox';
import { Ajv, type ErrorObject } from 'ajv';
import semver from 'semver';
import { ACTIONS, CAPABILITIES, HOOK_NAMES, type Action, type Capability, type HookName } from '../../sdk/src/protocol.ts';
import { MilterdError } from '../errors.ts';
import type { MacroStage } from '../chain/filter.ts';

/** Resource limits of one plugin, enforced by its sandbox. */
export interface PluginLimits {
  /** Isolate heap limit (isolated-vm `memoryLimit`), MB. */
  memoryMb: number;
  /** CPU time of one hook call, ms. */
  cpuMs: number;
  /** Wall-clock time of one hook call, waits for host services (dns, kv) included, ms. */
  wallMs: number;
  /** Wall-clock time of all hook calls for one message together, ms. */
  messageMs: number;
}

/**
 * Limits a plugin gets unless its manifest asks for others. Frozen.
 *
 * - memoryMb 64: room for the SDK, the bundle and a message of a few MB copied in at end of
 *   message (decoding a body to a string doubles it). isolated-vm treats the limit as a guideline
 *   (a determined plugin can use 2–3 times it), so a pool of isolates per sandbox process must
 *   stay small per isolate.
 * - cpuMs 200: a filter parsing headers, running regexes or hashing a body needs 1–20 ms; 200 is
 *   ten times that. A plugin that spins is killed at this limit on every call, and a 200 ms
 *   watchdog already cut throughput tenfold in measurements (docs in the isolated-vm notes):
 *   higher defaults would let one broken plugin stall every connection.
 * - wallMs 1000: one call blocks the MTA's SMTP command until it answers; a DNS or kv lookup on a
 *   healthy resolver takes well under 100 ms. Sendmail waits 10 s per reply (`T=R:10s`), so
 *   several plugins' calls still fit.
 * - messageMs 5000: all calls of one message (envelope phases plus end of message) together,
 *   half of Sendmail's per-reply read timeout, far below the chain's own budget
 *   (`filters.messageBudgetMs`, 60 s) and Postfix's `milter_content_timeout` (300 s).
 */
export const DEFAULT_PLUGIN_LIMITS: PluginLimits = Object.freeze({
  memoryMb: 64,
  cpuMs: 200,
  wallMs: 1000,
  messageMs: 5000,
});

/** A validated manifest, defaults filled in, paths absolute. Frozen. */
export interface PluginManifest {
  /** package.json `name`. */
  name: string;
  /** package.json `version`. */
  version: string;
  /** Semver range of @milterd/sdk the plugin was written for. */
  sdk: string;
  /** Absolute path of the entry file. */
  entry: string;
  /** Hooks the plugin says it defines (checked against what it registers, when given). */
  hooks?: HookName[];
  /** Modification actions the plugin may take at end of message. */
  actions: Action[];
  /** Host services the plugin asks for; the administrator grants them. */
  capabilities: Capability[];
  /** `milterd.limits` merged over DEFAULT_PLUGIN_LIMITS. */
  limits: PluginLimits;
  /** Macros to ask the MTA for, by stage. */
  macros: Partial<Record<MacroStage, string[]>>;
  /** JSON Schema (draft-07) of the plugin's options, checked to be a valid schema. */
  optionsSchema?: object;
  /**
   * What the plugin reads at end of message. `body: false` spares it a copy of the body (and
   * its memory limit): a plugin that only adds headers should say so, or a large message could
   * exceed its heap just by being handed over.
   */
  reads: { headers: boolean; body: boolean };
  /** Absolute path of the package root. */
  dir: string;
}

// ---------------------------------------------------------------------------------------------
// Schema

/** A string enum as JSON Schema `enum` (clearer validation errors than a union of literals). */
function StringEnum<const T extends readonly string[]>(values: T, options: SchemaOptions = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: values, ...options });
}

/** A list of distinct enum values. */
function EnumList<const T extends readonly string[]>(values: T, description: string) {
  return Type.Array(StringEnum(values), { uniqueItems: true, description });
}

/**
 * Sendmail macro names as SETSYMLIST takes them: one character (`i`, `j`, `_`) or `{name}`.
 * `x-expected` is read back by `explain()` to say what a bad value should look like.
 */
const MacroName = Type.String({
  pattern: '^(?:[A-Za-z0-9_]|\\{[A-Za-z0-9_]{1,62}\\})$',
  'x-expected': 'a macro name: one letter, digit or _ (i, j, _), or {name} ({auth_authen})',
});
const MacroList = Type.Array(MacroName, { uniqueItems: true });

const Limits = Type.Object(
  {
    memoryMb: Type.Optional(Type.Integer({ minimum: 8, maximum: 4096, description: 'Isolate heap limit, MB.' })),
    cpuMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 60000, description: 'CPU time of one hook call, ms.' })),
    wallMs: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 300000, description: 'Wall-clock time of one hook call, awaits included, ms.' }),
    ),
    messageMs: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 600000, description: 'Wall-clock time of all hook calls of one message, ms.' }),
    ),
  },
  { additionalProperties: false },
);

/** The `milterd` key of package.json. */
export const ManifestSchema = Type.Object(
  {
    sdk: Type.String({ minLength: 1, description: 'Semver range of @milterd/sdk the plugin was written for.' }),
    entry: Type.Optional(Type.String({ minLength: 1, description: 'Entry file, relative to the package root.' })),
    hooks: Type.Optional(EnumList(HOOK_NAMES, 'Hooks the plugin defines.')),
    actions: Type.Optional(EnumList(ACTIONS, 'Modification actions the plugin may take.')),
    capabilities: Type.Optional(EnumList(CAPABILITIES, 'Host services the plugin asks for.')),
    limits: Type.Optional(Limits),
    macros: Type.Optional(
      Type.Object(
        {
          connect: Type.Optional(MacroList),
          helo: Type.Optional(MacroList),
          envfrom: Type.Optional(MacroList),
          envrcpt: Type.Optional(MacroList),
          data: Type.Optional(MacroList),
          eoh: Type.Optional(MacroList),
          eom: Type.Optional(MacroList),
        },
        { additionalProperties: false },
      ),
    ),
    optionsSchema: Type.Optional(Type.Object({}, { additionalProperties: true })),
    reads: Type.Optional(
      Type.Object(
        {
          headers: Type.Optional(Type.Boolean({ description: 'The plugin reads headers at end of message (default true).' })),
          body: Type.Optional(Type.Boolean({ description: 'The plugin reads the body at end of message (default true).' })),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

/** The parts of package.json milterd reads; every other key is the package's business. */
const PackageSchema = Type.Object(
  {
    // npm's rules for new package names (validate-npm-package-name), scope included.
    name: Type.String({
      maxLength: 214,
      pattern: '^(?:@[a-z0-9-~][a-z0-9-._~]*/)?[a-z0-9-~][a-z0-9-._~]*$',
      'x-expected': 'an npm package name (lower case, optionally @scope/name)',
    }),
    version: Type.String({ minLength: 1 }),
    main: Type.Optional(Type.String({ minLength: 1 })),
    exports: Type.Optional(Type.Unknown()),
    milterd: ManifestSchema,
  },
  { additionalProperties: true },
);
type PackageJson = Static<typeof PackageSchema>;

const ajv = new Ajv({ allErrors: true, strict: false, verbose: true });
const validatePackage = ajv.compile<PackageJson>(PackageSchema);

/** Entry files tried, in order, when neither the manifest nor package.json names one. */
const ENTRY_FALLBACKS = ['src/index.ts', 'src/index.js', 'index.ts', 'index.js'] as const;
/** Conditions tried in package.json `exports`, as the bundler uses them. */
const EXPORT_CONDITIONS = new Set(['milterd', 'import', 'default']);

// ---------------------------------------------------------------------------------------------
// Reading

/** Reads and validates `dir/package.json`'s manifest. Throws MILTERD_PLUGIN_MANIFEST. */
export async function readManifest(dir: string): Promise<PluginManifest> {
  const root = resolve(dir);
  const file = join(root, 'package.json');
  /** `plugin` is the package name, or the folder name before the name is known. */
  const fail = (plugin: string, lines: string[], named = true): never => {
    const label = named ? `plugin "${plugin}"` : `plugin folder "${plugin}"`;
    const text = lines.map((l) => `${file} (${label}): ${l}`);
    throw new MilterdError('MILTERD_PLUGIN_MANIFEST', text.join('\n'), { details: { plugin, file, errors: lines } });
  };
  const folder = basename(root);

  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    return fail(folder, [`cannot read: ${(err as Error).message}`], false);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    return fail(folder, [`not valid JSON: ${(err as Error).message}`], false);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    return fail(folder, ['(top level): expected an object'], false);
  }
  const raw = data as Record<string, unknown>;
  const named = typeof raw.name === 'string' && raw.name !== '';
  const label = named ? (raw.name as string) : folder;
  if (!('milterd' in raw)) {
    return fail(label, ['milterd: missing: this package is not a milterd plugin (add "milterd": { "sdk": "<range>" })'], named);
  }

  const lines: string[] = [];
  const valid = validatePackage(raw);
  if (!valid) for (const e of collapse(validatePackage.errors ?? [])) lines.push(`${keyPath(e)}: ${explain(e)}`);

  // Checks JSON Schema cannot express, reported the same way. Each runs when its own fields
  // have the right type, even if others are wrong, so one pass reports as much as it can.
  const m: Record<string, unknown> = isPlainObject(raw.milterd) ? raw.milterd : {};
  if (typeof raw.version === 'string' && raw.version !== '' && semver.valid(raw.version) === null) {
    lines.push(`version: expected a semver version such as 1.0.0, got ${JSON.stringify(raw.version)}`);
  }
  if (typeof m.sdk === 'string' && m.sdk !== '' && semver.validRange(m.sdk) === null) {
    lines.push(`milterd.sdk: expected a semver range such as ^1.0.0, got ${JSON.stringify(m.sdk)}`);
  }
  if (valid) {
    const limits: PluginLimits = { ...DEFAULT_PLUGIN_LIMITS, ...raw.milterd.limits };
    // A call cannot use more CPU than wall time, nor one call more than the whole message.
    if (limits.cpuMs > limits.wallMs) {
      lines.push(`milterd.limits.cpuMs: expected at most wallMs (${limits.wallMs}), got ${limits.cpuMs}: raise wallMs too`);
    }
    if (limits.wallMs > limits.messageMs) {
      lines.push(`milterd.limits.wallMs: expected at most messageMs (${limits.messageMs}), got ${limits.wallMs}: raise messageMs too`);
    }
  }
  if (isPlainObject(m.optionsSchema)) lines.push(...checkOptionsSchema(m.optionsSchema));
  const entry = await findEntry(root, { entry: m.entry, main: raw.main, exports: raw.exports }, lines);
  if (!valid || lines.length > 0 || entry === undefined) return fail(label, lines, named);

  const pkg = raw as PackageJson;
  const manifest: PluginManifest = {
    name: pkg.name,
    version: pkg.version,
    sdk: pkg.milterd.sdk,
    entry,
    ...(pkg.milterd.hooks === undefined ? {} : { hooks: [...pkg.milterd.hooks] }),
    actions: [...(pkg.milterd.actions ?? [])],
    capabilities: [...(pkg.milterd.capabilities ?? [])],
    limits: { ...DEFAULT_PLUGIN_LIMITS, ...pkg.milterd.limits },
    macros: structuredClone(pkg.milterd.macros ?? {}),
    ...(pkg.milterd.optionsSchema === undefined ? {} : { optionsSchema: structuredClone(pkg.milterd.optionsSchema) }),
    reads: { headers: pkg.milterd.reads?.headers ?? true, body: pkg.milterd.reads?.body ?? true },
    dir: root,
  };
  return deepFreeze(manifest);
}

/**
 * Throws MILTERD_PLUGIN_SDK_INCOMPATIBLE unless `available` (the host's SDK version) satisfies
 * the plugin's range. Prereleases only match ranges that name them (semver's default).
 */
export function checkSdkCompatibility(m: PluginManifest, available: string): void {
  if (semver.valid(available) === null) throw new TypeError(`checkSdkCompatibility: ${JSON.stringify(available)} is not a semver version`);
  if (semver.satisfies(available, m.sdk, { includePrerelease: false })) return;
  throw new MilterdError(
    'MILTERD_PLUGIN_SDK_INCOMPATIBLE',
    `plugin "${m.name}" ${m.version} (${m.dir}) wants @milterd/sdk ${m.sdk}, but this milterd provides @milterd/sdk ${available}`,
    { details: { plugin: m.name, wanted: m.sdk, available } },
  );
}

/**
 * The entry file: manifest `entry`, else package.json `exports['.']` (Node gives `exports`
 * precedence over `main`), else `main`, else the first of ENTRY_FALLBACKS that exists. A file
 * that is named but missing is an error on the key that named it; the file must be inside the
 * package. Problems are pushed to `lines`.
 */
async function findEntry(
  root: string,
  fields: { entry: unknown; main: unknown; exports: unknown },
  lines: string[],
): Promise<string | undefined> {
  // A field of the wrong type has its schema error already.
  if (fields.entry !== undefined && typeof fields.entry !== 'string') return undefined;
  if (fields.main !== undefined && typeof fields.main !== 'string') return undefined;
  const named: Array<[key: string, path: string]> = [];
  if (fields.entry !== undefined) named.push(['milterd.entry', fields.entry]);
  else {
    const fromExports = exportsEntry(fields.exports);
    if (fromExports !== undefined) named.push(['exports', fromExports]);
    else if (fields.main !== undefined) named.push(['main', fields.main]);
  }
  for (const [key, path] of named) {
    const abs = resolve(root, path);
    const rel = relative(root, abs);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
      lines.push(`${key}: expected a file inside the package, got ${JSON.stringify(path)}`);
      return undefined;
    }
    if (!(await isFile(abs))) {
      lines.push(`${key}: file not found: ${abs}${key === 'milterd.entry' ? '' : ' (build the package, or set milterd.entry to its source)'}`);
      return undefined;
    }
    return abs;
  }
  for (const f of ENTRY_FALLBACKS) {
    const abs = join(root, f);
    if (await isFile(abs)) return abs;
  }
  lines.push(`milterd.entry: missing, and none of ${ENTRY_FALLBACKS.join(', ')} exists`);
  return undefined;
}

/** The path `exports` gives for `.` under the milterd/import/default conditions, if any. */
function exportsEntry(exp: unknown): string | undefined {
  if (typeof exp === 'string') return exp;
  if (Array.isArray(exp)) {
    for (const e of exp) {
      const r = exportsEntry(e);
      if (r !== undefined) return r;
    }
    return undefined;
  }
  if (exp === null || typeof exp !== 'object') return undefined;
  const obj = exp as Record<string, unknown>;
  const keys = Object.keys(obj);
  // Subpath map ({".": …, "./x": …}) or a conditions object ({"import": …}), never mixed.
  if (keys.some((k) => k.startsWith('.'))) return exportsEntry(obj['.']);
  // Node takes the first key, in object order, whose condition is active.
  for (const k of keys) {
    if (!EXPORT_CONDITIONS.has(k)) continue;
    const r = exportsEntry(obj[k]);
    if (r !== undefined) return r;
  }
  return undefined;
}

/** Problems with the plugin's options schema: it must be a valid draft-07 schema that compiles. */
function checkOptionsSchema(schema: object): string[] {
  // A fresh instance per plugin: two plugins may use the same $id.
  const check = new Ajv({ allErrors: true, strict: false, verbose: true });
  if (!check.validateSchema(schema)) {
    return collapse(check.errors ?? []).map((e) => `${keyPath(e, ['milterd', 'optionsSchema'])}: ${explain(e)}`);
  }
  try {
    check.compile(schema);
  } catch (err) {
    return [`milterd.optionsSchema: not a usable JSON Schema: ${(err as Error).message}`];
  }
  return [];
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Error wording, as in src/config/load.ts

/** One error per key path: the first, which for anyOf/oneOf is the most specific. */
function collapse(errors: readonly ErrorObject[]): ErrorObject[] {
  const seen = new Set<string>();
  const out: ErrorObject[] = [];
  for (const e of errors) {
    const key = `${e.instancePath}|${keyPath(e)}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(e);
  }
  return out;
}

function keyPath(e: ErrorObject, prefix: readonly string[] = []): string {
  const parts = [...prefix, ...e.instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))];
  if (e.keyword === 'additionalProperties') parts.push(String((e.params as { additionalProperty: string }).additionalProperty));
  if (e.keyword === 'required') parts.push(String((e.params as { missingProperty: string }).missingProperty));
  return parts.length === 0 ? '(top level)' : parts.map((p) => (/^\d+$/.test(p) ? `[${p}]` : p)).join('.').replace(/\.\[/g, '[');
}

function explain(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  const hint = (e.parentSchema as Record<string, unknown> | undefined)?.['x-expected'];
  switch (e.keyword) {
    case 'additionalProperties':
      return 'unknown key';
    case 'required':
      return 'missing';
    case 'enum':
      return `expected one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}, got ${JSON.stringify(e.data)}`;
    case 'type':
      return `expected ${String(p.type)}, got ${describe(e.data)}`;
    case 'uniqueItems':
      return `expected no duplicates, got ${JSON.stringify(e.data)}`;
    case 'minimum':
    case 'maximum':
      return `expected a value ${String(p.comparison)} ${String(p.limit)}, got ${JSON.stringify(e.data)}`;
    case 'minLength':
      return 'expected a non-empty string';
    case 'pattern':
    case 'maxLength':
      if (typeof hint === 'string') return `expected ${hint}, got ${JSON.stringify(e.data)}`;
      return `expected a value that ${e.message ?? 'matches the schema'}`;
    default:
      return `expected a value that ${e.message ?? 'matches the schema'}`;
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${JSON.stringify(v)}`;
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
