/**
 * The plugin testing kit (`milterd/testing`, also reachable as `@milterd/sdk/testing`): load a
 * plugin into the real sandbox and run messages (or .eml files) through it, with no MTA.
 *
 * ```ts
 * import { loadTestPlugin } from '@milterd/sdk/testing';
 * const plugin = await loadTestPlugin('.', { capabilities: ['log'], options: { ... } });
 * const r = await plugin.run({ eml: await readFile('spam.eml'), rcpts: ['<bob@example.net>'] });
 * assert.equal(r.verdict, 'reject');
 * await plugin.close();
 * ```
 * @module
 */
import { resolve } from 'node:path';
import { silentLogger, type Logger } from '../log.ts';
import { loadChain, loadSdkRuntime, type LoadedPlugin, type PluginEntryConfig } from '../plugins/load.ts';
import { runMessage, type TestMessage, type TestResult } from './run-message.ts';

export { runMessage, type TestMessage, type TestResult, type TestStep } from './run-message.ts';
export { parseEml, type ParsedEml } from './eml.ts';

/** A plugin (or a chain of plugins) loaded in its sandbox for tests. */
export interface TestPlugin {
  /** The loaded plugins, in chain order. */
  readonly plugins: readonly LoadedPlugin[];
  /** Runs one message through the chain. */
  run(message: TestMessage): Promise<TestResult>;
  /** Stops the sandbox processes. */
  close(): Promise<void>;
}

/** Options for one plugin under test (the same as a chain entry of the configuration). */
export type TestPluginOptions = Omit<PluginEntryConfig, 'plugin'> & { readonly logger?: Logger };

/** Loads the plugin in `dir` (default: the current folder) into a real sandbox. */
export async function loadTestPlugin(dir = '.', options: TestPluginOptions = {}): Promise<TestPlugin> {
  const { logger, ...entry } = options;
  return loadTestChain([{ plugin: resolve(dir), ...entry }], logger === undefined ? {} : { logger });
}

/** Loads several plugins as a chain, in order. */
export async function loadTestChain(entries: readonly PluginEntryConfig[], options: { baseDir?: string; logger?: Logger } = {}): Promise<TestPlugin> {
  const logger = options.logger ?? silentLogger();
  const plugins = await loadChain(entries, {
    baseDir: options.baseDir ?? process.cwd(),
    sdk: await loadSdkRuntime(),
    logger,
    onError: 'tempfail',
  });
  return {
    plugins,
    run: (message) => runMessage(plugins.map((p) => p.entry), message, { logger }),
    close: async () => {
      await Promise.all(plugins.map((p) => p.supervisor.stop()));
    },
  };
}
