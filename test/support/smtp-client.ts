/**
 * A small SMTP client for the real-MTA tests: speaks over a TCP socket (Postfix) or over any
 * readable/writable pair (Sendmail's `-bs` stdin/stdout), waits for every reply before sending
 * the next command (Sendmail refuses pipelining before the greeting) and returns every reply.
 * No dependency; every wait is bounded.
 * @module
 */
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';

/** One SMTP reply: code, enhanced status code (if any) and the text of every line. */
export interface SmtpReply {
  readonly code: number;
  /** Enhanced status code `x.y.z` of the first line, when the server sent one. */
  readonly enhanced: string | undefined;
  /** Text of each line, without the code, separator and enhanced code. */
  readonly lines: readonly string[];
  /** The reply exactly as received (lines joined with `\n`), for assertion messages. */
  readonly raw: string;
}

/** The envelope and content of one message to send. */
export interface OutgoingMessage {
  /** Sender address without angle brackets ('' for the null sender). */
  readonly from: string;
  /** ESMTP arguments of MAIL FROM, e.g. `['BODY=8BITMIME']`. */
  readonly fromArgs?: readonly string[];
  /** Recipients without angle brackets, sent one RCPT each, in order. */
  readonly rcpts: readonly string[];
  /** Headers and body, `\n` or `\r\n` line ends (normalised to CRLF, dot-stuffed on send). */
  readonly data: string;
}

/** Everything the server answered during one transaction. */
export interface TransactionResult {
  readonly mail: SmtpReply;
  /** One reply per recipient, in the order sent. */
  readonly rcpts: ReadonlyArray<{ readonly rcpt: string; readonly reply: SmtpReply }>;
  /** Reply to DATA (354 expected); undefined when no recipient was accepted (DATA not sent). */
  readonly data: SmtpReply | undefined;
  /** Reply after the final dot; undefined when DATA was not sent or refused. */
  readonly dataEnd: SmtpReply | undefined;
}

/** Thrown when the server does not answer in time or the stream ends early. */
export class SmtpClientError extends Error {
  /** Everything received so far, for the failure message. */
  readonly transcript: string;
  constructor(message: string, transcript: string) {
    super(`${message}\n--- SMTP transcript ---\n${transcript}`);
    this.name = 'SmtpClientError';
    this.transcript = transcript;
  }
}

const REPLY_LINE = /^(\d{3})([ -])(.*)$/;
const ENHANCED = /^([245]\.\d{1,3}\.\d{1,3})(?: |$)/;

/** Parses a complete reply (one or more lines). Exported for unit use. */
export function parseReply(lines: readonly string[]): SmtpReply {
  let code = 0;
  let enhanced: string | undefined;
  const texts: string[] = [];
  lines.forEach((line, i) => {
    const m = REPLY_LINE.exec(line);
    if (!m) throw new Error(`not an SMTP reply line: ${JSON.stringify(line)}`);
    code = Number(m[1]);
    let text = m[3] ?? '';
    const e = ENHANCED.exec(text);
    if (e) {
      if (i === 0) enhanced = e[1];
      text = text.slice(e[0].length);
    }
    texts.push(text);
  });
  return { code, enhanced, lines: texts, raw: lines.join('\n') };
}

/** SMTP client over any byte stream pair; one command at a time. */
export class SmtpClient {
  readonly #input: Readable;
  readonly #output: Writable;
  readonly #timeoutMs: number;
  #buffer = '';
  #pendingLines: string[] = [];
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  /** Full conversation, `C: ` and `S: ` prefixed, for failure messages. */
  readonly transcript: string[] = [];

