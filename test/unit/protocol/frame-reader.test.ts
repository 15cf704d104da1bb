/**
 * FrameReader: length cap before allocation, empty frames, partial input, buffered count,
 * zero-copy views for frames inside one chunk, copies for frames spanning chunks.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../../src/errors.ts';
import type { ErrorCode } from '../../../src/errors.ts';
import { DEFAULT_MAX_FRAME_SIZE, FrameReader } from '../../../src/protocol/index.ts';
import { cstr, packet, raw, u32 } from '../../support/wire.ts';

function throwsCode(fn: () => unknown, code: ErrorCode): ProtocolError {
  let caught: unknown;
  assert.throws(fn, (err: unknown) => {
    caught = err;
    return err instanceof ProtocolError && err.code === code;
  });
  return caught as ProtocolError;
}

/** Runs `fn` while counting Buffer allocations of more than `threshold` bytes. */
function countBigAllocations(threshold: number, fn: () => void): number {
  const orig = { alloc: Buffer.alloc, allocUnsafe: Buffer.allocUnsafe, allocUnsafeSlow: Buffer.allocUnsafeSlow };
  let count = 0;
  const spy =
    <F extends (size: number, ...rest: never[]) => Buffer>(f: F) =>
    (size: number, ...rest: never[]): Buffer => {
      if (size > threshold) count++;
      return f.call(Buffer, size, ...rest);
    };
  Buffer.alloc = spy(orig.alloc) as typeof Buffer.alloc;
  Buffer.allocUnsafe = spy(orig.allocUnsafe) as typeof Buffer.allocUnsafe;
  Buffer.allocUnsafeSlow = spy(orig.allocUnsafeSlow) as typeof Buffer.allocUnsafeSlow;
  try {
    fn();
  } finally {
    Buffer.alloc = orig.alloc;
    Buffer.allocUnsafe = orig.allocUnsafe;
    Buffer.allocUnsafeSlow = orig.allocUnsafeSlow;
  }
  return count;
}

