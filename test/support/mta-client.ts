/**
 * An MTA simulator: the MTA side of the milter protocol, for integration tests and the
 * benchmark's load generator.
 *
 * It behaves like Postfix's `milter8.c` where that matters for a filter:
 * - offers protocol v6, actions 0x1FF and protocol flags 0x1FFFFF unless told otherwise;
 * - a phase whose SMFIP_NO* flag was negotiated is not sent, but its macros still are
 *   ("Send the macros for this event, even when we're not reporting the event itself");
 * - a phase whose SMFIP_NR_* flag was negotiated is sent without waiting for a reply;
 * - after SMFIR_SKIP in the body, further body chunks are not sent;
 * - SMFIR_PROGRESS is read past while waiting for any reply;
 * - at end of message, modification replies are collected until the final verdict;
 * - ABORT, QUIT and QUIT_NC are never answered.
 *
 * Stricter than an MTA, because it is a test tool: every reply that arrives while no reply is
 * due (for example an answer to ABORT, or to a header after NR_HDR was negotiated) is counted in
 * `unexpectedReplies` and described in `violations`; so are negotiation answers outside the
 * offer and modifications that were not negotiated. Every wait is bounded by a timeout.
 *
 * Writes are batched: commands that expect no reply (macros, NR_* phases, ABORT) are queued and
 * go out together with the next command that expects one (or on the next turn of the event
 * loop), so all no-reply phases of a message leave in one write, as with Postfix's VSTREAM.
 * @module
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import {
  decodeReply,
  encodeCommand,
  FrameReader,
  MILTER_CHUNK_SIZE,
  SMFI_CURR_ACTS,
  SMFI_CURR_PROT,
  SMFI_PROT_VERSION,
  SMFIC,
  SMFIF,
  SMFIM,
  SMFIP,
} from '../../src/protocol/index.ts';
import type { AddressFamily, MilterCommand, MilterReply, SymbolList } from '../../src/protocol/index.ts';

/** What the MTA offers in OPTNEG. */
export interface NegotiationOffer {
  readonly version: number;
  readonly actions: number;
  readonly protocol: number;
}

/** Postfix's offer: protocol v6, every action, every protocol flag. */
export const POSTFIX_OFFER: NegotiationOffer = Object.freeze({
  version: SMFI_PROT_VERSION,
  actions: SMFI_CURR_ACTS,
  protocol: SMFI_CURR_PROT,
});

/** The filter's OPTNEG answer, as decoded. */
export type NegotiationReply = Extract<MilterReply, { kind: 'optneg' }>;

/**
 * Outcome of one phase:
 * - a `MilterReply`: the filter's answer (SMFIR_PROGRESS already read past);
 * - `'noreply'`: sent, and an NR_* flag says no answer comes;
 * - `'skipped'`: not sent (NO* flag, an earlier SMFIR_SKIP, or nothing to send).
 */
export type PhaseResult = MilterReply | 'noreply' | 'skipped';

/** Macros for one stage: an object, or name/value pairs to keep a given order. */
export type MacroInput = Readonly<Record<string, string>> | ReadonlyArray<readonly [string, string]>;

/** Replies that end an SMTP phase for the filter (anything but continue/progress/mods). */
const FINAL_KINDS: ReadonlySet<MilterReply['kind']> = new Set([
  'accept',
  'continue',
  'discard',
  'reject',
  'tempfail',
  'replycode',
  'shutdown',
  'connfail',
  'skip',
]);

/** End-of-message result: all modifications in arrival order, then the final verdict. */
export interface EomResult {
  /** Modification replies (headers, recipients, sender, body chunks, quarantine), in order. */
  readonly modifications: MilterReply[];
  /** The final verdict (accept, continue, discard, reject, tempfail, replycode...). */
  readonly verdict: MilterReply;
  /** SMFIR_PROGRESS replies seen before the verdict. */
  readonly progressCount: number;
}

/** Which phase ended the message for this filter. */
export type MessageEnd = 'mail' | 'rcpt' | 'data' | 'header' | 'eoh' | 'body' | 'eom';

