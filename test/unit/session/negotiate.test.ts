/**
 * negotiate(): our OPTNEG answer, derived from what the chain needs and limited to what the
 * MTA offered (both Postfix and Sendmail drop a milter that asks for more).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Chain, type ChainNeeds } from '../../../src/chain/chain.ts';
import { defineFilter } from '../../../src/chain/define.ts';
import type { Filter, FilterAction, MacroStage } from '../../../src/chain/filter.ts';
import { MilterdError } from '../../../src/errors.ts';
import { SMFI_CURR_ACTS, SMFI_CURR_PROT, SMFIF, SMFIM, SMFIP } from '../../../src/protocol/constants.ts';
import { negotiate } from '../../../src/session/negotiate.ts';

const POSTFIX = { version: 6, actions: SMFI_CURR_ACTS, protocol: SMFI_CURR_PROT } as const;
const ALL_ACTIONS: readonly FilterAction[] = [
  'addHeader',
  'changeHeader',
  'replaceBody',
  'addRcpt',
  'delRcpt',
  'changeFrom',
  'quarantine',
];
const ENVELOPE_HOOKS = ['connect', 'helo', 'envfrom', 'envrcpt', 'data', 'unknown'] as const;
const STAGES: readonly MacroStage[] = ['connect', 'helo', 'envfrom', 'envrcpt', 'data', 'eoh', 'eom'];
/** SMFIM stage numbers, written out from mfapi.h (EOM 5 before EOH 6). */
const STAGE_NUMBER: Readonly<Record<MacroStage, number>> = { connect: 0, helo: 1, envfrom: 2, envrcpt: 3, data: 4, eom: 5, eoh: 6 };

function needsOf(...filters: Filter[]): ChainNeeds {
  return new Chain(filters.map((filter) => ({ filter }))).needs;
}

const noop = (): undefined => undefined;

function has(bits: number, flag: number): boolean {
  return (bits & flag) === flag;
}

/** Names of the SMFIP flags set in `bits`. */
function flagNames(bits: number): string[] {
  return Object.entries(SMFIP)
    .filter(([, v]) => (bits & v) !== 0)
    .map(([k]) => k)
    .sort();
}

describe('negotiate: version', () => {
  it('answers min(offer, 6) and refuses below 2', () => {
    const n = needsOf();
    assert.equal(negotiate({ ...POSTFIX, version: 6 }, n).version, 6);
    assert.equal(negotiate({ ...POSTFIX, version: 7 }, n).version, 6);
    assert.equal(negotiate({ ...POSTFIX, version: 255 }, n).version, 6);
    assert.equal(negotiate({ ...POSTFIX, version: 2 }, n).version, 2);
    assert.equal(negotiate({ ...POSTFIX, version: 4 }, n).version, 4);
    for (const version of [1, 0]) {
      assert.throws(
        () => negotiate({ ...POSTFIX, version }, n),
        (err: unknown) => err instanceof MilterdError && err.code === 'MILTERD_SESSION_VERSION' && /version 1|version 0/.test(err.message),
      );
    }
  });

  it('the reply carries the same version, actions and protocol', () => {
    const r = negotiate({ ...POSTFIX, version: 7 }, needsOf({ name: 'a', actions: ['addHeader'], eom: noop }));
    assert.deepEqual(r.reply, { kind: 'optneg', version: 6, actions: SMFIF.ADDHDRS, protocol: r.protocol });
  });
});

