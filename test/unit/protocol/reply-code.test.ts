/**
 * formatReplyCode / checkReplyClass: libmilter's smfi_setreply and smfi_setmlreply rules plus
 * what Sendmail ('%') and Postfix (enhanced code class) check, positive and negative.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MilterdError } from '../../../src/errors.ts';
import { MAXREPLIES, MAXREPLYLEN, checkReplyClass, formatReplyCode } from '../../../src/protocol/index.ts';

function refused(fn: () => unknown, mentions: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MilterdError, `expected MilterdError, got ${String(err)}`);
    assert.equal(err.code, 'MILTERD_FILTER_BAD_REPLY');
    assert.match(err.message, mentions);
    return true;
  });
}

describe('formatReplyCode: formats', () => {
  it('single line with enhanced code', () => {
    assert.equal(formatReplyCode('550', '5.7.1', ['Spam refused']), '550 5.7.1 Spam refused');
  });
  it('single line without enhanced code', () => {
    assert.equal(formatReplyCode('451', undefined, ['Try later']), '451 Try later');
  });
  it('no text, with and without enhanced code', () => {
    assert.equal(formatReplyCode('550', '5.7.1', []), '550 5.7.1');
    assert.equal(formatReplyCode('550', undefined, []), '550');
    assert.equal(formatReplyCode('421', '4.3.2', ['']), '421 4.3.2');
  });
  it('multi-line with enhanced code: dash on all but the last, CRLF between, none at the end', () => {
    assert.equal(
      formatReplyCode('550', '5.7.1', ['line1', 'line2', 'last']),
      '550-5.7.1 line1\r\n550-5.7.1 line2\r\n550 5.7.1 last',
    );
  });
  it('multi-line without enhanced code', () => {
    assert.equal(formatReplyCode('452', undefined, ['a', 'b']), '452-a\r\n452 b');
  });
  it('enhanced codes with 1..3 digit groups', () => {
    assert.equal(formatReplyCode('554', '5.0.0', ['x']), '554 5.0.0 x');
    assert.equal(formatReplyCode('554', '5.123.999', ['x']), '554 5.123.999 x');
    assert.equal(formatReplyCode('450', '4.12.3', ['x']), '450 4.12.3 x');
  });
  it('escaped percent and the limits themselves are accepted', () => {
    assert.equal(formatReplyCode('550', '5.7.1', ['100%% spam']), '550 5.7.1 100%% spam');
    assert.equal(formatReplyCode('550', undefined, ['%%%%']), '550 %%%%');
    const long = 'x'.repeat(MAXREPLYLEN);
    assert.equal(formatReplyCode('550', undefined, [long]), `550 ${long}`);
    const lines = Array.from({ length: MAXREPLIES }, (_, i) => `l${i}`);
    const out = formatReplyCode('550', '5.7.1', lines);
    assert.equal(out.split('\r\n').length, MAXREPLIES);
    assert.ok(out.endsWith('\r\n550 5.7.1 l31'));
    // Postfix's check: every line starts with the code and '-' or ' '.
    for (const l of out.split('\r\n')) assert.match(l, /^550[- ]/);
  });
  it('non-ASCII text is kept', () => {
    assert.equal(formatReplyCode('550', '5.7.1', ['Nachricht abgelehnt: Grüße']), '550 5.7.1 Nachricht abgelehnt: Grüße');
  });
});

describe('formatReplyCode: refusals', () => {
  it('code must be 3 digits starting with 4 or 5', () => {
    for (const code of ['250', '350', '650', '55', '5500', '5a0', ' 550', '550 ', '', '45x', '４50']) {
      refused(() => formatReplyCode(code, undefined, ['x']), /reply code/);
    }
  });
  it('enhanced code syntax', () => {
    for (const x of ['5.7', '5.7.1.1', '6.7.1', '3.0.0', '5..1', '5.1234.1', '5.1.1234', 'x.7.1', '5.7.1 ', ' 5.7.1', '5-7-1', '']) {
      refused(() => formatReplyCode('550', x, ['x']), /enhanced status code/);
    }
  });
  it('enhanced code class must equal the reply code class', () => {
    refused(() => formatReplyCode('550', '4.7.1', ['x']), /class 4.*class 5/);
    refused(() => formatReplyCode('451', '5.7.1', ['x']), /class 5.*class 4/);
    refused(() => formatReplyCode('550', '2.0.0', ['x']), /class 2/);
  });
  it('CR, LF or NUL in a line', () => {
    refused(() => formatReplyCode('550', '5.7.1', ['a\rb']), /CR, LF or NUL/);
    refused(() => formatReplyCode('550', '5.7.1', ['a\nb']), /CR, LF or NUL/);
    refused(() => formatReplyCode('550', '5.7.1', ['ok', 'a\r\n550 b']), /line 2.*CR, LF or NUL/);
    refused(() => formatReplyCode('550', '5.7.1', ['a\0b']), /CR, LF or NUL/);
  });
  it(`line longer than ${MAXREPLYLEN}`, () => {
    refused(() => formatReplyCode('550', '5.7.1', ['x'.repeat(MAXREPLYLEN + 1)]), /more than 980/);
    refused(() => formatReplyCode('550', '5.7.1', ['ok', 'x'.repeat(MAXREPLYLEN + 1)]), /line 2/);
  });
  it(`more than ${MAXREPLIES} lines`, () => {
    refused(() => formatReplyCode('550', '5.7.1', Array.from({ length: MAXREPLIES + 1 }, () => 'x')), /33 lines/);
  });
  it('lone percent', () => {
    for (const t of ['100% spam', '%', 'a%s', '%%%', 'end%']) {
      refused(() => formatReplyCode('550', '5.7.1', [t]), /lone '%'/);
    }
    refused(() => formatReplyCode('550', '5.7.1', ['ok', '50%']), /line 2.*lone '%'/);
  });
  it('an empty line in a multi-line reply', () => {
    refused(() => formatReplyCode('550', '5.7.1', ['', '']), /empty/);
    refused(() => formatReplyCode('550', '5.7.1', ['a', '']), /line 2.*empty/);
    refused(() => formatReplyCode('550', undefined, ['', 'b']), /line 1.*empty/);
  });
});

describe('checkReplyClass', () => {
  it('reject needs 5xx, tempfail needs 4xx', () => {
    assert.doesNotThrow(() => checkReplyClass('reject', '550'));
    assert.doesNotThrow(() => checkReplyClass('reject', '554'));
    assert.doesNotThrow(() => checkReplyClass('tempfail', '451'));
    assert.doesNotThrow(() => checkReplyClass('tempfail', '421'));
  });
  it('mismatches are refused', () => {
    refused(() => checkReplyClass('reject', '451'), /reject needs a 5xx/);
    refused(() => checkReplyClass('tempfail', '550'), /tempfail needs a 4xx/);
    refused(() => checkReplyClass('reject', ''), /reject/);
  });
});