/** One message of `runMessage`. */
export interface MessageSpec {
  /** `<addr>` or `[<addr>, ...ESMTP args]`. */
  readonly from: string | readonly string[];
  /** Each `<addr>` or `[<addr>, ...ESMTP args]`. */
  readonly rcpts: ReadonlyArray<string | readonly string[]>;
  /**
   * Headers as `[name, text after the colon]`, e.g. `['Subject', ' hi']`. Unless SMFIP_HDR_LEADSPC
   * was negotiated, one leading space is removed before sending, as Postfix does.
   */
  readonly headers?: ReadonlyArray<readonly [string, string]>;
  /** Body with CRLF line ends; sent in chunks of at most 65535 bytes. */
  readonly body?: string | Uint8Array;
  /** Macros per stage; only those named in the filter's SETSYMLIST for a stage are sent. */
  readonly macros?: Readonly<Partial<Record<'mail' | 'rcpt' | 'data' | 'eoh' | 'eom', MacroInput>>>;
  /** Send SMFIC_ABORT after the message, as Postfix does between messages. Default false. */
  readonly abortAfter?: boolean;
}

/** Per-phase results of `runMessage`. */
export interface MessageResult {
  readonly mail: PhaseResult;
  readonly rcpts: PhaseResult[];
  data: PhaseResult;
  readonly headers: PhaseResult[];
  eoh: PhaseResult;
  body: PhaseResult;
  /** Present when end of message was reached. */
  eom: EomResult | undefined;
  /** Where the message ended for the filter. */
  endedAt: MessageEnd;
  /** The reply that ended it: the EOM verdict, or the early non-continue reply. */
  verdict: PhaseResult;
}

/** Why an MtaClient call failed. */
export type MtaClientErrorCode = 'timeout' | 'closed' | 'protocol' | 'connect';

/** A failure of the simulated MTA side: timeout, closed connection or protocol violation. */
export class MtaClientError extends Error {
  readonly code: MtaClientErrorCode;
  /** The offending reply, for 'protocol' errors caused by one. */
  readonly reply: MilterReply | undefined;
  constructor(code: MtaClientErrorCode, message: string, options?: { cause?: unknown; reply?: MilterReply }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MtaClientError';
    this.code = code;
    this.reply = options?.reply;
  }
}

/** Options of `MtaClient.connect`. */
export interface MtaClientOptions {
  /** Bound of every wait (connect, each reply, close), in ms. Default 10 000. */
  readonly timeoutMs?: number;
  /** Largest reply frame accepted. Default: the codec's default. */
  readonly maxFrameSize?: number;
}

/** A parsed libmilter socket address. */
export type MilterAddress =
  | { readonly kind: 'inet'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string };

/**
 * Parses a libmilter-syntax address: `inet:PORT@HOST`, `inet6:PORT@HOST`, `unix:/path`,
 * `local:/path` or a bare `/path`. A missing host means loopback.
 */
export function parseMilterAddress(spec: string): MilterAddress {
  if (spec.startsWith('/')) return { kind: 'unix', path: spec };
  const m = /^(inet6?|unix|local):(.+)$/.exec(spec);
  if (m === null) throw new TypeError(`not a milter address: ${JSON.stringify(spec)}`);
  const [, proto, rest] = m as unknown as [string, string, string];
  if (proto === 'unix' || proto === 'local') return { kind: 'unix', path: rest };
  const at = rest.indexOf('@');
  const portText = at < 0 ? rest : rest.slice(0, at);
  let host = at < 0 ? (proto === 'inet6' ? '::1' : '127.0.0.1') : rest.slice(at + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) throw new TypeError(`bad port in milter address ${JSON.stringify(spec)}`);
  return { kind: 'inet', host, port };
}

/** SMFIC stage byte of MACRO → SMFIM index used in SETSYMLIST (absent: no symlist stage). */
const SYMLIST_STAGE: Readonly<Record<number, number>> = {
  [SMFIC.CONNECT]: SMFIM.CONNECT,
  [SMFIC.HELO]: SMFIM.HELO,
  [SMFIC.MAIL]: SMFIM.ENVFROM,
  [SMFIC.RCPT]: SMFIM.ENVRCPT,
  [SMFIC.DATA]: SMFIM.DATA,
  [SMFIC.BODYEOB]: SMFIM.EOM,
  [SMFIC.EOH]: SMFIM.EOH,
};

