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
  return pino(
    {
      level: options.level,
      base: { pid: process.pid },
      serializers: { err: pino.stdSerializers.err },
    },
    options.file === undefined ? undefined : pino.destination({ dest: options.file, append: true, mkdir: true, sync: false }),
  );
}

/** A logger that writes nothing (tests, embedding). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
