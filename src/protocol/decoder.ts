/**
 * Bytes → typed milter packets. Pure: no sockets, no logging.
 *
 * `FrameReader` cuts a byte stream into frames (4-byte big-endian length including the command
 * byte, the command byte, the payload); `decodeCommand` (MTA → filter) and `decodeReply`
 * (filter → MTA) turn one frame into a typed object. Every field read is bounds-checked and the
 * only exception that can escape is `ProtocolError`.
 * @module
 */
import { ProtocolError } from '../errors.ts';
import type { ErrorCode } from '../errors.ts';
import { MILTER_LEN_BYTES, MILTER_OPTLEN, SMFIA, SMFIC, SMFIR } from './constants.ts';
import type { SmfimStage } from './constants.ts';
import type { AddressFamily, MilterCommand, MilterReply, SymbolList } from './types.ts';

/**
 * Default cap on a frame's announced length (command byte included): 1 MiB. Well above the
 * 64 KiB body chunks MTAs send (and the 256K/1M of SMFIP_MDS_*), far below memory danger.
 */
export const DEFAULT_MAX_FRAME_SIZE = 1_048_576;

/** One framed packet: its command/reply code byte and the bytes after it. */
export interface Frame {
  readonly code: number;
  readonly payload: Uint8Array;
}

/** Shared empty payload (a Buffer, like every other payload cut from Buffer chunks). */
const EMPTY: Buffer = Buffer.alloc(0);

/**
 * Incremental framer: push bytes as they arrive, pull complete frames.
 *
 * Pushed chunks are kept by reference (not copied) in a list; a frame that lies inside one chunk
 * is returned as a `subarray` view of it, and only a frame spanning chunks is copied. Callers
 * must therefore not reuse a pushed buffer (Node socket chunks are fresh). The announced length
 * is checked against `maxFrameSize` before anything is allocated for the frame.
 */
export class FrameReader {
  readonly #maxFrameSize: number;
  /** Pending chunks; those before `#head` are fully consumed. */
  #chunks: Uint8Array[] = [];
  #head = 0;
  /** Read offset inside `#chunks[#head]`. */
  #offset = 0;
  #buffered = 0;
  /** Set after FRAME_TOO_LARGE / FRAME_EMPTY: the stream cannot be resynchronised. */
  #failure: ProtocolError | undefined;