/** Action flag each modification reply needs. */
const MOD_ACTION: Readonly<Partial<Record<MilterReply['kind'], number>>> = {
  addheader: SMFIF.ADDHDRS,
  insheader: SMFIF.ADDHDRS,
  chgheader: SMFIF.CHGHDRS,
  replbody: SMFIF.CHGBODY,
  delrcpt: SMFIF.DELRCPT,
  chgfrom: SMFIF.CHGFROM,
  quarantine: SMFIF.QUARANTINE,
};

const MAX_VIOLATIONS = 100;

function stripBraces(name: string): string {
  return name.length > 2 && name.startsWith('{') && name.endsWith('}') ? name.slice(1, -1) : name;
}

function toArgs(a: string | readonly string[]): readonly string[] {
  return typeof a === 'string' ? [a] : a;
}

/**
 * One simulated MTA connection to a filter. Create with `MtaClient.connect(address)`, then
 * `negotiate()`, then phases in SMTP order. Methods are not re-entrant: await each before the next.
 */
export class MtaClient {
  readonly #socket: net.Socket;
  readonly #reader: FrameReader;
  readonly #timeoutMs: number;

  /** Negotiated state; before negotiate() nothing is skipped and every phase waits for a reply. */
  #version = 0;
  #actions = 0;
  #protocol = 0;
  #symlists = new Map<number, ReadonlySet<string>>();
  #negotiated: NegotiationReply | undefined;

  /** Outgoing packets not yet written. */
  #out: Buffer[] = [];
  #flushScheduled = false;
  /** Replies due: commands sent whose (final) answer has not been taken. */
  #due = 0;
  /** Replies received while due, not yet taken. */
  #inbox: MilterReply[] = [];
  /** Replies received while none was due. */
  #stray: MilterReply[] = [];
  #waiter: { resolve: (r: MilterReply) => void; reject: (e: Error) => void; deadline: number; ms: number } | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerAt = 0;
  #lastSent = 'nothing';
  /** Body chunks are not sent after SMFIR_SKIP until the next message. */
  #skipBody = false;

  #closed = false;
  #closeError: Error | undefined;
  #closeWaiters: Array<() => void> = [];

  /** Replies that arrived while none was due (answers to ABORT/QUIT, to NR_* phases...). */
  unexpectedReplies = 0;
  /** Human-readable protocol violations seen so far (capped at 100). */
  readonly violations: string[] = [];

