/**
 * The message as the chain sees it at end of message: the original (what the MTA holds) and a
 * working copy that each filter in turn edits. `diffToActions` turns the difference between
 * the two into the minimal, correctly indexed list of SMFIR_* actions for the MTA.
 *
 * Index rules, from libmilter and the MTAs:
 * - SMFIR_CHGHEADER's index is 1-based among headers of the same name (case-insensitive);
 *   an empty value deletes. We send every change first, with the indices of the message as
 *   received, then deletions from the highest index down, so no deletion can shift the index
 *   of a later action whether or not the MTA compacts its list (OpenDKIM CVE-2022-48521 came
 *   from deleting upwards).
 * - SMFIR_INSHEADER's index is 0-based, but both Postfix and Sendmail count their own
 *   Received: header, which milters never see, as the first one (Postfix's cleanup_milter.c
 *   emulates "Sendmail 8.13.6: insert 0 lands before its Received:, 1 just after it"). So we
 *   send 0 for the top of the message (above Received:, where libmilter filters that insert at
 *   0 expect it) and position + 1 for any other position. test/e2e checks both MTAs.
 * - SMFIR_ADDHEADER appends.
 * @module
 */
import { MilterdError } from '../errors.ts';
import type { MilterReply } from '../protocol/types.ts';
import type { BodyStore } from './content.ts';
import type { EnvelopeAddress, FilterAction, HeaderField } from './filter.ts';

/** A header in the working copy. `orig` is its position in the original list, or -1 if new. */
export interface WorkHeader extends HeaderField {
  readonly orig: number;
}

/** The message state that filters edit in turn. Immutable snapshots: edits copy. */
export interface MessageSnapshot {
  readonly headers: readonly WorkHeader[];
  readonly body: BodyStore;
  readonly from: EnvelopeAddress | undefined;
  readonly rcpts: readonly EnvelopeAddress[];
  /** Quarantine reason set by a filter, if any. */
  readonly quarantine: string | undefined;
}

/** Strips the one space libmilter removes after the colon ("Subject: x" → "x"). */
export function headerValue(raw: string): string {
  return raw.charCodeAt(0) === 0x20 ? raw.slice(1) : raw;
}

/** Headers the MTA counts in SMFIR_INSHEADER indices above those milters see (its Received:). */
export const MTA_HIDDEN_TOP_HEADERS = 1;

const HEADER_NAME = /^[\x21-\x39\x3b-\x7e]+$/; // RFC 5322 ftext: printable ASCII except ':'
const MAX_HEADER_BYTES = 65536 - 1024; // Sendmail breaks on a header over 64 KiB

/** Why a modification is refused: always the filter's error. */
function bad(message: string): never {
  throw new MilterdError('MILTERD_FILTER_BAD_MODIFICATION', message);
}

function checkName(name: unknown): string {
  if (typeof name !== 'string' || !HEADER_NAME.test(name)) bad(`invalid header name ${JSON.stringify(name)}`);
  return name;
}

/**
 * Normalises a header value a filter supplies: CRLF and CR become LF (Postfix stores folded
 * headers with bare LF and so expects them from milters), and every continuation line must
 * start with white space, or the value would inject new headers.
 */
function checkValue(name: string, value: unknown): string {
  if (typeof value !== 'string') bad(`header ${name}: value must be a string`);
  if (value.includes('\0')) bad(`header ${name}: value contains NUL`);
  const v = value.includes('\r') ? value.replace(/\r\n?/g, '\n') : value;
  if (v.includes('\n')) {
    for (let i = v.indexOf('\n'); i !== -1; i = v.indexOf('\n', i + 1)) {
      const next = v.charCodeAt(i + 1);
      if (next !== 0x20 && next !== 0x09) bad(`header ${name}: continuation line must start with a space or tab`);
    }
  }
  if (Buffer.byteLength(name) + Buffer.byteLength(v) > MAX_HEADER_BYTES) bad(`header ${name}: longer than 63 KiB`);
  return v;
}

function checkAddress(what: string, addr: unknown): string {
  if (typeof addr !== 'string' || addr.length === 0) bad(`${what}: address must be a non-empty string`);
  if (/[\0\r\n]/.test(addr)) bad(`${what}: address contains NUL, CR or LF`);
  return addr;
}

function checkArgs(what: string, args: unknown): string | undefined {
  if (args === undefined || args === '') return undefined;
  if (typeof args !== 'string' || /[\0\r\n]/.test(args)) bad(`${what}: ESMTP args must be a string without NUL, CR or LF`);
  return args;
}

/** Address without angle brackets, for matching recipients. */
function bare(addr: string): string {
  return addr.startsWith('<') && addr.endsWith('>') ? addr.slice(1, -1) : addr;
}

function sameName(a: string, b: string): boolean {
  return a.length === b.length && a.toLowerCase() === b.toLowerCase();
}

/**
 * One filter's edits at end of message, applied to a private copy as they are made (so a
 * filter's second edit sees its first, as at the MTA) and committed only if the filter ends
 * well. A filter that fails leaves the message as the filters before it left it.
 */