  constructor(options?: { maxFrameSize?: number }) {
    const max = options?.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(`maxFrameSize must be a positive integer, got ${String(max)}`);
    }
    this.#maxFrameSize = max;
  }

  /** Bytes buffered but not yet returned as frames (for backpressure). */
  get buffered(): number {
    return this.#buffered;
  }

  /** Append bytes received from the peer. Ignored once the stream has failed. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0 || this.#failure !== undefined) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /**
   * Next complete frame, or null if more bytes are needed. Throws ProtocolError
   * MILTERD_PROTO_FRAME_TOO_LARGE / MILTERD_PROTO_FRAME_EMPTY; after such a throw the stream is
   * unusable and every later call throws the same error.
   */
  next(): Frame | null {
    if (this.#failure !== undefined) throw this.#failure;
    if (this.#buffered < MILTER_LEN_BYTES) return null;

    const first = this.#chunks[this.#head] as Uint8Array;
    const off = this.#offset;
    let len: number;
    if (first.length - off >= MILTER_LEN_BYTES) {
      len = ((first[off] as number) * 0x1000000 + (((first[off + 1] as number) << 16) | ((first[off + 2] as number) << 8) | (first[off + 3] as number)));
    } else {
      len = 0;
      for (let i = 0; i < MILTER_LEN_BYTES; i++) len = len * 256 + this.#peekByte(i);
    }

    if (len === 0) {
      this.#fail('MILTERD_PROTO_FRAME_EMPTY', 'packet announces length 0 (no command byte)', { length: 0 });
    }
    if (len > this.#maxFrameSize) {
      // A stray HTTP request ("POST" = 0x504f5354) or text lands here: refuse before allocating.
      this.#fail('MILTERD_PROTO_FRAME_TOO_LARGE', `packet announces ${len} bytes, above the cap of ${this.#maxFrameSize}`, {
        length: len,
        maxFrameSize: this.#maxFrameSize,
      });
    }
    if (this.#buffered < MILTER_LEN_BYTES + len) return null;

    // Fast path: the whole frame lies in the first chunk, so hand out a view.
    if (first.length - off >= MILTER_LEN_BYTES + len) {
      const code = first[off + MILTER_LEN_BYTES] as number;
      const end = off + MILTER_LEN_BYTES + len;
      const payload = len === 1 ? EMPTY : first.subarray(off + MILTER_LEN_BYTES + 1, end);
      this.#buffered -= MILTER_LEN_BYTES + len;
      if (end === first.length) this.#dropHead();
      else this.#offset = end;
      return { code, payload };
    }

    // Slow path: the frame spans chunks; copy it out.
    this.#skip(MILTER_LEN_BYTES);
    const code = this.#peekByte(0);
    this.#skip(1);
    const payload = len === 1 ? EMPTY : Buffer.allocUnsafe(len - 1);
    this.#copyOut(payload);
    return { code, payload };
  }

  #fail(code: ErrorCode, message: string, details: Record<string, unknown>): never {
    const err = new ProtocolError(code, message, details);
    this.#failure = err;
    this.#chunks = [];
    this.#head = 0;
    this.#offset = 0;
    this.#buffered = 0;
    throw err;
  }

  /** Byte `i` positions after the read offset; caller guarantees `i < #buffered`. */
  #peekByte(i: number): number {
    let idx = this.#head;
    let pos = this.#offset + i;
    for (;;) {
      const c = this.#chunks[idx] as Uint8Array;
      if (pos < c.length) return c[pos] as number;
      pos -= c.length;
      idx++;
    }
  }

  #dropHead(): void {
    this.#head++;
    this.#offset = 0;
    if (this.#head === this.#chunks.length) {
      this.#chunks.length = 0;
      this.#head = 0;
    } else if (this.#head >= 64) {
      // Compact now and then so consumed chunks are released without an O(n) shift per frame.
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
  }

  #skip(n: number): void {
    this.#buffered -= n;
    while (n > 0) {
      const c = this.#chunks[this.#head] as Uint8Array;
      const avail = c.length - this.#offset;
      if (n < avail) {
        this.#offset += n;
        return;
      }
      n -= avail;
      this.#dropHead();
    }
  }

  #copyOut(dest: Uint8Array): void {
    let written = 0;
    const n = dest.length;
    this.#buffered -= n;
    while (written < n) {
      const c = this.#chunks[this.#head] as Uint8Array;
      const take = Math.min(c.length - this.#offset, n - written);
      dest.set(c.subarray(this.#offset, this.#offset + take), written);
      written += take;
      if (this.#offset + take === c.length) this.#dropHead();
      else this.#offset += take;
    }
  }
}

// --- field readers ------------------------------------------------------------------------
// A small cursor over one payload. Every read checks bounds and throws ProtocolError.

/** Payload as a Buffer view (no copy) so strings decode with the native UTF-8 decoder. */
function asBuffer(payload: Uint8Array): Buffer {
  return Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
}

function truncated(what: string, details?: Record<string, unknown>): never {
  throw new ProtocolError('MILTERD_PROTO_TRUNCATED', `${what} runs past the end of the packet`, details);
}

function badField(message: string, details?: Record<string, unknown>): never {
  throw new ProtocolError('MILTERD_PROTO_BAD_FIELD', message, details);
}

/** Reads a NUL-terminated UTF-8 string at `pos`; returns the string and sets `cursor.pos` after the NUL. */
function readCString(buf: Buffer, cursor: { pos: number }, what: string): string {
  const start = cursor.pos;
  const nul = start < buf.length ? buf.indexOf(0, start) : -1;
  if (nul < 0) truncated(what, { offset: start });
  cursor.pos = nul + 1;
  return buf.toString('utf8', start, nul);
}

function readU32(buf: Uint8Array, pos: number, what: string): number {
  if (pos + 4 > buf.length) truncated(what, { offset: pos });
  return (buf[pos] as number) * 0x1000000 + (((buf[pos + 1] as number) << 16) | ((buf[pos + 2] as number) << 8) | (buf[pos + 3] as number));
}

/** All NUL-terminated strings of `buf` from `start`; throws if bytes follow the last NUL. */
function readCStrings(buf: Buffer, start: number, what: string): string[] {
  const out: string[] = [];
  let pos = start;
  while (pos < buf.length) {
    const nul = buf.indexOf(0, pos);
    if (nul < 0) truncated(what, { offset: pos });
    out.push(buf.toString('utf8', pos, nul));
    pos = nul + 1;
  }
  return out;
}

function hex(code: number): string {
  return `0x${code.toString(16).padStart(2, '0')}`;
}

function familyOf(byte: number): AddressFamily | undefined {
  switch (byte) {
    case SMFIA.UNKNOWN:
      return 'unknown';
    case SMFIA.UNIX:
      return 'unix';
    case SMFIA.INET:
      return 'inet';
    case SMFIA.INET6:
      return 'inet6';
    default:
      return undefined;
  }
}

// Shared immutable results for the payload-less commands (no allocation per packet).
const CMD_DATA: MilterCommand = Object.freeze({ kind: 'data' });
const CMD_EOH: MilterCommand = Object.freeze({ kind: 'eoh' });
const CMD_ABORT: MilterCommand = Object.freeze({ kind: 'abort' });
const CMD_QUIT: MilterCommand = Object.freeze({ kind: 'quit' });
const CMD_QUIT_NC: MilterCommand = Object.freeze({ kind: 'quitNc' });

/**
 * Decodes one MTA → filter frame. Throws ProtocolError: MILTERD_PROTO_UNKNOWN_COMMAND,
 * MILTERD_PROTO_TRUNCATED, MILTERD_PROTO_BAD_FIELD. Body chunks are views of the frame payload.
 */
export function decodeCommand(frame: Frame): MilterCommand {
  const p = frame.payload;
  switch (frame.code) {
    case SMFIC.OPTNEG: {
      // libmilter reads the first MILTER_OPTLEN bytes and ignores anything after them.
      if (p.length < MILTER_OPTLEN) truncated('OPTNEG', { length: p.length });
      return { kind: 'optneg', version: readU32(p, 0, 'version'), actions: readU32(p, 4, 'actions'), protocol: readU32(p, 8, 'protocol') };
    }
    case SMFIC.MACRO: {
      if (p.length < 1) truncated('MACRO stage', { length: 0 });
      // Stage is the code of the command the macros precede; an unknown one is still decoded
      // (the session decides: MILTERD_SESSION_MACRO_STAGE).
      const stage = p[0] as number;
      const strings = readCStrings(asBuffer(p), 1, 'MACRO');
      if (strings.length % 2 !== 0) truncated('MACRO value', { name: strings[strings.length - 1] });
      const macros: Array<readonly [string, string]> = [];
      for (let i = 0; i < strings.length; i += 2) macros.push([strings[i] as string, strings[i + 1] as string]);
      return { kind: 'macro', stage, macros };
    }
    case SMFIC.CONNECT: {
      const buf = asBuffer(p);
      const cur = { pos: 0 };
      const hostname = readCString(buf, cur, 'CONNECT hostname');
      if (cur.pos >= buf.length) truncated('CONNECT family');
      const famByte = buf[cur.pos++] as number;
      const family = familyOf(famByte);
      if (family === undefined) badField(`CONNECT has unknown address family ${hex(famByte)}`, { family: famByte });
      // SMFIA_UNKNOWN: nothing follows (libmilter ignores any trailing bytes).
      if (family === 'unknown') return { kind: 'connect', hostname, family, port: 0, address: '' };
      if (cur.pos + 2 > buf.length) truncated('CONNECT port');
      const port = ((buf[cur.pos] as number) << 8) | (buf[cur.pos + 1] as number);
      cur.pos += 2;
      const address = readCString(buf, cur, 'CONNECT address');
      return { kind: 'connect', hostname, family, port, address };
    }
    case SMFIC.HELO:
      return { kind: 'helo', name: readCString(asBuffer(p), { pos: 0 }, 'HELO name') };
    case SMFIC.MAIL:
    case SMFIC.RCPT: {
      const kind = frame.code === SMFIC.MAIL ? 'mail' : 'rcpt';
      const args = readCStrings(asBuffer(p), 0, kind === 'mail' ? 'MAIL argument' : 'RCPT argument');
      if (args.length === 0) truncated(kind === 'mail' ? 'MAIL address' : 'RCPT address', { length: 0 });
      return { kind, args };
    }
    case SMFIC.HEADER: {
      const buf = asBuffer(p);
      const cur = { pos: 0 };
      const name = readCString(buf, cur, 'HEADER name');
      // `name\0\0` is a header with an empty value; trailing bytes after the value are ignored.
      const value = readCString(buf, cur, 'HEADER value');
      if (name.length === 0) badField('HEADER has an empty name');
      return { kind: 'header', name, value };
    }
    case SMFIC.BODY:
      return { kind: 'body', chunk: p };
    case SMFIC.BODYEOB:
      return { kind: 'eob', chunk: p };
    case SMFIC.UNKNOWN:
      return { kind: 'unknown', command: readCString(asBuffer(p), { pos: 0 }, 'UNKNOWN command') };
    // Payload-less commands: libmilter ignores any bytes that come with them.
    case SMFIC.DATA:
      return CMD_DATA;
    case SMFIC.EOH:
      return CMD_EOH;
    case SMFIC.ABORT:
      return CMD_ABORT;
    case SMFIC.QUIT:
      return CMD_QUIT;
    case SMFIC.QUIT_NC:
      return CMD_QUIT_NC;
    default:
      throw new ProtocolError('MILTERD_PROTO_UNKNOWN_COMMAND', `unknown command code ${hex(frame.code)}`, { code: frame.code });
  }
}

const REPLY_ACCEPT: MilterReply = Object.freeze({ kind: 'accept' });
const REPLY_CONTINUE: MilterReply = Object.freeze({ kind: 'continue' });
const REPLY_DISCARD: MilterReply = Object.freeze({ kind: 'discard' });
const REPLY_REJECT: MilterReply = Object.freeze({ kind: 'reject' });
const REPLY_TEMPFAIL: MilterReply = Object.freeze({ kind: 'tempfail' });
const REPLY_SKIP: MilterReply = Object.freeze({ kind: 'skip' });
const REPLY_PROGRESS: MilterReply = Object.freeze({ kind: 'progress' });
const REPLY_SHUTDOWN: MilterReply = Object.freeze({ kind: 'shutdown' });
const REPLY_CONNFAIL: MilterReply = Object.freeze({ kind: 'connfail' });

/** Highest SMFIM_* stage (SMFIM_EOH). */
const MAX_SMFIM = 6;

function decodeOptnegReply(p: Uint8Array): MilterReply {
  if (p.length < MILTER_OPTLEN) truncated('OPTNEG reply', { length: p.length });
  const version = readU32(p, 0, 'version');
  const actions = readU32(p, 4, 'actions');
  const protocol = readU32(p, 8, 'protocol');
  if (p.length === MILTER_OPTLEN) return { kind: 'optneg', version, actions, protocol };
  // SETSYMLIST lists: repeated {u32 stage, "space separated names\0"}.
  const buf = asBuffer(p);
  const cur = { pos: MILTER_OPTLEN };
  const symlists: SymbolList[] = [];
  while (cur.pos < buf.length) {
    const stage = readU32(buf, cur.pos, 'SETSYMLIST stage');
    if (stage > MAX_SMFIM) badField(`SETSYMLIST stage ${stage} is not an SMFIM_* stage`, { stage });
    cur.pos += 4;
    const names = readCString(buf, cur, 'SETSYMLIST macro names');
    const macros = names.split(' ').filter((n) => n.length > 0);
    symlists.push({ stage: stage as SmfimStage, macros });
  }
  return { kind: 'optneg', version, actions, protocol, symlists };
}

function decodeHeaderReply(p: Uint8Array, start: number, what: string): { name: string; value: string } {
  const buf = asBuffer(p);
  const cur = { pos: start };
  const name = readCString(buf, cur, `${what} name`);
  const value = readCString(buf, cur, `${what} value`);
  if (name.length === 0) badField(`${what} has an empty header name`);
  return { name, value };
}

/**
 * Decodes one filter → MTA frame (used by the MTA simulator and tests). Throws ProtocolError
 * MILTERD_PROTO_UNKNOWN_REPLY, MILTERD_PROTO_TRUNCATED, MILTERD_PROTO_BAD_FIELD.
 */
export function decodeReply(frame: Frame): MilterReply {
  const p = frame.payload;
  switch (frame.code) {
    case SMFIR.OPTNEG:
      return decodeOptnegReply(p);
    // Code-only replies: trailing bytes are ignored, as MTAs do.
    case SMFIR.ACCEPT:
      return REPLY_ACCEPT;
    case SMFIR.CONTINUE:
      return REPLY_CONTINUE;
    case SMFIR.DISCARD:
      return REPLY_DISCARD;
    case SMFIR.REJECT:
      return REPLY_REJECT;
    case SMFIR.TEMPFAIL:
      return REPLY_TEMPFAIL;
    case SMFIR.SKIP:
      return REPLY_SKIP;
    case SMFIR.PROGRESS:
      return REPLY_PROGRESS;
    case SMFIR.SHUTDOWN:
      return REPLY_SHUTDOWN;
    case SMFIR.CONN_FAIL:
      return REPLY_CONNFAIL;
    case SMFIR.REPLYCODE:
      return { kind: 'replycode', text: readCString(asBuffer(p), { pos: 0 }, 'REPLYCODE text') };
    case SMFIR.QUARANTINE:
      return { kind: 'quarantine', reason: readCString(asBuffer(p), { pos: 0 }, 'QUARANTINE reason') };
    case SMFIR.ADDRCPT:
      return { kind: 'addrcpt', rcpt: readCString(asBuffer(p), { pos: 0 }, 'ADDRCPT recipient') };
    case SMFIR.ADDRCPT_PAR: {
      // smfi_addrcpt_par sends `rcpt\0` alone when args is NULL: decode that as empty args.
      const buf = asBuffer(p);
      const cur = { pos: 0 };
      const rcpt = readCString(buf, cur, 'ADDRCPT_PAR recipient');
      const args = cur.pos < buf.length ? readCString(buf, cur, 'ADDRCPT_PAR args') : '';
      return { kind: 'addrcpt', rcpt, args };
    }
    case SMFIR.DELRCPT:
      return { kind: 'delrcpt', rcpt: readCString(asBuffer(p), { pos: 0 }, 'DELRCPT recipient') };
    case SMFIR.CHGFROM: {
      const buf = asBuffer(p);
      const cur = { pos: 0 };
      const from = readCString(buf, cur, 'CHGFROM sender');
      if (cur.pos >= buf.length) return { kind: 'chgfrom', from };
      return { kind: 'chgfrom', from, args: readCString(buf, cur, 'CHGFROM args') };
    }
    case SMFIR.ADDHEADER: {
      const { name, value } = decodeHeaderReply(p, 0, 'ADDHEADER');
      return { kind: 'addheader', name, value };
    }
    case SMFIR.INSHEADER:
    case SMFIR.CHGHEADER: {
      const what = frame.code === SMFIR.INSHEADER ? 'INSHEADER' : 'CHGHEADER';
      const index = readU32(p, 0, `${what} index`);
      const { name, value } = decodeHeaderReply(p, 4, what);
      return frame.code === SMFIR.INSHEADER
        ? { kind: 'insheader', index, name, value }
        : { kind: 'chgheader', index, name, value };
    }
    case SMFIR.REPLBODY:
      return { kind: 'replbody', chunk: p };
    default:
      // Includes SMFIR_SETSYMLIST ('l'): no libmilter call sends it as a packet of its own.
      throw new ProtocolError('MILTERD_PROTO_UNKNOWN_REPLY', `unknown reply code ${hex(frame.code)}`, { code: frame.code });
  }
}