  private constructor(socket: net.Socket, options: MtaClientOptions) {
    this.#socket = socket;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#reader = new FrameReader(options.maxFrameSize === undefined ? undefined : { maxFrameSize: options.maxFrameSize });
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => this.#onClose(err));
    socket.on('close', () => this.#onClose(undefined));
  }

  /** Connects to a filter at a libmilter-syntax address (`inet:PORT@HOST`, `inet6:…`, `unix:/path`). */
  static connect(address: string, options: MtaClientOptions = {}): Promise<MtaClient> {
    const addr = parseMilterAddress(address);
    const timeoutMs = options.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const socket =
        addr.kind === 'unix' ? net.connect({ path: addr.path }) : net.connect({ host: addr.host, port: addr.port, noDelay: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new MtaClientError('timeout', `connect to ${address} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(new MtaClientError('connect', `connect to ${address} failed: ${err.message}`, { cause: err }));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        resolve(new MtaClient(socket, options));
      });
    });
  }

  // --- state ---------------------------------------------------------------------------

  /** The filter's OPTNEG answer, once negotiated. */
  get negotiated(): NegotiationReply | undefined {
    return this.#negotiated;
  }
  /** Negotiated protocol flags (SMFIP_*); 0 before negotiation. */
  get protocol(): number {
    return this.#protocol;
  }
  /** Negotiated actions (SMFIF_*); 0 before negotiation. */
  get actions(): number {
    return this.#actions;
  }
  /** True once the connection is closed (by either side). */
  get closed(): boolean {
    return this.#closed;
  }
  /** Replies that arrived while none was due, not yet read with readReply(). */
  get strayReplies(): readonly MilterReply[] {
    return this.#stray;
  }

  #violation(text: string): void {
    if (this.violations.length < MAX_VIOLATIONS) this.violations.push(text);
  }

  // --- wire: output --------------------------------------------------------------------

  #queue(buf: Buffer, what: string): void {
    if (this.#closed) throw new MtaClientError('closed', `cannot send ${what}: connection closed`, { cause: this.#closeError });
    this.#out.push(buf);
    this.#lastSent = what;
  }

  /** Writes everything queued in one go (writev through cork/uncork). */
  #flush(): void {
    const out = this.#out;
    if (out.length === 0 || this.#closed) {
      out.length = 0;
      return;
    }
    this.#out = [];
    if (out.length === 1) {
      this.#socket.write(out[0] as Buffer);
      return;
    }
    this.#socket.cork();
    for (const b of out) this.#socket.write(b);
    this.#socket.uncork();
  }

  /** Flushes on the next turn of the event loop, so consecutive no-reply sends share a write. */
  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }

  /** Writes everything queued now. Normally unnecessary: sends flush by themselves. */
  flush(): void {
    this.#flush();
  }

  // --- wire: input ---------------------------------------------------------------------

  #onData(chunk: Buffer): void {
    this.#reader.push(chunk);
    try {
      for (let f = this.#reader.next(); f !== null; f = this.#reader.next()) this.#onReply(decodeReply(f));
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      this.#violation(`undecodable reply after ${this.#lastSent}: ${msg}`);
      this.#fail(new MtaClientError('protocol', `undecodable reply after ${this.#lastSent}: ${msg}`, { cause: err }));
      this.#socket.destroy();
    }
  }

  #onReply(reply: MilterReply): void {
    if (this.#due === 0) {
      this.unexpectedReplies++;
      this.#violation(`unexpected reply '${reply.kind}' while no reply was due (last sent: ${this.#lastSent})`);
      this.#stray.push(reply);
      return;
    }
    const w = this.#waiter;
    if (w !== undefined) {
      this.#waiter = undefined;
      w.resolve(reply);
    } else {
      this.#inbox.push(reply);
    }
  }

  #onClose(err: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    this.#fail(new MtaClientError('closed', `connection closed by the filter while waiting (last sent: ${this.#lastSent})`, { cause: err }));
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const w of this.#closeWaiters.splice(0)) w();
  }

  #fail(err: Error): void {
    const w = this.#waiter;
    if (w === undefined) return;
    this.#waiter = undefined;
    w.reject(err);
  }

  /**
   * One shared timer checks the deadline of the current wait (cheaper than a timer per reply):
   * it is re-armed only when it would fire after the new deadline.
   */
  #armTimer(deadline: number): void {
    if (this.#timer !== undefined) {
      if (this.#timerAt <= deadline) return;
      clearTimeout(this.#timer);
    }
    const ms = Math.max(1, Math.ceil(deadline - performance.now()));
    this.#timerAt = performance.now() + ms;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      const w = this.#waiter;
      if (w === undefined) return;
      if (w.deadline > performance.now()) {
        this.#armTimer(w.deadline);
        return;
      }
      this.#waiter = undefined;
      w.reject(new MtaClientError('timeout', `no reply within ${w.ms} ms (last sent: ${this.#lastSent})`));
    }, ms);
  }

