/**
 * Whether the real MTAs and tools the e2e tests drive are installed, and what a test should do
 * when one is missing: fail under CI (`CI` or `MILTERD_REQUIRE_MTA` set, so a broken install
 * cannot pass as green), skip elsewhere with a message that says how to install them.
 *
 * Usage in a test file:
 *   const mta = mtaGate('postfix');
 *   describe('Postfix', { skip: mta.skip }, () => { before(() => mta.require()); … });
 * @module
 */
import { accessSync, constants } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { userInfo } from 'node:os';
import path from 'node:path';
import { POSTFIX_BIN, SMTP_SINK_BIN } from './postfix.ts';
import { SENDMAIL_BIN, SENDMAIL_CF_DIR } from './sendmail.ts';

/** The tools the e2e suites need. */
export type MtaKind = 'postfix' | 'sendmail' | 'miltertest';

/** Result of a check: available, or the list of what is missing. */
export interface MtaAvailability {
  readonly kind: MtaKind;
  readonly available: boolean;
  readonly missing: readonly string[];
}

const INSTALL_HINT = 'run `sudo .ci/install-deps.sh` (Debian 12) to install them';

function executable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function readable(file: string): boolean {
  try {
    accessSync(file, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds a program on PATH (plus the sbin folders, which a non-root PATH may lack). */
export function which(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  for (const d of dirs) {
    if (d === '') continue;
    const f = path.join(d, name);
    if (executable(f)) return f;
  }
  return undefined;
}

/** Sendmail sleeps a minute when the host name does not resolve to a qualified name. */
function hostnameQualified(): boolean {
  try {
    const out = execFileSync('getent', ['hosts', execFileSync('hostname', { encoding: 'utf8' }).trim()], { encoding: 'utf8', timeout: 5_000 });
    return out.split(/\s+/).slice(1).some((n) => /\.[A-Za-z]/.test(n));
  } catch {
    return false;
  }
}

/** Checks one kind of MTA/tool. Cheap; no process is left running. */
export function mtaAvailability(kind: MtaKind): MtaAvailability {
  const missing: string[] = [];
  switch (kind) {
    case 'postfix':
      if (!executable(POSTFIX_BIN)) missing.push(`${POSTFIX_BIN} (package postfix)`);
      if (!executable(SMTP_SINK_BIN)) missing.push(`${SMTP_SINK_BIN} (package postfix)`);
      // Private instances need root: master, the postfix-owned data folder, smtp-sink -u.
      if (userInfo().uid !== 0) missing.push('root privileges (private Postfix instances are started as root)');
      break;
    case 'sendmail':
      if (!executable(SENDMAIL_BIN)) missing.push(`${SENDMAIL_BIN} (sendmail-bin, extracted by .ci/install-deps.sh)`);
      if (!readable(path.join(SENDMAIL_CF_DIR, 'm4/cf.m4'))) missing.push(`${SENDMAIL_CF_DIR}/m4/cf.m4 (sendmail-cf)`);
      if (which('m4') === undefined) missing.push('m4 (package m4)');
      if (!hostnameQualified()) missing.push('an /etc/hosts entry giving this host a qualified name (Sendmail would stall 60 s)');
      if (userInfo().uid !== 0) missing.push('root privileges (sendmail -bs with a private queue runs as root)');
      break;
    case 'miltertest':
      if (which('miltertest') === undefined) missing.push('miltertest (package miltertest)');
      break;
  }
  return { kind, available: missing.length === 0, missing };
}

/** True when a missing MTA must fail the run instead of skipping. */
export function mtaRequired(): boolean {
  const on = (v: string | undefined): boolean => v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
  return on(process.env.CI) || on(process.env.MILTERD_REQUIRE_MTA);
}

/** What a test suite does about one kind of MTA. */
export interface MtaGate extends MtaAvailability {
  /** Pass as `{ skip }` to describe()/test(): a message when skipping, false otherwise. */
  readonly skip: string | false;
  /** Call first thing in before(): throws when the MTA is missing (only reached when required). */
  require(): void;
}

/** Availability plus the skip-or-fail decision for test files. */
export function mtaGate(kind: MtaKind): MtaGate {
  const a = mtaAvailability(kind);
  const message = `${kind} e2e tests need: ${a.missing.join('; ')}; ${INSTALL_HINT}`;
  const skip = a.available || mtaRequired() ? false : message;
  return {
    ...a,
    skip,
    require: () => {
      if (!a.available) throw new Error(`${message} (failing instead of skipping because CI or MILTERD_REQUIRE_MTA is set)`);
    },
  };
}
