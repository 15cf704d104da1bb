/**
 * Property-based tests with fast-check:
 * - arbitrary bytes and mutated valid packets through FrameReader + decodeCommand/decodeReply:
 *   the only exceptions that escape are ProtocolError;
 * - huge announced lengths throw FRAME_TOO_LARGE before any allocation;
 * - roundtrips: decode(encode(x)) deep-equals x for generated commands and replies, also when
 *   the stream is cut at random places.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ProtocolError } from '../../../src/errors.ts';
import {
  DEFAULT_MAX_FRAME_SIZE,
  FrameReader,
  SMFIC,
  SMFIR,
  decodeCommand,
  decodeReply,
  encodeCommand,
  encodeReply,
} from '../../../src/protocol/index.ts';
import type { AddressFamily, Frame, MilterCommand, MilterReply, SmfimStage } from '../../../src/protocol/index.ts';
import { u32 } from '../../support/wire.ts';

const RUNS = 10_000;

/** Any string without NUL (graphemes, so UTF-8 roundtrips exactly). */
const str = (maxLength = 24) =>
  fc.oneof(fc.string({ unit: 'grapheme', maxLength }), fc.string({ unit: 'binary-ascii', maxLength })).map((s) => s.replaceAll('\0', ''));
const nonEmpty = (maxLength = 24) => str(maxLength).filter((s) => s.length > 0);
const bytes = (maxLength = 200) => fc.uint8Array({ maxLength }).map((a) => Buffer.from(a));
const u32Arb = fc.integer({ min: 0, max: 0xffffffff });

/** fc.record with plain-prototype objects (deepEqual compares prototypes). */
function rec<T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> {
  return fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;
}

const commandArb: fc.Arbitrary<MilterCommand> = fc.oneof(
  rec({ kind: fc.constant('optneg' as const), version: u32Arb, actions: u32Arb, protocol: u32Arb }),
  rec({
    kind: fc.constant('macro' as const),
    stage: fc.integer({ min: 0, max: 255 }),
    macros: fc.array(fc.tuple(str(12), str()), { maxLength: 6 }),
  }),
  fc.oneof(
    rec({ kind: fc.constant('connect' as const), hostname: str(), family: fc.constant('unknown' as AddressFamily), port: fc.constant(0), address: fc.constant('') }),
    rec({
      kind: fc.constant('connect' as const),
      hostname: str(),
      family: fc.constantFrom<AddressFamily>('unix', 'inet', 'inet6'),
      port: fc.integer({ min: 0, max: 0xffff }),
      address: str(),
    }),
  ),
  rec({ kind: fc.constant('helo' as const), name: str() }),
  rec({ kind: fc.constantFrom('mail' as const, 'rcpt' as const), args: fc.array(str(), { minLength: 1, maxLength: 5 }) }),
  rec({ kind: fc.constant('header' as const), name: nonEmpty(16), value: str(40) }),
  rec({ kind: fc.constantFrom('body' as const, 'eob' as const), chunk: bytes() }),
  rec({ kind: fc.constant('unknown' as const), command: str() }),
  fc.constantFrom<MilterCommand>({ kind: 'data' }, { kind: 'eoh' }, { kind: 'abort' }, { kind: 'quit' }, { kind: 'quitNc' }),
);