describe('negotiate: protocol flags', () => {
  it('empty chain: no content at all, no replies for the envelope', () => {
    const r = negotiate(POSTFIX, needsOf());
    assert.deepEqual(flagNames(r.protocol), [
      'HDR_LEADSPC',
      'NOBODY',
      'NODATA',
      'NOEOH',
      'NOHDRS',
      'NOUNKNOWN',
      'NR_CONN',
      'NR_EOH',
      'NR_HELO',
      'NR_MAIL',
      'NR_RCPT',
    ]);
    assert.equal(r.protocol, 0x14f370);
    assert.equal(r.actions, 0);
    assert.equal(r.grantedActions.size, 0);
    // Connect, HELO, MAIL and RCPT are never switched off.
    for (const off of [SMFIP.NOCONNECT, SMFIP.NOHELO, SMFIP.NOMAIL, SMFIP.NORCPT]) assert.equal(r.protocol & off, 0);
  });

  it('a chain with an eom filter asks for headers and body without replies (NR_HDR + NR_BODY)', () => {
    const r = negotiate(POSTFIX, needsOf({ name: 'a', eom: noop }));
    assert.ok(has(r.protocol, SMFIP.NR_HDR));
    assert.ok(has(r.protocol, SMFIP.NR_BODY));
    assert.equal(r.protocol & SMFIP.NOHDRS, 0);
    assert.equal(r.protocol & SMFIP.NOBODY, 0);
    assert.ok(has(r.protocol, SMFIP.NOEOH | SMFIP.NR_EOH));
  });

  it('reads narrow it: headers only → NOBODY; body only → NOHDRS', () => {
    let r = negotiate(POSTFIX, needsOf(defineFilter({ name: 'h', header: noop })));
    assert.ok(has(r.protocol, SMFIP.NR_HDR | SMFIP.NOBODY));
    assert.equal(r.protocol & (SMFIP.NOHDRS | SMFIP.NR_BODY), 0);
    r = negotiate(POSTFIX, needsOf({ name: 'b', eom: noop, reads: { headers: false } }));
    assert.ok(has(r.protocol, SMFIP.NOHDRS | SMFIP.NR_BODY));
    assert.equal(r.protocol & (SMFIP.NR_HDR | SMFIP.NOBODY), 0);
  });

  it('a phase with a hook gets no NR flag (and no NO flag); others keep theirs', () => {
    const nr = { connect: SMFIP.NR_CONN, helo: SMFIP.NR_HELO, envfrom: SMFIP.NR_MAIL, envrcpt: SMFIP.NR_RCPT } as const;
    for (const hook of ENVELOPE_HOOKS) {
      const r = negotiate(POSTFIX, needsOf({ name: 'a', [hook]: noop }));
      for (const [h, bit] of Object.entries(nr)) {
        assert.equal(has(r.protocol, bit), h !== hook, `${hook}: ${h}`);
      }
      assert.equal(has(r.protocol, SMFIP.NODATA), hook !== 'data', `${hook}: NODATA`);
      assert.equal(has(r.protocol, SMFIP.NOUNKNOWN), hook !== 'unknown', `${hook}: NOUNKNOWN`);
      assert.equal(r.protocol & (SMFIP.NR_DATA | SMFIP.NR_UNKN), 0, `${hook}: NR_DATA/NR_UNKN`);
    }
  });

  it('data macros without a data hook: DATA is sent (for its macros) but needs no reply', () => {
    const r = negotiate(POSTFIX, needsOf({ name: 'a', macros: { data: ['{x}'] } }));
    assert.ok(has(r.protocol, SMFIP.NR_DATA));
    assert.equal(r.protocol & SMFIP.NODATA, 0);
  });

  it('eoh macros: EOH is sent but needs no reply', () => {
    const r = negotiate(POSTFIX, needsOf({ name: 'a', macros: { eoh: ['{x}'] } }));
    assert.ok(has(r.protocol, SMFIP.NR_EOH));
    assert.equal(r.protocol & SMFIP.NOEOH, 0);
  });

  it('HDR_LEADSPC only when offered', () => {
    assert.ok(has(negotiate(POSTFIX, needsOf({ name: 'a', eom: noop })).protocol, SMFIP.HDR_LEADSPC));
    const r = negotiate({ ...POSTFIX, protocol: SMFI_CURR_PROT & ~SMFIP.HDR_LEADSPC }, needsOf({ name: 'a', eom: noop }));
    assert.equal(r.protocol & SMFIP.HDR_LEADSPC, 0);
  });

  it('never asks for SKIP, RCPT_REJ or the MDS sizes', () => {
    const r = negotiate({ ...POSTFIX, protocol: 0xffffffff }, needsOf({ name: 'a', eom: noop, envrcpt: noop }));
    assert.equal(r.protocol & (SMFIP.SKIP | SMFIP.RCPT_REJ | SMFIP.MDS_256K | SMFIP.MDS_1M), 0);
  });
});

describe('negotiate: actions', () => {
  it('asks for exactly the actions the chain declares', () => {
    const r = negotiate(POSTFIX, needsOf({ name: 'a', actions: ALL_ACTIONS, eom: noop }));
    assert.equal(
      r.actions,
      SMFIF.ADDHDRS | SMFIF.CHGHDRS | SMFIF.CHGBODY | SMFIF.ADDRCPT | SMFIF.ADDRCPT_PAR | SMFIF.DELRCPT | SMFIF.CHGFROM | SMFIF.QUARANTINE,
    );
    assert.deepEqual([...r.grantedActions].sort(), [...ALL_ACTIONS].sort());
    const q = negotiate(POSTFIX, needsOf({ name: 'a', actions: ['quarantine', 'delRcpt'], eom: noop }));
    assert.equal(q.actions, SMFIF.QUARANTINE | SMFIF.DELRCPT);
    assert.deepEqual([...q.grantedActions].sort(), ['delRcpt', 'quarantine']);
  });

  it('grantedActions holds only actions whose bits the MTA offered', () => {
    const n = needsOf({ name: 'a', actions: ALL_ACTIONS, eom: noop });
    const r = negotiate({ ...POSTFIX, actions: SMFIF.ADDHDRS | SMFIF.DELRCPT | SMFIF.ADDRCPT }, n);
    assert.equal(r.actions, SMFIF.ADDHDRS | SMFIF.DELRCPT | SMFIF.ADDRCPT);
    assert.deepEqual([...r.grantedActions].sort(), ['addHeader', 'addRcpt', 'delRcpt']);
    // ADDRCPT_PAR alone does not grant addRcpt.
    const p = negotiate({ ...POSTFIX, actions: SMFIF.ADDRCPT_PAR }, n);
    assert.equal(p.actions, SMFIF.ADDRCPT_PAR);
    assert.deepEqual([...p.grantedActions], []);
    // Nothing offered: nothing granted.
    const z = negotiate({ ...POSTFIX, actions: 0 }, n);
    assert.equal(z.actions, 0);
    assert.equal(z.grantedActions.size, 0);
  });
});

