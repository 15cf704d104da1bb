/**
 * The two-filter chain the Postfix and Sendmail end-to-end tests run through milterd:
 *
 * - Filter A (end of message): adds `X-Filter-A: seen`, prefixes the Subject with `[A] `
 *   (changeHeader) and appends a line to the body (replaceBody).
 * - Filter B: rejects recipients starting with `<reject` (550 5.7.1 milterd says no),
 *   tempfails recipients starting with `<tempfail` (451 4.7.1 milterd says later); at end of
 *   message rejects a body containing `REJECT-AT-EOM` (550 5.7.0 …), otherwise adds
 *   `X-Filter-B` recording what it saw of A's edits.
 *
 * Both record every hook call in `events`, for assertions on what milterd passed them.
 * @module
 */
import type { EomMessage, Filter, FilterContext, Verdict } from '../../src/chain/filter.ts';

export const BODY_APPEND = 'Appended by filter A.';
export const RCPT_REJECT_TEXT = 'milterd says no';
export const RCPT_TEMPFAIL_TEXT = 'milterd says later';
export const EOM_REJECT_TEXT = 'milterd rejects this content';
export const EOM_REJECT_MARKER = 'REJECT-AT-EOM';

/** One hook call as a filter saw it. */
export interface HookEvent {
  readonly filter: string;
  readonly hook: string;
  readonly detail: unknown;
}

function header(msg: EomMessage, name: string): string | undefined {
  return msg.headers.find((h) => h.name.toLowerCase() === name.toLowerCase())?.value;
}

/** Builds fresh filters A and B sharing one event log. */
export function makeChain(): { filterA: Filter; filterB: Filter; events: HookEvent[] } {
  const events: HookEvent[] = [];
  const rec = (filter: string, hook: string, detail: unknown): void => {
    events.push({ filter, hook, detail });
  };

  const filterA: Filter = {
    name: 'filter-a',
    actions: ['addHeader', 'changeHeader', 'replaceBody'],
    connect(ctx: FilterContext, info) {
      rec('filter-a', 'connect', { ...info, j: ctx.getSymbol('j') });
    },
    helo(_ctx, name) {
      rec('filter-a', 'helo', name);
    },
    envfrom(ctx, from) {
      rec('filter-a', 'envfrom', { ...from, i: ctx.getSymbol('i'), mailAddr: ctx.getSymbol('{mail_addr}') });
    },
    envrcpt(_ctx, rcpt) {
      rec('filter-a', 'envrcpt', rcpt);
    },
    async eom(ctx, msg) {
      const subject = header(msg, 'Subject') ?? '';
      const body = Buffer.from(await msg.body()).toString('latin1');
      rec('filter-a', 'eom', { subject, body, rcpts: ctx.rcpts.map((r) => r.address), i: ctx.getSymbol('i') });
      msg.addHeader('X-Filter-A', 'seen');
      msg.changeHeader('Subject', 1, `[A] ${subject}`);
      msg.replaceBody(`${body}${BODY_APPEND}\r\n`);
    },
    abort() {
      rec('filter-a', 'abort', null);
    },
    close() {
      rec('filter-a', 'close', null);
    },
  };

  const filterB: Filter = {
    name: 'filter-b',
    actions: ['addHeader'],
    envrcpt(_ctx, rcpt): Verdict | undefined {
      rec('filter-b', 'envrcpt', rcpt);
      const a = rcpt.address.toLowerCase();
      if (a.startsWith('<reject')) return { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: RCPT_REJECT_TEXT } };
      if (a.startsWith('<tempfail')) return { type: 'tempfail', reply: { code: '451', xcode: '4.7.1', text: RCPT_TEMPFAIL_TEXT } };
      return undefined;
    },
    async eom(ctx, msg): Promise<Verdict | undefined> {
      const subject = header(msg, 'Subject') ?? '';
      const a = header(msg, 'X-Filter-A') ?? '(none)';
      const body = Buffer.from(await msg.body()).toString('latin1');
      rec('filter-b', 'eom', { subject, a, body, rcpts: ctx.rcpts.map((r) => r.address) });
      if (body.includes(EOM_REJECT_MARKER)) {
        return { type: 'reject', reply: { code: '550', xcode: '5.7.0', text: EOM_REJECT_TEXT } };
      }
      const sawBody = body.includes(BODY_APPEND) ? 'yes' : 'no';
      msg.addHeader('X-Filter-B', `subject="${subject}"; x-filter-a="${a}"; body-edit=${sawBody}`);
      return undefined;
    },
    abort() {
      rec('filter-b', 'abort', null);
    },
  };

  return { filterA, filterB, events };
}

/** The X-Filter-B value filter B writes when it saw all of A's edits to `subject`. */
export function expectedFilterB(subject: string): string {
  return `subject="[A] ${subject}"; x-filter-a="seen"; body-edit=yes`;
}

/** Subject that makes the modifications chain also quarantine the message. */
export const QUARANTINE_SUBJECT = 'please quarantine';
export const QUARANTINE_REASON = 'held by milterd test';
/** ESMTP args of the sender change: ones both Postfix (3.7 knows only RET and ENVID) and Sendmail accept. */
export const CHGFROM_ARGS = 'RET=HDRS ENVID=milterd-test';

