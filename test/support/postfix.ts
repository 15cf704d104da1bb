/**
 * A private Postfix instance for end-to-end tests: its own config, queue and data directories
 * under a temporary folder, an smtpd on a free loopback port with `smtpd_milters` set, relaying
 * everything to an `smtp-sink` that dumps each message to a file. Nothing in /etc/postfix is read
 * or changed except as the template defaults (meta_directory, daemon binaries).
 *
 * Lifecycle: `startPostfix()` in `before()`, `instance.stop()` in `after()` (idempotent; removes
 * the folder unless MILTERD_KEEP_MTA_DIRS is set, handy to read the maillog after a failure).
 * @module
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { chown, mkdir, readdir, readFile, rm, writeFile, chmod } from 'node:fs/promises';
import { userInfo } from 'node:os';
import path from 'node:path';
import { freePort, onProcessExit, parseInetSocket, run, runOk, tempDir, waitFor, waitForPort } from './mta-util.ts';

export { SmtpClient, buildMessage, uniqueMessageId } from './smtp-client.ts';
export type { SmtpReply, TransactionResult, OutgoingMessage } from './smtp-client.ts';

/** Postfix binaries, as Debian installs them. */
export const POSTFIX_BIN = '/usr/sbin/postfix';
export const SMTP_SINK_BIN = '/usr/sbin/smtp-sink';
const POSTCONF_BIN = '/usr/sbin/postconf';

/** Postfix `milter_*_macros` settings, by the name Postfix gives the stage. */
export type PostfixMacroStage = 'connect' | 'helo' | 'mail' | 'rcpt' | 'data' | 'end_of_header' | 'end_of_data' | 'unknown_command';

/** How to start the instance. */
export interface PostfixOptions {
  /**
   * Milters for smtpd, in order: libmilter syntax (`inet:PORT@HOST`, as MilterServer.addresses()
   * returns), Postfix syntax (`inet:HOST:PORT`) or `unix:/path` (must be reachable by user postfix).
   */
  readonly milters: readonly string[];
  /** milter_default_action: what Postfix does when a milter fails. Default 'tempfail'. */
  readonly defaultAction?: 'accept' | 'reject' | 'tempfail' | 'quarantine';
  /** milter_protocol. Default 6. */
  readonly protocol?: number;
  /** Overrides of the `milter_<stage>_macros` settings; unset stages keep Postfix's defaults. */
  readonly macros?: Readonly<Partial<Record<PostfixMacroStage, string>>>;
  /** milter_macro_defaults (`name=value` list) for macros Postfix has no value for. */
  readonly macroDefaults?: string;
  /** Any other main.cf setting, applied last. */
  readonly main?: Readonly<Record<string, string>>;
  /** Bound on start-up (instance and sink). Default 30 s. */
  readonly startTimeoutMs?: number;
}

/** One header line of a delivered message (folded lines joined with their line break). */
export interface DumpedHeader {
  readonly name: string;
  /** Value after `Name:` with the leading space removed; continuation lines keep their `\n\t`. */
  readonly value: string;
  /** Everything after the colon, exactly (leading white space kept). */
  readonly raw: string;
}

/** A message as smtp-sink received it from Postfix. */
export interface DeliveredMessage {
  readonly file: string;
  /** Envelope as smtp-sink recorded it (its X-* pseudo-headers). */
  readonly envelope: {
    readonly clientAddr: string | undefined;
    readonly helo: string | undefined;
    readonly mailArgs: string | undefined;
    /** One entry per RCPT Postfix sent to the sink, e.g. `TO:<a@b.test>` with any ESMTP args. */
    readonly rcptArgs: readonly string[];
  };
  /** Message headers, in order, without smtp-sink's own pseudo-headers and Received. */
  readonly headers: readonly DumpedHeader[];
  /** Body as received, `\n` line ends (smtp-sink writes text lines). */
  readonly body: string;
  /** The whole dump file. */
  readonly raw: string;
  /** Values of every header with this name (case-insensitive), in order. */
  all(name: string): string[];
  /** Value of the first header with this name, or undefined. */
  get(name: string): string | undefined;
}

