/**
 * Typed milter packets → bytes. Pure: no sockets, no logging.
 *
 * A packet is a 4-byte big-endian length (counting the command byte), the command byte, then
 * the payload. Each encoder computes the exact size first and writes into one buffer.
 * Invalid fields throw ProtocolError MILTERD_PROTO_ENCODE: nothing malformed reaches the wire.
 * @module
 */
import { ProtocolError } from '../errors.ts';
import {
  MILTER_CHUNK_SIZE,
  MILTER_LEN_BYTES,
  MILTER_OPTLEN,
  SMFI_PROT_VERSION,
  SMFI_PROT_VERSION_MIN,
  SMFIA,
  SMFIC,
  SMFIR,
} from './constants.ts';
import type { MilterCommand, MilterReply, SymbolList } from './types.ts';

/** Largest announced length a packet can carry (u32). */
const MAX_PACKET_LEN = 0xffffffff;
/** Header bytes before the payload: length word plus command byte. */
const HEAD = MILTER_LEN_BYTES + 1;

function encodeError(message: string, details?: Record<string, unknown>): never {
  throw new ProtocolError('MILTERD_PROTO_ENCODE', message, details);
}

/** Allocates a packet for `payloadLen` bytes and writes its length word and command byte. */
function start(code: number, payloadLen: number): Buffer {
  if (payloadLen + 1 > MAX_PACKET_LEN) encodeError(`payload of ${payloadLen} bytes does not fit a packet`);
  const buf = Buffer.allocUnsafe(HEAD + payloadLen);
  buf.writeUInt32BE(payloadLen + 1, 0);
  buf[MILTER_LEN_BYTES] = code;
  return buf;
}

/** Byte length of `s` as a C string (UTF-8 plus NUL); refuses an embedded NUL. */
function cstrLen(s: string, field: string): number {
  if (typeof s !== 'string') encodeError(`${field} must be a string`, { field });
  if (s.includes('\0')) encodeError(`${field} contains a NUL byte`, { field });
  return Buffer.byteLength(s, 'utf8') + 1;
}

/** Writes `s` and its NUL at `pos`; returns the position after the NUL. */
function putCStr(buf: Buffer, pos: number, s: string): number {
  pos += buf.write(s, pos, 'utf8');
  buf[pos] = 0;
  return pos + 1;
}

function checkU32(n: number, field: string): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) encodeError(`${field} must be an integer in 0..2^32-1, got ${String(n)}`, { field });
}

function checkHeaderName(name: string, what: string): void {
  // smfi_addheader/insheader/chgheader refuse a NULL or empty header name.
  if (typeof name === 'string' && name.length === 0) encodeError(`${what} header name is empty`);
}

/** Packet with no payload. */
function codeOnly(code: number): Buffer {
  return start(code, 0);
}

/** Packet whose payload is one C string. */
function oneString(code: number, s: string, field: string): Buffer {
  const buf = start(code, cstrLen(s, field));
  putCStr(buf, HEAD, s);
  return buf;
}

/** Packet whose payload is C strings in order. */
function strings(code: number, parts: readonly string[], field: string): Buffer {
  let len = 0;
  for (const s of parts) len += cstrLen(s, field);
  const buf = start(code, len);
  let pos = HEAD;
  for (const s of parts) pos = putCStr(buf, pos, s);
  return buf;
}

function headerPacket(code: number, index: number | undefined, name: string, value: string, what: string): Buffer {
  checkHeaderName(name, what);
  const idxLen = index === undefined ? 0 : 4;
  if (index !== undefined) checkU32(index, `${what} index`);
  const buf = start(code, idxLen + cstrLen(name, `${what} name`) + cstrLen(value, `${what} value`));
  let pos = HEAD;
  if (index !== undefined) {
    buf.writeUInt32BE(index, pos);
    pos += 4;
  }
  pos = putCStr(buf, pos, name);
  putCStr(buf, pos, value);
  return buf;
}

