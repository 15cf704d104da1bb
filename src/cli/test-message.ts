/**
 * `milterd test <message.eml>`: loads the configured chain (every enabled plugin in its real
 * sandbox), runs one message through it with no MTA (src/testing/run-message.ts), and prints
 * what each plugin did, the per-recipient and final verdicts, and the modifications as a diff
 * of the message; or, with --json, the TestResult as JSON.
 * @module
 */
import { MilterdError } from '../errors.ts';
import { Command, InvalidArgumentError } from 'commander';
import { readFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { dirname, resolve } from 'node:path';
import { pino } from 'pino';
import { loadConfig } from '../config/load.ts';
import type { Logger } from '../log.ts';
import { contextFromConfig, loadChain, loadSdkRuntime } from '../plugins/load.ts';
import type { MilterReply } from '../protocol/types.ts';
import { parseEml } from '../testing/eml.ts';
import { runMessage, type TestResult } from '../testing/run-message.ts';
import { headerValue } from '../chain/message.ts';
import {
  bodyText,
  formatModifications,
  formatMs,
  pad,
  style,
  verdictStyle,
  wantColor,
  type RawHeader,
} from './format.ts';

/** The message file could not be read or parsed (MILTERD_CLI_MESSAGE). */
export class MessageFileError extends MilterdError {
  constructor(code: 'MILTERD_CLI_MESSAGE', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MessageFileError';
  }
}

// --- Addresses -------------------------------------------------------------------------------

/**
 * The addr-specs of an address-list header value (RFC 5322): `"Doe, J" <j@x>, k@y (K), grp: a@b;`
 * gives `['j@x', 'k@y', 'a@b']`. Quoted strings, comments, groups and folding are handled;
 * anything without an `@` is skipped.
 */
export function parseAddressList(value: string): string[] {
  const text = value.replace(/\r?\n/g, '');
  const items: string[] = [];
  let cur = '';
  let quoted = false;
  let angle = false;
  let comment = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '\\') cur += text[++i] ?? '';
      else if (c === '"') quoted = false;
      else cur += c;
      continue;
    }
    if (comment > 0) {
      if (c === '\\') i++;
      else if (c === '(') comment++;
      else if (c === ')') comment--;
      continue;
    }
    if (c === '"') quoted = true;
    else if (c === '(') comment = 1;
    else if (c === '<') {
      angle = true;
      cur = '<';
    } else if (c === '>' && angle) {
      angle = false;
      cur += '>';
    } else if ((c === ',' || c === ';') && !angle) {
      items.push(cur);
      cur = '';
    } else if (c === ':' && !angle) {
      cur = ''; // a group's display name
    } else cur += c;
  }
  items.push(cur);
  const out: string[] = [];
  for (const item of items) {
    const m = /<([^<>]*)>/.exec(item);
    const addr = (m ? m[1]! : item).trim().replace(/\s+/g, '');
    if (addr.includes('@')) out.push(addr);
  }
  return out;
}

// --- The message --------------------------------------------------------------------------

/** A message read from a file, ready for runMessage. */
export interface MessageFile {
  readonly eml: Uint8Array;
  readonly headers: readonly RawHeader[];
  readonly body: Uint8Array;
}

/** Reads an .eml (an mbox `From ` separator line on top is dropped). */
export async function readMessageFile(file: string): Promise<MessageFile> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a folder' : e.message;
    throw new MessageFileError('MILTERD_CLI_MESSAGE', `cannot read message file ${file}: ${why}${e.code ? ` (${e.code})` : ''}`, { cause: err });
  }
  if (bytes.byteLength >= 5 && Buffer.from(bytes.buffer, bytes.byteOffset, 5).toString('latin1') === 'From ') {
    const nl = bytes.indexOf(0x0a);
    bytes = nl === -1 ? new Uint8Array() : bytes.subarray(nl + 1);
  }
  try {
    const p = parseEml(bytes);
    if (p.headers.length === 0) throw new Error('no header fields (an .eml starts with header lines like "Subject: ...")');
    return { eml: bytes, headers: p.headers.map(([name, raw]) => ({ name, raw })), body: p.body };
  } catch (err) {
    throw new MessageFileError('MILTERD_CLI_MESSAGE', `${file} is not a message: ${(err as Error).message}`, { cause: err });
  }
}

// --- The run ------------------------------------------------------------------------------

