/**
 * Sendmail for end-to-end tests, run from the packages `.ci/install-deps.sh` extracts (not
 * installed: Sendmail conflicts with Postfix). Each SMTP session is one
 * `sendmail -C <cf> -bs` process speaking SMTP on its stdin/stdout, milters included; with
 * `confDELIVERY_MODE` queue, an accepted message stays in the private queue folder as qf/df
 * files, which `queued()` parses (headers are `H??Name: value` lines in the qf file, the body
 * is the df file). Quarantined messages have an `hf` file instead of `qf`.
 *
 * Lifecycle: `createSendmail()` in `before()` (builds the .cf with m4), `sessions` per test,
 * `instance.cleanup()` in `after()` (kills leftover sessions, removes the folder unless
 * MILTERD_KEEP_MTA_DIRS is set). Sendmail's milter debug output (`-d64.5`, plus anything in
 * `debugFlags`) goes to `debug.log` in the folder — it logs to syslog otherwise, which test
 * machines rarely run — and `debugLog()` returns it for failure messages.
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { SmtpClient, type SmtpReply } from './smtp-client.ts';
import { onProcessExit, runOk, tempDir, waitFor } from './mta-util.ts';

export { SmtpClient, buildMessage, uniqueMessageId } from './smtp-client.ts';
export type { SmtpReply, TransactionResult, OutgoingMessage } from './smtp-client.ts';

/** Where `.ci/install-deps.sh` extracts the Sendmail packages. */
export const SENDMAIL_ROOT = process.env.MILTERD_SENDMAIL_ROOT ?? '/opt/milterd-test/sendmail';
export const SENDMAIL_BIN = path.join(SENDMAIL_ROOT, 'usr/libexec/sendmail/sendmail');
export const SENDMAIL_CF_DIR = path.join(SENDMAIL_ROOT, 'usr/share/sendmail/cf');

/** One INPUT_MAIL_FILTER line. */
export interface SendmailMilter {
  readonly name: string;
  /** `inet:PORT@HOST` or `unix:/path` (a unix socket must not sit under a world-writable folder). */
  readonly socket: string;
  /** F= flags: 'T' tempfail, 'R' reject, '' skip the filter on failure. Default 'T'. */
  readonly flags?: string;
  /** T= timeouts. Default `C:5s;S:10s;R:10s;E:1m`. */
  readonly timeouts?: string;
}

/** How to build the configuration. */
export interface SendmailOptions {
  readonly milters: readonly SendmailMilter[];
  /** `confMILTER_MACROS_*` overrides, e.g. `{ CONNECT: 'j, _, {daemon_name}' }`. */
  readonly macros?: Readonly<Partial<Record<'CONNECT' | 'HELO' | 'ENVFROM' | 'ENVRCPT' | 'DATA' | 'EOH' | 'EOM', string>>>;
  /** Extra .mc lines, appended before MAILER(). */
  readonly mcExtra?: string;
  /** Debug flags for the debug log, default `64.5` (milter). */
  readonly debugFlags?: readonly string[];
  /** Our host name, $j. Default `mx.milterd.test`. */
  readonly hostname?: string;
}

/** A header line of a queued message. */
export interface QueuedHeader {
  /** The `?flags?` part (`P`, `D`, `M`…), '' for none. Milter-added headers have none. */
  readonly flags: string;
  readonly name: string;
  /** Value after `Name:` with one leading space removed; continuation lines keep `\n\t`. */
  readonly value: string;
  /** Everything after the colon, exactly (leading white space kept). */
  readonly raw: string;
}

