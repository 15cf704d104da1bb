/**
 * Structured logging with pino. Every line from a connection carries `session` (our id for the
 * MTA connection) and, once the MTA sent macro `i`, `qid` (the MTA's queue id), so one grep
 * follows a message across Postfix's and milterd's logs.
 * @module
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger } from 'pino';

/** Logging settings (config key `log`). */
export interface LogOptions {
  readonly level: LevelWithSilent;
  /** A file to append to; default standard output. */
  readonly file?: string;
  /** Human-friendly lines (pino-pretty) instead of JSON, for `milterd dev`. */
  readonly pretty?: boolean;
}

/** The process logger. Errors are serialised with their stable `code`. */
export function createLogger(options: LogOptions): Logger {
  if (options.pretty === true) {
    return pino(
      { level: options.level, base: null, serializers: { err: pino.stdSerializers.err } },
      pretty({ colorize: process.stdout.isTTY === true && !process.env.NO_COLOR, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, sync: true }),
    );
  }
  const settings = { level: options.level, base: { pid: process.pid }, serializers: { err: pino.stdSerializers.err } };
  if (options.file === undefined) return pino(settings);
  const dest = pino.destination({ dest: options.file, append: true, mkdir: true, sync: false });
  const logger = pino(settings, dest);
  files.set(logger, dest);
  return logger;
}

/** The file destination of each logger made with `log.file`, for reopenLogFile. */
const files = new WeakMap<Logger, ReturnType<typeof pino.destination>>();

/**
 * Reopens the logger's `log.file` by name (after logrotate moved it away: lines written since
 * the rename went to the old file, the next ones go to a new file with the configured name).
 * Lines buffered at the time are written to the old file first. Returns false when the logger
 * writes to standard output.
 */
export function reopenLogFile(logger: Logger): boolean {
  const dest = files.get(logger);
  if (dest === undefined) return false;
  dest.reopen();
  return true;
}

/** A logger that writes nothing (tests, embedding). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