describe('FrameReader', () => {
  it('default cap is 1 MiB', () => {
    assert.equal(DEFAULT_MAX_FRAME_SIZE, 1_048_576);
  });

  it('returns null until a whole frame is there, then the frame', () => {
    const r = new FrameReader();
    const bytes = packet('H', cstr('example.org'));
    assert.equal(r.next(), null);
    r.push(bytes.subarray(0, 3));
    assert.equal(r.next(), null);
    assert.equal(r.buffered, 3);
    r.push(bytes.subarray(3, 10));
    assert.equal(r.next(), null);
    assert.equal(r.buffered, 10);
    r.push(bytes.subarray(10));
    const f = r.next();
    assert.ok(f);
    assert.equal(f.code, 0x48);
    assert.deepEqual(Buffer.from(f.payload), cstr('example.org'));
    assert.equal(r.buffered, 0);
    assert.equal(r.next(), null);
  });

  it('several frames in one chunk, partial tail kept and counted in buffered', () => {
    const r = new FrameReader();
    const tail = packet('L', cstr('Subject'), cstr('x'));
    r.push(Buffer.concat([packet('N'), packet('T'), tail.subarray(0, 7)]));
    assert.equal(r.next()?.code, 0x4e);
    assert.equal(r.buffered, 5 + 7);
    assert.equal(r.next()?.code, 0x54);
    assert.equal(r.next(), null);
    assert.equal(r.buffered, 7);
    r.push(tail.subarray(7));
    const f = r.next();
    assert.equal(f?.code, 0x4c);
    assert.deepEqual(Buffer.from(f.payload), Buffer.concat([cstr('Subject'), cstr('x')]));
    assert.equal(r.buffered, 0);
  });

  it('a frame inside one chunk is a view of it (no copy); a spanning frame is a copy', () => {
    const chunk = Buffer.concat([packet('B', raw('abcdef')), packet('B', raw('ghij'))]);
    const r = new FrameReader();
    r.push(chunk.subarray(0, 15));
    const f1 = r.next();
    assert.ok(f1);
    assert.equal(f1.payload.buffer, chunk.buffer);
    assert.equal(f1.payload.byteOffset, chunk.byteOffset + 5);
    r.push(chunk.subarray(15));
    const f2 = r.next();
    assert.ok(f2);
    assert.notEqual(f2.payload.byteOffset, chunk.byteOffset + 16);
    assert.deepEqual(Buffer.from(f2.payload), raw('ghij'));
  });

  it('a frame spanning many small chunks is reassembled', () => {
    const data = Buffer.alloc(70000);
    for (let i = 0; i < data.length; i++) data[i] = i % 251;
    const bytes = packet('B', data);
    const r = new FrameReader();
    for (let i = 0; i < bytes.length; i += 1000) r.push(bytes.subarray(i, i + 1000));
    const f = r.next();
    assert.ok(f);
    assert.equal(f.code, 0x42);
    assert.ok(Buffer.from(f.payload).equals(data));
    assert.equal(r.buffered, 0);
  });

  it('"post" as a length: FRAME_TOO_LARGE, nothing allocated, stream then unusable', () => {
    const r = new FrameReader();
    let err: ProtocolError | undefined;
    const big = countBigAllocations(1024, () => {
      r.push(Buffer.from('post /milter HTTP/1.1\r\nHost: x\r\n\r\n'));
      err = throwsCode(() => r.next(), 'MILTERD_PROTO_FRAME_TOO_LARGE');
    });
    assert.equal(big, 0);
    assert.equal(err?.details?.['length'], 0x706f7374);
    assert.equal(0x706f7374, 1886352244);
    throwsCode(() => r.next(), 'MILTERD_PROTO_FRAME_TOO_LARGE');
    r.push(packet('N'));
    throwsCode(() => r.next(), 'MILTERD_PROTO_FRAME_TOO_LARGE');
    assert.equal(r.buffered, 0);
  });

  it('the cap is checked from the 4 length bytes alone', () => {
    const r = new FrameReader({ maxFrameSize: 100 });
    r.push(u32(101));
    throwsCode(() => r.next(), 'MILTERD_PROTO_FRAME_TOO_LARGE');
    const r2 = new FrameReader();
    r2.push(u32(0xffffffff).subarray(0, 2));
    assert.equal(r2.next(), null);
    r2.push(u32(0xffffffff).subarray(2));
    throwsCode(() => r2.next(), 'MILTERD_PROTO_FRAME_TOO_LARGE');
  });

  it('a frame of exactly maxFrameSize is accepted', () => {
    const r = new FrameReader({ maxFrameSize: 100 });
    r.push(packet('B', Buffer.alloc(99, 1)));
    const f = r.next();
    assert.equal(f?.payload.length, 99);
    const r2 = new FrameReader({ maxFrameSize: 100 });
    r2.push(packet('B', Buffer.alloc(100, 1)));
    throwsCode(() => r2.next(), 'MILTERD_PROTO_FRAME_TOO_LARGE');
  });

  it('length 0: FRAME_EMPTY', () => {
    const r = new FrameReader();
    r.push(Buffer.concat([packet('N'), u32(0), packet('T')]));
    assert.equal(r.next()?.code, 0x4e);
    throwsCode(() => r.next(), 'MILTERD_PROTO_FRAME_EMPTY');
    throwsCode(() => r.next(), 'MILTERD_PROTO_FRAME_EMPTY');
  });

  it('length 1: command byte with empty payload', () => {
    const r = new FrameReader();
    r.push(raw(0, 0, 0, 1, 'A'));
    const f = r.next();
    assert.equal(f?.code, 0x41);
    assert.equal(f.payload.length, 0);
  });

  it('empty pushes are ignored', () => {
    const r = new FrameReader();
    r.push(new Uint8Array(0));
    assert.equal(r.buffered, 0);
    assert.equal(r.next(), null);
  });

  it('many frames pushed one chunk each (chunk list compaction) decode in order', () => {
    const r = new FrameReader();
    const n = 1000;
    // Push all first so the chunk list grows, then drain.
    for (let i = 0; i < n; i++) r.push(packet('B', u32(i)));
    for (let i = 0; i < n; i++) {
      const f = r.next();
      assert.ok(f);
      assert.equal(Buffer.from(f.payload).readUInt32BE(0), i);
    }
    assert.equal(r.next(), null);
    // Interleaved pushes with partial frames.
    const stream = Buffer.concat(Array.from({ length: 200 }, (_, i) => packet('B', u32(i))));
    let got = 0;
    for (let i = 0; i < stream.length; i += 3) {
      r.push(stream.subarray(i, i + 3));
      for (let f = r.next(); f !== null; f = r.next()) assert.equal(Buffer.from(f.payload).readUInt32BE(0), got++);
    }
    assert.equal(got, 200);
  });

  it('rejects an invalid maxFrameSize option', () => {
    assert.throws(() => new FrameReader({ maxFrameSize: 0 }), RangeError);
    assert.throws(() => new FrameReader({ maxFrameSize: 1.5 }), RangeError);
  });
});
