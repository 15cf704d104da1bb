/**
 * MacroStore: macros by stage as libmilter keeps them (a MACRO packet replaces its stage,
 * lookups search the newest stage first, `x` and `{x}` are one name).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SMFIC } from '../../../src/protocol/constants.ts';
import { MACRO_STAGES, MacroStore, macroKey } from '../../../src/session/macros.ts';

describe('macroKey', () => {
  it('strips one pair of braces, nothing else', () => {
    assert.equal(macroKey('{i}'), 'i');
    assert.equal(macroKey('i'), 'i');
    assert.equal(macroKey('{mail_addr}'), 'mail_addr');
    assert.equal(macroKey('{}'), '{}');
    assert.equal(macroKey('{'), '{');
    assert.equal(macroKey('{x'), '{x');
    assert.equal(macroKey('x}'), 'x}');
  });
});

describe('MACRO_STAGES', () => {
  it('holds the command codes a MACRO packet may name', () => {
    assert.deepEqual(
      [...MACRO_STAGES].map((c) => String.fromCharCode(c)).sort(),
      ['B', 'C', 'E', 'H', 'L', 'M', 'N', 'R', 'T', 'U'],
    );
  });
});

describe('MacroStore', () => {
  it('`i` and `{i}` are the same lookup, both ways', () => {
    const s = new MacroStore();
    s.set(SMFIC.MAIL, [['{i}', 'QID1']]);
    assert.equal(s.get('i'), 'QID1');
    assert.equal(s.get('{i}'), 'QID1');
    s.set(SMFIC.CONNECT, [['j', 'mx.example.org']]);
    assert.equal(s.get('{j}'), 'mx.example.org');
    assert.equal(s.get('j'), 'mx.example.org');
  });

  it('an unknown macro is undefined; an empty value is kept', () => {
    const s = new MacroStore();
    assert.equal(s.get('i'), undefined);
    s.set(SMFIC.CONNECT, [['{daemon_name}', '']]);
    assert.equal(s.get('{daemon_name}'), '');
    assert.equal(s.get('{nope}'), undefined);
  });

  it('the newest stage wins', () => {
    const s = new MacroStore();
    s.set(SMFIC.CONNECT, [['x', 'connect'], ['c', 'C']]);
    s.set(SMFIC.HELO, [['x', 'helo']]);
    assert.equal(s.get('x'), 'helo');
    s.set(SMFIC.MAIL, [['x', 'mail']]);
    assert.equal(s.get('x'), 'mail');
    s.set(SMFIC.RCPT, [['x', 'rcpt']]);
    assert.equal(s.get('x'), 'rcpt');
    s.set(SMFIC.DATA, [['x', 'data']]);
    assert.equal(s.get('x'), 'data');
    s.set(SMFIC.EOH, [['x', 'eoh']]);
    assert.equal(s.get('x'), 'eoh');
    s.set(SMFIC.BODYEOB, [['x', 'eom']]);
    assert.equal(s.get('x'), 'eom');
    // Older stages still answer for names the newer ones lack.
    assert.equal(s.get('c'), 'C');
  });

  it('the newest stage wins regardless of the order the packets came in', () => {
    const s = new MacroStore();
    s.set(SMFIC.RCPT, [['x', 'rcpt']]);
    s.set(SMFIC.CONNECT, [['x', 'connect']]);
    assert.equal(s.get('x'), 'rcpt');
  });

  it('a new MACRO for a stage replaces that stage wholly', () => {
    const s = new MacroStore();
    s.set(SMFIC.MAIL, [['i', 'Q']]);
    s.set(SMFIC.RCPT, [['{rcpt_addr}', 'a@example.net'], ['{rcpt_host}', 'example.net']]);
    s.set(SMFIC.RCPT, [['{rcpt_addr}', 'b@example.net']]);
    assert.equal(s.get('{rcpt_addr}'), 'b@example.net');
    assert.equal(s.get('{rcpt_host}'), undefined);
    assert.equal(s.get('i'), 'Q');
  });

  it('within one packet the last value of a repeated name wins', () => {
    const s = new MacroStore();
    s.set(SMFIC.CONNECT, [['{a}', '1'], ['a', '2']]);
    assert.equal(s.get('a'), '2');
  });

  it('a new MAIL-stage set clears the RCPT, DATA, EOH and EOM stages of the last message', () => {
    const s = new MacroStore();
    s.set(SMFIC.CONNECT, [['j', 'host']]);
    s.set(SMFIC.HELO, [['{tls_version}', 'TLSv1.3']]);
    s.set(SMFIC.MAIL, [['i', 'Q1'], ['{mail_addr}', 'old@example.org']]);
    s.set(SMFIC.RCPT, [['{rcpt_addr}', 'r@example.net']]);
    s.set(SMFIC.DATA, [['{data_x}', 'd']]);
    s.set(SMFIC.EOH, [['{eoh_x}', 'e']]);
    s.set(SMFIC.BODYEOB, [['{msg_id}', '<m@x>']]);
    s.set(SMFIC.MAIL, [['i', 'Q2']]);
    assert.equal(s.get('i'), 'Q2');
    assert.equal(s.get('{mail_addr}'), undefined);
    assert.equal(s.get('{rcpt_addr}'), undefined);
    assert.equal(s.get('{data_x}'), undefined);
    assert.equal(s.get('{eoh_x}'), undefined);
    assert.equal(s.get('{msg_id}'), undefined);
    assert.equal(s.get('j'), 'host');
    assert.equal(s.get('{tls_version}'), 'TLSv1.3');
  });

  it('clearMessage drops message stages and keeps connect and helo', () => {
    const s = new MacroStore();
    s.set(SMFIC.CONNECT, [['j', 'host'], ['x', 'connect']]);
    s.set(SMFIC.HELO, [['{cipher}', 'AES']]);
    s.set(SMFIC.MAIL, [['i', 'Q1'], ['x', 'mail']]);
    s.set(SMFIC.RCPT, [['{rcpt_addr}', 'r']]);
    s.set(SMFIC.DATA, [['{d}', 'd']]);
    s.set(SMFIC.EOH, [['{e}', 'e']]);
    s.set(SMFIC.BODYEOB, [['{msg_id}', 'm']]);
    s.clearMessage();
    assert.equal(s.get('j'), 'host');
    assert.equal(s.get('{cipher}'), 'AES');
    assert.equal(s.get('x'), 'connect');
    for (const n of ['i', '{rcpt_addr}', '{d}', '{e}', '{msg_id}']) assert.equal(s.get(n), undefined, n);
  });

  it('clearAll drops everything', () => {
    const s = new MacroStore();
    s.set(SMFIC.CONNECT, [['j', 'host']]);
    s.set(SMFIC.HELO, [['{cipher}', 'AES']]);
    s.set(SMFIC.MAIL, [['i', 'Q']]);
    s.clearAll();
    for (const n of ['j', '{cipher}', 'i']) assert.equal(s.get(n), undefined, n);
    s.set(SMFIC.CONNECT, [['j', 'again']]);
    assert.equal(s.get('j'), 'again');
  });
});
