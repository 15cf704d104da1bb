/**
 * One MTA connection: an explicit state machine over decoded commands, with libmilter's
 * ordering rules (libmilter/engine.c), replies written in batches, and backpressure.
 *
 *   OPTNEG ──O──▶ NEGOTIATED ──C──▶ CONNECTED ──H──▶ HELO ◀────────────────────────────┐
 *                     ▲                 │             │                                 │
 *                     └──── K (QUIT_NC) ┴──────M──────┴─▶ MAIL ─R─▶ RCPT ─T─▶ DATA      │
 *                                                         │  headers L*, N, body B*     │
 *                                                         └────────E (EOM) / A (ABORT) ─┘
 *
 * - MACRO (D) is allowed in every state after negotiation; QUIT (Q) in every state.
 * - ABORT and QUIT/QUIT_NC are never answered (answering ABORT breaks Postfix:
 *   Sendmail::PMilter RT#145263). Every other command gets exactly one answer unless an NR_*
 *   flag was negotiated for it: two answers desynchronise the MTA (python-libmilter#14).
 * - Out-of-order commands: as libmilter, abort the transaction (xxfi_abort), fall back to the
 *   between-messages state, and process the command from there if it is valid there. If it is
 *   still not valid and expects an answer, we answer TEMPFAIL (libmilter would stay silent and
 *   make the MTA wait for its timeout).
 * - Unknown command codes, and frames that break framing, close the connection.
 * @module
 */
import { MilterdError, ProtocolError } from '../errors.ts';
import { performance } from 'node:perf_hooks';
import { countMessage, metricsEnabled } from '../metrics.ts';
import type { Logger } from '../log.ts';
import { SMFIC, SMFIP } from '../protocol/constants.ts';
import { decodeCommand, FrameReader, type Frame } from '../protocol/decoder.ts';
import {
  encodeReplaceBody,
  encodeReply,
  PACKET_ACCEPT,
  PACKET_CONTINUE,
  PACKET_DISCARD,
  PACKET_PROGRESS,
  PACKET_REJECT,
  PACKET_TEMPFAIL,
} from '../protocol/encoder.ts';
import type { MilterCommand } from '../protocol/types.ts';
import type { Chain, Outcome } from '../chain/chain.ts';
import { ChainRun } from '../chain/chain.ts';
import { BodyStore, type BodyStoreOptions } from '../chain/content.ts';
import type { ConnectionInfo, EnvelopeAddress, FilterAction } from '../chain/filter.ts';
import { describeEdit, diffToActions, headerValue, type MessageSnapshot, type WorkHeader } from '../chain/message.ts';
import { MACRO_STAGES, MacroStore } from './macros.ts';
import { fits, negotiate, type Negotiated } from './negotiate.ts';
import type { ChainHolder } from '../chain/holder.ts';

/** #frame's answer when the connection is being closed. */
const FATAL = Symbol('fatal');

/** Session states. The names are the last command seen. */
export const State = {
  OPTNEG: 'OPTNEG', // nothing yet: only OPTNEG is valid
  NEGOTIATED: 'NEGOTIATED', // waiting for CONNECT
  CONNECTED: 'CONNECTED',
  HELO: 'HELO', // also "between messages"
  MAIL: 'MAIL',
  RCPT: 'RCPT',
  DATA: 'DATA',
  HEADERS: 'HEADERS',
  EOH: 'EOH',
  BODY: 'BODY',
  CLOSED: 'CLOSED',
} as const;
export type State = (typeof State)[keyof typeof State];

const IN_MESSAGE: ReadonlySet<State> = new Set([State.MAIL, State.RCPT, State.DATA, State.HEADERS, State.EOH, State.BODY]);