/** A message in the queue folder, from its qf (or hf) and df files. */
export interface QueuedMessage {
  readonly id: string;
  /** True when the control file is an `hf` file (quarantined, i.e. held). */
  readonly quarantined: boolean;
  /** The `q` line: quarantine reason. */
  readonly quarantineReason: string | undefined;
  /** The `S` line: envelope sender as Sendmail stored it. */
  readonly sender: string | undefined;
  /** The `F` line: envelope flags (`n` = RET=HDRS, `b` = body type set, …). */
  readonly envelopeFlags: string;
  /** The `Z` line: DSN envelope id (ENVID). */
  readonly envid: string | undefined;
  /** `R` lines: flags (`P` primary; DSN NOTIFY `S` success, `F` failure, `D` delay, `N` never) and address. */
  readonly recipients: ReadonlyArray<{ readonly flags: string; readonly address: string }>;
  /** `r` lines (final recipient / ORCPT records). */
  readonly originalRecipients: readonly string[];
  /** Macro lines (`$r`, `${daemon_flags}`…), name without `$`/braces → value. */
  readonly macros: Readonly<Record<string, string>>;
  readonly headers: readonly QueuedHeader[];
  /** df file content (CRLF or LF as Sendmail stored it: Sendmail stores LF). */
  readonly body: string;
  readonly rawQf: string;
  all(name: string): string[];
  get(name: string): string | undefined;
}

/** One `sendmail -bs` process. */
export interface SendmailSession {
  readonly client: SmtpClient;
  readonly greeting: SmtpReply;
  /** Sends QUIT and waits (bounded) for the process to exit; returns its stderr. */
  close(): Promise<{ readonly code: number | null; readonly stderr: string }>;
}

/** A configured private Sendmail. */
export interface SendmailInstance {
  readonly dir: string;
  readonly queueDir: string;
  readonly cfFile: string;
  /** Starts `sendmail -bs` and reads the greeting. */
  session(timeoutMs?: number): Promise<SendmailSession>;
  /** Every message in the queue folder now. */
  queued(): Promise<QueuedMessage[]>;
  /** Waits for the qf/hf file of queue id `id` (from `250 2.0.0 <id> Message accepted…`). */
  waitQueued(id: string, timeoutMs?: number): Promise<QueuedMessage>;
  /** Sendmail's debug output so far. */
  debugLog(): Promise<string>;
  /** Kills leftover sessions and removes the folder. Idempotent. */
  cleanup(): Promise<void>;
}

/** The queue id in Sendmail's reply to the end of DATA. */
export function sendmailQueueIdOf(replyText: string): string {
  const m = /^250[ -]2\.0\.0 (\S+) Message accepted/m.exec(replyText);
  if (!m) throw new Error(`no queue id in reply: ${replyText}`);
  return m[1] as string;
}

/** Parses a qf (or hf) control file and its df body. Exported for unit use. */
export function parseQf(id: string, qf: string, df: string, quarantined: boolean): QueuedMessage {
  // Sendmail writes bytes it uses internally as meta characters (0x80–0xFF) behind a 0xFF
  // METAQUOTE byte in its queue files; drop the quote to get the message's bytes back.
  const lines = qf.replace(/\xff([\x80-\xff])/g, '$1').split('\n');
  const logical: string[] = [];
  for (const line of lines) {
    // Continuation lines (headers folded over several lines) start with white space.
    if (/^[ \t]/.test(line) && logical.length > 0) logical[logical.length - 1] += `\n${line}`;
    else logical.push(line);
  }
  const headers: QueuedHeader[] = [];
  const recipients: Array<{ flags: string; address: string }> = [];
  const originalRecipients: string[] = [];
  const macros: Record<string, string> = {};
  let sender: string | undefined;
  let envelopeFlags = '';
  let envid: string | undefined;
  let quarantineReason: string | undefined;
  for (const l of logical) {
    if (l === '' || l === '.') continue;
    const kind = l[0];
    const rest = l.slice(1);
    if (kind === 'H') {
      const m = /^(?:\?([^?]*)\?)?([^:]+):([\s\S]*)$/.exec(rest);
      if (m) headers.push({ flags: m[1] ?? '', name: m[2] as string, value: (m[3] as string).replace(/^ /, ''), raw: m[3] as string });
    } else if (kind === 'R') {
      const colon = rest.indexOf(':');
      recipients.push(colon >= 0 ? { flags: rest.slice(0, colon), address: rest.slice(colon + 1) } : { flags: '', address: rest });
    } else if (kind === 'r') originalRecipients.push(rest);
    else if (kind === 'S') sender = rest;
    else if (kind === 'F') envelopeFlags = rest;
    else if (kind === 'Z') envid = rest;
    else if (kind === 'q') quarantineReason = rest;
    else if (kind === '$') {
      const m = /^(\{[^}]+\}|.)([\s\S]*)$/.exec(rest);
      if (m) macros[(m[1] as string).replace(/^\{|\}$/g, '')] = m[2] as string;
    }
  }
  return {
    id,
    quarantined,
    quarantineReason,
    sender,
    envelopeFlags,
    envid,
    recipients,
    originalRecipients,
    macros,
    headers,
    body: df,
    rawQf: qf,
    all: (name) => headers.filter((h) => h.name.toLowerCase() === name.toLowerCase()).map((h) => h.value),
    get: (name) => headers.find((h) => h.name.toLowerCase() === name.toLowerCase())?.value,
  };
}

