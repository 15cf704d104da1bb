/**
 * Pure text formatting for `milterd test`: colours (only when asked), times, and the readable
 * unified-style diff of what the chain changed in a message (envelope, headers, body,
 * quarantine). No I/O here, so every piece is unit-tested with plain inputs.
 * @module
 */
import type { MilterReply } from '../protocol/types.ts';

/** ANSI styles; identity functions when colour is off. */
export interface Style {
  readonly bold: (s: string) => string;
  readonly dim: (s: string) => string;
  readonly red: (s: string) => string;
  readonly green: (s: string) => string;
  readonly yellow: (s: string) => string;
  readonly cyan: (s: string) => string;
  readonly magenta: (s: string) => string;
}

const sgr = (open: number, close: number) => (s: string) => `\x1b[${open}m${s}\x1b[${close}m`;
const plain = (s: string): string => s;

/** Styles with ANSI colours when `color` is true, plain text otherwise. */
export function style(color: boolean): Style {
  if (!color) return { bold: plain, dim: plain, red: plain, green: plain, yellow: plain, cyan: plain, magenta: plain };
  return { bold: sgr(1, 22), dim: sgr(2, 22), red: sgr(31, 39), green: sgr(32, 39), yellow: sgr(33, 39), cyan: sgr(36, 39), magenta: sgr(35, 39) };
}

/** Whether to colour a stream: a TTY, and NO_COLOR unset or empty (https://no-color.org). */
export function wantColor(stream: { readonly isTTY?: boolean }, env: Readonly<Record<string, string | undefined>>): boolean {
  return stream.isTTY === true && (env.NO_COLOR === undefined || env.NO_COLOR === '');
}

/** Milliseconds with one decimal: `1.25` → `1.3 ms`. */
export function formatMs(ms: number): string {
  return `${ms.toFixed(1)} ms`;
}

/** Pads to `width` characters (by string length; the texts here are ASCII or close to it). */
export function pad(s: string, width: number): string {
  return s.length >= width ? s : s + ' '.repeat(width - s.length);
}

/** Colours a verdict word by what it means for the message. */
export function verdictStyle(st: Style, verdict: string): (s: string) => string {
  switch (verdict) {
    case 'accept':
    case 'continue':
    case 'accepted':
      return st.green;
    case 'reject':
    case 'rejected':
    case 'error':
      return st.red;
    case 'tempfail':
    case 'tempfailed':
      return st.yellow;
    case 'discard':
      return st.magenta;
    default:
      return plain;
  }
}

/** Cuts a line longer than `max` characters, saying how much was cut. */
export function clip(line: string, max: number): string {
  return line.length <= max ? line : `${line.slice(0, max)}... (${line.length - max} more characters)`;
}

// --- Line diff ---------------------------------------------------------------------------

/** One line of a diff: kept (' '), removed ('-') or added ('+'). */
export interface DiffLine {
  readonly op: ' ' | '-' | '+';
  readonly text: string;
  /** 1-based line numbers in the old and new texts (old for ' ' and '-', new for ' ' and '+'). */
  readonly a: number;
  readonly b: number;
}

/** Above this many cells (changed old lines × changed new lines) no LCS: all old out, all new in. */
const LCS_MAX_CELLS = 4_000_000;

/**
 * Line diff of two sequences: common prefix and suffix first, then a longest-common-subsequence
 * of what is left (when small enough; otherwise the middle is shown as replaced). Removals come
 * before additions at the same place, so a changed line reads `- old` / `+ new`.
 */