describe('negotiate: SETSYMLIST', () => {
  const withMacros = needsOf(
    { name: 'a', macros: { connect: ['{client_addr}'], envfrom: ['{mail_addr}', '{auth_authen}'] } },
    { name: 'b', macros: { eom: ['{x_eom}'], eoh: ['{x_eoh}'], envrcpt: ['{rcpt_addr}'], data: ['{x_data}'], helo: ['{tls_version}'] } },
  );

  it('lists the requested macros per stage, with SMFIM stage numbers, sorted by stage', () => {
    const r = negotiate(POSTFIX, withMacros);
    assert.ok(has(r.actions, SMFIF.SETSYMLIST));
    assert.equal(r.reply.kind, 'optneg');
    if (r.reply.kind !== 'optneg') return;
    const lists = r.reply.symlists ?? [];
    assert.deepEqual(
      lists.map((l) => l.stage),
      [SMFIM.CONNECT, SMFIM.HELO, SMFIM.ENVFROM, SMFIM.ENVRCPT, SMFIM.DATA, SMFIM.EOM, SMFIM.EOH],
    );
    assert.deepEqual(
      lists.map((l) => l.stage),
      [0, 1, 2, 3, 4, 5, 6],
    );
    const byStage = new Map(lists.map((l) => [l.stage, l.macros]));
    const want: ReadonlyArray<readonly [number, readonly string[]]> = [
      [SMFIM.CONNECT, ['{client_addr}']],
      [SMFIM.HELO, ['{tls_version}']],
      [SMFIM.ENVFROM, ['{mail_addr}', '{auth_authen}', 'i']],
      [SMFIM.ENVRCPT, ['{rcpt_addr}', 'i']],
      [SMFIM.DATA, ['{x_data}', 'i']],
      [SMFIM.EOM, ['{x_eom}', 'i']],
      [SMFIM.EOH, ['{x_eoh}', 'i']],
    ];
    for (const [stage, names] of want) {
      const got = byStage.get(stage as 0) ?? [];
      for (const m of names) assert.ok(got.includes(m), `stage ${stage} lacks ${m}: ${got.join(' ')}`);
      assert.equal(new Set(got).size, got.length, `stage ${stage} has duplicates`);
      for (const m of got) assert.match(m, /^(\{[A-Za-z0-9_]+\}|[A-Za-z_])$/, `stage ${stage}: bad macro name ${m}`);
    }
  });

  it('only stages with requested macros get a list', () => {
    const r = negotiate(POSTFIX, needsOf({ name: 'a', macros: { envrcpt: ['{rcpt_host}'] } }));
    assert.equal(r.reply.kind, 'optneg');
    if (r.reply.kind !== 'optneg') return;
    assert.deepEqual(
      r.reply.symlists?.map((l) => l.stage),
      [SMFIM.ENVRCPT],
    );
  });

  it('no SETSYMLIST when the MTA does not offer it', () => {
    const r = negotiate({ ...POSTFIX, actions: SMFI_CURR_ACTS & ~SMFIF.SETSYMLIST }, withMacros);
    assert.equal(r.actions & SMFIF.SETSYMLIST, 0);
    assert.deepEqual(r.reply, { kind: 'optneg', version: 6, actions: r.actions, protocol: r.protocol });
  });

  it('no SETSYMLIST when no macros are requested', () => {
    const r = negotiate(POSTFIX, needsOf({ name: 'a', eom: noop, actions: ['addHeader'] }));
    assert.equal(r.actions & SMFIF.SETSYMLIST, 0);
    assert.equal('symlists' in r.reply, false);
  });
});

