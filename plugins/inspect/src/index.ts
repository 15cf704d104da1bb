/**
 * inspect: reads every header and body byte, libmilter style (one header callback per header,
 * body chunks, then end of message), and adds
 * `X-Inspect: headers=<n> bytes=<header bytes> body=<body bytes> sum=<byte sum mod 2^32>`.
 * The same work as bench/filters/inspect.ts (in process) and bench/c/inspect.c (libmilter), so
 * the benchmark compares like with like.
 */
import { definePlugin } from '@milterd/sdk';

interface Counts {
  headers: number;
  headerBytes: number;
  bodyBytes: number;
  sum: number;
}

function addBytes(c: Counts, s: string): number {
  // Header names and values are UTF-16 strings here; count their UTF-8 bytes and sum them.
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    if (u < 0x80) {
      c.sum = (c.sum + u) >>> 0;
      n += 1;
    } else {
      const b = new TextEncoderLite().encodeChar(s.codePointAt(i)!);
      if (s.codePointAt(i)! > 0xffff) i++;
      for (const x of b) c.sum = (c.sum + x) >>> 0;
      n += b.length;
    }
  }
  return n;
}

/** Minimal UTF-8 encoder for one code point (isolates have no TextEncoder). */
class TextEncoderLite {
  encodeChar(cp: number): number[] {
    if (cp < 0x800) return [0xc0 | (cp >> 6), 0x80 | (cp & 63)];
    if (cp < 0x10000) return [0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63)];
    return [0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63)];
  }
}

export default definePlugin<object, Counts>({
  state: { msg: () => ({ headers: 0, headerBytes: 0, bodyBytes: 0, sum: 0 }) },
  header(ctx, h) {
    const c = ctx.msg;
    c.headers++;
    c.headerBytes += addBytes(c, h.name) + addBytes(c, h.value);
  },
  body(ctx, chunk) {
    const c = ctx.msg;
    let sum = c.sum;
    for (let i = 0; i < chunk.length; i++) sum = (sum + chunk[i]!) >>> 0;
    c.sum = sum;
    c.bodyBytes += chunk.length;
  },
  eom(ctx, message) {
    const c = ctx.msg;
    message.addHeader('X-Inspect', `headers=${c.headers} bytes=${c.headerBytes} body=${c.bodyBytes} sum=${c.sum}`);
  },
});
