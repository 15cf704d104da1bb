/**
 * MessageEditor and diffToActions: a filter's edits on its working copy, and the minimal,
 * correctly indexed SMFIR_* action list that turns the original into the final message.
 *
 * Index rules checked here (src/chain/message.ts): CHGHEADER is 1-based per header name
 * (case-insensitive) in the message as received; value changes first, then deletions from
 * the highest index down (OpenDKIM CVE-2022-48521); INSHEADER carries the header's 0-based
 * final position; ADDHEADER appends in order.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MilterdError, type ErrorCode } from '../../../src/errors.ts';
import { BodyStore } from '../../../src/chain/content.ts';
import type { EnvelopeAddress, FilterAction } from '../../../src/chain/filter.ts';
import { MessageEditor, diffToActions, headerValue, type MessageSnapshot, type WorkHeader } from '../../../src/chain/message.ts';
import type { MilterReply } from '../../../src/protocol/types.ts';

const ALL_ACTIONS: readonly FilterAction[] = [
  'addHeader',
  'changeHeader',
  'replaceBody',
  'addRcpt',
  'delRcpt',
  'changeFrom',
  'quarantine',
];

/** Original headers as the session builds them without HDR_LEADSPC: raw = ' ' + value. */
function headers(list: ReadonlyArray<readonly [string, string]>): WorkHeader[] {
  return list.map(([name, value], i) => ({ name, value, raw: ` ${value}`, orig: i }));
}

function addr(address: string, ...args: string[]): EnvelopeAddress {
  return { address, args };
}

function snapshot(over: Partial<MessageSnapshot> = {}): MessageSnapshot {
  return {
    headers: over.headers ?? headers([]),
    body: over.body ?? new BodyStore({ memoryLimit: 1 << 20 }),
    from: 'from' in over ? over.from : addr('<sender@example.org>'),
    rcpts: over.rcpts ?? [addr('<rcpt@example.net>')],
    quarantine: over.quarantine,
  };
}

interface EditorOptions {
  allowed?: readonly FilterAction[];
  negotiated?: readonly FilterAction[];
  addRcptArgs?: boolean;
}

function editor(base: MessageSnapshot, o: EditorOptions = {}): MessageEditor {
  return new MessageEditor(base, new Set(o.allowed ?? ALL_ACTIONS), new Set(o.negotiated ?? ALL_ACTIONS), o.addRcptArgs ?? true);
}

/** The editor's state as the next snapshot (the body is not part of the diff). */
function finalOf(ed: MessageEditor, base: MessageSnapshot): MessageSnapshot {
  return { headers: ed.headers, rcpts: ed.rcpts, from: ed.from, body: base.body, quarantine: ed.quarantine };
}

/** Runs `edit` on a fresh editor over `base` and returns the action list. */
function diff(base: MessageSnapshot, edit: (ed: MessageEditor) => void, leadingSpace = false): MilterReply[] {
  const ed = editor(base);
  edit(ed);
  return diffToActions(base, finalOf(ed, base), { leadingSpace });
}

