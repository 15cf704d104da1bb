/**
 * The daemon: configuration → logger → server, plus the process signals of libmilter's life
 * cycle. SIGTERM/SIGINT stop accepting and let connections finish (smfi_stop); a second
 * signal, or the shutdown deadline, closes what is left. SIGHUP reopens `log.file` and reloads;
 * SIGUSR2 only reopens `log.file`.
 * @module
 */
import type { Config } from './config/schema.ts';
import type { ConfigOverrides } from './config/load.ts';
import { createLogger, reopenLogFile, type Logger } from './log.ts';
import { MilterServer } from './server/server.ts';
import type { ChainEntry } from './chain/filter.ts';
import { contextFromConfig, loadChain, loadSdkRuntime } from './plugins/load.ts';
import { Reloader } from './reload/reloader.ts';
import { enableMetrics, serveMetrics } from './metrics.ts';
import { MilterdError } from './errors.ts';

/** A running daemon. */
export interface Daemon {
  readonly server: MilterServer;
  readonly logger: Logger;
  /** Resolves when the daemon has stopped (after a signal or `stop`). */
  readonly stopped: Promise<void>;
  /** Present when the daemon was started from a configuration file. */
  readonly reloader: Reloader | undefined;
  stop(deadlineMs?: number): Promise<void>;
}

/** Builds server options from the configuration. */
export function serverOptions(config: Config, chain: readonly ChainEntry[], logger: Logger) {
  return {
    listen: config.listen,
    chain,
    chainDefaults: config.filters,
    logger,
    socketMode: Number.parseInt(config.socketMode, 8),
    maxFrameSize: config.limits.maxFrameBytes,
    bodyMemoryLimit: config.limits.bodyMemoryBytes,
    highWaterMark: config.limits.highWaterMarkBytes,
    progressIntervalMs: config.timeouts.progressIntervalMs,
    idleTimeoutMs: config.timeouts.idleMs,
    ...(config.tmpDir === undefined ? {} : { tmpDir: config.tmpDir }),
  };
}

/** Where the configuration came from: relative plugin paths start there. */
export interface DaemonOptions {
  readonly baseDir: string;
  /** The configuration file: reloads read it again. Without it there is no reload. */
  readonly configFile?: string;
  /** Command-line settings over the file's, re-applied at every reload. */
  readonly overrides?: ConfigOverrides;
  readonly signals?: boolean;
  /** Human-friendly log lines (milterd dev). */
  readonly pretty?: boolean;
}

/** Starts the daemon: loads the plugins of the chain, listens, installs signal handlers. */
export async function startDaemon(config: Config, options: DaemonOptions): Promise<Daemon> {
  const logger = createLogger({ ...config.log, ...(options.pretty ? { pretty: true } : {}) });
  const sdk = await loadSdkRuntime();
  const plugins = await loadChain(config.chain, contextFromConfig(config, options.baseDir, { sdk, logger, storage: true }));
  const server = new MilterServer(serverOptions(config, plugins.map((p) => p.entry), logger));
  try {
    await server.start();
  } catch (err) {
    await Promise.all(plugins.map((p) => p.supervisor.stop()));
    throw err;
  }
  let metricsServer: import('node:http').Server | undefined;
  if (config.metrics.listen !== undefined) {
    try {
      metricsServer = await serveMetrics(config.metrics.listen, enableMetrics(() => server.connections));
      logger.info({ metrics: `http://${config.metrics.listen}/metrics` }, 'metrics served');
    } catch (err) {
      await server.stop({ deadlineMs: 0 });
      await Promise.all(plugins.map((p) => p.supervisor.stop()));
      throw new MilterdError('MILTERD_SERVER_LISTEN', `cannot serve metrics on ${config.metrics.listen}: ${(err as Error).message}`, { cause: err });
    }
  }
  const reloader =
    options.configFile === undefined
      ? undefined
      : new Reloader({ configFile: options.configFile, config, plugins, server, sdk, logger, ...(options.overrides === undefined ? {} : { overrides: options.overrides }) });
  if (reloader !== undefined && config.reload.watch) reloader.watch(config.reload.debounceMs);
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => (resolveStopped = r));
  let stopping: Promise<void> | undefined;
  const stop = (deadlineMs = config.timeouts.shutdownMs): Promise<void> => {
    // Plugins stop after the last connection: messages in progress still need them.
    stopping ??= server
      .stop({ deadlineMs })
      .then(async () => {
        metricsServer?.close();
        if (reloader !== undefined) await reloader.close();
        else await Promise.all(plugins.map((p) => p.supervisor.stop()));
      })
      .then(resolveStopped);
    return stopping;
  };
  if (options.signals !== false) {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals): void => {
      signals++;
      if (signals === 1) {
        logger.info({ signal: sig, open: server.connections }, 'stopping: no new connections, open ones may finish');
        void stop();
      } else {
        logger.warn({ signal: sig, open: server.connections }, 'second signal: closing open connections now');
        void server.stop({ deadlineMs: 0 });
      }
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    // logrotate's postrotate sends SIGHUP (or SIGUSR2, which only reopens: SIGUSR1 is Node's
    // inspector signal). Reopening first puts the reload's own lines in the new file.
    const reopen = (sig: NodeJS.Signals): void => {
      if (reopenLogFile(logger)) logger.info({ signal: sig, file: config.log.file }, 'log file reopened');
    };
    const onHup = (): void => {
      reopen('SIGHUP');
      if (reloader === undefined) logger.warn('SIGHUP: no configuration file to reload');
      else void reloader.reload('SIGHUP');
    };
    const onUsr2 = (): void => reopen('SIGUSR2');
    process.on('SIGHUP', onHup);
    process.on('SIGUSR2', onUsr2);
    void stopped.then(() => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      process.off('SIGHUP', onHup);
      process.off('SIGUSR2', onUsr2);
    });
  }
  return { server, logger, stopped, stop, reloader };
}