const macroName = nonEmpty(12).map((s) => s.replaceAll(' ', '_'));
const replyArb: fc.Arbitrary<MilterReply> = fc.oneof(
  fc.record(
    {
      kind: fc.constant('optneg' as const),
      version: fc.integer({ min: 2, max: 6 }),
      actions: u32Arb,
      protocol: u32Arb,
      symlists: fc.array(
        rec({ stage: fc.integer({ min: 0, max: 6 }).map((n) => n as SmfimStage), macros: fc.array(macroName, { maxLength: 5 }) }),
        { minLength: 1, maxLength: 4 },
      ),
    },
    { requiredKeys: ['kind', 'version', 'actions', 'protocol'], noNullPrototype: true },
  ),
  fc.constantFrom<MilterReply>(
    { kind: 'accept' },
    { kind: 'continue' },
    { kind: 'discard' },
    { kind: 'reject' },
    { kind: 'tempfail' },
    { kind: 'skip' },
    { kind: 'progress' },
    { kind: 'shutdown' },
    { kind: 'connfail' },
  ),
  rec({ kind: fc.constant('replycode' as const), text: str(60) }),
  rec({ kind: fc.constant('quarantine' as const), reason: nonEmpty() }),
  fc.record({ kind: fc.constant('addrcpt' as const), rcpt: str(), args: str() }, { requiredKeys: ['kind', 'rcpt'], noNullPrototype: true }),
  rec({ kind: fc.constant('delrcpt' as const), rcpt: str() }),
  fc.record({ kind: fc.constant('chgfrom' as const), from: str(), args: str() }, { requiredKeys: ['kind', 'from'], noNullPrototype: true }),
  rec({ kind: fc.constant('addheader' as const), name: nonEmpty(16), value: str(40) }),
  rec({ kind: fc.constantFrom('insheader' as const, 'chgheader' as const), index: u32Arb, name: nonEmpty(16), value: str(40) }),
  rec({ kind: fc.constant('replbody' as const), chunk: bytes() }),
);

/** The frame of one encoded packet, with its length word checked. */
function frameOf(packet: Buffer): Frame {
  assert.equal(packet.readUInt32BE(0), packet.length - 4);
  return { code: packet[4] as number, payload: packet.subarray(5) };
}

/** Runs `fn`; any exception other than ProtocolError fails the property. */
function onlyProtocolErrors(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw new Error(`non-ProtocolError escaped: ${String(err)}`, { cause: err });
  }
}

/** Feeds `pieces` to a FrameReader and decodes each frame both as command and as reply. */
function feed(pieces: readonly Uint8Array[], maxFrameSize?: number): void {
  const r = new FrameReader(maxFrameSize === undefined ? undefined : { maxFrameSize });
  onlyProtocolErrors(() => {
    for (const p of pieces) {
      r.push(p);
      for (let f = r.next(); f !== null; f = r.next()) {
        onlyProtocolErrors(() => decodeCommand(f));
        onlyProtocolErrors(() => decodeReply(f));
      }
    }
  });
}