export class MessageEditor {
  headers: WorkHeader[];
  rcpts: EnvelopeAddress[];
  from: EnvelopeAddress | undefined;
  body: BodyStore | Uint8Array;
  quarantine: string | undefined;
  readonly #allowed: ReadonlySet<FilterAction>;
  readonly #negotiated: ReadonlySet<FilterAction>;
  readonly #addRcptArgs: boolean;
  #touched = false;
  /** Set when the filter's call ended (or timed out): late edits are refused. */
  closed = false;

  constructor(
    base: MessageSnapshot,
    allowed: ReadonlySet<FilterAction>,
    negotiated: ReadonlySet<FilterAction>,
    addRcptArgs: boolean,
  ) {
    this.headers = base.headers as WorkHeader[];
    this.rcpts = base.rcpts as EnvelopeAddress[];
    this.from = base.from;
    this.body = base.body;
    this.quarantine = base.quarantine;
    this.#allowed = allowed;
    this.#negotiated = negotiated;
    this.#addRcptArgs = addRcptArgs;
  }

  /** Checks the filter declared the action and the MTA granted it. */
  #may(action: FilterAction): void {
    if (this.closed) bad(`${action} after the end-of-message hook returned or timed out`);
    if (!this.#allowed.has(action)) {
      bad(`action ${action} is not declared by this filter`);
    }
    if (!this.#negotiated.has(action)) {
      throw new MilterdError(
        'MILTERD_FILTER_ACTION_NOT_NEGOTIATED',
        `action ${action} was not offered by the MTA in negotiation`,
      );
    }
    if (!this.#touched) {
      // Copy on first write: snapshots stay immutable for the filters before us.
      this.#touched = true;
      this.headers = this.headers.slice();
      this.rcpts = this.rcpts.slice();
    }
  }

  addHeader(name: string, value: string): void {
    this.#may('addHeader');
    const n = checkName(name);
    const v = checkValue(n, value);
    this.headers.push({ name: n, value: v, raw: ` ${v}`, orig: -1 });
  }

  insertHeader(index: number, name: string, value: string): void {
    this.#may('addHeader');
    if (!Number.isSafeInteger(index) || index < 0) bad(`insertHeader: index must be an integer >= 0, got ${index}`);
    const n = checkName(name);
    const v = checkValue(n, value);
    this.headers.splice(Math.min(index, this.headers.length), 0, { name: n, value: v, raw: ` ${v}`, orig: -1 });
  }

  changeHeader(name: string, index: number, value: string): void {
    this.#may('changeHeader');
    if (!Number.isSafeInteger(index) || index < 1) bad(`changeHeader: index must be an integer >= 1, got ${index}`);
    const n = checkName(name);
    const v = value === '' || value === undefined || value === null ? '' : checkValue(n, value);
    let seen = 0;
    const at = this.headers.findIndex((h) => sameName(h.name, n) && ++seen === index);
    if (at === -1) {
      // As Sendmail does: changing a header that is not there adds it; deleting it is a no-op.
      if (v !== '') this.headers.push({ name: n, value: v, raw: ` ${v}`, orig: -1 });
      return;
    }
    if (v === '') {
      this.headers.splice(at, 1);
      return;
    }
    const old = this.headers[at]!;
    // Keep the original's leading white space style ("Subject:x" stays without a space); an
    // originally empty value gets the usual one space.
    const ws = /^[ \t]*/.exec(old.raw)![0];
    const lead = ws === '' && old.raw.length > 0 ? '' : ws || ' ';
    this.headers[at] = { name: old.name, value: v, raw: lead + v, orig: old.orig };
  }

  deleteHeader(name: string, index: number): void {
    this.changeHeader(name, index, '');
  }

  addRcpt(rcpt: string, args?: string): void {
    this.#may('addRcpt');
    const a = checkAddress('addRcpt', rcpt);
    const x = checkArgs('addRcpt', args);
    if (x !== undefined && !this.#addRcptArgs) {
      throw new MilterdError(
        'MILTERD_FILTER_ACTION_NOT_NEGOTIATED',
        'addRcpt with ESMTP args needs SMFIF_ADDRCPT_PAR, which the MTA did not offer',
      );
    }
    this.rcpts.push({ address: a, args: x === undefined ? [] : x.split(' ') });
  }

  delRcpt(rcpt: string): void {
    this.#may('delRcpt');
    const a = bare(checkAddress('delRcpt', rcpt)).toLowerCase();
    this.rcpts = this.rcpts.filter((r) => bare(r.address).toLowerCase() !== a);
  }

  changeFrom(from: string, args?: string): void {
    this.#may('changeFrom');
    const a = checkAddress('changeFrom', from);
    const x = checkArgs('changeFrom', args);
    this.from = { address: a, args: x === undefined ? [] : x.split(' ') };
  }

  replaceBody(body: Uint8Array | string): void {
    this.#may('replaceBody');
    if (typeof body === 'string') this.body = Buffer.from(body, 'utf8');
    else if (body instanceof Uint8Array) this.body = body;
    else bad('replaceBody: body must be a Uint8Array or a string');
  }

  setQuarantine(reason: string): void {
    this.#may('quarantine');
    if (typeof reason !== 'string' || reason.length === 0 || /[\0\r\n]/.test(reason)) {
      bad('quarantine: reason must be a non-empty single-line string');
    }
    this.quarantine = reason;
  }
}