function bytesPacket(code: number, chunk: Uint8Array): Buffer {
  const buf = start(code, chunk.length);
  buf.set(chunk, HEAD);
  return buf;
}

function optnegPacket(code: number, version: number, actions: number, protocol: number, symlists?: readonly SymbolList[]): Buffer {
  checkU32(actions, 'actions');
  checkU32(protocol, 'protocol');
  let len = MILTER_OPTLEN;
  const lists: string[] = [];
  if (symlists !== undefined) {
    for (const l of symlists) {
      if (!Number.isInteger(l.stage) || l.stage < 0 || l.stage > 6) encodeError(`SETSYMLIST stage ${String(l.stage)} is not an SMFIM_* stage`);
      for (const m of l.macros) {
        if (typeof m !== 'string' || m.length === 0 || m.includes(' ')) {
          encodeError(`SETSYMLIST macro name ${JSON.stringify(m)} is empty or contains a space`);
        }
      }
      const names = l.macros.join(' ');
      lists.push(names);
      len += 4 + cstrLen(names, 'SETSYMLIST macro names');
    }
  }
  const buf = start(code, len);
  buf.writeUInt32BE(version, HEAD);
  buf.writeUInt32BE(actions, HEAD + 4);
  buf.writeUInt32BE(protocol, HEAD + 8);
  let pos = HEAD + MILTER_OPTLEN;
  if (symlists !== undefined) {
    for (let i = 0; i < symlists.length; i++) {
      buf.writeUInt32BE((symlists[i] as SymbolList).stage, pos);
      pos = putCStr(buf, pos + 4, lists[i] as string);
    }
  }
  return buf;
}

/**
 * One packet (4-byte BE length incl. command byte, command byte, payload). Throws ProtocolError
 * MILTERD_PROTO_ENCODE for invalid fields (NUL inside a string, negative/non-integer index,
 * replbody chunk > MILTER_CHUNK_SIZE, optneg version outside 2..6...).
 */
export function encodeReply(reply: MilterReply): Buffer {
  switch (reply.kind) {
    case 'optneg':
      if (!Number.isInteger(reply.version) || reply.version < SMFI_PROT_VERSION_MIN || reply.version > SMFI_PROT_VERSION) {
        encodeError(`OPTNEG version must be ${SMFI_PROT_VERSION_MIN}..${SMFI_PROT_VERSION}, got ${String(reply.version)}`);
      }
      return optnegPacket(SMFIR.OPTNEG, reply.version, reply.actions, reply.protocol, reply.symlists);
    case 'accept':
      return codeOnly(SMFIR.ACCEPT);
    case 'continue':
      return codeOnly(SMFIR.CONTINUE);
    case 'discard':
      return codeOnly(SMFIR.DISCARD);
    case 'reject':
      return codeOnly(SMFIR.REJECT);
    case 'tempfail':
      return codeOnly(SMFIR.TEMPFAIL);
    case 'skip':
      return codeOnly(SMFIR.SKIP);
    case 'progress':
      return codeOnly(SMFIR.PROGRESS);
    case 'shutdown':
      return codeOnly(SMFIR.SHUTDOWN);
    case 'connfail':
      return codeOnly(SMFIR.CONN_FAIL);
    case 'replycode':
      return oneString(SMFIR.REPLYCODE, reply.text, 'REPLYCODE text');
    case 'quarantine':
      // smfi_quarantine refuses a NULL or empty reason.
      if (reply.reason === '') encodeError('QUARANTINE reason is empty');
      return oneString(SMFIR.QUARANTINE, reply.reason, 'QUARANTINE reason');
    case 'addrcpt':
      // SMFIR_ADDRCPT_PAR ('2') when ESMTP args are given, else plain SMFIR_ADDRCPT ('+').
      return reply.args === undefined
        ? oneString(SMFIR.ADDRCPT, reply.rcpt, 'ADDRCPT recipient')
        : strings(SMFIR.ADDRCPT_PAR, [reply.rcpt, reply.args], 'ADDRCPT_PAR field');
    case 'delrcpt':
      return oneString(SMFIR.DELRCPT, reply.rcpt, 'DELRCPT recipient');
    case 'chgfrom':
      return reply.args === undefined
        ? oneString(SMFIR.CHGFROM, reply.from, 'CHGFROM sender')
        : strings(SMFIR.CHGFROM, [reply.from, reply.args], 'CHGFROM field');
    case 'addheader':
      return headerPacket(SMFIR.ADDHEADER, undefined, reply.name, reply.value, 'ADDHEADER');
    case 'insheader':
      return headerPacket(SMFIR.INSHEADER, reply.index, reply.name, reply.value, 'INSHEADER');
    case 'chgheader':
      return headerPacket(SMFIR.CHGHEADER, reply.index, reply.name, reply.value, 'CHGHEADER');
    case 'replbody':
      if (reply.chunk.length > MILTER_CHUNK_SIZE) {
        encodeError(`REPLBODY chunk of ${reply.chunk.length} bytes exceeds ${MILTER_CHUNK_SIZE}; use encodeReplaceBody`, { length: reply.chunk.length });
      }
      return bytesPacket(SMFIR.REPLBODY, reply.chunk);
    default: {
      const never: never = reply;
      return encodeError(`unknown reply kind ${JSON.stringify((never as { kind?: unknown }).kind)}`);
    }
  }
}

