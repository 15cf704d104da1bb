/**
 * The benchmark's "inspect" filter, in process: at end of message it reads every header name
 * and value byte and every body byte, counting and summing them so the work cannot be optimised
 * away, and adds `X-Inspect: headers=<n> bytes=<n> body=<n> sum=<n>` — the same work and the
 * same header as the libmilter version in bench/c/inspect.c.
 *
 * `bytes` counts header name and value bytes (UTF-8; the value without the space after the
 * colon, as libmilter delivers it), `body` counts body bytes, `sum` is the sum of all those bytes
 * modulo 2^32.
 * @module
 */
import type { EomMessage, Filter, FilterContext } from '../../src/chain/filter.ts';

/** Adds `s`'s UTF-8 bytes to the running count and sum. */
function readString(s: string, acc: { bytes: number; sum: number }): void {
  let bytes = acc.bytes;
  let sum = acc.sum;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) {
      bytes++;
      sum = (sum + c) >>> 0;
    } else {
      // Rare in headers: take the exact UTF-8 bytes of the rest of the string.
      for (const b of Buffer.from(s.slice(i), 'utf8')) {
        bytes++;
        sum = (sum + b) >>> 0;
      }
      break;
    }
  }
  acc.bytes = bytes;
  acc.sum = sum;
}

/** The in-process inspect filter. */
export const inspectFilter: Filter = {
  name: 'inspect',
  actions: ['addHeader'],
  async eom(_ctx: FilterContext, message: EomMessage) {
    const acc = { bytes: 0, sum: 0 };
    for (const h of message.headers) {
      readString(h.name, acc);
      readString(h.value, acc);
    }
    let body = 0;
    let sum = acc.sum;
    for await (const chunk of message.bodyChunks()) {
      for (let i = 0; i < chunk.length; i++) sum = (sum + (chunk[i] as number)) >>> 0;
      body += chunk.length;
    }
    message.addHeader('X-Inspect', `headers=${message.headers.length} bytes=${acc.bytes} body=${body} sum=${sum}`);
  },
};
