/**
 * milterd as a library: embed the server with in-process filters, or load sandboxed plugins.
 * The command line (`milterd start`) is built from the same pieces.
 * @module
 */
export { MilterServer, type MilterServerOptions } from './server/server.ts';
export { Chain, DEFAULT_CHAIN_DEFAULTS, type ChainDefaults } from './chain/chain.ts';
export { defineFilter, type ClassicFilter } from './chain/define.ts';
export type * from './chain/filter.ts';
export { loadChain, loadPlugin, loadSdkRuntime, type LoadedPlugin, type PluginEntryConfig } from './plugins/load.ts';
export { loadConfig, parseConfig, defaultConfig } from './config/load.ts';
export type { Config } from './config/schema.ts';
export { startDaemon, type Daemon } from './daemon.ts';
export { ERRORS, MilterdError, type ErrorCode } from './errors.ts';
export { createLogger, type Logger } from './log.ts';
