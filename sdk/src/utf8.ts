/**
 * UTF-8 without TextEncoder/TextDecoder: a plugin isolate has only V8, which lacks both (they
 * are Web APIs). Same results as the WHATWG encoding standard: invalid input becomes U+FFFD,
 * one per maximal invalid subpart when decoding, one per lone surrogate when encoding.
 * @module
 */

const REPLACEMENT = 0xfffd;
/** Code units per String.fromCharCode call: far below V8's argument limit. */
const FLUSH_AT = 8192;

/** Decodes UTF-8 bytes to a string (WHATWG "utf-8 decode without BOM", replacement mode). */
export function decodeUtf8(bytes: Uint8Array): string {
  let out = '';
  const units: number[] = [];
  let needed = 0;
  let seen = 0;
  let cp = 0;
  let lower = 0x80;
  let upper = 0xbf;
  const emit = (c: number): void => {
    if (c > 0xffff) {
      c -= 0x10000;
      units.push(0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
    } else {
      units.push(c);
    }
    if (units.length >= FLUSH_AT) {
      out += String.fromCharCode.apply(null, units);
      units.length = 0;
    }
  };
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (needed === 0) {
      if (b <= 0x7f) emit(b);
      else if (b >= 0xc2 && b <= 0xdf) {
        needed = 1;
        cp = b & 0x1f;
      } else if (b >= 0xe0 && b <= 0xef) {
        if (b === 0xe0) lower = 0xa0; // overlong
        if (b === 0xed) upper = 0x9f; // surrogates
        needed = 2;
        cp = b & 0x0f;
      } else if (b >= 0xf0 && b <= 0xf4) {
        if (b === 0xf0) lower = 0x90; // overlong
        if (b === 0xf4) upper = 0x8f; // above U+10FFFF
        needed = 3;
        cp = b & 0x07;
      } else emit(REPLACEMENT);
      continue;
    }
    if (b < lower || b > upper) {
      // The sequence so far is one invalid subpart; this byte starts afresh.
      needed = seen = cp = 0;
      lower = 0x80;
      upper = 0xbf;
      emit(REPLACEMENT);
      i--;
      continue;
    }
    lower = 0x80;
    upper = 0xbf;
    cp = (cp << 6) | (b & 0x3f);
    if (++seen === needed) {
      emit(cp);
      needed = seen = cp = 0;
    }
  }
  if (needed !== 0) emit(REPLACEMENT);
  return units.length === 0 ? out : out + String.fromCharCode.apply(null, units);
}

/** Encodes a string as UTF-8; a lone surrogate becomes U+FFFD (EF BF BD). */
export function encodeUtf8(s: string): Uint8Array {
  const out = new Uint8Array(s.length * 3); // no code unit needs more than 3 bytes
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      out[n++] = c;
      continue;
    }
    if (c < 0x800) {
      out[n++] = 0xc0 | (c >> 6);
      out[n++] = 0x80 | (c & 0x3f);
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = s.charCodeAt(i + 1); // NaN past the end
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
        i++;
        out[n++] = 0xf0 | (c >> 18);
        out[n++] = 0x80 | ((c >> 12) & 0x3f);
        out[n++] = 0x80 | ((c >> 6) & 0x3f);
        out[n++] = 0x80 | (c & 0x3f);
        continue;
      }
      c = REPLACEMENT;
    }
    out[n++] = 0xe0 | (c >> 12);
    out[n++] = 0x80 | ((c >> 6) & 0x3f);
    out[n++] = 0x80 | (c & 0x3f);
  }
  return out.slice(0, n);
}