/** Which states each command may follow (after negotiation). */
const ALLOWED: Readonly<Partial<Record<MilterCommand['kind'], ReadonlySet<State>>>> = {
  connect: new Set([State.NEGOTIATED]),
  helo: new Set([State.CONNECTED, State.HELO]),
  mail: new Set([State.CONNECTED, State.HELO]),
  rcpt: new Set([State.MAIL, State.RCPT]),
  data: new Set([State.MAIL, State.RCPT]),
  header: new Set([State.MAIL, State.RCPT, State.DATA, State.HEADERS]),
  eoh: new Set([State.MAIL, State.RCPT, State.DATA, State.HEADERS]),
  body: new Set([State.MAIL, State.RCPT, State.DATA, State.HEADERS, State.EOH, State.BODY]),
  eob: new Set([State.MAIL, State.RCPT, State.DATA, State.HEADERS, State.EOH, State.BODY]),
};
const NEXT: Readonly<Partial<Record<MilterCommand['kind'], State>>> = {
  connect: State.CONNECTED,
  helo: State.HELO,
  mail: State.MAIL,
  rcpt: State.RCPT,
  data: State.DATA,
  header: State.HEADERS,
  eoh: State.EOH,
  body: State.BODY,
};

/** NR_* flag of each command that normally gets an answer (0: always answered). */
const NO_REPLY_FLAG: Readonly<Record<number, number>> = {
  [SMFIC.CONNECT]: SMFIP.NR_CONN,
  [SMFIC.HELO]: SMFIP.NR_HELO,
  [SMFIC.MAIL]: SMFIP.NR_MAIL,
  [SMFIC.RCPT]: SMFIP.NR_RCPT,
  [SMFIC.DATA]: SMFIP.NR_DATA,
  [SMFIC.HEADER]: SMFIP.NR_HDR,
  [SMFIC.EOH]: SMFIP.NR_EOH,
  [SMFIC.BODY]: SMFIP.NR_BODY,
  [SMFIC.UNKNOWN]: SMFIP.NR_UNKN,
  [SMFIC.BODYEOB]: 0,
  [SMFIC.OPTNEG]: 0,
};

/** Where the session writes and how it controls the flow of bytes (a net.Socket in the daemon). */
export interface Transport {
  write(data: Uint8Array): boolean;
  pause(): void;
  resume(): void;
  /** Close after pending writes. */
  end(): void;
  once(event: 'drain', fn: () => void): unknown;
}

/** Settings of a session. */
export interface SessionOptions {
  /**
   * Where the current chain comes from. A connection takes the current chain at negotiation
   * and, after a reload, moves to the new one when its next message starts (if the new chain
   * fits what was negotiated), so a message always finishes on the chain it started with.
   */
  readonly chains: ChainHolder;
  readonly logger: Logger;
  readonly maxFrameSize: number;
  readonly bodyStore: BodyStoreOptions;
  /** Send SMFIR_PROGRESS this often while the chain works on end of message; 0 = never. */
  readonly progressIntervalMs: number;
  /** Pause reading from the MTA when this many bytes wait unprocessed. */
  readonly highWaterMark: number;
}

interface MessageState {
  from: EnvelopeAddress | undefined;
  rcpts: EnvelopeAddress[];
  headers: WorkHeader[];
  body: BodyStore;
  /** A verdict for the whole message was already given: ignore its content. */
  done: boolean;
}

/** What a non-continue answer ends: the connection, the message, one recipient, or just one command. */
type Scope = 'connection' | 'message' | 'recipient' | 'command';

const EMPTY_CONN: ConnectionInfo = { hostname: '', family: 'unknown', address: '', port: 0, helo: undefined };

/** One MTA connection. Feed it bytes with `receive`; it answers through the transport. */
export class Session {
  readonly id: string;
  #state: State = State.OPTNEG;
  readonly #opts: SessionOptions;
  readonly #t: Transport;
  readonly #reader: FrameReader;
  readonly #macros = new MacroStore();
  readonly #log: Logger;
  #msgLog: Logger | undefined;
  #neg: Negotiated | undefined;
  #chain: Chain | undefined;
  #run: ChainRun | undefined;
  #conn: ConnectionInfo = EMPTY_CONN;
  #msg: MessageState | undefined;
  /** Replies of the current pump pass, written in one go. */
  #out: Uint8Array[] = [];
  #busy = false;
  /** Resolved when the command in progress is done (teardown waits for it). */
  #idleWaiters: Array<() => void> = [];
  #paused = false;
  #closing = false;
  #closed: Promise<void> | undefined;
  /** Messages completed on this connection (for logs and stats). */
  messages = 0;

  constructor(id: string, transport: Transport, options: SessionOptions) {
    this.id = id;
    this.#t = transport;
    this.#opts = options;
    this.#log = options.logger.child({ session: id });
    this.#reader = new FrameReader({ maxFrameSize: options.maxFrameSize });
  }

