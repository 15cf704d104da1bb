/** The SDK's own UTF-8 codec (isolates have no TextEncoder/TextDecoder) matches the WHATWG one. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeUtf8, encodeUtf8 } from '../../../sdk/src/utf8.ts';

const decoder = new TextDecoder('utf-8'); // replacement mode, BOM kept off below
const encoder = new TextEncoder();

test('decoding arbitrary bytes matches TextDecoder (replacement per maximal subpart)', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      // TextDecoder strips a leading BOM by default; decodeUtf8 keeps it, as raw mail bodies should.
      const expected = new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes);
      assert.equal(decodeUtf8(bytes), expected);
    }),
    { numRuns: 5000 },
  );
  // Bytes biased towards multi-byte lead and continuation bytes, where the edge cases are.
  const tricky = fc.constantFrom(0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff);
  fc.assert(
    fc.property(fc.array(tricky, { maxLength: 12 }), (list) => {
      const bytes = Uint8Array.from(list);
      assert.equal(decodeUtf8(bytes), new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes));
    }),
    { numRuns: 10000 },
  );
});

test('encoding arbitrary strings (lone surrogates included) matches TextEncoder', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'binary', maxLength: 64 }), fc.string({ unit: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)), maxLength: 4 }), (a, b) => {
      const s = a + b + a;
      assert.deepEqual(encodeUtf8(s), encoder.encode(s));
    }),
    { numRuns: 1000 },
  );
});

test('long inputs cross the internal flush boundary intact', () => {
  const s = 'é€😀a'.repeat(10000);
  const bytes = encodeUtf8(s);
  assert.deepEqual(bytes, encoder.encode(s));
  assert.equal(decodeUtf8(bytes), s);
  assert.equal(decoder.decode(bytes), s);
});