/**
 * A chain making every modification, for checking what a real MTA does with each: filter
 * mod-headers adds X-Added, inserts X-Inserted at index 0, changes Subject, deletes
 * X-Remove-Me and replaces the body; filter mod-envelope (after it) adds <added@example.test>,
 * adds <added-par@example.test> with NOTIFY=NEVER, deletes <deleted@example.test>, changes the
 * sender to <new-sender@example.test> with CHGFROM_ARGS, and quarantines when the Subject is
 * QUARANTINE_SUBJECT.
 */
export function makeModificationsChain(): { headers: Filter; envelope: Filter } {
  const headers: Filter = {
    name: 'mod-headers',
    actions: ['addHeader', 'changeHeader', 'replaceBody'],
    eom(_ctx, msg) {
      msg.addHeader('X-Added', 'added value');
      msg.insertHeader(0, 'X-Inserted', 'inserted at top');
      // Between two original headers: the MTA counts its own Received: (invisible to milters).
      msg.insertHeader(msg.headers.findIndex((h) => h.name === 'Subject'), 'X-Middle', 'before subject');
      const subject = header(msg, 'Subject') ?? '';
      msg.changeHeader('Subject', 1, `Changed: ${subject}`);
      msg.deleteHeader('X-Remove-Me', 1);
      msg.replaceBody('Replaced body.\r\n');
    },
  };
  const envelope: Filter = {
    name: 'mod-envelope',
    actions: ['addRcpt', 'delRcpt', 'changeFrom', 'quarantine'],
    eom(_ctx, msg) {
      msg.addRcpt('<added@example.test>');
      msg.addRcpt('<added-par@example.test>', 'NOTIFY=NEVER');
      msg.delRcpt('<deleted@example.test>');
      msg.changeFrom('<new-sender@example.test>', CHGFROM_ARGS);
      if ((header(msg, 'Subject') ?? '').endsWith(QUARANTINE_SUBJECT)) msg.quarantine(QUARANTINE_REASON);
    },
  };
  return { headers, envelope };
}

/**
 * Header edge cases: a message (raw text, CRLF, UTF-8) whose headers have no space after the
 * colon, a tab instead, an empty value, folding, duplicates and 8-bit text; a filter that
 * changes the 3rd X-Dup then deletes the 2nd (indices as it sees them after each edit), changes
 * a folded and an empty header, and adds an 8-bit and a folded header.
 */
export function headerEdgeCase(messageId: string): { data: string; filter: Filter; seen: string[][] } {
  const seen: string[][] = [];
  const data = Buffer.from(
    [
      'From: <alice@example.test>',
      'To: <bob@example.test>',
      'Subject: Edge cases',
      'X-NoSpace:tight',
      `Message-ID: <${messageId}>`,
      'X-Dup: first',
      'X-Dup: second',
      'X-Dup: third',
      'X-Folded: line one',
      '\tline two',
      'X-Empty:',
      'X-Tab:\tTabbed',
      'X-8bit: café ✓',
      '',
      'body',
      '',
    ].join('\r\n'),
    'utf8',
  ).toString('latin1'); // the SMTP client sends one byte per char
  const filter: Filter = {
    name: 'header-edges',
    actions: ['addHeader', 'changeHeader'],
    eom(_ctx, msg) {
      seen.push(msg.headers.map((h) => `${h.name}:${h.raw}`));
      msg.changeHeader('X-Dup', 3, 'third changed');
      msg.deleteHeader('X-Dup', 2);
      msg.changeHeader('X-Folded', 1, 'new\n\tfolded value');
      msg.changeHeader('X-Empty', 1, 'now set');
      msg.addHeader('X-8bit-Seen', header(msg, 'X-8bit') ?? '(none)');
      msg.addHeader('X-Multi', 'line1\n\tline2');
    },
  };
  return { data, filter, seen };
}

/** Headers (`Name:raw`, as bytes read as latin1) an MTA must deliver for headerEdgeCase, in order, MTA-added ones left out. */
export function headerEdgeExpected(messageId: string): string[] {
  const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1');
  return [
    'From: <alice@example.test>',
    'To: <bob@example.test>',
    'Subject: Edge cases',
    'X-NoSpace:tight',
    `Message-ID: <${messageId}>`,
    'X-Dup: first',
    'X-Dup: third changed',
    'X-Folded: new\n\tfolded value',
    'X-Empty: now set',
    'X-Tab:\tTabbed',
    utf8('X-8bit: café ✓'),
    utf8('X-8bit-Seen: café ✓'),
    'X-Multi: line1\n\tline2',
  ];
}

/** The headers the filter must have been given for headerEdgeCase (`Name:raw`, with HDR_LEADSPC). */
export function headerEdgeSeen(messageId: string): string[] {
  return [
    'From: <alice@example.test>',
    'To: <bob@example.test>',
    'Subject: Edge cases',
    'X-NoSpace:tight',
    `Message-ID: <${messageId}>`,
    'X-Dup: first',
    'X-Dup: second',
    'X-Dup: third',
    'X-Folded: line one\n\tline two',
    'X-Empty:',
    'X-Tab:\tTabbed',
    'X-8bit: café ✓',
  ];
}

/** Changes the tight (no space after the colon) header; milterd promises to keep its style. */
export const tightHeaderFilter: Filter = {
  name: 'tight-header',
  actions: ['changeHeader'],
  eom(_ctx, msg) {
    msg.changeHeader('X-NoSpace', 1, 'changed');
  },
};