/** Command-line options of `milterd test`. */
export interface TestOptions {
  readonly config: string;
  readonly from?: string;
  readonly rcpt?: readonly string[];
  readonly clientIp?: string;
  readonly clientName?: string;
  readonly helo?: string;
  readonly macro?: readonly (readonly [string, string])[];
  readonly json?: boolean;
  readonly color?: boolean;
}

/** The envelope a test ran with. */
export interface TestEnvelope {
  readonly from: string;
  readonly rcpts: readonly string[];
  readonly client: { readonly address: string; readonly hostname: string; readonly helo: string };
  readonly macros: Readonly<Record<string, string>>;
}

/** A line a plugin logged (capability `log`) during the run. */
export interface PluginLogLine {
  readonly plugin: string;
  readonly level: string;
  readonly msg: string;
  readonly fields: Readonly<Record<string, unknown>>;
}

/** Everything a `milterd test` run produced. */
export interface TestReport {
  readonly file: string;
  readonly config: string;
  readonly plugins: ReadonlyArray<{ readonly name: string; readonly version: string }>;
  readonly envelope: TestEnvelope;
  readonly message: MessageFile;
  readonly result: TestResult;
  readonly logs: readonly PluginLogLine[];
}

const angle = (a: string): string => (a.startsWith('<') ? a : `<${a}>`);

/** The envelope: options first, then the message's From:/To:, then the documented defaults. */
export function envelopeFor(msg: Pick<MessageFile, 'headers'>, opts: Omit<TestOptions, 'config'>): TestEnvelope {
  const values = (name: string): string[] => msg.headers.filter((h) => h.name.toLowerCase() === name).map((h) => headerValue(h.raw));
  const from = opts.from ?? parseAddressList(values('from').join(','))[0] ?? 'sender@example.org';
  const to = opts.rcpt !== undefined && opts.rcpt.length > 0 ? opts.rcpt : parseAddressList(values('to').join(','));
  return {
    from: angle(from),
    rcpts: (to.length > 0 ? to : ['rcpt@example.net']).map(angle),
    client: { address: opts.clientIp ?? '192.0.2.1', hostname: opts.clientName ?? 'client.example.org', helo: opts.helo ?? 'client.example.org' },
    macros: Object.fromEntries(opts.macro ?? []),
  };
}

/** Collects the lines plugins log, from the JSON the chain's pino logger writes. */
function logCollector(): { logger: Logger; lines: PluginLogLine[] } {
  const lines: PluginLogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n')) {
        if (l === '') continue;
        try {
          const { level, msg, filter, pluginLog, time: _t, pid: _p, hostname: _h, ...fields } = JSON.parse(l) as Record<string, unknown>;
          if (pluginLog !== true || typeof filter !== 'string') continue;
          lines.push({ plugin: filter, level: pino.levels.labels[level as number] ?? String(level), msg: String(msg ?? ''), fields });
        } catch {
          // not JSON: nothing a plugin wrote
        }
      }
      done();
    },
  });
  return { logger: pino({ level: 'debug', base: null, timestamp: false }, sink), lines };
}

/** Loads the chain of `opts.config`, runs the message through it, and stops the sandboxes. */
export async function runTest(file: string, opts: TestOptions): Promise<TestReport> {
  const message = await readMessageFile(file);
  const config = await loadConfig(opts.config);
  const baseDir = dirname(resolve(opts.config));
  const collect = logCollector();
  const plugins = await loadChain(config.chain, contextFromConfig(config, baseDir, { sdk: await loadSdkRuntime(), logger: pino({ level: 'silent' }) }));
  try {
    const envelope = envelopeFor(message, opts);
    const result = await runMessage(
      plugins.map((p) => p.entry),
      {
        eml: message.eml,
        from: envelope.from,
        rcpts: envelope.rcpts,
        client: envelope.client,
        macros: envelope.macros,
      },
      { logger: collect.logger },
    );
    // pino writes to the sink asynchronously; let it drain.
    await new Promise<void>((r) => setImmediate(r));
    return {
      file,
      config: opts.config,
      plugins: plugins.map((p) => ({ name: p.manifest.name, version: p.manifest.version })),
      envelope,
      message,
      result,
      logs: collect.lines,
    };
  } finally {
    await Promise.all(plugins.map((p) => p.supervisor.stop()));
  }
}

