/**
 * Structured logging with pino. Every line from a connection carries `session` (our id for the
 * MTA connection) and, once the MTA sent macro `i`, `qid` (the MTA's queue id), so one grep
 * follows a message across Postfix's and milterd's logs.
 * @module
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

/** Logging settings (config key `log`). */
export interface LogOptions {
  readonly level: LevelWithSilent;
  /** A file to append to; default standard output. */
  readonly file?: string;
}

/** The process logger. Errors are serialised with their stable `code`. */
export function createLogger(options: LogOptions): Logger {
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