/** A running private Postfix instance. */
export interface PostfixInstance {
  readonly dir: string;
  /** Port of the smtpd that has the milters. */
  readonly smtpPort: number;
  /** Port of the smtp-sink that Postfix relays to. */
  readonly sinkPort: number;
  readonly sinkDir: string;
  /** Current content of the instance's maillog. */
  maillog(): Promise<string>;
  /**
   * Waits until Postfix has finished with queue id `queueId` (`removed` in the maillog) and the
   * sink holds the message with this Message-ID; fails early if Postfix bounced or deferred it.
   */
  waitForDelivery(queueId: string, messageId: string, timeoutMs?: number): Promise<DeliveredMessage>;
  /** Every message the sink holds now. */
  delivered(): Promise<DeliveredMessage[]>;
  /** Queue ids in the hold queue (where a milter's quarantine puts a message). */
  held(): Promise<string[]>;
  /** Stops Postfix and the sink and removes the folder. Idempotent. */
  stop(): Promise<void>;
}

/** The queue id in Postfix's reply to the end of DATA (`250 2.0.0 Ok: queued as 4Y3…`). */
export function queueIdOf(replyText: string): string {
  const m = /queued as ([0-9A-Za-z]+)/.exec(replyText);
  if (!m) throw new Error(`no queue id in reply: ${replyText}`);
  return m[1] as string;
}

/** Converts libmilter's `inet:PORT@HOST` to Postfix's `inet:HOST:PORT`; other forms unchanged. */
export function toPostfixMilter(spec: string): string {
  if (/^inet:\d+@/.test(spec)) {
    const { host, port } = parseInetSocket(spec);
    return `inet:${host}:${port}`;
  }
  return spec;
}