// --- Output ---------------------------------------------------------------------------------

/** Bytes as a UTF-8 string when they are valid UTF-8, otherwise base64. */
function encodeBytes(b: Uint8Array): { text: string; encoding: 'utf8' | 'base64' } {
  const t = bodyText(b);
  return t === undefined ? { text: Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64'), encoding: 'base64' } : { text: t, encoding: 'utf8' };
}

/** The report as JSON: the TestResult (bodies as text or base64), plus envelope and logs. */
export function reportJson(r: TestReport): string {
  const res = r.result;
  const body = encodeBytes(res.body);
  const actions = res.actions.map((a: MilterReply) => {
    if (a.kind !== 'replbody') return a;
    const c = encodeBytes(a.chunk);
    return { kind: a.kind, chunk: c.text, encoding: c.encoding };
  });
  return JSON.stringify(
    {
      message: r.file,
      config: r.config,
      plugins: r.plugins,
      envelope: r.envelope,
      verdict: res.verdict,
      reply: res.reply ?? null,
      phase: res.phase,
      rcpts: res.rcpts,
      steps: res.steps,
      actions,
      headers: res.headers,
      body: body.text,
      bodyEncoding: body.encoding,
      from: res.from,
      finalRcpts: res.finalRcpts,
      quarantine: res.quarantine ?? null,
      logs: r.logs,
    },
    null,
    2,
  );
}

const RCPT_WORD: Readonly<Record<string, string>> = { continue: 'accepted', accept: 'accepted', reject: 'rejected', tempfail: 'tempfailed', discard: 'discarded' };

/** The report for people. */
export function reportText(r: TestReport, color: boolean): string {
  const st = style(color);
  const res = r.result;
  const out: string[] = [];
  const head = (s: string): void => {
    out.push('', st.bold(s));
  };
  out.push(`${st.bold('message')}  ${r.file} (${r.message.headers.length} header fields, ${r.message.body.byteLength} bytes of body)`);
  out.push(`${st.bold('config')}   ${r.config} (${r.plugins.length} plugin${r.plugins.length === 1 ? '' : 's'})`);

  head('Envelope');
  const e = r.envelope;
  out.push(`  client     ${e.client.hostname} [${e.client.address}], HELO ${e.client.helo}`);
  out.push(`  MAIL FROM  ${e.from}`);
  e.rcpts.forEach((a, i) => out.push(`  ${i === 0 ? 'RCPT TO' : '       '}    ${a}`));
  const macros = Object.entries(e.macros);
  if (macros.length > 0) out.push(`  macros     ${macros.map(([k, v]) => `${k}=${v}`).join(' ')}`);

  head('Plugins');
  const phaseW = Math.max(9, ...res.steps.map((s) => s.phase.length + 2));
  const verdictW = Math.max(10, ...res.steps.map((s) => s.verdict.length + 2));
  const msW = Math.max(8, ...res.steps.map((s) => formatMs(s.ms).length)) + 2;
  const groups = r.plugins.map((p) => ({ label: `${p.name}@${p.version}`, name: p.name }));
  for (const s of res.steps) if (!groups.some((g) => g.name === s.filter)) groups.push({ label: s.filter, name: s.filter });
  const labelW = Math.max(...groups.map((g, i) => `${i + 1}. ${g.label}`.length)) + 2;
  groups.forEach((g, i) => {
    const steps = res.steps.filter((s) => s.filter === g.name);
    const total = steps.reduce((a, s) => a + s.ms, 0);
    const shadow = steps.some((s) => s.shadow) ? st.dim(' (shadow: its verdicts and edits are not applied)') : '';
    out.push(`  ${pad(`${i + 1}. ${g.label}`, labelW)}${steps.length === 0 ? st.dim('not called') : `${steps.length} call${steps.length === 1 ? '' : 's'}, ${formatMs(total)}`}${shadow}`);
    for (const s of steps) {
      const detail = `${s.error ? `${st.red(s.error.code)}: ${s.error.message}` : (s.reply ?? '')}${s.shadow && s.verdict !== 'continue' ? st.dim(' (shadow: not applied)') : ''}`.trimStart();
      out.push(`       ${pad(s.phase, phaseW)}${verdictStyle(st, s.verdict)(pad(s.verdict, verdictW))}${formatMs(s.ms).padStart(msW - 2)}  ${detail}`.trimEnd());
    }
    for (const l of r.logs.filter((x) => x.plugin === g.name)) {
      const f = Object.keys(l.fields).length > 0 ? ` ${JSON.stringify(l.fields)}` : '';
      out.push(st.dim(`       log ${l.level}: ${l.msg}${f}`));
    }
  });

  head('Recipients');
  if (res.rcpts.length === 0) out.push(st.dim('  (none reached: the message ended before RCPT TO)'));
  const addrW = Math.max(0, ...res.rcpts.map((x) => x.address.length)) + 2;
  for (const x of res.rcpts) {
    const word = RCPT_WORD[x.verdict] ?? x.verdict;
    out.push(`  ${pad(x.address, addrW)}${verdictStyle(st, word)(word)}${x.reply ? `  ${x.reply}` : ''}`);
  }

  head('Verdict');
  out.push(`  ${st.bold(verdictStyle(st, res.verdict)(res.verdict))}${res.reply ? `  ${res.reply}` : ''}  ${st.dim(`(at ${res.phase})`)}`);

  const kinds = new Map<string, number>();
  for (const a of res.actions) kinds.set(a.kind, (kinds.get(a.kind) ?? 0) + 1);
  head(
    res.actions.length === 0
      ? 'Modifications'
      : `Modifications (${res.actions.length} action${res.actions.length === 1 ? '' : 's'} for the MTA: ${[...kinds].map(([k, n]) => (n > 1 ? `${k} x${n}` : k)).join(', ')})`,
  );
  if (res.verdict !== 'accept') {
    out.push(`  no changes ${st.dim(`(the message was not accepted)`)}`);
  } else {
    const lines = formatModifications(
      { before: { headers: r.message.headers, body: r.message.body, from: e.from }, after: { headers: res.headers, body: res.body }, actions: res.actions },
      { color },
    );
    for (const l of lines) out.push(`  ${l}`);
  }
  return out.join('\n');
}

// --- The command ----------------------------------------------------------------------------

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function macroArg(v: string, prev: Array<[string, string]> = []): Array<[string, string]> {
  const eq = v.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError('expected name=value, e.g. i=4Z1abc or {auth_authen}=alice');
  return [...prev, [v.slice(0, eq), v.slice(eq + 1)]];
}

/** The `test` command; `defaultConfig` is used without --config. */
export function testCommand(defaultConfig: string): Command {
  return new Command('test')
    .description(
      'Run one message (.eml) through the configured chain with no MTA (every plugin in its real sandbox) and print each plugin\'s calls with verdicts and times, the per-recipient and final verdicts, and the modifications as a diff. Exit 0 whatever the verdict, 1 on errors.',
    )
    .argument('<message>', 'the message file (.eml: header lines, a blank line, the body)')
    .option('-c, --config <file>', 'configuration file (default: config/default.yaml)')
    .option('--from <addr>', "envelope sender (default: the message's From: address, else <sender@example.org>)")
    .option('--rcpt <addr>', 'envelope recipient, repeatable (default: the To: addresses, else <rcpt@example.net>)', collect)
    .option('--client-ip <ip>', 'client IP address', '192.0.2.1')
    .option('--client-name <name>', 'client host name', 'client.example.org')
    .option('--helo <name>', 'HELO/EHLO name', 'client.example.org')
    .option('--macro <name=value>', 'a macro the MTA would send, repeatable (e.g. --macro i=4Z1abc)', macroArg)
    .option('--json', 'print the result as JSON (bodies as UTF-8 text, or base64 when not UTF-8)')
    .addHelpText(
      'after',
      '\nExamples:\n  milterd test message.eml\n  milterd test message.eml --rcpt bob@example.net --rcpt nobody@example.org --macro i=4Z1abc\n  milterd test message.eml --config /etc/milterd/milterd.yaml --json',
    )
    .action(async (file: string, o: Omit<TestOptions, 'config'> & { config?: string }) => {
      try {
        const report = await runTest(file, { ...o, config: o.config ?? defaultConfig });
        process.stdout.write(`${o.json ? reportJson(report) : reportText(report, wantColor(process.stdout, process.env))}\n`);
      } catch (err) {
        if (!(err instanceof MessageFileError)) throw err;
        process.stderr.write(`milterd: ${err.code}: ${err.message}\n`);
        process.exitCode = 1;
      }
    });
}