export function diffLines(oldLines: readonly string[], newLines: readonly string[]): DiffLine[] {
  const out: DiffLine[] = [];
  let pre = 0;
  while (pre < oldLines.length && pre < newLines.length && oldLines[pre] === newLines[pre]) pre++;
  let suf = 0;
  while (suf < oldLines.length - pre && suf < newLines.length - pre && oldLines[oldLines.length - 1 - suf] === newLines[newLines.length - 1 - suf]) suf++;
  for (let i = 0; i < pre; i++) out.push({ op: ' ', text: oldLines[i]!, a: i + 1, b: i + 1 });

  const A = oldLines.slice(pre, oldLines.length - suf);
  const B = newLines.slice(pre, newLines.length - suf);
  const n = A.length;
  const m = B.length;
  if (n > 0 && m > 0 && (n + 1) * (m + 1) <= LCS_MAX_CELLS) {
    // L[i][j] = LCS length of A[i..] and B[j..]; fits 16 bits since min(n, m) < 2000 here.
    const w = m + 1;
    const L = new Uint16Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        L[i * w + j] = A[i] === B[j] ? L[(i + 1) * w + j + 1]! + 1 : Math.max(L[(i + 1) * w + j]!, L[i * w + j + 1]!);
      }
    }
    let i = 0;
    let j = 0;
    const dels: DiffLine[] = [];
    const adds: DiffLine[] = [];
    const flush = (): void => {
      out.push(...dels, ...adds);
      dels.length = 0;
      adds.length = 0;
    };
    while (i < n || j < m) {
      if (i < n && j < m && A[i] === B[j]) {
        flush();
        out.push({ op: ' ', text: A[i]!, a: pre + i + 1, b: pre + j + 1 });
        i++;
        j++;
      } else if (j >= m || (i < n && L[(i + 1) * w + j]! >= L[i * w + j + 1]!)) {
        dels.push({ op: '-', text: A[i]!, a: pre + i + 1, b: pre + j });
        i++;
      } else {
        adds.push({ op: '+', text: B[j]!, a: pre + i, b: pre + j + 1 });
        j++;
      }
    }
    flush();
  } else {
    A.forEach((t, k) => out.push({ op: '-', text: t, a: pre + k + 1, b: pre }));
    B.forEach((t, k) => out.push({ op: '+', text: t, a: pre + n, b: pre + k + 1 }));
  }
  for (let k = 0; k < suf; k++) {
    out.push({ op: ' ', text: oldLines[oldLines.length - suf + k]!, a: oldLines.length - suf + k + 1, b: newLines.length - suf + k + 1 });
  }
  return out;
}

/** A run of diff lines with its context, unified-diff style. */
export interface Hunk {
  readonly lines: readonly DiffLine[];
}

/** Groups changed lines with `context` unchanged lines around them; nearby groups merge. */
export function hunks(diff: readonly DiffLine[], context: number): Hunk[] {
  const changed = diff.flatMap((d, i) => (d.op === ' ' ? [] : [i]));
  const out: Hunk[] = [];
  let start = -1;
  let end = -1;
  for (const i of changed) {
    if (start >= 0 && i - context <= end + context + 1) {
      end = i;
      continue;
    }
    if (start >= 0) out.push({ lines: diff.slice(Math.max(0, start - context), Math.min(diff.length, end + context + 1)) });
    start = i;
    end = i;
  }
  if (start >= 0) out.push({ lines: diff.slice(Math.max(0, start - context), Math.min(diff.length, end + context + 1)) });
  return out;
}

// --- Message modifications -----------------------------------------------------------------

/** A header field as written: name, and the text after the colon exactly (folds are LF). */
export interface RawHeader {
  readonly name: string;
  readonly raw: string;
}

/** What the diff of a test run needs: the message before and after, and the MTA actions. */
export interface ModificationsInput {
  readonly before: { readonly headers: readonly RawHeader[]; readonly body: Uint8Array; readonly from: string };
  readonly after: { readonly headers: readonly RawHeader[]; readonly body: Uint8Array };
  /** The SMFIR_* actions (envelope changes and quarantine are read from them). */
  readonly actions: readonly MilterReply[];
}