  /** Current state (for tests and diagnostics). */
  get state(): State {
    return this.#state;
  }

  /** Bytes from the MTA. */
  receive(chunk: Uint8Array): void {
    if (this.#closing) return;
    this.#reader.push(chunk);
    if (!this.#busy) this.#pump();
    else if (!this.#paused && this.#reader.buffered > this.#opts.highWaterMark) {
      // Backpressure: a slow filter must not make us buffer without bound.
      this.#paused = true;
      this.#t.pause();
    }
  }

  /** The MTA closed its side or the socket failed: clean up filters and buffers. */
  end(): Promise<void> {
    this.#closing = true;
    return (this.#closed ??= this.#teardown());
  }

  async #teardown(): Promise<void> {
    // Wait for a command in progress (e.g. a slow end of message) to finish first.
    if (this.#busy) await new Promise<void>((r) => this.#idleWaiters.push(r));
    this.#state = State.CLOSED;
    await this.#endConnection();
  }

  /** Ends the SMTP connection for the filters; with `keepChain` (QUIT_NC) the chain stays held. */
  async #endConnection(keepChain = false): Promise<void> {
    const run = this.#run;
    const chain = this.#chain;
    this.#run = undefined;
    if (!keepChain) this.#chain = undefined;
    if (this.#msg !== undefined) await this.#endMessage(true, run);
    if (run !== undefined) await run.close();
    if (chain !== undefined && !keepChain) this.#opts.chains.release(chain);
  }

  /**
   * At the start of a message: after a reload, move to the current chain if it fits what this
   * connection negotiated; otherwise keep the old one until the connection ends.
   */
  #maybeSwitchChain(): Promise<void> | undefined {
    const holder = this.#opts.chains;
    const next = holder.current;
    const old = this.#chain;
    if (old === undefined || next === old || this.#neg === undefined) return undefined;
    if (!fits(next.needs, this.#neg)) return undefined;
    const oldRun = this.#run;
    this.#chain = holder.acquire();
    this.#run = this.#newRun(this.#chain, this.#neg);
    const finish = async (): Promise<void> => {
      // The old chain's filters see this connection end for them.
      if (oldRun !== undefined) await oldRun.close();
      holder.release(old);
    };
    return finish();
  }

  #logger(): Logger {
    if (this.#msgLog !== undefined) return this.#msgLog;
    const qid = this.#msg === undefined ? undefined : this.#macros.get('i');
    if (qid === undefined) return this.#log;
    return (this.#msgLog = this.#log.child({ qid }));
  }

  #idle(): void {
    this.#busy = false;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Processes buffered frames until one needs to wait. */
  #pump(): void {
    this.#busy = true;
    try {
      for (;;) {
        if (this.#closing) break;
        let frame;
        try {
          frame = this.#reader.next();
        } catch (err) {
          this.#fatal(err);
          break;
        }
        if (frame === null) break;
        const r = this.#frame(frame);
        if (r === FATAL) break;
        if (r !== undefined) {
          this.#flush();
          r.then(
            () => this.#pump(),
            (err: unknown) => {
              this.#fatal(err);
              this.#idle();
            },
          );
          return;
        }
      }
    } catch (err) {
      this.#fatal(err);
    }
    this.#flush();
    this.#idle();
    if (this.#paused && this.#reader.buffered <= this.#opts.highWaterMark / 2) {
      this.#paused = false;
      this.#t.resume();
    }
  }

  /** Decodes and handles one frame: a promise when it must wait, FATAL when the connection is closing. */
  #frame(frame: Frame): Promise<void> | undefined | typeof FATAL {
    let cmd: MilterCommand;
    try {
      cmd = decodeCommand(frame);
    } catch (err) {
      // A malformed command of a known kind costs the message, not the connection.
      if (err instanceof ProtocolError && err.code !== 'MILTERD_PROTO_UNKNOWN_COMMAND') return this.#malformed(frame.code, err);
      this.#fatal(err);
      return FATAL;
    }
    return this.#handle(cmd);
  }

  #flush(): void {
    const out = this.#out;
    if (out.length === 0) return;
    this.#out = [];
    const ok = this.#t.write(out.length === 1 ? out[0]! : Buffer.concat(out));
    if (!ok && !this.#paused) {
      // The MTA is not reading its answers: stop reading its commands until it does.
      this.#paused = true;
      this.#t.pause();
      this.#t.once('drain', () => {
        if (this.#paused && !this.#closing) {
          this.#paused = false;
          this.#t.resume();
        }
      });
    }
  }

  #send(packet: Uint8Array): void {
    this.#out.push(packet);
  }

  /** Does this command get an answer, given the negotiated NR_* flags? */
  #wantsReply(code: number): boolean {
    const flag = NO_REPLY_FLAG[code];
    if (flag === undefined) return false;
    return flag === 0 || this.#neg === undefined || (this.#neg.protocol & flag) === 0;
  }

