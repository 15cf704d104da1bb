/**
 * From a chain entry in the configuration to a running sandboxed plugin: resolve the package,
 * read and check its manifest (SDK range with semver), bundle it, start its sandbox process,
 * and wrap it as a chain Filter. Every failure names the plugin and says what to fix.
 * @module
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { MilterdError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Config } from '../config/schema.ts';
import type { ChainEntry, FailurePolicy } from '../chain/filter.ts';
import type { Capability } from '../../sdk/src/protocol.ts';
import { RUNTIME_PROTOCOL } from '../../sdk/src/protocol.ts';
import { Supervisor } from '../sandbox/supervisor.ts';
import type { StorageSettings } from '../sandbox/kv.ts';
import { sandboxFilter } from '../sandbox/filter.ts';
import { readManifest, checkSdkCompatibility, type PluginManifest, type PluginLimits } from './manifest.ts';
import { resolvePlugin } from './resolve.ts';
import { bundlePlugin } from './bundle.ts';

/** A chain entry as the configuration gives it. */
export interface PluginEntryConfig {
  /** npm package name, or a folder path (relative to the configuration file). */
  readonly plugin: string;
  readonly enabled?: boolean;
  /** Evaluation mode: verdicts and edits logged and counted, not applied. */
  readonly shadow?: boolean;
  readonly onError?: FailurePolicy;
  /** Host services granted to the plugin. */
  readonly capabilities?: readonly Capability[];
  /** Overrides of the manifest's limits. */
  readonly limits?: Partial<PluginLimits>;
  /** Options passed to the plugin (ctx.options). */
  readonly options?: unknown;
  /** Isolates in the plugin's sandbox process (parallel connections). */
  readonly poolSize?: number;
  /** Circuit breaker: failures in a row (of one hook) that switch the plugin off, and the first cool-down. */
  readonly breaker?: { readonly threshold?: number; readonly cooldownMs?: number };
}

/** The SDK runtime that plugins' `@milterd/sdk` imports resolve to inside their isolates. */
export interface SdkRuntime {
  readonly version: string;
  readonly code: string;
}

// The SDK is a dependency of milterd: sdk/ in a checkout (an npm workspace, linked), a copy under
// node_modules when milterd is installed from the registry.
const SDK_DIR = new URL('./', import.meta.resolve('@milterd/sdk/package.json'));

/** Reads the built SDK runtime (one ESM file) and its version. */
export async function loadSdkRuntime(): Promise<SdkRuntime> {
  const pkg = JSON.parse(await readFile(new URL('package.json', SDK_DIR), 'utf8')) as { version: string };
  const file = new URL('dist/index.js', SDK_DIR);
  let code: string;
  try {
    code = await readFile(file, 'utf8');
  } catch {
    throw new MilterdError(
      'MILTERD_PLUGIN_LOAD',
      `the SDK runtime ${fileURLToPath(file)} is missing: build it with "npm run build -w @milterd/sdk" (npm install does it)`,
    );
  }
  return { version: pkg.version, code };
}

/** A plugin running in its sandbox, ready to be put in a chain. */
export interface LoadedPlugin {
  readonly manifest: PluginManifest;
  readonly supervisor: Supervisor;
  readonly entry: ChainEntry;
  /** Source files that went into the bundle (for watching). */
  readonly files: readonly string[];
  /** Capabilities the plugin asked for and got. */
  readonly granted: readonly Capability[];
  /** The limits it runs with (effectiveLimits). */
  readonly limits: PluginLimits;
  /** See PreparedPlugin.key. */
  readonly key: string;
}

/** Where plugins come from. */
export interface LoadContext {
  /** Folder relative plugin paths are resolved from (the configuration file's folder). */
  readonly baseDir: string;
  /** Folder where `milterd plugin add` installs packages (node_modules inside). */
  readonly pluginDir?: string;
  readonly sdk: SdkRuntime;
  readonly logger: Logger;
  /** Default failure policy (configuration `filters.onError`). */
  readonly onError: FailurePolicy;
  /** Where plugins granted `kv` keep their data (configuration `storage`); default: in memory. */
  readonly storage?: StorageSettings;
  /** Caps on every plugin's limits (configuration `filters.timeoutMs`, `filters.messageBudgetMs`). */
  readonly caps?: LimitCaps;
}

/**
 * The load context a configuration implies: plugin paths relative to `baseDir` (the
 * configuration file's folder), the failure policy and limit caps of `filters`, and, with
 * `storage`, where kv plugins keep their data (`milterd check` and `milterd test` leave that out,
 * so they never touch Redis).
 */
