/**
 * What the inspect filters (plugins/inspect, bench/filters/inspect.ts, bench/c/inspect.c) must
 * write in `X-Inspect` for a message, computed from the message text alone: the headers as a
 * milter receives them from Postfix (name, and value without the one space after the colon; the
 * lines of a folded value joined by `\n`, as Postfix sends them) and the body bytes after the
 * blank line, CRLF line ends. Postfix's own Received: header is never shown to milters, so it is
 * not in the text the test sent either.
 * @module
 */

/** One header as the MTA hands it to a milter. */
export interface MilterHeader {
  readonly name: string;
  readonly value: string;
}

/** Splits RFC 5322 text (CRLF or LF line ends) into the headers and body a milter receives from Postfix. */
export function milterView(text: string): { headers: MilterHeader[]; body: Buffer } {
  const crlf = text.replace(/\r?\n/g, '\r\n');
  const sep = crlf.indexOf('\r\n\r\n');
  const head = sep < 0 ? crlf : crlf.slice(0, sep);
  const body = sep < 0 ? '' : crlf.slice(sep + 4);
  const headers: MilterHeader[] = [];
  for (const line of head.split('\r\n')) {
    const last = headers[headers.length - 1];
    if (/^[ \t]/.test(line) && last !== undefined) {
      headers[headers.length - 1] = { name: last.name, value: `${last.value}\n${line}` };
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`not a header line: ${JSON.stringify(line)}`);
    const raw = line.slice(colon + 1);
    headers.push({ name: line.slice(0, colon), value: raw.startsWith(' ') ? raw.slice(1) : raw });
  }
  return { headers, body: Buffer.from(body, 'utf8') };
}

/** The `X-Inspect` value: header count, header bytes (UTF-8), body bytes, byte sum mod 2^32. */
export function expectedInspect(headers: readonly MilterHeader[], body: Uint8Array): string {
  let bytes = 0;
  let sum = 0;
  for (const h of headers) {
    for (const s of [h.name, h.value]) {
      const b = Buffer.from(s, 'utf8');
      bytes += b.length;
      for (const x of b) sum = (sum + x) >>> 0;
    }
  }
  for (const x of body) sum = (sum + x) >>> 0;
  return `headers=${headers.length} bytes=${bytes} body=${body.length} sum=${sum}`;
}
