/**
 * Independent byte builder for codec tests: builds packets by hand from the wire facts
 * (4-byte big-endian length counting the command byte, the command byte, the payload).
 * Deliberately shares no code with src/protocol/encoder.ts, so an encoder bug cannot hide in
 * both the expected and the actual bytes.
 * @module
 */

/** Big-endian uint32. */
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b[0] = (n >>> 24) & 0xff;
  b[1] = (n >>> 16) & 0xff;
  b[2] = (n >>> 8) & 0xff;
  b[3] = n & 0xff;
  return b;
}

/** Big-endian uint16. */
export function u16(n: number): Buffer {
  return Buffer.from([(n >>> 8) & 0xff, n & 0xff]);
}

/** UTF-8 text followed by a NUL. */
export function cstr(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);
}

/** Raw bytes: a string is taken as latin1 (one byte per char), numbers as single bytes. */
export function raw(...parts: Array<string | number | Uint8Array>): Buffer {
  return Buffer.concat(
    parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : typeof p === 'number' ? Buffer.from([p]) : Buffer.from(p))),
  );
}

/** One packet: `code` is the one-character command (e.g. 'O', 'y'); parts are the payload in order. */
export function packet(code: string, ...parts: Uint8Array[]): Buffer {
  if (code.length !== 1) throw new Error(`packet code must be one character, got ${JSON.stringify(code)}`);
  const payload = Buffer.concat(parts);
  return Buffer.concat([u32(payload.length + 1), Buffer.from(code, 'latin1'), payload]);
}