export function contextFromConfig(
  config: Config,
  baseDir: string,
  services: { readonly sdk: SdkRuntime; readonly logger: Logger; readonly storage?: boolean },
): LoadContext {
  return {
    baseDir,
    ...(config.pluginDir === undefined ? {} : { pluginDir: resolve(baseDir, config.pluginDir) }),
    sdk: services.sdk,
    logger: services.logger,
    onError: config.filters.onError,
    caps: config.filters,
    ...(services.storage === true ? { storage: config.storage } : {}),
  };
}

/** Ceilings the administrator sets for every plugin in the chain. */
export interface LimitCaps {
  /** Caps wallMs (and so cpuMs). */
  readonly timeoutMs?: number;
  /** Caps messageMs. */
  readonly messageBudgetMs?: number;
}

/**
 * The limits a plugin runs with: its manifest's, overridden by its chain entry, capped by the
 * chain-wide `filters` settings, and made consistent with the tighter limit winning (CPU time
 * within wall-clock time within the message's time): each limit is checked on its own, so a
 * wallMs lowered by configuration below the manifest's cpuMs would otherwise never let cpuMs act.
 */
export function effectiveLimits(manifest: PluginLimits, overrides: Partial<PluginLimits> | undefined, caps: LimitCaps = {}): PluginLimits {
  const l = { ...manifest, ...overrides };
  const messageMs = Math.min(l.messageMs, caps.messageBudgetMs ?? Infinity);
  const wallMs = Math.min(l.wallMs, caps.timeoutMs ?? Infinity, messageMs);
  return { ...l, messageMs, wallMs, cpuMs: Math.min(l.cpuMs, wallMs) };
}

/** A plugin resolved, checked and bundled, not started yet. */
export interface PreparedPlugin {
  readonly manifest: PluginManifest;
  readonly bundle: { readonly code: string; readonly warnings: readonly string[]; readonly files: readonly string[] };
  /**
   * Identity of what would run: the bundle's hash and the entry's settings. Two entries with the
   * same key run the same thing, so a reload keeps the running sandbox instead of replacing it.
   */
  readonly key: string;
  /** The limits it would run with (effectiveLimits); part of the key. */
  readonly limits: PluginLimits;
}

/** Resolves, checks and bundles a plugin without starting it (cheap: no process). */
export async function preparePlugin(cfg: PluginEntryConfig, ctx: LoadContext): Promise<PreparedPlugin> {
  const dir = await resolvePlugin(cfg.plugin, { baseDir: ctx.baseDir, ...(ctx.pluginDir === undefined ? {} : { pluginDir: ctx.pluginDir }) });
  const manifest = await readManifest(dir);
  checkSdkCompatibility(manifest, ctx.sdk.version);
  const bundle = await bundlePlugin(manifest);
  if (manifest.optionsSchema !== undefined) checkOptions(manifest, cfg.options ?? {});
  const hash = createHash('sha256').update(bundle.code).update('\0').update(ctx.sdk.code).digest('hex');
  const { enabled: _enabled, ...settings } = cfg;
  // The storage settings matter only to a plugin granted kv: a change restarts only those.
  const storage = cfg.capabilities?.includes('kv') === true ? ctx.storage : undefined;
  const limits = effectiveLimits(manifest.limits, cfg.limits, ctx.caps);
  const key = `${hash}\0${JSON.stringify({ ...settings, limits, dir, onError: cfg.onError ?? ctx.onError, storage })}`;
  return { manifest, bundle, key, limits };
}

