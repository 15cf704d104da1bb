/**
 * Runs OpenDKIM's `miltertest` (the MTA side of the milter protocol, scripted in Lua) against
 * a milter socket. The socket is passed to the script as the Lua global `MILTER_SOCKET`
 * (`miltertest -D MILTER_SOCKET=inet:PORT@127.0.0.1`); other globals can be given too.
 * Bounded in time; throws with the full output when miltertest exits non-zero.
 *
 * Quirks of miltertest worth knowing when writing scripts (from its source):
 * - it reads each reply with two read() calls and a 1024-byte buffer: keep replies (bodies,
 *   header values) under 1 KiB;
 * - a failed call can end the script with exit status 1 and no message: scripts should
 *   `mt.echo` as they go; `verbose: 3` prints every packet's command and length;
 * - steps the milter turned off with SMFIP_NO* raise an error: check `mt.test_option` first;
 * - `mt.eom_check` knows no SMFIR_CHGFROM or SMFIR_ADDRCPT_PAR: assert those on the packets
 *   recorded by a MilterTap (milter-tap.ts) instead.
 * @module
 */
import { run } from './mta-util.ts';
import { which } from './mta-available.ts';

/** Options of one miltertest run. */
export interface MiltertestOptions {
  /** Path of the Lua script. */
  readonly script: string;
  /** Milter socket, libmilter syntax (`inet:PORT@127.0.0.1` or `unix:/path`). */
  readonly socket: string;
  /** More Lua globals (`-D name=value`). */
  readonly globals?: Readonly<Record<string, string>>;
  /** Number of -v flags (0–3). Default 2: each call and each packet's command and length. */
  readonly verbose?: number;
  /** Kill miltertest after this long. Default 30 s. */
  readonly timeoutMs?: number;
}

/** What miltertest printed. */
export interface MiltertestResult {
  readonly stdout: string;
  readonly stderr: string;
  /** Lines the script printed with mt.echo (without miltertest's own verbose lines). */
  readonly echoes: readonly string[];
}

/** Runs a script; resolves when miltertest exits 0, throws with its output otherwise. */
export async function runMiltertest(opts: MiltertestOptions): Promise<MiltertestResult> {
  const bin = which('miltertest');
  if (bin === undefined) throw new Error('miltertest not found; run .ci/install-deps.sh');
  const args: string[] = [];
  for (const [k, v] of Object.entries({ MILTER_SOCKET: opts.socket, ...opts.globals })) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`invalid Lua global name ${k}`);
    args.push('-D', `${k}=${v}`);
  }
  const verbose = opts.verbose ?? 2;
  if (verbose > 0) args.push(`-${'v'.repeat(verbose)}`);
  args.push('-s', opts.script);
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const r = await run(bin, args, { timeoutMs });
  const echoes = r.stdout.split('\n').filter((l) => l !== '' && !l.startsWith('miltertest:'));
  if (r.code !== 0 || r.timedOut) {
    throw new Error(
      `miltertest ${args.join(' ')} ${r.timedOut ? `timed out after ${timeoutMs} ms` : `exited with ${r.code ?? r.signal}`}\n` +
        `--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`,
    );
  }
  return { stdout: r.stdout, stderr: r.stderr, echoes };
}