  /**
   * @param input where replies arrive (socket, child stdout)
   * @param output where commands go (socket, child stdin)
   * @param timeoutMs bound on every single reply wait
   */
  constructor(input: Readable, output: Writable, timeoutMs = 30_000) {
    this.#input = input;
    this.#output = output;
    this.#timeoutMs = timeoutMs;
    input.setEncoding('latin1');
    input.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let nl: number;
      while ((nl = this.#buffer.indexOf('\n')) >= 0) {
        const line = this.#buffer.slice(0, nl).replace(/\r$/, '');
        this.#buffer = this.#buffer.slice(nl + 1);
        this.#pendingLines.push(line);
        this.transcript.push(`S: ${line}`);
      }
      this.#notify();
    });
    input.on('end', () => {
      this.#ended = true;
      this.#notify();
    });
    input.on('error', (err) => {
      this.#error = err;
      this.#notify();
    });
    output.on('error', (err) => {
      this.#error = err;
      this.#notify();
    });
  }

  /** Connects over TCP to `host:port` and reads the greeting. */
  static async connect(port: number, host = '127.0.0.1', timeoutMs = 30_000): Promise<{ client: SmtpClient; greeting: SmtpReply }> {
    const socket = net.connect({ port, host });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`SMTP connect to ${host}:${port} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    const client = new SmtpClient(socket, socket, timeoutMs);
    const greeting = await client.readReply();
    return { client, greeting };
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #fail(message: string): never {
    throw new SmtpClientError(message, this.transcript.join('\n'));
  }

  /** Reads one complete (possibly multi-line) reply. */
  async readReply(): Promise<SmtpReply> {
    const deadline = Date.now() + this.#timeoutMs;
    const lines: string[] = [];
    for (;;) {
      const line = this.#pendingLines.shift();
      if (line !== undefined) {
        lines.push(line);
        const m = REPLY_LINE.exec(line);
        if (!m) this.#fail(`malformed reply line ${JSON.stringify(line)}`);
        if (m[2] === ' ') return parseReply(lines);
        continue;
      }
      if (this.#error) this.#fail(`stream error: ${this.#error.message}`);
      if (this.#ended) this.#fail('connection closed while waiting for a reply');
      const left = deadline - Date.now();
      if (left <= 0) this.#fail(`no complete reply within ${this.#timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Sends one command line and returns its reply. */
  async command(line: string): Promise<SmtpReply> {
    if (/[\r\n]/.test(line)) throw new Error(`command contains a line break: ${JSON.stringify(line)}`);
    this.transcript.push(`C: ${line}`);
    this.#output.write(`${line}\r\n`, 'latin1');
    return this.readReply();
  }

  /** Sends message content after a 354: CRLF line ends, dot-stuffing, final dot. */
  async sendContent(data: string): Promise<SmtpReply> {
    const body = data.replace(/\r?\n/g, '\r\n');
    const stuffed = body
      .split('\r\n')
      .map((l) => (l.startsWith('.') ? `.${l}` : l))
      .join('\r\n');
    const payload = (stuffed.endsWith('\r\n') ? stuffed : `${stuffed}\r\n`) + '.\r\n';
    this.transcript.push(`C: <${payload.length} bytes of content>`, 'C: .');
    this.#output.write(payload, 'latin1');
    return this.readReply();
  }

  /** One transaction: MAIL, each RCPT, and DATA when at least one recipient was accepted. */
  async send(message: OutgoingMessage): Promise<TransactionResult> {
    const fromArgs = message.fromArgs?.length ? ` ${message.fromArgs.join(' ')}` : '';
    const mail = await this.command(`MAIL FROM:<${message.from}>${fromArgs}`);
    const rcpts: Array<{ rcpt: string; reply: SmtpReply }> = [];
    if (mail.code >= 400) return { mail, rcpts, data: undefined, dataEnd: undefined };
    for (const rcpt of message.rcpts) {
      rcpts.push({ rcpt, reply: await this.command(`RCPT TO:<${rcpt}>`) });
    }
    if (!rcpts.some((r) => r.reply.code < 300)) {
      await this.command('RSET');
      return { mail, rcpts, data: undefined, dataEnd: undefined };
    }
    const data = await this.command('DATA');
    if (data.code !== 354) return { mail, rcpts, data, dataEnd: undefined };
    const dataEnd = await this.sendContent(message.data);
    return { mail, rcpts, data, dataEnd };
  }

  /** Sends QUIT (reply ignored if the server already closed) and ends the output. */
  async quit(): Promise<SmtpReply | undefined> {
    let reply: SmtpReply | undefined;
    if (!this.#ended && !this.#error) {
      try {
        reply = await this.command('QUIT');
      } catch {
        // The server may close without answering; the transcript tells.
      }
    }
    this.#output.end();
    return reply;
  }

  /** Closes the streams without QUIT. */
  destroy(): void {
    this.#input.destroy();
    this.#output.destroy();
  }
}

/** Builds RFC 5322 message text with a unique Message-ID; `headers` come after the defaults. */
export function buildMessage(opts: {
  readonly from: string;
  readonly to: readonly string[];
  readonly subject: string;
  readonly messageId: string;
  readonly body: string;
  readonly headers?: ReadonlyArray<readonly [string, string]>;
}): string {
  const lines = [
    `From: <${opts.from}>`,
    `To: ${opts.to.map((t) => `<${t}>`).join(', ')}`,
    `Subject: ${opts.subject}`,
    `Message-ID: <${opts.messageId}>`,
    'Date: Mon, 03 Nov 2025 10:00:00 +0000',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    ...(opts.headers ?? []).map(([n, v]) => `${n}: ${v}`),
    '',
    opts.body,
  ];
  return lines.join('\r\n');
}

/** A Message-ID unique to this process and call. */
export function uniqueMessageId(tag: string): string {
  return `${tag}.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2, 10)}@milterd.test`;
}