/** Loads one plugin. Stops its sandbox again if anything after starting it fails. */
export async function loadPlugin(cfg: PluginEntryConfig, ctx: LoadContext, prepared?: PreparedPlugin): Promise<LoadedPlugin> {
  const { manifest, bundle, key, limits } = prepared ?? (await preparePlugin(cfg, ctx));
  for (const w of bundle.warnings) ctx.logger.warn({ plugin: manifest.name }, `bundling: ${w}`);

  const granted = new Set(cfg.capabilities ?? []);
  const asked = manifest.capabilities;
  const missing = asked.filter((c) => !granted.has(c));
  if (missing.length > 0) {
    ctx.logger.warn(
      { plugin: manifest.name, code: 'MILTERD_PLUGIN_CAPABILITY', missing },
      `plugin ${manifest.name} asks for ${missing.join(', ')}, not granted: calls to them will fail`,
    );
  }
  const capabilities = asked.filter((c) => granted.has(c));
  const poolSize = cfg.poolSize ?? 2;
  const supervisor = new Supervisor({
    plugin: manifest.name,
    sdkCode: ctx.sdk.code,
    pluginCode: bundle.code,
    capabilities,
    limits: { memoryMb: limits.memoryMb, cpuMs: limits.cpuMs, wallMs: limits.wallMs },
    poolSize,
    options: cfg.options ?? {},
    ...(ctx.storage !== undefined && capabilities.includes('kv') ? { storage: ctx.storage } : {}),
    // Node itself (~60 MB) plus, per isolate, up to 3× its heap limit (the limit is soft).
    processMemoryMb: 160 + poolSize * limits.memoryMb * 3,
    logger: ctx.logger,
    ...(cfg.breaker?.threshold === undefined ? {} : { breakerThreshold: cfg.breaker.threshold }),
    ...(cfg.breaker?.cooldownMs === undefined ? {} : { breakerCooldownMs: cfg.breaker.cooldownMs }),
  });
  const description = await supervisor.start();
  try {
    if (description.protocol !== RUNTIME_PROTOCOL) {
      throw new MilterdError(
        'MILTERD_PLUGIN_SDK_INCOMPATIBLE',
        `plugin ${manifest.name}: SDK runtime speaks protocol ${description.protocol}, the host ${RUNTIME_PROTOCOL}`,
      );
    }
    if (manifest.hooks !== undefined) {
      const undeclared = description.hooks.filter((h) => !manifest.hooks!.includes(h));
      if (undeclared.length > 0) {
        throw new MilterdError(
          'MILTERD_PLUGIN_MANIFEST',
          `plugin ${manifest.name} defines hooks its manifest does not list: ${undeclared.join(', ')}`,
        );
      }
    }
    const needBody = description.hooks.filter((h) => h === 'body');
    const needHeaders = description.hooks.filter((h) => h === 'header' || h === 'eoh');
    if ((!manifest.reads.body && needBody.length > 0) || (!manifest.reads.headers && needHeaders.length > 0)) {
      throw new MilterdError(
        'MILTERD_PLUGIN_MANIFEST',
        `plugin ${manifest.name} defines ${[...needBody, ...needHeaders].join(', ')} but its manifest says it does not read ${manifest.reads.body ? 'headers' : 'the body'} (milterd.reads)`,
      );
    }
    if (description.hooks.length === 0) {
      throw new MilterdError('MILTERD_PLUGIN_LOAD', `plugin ${manifest.name} defines no hook`);
    }
  } catch (err) {
    await supervisor.stop();
    throw err;
  }
  const filter = sandboxFilter(
    {
      name: manifest.name,
      hooks: description.hooks,
      actions: manifest.actions,
      macros: manifest.macros,
      reads: manifest.reads,
      callTimeoutMs: limits.wallMs + 1000,
    },
    supervisor,
  );
  const entry: ChainEntry = {
    filter,
    onError: cfg.onError ?? ctx.onError,
    // The sandbox enforces wallMs itself; the chain's timer is the last line behind it.
    timeoutMs: limits.wallMs + 2000,
    messageBudgetMs: limits.messageMs,
    ...(cfg.shadow === true ? { shadow: true } : {}),
  };
  ctx.logger.info(
    { plugin: manifest.name, version: manifest.version, hooks: description.hooks, actions: manifest.actions, capabilities },
    `plugin ${manifest.name}@${manifest.version} loaded`,
  );
  return { manifest, supervisor, entry, files: [...bundle.files, join(manifest.dir, 'package.json')], granted: capabilities, limits, key };
}

const ajv = new Ajv({ allErrors: true, strict: false });

/** Validates a chain entry's options against the schema the plugin publishes. */
function checkOptions(m: PluginManifest, options: unknown): void {
  const validate = ajv.compile(m.optionsSchema as object);
  if (validate(options)) return;
  const lines = (validate.errors ?? []).map((e) => {
    const path = e.instancePath.split('/').slice(1).join('.');
    return `plugin ${m.name}: options${path === '' ? '' : `.${path}`}: ${e.message ?? 'invalid'}`;
  });
  throw new MilterdError('MILTERD_CONFIG_INVALID', lines.join('\n'), { details: { plugin: m.name, errors: lines } });
}

/** Loads every enabled entry in order; on a failure, stops those already started and rethrows. */
export async function loadChain(entries: readonly PluginEntryConfig[], ctx: LoadContext): Promise<LoadedPlugin[]> {
  const loaded: LoadedPlugin[] = [];
  try {
    for (const e of entries) {
      if (e.enabled === false) continue;
      loaded.push(await loadPlugin(e, ctx));
    }
  } catch (err) {
    await Promise.all(loaded.map((p) => p.supervisor.stop()));
    throw err;
  }
  return loaded;
}
