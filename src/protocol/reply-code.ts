/**
 * SMTP reply text for SMFIR_REPLYCODE, validated with libmilter's smfi_setreply /
 * smfi_setmlreply rules (libmilter/smfi.c) plus what Sendmail and Postfix check on receipt,
 * so a reply an MTA would refuse or rewrite is never sent.
 * @module
 */
import { MilterdError } from '../errors.ts';
import { MAXREPLIES, MAXREPLYLEN } from './constants.ts';

/** smfi_setreply: three digits, the first 4 or 5. */
const CODE_RE = /^[45][0-9]{2}$/;
/** libmilter's myisenhsc(): class 2, 4 or 5, then two groups of 1..3 digits. */
const XCODE_RE = /^[245]\.[0-9]{1,3}\.[0-9]{1,3}$/;
/** Characters no reply line may contain: CR, LF (smfi_setreply's strpbrk) and NUL. */
const FORBIDDEN_RE = /[\r\n\0]/;

function bad(message: string, details?: Record<string, unknown>): never {
  throw new MilterdError('MILTERD_FILTER_BAD_REPLY', message, details === undefined ? undefined : { details });
}

/**
 * True if `line` has a '%' not followed by another '%'. Sendmail treats the reply as a format
 * string and replaces such a reply with "554 5.7.1 Command rejected"; "%%" is a literal '%'.
 */
function hasLonePercent(line: string): boolean {
  let i = line.indexOf('%');
  while (i >= 0) {
    if (line.charCodeAt(i + 1) !== 0x25) return true;
    i = line.indexOf('%', i + 2);
  }
  return false;
}

/**
 * Validates and formats an SMTP reply for SMFIR_REPLYCODE.
 *
 * - `code`: 3 digits, first digit 4 or 5.
 * - `xcode` (optional): `[245].\d{1,3}.\d{1,3}`, class digit equal to `code`'s first digit
 *   (Postfix checks this).
 * - `lines`: 0..MAXREPLIES (32) lines; each without CR, LF or NUL, at most MAXREPLYLEN (980)
 *   characters, no lone '%'. With more than one line, no line may be empty.
 *
 * Formats: `550 5.7.1 text`, `550 text`, `550 5.7.1`, `550`, and multi-line
 * `550-5.7.1 line1\r\n550 5.7.1 last` (no trailing CRLF). Throws MilterdError
 * MILTERD_FILTER_BAD_REPLY naming the rule broken.
 */
export function formatReplyCode(code: string, xcode: string | undefined, lines: readonly string[]): string {
  if (typeof code !== 'string' || !CODE_RE.test(code)) {
    bad(`reply code ${JSON.stringify(code)} must be 3 digits starting with 4 or 5`, { code });
  }
  if (xcode !== undefined) {
    if (typeof xcode !== 'string' || !XCODE_RE.test(xcode)) {
      bad(`enhanced status code ${JSON.stringify(xcode)} must look like 5.7.1 (class 2, 4 or 5, then 1-3 digits twice)`, { xcode });
    }
    if (xcode[0] !== code[0]) {
      bad(`enhanced status code ${xcode} has class ${xcode[0]} but reply code ${code} has class ${code[0]}`, { code, xcode });
    }
  }
  if (!Array.isArray(lines)) bad('reply text must be an array of lines');
  if (lines.length > MAXREPLIES) bad(`reply has ${lines.length} lines, more than ${MAXREPLIES}`, { lines: lines.length });
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (typeof line !== 'string') bad(`reply line ${i + 1} is not a string`, { line: i + 1 });
    if (FORBIDDEN_RE.test(line)) bad(`reply line ${i + 1} contains CR, LF or NUL`, { line: i + 1 });
    if (line.length > MAXREPLYLEN) bad(`reply line ${i + 1} is ${line.length} characters, more than ${MAXREPLYLEN}`, { line: i + 1 });
    if (hasLonePercent(line)) bad(`reply line ${i + 1} contains a lone '%' (write '%%'); Sendmail would replace the reply`, { line: i + 1 });
    if (line.length === 0 && lines.length > 1) bad(`reply line ${i + 1} of a multi-line reply is empty`, { line: i + 1 });
  }

  const prefix = xcode === undefined ? '' : xcode;
  if (lines.length <= 1) {
    const text = lines.length === 1 ? (lines[0] as string) : '';
    let out = code;
    if (prefix !== '') out += ' ' + prefix;
    if (text !== '') out += ' ' + text;
    return out;
  }
  const cont = prefix === '' ? `${code}-` : `${code}-${prefix} `;
  const last = prefix === '' ? `${code} ` : `${code} ${prefix} `;
  let out = '';
  for (let i = 0; i < lines.length - 1; i++) out += cont + (lines[i] as string) + '\r\n';
  return out + last + (lines[lines.length - 1] as string);
}

/** Expected first digit for a verdict: reject → '5', tempfail → '4'. Throws MILTERD_FILTER_BAD_REPLY on mismatch. */
export function checkReplyClass(kind: 'reject' | 'tempfail', code: string): void {
  const want = kind === 'reject' ? '5' : '4';
  if (typeof code !== 'string' || code[0] !== want) {
    bad(`a ${kind} needs a ${want}xx reply code, got ${JSON.stringify(code)}`, { kind, code });
  }
}