  /** Next reply received (inbox first, then strays if `includeStray`), waiting at most `ms`. */
  #next(ms: number, includeStray = false): Promise<MilterReply> {
    const r = this.#inbox.shift() ?? (includeStray ? this.#stray.shift() : undefined);
    if (r !== undefined) return Promise.resolve(r);
    if (this.#closed) {
      return Promise.reject(new MtaClientError('closed', `connection closed (last sent: ${this.#lastSent})`, { cause: this.#closeError }));
    }
    this.#flush();
    return new Promise((resolve, reject) => {
      const deadline = performance.now() + ms;
      this.#waiter = { resolve, reject, deadline, ms };
      this.#armTimer(deadline);
    });
  }

  /** Sends what is queued and takes the answer, reading past SMFIR_PROGRESS. */
  async #request(what: string): Promise<MilterReply> {
    this.#due++;
    this.#flush();
    try {
      for (;;) {
        const r = await this.#next(this.#timeoutMs);
        if (r.kind === 'progress') continue;
        if (!FINAL_KINDS.has(r.kind)) {
          this.#violation(`modification '${r.kind}' in reply to ${what}: only allowed at end of message`);
          throw new MtaClientError('protocol', `filter sent '${r.kind}' in reply to ${what}`, { reply: r });
        }
        if (r.kind === 'skip' && what !== 'BODY') this.#violation(`SMFIR_SKIP in reply to ${what}: only meaningful for BODY`);
        return r;
      }
    } finally {
      this.#due--;
    }
  }

  // --- commands ------------------------------------------------------------------------

  #macros(stage: number, macros: MacroInput | undefined): void {
    if (macros === undefined) return;
    const pairs: Array<readonly [string, string]> = Array.isArray(macros)
      ? [...(macros as ReadonlyArray<readonly [string, string]>)]
      : Object.entries(macros as Record<string, string>);
    const symStage = SYMLIST_STAGE[stage];
    const wanted = symStage === undefined ? undefined : this.#symlists.get(symStage);
    const send = wanted === undefined ? pairs : pairs.filter(([n]) => wanted.has(stripBraces(n)));
    if (send.length === 0) return;
    this.#queue(encodeCommand({ kind: 'macro', stage, macros: send }), 'MACRO');
  }

  /** A phase that honours its NO* and NR_* flags. */
  async #phase(cmd: MilterCommand, what: string, noFlag: number, nrFlag: number): Promise<PhaseResult> {
    if ((this.#protocol & noFlag) !== 0) {
      // Macros already queued still go out with the next write, as Postfix does.
      this.#scheduleFlush();
      return 'skipped';
    }
    this.#queue(encodeCommand(cmd), what);
    if ((this.#protocol & nrFlag) !== 0) {
      this.#scheduleFlush();
      return 'noreply';
    }
    return this.#request(what);
  }

  /**
   * SMFIC_OPTNEG. Records violations when the answer is outside the offer (both MTAs refuse
   * such a filter) and returns the answer, SETSYMLIST lists included.
   */
  async negotiate(offer: NegotiationOffer = POSTFIX_OFFER): Promise<NegotiationReply> {
    this.#queue(encodeCommand({ kind: 'optneg', version: offer.version, actions: offer.actions, protocol: offer.protocol }), 'OPTNEG');
    this.#due++;
    let r: MilterReply;
    try {
      r = await this.#next(this.#timeoutMs);
    } finally {
      this.#due--;
    }
    if (r.kind !== 'optneg') {
      this.#violation(`answer to OPTNEG is '${r.kind}', not an OPTNEG reply`);
      throw new MtaClientError('protocol', `answer to OPTNEG is '${r.kind}'`, { reply: r });
    }
    if (r.version > offer.version || r.version < 2) this.#violation(`negotiated version ${r.version} outside 2..${offer.version}`);
    if ((r.actions & ~offer.actions) !== 0) {
      this.#violation(`negotiated actions 0x${r.actions.toString(16)} exceed the offer 0x${offer.actions.toString(16)}`);
    }
    if ((r.protocol & ~offer.protocol) !== 0) {
      this.#violation(`negotiated protocol 0x${r.protocol.toString(16)} exceeds the offer 0x${offer.protocol.toString(16)}`);
    }
    if (r.symlists !== undefined && r.symlists.length > 0 && (r.actions & SMFIF.SETSYMLIST) === 0) {
      this.#violation('SETSYMLIST lists sent without the SMFIF_SETSYMLIST action');
    }
    this.#version = r.version;
    this.#actions = r.actions;
    // Only what both sides agree on applies (Postfix keeps the filter's mask; an excess is a violation above).
    this.#protocol = r.protocol & offer.protocol;
    this.#symlists = new Map((r.symlists ?? []).map((s: SymbolList) => [s.stage, new Set(s.macros.map(stripBraces))]));
    this.#negotiated = r;
    return r;
  }

  /** SMFIC_MACRO for `stage` (a command code such as SMFIC.MAIL, or its letter 'M'). Never answered. */
  macro(stage: number | string, macros: MacroInput): void {
    const code = typeof stage === 'string' ? stage.charCodeAt(0) : stage;
    this.#macros(code, macros);
    this.#scheduleFlush();
  }

  /** SMFIC_CONNECT (NOCONNECT / NR_CONN). */
  connect(
    info: { hostname?: string; family?: AddressFamily; address?: string; port?: number } = {},
    macros?: MacroInput,
  ): Promise<PhaseResult> {
    const family = info.family ?? 'inet';
    this.#macros(SMFIC.CONNECT, macros);
    return this.#phase(
      {
        kind: 'connect',
        hostname: info.hostname ?? 'client.example.org',
        family,
        address: family === 'unknown' ? '' : (info.address ?? '192.0.2.1'),
        port: family === 'unknown' || family === 'unix' ? (info.port ?? 0) : (info.port ?? 40000),
      },
      'CONNECT',
      SMFIP.NOCONNECT,
      SMFIP.NR_CONN,
    );
  }