/** A mutation of a valid packet stream: flip, drop, insert, truncate, or rewrite the length. */
const mutate = (buf: Buffer) =>
  fc
    .array(
      fc.oneof(
        fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
        fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
        fc.record({ op: fc.constant('drop' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
        fc.record({ op: fc.constant('insert' as const), at: fc.nat(), data: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
        fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
      ),
      { minLength: 1, maxLength: 4 },
    )
    .map((ops) => {
      let b = Buffer.from(buf);
      for (const o of ops) {
        const at = b.length === 0 ? 0 : o.at % b.length;
        if (o.op === 'flip' && b.length > 0) b[at] = (b[at] as number) ^ (1 << o.bit);
        else if (o.op === 'set' && b.length > 0) b[at] = o.value;
        else if (o.op === 'drop') b = Buffer.concat([b.subarray(0, at), b.subarray(at + o.n)]);
        else if (o.op === 'insert') b = Buffer.concat([b.subarray(0, at), o.data, b.subarray(at)]);
        else if (o.op === 'truncate') b = b.subarray(0, at);
      }
      return b;
    });

/** Cuts `buf` at the given (sorted, deduplicated) offsets. */
function cut(buf: Buffer, offsets: readonly number[]): Buffer[] {
  const pts = [...new Set(offsets.map((o) => (buf.length === 0 ? 0 : o % (buf.length + 1))))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of pts) {
    out.push(Buffer.from(buf.subarray(prev, p)));
    prev = p;
  }
  out.push(Buffer.from(buf.subarray(prev)));
  return out;
}

const ALL_CODES = [...new Set([...Object.values(SMFIC), ...Object.values(SMFIR)])];

describe('fuzz: only ProtocolError escapes', () => {
  it('arbitrary byte streams, arbitrarily cut', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.array(fc.nat(), { maxLength: 5 }), (data, cuts) => {
        feed(cut(Buffer.from(data), cuts), 4096);
      }),
      { numRuns: RUNS },
    );
  });

  it('arbitrary payloads behind every known code (and random codes)', () => {
    const codeArb = fc.oneof(fc.constantFrom(...ALL_CODES), fc.integer({ min: 0, max: 255 }));
    fc.assert(
      fc.property(codeArb, fc.uint8Array({ maxLength: 64 }), (code, payload) => {
        const frame = { code, payload };
        onlyProtocolErrors(() => decodeCommand(frame));
        onlyProtocolErrors(() => decodeReply(frame));
        // Same payload as a plain Uint8Array view with an offset (not a Buffer).
        const shifted = new Uint8Array(payload.length + 3);
        shifted.set(payload, 3);
        onlyProtocolErrors(() => decodeCommand({ code, payload: shifted.subarray(3) }));
        onlyProtocolErrors(() => decodeReply({ code, payload: shifted.subarray(3) }));
      }),
      { numRuns: RUNS * 2 },
    );
  });

  it('payloads made of NULs, digits and separators behind every known code', () => {
    const byteArb = fc.constantFrom(0, 0x20, 0x34, 0x36, 0x4c, 0x55, 0x41, 0xff);
    fc.assert(
      fc.property(fc.constantFrom(...ALL_CODES), fc.array(byteArb, { maxLength: 40 }), (code, arr) => {
        const frame = { code, payload: Uint8Array.from(arr) };
        onlyProtocolErrors(() => decodeCommand(frame));
        onlyProtocolErrors(() => decodeReply(frame));
      }),
      { numRuns: RUNS },
    );
  });

  it('mutated valid command and reply packets', () => {
    const stream = fc
      .tuple(fc.array(commandArb, { minLength: 1, maxLength: 4 }), fc.array(replyArb, { maxLength: 3 }))
      .map(([cmds, replies]) => Buffer.concat([...cmds.map(encodeCommand), ...replies.map(encodeReply)]));
    fc.assert(
      fc.property(
        stream.chain((b) => mutate(b)),
        fc.array(fc.nat(), { maxLength: 3 }),
        (data, cuts) => {
          feed(cut(data, cuts), 8192);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('huge announced lengths throw FRAME_TOO_LARGE before allocating', () => {
    const orig = Buffer.allocUnsafe;
    let allocated = 0;
    Buffer.allocUnsafe = ((size: number) => {
      allocated += size;
      return orig(size);
    }) as typeof Buffer.allocUnsafe;
    try {
      fc.assert(
        fc.property(fc.integer({ min: DEFAULT_MAX_FRAME_SIZE + 1, max: 0xffffffff }), fc.uint8Array({ maxLength: 32 }), (len, rest) => {
          const r = new FrameReader();
          r.push(u32(len));
          r.push(rest);
          assert.throws(
            () => r.next(),
            (e: unknown) => e instanceof ProtocolError && e.code === 'MILTERD_PROTO_FRAME_TOO_LARGE' && e.details?.['length'] === len,
          );
        }),
        { numRuns: 500 },
      );
    } finally {
      Buffer.allocUnsafe = orig;
    }
    assert.equal(allocated, 0);
  });
});

describe('roundtrip properties', () => {
  it('decodeCommand(encodeCommand(x)) deep-equals x', () => {
    fc.assert(
      fc.property(commandArb, (cmd) => {
        assert.deepEqual(decodeCommand(frameOf(encodeCommand(cmd))), cmd);
      }),
      { numRuns: RUNS },
    );
  });

  it('decodeReply(encodeReply(x)) deep-equals x', () => {
    fc.assert(
      fc.property(replyArb, (reply) => {
        assert.deepEqual(decodeReply(frameOf(encodeReply(reply))), reply);
      }),
      { numRuns: RUNS },
    );
  });

  it('a stream of commands cut anywhere decodes to the same commands', () => {
    fc.assert(
      fc.property(fc.array(commandArb, { minLength: 1, maxLength: 12 }), fc.array(fc.nat(), { maxLength: 8 }), (cmds, cuts) => {
        const stream = Buffer.concat(cmds.map(encodeCommand));
        const r = new FrameReader();
        const out: MilterCommand[] = [];
        for (const piece of cut(stream, cuts)) {
          r.push(piece);
          for (let f = r.next(); f !== null; f = r.next()) out.push(decodeCommand(f));
        }
        assert.equal(r.buffered, 0);
        assert.deepEqual(out, cmds);
      }),
      { numRuns: Math.floor(RUNS / 5) },
    );
  });
});