function throwsCode(fn: () => unknown, code: ErrorCode, mentions?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MilterdError, `expected MilterdError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (mentions !== undefined) assert.match(err.message, mentions);
    return true;
  });
}

describe('headerValue', () => {
  it('strips exactly one leading space', () => {
    assert.equal(headerValue(' x'), 'x');
    assert.equal(headerValue('  x'), ' x');
    assert.equal(headerValue('x'), 'x');
    assert.equal(headerValue('\tx'), '\tx');
    assert.equal(headerValue(''), '');
  });
});

describe('diffToActions: headers', () => {
  const received = headers([
    ['Received', 'r1'],
    ['From', 'a@example.org'],
    ['received', 'r2'],
    ['Subject', 'hello'],
    ['RECEIVED', 'r3'],
    ['To', 'b@example.net'],
  ]);

  it('an unchanged message gives no actions', () => {
    assert.deepEqual(diff(snapshot({ headers: received }), () => {}), []);
  });

  it('changing a header to its current value gives no actions', () => {
    assert.deepEqual(
      diff(snapshot({ headers: received }), (ed) => ed.changeHeader('Subject', 1, 'hello')),
      [],
    );
  });

  it('change of an original header: one chgheader with its 1-based per-name index (names case-insensitive)', () => {
    const base = snapshot({ headers: received });
    assert.deepEqual(
      diff(base, (ed) => ed.changeHeader('RECEIVED', 2, 'new r2')),
      [{ kind: 'chgheader', index: 2, name: 'received', value: 'new r2' }],
    );
    assert.deepEqual(
      diff(base, (ed) => ed.changeHeader('received', 3, 'new r3')),
      [{ kind: 'chgheader', index: 3, name: 'RECEIVED', value: 'new r3' }],
    );
    assert.deepEqual(
      diff(base, (ed) => ed.changeHeader('subject', 1, 'bye')),
      [{ kind: 'chgheader', index: 1, name: 'Subject', value: 'bye' }],
    );
  });

  it('the working copy reflects the change, keeping name, raw and orig', () => {
    const base = snapshot({ headers: received });
    const ed = editor(base);
    ed.changeHeader('received', 2, 'x');
    assert.deepEqual(ed.headers[2], { name: 'received', value: 'x', raw: ' x', orig: 2 });
    // The original snapshot is not mutated (copy on first write).
    assert.deepEqual(base.headers[2], { name: 'received', value: 'r2', raw: ' r2', orig: 2 });
    assert.notEqual(ed.headers, base.headers);
  });

  it('deleting several same-name headers: highest index first, after all value changes', () => {
    const base = snapshot({ headers: received });
    const actions = diff(base, (ed) => {
      ed.deleteHeader('Received', 1); // r1; r2 is now #1, r3 #2
      ed.changeHeader('Subject', 1, 'changed');
      ed.deleteHeader('Received', 2); // r3
      ed.changeHeader('To', 1, 'c@example.net');
    });
    assert.deepEqual(actions, [
      { kind: 'chgheader', index: 1, name: 'Subject', value: 'changed' },
      { kind: 'chgheader', index: 1, name: 'To', value: 'c@example.net' },
      { kind: 'chgheader', index: 3, name: 'RECEIVED', value: '' },
      { kind: 'chgheader', index: 1, name: 'Received', value: '' },
    ]);
  });

  it('deleting every same-name header, in any order, still goes 3, 2, 1', () => {
    const base = snapshot({ headers: received });
    const actions = diff(base, (ed) => {
      ed.deleteHeader('received', 2);
      ed.deleteHeader('received', 1);
      ed.deleteHeader('received', 1);
    });
    assert.deepEqual(
      actions.map((a) => (a.kind === 'chgheader' ? [a.index, a.name, a.value] : a.kind)),
      [
        [3, 'RECEIVED', ''],
        [2, 'received', ''],
        [1, 'Received', ''],
      ],
    );
  });

  it('a change of one same-name header and the deletion of another: change with the as-received index first', () => {
    const base = snapshot({ headers: received });
    const actions = diff(base, (ed) => {
      ed.deleteHeader('Received', 1); // r1
      ed.changeHeader('Received', 2, 'R3'); // now #2 is r3, which was #3 as received
    });
    assert.deepEqual(actions, [
      { kind: 'chgheader', index: 3, name: 'RECEIVED', value: 'R3' },
      { kind: 'chgheader', index: 1, name: 'Received', value: '' },
    ]);
  });

  it('new headers at the end: addheader in order', () => {
    const base = snapshot({ headers: received });
    assert.deepEqual(
      diff(base, (ed) => {
        ed.addHeader('X-One', '1');
        ed.addHeader('X-Two', '2');
        ed.insertHeader(99, 'X-Three', '3'); // past the end: appended
      }),
      [
        { kind: 'addheader', name: 'X-One', value: '1' },
        { kind: 'addheader', name: 'X-Two', value: '2' },
        { kind: 'addheader', name: 'X-Three', value: '3' },
      ],
    );
  });

  it('inserts above originals get insheader (0 = top, else final position + the MTA\'s hidden Received:); appends stay addheader', () => {
    const base = snapshot({
      headers: headers([
        ['From', 'a'],
        ['Received', 'r1'],
        ['Subject', 's'],
        ['Received', 'r2'],
        ['To', 't'],
      ]),
    });
    const ed = editor(base);
    ed.addHeader('X-End', 'e1');
    ed.insertHeader(0, 'X-Top', 'top'); // [X-Top, From, Received, Subject, Received, To, X-End]
    ed.insertHeader(3, 'X-Mid', 'mid'); // [X-Top, From, Received, X-Mid, Subject, Received, To, X-End]
    ed.changeHeader('received', 2, 'R2');
    ed.addHeader('X-End2', 'e2');
    assert.deepEqual(
      ed.headers.map((h) => h.name),
      ['X-Top', 'From', 'Received', 'X-Mid', 'Subject', 'Received', 'To', 'X-End', 'X-End2'],
    );
    assert.deepEqual(diffToActions(base, finalOf(ed, base), { leadingSpace: false }), [
      { kind: 'chgheader', index: 2, name: 'Received', value: 'R2' },
      { kind: 'insheader', index: 0, name: 'X-Top', value: 'top' },
      { kind: 'insheader', index: 4, name: 'X-Mid', value: 'mid' },
      { kind: 'addheader', name: 'X-End', value: 'e1' },
      { kind: 'addheader', name: 'X-End2', value: 'e2' },
    ]);
  });

  it('an insert index is the position after deletions (deletions are sent before inserts), + 1 for the hidden Received:', () => {
    const base = snapshot({
      headers: headers([
        ['A', 'a'],
        ['B', 'b'],
        ['C', 'c'],
      ]),
    });
    assert.deepEqual(
      diff(base, (ed) => {
        ed.deleteHeader('B', 1); // [A, C]
        ed.insertHeader(1, 'X', 'x'); // [A, X, C]
        ed.insertHeader(1, 'Y', 'y'); // [A, Y, X, C]
      }),
      [
        { kind: 'chgheader', index: 1, name: 'B', value: '' },
        { kind: 'insheader', index: 2, name: 'Y', value: 'y' },
        { kind: 'insheader', index: 3, name: 'X', value: 'x' },
      ],
    );
  });

  it('inserts below the last original become addheader', () => {
    const base = snapshot({ headers: headers([['A', 'a']]) });
    assert.deepEqual(
      diff(base, (ed) => ed.insertHeader(1, 'X', 'x')),
      [{ kind: 'addheader', name: 'X', value: 'x' }],
    );
  });

  it('a header added and then changed by the same filter is one addheader with the final value', () => {
    const base = snapshot({ headers: headers([['A', 'a']]) });
    assert.deepEqual(
      diff(base, (ed) => {
        ed.addHeader('X-Score', '1');
        ed.changeHeader('x-score', 1, '2');
      }),
      [{ kind: 'addheader', name: 'X-Score', value: '2' }],
    );
  });

  it('a header added and then deleted leaves no action', () => {
    const base = snapshot({ headers: headers([['A', 'a']]) });
    assert.deepEqual(
      diff(base, (ed) => {
        ed.addHeader('X-Tmp', '1');
        ed.deleteHeader('X-Tmp', 1);
      }),
      [],
    );
  });

  it('changeHeader on a missing header adds it; deleting a missing one is a no-op', () => {
    const base = snapshot({ headers: headers([['Subject', 's']]) });
    assert.deepEqual(
      diff(base, (ed) => ed.changeHeader('X-New', 1, 'v')),
      [{ kind: 'addheader', name: 'X-New', value: 'v' }],
    );
    assert.deepEqual(
      diff(base, (ed) => ed.changeHeader('Subject', 2, 'second')),
      [{ kind: 'addheader', name: 'Subject', value: 'second' }],
    );
    const ed = editor(base);
    ed.deleteHeader('X-Missing', 1);
    ed.deleteHeader('Subject', 2);
    ed.changeHeader('Subject', 3, '');
    assert.deepEqual(ed.headers, base.headers);
    assert.deepEqual(diffToActions(base, finalOf(ed, base), { leadingSpace: false }), []);
  });

  it('a header changed then deleted gives only the deletion', () => {
    const base = snapshot({
      headers: headers([
        ['Subject', 's'],
        ['To', 't'],
      ]),
    });
    assert.deepEqual(
      diff(base, (ed) => {
        ed.changeHeader('Subject', 1, 'x');
        ed.deleteHeader('Subject', 1);
      }),
      [{ kind: 'chgheader', index: 1, name: 'Subject', value: '' }],
    );
  });

  it('changeHeader index counts the working copy, including headers added earlier', () => {
    const base = snapshot({ headers: headers([['X-A', 'orig']]) });
    const ed = editor(base);
    ed.insertHeader(0, 'X-A', 'new');
    ed.changeHeader('X-A', 2, 'orig changed'); // #2 is now the original
    assert.deepEqual(diffToActions(base, finalOf(ed, base), { leadingSpace: false }), [
      { kind: 'chgheader', index: 1, name: 'X-A', value: 'orig changed' },
      { kind: 'insheader', index: 0, name: 'X-A', value: 'new' },
    ]);
  });
});

describe('diffToActions: leading space (SMFIP_HDR_LEADSPC)', () => {
  // With HDR_LEADSPC the session keeps the raw text after the colon.
  const base = snapshot({
    headers: [
      { name: 'Subject', value: 'hi', raw: ' hi', orig: 0 },
      { name: 'X-Tab', value: '\tfolded', raw: '\tfolded', orig: 1 },
      { name: 'X-None', value: 'tight', raw: 'tight', orig: 2 },
    ],
  });
  const edit = (ed: MessageEditor): void => {
    ed.changeHeader('Subject', 1, 'new');
    ed.changeHeader('X-Tab', 1, 'tabbed');
    ed.changeHeader('X-None', 1, 'still tight');
    ed.addHeader('X-Added', 'v');
    ed.insertHeader(0, 'X-Ins', 'w');
  };

  it('leadingSpace true sends raw, with the original leading white space style', () => {
    assert.deepEqual(diff(base, edit, true), [
      { kind: 'chgheader', index: 1, name: 'Subject', value: ' new' },
      { kind: 'chgheader', index: 1, name: 'X-Tab', value: '\ttabbed' },
      { kind: 'chgheader', index: 1, name: 'X-None', value: 'still tight' },
      { kind: 'insheader', index: 0, name: 'X-Ins', value: ' w' },
      { kind: 'addheader', name: 'X-Added', value: ' v' },
    ]);
  });

  it('leadingSpace false sends the value without it', () => {
    assert.deepEqual(diff(base, edit, false), [
      { kind: 'chgheader', index: 1, name: 'Subject', value: 'new' },
      { kind: 'chgheader', index: 1, name: 'X-Tab', value: 'tabbed' },
      { kind: 'chgheader', index: 1, name: 'X-None', value: 'still tight' },
      { kind: 'insheader', index: 0, name: 'X-Ins', value: 'w' },
      { kind: 'addheader', name: 'X-Added', value: 'v' },
    ]);
  });

  it('the editor keeps the original leading white space in raw', () => {
    const ed = editor(base);
    ed.changeHeader('X-Tab', 1, 'tabbed');
    assert.deepEqual(ed.headers[1], { name: 'X-Tab', value: 'tabbed', raw: '\ttabbed', orig: 1 });
  });
});

describe('MessageEditor: header validation', () => {
  const base = snapshot({ headers: headers([['Subject', 's']]) });
  const bad = 'MILTERD_FILTER_BAD_MODIFICATION' as const;

  it('refuses names with a colon, a space, control or non-ASCII characters, or empty', () => {
    for (const name of ['X:Y', 'X Y', 'X\tY', '', 'X\nY', 'Xé', 'X\0']) {
      throwsCode(() => editor(base).addHeader(name, 'v'), bad, /invalid header name/);
      throwsCode(() => editor(base).insertHeader(0, name, 'v'), bad, /invalid header name/);
      throwsCode(() => editor(base).changeHeader(name, 1, 'v'), bad, /invalid header name/);
    }
  });

  it('accepts every printable ASCII character except the colon in a name', () => {
    const name = Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => String.fromCharCode(0x21 + i))
      .filter((c) => c !== ':')
      .join('');
    const ed = editor(base);
    ed.addHeader(name, 'v');
    assert.equal(ed.headers.at(-1)!.name, name);
  });

  it('refuses a NUL in a value', () => {
    throwsCode(() => editor(base).addHeader('X-A', 'a\0b'), bad, /NUL/);
    throwsCode(() => editor(base).changeHeader('Subject', 1, 'a\0b'), bad, /NUL/);
    throwsCode(() => editor(base).insertHeader(0, 'X-A', '\0'), bad, /NUL/);
  });

  it('refuses a continuation line without leading white space (header injection)', () => {
    for (const v of ['a\nX-Injected: 1', 'a\r\nX-Injected: 1', 'a\rX-Injected: 1', 'a\n', 'a\n\nbody']) {
      throwsCode(() => editor(base).addHeader('X-A', v), bad, /continuation line/);
      throwsCode(() => editor(base).changeHeader('Subject', 1, v), bad, /continuation line/);
    }
  });

  it('normalises CRLF and CR in folded values to LF', () => {
    const ed = editor(base);
    ed.addHeader('X-Folded', 'a\r\n\tb\r c\n d');
    assert.deepEqual(ed.headers.at(-1), { name: 'X-Folded', value: 'a\n\tb\n c\n d', raw: ' a\n\tb\n c\n d', orig: -1 });
    assert.deepEqual(diffToActions(base, finalOf(ed, base), { leadingSpace: false }), [
      { kind: 'addheader', name: 'X-Folded', value: 'a\n\tb\n c\n d' },
    ]);
  });

  it('refuses a header of 63 KiB or more and accepts one just below', () => {
    throwsCode(() => editor(base).addHeader('X-Big', 'x'.repeat(65536 - 1024)), bad, /63 KiB/);
    const ed = editor(base);
    ed.addHeader('X-Big', 'x'.repeat(65536 - 1024 - 'X-Big'.length));
    assert.equal(ed.headers.length, 2);
  });

  it('refuses bad indices', () => {
    throwsCode(() => editor(base).changeHeader('Subject', 0, 'x'), bad, /index/);
    throwsCode(() => editor(base).changeHeader('Subject', 1.5, 'x'), bad, /index/);
    throwsCode(() => editor(base).insertHeader(-1, 'X', 'x'), bad, /index/);
    throwsCode(() => editor(base).insertHeader(Number.NaN, 'X', 'x'), bad, /index/);
  });

  it('a refused edit leaves the working copy as it was', () => {
    const ed = editor(base);
    assert.throws(() => ed.addHeader('X-A', 'a\nb'));
    assert.deepEqual(ed.headers, base.headers);
  });
});

describe('MessageEditor: declared and negotiated actions', () => {
  const base = snapshot({ headers: headers([['Subject', 's']]) });
  const calls: ReadonlyArray<readonly [FilterAction, (ed: MessageEditor) => void]> = [
    ['addHeader', (ed) => ed.addHeader('X', 'v')],
    ['addHeader', (ed) => ed.insertHeader(0, 'X', 'v')],
    ['changeHeader', (ed) => ed.changeHeader('Subject', 1, 'v')],
    ['changeHeader', (ed) => ed.deleteHeader('Subject', 1)],
    ['replaceBody', (ed) => ed.replaceBody('new')],
    ['addRcpt', (ed) => ed.addRcpt('<x@example.net>')],
    ['delRcpt', (ed) => ed.delRcpt('<rcpt@example.net>')],
    ['changeFrom', (ed) => ed.changeFrom('<x@example.org>')],
    ['quarantine', (ed) => ed.setQuarantine('why')],
  ];

  for (const [action, call] of calls) {
    it(`${action}: not declared → MILTERD_FILTER_BAD_MODIFICATION`, () => {
      const allowed = ALL_ACTIONS.filter((a) => a !== action);
      throwsCode(() => call(editor(base, { allowed })), 'MILTERD_FILTER_BAD_MODIFICATION', new RegExp(`${action} is not declared`));
    });
    it(`${action}: declared but not negotiated → MILTERD_FILTER_ACTION_NOT_NEGOTIATED`, () => {
      const negotiated = ALL_ACTIONS.filter((a) => a !== action);
      throwsCode(() => call(editor(base, { negotiated })), 'MILTERD_FILTER_ACTION_NOT_NEGOTIATED');
    });
    it(`${action}: declared and negotiated → allowed`, () => {
      const ed = editor(base, { allowed: [action], negotiated: [action] });
      call(ed);
    });
  }

  it('addRcpt with ESMTP args without ADDRCPT_PAR → not negotiated; without args it is fine', () => {
    throwsCode(
      () => editor(base, { addRcptArgs: false }).addRcpt('<x@example.net>', 'NOTIFY=NEVER'),
      'MILTERD_FILTER_ACTION_NOT_NEGOTIATED',
      /ADDRCPT_PAR/,
    );
    const ed = editor(base, { addRcptArgs: false });
    ed.addRcpt('<x@example.net>');
    ed.addRcpt('<y@example.net>', ''); // empty args = none
    assert.deepEqual(ed.rcpts.slice(1), [addr('<x@example.net>'), addr('<y@example.net>')]);
  });

  it('edits after closed = true are refused', () => {
    const ed = editor(base);
    ed.addHeader('X-Before', '1');
    ed.closed = true;
    for (const [, call] of calls) throwsCode(() => call(ed), 'MILTERD_FILTER_BAD_MODIFICATION', /after the end-of-message hook/);
    assert.deepEqual(
      ed.headers.map((h) => h.name),
      ['Subject', 'X-Before'],
    );
  });
});

describe('diffToActions: envelope and quarantine', () => {
  const base = snapshot({
    from: addr('<sender@example.org>'),
    rcpts: [addr('<a@example.net>'), addr('<B@Example.NET>', 'NOTIFY=NEVER'), addr('c@example.net')],
  });

  it('delete recipients with or without angle brackets, case-insensitively; the MTA gets its own spelling', () => {
    assert.deepEqual(
      diff(base, (ed) => {
        ed.delRcpt('a@example.net');
        ed.delRcpt('<b@example.net>');
        ed.delRcpt('<C@EXAMPLE.NET>');
      }),
      [
        { kind: 'delrcpt', rcpt: '<a@example.net>' },
        { kind: 'delrcpt', rcpt: '<B@Example.NET>' },
        { kind: 'delrcpt', rcpt: 'c@example.net' },
      ],
    );
  });

  it('deleting a recipient that is not there is a no-op', () => {
    assert.deepEqual(
      diff(base, (ed) => ed.delRcpt('<nobody@example.net>')),
      [],
    );
  });

  it('add recipients, with and without args', () => {
    assert.deepEqual(
      diff(base, (ed) => {
        ed.addRcpt('<d@example.net>');
        ed.addRcpt('<e@example.net>', 'NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;e@example.net');
      }),
      [
        { kind: 'addrcpt', rcpt: '<d@example.net>' },
        { kind: 'addrcpt', rcpt: '<e@example.net>', args: 'NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;e@example.net' },
      ],
    );
  });

  it('adding a recipient that is already there (same args, any spelling) gives no action', () => {
    assert.deepEqual(
      diff(base, (ed) => {
        ed.addRcpt('A@EXAMPLE.NET');
        ed.addRcpt('<b@example.net>', 'NOTIFY=NEVER');
      }),
      [],
    );
  });

  it('re-adding a recipient with different args is a deletion plus an addition', () => {
    assert.deepEqual(
      diff(base, (ed) => {
        ed.delRcpt('<a@example.net>');
        ed.addRcpt('<a@example.net>', 'NOTIFY=NEVER');
        ed.delRcpt('<b@example.net>');
        ed.addRcpt('<b@example.net>');
      }),
      [
        { kind: 'delrcpt', rcpt: '<a@example.net>' },
        { kind: 'delrcpt', rcpt: '<B@Example.NET>' },
        { kind: 'addrcpt', rcpt: '<a@example.net>', args: 'NOTIFY=NEVER' },
        { kind: 'addrcpt', rcpt: '<b@example.net>' },
      ],
    );
  });

  it('deleting and re-adding the same recipient with the same args gives no action', () => {
    assert.deepEqual(
      diff(base, (ed) => {
        ed.delRcpt('<a@example.net>');
        ed.addRcpt('<a@example.net>');
      }),
      [],
    );
  });

  it('recipient addresses are validated', () => {
    const bad = 'MILTERD_FILTER_BAD_MODIFICATION' as const;
    throwsCode(() => editor(base).addRcpt(''), bad);
    throwsCode(() => editor(base).addRcpt('<a@b>\r\nRCPT TO:<c@d>'), bad);
    throwsCode(() => editor(base).addRcpt('<a@b>', 'X=1\0'), bad);
    throwsCode(() => editor(base).delRcpt('a\0b'), bad);
    throwsCode(() => editor(base).changeFrom('<a@b>\n'), bad);
    throwsCode(() => editor(base).changeFrom('<a@b>', 'SIZE=1\r'), bad);
  });

  it('changeFrom without args → chgfrom without args; with args → chgfrom with args', () => {
    assert.deepEqual(
      diff(base, (ed) => ed.changeFrom('<new@example.org>')),
      [{ kind: 'chgfrom', from: '<new@example.org>' }],
    );
    assert.deepEqual(
      diff(base, (ed) => ed.changeFrom('<new@example.org>', 'SIZE=100 BODY=8BITMIME')),
      [{ kind: 'chgfrom', from: '<new@example.org>', args: 'SIZE=100 BODY=8BITMIME' }],
    );
    // Same address, new args: still a change.
    assert.deepEqual(
      diff(base, (ed) => ed.changeFrom('<sender@example.org>', 'SMTPUTF8')),
      [{ kind: 'chgfrom', from: '<sender@example.org>', args: 'SMTPUTF8' }],
    );
    // Same address and args: nothing.
    assert.deepEqual(
      diff(base, (ed) => ed.changeFrom('<sender@example.org>')),
      [],
    );
  });

  it('quarantine → one quarantine action; bad reasons are refused', () => {
    assert.deepEqual(
      diff(base, (ed) => ed.setQuarantine('looks like phishing')),
      [{ kind: 'quarantine', reason: 'looks like phishing' }],
    );
    for (const reason of ['', 'a\nb', 'a\0b']) {
      throwsCode(() => editor(base).setQuarantine(reason), 'MILTERD_FILTER_BAD_MODIFICATION', /quarantine/);
    }
  });

  it('all kinds together come out as sender, recipients, header changes, deletions, inserts, adds, quarantine', () => {
    const b = snapshot({
      headers: headers([
        ['Subject', 's'],
        ['X-Spam', 'old'],
      ]),
      rcpts: [addr('<a@example.net>')],
    });
    assert.deepEqual(
      diff(b, (ed) => {
        ed.setQuarantine('q');
        ed.addHeader('X-Add', '1');
        ed.insertHeader(0, 'X-Ins', '2');
        ed.deleteHeader('X-Spam', 1);
        ed.changeHeader('Subject', 1, 's2');
        ed.addRcpt('<z@example.net>');
        ed.delRcpt('<a@example.net>');
        ed.changeFrom('<f@example.org>');
      }),
      [
        { kind: 'chgfrom', from: '<f@example.org>' },
        { kind: 'delrcpt', rcpt: '<a@example.net>' },
        { kind: 'addrcpt', rcpt: '<z@example.net>' },
        { kind: 'chgheader', index: 1, name: 'Subject', value: 's2' },
        { kind: 'chgheader', index: 1, name: 'X-Spam', value: '' },
        { kind: 'insheader', index: 0, name: 'X-Ins', value: '2' },
        { kind: 'addheader', name: 'X-Add', value: '1' },
        { kind: 'quarantine', reason: 'q' },
      ],
    );
  });

  it('replaceBody keeps bytes as given and encodes strings as UTF-8', () => {
    const ed = editor(base);
    ed.replaceBody('grüße\r\n');
    assert.deepEqual(Buffer.from(ed.body as Uint8Array), Buffer.from('grüße\r\n', 'utf8'));
    const bytes = new Uint8Array([0, 255, 13, 10]);
    ed.replaceBody(bytes);
    assert.equal(ed.body, bytes);
    throwsCode(() => ed.replaceBody(42 as unknown as string), 'MILTERD_FILTER_BAD_MODIFICATION', /replaceBody/);
  });
});