/** Several replies in one buffer (one socket write). */
export function encodeReplies(replies: readonly MilterReply[]): Buffer {
  if (replies.length === 1) return encodeReply(replies[0] as MilterReply);
  const parts: Buffer[] = [];
  let total = 0;
  for (const r of replies) {
    const b = encodeReply(r);
    parts.push(b);
    total += b.length;
  }
  return Buffer.concat(parts, total);
}

/**
 * SMFIR_REPLBODY packets for a whole body, chunked at MILTER_CHUNK_SIZE (65535) bytes, as
 * smfi_replacebody does; an empty body gives one empty chunk (the body becomes empty).
 */
export function encodeReplaceBody(body: Uint8Array): Buffer {
  const chunks = Math.max(1, Math.ceil(body.length / MILTER_CHUNK_SIZE));
  const out = Buffer.allocUnsafe(chunks * HEAD + body.length);
  let pos = 0;
  for (let i = 0; i < chunks; i++) {
    const from = i * MILTER_CHUNK_SIZE;
    const to = Math.min(from + MILTER_CHUNK_SIZE, body.length);
    out.writeUInt32BE(to - from + 1, pos);
    out[pos + MILTER_LEN_BYTES] = SMFIR.REPLBODY;
    out.set(body.subarray(from, to), pos + HEAD);
    pos += HEAD + (to - from);
  }
  return out;
}

const FAMILY_BYTE = { unknown: SMFIA.UNKNOWN, unix: SMFIA.UNIX, inet: SMFIA.INET, inet6: SMFIA.INET6 } as const;