/** Limits of the diff display. */
export interface DiffOptions {
  readonly color?: boolean;
  /** Unchanged header fields shown around a header change (default 1). */
  readonly headerContext?: number;
  /** Unchanged body lines shown around a body change (default 3). */
  readonly bodyContext?: number;
  /** Body diff lines shown at most; the rest is counted (default 80). */
  readonly maxBodyLines?: number;
  /** Characters per displayed line at most (default 200). */
  readonly maxLineLength?: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The body as text if it is valid UTF-8, otherwise undefined. */
export function bodyText(body: Uint8Array): string | undefined {
  try {
    return utf8.decode(body);
  } catch {
    return undefined;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** A body's lines: split on CRLF (or LF); the empty piece after a final line end is dropped. */
function bodyLines(text: string): string[] {
  const lines = text.split(/\r?\n/);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

/** Envelope changes (`MAIL FROM` / `RCPT TO`) from the actions. */
export function envelopeDiff(from: string, actions: readonly MilterReply[], st: Style = style(false)): string[] {
  const out: string[] = [];
  for (const a of actions) {
    if (a.kind === 'chgfrom') {
      out.push(st.red(`- MAIL FROM:${from}`));
      out.push(st.green(`+ MAIL FROM:${a.from}${a.args ? ` ${a.args}` : ''}`));
    } else if (a.kind === 'delrcpt') {
      out.push(st.red(`- RCPT TO:${a.rcpt}`));
    } else if (a.kind === 'addrcpt') {
      out.push(st.green(`+ RCPT TO:${a.rcpt}${a.args ? ` ${a.args}` : ''}`));
    }
  }
  return out;
}

/**
 * Header changes as a diff of the header fields, with a little context so insertions show
 * where they land. A folded field shows as its lines, each with the same mark.
 */
export function headerDiff(before: readonly RawHeader[], after: readonly RawHeader[], options: DiffOptions = {}): string[] {
  const st = style(options.color ?? false);
  const max = options.maxLineLength ?? 200;
  const field = (h: RawHeader): string => `${h.name}:${h.raw}`;
  const diff = diffLines(before.map(field), after.map(field));
  const out: string[] = [];
  const groups = hunks(diff, options.headerContext ?? 1);
  groups.forEach((g, k) => {
    const first = g.lines[0]!;
    if (k > 0 || first.a > 1 || first.b > 1) out.push(st.dim('  ...'));
    for (const d of g.lines) {
      const paint = d.op === '-' ? st.red : d.op === '+' ? st.green : plain;
      for (const line of d.text.split('\n')) out.push(paint(`${d.op} ${clip(line, max)}`));
    }
    const last = g.lines[g.lines.length - 1]!;
    if (k === groups.length - 1 && (last.a < before.length || last.b < after.length)) out.push(st.dim('  ...'));
  });
  return out;
}

/** Body changes as a unified line diff, truncated after `maxBodyLines` lines. */
export function bodyDiff(before: Uint8Array, after: Uint8Array, options: DiffOptions = {}): string[] {
  if (sameBytes(before, after)) return [];
  const st = style(options.color ?? false);
  const max = options.maxLineLength ?? 200;
  const maxLines = options.maxBodyLines ?? 80;
  const size = `${plural(before.byteLength, 'byte')} -> ${plural(after.byteLength, 'byte')}`;
  const oldText = bodyText(before);
  const newText = bodyText(after);
  if (oldText === undefined || newText === undefined) {
    return [st.bold(`body replaced (${size}; not UTF-8 text, not shown)`)];
  }
  const diff = diffLines(bodyLines(oldText), bodyLines(newText));
  const removed = diff.filter((d) => d.op === '-').length;
  const added = diff.filter((d) => d.op === '+').length;
  const out: string[] = [st.bold(`body (${size}; ${plural(removed, 'line')} removed, ${plural(added, 'line')} added):`)];
  if (removed === 0 && added === 0) {
    // Same lines, different bytes: line ends or a final line end changed.
    out.push(st.dim('  (only line endings differ)'));
    return out;
  }
  let shown = 0;
  let total = 0;
  for (const h of hunks(diff, options.bodyContext ?? 3)) {
    const first = h.lines[0]!;
    const aCount = h.lines.filter((d) => d.op !== '+').length;
    const bCount = h.lines.filter((d) => d.op !== '-').length;
    // As in unified diffs: a side with no lines gives the line before the change.
    const aStart = first.op === '+' && aCount > 0 ? first.a + 1 : first.a;
    const bStart = first.op === '-' && bCount > 0 ? first.b + 1 : first.b;
    const lines = [
      st.cyan(`@@ -${aStart},${aCount} +${bStart},${bCount} @@`),
      ...h.lines.map((d) => (d.op === '-' ? st.red : d.op === '+' ? st.green : plain)(`${d.op} ${clip(d.text, max)}`)),
    ];
    for (const l of lines) {
      total++;
      if (shown < maxLines) {
        out.push(l);
        shown++;
      }
    }
  }
  if (total > shown) out.push(st.dim(`  ... ${plural(total - shown, 'more diff line')} not shown`));
  return out;
}

/** Everything the chain changed, or `no changes`. */
export function formatModifications(input: ModificationsInput, options: DiffOptions = {}): string[] {
  const st = style(options.color ?? false);
  const out: string[] = [];
  const env = envelopeDiff(input.before.from, input.actions, st);
  if (env.length > 0) out.push(st.bold('envelope:'), ...env);
  const hdr = headerDiff(input.before.headers, input.after.headers, options);
  if (hdr.length > 0) out.push(st.bold('headers:'), ...hdr);
  out.push(...bodyDiff(input.before.body, input.after.body, options));
  for (const a of input.actions) if (a.kind === 'quarantine') out.push(`${st.bold('quarantine:')} ${st.magenta(a.reason)}`);
  return out.length === 0 ? ['no changes'] : out;
}