  #fatal(err: unknown): void {
    const e = err instanceof MilterdError ? err : new MilterdError('MILTERD_SESSION_SOCKET', String(err), { cause: err });
    this.#log.error({ code: e.code, err: e.message, state: this.#state }, `closing MTA connection: ${e.message}`);
    this.#flush();
    this.#closing = true;
    this.#t.end();
    void this.end();
  }

  /**
   * A command that does not decode: the message (if any) is abandoned and the MTA gets a
   * TEMPFAIL. The abort is awaited before the next command, like any other: the filters' abort
   * hooks must not finish (and reset message state) after the next message has begun.
   */
  #malformed(code: number, err: ProtocolError): Promise<void> | undefined {
    this.#log.warn(
      { code: 'MILTERD_SESSION_MALFORMED', cause: err.code, err: err.message, command: String.fromCharCode(code), state: this.#state },
      `malformed ${String.fromCharCode(code)} command: ${err.message}`,
    );
    const reply = (): void => {
      if (this.#wantsReply(code)) this.#send(PACKET_TEMPFAIL);
    };
    if (this.#msg === undefined) {
      reply();
      return undefined;
    }
    return this.#abortMessage().then(reply);
  }

  /** Handles one command. Returns a promise only when it must wait (filters, I/O). */
  #handle(cmd: MilterCommand): Promise<void> | undefined {
    switch (cmd.kind) {
      case 'optneg':
        return this.#optneg(cmd);
      case 'quit':
        this.#closing = true;
        this.#flush();
        this.#t.end();
        void this.end();
        return undefined;
      default:
        break;
    }
    if (this.#state === State.OPTNEG) {
      this.#fatal(new MilterdError('MILTERD_SESSION_OUT_OF_ORDER', `${cmd.kind} before option negotiation`));
      return undefined;
    }
    switch (cmd.kind) {
      case 'macro':
        if (!MACRO_STAGES.has(cmd.stage)) {
          this.#log.warn({ code: 'MILTERD_SESSION_MACRO_STAGE', stage: cmd.stage }, 'macros for an unknown stage ignored');
        } else this.#macros.set(cmd.stage, cmd.macros);
        return undefined;
      case 'abort':
        // Never answered. Resets the message, keeps the connection (libmilter st_abort).
        if (this.#msg !== undefined) return this.#abortMessage();
        return undefined;
      case 'quitNc':
        return this.#quitNc();
      case 'unknown':
        if (this.#state === State.NEGOTIATED) return this.#outOfOrder(cmd);
        return this.#reply(SMFIC.UNKNOWN, this.#run!.unknown(cmd.command, this.#msg !== undefined), 'command');
      default:
        break;
    }
    if (!ALLOWED[cmd.kind]!.has(this.#state)) return this.#outOfOrder(cmd);
    return this.#dispatch(cmd);
  }

  #dispatch(cmd: MilterCommand): Promise<void> | undefined {
    const next = NEXT[cmd.kind];
    if (next !== undefined) this.#state = next;
    switch (cmd.kind) {
      case 'connect':
        this.#conn = { hostname: cmd.hostname, family: cmd.family, address: cmd.address, port: cmd.port, helo: undefined };
        return this.#reply(SMFIC.CONNECT, this.#run!.connect(this.#conn), 'connection');
      case 'helo':
        this.#conn = { ...this.#conn, helo: cmd.name };
        return this.#reply(SMFIC.HELO, this.#run!.helo(cmd.name), 'connection');
      case 'mail': {
        const switching = this.#maybeSwitchChain();
        if (switching !== undefined) return switching.then(() => this.#dispatch(cmd));
        const from: EnvelopeAddress = { address: cmd.args[0] ?? '', args: cmd.args.slice(1) };
        this.#msg = {
          from,
          rcpts: [],
          headers: [],
          body: new BodyStore(this.#opts.bodyStore),
          done: false,
        };
        this.#msgLog = undefined;
        return this.#reply(SMFIC.MAIL, this.#run!.envfrom(from), 'message');
      }
      case 'rcpt': {
        const msg = this.#msg!;
        const rcpt: EnvelopeAddress = { address: cmd.args[0] ?? '', args: cmd.args.slice(1) };
        if (msg.done) return this.#reply(SMFIC.RCPT, { type: 'continue' });
        const o = this.#run!.envrcpt(rcpt);
        const keep = (v: Outcome): Outcome => {
          // REJECT/TEMPFAIL at RCPT refuse this recipient only.
          if (v.type === 'continue' || v.type === 'accept') msg.rcpts.push(rcpt);
          return v;
        };
        return this.#reply(SMFIC.RCPT, o instanceof Promise ? o.then(keep) : keep(o), 'recipient');
      }
      case 'data':
        if (this.#msg!.done) return this.#reply(SMFIC.DATA, { type: 'continue' });
        return this.#reply(SMFIC.DATA, this.#run!.data(), 'message');
      case 'header': {
        const msg = this.#msg!;
        if (!msg.done) {
          // With HDR_LEADSPC the value is exactly as in the message; without it the MTA has
          // removed one space after the colon, which we put back for `raw`.
          const lead = this.#neg !== undefined && (this.#neg.protocol & SMFIP.HDR_LEADSPC) !== 0;
          const raw = lead ? cmd.value : ` ${cmd.value}`;
          msg.headers.push({ name: cmd.name, value: lead ? headerValue(cmd.value) : cmd.value, raw, orig: msg.headers.length });
        }
        if (this.#wantsReply(SMFIC.HEADER)) this.#send(PACKET_CONTINUE);
        return undefined;
      }
      case 'eoh':
        if (this.#wantsReply(SMFIC.EOH)) this.#send(PACKET_CONTINUE);
        return undefined;
      case 'body': {
        const msg = this.#msg!;
        if (!msg.done) msg.body.append(cmd.chunk);
        if (this.#wantsReply(SMFIC.BODY)) this.#send(PACKET_CONTINUE);
        return undefined;
      }
      case 'eob':
        return this.#eom(cmd.chunk);
      default:
        throw new Error(`unreachable: ${cmd.kind}`);
    }
  }

  /**
   * Answers a command from a chain outcome. `scope` says what a non-continue ends: at
   * connect/helo nothing more is filtered on this connection, at mail/data the message is over.
   */
  #reply(
    code: number,
    o: Outcome | Promise<Outcome>,
    scope: Scope = 'message',
  ): Promise<void> | undefined {
    if (o instanceof Promise) return o.then((v) => this.#answer(code, v, scope));
    this.#answer(code, o, scope);
    return undefined;
  }

  #answer(code: number, o: Outcome, scope: Scope): void {
    if (this.#wantsReply(code)) this.#send(outcomePacket(o));
    if (o.type === 'continue') return;
    if (o.type !== 'accept' || scope !== 'recipient') {
      this.#logger().info(
        { verdict: o.type, command: String.fromCharCode(code), ...('reply' in o && o.reply ? { reply: o.reply } : {}) },
        `${String.fromCharCode(code)}: ${o.type}`,
      );
    }
    if (scope === 'recipient' || scope === 'command') {
      // Refusing one recipient or one unknown command leaves the message going; an accept or
      // discard is about the whole message.
      if ((o.type === 'discard' || o.type === 'accept') && this.#msg !== undefined && !this.#msg.done) {
        this.#msg.done = true;
        // Decided here: end of message will only be answered with continue, and not counted.
        countMessage(o.type);
      }
      return;
    }
    if (scope === 'message' && this.#msg !== undefined) {
      this.#msg.done = true;
      countMessage(o.type);
    }
  }

  #outOfOrder(cmd: MilterCommand): Promise<void> | undefined {
    const err = new MilterdError('MILTERD_SESSION_OUT_OF_ORDER', `${cmd.kind} not allowed in state ${this.#state}`);
    this.#log.warn({ code: err.code, command: cmd.kind, state: this.#state }, err.message);
    const code = commandCode(cmd);
    const fallback = this.#state === State.NEGOTIATED ? undefined : IN_MESSAGE.has(this.#state) ? State.HELO : this.#state;
    const retry = (): Promise<void> | undefined => {
      if (fallback !== undefined && cmd.kind !== 'unknown' && ALLOWED[cmd.kind]?.has(fallback)) {
        this.#state = fallback;
        return this.#dispatch(cmd);
      }
      if (this.#wantsReply(code)) this.#send(PACKET_TEMPFAIL);
      return undefined;
    };
    if (this.#msg !== undefined) {
      return this.#abortMessage().then(() => retry() ?? undefined);
    }
    return retry();
  }

  #optneg(cmd: Extract<MilterCommand, { kind: 'optneg' }>): Promise<void> | undefined {
    if (IN_MESSAGE.has(this.#state)) return this.#outOfOrder(cmd);
    const start = (): void => {
      const chain = this.#opts.chains.acquire();
      let neg: Negotiated;
      try {
        neg = negotiate(cmd, chain.needs);
      } catch (err) {
        this.#opts.chains.release(chain);
        this.#fatal(err);
        return;
      }
      this.#neg = neg;
      this.#chain = chain;
      this.#run = this.#newRun(chain, neg);
      this.#state = State.NEGOTIATED;
      this.#macros.clearAll();
      this.#send(encodeReply(neg.reply));
      const missing = [...chain.needs.actions].filter((a) => !neg.grantedActions.has(a));
      if (missing.length > 0) {
        // libmilter would refuse the connection; we keep serving the filters that can work and
        // fail (by policy) only the edits that need what the MTA did not offer.
        this.#log.warn(
          { code: 'MILTERD_FILTER_ACTION_NOT_NEGOTIATED', missing, mtaActions: hex(cmd.actions) },
          `the MTA does not allow ${missing.join(', ')}: filters that use them will fail by policy`,
        );
      }
      this.#log.debug(
        {
          mta: { version: cmd.version, actions: hex(cmd.actions), protocol: hex(cmd.protocol) },
          reply: { version: neg.version, actions: hex(neg.actions), protocol: hex(neg.protocol) },
        },
        'negotiated',
      );
    };
    if (this.#run !== undefined) {
      // A second OPTNEG between messages: start over, as for a new connection.
      return this.#endConnection().then(start);
    }
    start();
    return undefined;
  }

  #newRun(chain: Chain, neg: Negotiated): ChainRun {
    return new ChainRun(chain, {
      connection: () => this.#conn,
      from: () => this.#msg?.from,
      rcpts: () => this.#msg?.rcpts ?? [],
      getSymbol: (name) => this.#macros.get(name),
      log: () => this.#logger(),
      negotiated: neg.grantedActions as ReadonlySet<FilterAction>,
      addRcptArgs: (neg.actions & 0x80) !== 0,
      bodyStore: this.#opts.bodyStore,
    });
  }

  /** QUIT_NC: this SMTP connection is over; a CONNECT for a new one follows, no OPTNEG. */
  async #quitNc(): Promise<void> {
    await this.#endConnection(true);
    this.#macros.clearAll();
    this.#conn = EMPTY_CONN;
    this.#run = this.#newRun(this.#chain!, this.#neg!);
    this.#state = State.NEGOTIATED;
  }

  #abortMessage(): Promise<void> {
    this.#state = this.#state === State.CONNECTED ? State.CONNECTED : State.HELO;
    return this.#endMessage(true, this.#run);
  }

  async #endMessage(aborted: boolean, run: ChainRun | undefined): Promise<void> {
    const msg = this.#msg;
    this.#msg = undefined;
    this.#msgLog = undefined;
    this.#macros.clearMessage();
    if (run !== undefined) await run.endMessage(aborted);
    if (msg !== undefined) await msg.body.dispose();
  }

  /** End of message: run the content filters, send the combined modifications and verdict. */
  async #eom(lastChunk: Uint8Array): Promise<void> {
    const msg = this.#msg!;
    const run = this.#run!;
    this.#state = State.HELO;
    if (lastChunk.length > 0 && !msg.done) msg.body.append(lastChunk);
    if (msg.done) {
      this.#send(PACKET_CONTINUE);
      this.messages++;
      return this.#endMessage(false, run);
    }
    const base: MessageSnapshot = {
      headers: msg.headers,
      body: msg.body,
      from: msg.from,
      rcpts: msg.rcpts,
      quarantine: undefined,
    };
    // Keep the MTA from timing out while filters work (Postfix resets its timeout on
    // SMFIR_PROGRESS; Sendmail accepts it only during end of message, which this is).
    const interval = this.#opts.progressIntervalMs;
    const timer =
      interval > 0 && this.#neg!.version >= 6
        ? setInterval(() => {
            if (!this.#closing) this.#t.write(PACKET_PROGRESS);
          }, interval)
        : undefined;
    let replacedBody: BodyStore | undefined;
    const t0 = metricsEnabled() ? performance.now() : 0;
    try {
      const outcome = await run.eom(base);
      if (t0 !== 0) countMessage(outcome.type, (performance.now() - t0) / 1000);
      if (outcome.type !== 'accept') {
        this.#send(outcomePacket(outcome));
        this.#logger().info(
          { verdict: outcome.type, command: 'E', ...('reply' in outcome && outcome.reply ? { reply: outcome.reply } : {}) },
          `end of message: ${outcome.type}`,
        );
      } else {
        const final = outcome.final;
        const lead = (this.#neg!.protocol & SMFIP.HDR_LEADSPC) !== 0;
        const actions = diffToActions(base, final, { leadingSpace: lead });
        for (const a of actions) this.#send(encodeReply(a));
        if (final.body !== base.body) {
          replacedBody = final.body;
          if (!(await final.body.equals(base.body))) {
            // A spilled body is read back piece by piece; each piece goes out in
            // SMFIR_REPLBODY packets of at most MILTER_CHUNK_SIZE bytes.
            for await (const piece of final.body.chunks()) this.#send(encodeReplaceBody(piece));
          }
        }
        this.#send(PACKET_ACCEPT);
        const log = this.#logger();
        if (log.isLevelEnabled('debug')) {
          // Built only when someone reads it (milterd dev, debug level): not on the hot path.
          const edits = actions.map(describeEdit);
          if (replacedBody !== undefined) edits.push('replace body');
          log.debug({ verdict: 'accept', command: 'E', edits }, `end of message: accept${edits.length ? `, ${edits.length} edit(s)` : ''}`);
        }
      }
    } finally {
      if (timer !== undefined) clearInterval(timer);
      this.messages++;
      await this.#endMessage(false, run);
      if (replacedBody !== undefined) await replacedBody.dispose();
    }
  }
}