/** MTA→filter packets (for the MTA simulator, the benchmark and tests). Throws MILTERD_PROTO_ENCODE. */
export function encodeCommand(cmd: MilterCommand): Buffer {
  switch (cmd.kind) {
    case 'optneg':
      checkU32(cmd.version, 'version');
      return optnegPacket(SMFIC.OPTNEG, cmd.version, cmd.actions, cmd.protocol);
    case 'macro': {
      if (!Number.isInteger(cmd.stage) || cmd.stage < 0 || cmd.stage > 255) encodeError(`MACRO stage must be a byte, got ${String(cmd.stage)}`);
      let len = 1;
      for (const [name, value] of cmd.macros) len += cstrLen(name, 'MACRO name') + cstrLen(value, 'MACRO value');
      const buf = start(SMFIC.MACRO, len);
      buf[HEAD] = cmd.stage;
      let pos = HEAD + 1;
      for (const [name, value] of cmd.macros) {
        pos = putCStr(buf, pos, name);
        pos = putCStr(buf, pos, value);
      }
      return buf;
    }
    case 'connect': {
      const fam = FAMILY_BYTE[cmd.family];
      if (fam === undefined) encodeError(`CONNECT family ${JSON.stringify(cmd.family)} is unknown`);
      const hostLen = cstrLen(cmd.hostname, 'CONNECT hostname');
      if (cmd.family === 'unknown') {
        // SMFIA_UNKNOWN: neither port nor address follow.
        const buf = start(SMFIC.CONNECT, hostLen + 1);
        buf[putCStr(buf, HEAD, cmd.hostname)] = fam;
        return buf;
      }
      if (!Number.isInteger(cmd.port) || cmd.port < 0 || cmd.port > 0xffff) encodeError(`CONNECT port must be 0..65535, got ${String(cmd.port)}`);
      const buf = start(SMFIC.CONNECT, hostLen + 1 + 2 + cstrLen(cmd.address, 'CONNECT address'));
      let pos = putCStr(buf, HEAD, cmd.hostname);
      buf[pos++] = fam;
      buf.writeUInt16BE(cmd.port, pos);
      putCStr(buf, pos + 2, cmd.address);
      return buf;
    }
    case 'helo':
      return oneString(SMFIC.HELO, cmd.name, 'HELO name');
    case 'mail':
    case 'rcpt':
      if (cmd.args.length === 0) encodeError(`${cmd.kind.toUpperCase()} needs at least the address`);
      return strings(cmd.kind === 'mail' ? SMFIC.MAIL : SMFIC.RCPT, cmd.args, `${cmd.kind.toUpperCase()} argument`);
    case 'data':
      return codeOnly(SMFIC.DATA);
    case 'header':
      checkHeaderName(cmd.name, 'HEADER');
      return strings(SMFIC.HEADER, [cmd.name, cmd.value], 'HEADER field');
    case 'eoh':
      return codeOnly(SMFIC.EOH);
    case 'body':
      return bytesPacket(SMFIC.BODY, cmd.chunk);
    case 'eob':
      return bytesPacket(SMFIC.BODYEOB, cmd.chunk);
    case 'abort':
      return codeOnly(SMFIC.ABORT);
    case 'quit':
      return codeOnly(SMFIC.QUIT);
    case 'quitNc':
      return codeOnly(SMFIC.QUIT_NC);
    case 'unknown':
      return oneString(SMFIC.UNKNOWN, cmd.command, 'UNKNOWN command');
    default: {
      const never: never = cmd;
      return encodeError(`unknown command kind ${JSON.stringify((never as { kind?: unknown }).kind)}`);
    }
  }
}

function prebuilt(code: number): Buffer {
  // Allocated outside the shared pool so a stray write by a caller cannot corrupt other buffers.
  const buf = Buffer.alloc(HEAD);
  buf.writeUInt32BE(1, 0);
  buf[MILTER_LEN_BYTES] = code;
  return buf;
}

/** Pre-built SMFIR_CONTINUE packet (hot path: no allocation per reply). Do not mutate. */
export const PACKET_CONTINUE: Buffer = prebuilt(SMFIR.CONTINUE);
/** Pre-built SMFIR_ACCEPT packet. Do not mutate. */
export const PACKET_ACCEPT: Buffer = prebuilt(SMFIR.ACCEPT);
/** Pre-built SMFIR_REJECT packet. Do not mutate. */
export const PACKET_REJECT: Buffer = prebuilt(SMFIR.REJECT);
/** Pre-built SMFIR_TEMPFAIL packet. Do not mutate. */
export const PACKET_TEMPFAIL: Buffer = prebuilt(SMFIR.TEMPFAIL);
/** Pre-built SMFIR_DISCARD packet. Do not mutate. */
export const PACKET_DISCARD: Buffer = prebuilt(SMFIR.DISCARD);
/** Pre-built SMFIR_PROGRESS packet. Do not mutate. */
export const PACKET_PROGRESS: Buffer = prebuilt(SMFIR.PROGRESS);
/** Pre-built SMFIR_SKIP packet. Do not mutate. */
export const PACKET_SKIP: Buffer = prebuilt(SMFIR.SKIP);