function mcFile(dir: string, opts: SendmailOptions): string {
  const q = (s: string): string => `\`${s}'`;
  const lines = [
    'divert(-1)',
    '# Generated by test/support/sendmail.ts for a private test configuration.',
    'divert(0)dnl',
    `OSTYPE(${q('linux')})dnl`,
    `define(${q('confDOMAIN_NAME')}, ${q(opts.hostname ?? 'mx.milterd.test')})dnl`,
    `define(${q('QUEUE_DIR')}, ${q(path.join(dir, 'queue'))})dnl`,
    `define(${q('STATUS_FILE')}, ${q(path.join(dir, 'statistics'))})dnl`,
    `define(${q('confPID_FILE')}, ${q(path.join(dir, 'sendmail.pid'))})dnl`,
    // Keep Sendmail off everything under /etc/mail and off DNS (no network on test machines).
    `define(${q('ALIAS_FILE')}, ${q('')})dnl`,
    `define(${q('confCW_FILE')}, ${q(`-o ${path.join(dir, 'local-host-names')}`)})dnl`,
    `define(${q('confSERVICE_SWITCH_FILE')}, ${q(path.join(dir, 'service.switch'))})dnl`,
    `define(${q('confHOST_STATUS_DIRECTORY')}, ${q('')})dnl`,
    `define(${q('confDONT_PROBE_INTERFACES')}, ${q('True')})dnl`,
    `define(${q('confDELIVERY_MODE')}, ${q('queue')})dnl`,
    `define(${q('confTO_IDENT')}, ${q('0s')})dnl`,
    `define(${q('confMILTER_LOG_LEVEL')}, ${q('14')})dnl`,
    ...Object.entries(opts.macros ?? {}).map(([stage, v]) => `define(${q(`confMILTER_MACROS_${stage}`)}, ${q(v)})dnl`),
    `FEATURE(${q('nocanonify')})dnl`,
    `FEATURE(${q('accept_unresolvable_domains')})dnl`,
    `FEATURE(${q('accept_unqualified_senders')})dnl`,
    // The -bs client is "localhost [UNIX: localhost]", which is not allowed to relay by default.
    `FEATURE(${q('promiscuous_relay')})dnl`,
    ...opts.milters.map(
      (m) => `INPUT_MAIL_FILTER(${q(m.name)}, ${q(`S=${m.socket}, F=${m.flags ?? 'T'}, T=${m.timeouts ?? 'C:5s;S:10s;R:10s;E:1m'}`)})dnl`,
    ),
    opts.mcExtra ?? '',
    `MAILER(${q('smtp')})dnl`,
    '',
  ];
  return lines.join('\n');
}