// chroot n everywhere: Debian's chroot jails need files copied into the queue folder by its
// init script, which a private instance does not run.
const MASTER_CF = (smtpPort: number): string =>
  `# Generated by test/support/postfix.ts for a private test instance.
127.0.0.1:${smtpPort} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

function mainCf(dir: string, smtpPort: number, sinkPort: number, opts: PostfixOptions): string {
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: path.join(dir, 'queue'),
    data_directory: path.join(dir, 'data'),
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    syslog_name: `postfix-milterd-${smtpPort}`,
    // Without the prefix list Postfix refuses maillog_file, printing nothing.
    maillog_file_prefixes: `/var, /dev/stdout, /tmp, ${dir}`,
    maillog_file: path.join(dir, 'maillog'),
    inet_interfaces: 'loopback-only',
    inet_protocols: 'ipv4',
    myhostname: 'mx.milterd.test',
    mydomain: 'milterd.test',
    myorigin: '$myhostname',
    mydestination: '',
    mynetworks: '127.0.0.0/8',
    relay_domains: '',
    relayhost: `[127.0.0.1]:${sinkPort}`,
    smtpd_relay_restrictions: 'permit_mynetworks, reject_unauth_destination',
    smtpd_recipient_restrictions: '',
    smtpd_banner: '$myhostname ESMTP milterd-test',
    alias_maps: '',
    alias_database: '',
    local_recipient_maps: '',
    biff: 'no',
    // No DNS on these machines: never look anything up.
    smtp_dns_support_level: 'disabled',
    smtp_host_lookup: 'native',
    smtpd_tls_security_level: 'none',
    smtp_tls_security_level: 'none',
    smtp_connect_timeout: '5s',
    queue_run_delay: '1s',
    minimal_backoff_time: '1s',
    maximal_backoff_time: '2s',
    // Milters
    smtpd_milters: opts.milters.map(toPostfixMilter).join(', '),
    non_smtpd_milters: '',
    milter_default_action: opts.defaultAction ?? 'tempfail',
    milter_protocol: String(opts.protocol ?? 6),
    milter_connect_timeout: '10s',
    milter_command_timeout: '10s',
    milter_content_timeout: '30s',
  };
  for (const [stage, value] of Object.entries(opts.macros ?? {})) settings[`milter_${stage}_macros`] = value;
  if (opts.macroDefaults !== undefined) settings.milter_macro_defaults = opts.macroDefaults;
  Object.assign(settings, opts.main ?? {});
  return (
    '# Generated by test/support/postfix.ts for a private test instance.\n' +
    Object.entries(settings)
      .map(([k, v]) => `${k} = ${v}`)
      .join('\n') +
    '\n'
  );
}

/** Parses one smtp-sink dump file. Exported for unit use. */
export function parseSinkDump(raw: string, file = ''): DeliveredMessage {
  const text = raw.replace(/\r\n/g, '\n');
  const sep = text.indexOf('\n\n');
  const headBlock = sep >= 0 ? text.slice(0, sep) : text;
  let body = sep >= 0 ? text.slice(sep + 2) : '';
  // smtp-sink ends every dump with one empty line of its own.
  if (body.endsWith('\n\n')) body = body.slice(0, -1);
  const all: DumpedHeader[] = [];
  for (const line of headBlock.split('\n')) {
    const last = all[all.length - 1];
    if (/^[ \t]/.test(line) && last) {
      all[all.length - 1] = { name: last.name, value: `${last.value}\n${line}`, raw: `${last.raw}\n${line}` };
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const raw = line.slice(colon + 1);
    all.push({ name: line.slice(0, colon), value: raw.replace(/^ /, ''), raw });
  }
  // smtp-sink's pseudo-headers come first, ended by its three-line Received (by … (smtp-sink)).
  let start = 0;
  const envelope = { clientAddr: undefined as string | undefined, helo: undefined as string | undefined, mailArgs: undefined as string | undefined, rcptArgs: [] as string[] };
  for (let i = 0; i < all.length; i++) {
    const h = all[i] as DumpedHeader;
    const n = h.name.toLowerCase();
    if (n === 'x-client-addr') envelope.clientAddr = h.value;
    else if (n === 'x-helo-args') envelope.helo = h.value;
    else if (n === 'x-mail-args') envelope.mailArgs = h.value;
    else if (n === 'x-rcpt-args') envelope.rcptArgs.push(h.value);
    else if (n === 'x-client-proto') {
      // nothing to keep
    } else if (n === 'received' && h.value.includes('(smtp-sink)')) {
      start = i + 1;
      break;
    } else {
      start = i;
      break;
    }
  }
  const headers = all.slice(start);
  return {
    file,
    envelope,
    headers,
    body,
    raw,
    all: (name) => headers.filter((h) => h.name.toLowerCase() === name.toLowerCase()).map((h) => h.value),
    get: (name) => headers.find((h) => h.name.toLowerCase() === name.toLowerCase())?.value,
  };
}

/** Starts a private Postfix instance and its smtp-sink. */
export async function startPostfix(opts: PostfixOptions): Promise<PostfixInstance> {
  if (userInfo().uid !== 0) throw new Error('a private Postfix instance must be started as root');
  const startTimeoutMs = opts.startTimeoutMs ?? 30_000;
  const dir = await tempDir('postfix');
  // Postfix daemons (user postfix) must reach the queue and data folders through this one.
  await chmod(dir, 0o755);
  const sinkDir = path.join(dir, 'sink');
  const dataDir = path.join(dir, 'data');
  // Config in its own folder: `postfix check` walks the config folder expecting root-owned files.
  const configDir = path.join(dir, 'etc');
  await mkdir(configDir);
  await mkdir(sinkDir);
  await mkdir(dataDir);
  await mkdir(path.join(dir, 'queue'));
  const postfixUser = await postfixIds();
  await chown(sinkDir, postfixUser.uid, postfixUser.gid);
  await chown(dataDir, postfixUser.uid, postfixUser.gid);

  let sink: ChildProcess | undefined;
  let sinkOutput = '';
  let started = false;
  let stopped = false;
  const smtpPort = await freePort();
  const sinkPort = await freePort();

  // If the test process dies before stop() runs, do not leave a mail system behind.
  const unregister = onProcessExit(() => {
    if (started) execFileSync(POSTFIX_BIN, ['-c', configDir, 'abort'], { stdio: 'ignore', timeout: 10_000 });
    sink?.kill('SIGKILL');
    if (!process.env.MILTERD_KEEP_MTA_DIRS) rmSync(dir, { recursive: true, force: true });
  });

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    unregister();
    if (started) {
      await run(POSTFIX_BIN, ['-c', configDir, 'stop'], { timeoutMs: 20_000 });
      // `postfix stop` returns once master got the signal; wait for it to be gone.
      const pidFile = path.join(dir, 'queue', 'pid', 'master.pid');
      const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
      if (pid > 0) {
        const gone = await waitFor(() => !isAlive(pid), { timeoutMs: 10_000, what: `postfix master ${pid} to exit` }).catch(() => false);
        if (!gone) await run(POSTFIX_BIN, ['-c', configDir, 'abort'], { timeoutMs: 10_000 });
      }
    }
    if (sink && sink.exitCode === null && sink.signalCode === null) {
      const child = sink;
      const exited = new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          resolve();
        }, 5_000);
        child.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      child.kill('SIGTERM');
      await exited;
    }
    if (!process.env.MILTERD_KEEP_MTA_DIRS) await rm(dir, { recursive: true, force: true });
  };

  try {
    await writeFile(path.join(configDir, 'main.cf'), mainCf(dir, smtpPort, sinkPort, opts));
    await writeFile(path.join(configDir, 'master.cf'), MASTER_CF(smtpPort));

    // smtp-sink: -u to drop root, -d one dump file per message, 256 = listen backlog.
    sink = spawn(SMTP_SINK_BIN, ['-u', 'postfix', '-d', `${sinkDir}/%M.`, `127.0.0.1:${sinkPort}`, '256'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    sink.stdout?.on('data', (d: Buffer) => (sinkOutput += d.toString()));
    sink.stderr?.on('data', (d: Buffer) => (sinkOutput += d.toString()));
    await waitForPort(sinkPort, startTimeoutMs, 'smtp-sink').catch((err: Error) => {
      throw new Error(`${err.message}\nsmtp-sink output: ${sinkOutput}`);
    });

    // `start` first runs postfix-script check-fatal (creates the queue sub-folders with their
    // owners, validates the config) and check-warn; a separate `postfix check` would only
    // repeat that work.
    await runOk(POSTFIX_BIN, ['-c', configDir, 'start'], { timeoutMs: startTimeoutMs });
    started = true;
    // master binds every inet listener before it logs this. Probing the port instead would open an
    // SMTP session, and with it a milter connection the tests would then see.
    await waitFor(async () => (await readFile(path.join(dir, 'maillog'), 'utf8').catch(() => '')).includes('daemon started'), {
      timeoutMs: startTimeoutMs,
      what: 'postfix master to start',
      detail: async () => `--- maillog ---\n${await readFile(path.join(dir, 'maillog'), 'utf8').catch(() => '(none)')}`,
    });
  } catch (err) {
    await stop();
    throw err;
  }

  const maillog = (): Promise<string> => readFile(path.join(dir, 'maillog'), 'utf8').catch(() => '');
  const delivered = async (): Promise<DeliveredMessage[]> => {
    const names = (await readdir(sinkDir).catch(() => [] as string[])).sort();
    const out: DeliveredMessage[] = [];
    for (const name of names) {
      const file = path.join(sinkDir, name);
      out.push(parseSinkDump(await readFile(file, 'latin1'), file));
    }
    return out;
  };

  const waitForDelivery = async (queueId: string, messageId: string, timeoutMs = 30_000): Promise<DeliveredMessage> => {
    const bareId = messageId.replace(/^<|>$/g, '');
    await waitFor(
      async () => {
        const log = await maillog();
        const mine = log.split('\n').filter((l) => l.includes(`${queueId}:`));
        const bad = mine.find((l) => /status=(bounced|deferred|expired)/.test(l));
        if (bad) throw new Error(`Postfix did not deliver ${queueId}: ${bad}\n--- maillog ---\n${log}`);
        return mine.some((l) => l.endsWith(`${queueId}: removed`));
      },
      { timeoutMs, what: `Postfix to deliver queue id ${queueId}`, detail: async () => `--- maillog ---\n${await maillog()}` },
    );
    const all = await delivered();
    const found = all.find((m) => m.all('Message-ID').some((v) => v.trim() === `<${bareId}>`));
    if (!found) {
      throw new Error(`queue id ${queueId} was delivered but no dump holds Message-ID <${bareId}>; dumps: ${all.map((m) => m.file).join(', ')}`);
    }
    return found;
  };

  const held = async (): Promise<string[]> => (await readdir(path.join(dir, 'queue', 'hold')).catch(() => [] as string[])).sort();

  return { dir, smtpPort, sinkPort, sinkDir, maillog, waitForDelivery, delivered, held, stop };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function postfixIds(): Promise<{ uid: number; gid: number }> {
  const r = await runOk('id', ['postfix']);
  const uid = /uid=(\d+)/.exec(r.stdout)?.[1];
  const gid = /gid=(\d+)/.exec(r.stdout)?.[1];
  if (uid === undefined || gid === undefined) throw new Error(`cannot read user postfix: ${r.stdout}`);
  return { uid: Number(uid), gid: Number(gid) };
}

/** Postfix's version (mail_version), for messages. */
export async function postfixVersion(): Promise<string> {
  const r = await run(POSTCONF_BIN, ['-h', 'mail_version'], { timeoutMs: 10_000 });
  return r.stdout.trim();
}