describe('negotiate: older MTAs', () => {
  it('a v2 offer (actions 0x3F, protocol 0x7F) gets a valid v2 answer', () => {
    const n = needsOf(
      { name: 'a', actions: ALL_ACTIONS, connect: noop, envrcpt: noop, eom: noop, macros: { envfrom: ['{mail_addr}'] } },
    );
    const r = negotiate({ version: 2, actions: 0x3f, protocol: 0x7f }, n);
    assert.equal(r.version, 2);
    assert.equal(r.actions & ~0x3f, 0);
    assert.equal(r.protocol & ~0x7f, 0);
    assert.equal(r.actions, SMFIF.ADDHDRS | SMFIF.CHGBODY | SMFIF.ADDRCPT | SMFIF.DELRCPT | SMFIF.CHGHDRS | SMFIF.QUARANTINE);
    // v2 has no NR_* flags: the MTA waits for every reply. Headers and body are wanted, EOH is not.
    assert.equal(r.protocol, SMFIP.NOEOH);
    assert.deepEqual([...r.grantedActions].sort(), ['addHeader', 'addRcpt', 'changeHeader', 'delRcpt', 'quarantine', 'replaceBody']);
    assert.deepEqual(r.reply, { kind: 'optneg', version: 2, actions: r.actions, protocol: SMFIP.NOEOH });
  });
});

describe('negotiate: property', () => {
  const filterArb = fc.record({
    hooks: fc.subarray([...ENVELOPE_HOOKS, 'eom'] as const),
    actions: fc.subarray([...ALL_ACTIONS]),
    macros: fc.dictionary(fc.constantFrom(...STAGES), fc.array(fc.constantFrom('i', '{a}', '{b}', 'j', '{mail_addr}'), { maxLength: 3 }), {
      maxKeys: 4,
    }),
    reads: fc.option(fc.record({ headers: fc.option(fc.boolean(), { nil: undefined }), body: fc.option(fc.boolean(), { nil: undefined }) }), {
      nil: undefined,
    }),
  });
  const u32 = fc.integer({ min: 0, max: 0xffffffff });
  const offerArb = fc.record({
    version: fc.integer({ min: 2, max: 20 }),
    actions: fc.oneof(u32, fc.constant(SMFI_CURR_ACTS), fc.constant(0x3f)),
    protocol: fc.oneof(u32, fc.constant(SMFI_CURR_PROT), fc.constant(0x7f)),
  });

  it('the reply never asks for an action or flag the MTA did not offer', () => {
    fc.assert(
      fc.property(offerArb, fc.array(filterArb, { maxLength: 4 }), (offer, specs) => {
        const filters: Filter[] = specs.map((s, i) => {
          const f: Record<string, unknown> = { name: `f${i}`, actions: s.actions, macros: s.macros };
          if (s.reads !== undefined) f.reads = s.reads;
          for (const h of s.hooks) f[h] = noop;
          return f as unknown as Filter;
        });
        const needs = needsOf(...filters);
        const r = negotiate(offer, needs);
        assert.equal(r.version, Math.min(offer.version, 6));
        assert.equal(r.actions & ~offer.actions, 0);
        assert.equal(r.protocol & ~offer.protocol, 0);
        assert.ok(r.actions >= 0 && r.protocol >= 0);
        assert.equal(r.reply.kind, 'optneg');
        if (r.reply.kind !== 'optneg') return;
        assert.equal(r.reply.version, r.version);
        assert.equal(r.reply.actions, r.actions);
        assert.equal(r.reply.protocol, r.protocol);
        // Granted actions were asked for and offered.
        for (const a of r.grantedActions) assert.ok(needs.actions.has(a), a);
        // Symbol lists only when SETSYMLIST was offered and is in the reply.
        if (r.reply.symlists !== undefined) {
          assert.ok(has(offer.actions, SMFIF.SETSYMLIST));
          assert.ok(has(r.actions, SMFIF.SETSYMLIST));
          assert.deepEqual(
            r.reply.symlists.map((l) => l.stage),
            [...needs.macros.keys()].map((s) => STAGE_NUMBER[s]).sort((a, b) => a - b),
          );
          for (const l of r.reply.symlists) {
            for (const [stage, names] of needs.macros) {
              if (STAGE_NUMBER[stage] !== l.stage) continue;
              for (const m of names) assert.ok(l.macros.includes(m));
            }
          }
        }
        // A phase with a hook is never switched off or left without a reply.
        if (needs.hooks.has('connect')) assert.equal(r.protocol & (SMFIP.NOCONNECT | SMFIP.NR_CONN), 0);
        if (needs.hooks.has('envrcpt')) assert.equal(r.protocol & (SMFIP.NORCPT | SMFIP.NR_RCPT), 0);
        if (needs.hooks.has('data')) assert.equal(r.protocol & (SMFIP.NODATA | SMFIP.NR_DATA), 0);
        // Content some filter reads is never switched off.
        if (needs.headers) assert.equal(r.protocol & SMFIP.NOHDRS, 0);
        if (needs.body) assert.equal(r.protocol & SMFIP.NOBODY, 0);
      }),
      { numRuns: 500 },
    );
  });
});