function outcomePacket(o: Outcome): Uint8Array {
  switch (o.type) {
    case 'continue':
      return PACKET_CONTINUE;
    case 'accept':
      return PACKET_ACCEPT;
    case 'discard':
      return PACKET_DISCARD;
    case 'reject':
      return o.reply === undefined ? PACKET_REJECT : encodeReply({ kind: 'replycode', text: o.reply });
    case 'tempfail':
      return o.reply === undefined ? PACKET_TEMPFAIL : encodeReply({ kind: 'replycode', text: o.reply });
  }
}

function commandCode(cmd: MilterCommand): number {
  switch (cmd.kind) {
    case 'optneg':
      return SMFIC.OPTNEG;
    case 'macro':
      return SMFIC.MACRO;
    case 'connect':
      return SMFIC.CONNECT;
    case 'helo':
      return SMFIC.HELO;
    case 'mail':
      return SMFIC.MAIL;
    case 'rcpt':
      return SMFIC.RCPT;
    case 'data':
      return SMFIC.DATA;
    case 'header':
      return SMFIC.HEADER;
    case 'eoh':
      return SMFIC.EOH;
    case 'body':
      return SMFIC.BODY;
    case 'eob':
      return SMFIC.BODYEOB;
    case 'abort':
      return SMFIC.ABORT;
    case 'quit':
      return SMFIC.QUIT;
    case 'quitNc':
      return SMFIC.QUIT_NC;
    case 'unknown':
      return SMFIC.UNKNOWN;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
