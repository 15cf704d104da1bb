/**
 * A raw message (.eml, RFC 5322) as an MTA hands it to milters: header fields with the text
 * after the colon exactly as written (folded lines joined with LF, as Postfix sends them), and
 * the body with CRLF line ends.
 * @module
 */

/** A parsed message. `raw` is the header value exactly as after the colon. */
export interface ParsedEml {
  readonly headers: ReadonlyArray<readonly [name: string, raw: string]>;
  readonly body: Uint8Array;
}

/** Splits a raw message into header fields and body. Lines may end in LF or CRLF. */
export function parseEml(input: string | Uint8Array): ParsedEml {
  const text = typeof input === 'string' ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength).toString('latin1');
  const m = /\r?\n\r?\n/.exec(text);
  const head = m === null ? text : text.slice(0, m.index);
  const bodyText = m === null ? '' : text.slice(m.index + m[0].length);
  const headers: Array<[string, string]> = [];
  for (const line of head.split(/\r?\n/)) {
    if (line === '') continue;
    if ((line.startsWith(' ') || line.startsWith('\t')) && headers.length > 0) {
      headers[headers.length - 1]![1] += `\n${line}`; // a folded continuation
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`not a header line: ${JSON.stringify(line.slice(0, 80))}`);
    headers.push([line.slice(0, colon), line.slice(colon + 1)]);
  }
  const crlf = bodyText.replace(/\r?\n/g, '\r\n');
  const enc = typeof input === 'string' ? 'utf8' : 'latin1';
  const decode = (s: string): string => (enc === 'latin1' ? Buffer.from(s, 'latin1').toString('utf8') : s);
  return {
    headers: headers.map(([n, v]) => [n, decode(v)] as const),
    body: new Uint8Array(Buffer.from(crlf, enc)),
  };
}
