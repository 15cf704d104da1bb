/**
 * Codec vectors: every command and reply encodes to exactly the bytes built by hand from the
 * wire facts (test/support/wire.ts), and those bytes decode back to the expected object.
 * Also: decoder leniencies and refusals, encoder refusals, and split-at-every-offset framing.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../../src/errors.ts';
import type { ErrorCode } from '../../../src/errors.ts';
import {
  FrameReader,
  PACKET_ACCEPT,
  PACKET_CONTINUE,
  PACKET_DISCARD,
  PACKET_PROGRESS,
  PACKET_REJECT,
  PACKET_SKIP,
  PACKET_TEMPFAIL,
  decodeCommand,
  decodeReply,
  encodeCommand,
  encodeReplaceBody,
  encodeReplies,
  encodeReply,
} from '../../../src/protocol/index.ts';
import type { Frame, MilterCommand, MilterReply } from '../../../src/protocol/index.ts';
import { cstr, packet, raw, u16, u32 } from '../../support/wire.ts';

/** The single frame of `bytes`, checked to be exactly one complete packet. */
function frameOf(bytes: Uint8Array): Frame {
  const r = new FrameReader();
  r.push(bytes);
  const f = r.next();
  assert.ok(f, 'expected one complete frame');
  assert.equal(r.buffered, 0, 'expected exactly one packet');
  assert.equal(r.next(), null);
  return f;
}

