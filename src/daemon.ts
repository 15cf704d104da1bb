/**
 * The daemon: configuration → logger → server, plus the process signals of libmilter's life
 * cycle. SIGTERM/SIGINT stop accepting and let connections finish (smfi_stop); a second
 * signal, or the shutdown deadline, closes what is left.
 * @module
 */
import type { Config } from './config/schema.ts';
import { createLogger, type Logger } from './log.ts';
import { MilterServer } from './server/server.ts';
import type { ChainEntry } from './chain/filter.ts';

/** A running daemon. */
export interface Daemon {
  readonly server: MilterServer;
  readonly logger: Logger;
  /** Resolves when the daemon has stopped (after a signal or `stop`). */
  readonly stopped: Promise<void>;
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

/** Starts the daemon and installs signal handlers. */
export async function startDaemon(config: Config, options: { signals?: boolean } = {}): Promise<Daemon> {
  const logger = createLogger(config.log);
  const server = new MilterServer(serverOptions(config, [], logger));
  await server.start();
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => (resolveStopped = r));
  let stopping: Promise<void> | undefined;
  const stop = (deadlineMs = config.timeouts.shutdownMs): Promise<void> => {
    stopping ??= server.stop({ deadlineMs }).then(resolveStopped);
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
    // SIGHUP's default action would kill the daemon: keep it alive until reload exists.
    process.on('SIGHUP', () => logger.warn('SIGHUP received: configuration reload is not supported yet; ignored'));
    void stopped.then(() => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    });
  }
  return { server, logger, stopped, stop };
}
