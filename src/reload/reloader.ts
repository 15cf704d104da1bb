/**
 * Hot reload: when a plugin's files or the configuration change (or on SIGHUP), build the new
 * chain off the hot path — validate the configuration, bundle every plugin, start sandboxes only
 * for plugins whose code or settings changed — and only if all of it works, swap it in. Messages
 * in progress finish on the chain they started with (ChainHolder); a retired chain's plugins
 * that the new chain does not reuse are stopped once the last message using them is done. A
 * broken change keeps the running version and logs why, with file and line for code errors.
 * @module
 */
import { watch, type FSWatcher } from 'chokidar';
import { stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Chain, DEFAULT_CHAIN_DEFAULTS } from '../chain/chain.ts';
import { applyOverrides, loadConfig, type ConfigOverrides } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { MilterdError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { countReload } from '../metrics.ts';
import { contextFromConfig, loadPlugin, preparePlugin, type LoadedPlugin, type LoadContext, type SdkRuntime } from '../plugins/load.ts';
import type { MilterServer } from '../server/server.ts';
import { keepWarmSandbox } from '../sandbox/supervisor.ts';

/** One chain and the plugins it runs. */
interface Generation {
  readonly chain: Chain;
  readonly plugins: readonly LoadedPlugin[];
}

/** What a reload did. */
export interface ReloadResult {
  readonly ok: boolean;
  readonly ms: number;
  /** Plugins started (changed or new), reused, and retired. */
  readonly started: readonly string[];
  readonly reused: readonly string[];
  readonly error?: MilterdError | Error;
}

/** Settings of the config that a reload cannot apply (they need a restart). */
const RESTART_KEYS = ['listen', 'socketMode', 'tmpDir', 'log', 'limits', 'timeouts', 'metrics', 'reload'] as const;

export interface ReloaderOptions {
  readonly configFile: string;
  readonly config: Config;
  /** Command-line settings that win over the file (applied to each reloaded configuration). */
  readonly overrides?: ConfigOverrides;
  readonly plugins: readonly LoadedPlugin[];
  readonly server: MilterServer;
  readonly sdk: SdkRuntime;
  readonly logger: Logger;
}

/** Rebuilds and swaps the chain; watches files when asked to. */
export class Reloader {
  readonly #o: ReloaderOptions;
  readonly #log: Logger;
  #config: Config;
  #current: Generation;
  /** Generations swapped out and still in use. */
  readonly #draining = new Set<Generation>();
  #running: Promise<ReloadResult> | undefined;
  #again: string | undefined;
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #watched = new Set<string>();
  #ready: Promise<void> = Promise.resolve();
  #closed = false;
  /** Results of every reload so far (for tests and `milterd dev`). */
  readonly history: ReloadResult[] = [];

  constructor(options: ReloaderOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'reload' });
    this.#config = options.config;
    this.#current = { chain: options.server.chain, plugins: options.plugins };
  }

  /** Every plugin of the running and draining chains. */
  get plugins(): LoadedPlugin[] {
    const all = new Set<LoadedPlugin>(this.#current.plugins);
    for (const g of this.#draining) for (const p of g.plugins) all.add(p);
    return [...all];
  }

  #ctx(config: Config): LoadContext {
    return contextFromConfig(config, dirname(resolve(this.#o.configFile)), { sdk: this.#o.sdk, logger: this.#o.logger, storage: true });
  }

  /** Reloads now (reloads are serialised; one requested during another runs right after it). */
  reload(reason: string): Promise<ReloadResult> {
    if (this.#running !== undefined) {
      this.#again = reason;
      return this.#running;
    }
    const run = this.#reload(reason).finally(() => {
      this.#running = undefined;
      const again = this.#again;
      this.#again = undefined;
      if (again !== undefined && !this.#closed) void this.reload(again);
    });
    this.#running = run;
    return run;
  }

  /** Modification times of the watched files. */
  async #stamps(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    await Promise.all(
      [...this.#watched].map(async (f) => {
        out.set(f, await stat(f).then((s) => s.mtimeMs, () => -1));
      }),
    );
    return out;
  }

  /**
   * chokidar drops a change that comes within 50 ms of the previous one for the same file (its
   * change throttle has no trailing event), so an edit saved right after another, or while a
   * reload ran, could be missed: after each watched reload, compare the files' times with those
   * taken when it started, once the throttle window has passed, and reload again if any moved.
   */
  #settleCheck(before: Map<string, number>): void {
    if (this.#watcher === undefined || this.#closed) return;
    setTimeout(() => {
      if (this.#closed || this.#running !== undefined) return;
      void this.#stamps().then((after) => {
        for (const [f, t] of before) {
          if (after.get(f) !== t) {
            void this.reload(`change ${f}`);
            return;
          }
        }
      });
    }, 100).unref();
  }

  async #reload(reason: string): Promise<ReloadResult> {
    const t0 = performance.now();
    const before = await this.#stamps();
    try {
      return await this.#rebuild(reason, t0);
    } finally {
      this.#settleCheck(before);
    }
  }

  async #rebuild(reason: string, t0: number): Promise<ReloadResult> {
    const started: LoadedPlugin[] = [];
    try {
      const config = applyOverrides(await loadConfig(this.#o.configFile), this.#o.overrides, this.#o.configFile);
      const ctx = this.#ctx(config);
      const byKey = new Map(this.plugins.map((p) => [p.key, p]));
      const plugins: LoadedPlugin[] = [];
      const reused: string[] = [];
      for (const entry of config.chain) {
        if (entry.enabled === false) continue;
        const prepared = await preparePlugin(entry, ctx);
        const same = byKey.get(prepared.key);
        if (same !== undefined && !plugins.includes(same)) {
          plugins.push(same);
          reused.push(same.manifest.name);
          continue;
        }
        const p = await loadPlugin(entry, ctx, prepared);
        started.push(p);
        plugins.push(p);
      }
      for (const k of RESTART_KEYS) {
        if (JSON.stringify(config[k]) !== JSON.stringify(this.#config[k])) {
          this.#log.warn({ key: k }, `configuration key ${k} changed: it takes effect at the next restart`);
        }
      }
      const chain = new Chain(
        plugins.map((p) => p.entry),
        { ...DEFAULT_CHAIN_DEFAULTS, ...config.filters },
      );
      const old = this.#current;
      const next: Generation = { chain, plugins };
      this.#current = next;
      this.#config = config;
      this.#draining.add(old);
      this.#o.server.setChain(chain, () => this.#retire(old));
      const ms = performance.now() - t0;
      const result: ReloadResult = { ok: true, ms, started: started.map((p) => p.manifest.name), reused };
      this.#log.info(
        { reason, ms: Math.round(ms * 10) / 10, started: result.started, reused, filters: plugins.map((p) => p.manifest.name) },
        `chain reloaded (${reason}) in ${Math.round(ms)} ms`,
      );
      this.history.push(result);
      countReload(true);
      this.#rewatch();
      return result;
    } catch (err) {
      await Promise.all(started.map((p) => p.supervisor.stop()));
      const e = err instanceof Error ? err : new Error(String(err));
      this.#log.error(
        { reason, code: (e as MilterdError).code, err: e.message },
        `reload failed (${reason}); still running the previous version: ${e.message}`,
      );
      countReload(false);
      const result: ReloadResult = { ok: false, ms: performance.now() - t0, started: [], reused: [], error: e };
      this.history.push(result);
      return result;
    }
  }

  /** A swapped-out chain is no longer in use: stop the plugins nobody else runs. */
  #retire(g: Generation): void {
    this.#draining.delete(g);
    const alive = new Set(this.plugins);
    for (const p of g.plugins) {
      if (alive.has(p)) continue;
      this.#log.info({ plugin: p.manifest.name, version: p.manifest.version }, 'retired plugin version stopped');
      void p.supervisor.stop();
    }
  }

  /** Watches the configuration file and every plugin's files; changes reload after `debounceMs`. */
  watch(debounceMs: number): void {
    if (this.#watcher !== undefined) return;
    // A reload then only has to load the plugin, not boot a process.
    keepWarmSandbox(true);
    this.#watcher = watch([], { ignoreInitial: true, persistent: true });
    const w = this.#watcher;
    this.#ready = new Promise((r) => w.once('ready', () => r()));
    this.#watcher.on('all', (event, path) => {
      if (this.#closed) return;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => void this.reload(`${event} ${path}`), debounceMs);
    });
    this.#watcher.on('error', (err) => this.#log.warn({ err: (err as Error).message }, 'file watcher error'));
    this.#rewatch();
  }

  /** Resolves once the watcher is watching (tests wait for it before editing files). */
  async ready(): Promise<void> {
    await this.#ready;
    // chokidar sets up watches added after 'ready' asynchronously: give them a moment.
    await new Promise((r) => setTimeout(r, 150));
  }

  #rewatch(): void {
    const w = this.#watcher;
    if (w === undefined) return;
    const want = new Set<string>([resolve(this.#o.configFile)]);
    for (const p of this.#current.plugins) for (const f of p.files) if (!f.includes('/node_modules/.cache/')) want.add(f);
    const add = [...want].filter((f) => !this.#watched.has(f));
    const drop = [...this.#watched].filter((f) => !want.has(f));
    if (add.length > 0) w.add(add);
    if (drop.length > 0) w.unwatch(drop);
    this.#watched = want;
  }

  /** Stops watching and stops every plugin (after the server has stopped). */
  async close(): Promise<void> {
    this.#closed = true;
    keepWarmSandbox(false);
    clearTimeout(this.#timer);
    await this.#watcher?.close();
    await this.#running?.catch(() => undefined);
    await Promise.all(this.plugins.map((p) => p.supervisor.stop()));
  }
}