function throwsCode(fn: () => unknown, code: ErrorCode): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ProtocolError, `expected ProtocolError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

const body = Buffer.from('Hello,\r\nworld.\r\n\0binary\xff', 'latin1');

/** [name, hand-built bytes, decoded command] for every command kind (several shapes of some). */
const COMMANDS: ReadonlyArray<readonly [string, Buffer, MilterCommand]> = [
  ['optneg', packet('O', u32(6), u32(0x1ff), u32(0x1fffff)), { kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff }],
  [
    'macro (connect stage)',
    packet('D', raw('C'), cstr('j'), cstr('mx.example.org'), cstr('{daemon_name}'), cstr('smtpd'), cstr('_'), cstr('')),
    { kind: 'macro', stage: 0x43, macros: [['j', 'mx.example.org'], ['{daemon_name}', 'smtpd'], ['_', '']] },
  ],
  ['macro (no macros)', packet('D', raw('T')), { kind: 'macro', stage: 0x54, macros: [] }],
  [
    'connect inet',
    packet('C', cstr('client.example.com'), raw('4'), u16(40123), cstr('192.0.2.7')),
    { kind: 'connect', hostname: 'client.example.com', family: 'inet', port: 40123, address: '192.0.2.7' },
  ],
  [
    'connect inet6',
    packet('C', cstr('[2001:db8::1]'), raw('6'), u16(25), cstr('2001:db8::1')),
    { kind: 'connect', hostname: '[2001:db8::1]', family: 'inet6', port: 25, address: '2001:db8::1' },
  ],
  [
    'connect unix',
    packet('C', cstr('localhost'), raw('L'), u16(0), cstr('/run/smtp.sock')),
    { kind: 'connect', hostname: 'localhost', family: 'unix', port: 0, address: '/run/smtp.sock' },
  ],
  ['connect unknown', packet('C', cstr('unknown'), raw('U')), { kind: 'connect', hostname: 'unknown', family: 'unknown', port: 0, address: '' }],
  ['helo', packet('H', cstr('client.example.com')), { kind: 'helo', name: 'client.example.com' }],
  [
    'mail with ESMTP args',
    packet('M', cstr('<alice@example.com>'), cstr('SIZE=1024'), cstr('BODY=8BITMIME')),
    { kind: 'mail', args: ['<alice@example.com>', 'SIZE=1024', 'BODY=8BITMIME'] },
  ],
  ['mail null sender', packet('M', cstr('<>')), { kind: 'mail', args: ['<>'] }],
  ['rcpt', packet('R', cstr('<bob@example.net>'), cstr('NOTIFY=NEVER')), { kind: 'rcpt', args: ['<bob@example.net>', 'NOTIFY=NEVER'] }],
  ['data', packet('T'), { kind: 'data' }],
  ['header (UTF-8 value)', packet('L', cstr('Subject'), cstr(' Grüße')), { kind: 'header', name: 'Subject', value: ' Grüße' }],
  ['header (empty value)', packet('L', cstr('X-Empty'), cstr('')), { kind: 'header', name: 'X-Empty', value: '' }],
  ['header (folded)', packet('L', cstr('Received'), cstr('from a\n\tby b')), { kind: 'header', name: 'Received', value: 'from a\n\tby b' }],
  ['eoh', packet('N'), { kind: 'eoh' }],
  ['body', packet('B', body), { kind: 'body', chunk: body }],
  ['eob (empty)', packet('E'), { kind: 'eob', chunk: Buffer.alloc(0) }],
  ['eob (last chunk)', packet('E', raw('tail\r\n')), { kind: 'eob', chunk: Buffer.from('tail\r\n') }],
  ['abort', packet('A'), { kind: 'abort' }],
  ['quit', packet('Q'), { kind: 'quit' }],
  ['quitNc', packet('K'), { kind: 'quitNc' }],
  ['unknown', packet('U', cstr('VRFY postmaster')), { kind: 'unknown', command: 'VRFY postmaster' }],
];

/** [name, hand-built bytes, reply] for every reply kind. */
const REPLIES: ReadonlyArray<readonly [string, Buffer, MilterReply]> = [
  ['optneg', packet('O', u32(6), u32(0x3b), u32(0x1f3c00)), { kind: 'optneg', version: 6, actions: 0x3b, protocol: 0x1f3c00 }],
  [
    'optneg with two SETSYMLIST lists',
    packet('O', u32(6), u32(0x1ff), u32(0x0), u32(0), cstr('j {daemon_name} {client_addr}'), u32(2), cstr('{mail_addr} i')),
    {
      kind: 'optneg',
      version: 6,
      actions: 0x1ff,
      protocol: 0,
      symlists: [
        { stage: 0, macros: ['j', '{daemon_name}', '{client_addr}'] },
        { stage: 2, macros: ['{mail_addr}', 'i'] },
      ],
    },
  ],
  ['accept', packet('a'), { kind: 'accept' }],
  ['continue', packet('c'), { kind: 'continue' }],
  ['discard', packet('d'), { kind: 'discard' }],
  ['reject', packet('r'), { kind: 'reject' }],
  ['tempfail', packet('t'), { kind: 'tempfail' }],
  ['skip', packet('s'), { kind: 'skip' }],
  ['progress', packet('p'), { kind: 'progress' }],
  ['shutdown', packet('4'), { kind: 'shutdown' }],
  ['connfail', packet('f'), { kind: 'connfail' }],
  ['replycode', packet('y', cstr('550 5.7.1 Spam refused')), { kind: 'replycode', text: '550 5.7.1 Spam refused' }],
  [
    'replycode multi-line',
    packet('y', cstr('451-4.7.1 Greylisted\r\n451-4.7.1 try again\r\n451 4.7.1 in 5 minutes')),
    { kind: 'replycode', text: '451-4.7.1 Greylisted\r\n451-4.7.1 try again\r\n451 4.7.1 in 5 minutes' },
  ],
  ['quarantine', packet('q', cstr('virus found: Eicar')), { kind: 'quarantine', reason: 'virus found: Eicar' }],
  ['addrcpt', packet('+', cstr('<archive@example.org>')), { kind: 'addrcpt', rcpt: '<archive@example.org>' }],
  [
    'addrcpt with args (ADDRCPT_PAR)',
    packet('2', cstr('<archive@example.org>'), cstr('NOTIFY=NEVER ORCPT=rfc822;a@b')),
    { kind: 'addrcpt', rcpt: '<archive@example.org>', args: 'NOTIFY=NEVER ORCPT=rfc822;a@b' },
  ],
  ['delrcpt', packet('-', cstr('<bob@example.net>')), { kind: 'delrcpt', rcpt: '<bob@example.net>' }],
  ['chgfrom', packet('e', cstr('<bounce@example.org>')), { kind: 'chgfrom', from: '<bounce@example.org>' }],
  [
    'chgfrom with args',
    packet('e', cstr('<bounce@example.org>'), cstr('SIZE=2000 BODY=8BITMIME')),
    { kind: 'chgfrom', from: '<bounce@example.org>', args: 'SIZE=2000 BODY=8BITMIME' },
  ],
  ['addheader', packet('h', cstr('X-Spam-Score'), cstr('3.2\n\tfolded')), { kind: 'addheader', name: 'X-Spam-Score', value: '3.2\n\tfolded' }],
  [
    'insheader index 0',
    packet('i', u32(0), cstr('Authentication-Results'), cstr('mx; spf=pass')),
    { kind: 'insheader', index: 0, name: 'Authentication-Results', value: 'mx; spf=pass' },
  ],
  [
    'chgheader index 2',
    packet('m', u32(2), cstr('Subject'), cstr('[SPAM] hello')),
    { kind: 'chgheader', index: 2, name: 'Subject', value: '[SPAM] hello' },
  ],
  ['chgheader delete', packet('m', u32(1), cstr('X-Secret'), cstr('')), { kind: 'chgheader', index: 1, name: 'X-Secret', value: '' }],
  ['chgheader large index', packet('m', u32(0xfffffffe), cstr('X-A'), cstr('b')), { kind: 'chgheader', index: 0xfffffffe, name: 'X-A', value: 'b' }],
  ['replbody', packet('b', body), { kind: 'replbody', chunk: body }],
];

describe('commands: encode → hand-built bytes → decode', () => {
  for (const [name, bytes, cmd] of COMMANDS) {
    it(name, () => {
      assert.deepEqual(encodeCommand(cmd), bytes);
      assert.deepEqual(decodeCommand(frameOf(bytes)), cmd);
    });
  }

  it('covers every command code', () => {
    const codes = new Set(COMMANDS.map(([, b]) => String.fromCharCode(b[4] as number)));
    assert.deepEqual([...codes].sort(), [...'ABCDEHKLMNOQRTU'].sort());
  });
});

describe('replies: encode → hand-built bytes → decode', () => {
  for (const [name, bytes, reply] of REPLIES) {
    it(name, () => {
      assert.deepEqual(encodeReply(reply), bytes);
      assert.deepEqual(decodeReply(frameOf(bytes)), reply);
    });
  }

  it('covers every reply code except SETSYMLIST', () => {
    const codes = new Set(REPLIES.map(([, b]) => String.fromCharCode(b[4] as number)));
    assert.deepEqual([...codes].sort(), [...'+-24Oabcdefhimpqrsty'].sort());
  });

  it('pre-built code-only packets are the exact bytes', () => {
    assert.deepEqual(PACKET_CONTINUE, packet('c'));
    assert.deepEqual(PACKET_ACCEPT, packet('a'));
    assert.deepEqual(PACKET_REJECT, packet('r'));
    assert.deepEqual(PACKET_TEMPFAIL, packet('t'));
    assert.deepEqual(PACKET_DISCARD, packet('d'));
    assert.deepEqual(PACKET_PROGRESS, packet('p'));
    assert.deepEqual(PACKET_SKIP, packet('s'));
  });

  it('encodeReplies concatenates packets in order', () => {
    const out = encodeReplies([
      { kind: 'addheader', name: 'X-A', value: '1' },
      { kind: 'chgfrom', from: '<a@b>' },
      { kind: 'continue' },
    ]);
    assert.deepEqual(out, Buffer.concat([packet('h', cstr('X-A'), cstr('1')), packet('e', cstr('<a@b>')), packet('c')]));
    assert.deepEqual(encodeReplies([]), Buffer.alloc(0));
    assert.deepEqual(encodeReplies([{ kind: 'accept' }]), packet('a'));
  });

  it('encodeReplaceBody chunks a 150000-byte body into 65535 + 65535 + 18930', () => {
    const big = Buffer.alloc(150000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + 3) & 0xff;
    const out = encodeReplaceBody(big);
    assert.deepEqual(
      out,
      Buffer.concat([
        packet('b', big.subarray(0, 65535)),
        packet('b', big.subarray(65535, 131070)),
        packet('b', big.subarray(131070)),
      ]),
    );
    const r = new FrameReader();
    r.push(out);
    const sizes: number[] = [];
    for (let f = r.next(); f !== null; f = r.next()) {
      const reply = decodeReply(f);
      assert.equal(reply.kind, 'replbody');
      sizes.push(f.payload.length);
    }
    assert.deepEqual(sizes, [65535, 65535, 18930]);
  });

  it('encodeReplaceBody: exactly 65535 bytes is one chunk, empty body is one empty chunk', () => {
    const b = Buffer.alloc(65535, 0x41);
    assert.deepEqual(encodeReplaceBody(b), packet('b', b));
    assert.deepEqual(encodeReplaceBody(new Uint8Array(0)), packet('b'));
    assert.deepEqual(encodeReplaceBody(Buffer.alloc(65536, 0x42)), Buffer.concat([packet('b', Buffer.alloc(65535, 0x42)), packet('b', raw('B'))]));
  });
});

describe('decodeCommand leniency and refusals', () => {
  const dec = (bytes: Buffer) => decodeCommand(frameOf(bytes));

  it('OPTNEG longer than 12 bytes: extra ignored', () => {
    assert.deepEqual(dec(packet('O', u32(6), u32(0x1ff), u32(0x1fffff), u32(99), raw('x'))), {
      kind: 'optneg',
      version: 6,
      actions: 0x1ff,
      protocol: 0x1fffff,
    });
  });
  it('OPTNEG shorter than 12 bytes: truncated', () => {
    throwsCode(() => dec(packet('O', u32(6), u32(0x1ff), u16(1))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('O')), 'MILTERD_PROTO_TRUNCATED');
  });
  it('payload-less commands ignore trailing bytes', () => {
    assert.deepEqual(dec(packet('T', raw('junk'))), { kind: 'data' });
    assert.deepEqual(dec(packet('N', raw(0))), { kind: 'eoh' });
    assert.deepEqual(dec(packet('A', raw('x'))), { kind: 'abort' });
    assert.deepEqual(dec(packet('Q', raw('x'))), { kind: 'quit' });
    assert.deepEqual(dec(packet('K', raw('x'))), { kind: 'quitNc' });
  });
  it('MAIL/RCPT without any argument: truncated', () => {
    throwsCode(() => dec(packet('M')), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('R')), 'MILTERD_PROTO_TRUNCATED');
  });
  it('MAIL/RCPT with an unterminated argument: truncated', () => {
    throwsCode(() => dec(packet('M', cstr('<a@b>'), raw('SIZE=1'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('R', raw('<a@b>'))), 'MILTERD_PROTO_TRUNCATED');
  });
  it('HEADER name\\0\\0 is an empty value; missing value or NUL is truncated; empty name is refused', () => {
    assert.deepEqual(dec(packet('L', raw('Subject', 0, 0))), { kind: 'header', name: 'Subject', value: '' });
    throwsCode(() => dec(packet('L', cstr('Subject'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('L', cstr('Subject'), raw('no nul'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('L', raw('Subject'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('L', cstr(''), cstr('v'))), 'MILTERD_PROTO_BAD_FIELD');
  });
  it('MACRO: dangling name is truncated; unknown stage still decoded; empty payload truncated', () => {
    throwsCode(() => dec(packet('D', raw('M'), cstr('i'), cstr('4AB'), cstr('{mail_addr}'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('D', raw('M'), cstr('i'), raw('4AB'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('D')), 'MILTERD_PROTO_TRUNCATED');
    assert.deepEqual(dec(packet('D', raw('Z'), cstr('i'), cstr('x'))), { kind: 'macro', stage: 0x5a, macros: [['i', 'x']] });
  });
  it('CONNECT refusals', () => {
    throwsCode(() => dec(packet('C', cstr('h'), raw('X'), u16(1), cstr('a'))), 'MILTERD_PROTO_BAD_FIELD');
    throwsCode(() => dec(packet('C', cstr('h'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('C', raw('h'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('C', cstr('h'), raw('4'), raw(1))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('C', cstr('h'), raw('4'), u16(25))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('C', cstr('h'), raw('4'), u16(25), raw('1.2.3.4'))), 'MILTERD_PROTO_TRUNCATED');
  });
  it('CONNECT family U ignores trailing bytes', () => {
    assert.deepEqual(dec(packet('C', cstr('h'), raw('U'), u16(25), cstr('x'))), { kind: 'connect', hostname: 'h', family: 'unknown', port: 0, address: '' });
  });
  it('HELO / UNKNOWN without NUL: truncated', () => {
    throwsCode(() => dec(packet('H', raw('name'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('H')), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('U', raw('VRFY'))), 'MILTERD_PROTO_TRUNCATED');
  });
  it('invalid UTF-8 decodes with replacement characters, never throws', () => {
    assert.deepEqual(dec(packet('H', raw(0xff, 0xfe, 0x41, 0))), { kind: 'helo', name: '\ufffd\ufffdA' });
  });
  it('unknown command codes are refused', () => {
    for (const c of ['Z', 'a', 'y', '\0', 'P']) throwsCode(() => dec(packet(c)), 'MILTERD_PROTO_UNKNOWN_COMMAND');
  });
  it('body chunk is a view of the pushed bytes (no copy)', () => {
    const bytes = packet('B', body);
    const f = frameOf(bytes);
    const cmd = decodeCommand(f);
    assert.equal(cmd.kind, 'body');
    assert.equal(cmd.kind === 'body' && cmd.chunk.buffer, bytes.buffer);
  });
});

describe('decodeReply leniency and refusals', () => {
  const dec = (bytes: Buffer) => decodeReply(frameOf(bytes));

  it('ADDRCPT_PAR without args (smfi_addrcpt_par with NULL args) decodes to empty args', () => {
    assert.deepEqual(dec(packet('2', cstr('<a@b>'))), { kind: 'addrcpt', rcpt: '<a@b>', args: '' });
  });
  it('OPTNEG reply: short is truncated, bad or partial SETSYMLIST refused, empty list allowed', () => {
    throwsCode(() => dec(packet('O', u32(6), u32(0))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('O', u32(6), u32(0), u32(0), u32(7), cstr('i'))), 'MILTERD_PROTO_BAD_FIELD');
    throwsCode(() => dec(packet('O', u32(6), u32(0), u32(0), u16(0))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('O', u32(6), u32(0), u32(0), u32(1), raw('i'))), 'MILTERD_PROTO_TRUNCATED');
    assert.deepEqual(dec(packet('O', u32(6), u32(0), u32(0), u32(5), cstr(''))), {
      kind: 'optneg',
      version: 6,
      actions: 0,
      protocol: 0,
      symlists: [{ stage: 5, macros: [] }],
    });
  });
  it('INSHEADER/CHGHEADER: short index or missing fields are truncated', () => {
    throwsCode(() => dec(packet('i', u16(0))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('m', u32(1), cstr('Subject'))), 'MILTERD_PROTO_TRUNCATED');
    throwsCode(() => dec(packet('h', cstr(''), cstr('v'))), 'MILTERD_PROTO_BAD_FIELD');
  });
  it('unknown reply codes (and SETSYMLIST as a packet) are refused', () => {
    for (const c of ['l', 'Z', 'C', '\0']) throwsCode(() => dec(packet(c)), 'MILTERD_PROTO_UNKNOWN_REPLY');
  });
  it('code-only replies ignore trailing bytes', () => {
    assert.deepEqual(dec(packet('c', raw('xx'))), { kind: 'continue' });
  });
});

describe('encoder refusals (MILTERD_PROTO_ENCODE)', () => {
  const bad: ReadonlyArray<readonly [string, () => unknown]> = [
    ['NUL in header value', () => encodeReply({ kind: 'addheader', name: 'X-A', value: 'a\0b' })],
    ['NUL in header name', () => encodeReply({ kind: 'addheader', name: 'X\0A', value: 'a' })],
    ['empty header name', () => encodeReply({ kind: 'addheader', name: '', value: 'a' })],
    ['NUL in reply text', () => encodeReply({ kind: 'replycode', text: '550 a\0b' })],
    ['NUL in rcpt', () => encodeReply({ kind: 'addrcpt', rcpt: '<a\0@b>' })],
    ['NUL in addrcpt args', () => encodeReply({ kind: 'addrcpt', rcpt: '<a@b>', args: 'X\0' })],
    ['NUL in chgfrom args', () => encodeReply({ kind: 'chgfrom', from: '<a@b>', args: '\0' })],
    ['negative index', () => encodeReply({ kind: 'chgheader', index: -1, name: 'X', value: '' })],
    ['non-integer index', () => encodeReply({ kind: 'insheader', index: 1.5, name: 'X', value: '' })],
    ['index above u32', () => encodeReply({ kind: 'insheader', index: 2 ** 32, name: 'X', value: '' })],
    ['NaN index', () => encodeReply({ kind: 'chgheader', index: Number.NaN, name: 'X', value: '' })],
    ['replbody chunk > 65535', () => encodeReply({ kind: 'replbody', chunk: new Uint8Array(65536) })],
    ['optneg version 1', () => encodeReply({ kind: 'optneg', version: 1, actions: 0, protocol: 0 })],
    ['optneg version 7', () => encodeReply({ kind: 'optneg', version: 7, actions: 0, protocol: 0 })],
    ['optneg negative actions', () => encodeReply({ kind: 'optneg', version: 6, actions: -1, protocol: 0 })],
    ['symlist bad stage', () => encodeReply({ kind: 'optneg', version: 6, actions: 0, protocol: 0, symlists: [{ stage: 7 as 0, macros: ['i'] }] })],
    ['symlist name with space', () => encodeReply({ kind: 'optneg', version: 6, actions: 0, protocol: 0, symlists: [{ stage: 0, macros: ['a b'] }] })],
    ['symlist empty name', () => encodeReply({ kind: 'optneg', version: 6, actions: 0, protocol: 0, symlists: [{ stage: 0, macros: [''] }] })],
    ['empty quarantine reason', () => encodeReply({ kind: 'quarantine', reason: '' })],
    ['unknown reply kind', () => encodeReply({ kind: 'bogus' } as unknown as MilterReply)],
    ['mail without address', () => encodeCommand({ kind: 'mail', args: [] })],
    ['NUL in macro value', () => encodeCommand({ kind: 'macro', stage: 0x43, macros: [['j', 'a\0']] })],
    ['macro stage > 255', () => encodeCommand({ kind: 'macro', stage: 256, macros: [] })],
    ['connect port 70000', () => encodeCommand({ kind: 'connect', hostname: 'h', family: 'inet', port: 70000, address: 'a' })],
    ['connect bad family', () => encodeCommand({ kind: 'connect', hostname: 'h', family: 'x' as 'inet', port: 1, address: 'a' })],
    ['command header empty name', () => encodeCommand({ kind: 'header', name: '', value: 'v' })],
    ['unknown command kind', () => encodeCommand({ kind: 'bogus' } as unknown as MilterCommand)],
  ];
  for (const [name, fn] of bad) it(name, () => throwsCode(fn, 'MILTERD_PROTO_ENCODE'));

  it('optneg versions 2..6 and index 0 / 2^32-1 are accepted', () => {
    for (let v = 2; v <= 6; v++) assert.deepEqual(encodeReply({ kind: 'optneg', version: v, actions: 0, protocol: 0 }), packet('O', u32(v), u32(0), u32(0)));
    assert.deepEqual(encodeReply({ kind: 'chgheader', index: 0xffffffff, name: 'X', value: '' }), packet('m', u32(0xffffffff), cstr('X'), cstr('')));
  });
});

describe('framing: split at every offset', () => {
  const stream = Buffer.concat(COMMANDS.map(([, b]) => b));
  const expected = COMMANDS.map(([, , c]) => c);

  function decodeAll(pieces: readonly Uint8Array[]): MilterCommand[] {
    const r = new FrameReader();
    const out: MilterCommand[] = [];
    for (const p of pieces) {
      r.push(p);
      for (let f = r.next(); f !== null; f = r.next()) out.push(decodeCommand(f));
    }
    assert.equal(r.buffered, 0);
    return out;
  }

  it('unsplit stream decodes to every command in order', () => {
    assert.deepEqual(decodeAll([stream]), expected);
  });

  it(`two pieces, cut at each of ${stream.length + 1} offsets`, () => {
    for (let i = 0; i <= stream.length; i++) {
      // Copies, so the reader cannot rely on the two pieces sharing one ArrayBuffer.
      const a = Buffer.from(stream.subarray(0, i));
      const b = Buffer.from(stream.subarray(i));
      assert.deepEqual(decodeAll([a, b]), expected, `split at ${i}`);
    }
  });

  it('byte by byte', () => {
    const pieces: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) pieces.push(Buffer.from([stream[i] as number]));
    assert.deepEqual(decodeAll(pieces), expected);
  });

  it('three pieces at every pair of offsets around packet boundaries', () => {
    const cuts = [0, 3, 4, 5, 17, 40, 100, stream.length - 6, stream.length - 1, stream.length];
    for (const i of cuts) {
      for (const j of cuts) {
        if (j < i) continue;
        const pieces = [stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)].map((p) => Buffer.from(p));
        assert.deepEqual(decodeAll(pieces), expected, `split at ${i}, ${j}`);
      }
    }
  });
});
