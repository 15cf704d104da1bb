/**
 * Framing of the lane pipes between the daemon and a sandbox process: each message is a 4-byte
 * big-endian length and the V8 serialization of the message (what Node's IPC does with
 * `serialization: 'advanced'`, so a Uint8Array body crosses as bytes, not base64). No I/O here.
 * @module
 */
import { deserialize, serialize } from 'node:v8';

/** Largest frame accepted (a call carries a whole message; the daemon caps those far lower). */
export const MAX_FRAME_BYTES = 1 << 30;

/** One or more messages as one buffer, ready for one write. */
export function encodeFrames(messages: readonly unknown[]): Buffer {
  const parts: Buffer[] = [];
  for (const m of messages) {
    const body = serialize(m);
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32BE(body.length, 0);
    parts.push(head, body);
  }
  return parts.length === 2 ? Buffer.concat(parts, parts[0]!.length + parts[1]!.length) : Buffer.concat(parts);
}

/** Splits a byte stream back into messages. */
export class FrameSplitter {
  #buf: Buffer = Buffer.alloc(0);

  /** Feeds a chunk; returns the messages it completed, in order. Throws on a frame over the cap. */
  push(chunk: Buffer): unknown[] {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const out: unknown[] = [];
    let at = 0;
    while (this.#buf.length - at >= 4) {
      const len = this.#buf.readUInt32BE(at);
      if (len > MAX_FRAME_BYTES) throw new Error(`lane frame of ${len} bytes (at most ${MAX_FRAME_BYTES})`);
      if (this.#buf.length - at - 4 < len) break;
      out.push(deserialize(this.#buf.subarray(at + 4, at + 4 + len)));
      at += 4 + len;
    }
    this.#buf = at === this.#buf.length ? Buffer.alloc(0) : this.#buf.subarray(at);
    return out;
  }
}