/** Builds the configuration in a fresh folder. Sendmail itself runs per session. */
export async function createSendmail(opts: SendmailOptions): Promise<SendmailInstance> {
  const dir = await tempDir('sendmail');
  // Sendmail refuses files under group/world-writable folders; mkdtemp gives 0700 already.
  await chmod(dir, 0o700);
  const queueDir = path.join(dir, 'queue');
  await mkdir(queueDir, { mode: 0o700 });
  await writeFile(path.join(dir, 'service.switch'), 'hosts files\naliases files\n', { mode: 0o644 });
  await writeFile(path.join(dir, 'local-host-names'), '', { mode: 0o644 });
  const mc = path.join(dir, 'test.mc');
  const cfFile = path.join(dir, 'test.cf');
  const debugFile = path.join(dir, 'debug.log');
  await writeFile(mc, mcFile(dir, opts), { mode: 0o644 });
  const built = await runOk('m4', [`-D_CF_DIR_=${SENDMAIL_CF_DIR}/`, path.join(SENDMAIL_CF_DIR, 'm4/cf.m4'), mc], { timeoutMs: 30_000 });
  await writeFile(cfFile, built.stdout, { mode: 0o644 });

  const children = new Set<ChildProcess>();
  let cleaned = false;
  const unregister = onProcessExit(() => {
    for (const c of children) c.kill('SIGKILL');
    if (!process.env.MILTERD_KEEP_MTA_DIRS) rmSync(dir, { recursive: true, force: true });
  });

  const session = async (timeoutMs = 60_000): Promise<SendmailSession> => {
    const debug = ['64.5', ...(opts.debugFlags ?? [])].flatMap((d) => [`-d${d}`]);
    const child = spawn(SENDMAIL_BIN, ['-C', cfFile, '-D', debugFile, ...debug, '-bs'], {
      cwd: dir,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.add(child);
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => {
      child.once('exit', (code) => {
        children.delete(child);
        resolve(code);
      });
    });
    const client = new SmtpClient(child.stdout!, child.stdin!, timeoutMs);
    let greeting: SmtpReply;
    try {
      // Sendmail answers anything sent before its greeting with 554: wait for it first.
      greeting = await client.readReply();
    } catch (err) {
      child.kill('SIGKILL');
      throw new Error(`${(err as Error).message}\nsendmail stderr: ${stderr}\n--- debug log ---\n${await readFile(debugFile, 'utf8').catch(() => '')}`);
    }
    return {
      client,
      greeting,
      close: async () => {
        await client.quit();
        const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
        const code = await exited;
        clearTimeout(timer);
        return { code, stderr };
      },
    };
  };

  const queued = async (): Promise<QueuedMessage[]> => {
    const names = await readdir(queueDir).catch(() => [] as string[]);
    const out: QueuedMessage[] = [];
    for (const name of names.sort()) {
      const m = /^([qh])f(.+)$/.exec(name);
      if (!m) continue;
      const id = m[2] as string;
      const qf = await readFile(path.join(queueDir, name), 'latin1');
      const df = await readFile(path.join(queueDir, `df${id}`), 'latin1').catch(() => '');
      out.push(parseQf(id, qf, df, m[1] === 'h'));
    }
    return out;
  };

  const waitQueued = async (id: string, timeoutMs = 15_000): Promise<QueuedMessage> => {
    await waitFor(() => existsSync(path.join(queueDir, `qf${id}`)) || existsSync(path.join(queueDir, `hf${id}`)), {
      timeoutMs,
      what: `Sendmail queue file for ${id}`,
      detail: async () => `queue: ${(await readdir(queueDir)).join(' ')}\n--- debug log ---\n${await readFile(debugFile, 'utf8').catch(() => '')}`,
    });
    const found = (await queued()).find((m) => m.id === id);
    if (!found) throw new Error(`queue file for ${id} vanished`);
    return found;
  };

  return {
    dir,
    queueDir,
    cfFile,
    session,
    queued,
    waitQueued,
    debugLog: () => readFile(debugFile, 'utf8').catch(() => ''),
    cleanup: async () => {
      if (cleaned) return;
      cleaned = true;
      unregister();
      for (const c of children) c.kill('SIGKILL');
      if (!process.env.MILTERD_KEEP_MTA_DIRS) await rm(dir, { recursive: true, force: true });
    },
  };
}