/** What the MTA can apply, as negotiated. */
export interface DiffOptions {
  /** SMFIP_HDR_LEADSPC was negotiated: header values go out exactly as stored (with their leading space). */
  readonly leadingSpace: boolean;
}

function argsString(a: EnvelopeAddress): string {
  return a.args.join(' ');
}

/**
 * The minimal action list that turns `orig` into `final` at the MTA (headers, envelope,
 * quarantine; the body is handled by the caller since reading it may be asynchronous).
 */
export function diffToActions(orig: MessageSnapshot, final: MessageSnapshot, opts: DiffOptions): MilterReply[] {
  const out: MilterReply[] = [];
  const wire = (h: HeaderField): string => (opts.leadingSpace ? h.raw : h.value);

  // 1. Sender.
  if (final.from !== undefined && orig.from !== undefined) {
    if (final.from.address !== orig.from.address || argsString(final.from) !== argsString(orig.from)) {
      const args = argsString(final.from);
      out.push(args === '' ? { kind: 'chgfrom', from: final.from.address } : { kind: 'chgfrom', from: final.from.address, args });
    }
  }

  // 2. Recipients: deletions, then additions (a re-added recipient with new args is both).
  const key = (r: EnvelopeAddress): string => `${bare(r.address).toLowerCase()}\0${argsString(r)}`;
  const finalKeys = new Set(final.rcpts.map(key));
  const origKeys = new Set(orig.rcpts.map(key));
  for (const r of orig.rcpts) if (!finalKeys.has(key(r))) out.push({ kind: 'delrcpt', rcpt: r.address });
  for (const r of final.rcpts) {
    if (origKeys.has(key(r))) continue;
    const args = argsString(r);
    out.push(args === '' ? { kind: 'addrcpt', rcpt: r.address } : { kind: 'addrcpt', rcpt: r.address, args });
  }

  // 3. Headers. Occurrence index (1-based, per name) of every original header.
  const occurrence: number[] = [];
  const counts = new Map<string, number>();
  for (const h of orig.headers) {
    const k = h.name.toLowerCase();
    const n = (counts.get(k) ?? 0) + 1;
    counts.set(k, n);
    occurrence.push(n);
  }
  const kept = new Array<boolean>(orig.headers.length).fill(false);
  for (const h of final.headers) {
    if (h.orig < 0) continue;
    kept[h.orig] = true;
    const o = orig.headers[h.orig]!;
    if (h.raw !== o.raw) out.push({ kind: 'chgheader', index: occurrence[h.orig]!, name: o.name, value: wire(h) });
  }
  // Deletions from the highest occurrence down.
  const deletions: number[] = [];
  for (let i = 0; i < orig.headers.length; i++) if (!kept[i]) deletions.push(i);
  deletions.sort((a, b) => occurrence[b]! - occurrence[a]! || b - a);
  for (const i of deletions) out.push({ kind: 'chgheader', index: occurrence[i]!, name: orig.headers[i]!.name, value: '' });

  // New headers: after the last kept original they are appended in order; before it they are
  // inserted at their final position (everything above them is already in place by then).
  let lastKept = -1;
  for (let f = 0; f < final.headers.length; f++) if (final.headers[f]!.orig >= 0) lastKept = f;
  for (let f = 0; f < final.headers.length; f++) {
    const h = final.headers[f]!;
    if (h.orig >= 0) continue;
    if (f > lastKept) out.push({ kind: 'addheader', name: h.name, value: wire(h) });
    else out.push({ kind: 'insheader', index: f === 0 ? 0 : f + MTA_HIDDEN_TOP_HEADERS, name: h.name, value: wire(h) });
  }

  // 4. Quarantine.
  if (final.quarantine !== undefined && final.quarantine !== orig.quarantine) {
    out.push({ kind: 'quarantine', reason: final.quarantine });
  }
  return out;
}

/** One edit, short, for a log line. */
export function describeEdit(a: MilterReply): string {
  switch (a.kind) {
    case 'addheader':
      return `add header ${a.name}: ${a.value.trimStart().slice(0, 80)}`;
    case 'insheader':
      return `insert header ${a.name} at ${a.index}: ${a.value.trimStart().slice(0, 80)}`;
    case 'chgheader':
      return a.value === '' ? `delete header ${a.name} #${a.index}` : `change header ${a.name} #${a.index}: ${a.value.trimStart().slice(0, 80)}`;
    case 'addrcpt':
      return `add recipient ${a.rcpt}${a.args ? ` ${a.args}` : ''}`;
    case 'delrcpt':
      return `delete recipient ${a.rcpt}`;
    case 'chgfrom':
      return `change sender to ${a.from}${a.args ? ` ${a.args}` : ''}`;
    case 'replbody':
      return 'replace body';
    case 'quarantine':
      return `quarantine: ${a.reason}`;
    default:
      return a.kind;
  }
}