  /** SMFIC_HELO (NOHELO / NR_HELO). */
  helo(name: string, macros?: MacroInput): Promise<PhaseResult> {
    this.#macros(SMFIC.HELO, macros);
    return this.#phase({ kind: 'helo', name }, 'HELO', SMFIP.NOHELO, SMFIP.NR_HELO);
  }

  /** SMFIC_MAIL (NOMAIL / NR_MAIL): `<addr>` or `[<addr>, ...ESMTP args]`. Starts a message. */
  mail(from: string | readonly string[], macros?: MacroInput): Promise<PhaseResult> {
    this.#skipBody = false;
    this.#macros(SMFIC.MAIL, macros);
    return this.#phase({ kind: 'mail', args: toArgs(from) }, 'MAIL', SMFIP.NOMAIL, SMFIP.NR_MAIL);
  }

  /** SMFIC_RCPT (NORCPT / NR_RCPT). */
  rcpt(to: string | readonly string[], macros?: MacroInput): Promise<PhaseResult> {
    this.#macros(SMFIC.RCPT, macros);
    return this.#phase({ kind: 'rcpt', args: toArgs(to) }, 'RCPT', SMFIP.NORCPT, SMFIP.NR_RCPT);
  }

  /** SMFIC_DATA (NODATA / NR_DATA). */
  data(macros?: MacroInput): Promise<PhaseResult> {
    this.#macros(SMFIC.DATA, macros);
    return this.#phase({ kind: 'data' }, 'DATA', SMFIP.NODATA, SMFIP.NR_DATA);
  }

  /** SMFIC_HEADER (NOHDRS / NR_HDR): the value is sent exactly as given. */
  header(name: string, value: string): Promise<PhaseResult> {
    return this.#phase({ kind: 'header', name, value }, 'HEADER', SMFIP.NOHDRS, SMFIP.NR_HDR);
  }

  /** SMFIC_EOH (NOEOH / NR_EOH). */
  eoh(macros?: MacroInput): Promise<PhaseResult> {
    this.#macros(SMFIC.EOH, macros);
    return this.#phase({ kind: 'eoh' }, 'EOH', SMFIP.NOEOH, SMFIP.NR_EOH);
  }

  /**
   * SMFIC_BODY (NOBODY / NR_BODY), cut into chunks of at most 65535 bytes. Stops at the first
   * answer other than continue: SMFIR_SKIP (further chunks are skipped) or a verdict. Returns
   * that answer, else the last chunk's result; 'skipped' for an empty body.
   */
  async body(data: string | Uint8Array): Promise<PhaseResult> {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let last: PhaseResult = 'skipped';
    for (let off = 0; off < bytes.length; off += MILTER_CHUNK_SIZE) {
      if (this.#skipBody) return 'skipped';
      const chunk = bytes.subarray(off, Math.min(off + MILTER_CHUNK_SIZE, bytes.length));
      last = await this.#phase({ kind: 'body', chunk }, 'BODY', SMFIP.NOBODY, SMFIP.NR_BODY);
      if (typeof last === 'string') continue;
      if (last.kind === 'skip') {
        if ((this.#protocol & SMFIP.SKIP) === 0) this.#violation('SMFIR_SKIP without the negotiated SMFIP_SKIP flag');
        this.#skipBody = true;
        return last;
      }
      if (last.kind !== 'continue') return last;
    }
    return last;
  }

  /**
   * SMFIC_BODYEOB (end of message), `chunk` normally empty. Collects modification replies until
   * the final verdict. Modifications whose action was not negotiated are recorded as violations.
   */
  async eom(chunk: Uint8Array = new Uint8Array(0), macros?: MacroInput): Promise<EomResult> {
    this.#macros(SMFIC.BODYEOB, macros);
    this.#queue(encodeCommand({ kind: 'eob', chunk }), 'BODYEOB');
    this.#due++;
    this.#flush();
    const modifications: MilterReply[] = [];
    let progressCount = 0;
    try {
      for (;;) {
        const r = await this.#next(this.#timeoutMs);
        if (r.kind === 'progress') {
          progressCount++;
          continue;
        }
        if (FINAL_KINDS.has(r.kind)) {
          if (r.kind === 'skip') this.#violation('SMFIR_SKIP as the end-of-message verdict');
          return { modifications, verdict: r, progressCount };
        }
        this.#checkModification(r);
        modifications.push(r);
      }
    } finally {
      this.#due--;
    }
  }

  /** Alias of `eom`: SMFIC_BODYEOB. */
  eob(chunk?: Uint8Array, macros?: MacroInput): Promise<EomResult> {
    return this.eom(chunk, macros);
  }

  #checkModification(r: MilterReply): void {
    let need = MOD_ACTION[r.kind];
    if (r.kind === 'addrcpt') need = r.args === undefined ? SMFIF.ADDRCPT : SMFIF.ADDRCPT_PAR;
    if (need === undefined) {
      this.#violation(`reply '${r.kind}' at end of message is neither a modification nor a verdict`);
    } else if ((this.#actions & need) === 0) {
      this.#violation(`modification '${r.kind}' without the negotiated action 0x${need.toString(16)}`);
    }
  }

  /** SMFIC_UNKNOWN (NOUNKNOWN / NR_UNKN). */
  unknown(command: string): Promise<PhaseResult> {
    return this.#phase({ kind: 'unknown', command }, 'UNKNOWN', SMFIP.NOUNKNOWN, SMFIP.NR_UNKN);
  }

  /** SMFIC_ABORT: never answered; goes out with the next write. */
  abort(): void {
    this.#queue(encodeCommand({ kind: 'abort' }), 'ABORT');
    this.#skipBody = false;
    this.#scheduleFlush();
  }

  /**
   * SMFIC_QUIT_NC: ends this SMTP connection; the next command is CONNECT on the same socket
   * (negotiation is kept). Never answered.
   */
  quitNc(): void {
    this.#queue(encodeCommand({ kind: 'quitNc' }), 'QUIT_NC');
    this.#skipBody = false;
    this.#scheduleFlush();
  }

  /**
   * SMFIC_QUIT, then half-close and wait (bounded) for the filter to close. Any reply in
   * between is counted as unexpected; a filter that does not close is a violation.
   */
  async quit(): Promise<void> {
    if (this.#closed) return;
    this.#queue(encodeCommand({ kind: 'quit' }), 'QUIT');
    this.#flush();
    this.#socket.end();
    if (!(await this.#waitClose(this.#timeoutMs))) {
      this.#violation(`filter did not close the connection within ${this.#timeoutMs} ms of QUIT`);
      this.#socket.destroy();
    }
  }

  // --- raw access for malformed-input tests ---------------------------------------------

  /**
   * Writes raw bytes (after anything queued). `expectReplies` (default 1) is how many replies
   * they are due to produce; replies beyond that count as unexpected.
   */
  sendRaw(bytes: Uint8Array, expectReplies = 1): void {
    this.#queue(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), 'raw bytes');
    this.#due += expectReplies;
    this.#flush();
  }

  /**
   * The next reply in arrival order, whatever it is (progress and strays included); rejects with
   * MtaClientError 'timeout' or 'closed'. Consumes one of the replies due from sendRaw.
   */
  async readReply(timeoutMs: number = this.#timeoutMs): Promise<MilterReply> {
    const r = await this.#next(timeoutMs, true);
    if (this.#due > 0) this.#due--;
    return r;
  }

  /** Waits `ms` (flushing first) so late replies can arrive; returns `unexpectedReplies`. */
  async settle(ms: number): Promise<number> {
    this.#flush();
    await new Promise((r) => setTimeout(r, ms));
    return this.unexpectedReplies;
  }

  /** Resolves true when the connection closes within `ms`, false otherwise. */
  #waitClose(ms: number): Promise<boolean> {
    if (this.#closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      this.#closeWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** Waits until the filter closes the connection; rejects with 'timeout' after `ms`. */
  async waitClosed(ms: number = this.#timeoutMs): Promise<void> {
    this.#flush();
    if (!(await this.#waitClose(ms))) throw new MtaClientError('timeout', `connection still open after ${ms} ms`);
  }

  /**
   * Closes without QUIT (as Postfix does after an early accept/reject): flushes, half-closes,
   * waits (bounded by `graceMs`, default 1000) for the filter to close, then destroys.
   * Returns the unexpected-reply count and violations, for a final assertion.
   */
  async close(graceMs = 1000): Promise<{ unexpectedReplies: number; violations: readonly string[] }> {
    if (!this.#closed) {
      this.#flush();
      this.#socket.end();
      if (!(await this.#waitClose(graceMs))) this.#socket.destroy();
    }
    return { unexpectedReplies: this.unexpectedReplies, violations: this.violations };
  }

  /** Destroys the socket at once (simulates an MTA crash). */
  destroy(): void {
    this.#socket.destroy();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close(200);
  }

  // --- whole message -------------------------------------------------------------------

  /**
   * MAIL, RCPT…, DATA, headers, EOH, body, EOM, as an MTA would run them against this one filter:
   * stops at the first message-level verdict other than continue (a reject/tempfail at RCPT
   * only drops that recipient; when all are dropped the message ends).
   */
  async runMessage(msg: MessageSpec): Promise<MessageResult> {
    const m = msg.macros;
    const res: MessageResult = {
      mail: 'skipped',
      rcpts: [],
      data: 'skipped',
      headers: [],
      eoh: 'skipped',
      body: 'skipped',
      eom: undefined,
      endedAt: 'mail',
      verdict: 'skipped',
    };
    const ends = (r: PhaseResult): boolean => typeof r !== 'string' && r.kind !== 'continue' && r.kind !== 'skip';
    try {
      const mail = await this.mail(msg.from, m?.mail);
      (res as { mail: PhaseResult }).mail = mail;
      if (ends(mail)) return this.#ended(res, 'mail', mail);

      let accepted = 0;
      for (const to of msg.rcpts) {
        const r = await this.rcpt(to, m?.rcpt);
        res.rcpts.push(r);
        if (typeof r !== 'string' && (r.kind === 'reject' || r.kind === 'tempfail' || r.kind === 'replycode')) continue;
        if (ends(r)) return this.#ended(res, 'rcpt', r);
        accepted++;
      }
      if (accepted === 0 && msg.rcpts.length > 0) return this.#ended(res, 'rcpt', res.rcpts[res.rcpts.length - 1] as PhaseResult);

      res.data = await this.data(m?.data);
      if (ends(res.data)) return this.#ended(res, 'data', res.data);

      const strip = (this.#protocol & SMFIP.HDR_LEADSPC) === 0;
      for (const [name, raw] of msg.headers ?? []) {
        const r = await this.header(name, strip && raw.startsWith(' ') ? raw.slice(1) : raw);
        res.headers.push(r);
        if (ends(r)) return this.#ended(res, 'header', r);
      }
      res.eoh = await this.eoh(m?.eoh);
      if (ends(res.eoh)) return this.#ended(res, 'eoh', res.eoh);

      if (msg.body !== undefined) {
        res.body = await this.body(msg.body);
        if (ends(res.body)) return this.#ended(res, 'body', res.body);
      }
      res.eom = await this.eom(undefined, m?.eom);
      res.endedAt = 'eom';
      res.verdict = res.eom.verdict;
      return res;
    } finally {
      if (msg.abortAfter === true && !this.#closed) this.abort();
    }
  }

  #ended(res: MessageResult, at: MessageEnd, verdict: PhaseResult): MessageResult {
    res.endedAt = at;
    res.verdict = verdict;
    return res;
  }

  /** Negotiated protocol version; 0 before negotiation. */
  get version(): number {
    return this.#version;
  }
}
