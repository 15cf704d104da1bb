/**
 * milterd against OpenDKIM's miltertest: Lua scripts in test/e2e/miltertest/ play the MTA,
 * milterd runs in this process with filters made for each script, and a tap between them
 * records every packet. Each script asserts the milter's replies and requested modifications
 * (mt.getreply, mt.eom_check); this file asserts what the filters were given and the packets
 * miltertest cannot check (reply texts, SMFIR_CHGFROM, SMFIR_ADDRCPT_PAR, negotiation).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { MilterServer } from '../../src/server/server.ts';
import { defineFilter } from '../../src/chain/define.ts';
import type { ChainEntry, Filter, FilterContext } from '../../src/chain/filter.ts';
import { mtaGate } from '../support/mta-available.ts';
import { runMiltertest, type MiltertestResult } from '../support/miltertest.ts';
import { cstrings, startMilterTap, type MilterTap, type TapFrame } from '../support/milter-tap.ts';

const SCRIPTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'miltertest');
const gate = mtaGate('miltertest');

/** One recorded hook call. */
interface Call {
  readonly hook: string;
  readonly args: unknown;
}

/** Starts milterd with `chain` behind a tap, runs `script`, stops both; packets on failure. */
async function runScript(
  t: TestContext,
  script: string,
  chain: readonly ChainEntry[],
  globals: Record<string, string> = {},
): Promise<{ result: MiltertestResult; tap: MilterTap }> {
  const server = new MilterServer({ listen: 'inet:0@127.0.0.1', chain });
  await server.start();
  let tap: MilterTap | undefined;
  try {
    tap = await startMilterTap(server.addresses()[0] as string);
    const result = await runMiltertest({ script: path.join(SCRIPTS, script), socket: tap.address, globals, timeoutMs: 30_000 });
    // The script's last command (QUIT) is written just before miltertest exits: let the tap see it.
    await new Promise((r) => setTimeout(r, 50));
    return { result, tap };
  } catch (err) {
    if (tap) t.diagnostic(`packets:\n${tap.dump()}`);
    throw err;
  } finally {
    await server.stop({ deadlineMs: 2_000 });
    await tap?.close();
  }
}

/** Asserts with the packet log attached, so a failure shows what went over the wire. */
function withPackets(t: TestContext, tap: MilterTap, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    t.diagnostic(`packets:\n${tap.dump()}`);
    throw err;
  }
}

function replies(tap: MilterTap, code: string): string[][] {
  return tap.select('milter', code).map((f: TapFrame) => cstrings(f.payload));
}

const escape = (s: string): string => s.replace(/\r/g, '\\r').replace(/\n/g, '\\n');

/** phases.lua: one filter with every hook, recording calls and reporting at end of message. */
function phasesChain(calls: Call[]): ChainEntry[] {
  const log = (ctx: FilterContext): string[] => ((ctx.connState.log as string[] | undefined) ?? (ctx.connState.log = []) as string[]);
  const rec = (ctx: FilterContext, hook: string, args: unknown): void => {
    calls.push({ hook, args });
    log(ctx).push(hook);
  };
  const filter = defineFilter({
    name: 'phases',
    actions: ['addHeader'],
    // Asking for a macro at EOH keeps the EOH step (milterd turns it off otherwise).
    macros: { eoh: ['{eoh_macro}'], data: ['{phase_macro}'] },
    connect(ctx, info) {
      rec(ctx, 'connect', { ...info, j: ctx.getSymbol('j'), daemonName: ctx.getSymbol('{daemon_name}') });
    },
    helo(ctx, name) {
      rec(ctx, 'helo', { name, tls: ctx.getSymbol('{tls_version}'), j: ctx.getSymbol('j') });
    },
    envfrom(ctx, from) {
      rec(ctx, 'envfrom', { ...from, i: ctx.getSymbol('i'), mailAddr: ctx.getSymbol('{mail_addr}') });
    },
    envrcpt(ctx, rcpt) {
      rec(ctx, 'envrcpt', { ...rcpt, rcptAddr: ctx.getSymbol('{rcpt_addr}') });
      if (rcpt.address === '<reject-me@example.net>') {
        return { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: 'recipient refused by the phases filter' } };
      }
      if (rcpt.address === '<tempfail-me@example.net>') return { type: 'tempfail' };
      return undefined;
    },
    data(ctx) {
      rec(ctx, 'data', { macro: ctx.getSymbol('{phase_macro}') });
    },
    header(ctx, name, value, raw) {
      rec(ctx, 'header', { name, value, raw });
      ((ctx.msgState.headers as string[] | undefined) ?? (ctx.msgState.headers = []) as string[]).push(name);
    },
    eoh(ctx) {
      rec(ctx, 'eoh', { macro: ctx.getSymbol('{eoh_macro}') });
    },
    body(ctx, chunk) {
      // One entry per body however milterd chunks it (libmilter-style: one call per chunk).
      const l = log(ctx);
      if (l[l.length - 1] === 'body') calls.push({ hook: 'body', args: Buffer.from(chunk).toString('latin1') });
      else rec(ctx, 'body', Buffer.from(chunk).toString('latin1'));
      ctx.msgState.body = `${(ctx.msgState.body as string | undefined) ?? ''}${Buffer.from(chunk).toString('latin1')}`;
    },
    eom(ctx, msg) {
      rec(ctx, 'eom', { msgId: ctx.getSymbol('{msg_id}'), i: ctx.getSymbol('i') });
      const from = ctx.from;
      msg.addHeader('X-Phase-Log', log(ctx).join(' '));
      msg.addHeader(
        'X-Seen-Envelope',
        `from=${from?.address} args=${from?.args.join(',')} rcpts=${ctx.rcpts.map((r) => r.address).join(',')}`,
      );
      msg.addHeader('X-Seen-Headers', ((ctx.msgState.headers as string[] | undefined) ?? []).join('|'));
      msg.addHeader('X-Seen-Body', escape((ctx.msgState.body as string | undefined) ?? ''));
      const aborts = (ctx.connState.aborts as number | undefined) ?? 0;
      if (aborts > 0) msg.addHeader('X-Aborts-So-Far', String(aborts));
      ctx.connState.log = [];
    },
    unknown(ctx, command) {
      rec(ctx, 'unknown', command);
      return { type: 'reject', reply: { code: '500', xcode: '5.5.1', text: 'unknown command refused by milterd' } };
    },
    abort(ctx) {
      calls.push({ hook: 'abort', args: { msgState: Object.keys(ctx.msgState) } });
      ctx.connState.aborts = ((ctx.connState.aborts as number | undefined) ?? 0) + 1;
      ctx.connState.log = [];
    },
    close() {
      calls.push({ hook: 'close', args: null });
    },
  });
  return [{ filter }];
}

/** modifications.lua: header/body edits in one filter, envelope edits and quarantine in the next. */
function modificationsChain(seen: string[]): ChainEntry[] {
  const headers: Filter = {
    name: 'mod-headers',
    actions: ['addHeader', 'changeHeader', 'replaceBody'],
    eom(_ctx, msg) {
      msg.addHeader('X-Added', 'added value');
      msg.insertHeader(0, 'X-Inserted', 'inserted at top');
      msg.changeHeader('Subject', 1, 'Changed subject');
      msg.deleteHeader('X-Remove-Me', 1);
      msg.replaceBody('Replaced body.\r\n');
    },
  };
  const envelope: Filter = {
    name: 'mod-envelope',
    actions: ['addRcpt', 'delRcpt', 'changeFrom', 'quarantine'],
    async eom(ctx, msg) {
      // What the first filter left: this one must see its edits.
      seen.push(msg.headers.map((h) => `${h.name}: ${h.value}`).join('\n'));
      seen.push(Buffer.from(await msg.body()).toString('latin1'));
      seen.push(ctx.rcpts.map((r) => r.address).join(','));
      msg.addRcpt('<added@example.net>');
      msg.addRcpt('<added-par@example.net>', 'NOTIFY=NEVER');
      msg.delRcpt('<deleted@example.net>');
      msg.changeFrom('<new-sender@example.org>', 'SIZE=4321');
      msg.quarantine('held by milterd test');
    },
  };
  return [{ filter: headers }, { filter: envelope }];
}

/** verdicts.lua. */
function verdictsChain(): ChainEntry[] {
  const filter: Filter = {
    name: 'verdicts',
    actions: ['addHeader'],
    connect(_ctx, info) {
      if (info.hostname === 'bad.example.org') {
        return { type: 'reject', reply: { code: '554', xcode: '5.7.1', text: 'bad.example.org is not welcome' } };
      }
      return undefined;
    },
    envfrom(_ctx, from) {
      return from.address === '<tempfail@example.org>' ? { type: 'tempfail' } : undefined;
    },
    envrcpt(_ctx, rcpt) {
      if (rcpt.address === '<multiline@example.net>') {
        return { type: 'reject', reply: { code: '550', xcode: '5.1.1', text: ['first line', 'second line'] } };
      }
      return undefined;
    },
    async eom(_ctx, msg) {
      const body = Buffer.from(await msg.body()).toString('latin1');
      if (body.startsWith('DISCARD-ME')) return { type: 'discard' };
      if (body.startsWith('REJECT-ME')) return { type: 'reject', reply: { code: '550', xcode: '5.7.1', text: 'content refused by milterd' } };
      if (body.startsWith('TEMPFAIL-ME')) return { type: 'tempfail' };
      msg.addHeader('X-Verdict', 'delivered');
      return undefined;
    },
  };
  return [{ filter }];
}

/** negotiation.lua: one filter within what restricted MTAs grant, one asking for more. */
function negotiationChain(): ChainEntry[] {
  const granted: Filter = {
    name: 'granted',
    actions: ['addHeader'],
    eom(_ctx, msg) {
      msg.addHeader('X-Granted', 'yes');
    },
  };
  const notGranted: Filter = {
    name: 'not-granted',
    actions: ['changeHeader'],
    eom(_ctx, msg) {
      msg.changeHeader('Subject', 1, 'must not reach the MTA');
    },
  };
  return [{ filter: granted }, { filter: notGranted, onError: 'continue' }];
}

describe('miltertest → milterd', { skip: gate.skip, timeout: 120_000 }, () => {
  before(() => gate.require());

  test('phases.lua: every phase reaches the filter with what the MTA sent', async (t) => {
    const calls: Call[] = [];
    const { result, tap } = await runScript(t, 'phases.lua', phasesChain(calls));
    t.diagnostic(result.echoes.join('\n'));
    withPackets(t, tap, () => {
      assert.deepEqual(
        calls.map((c) => c.hook).filter((h, i, a) => h !== 'body' || a[i - 1] !== 'body'),
        [
          'connect', 'helo', 'envfrom', 'envrcpt', 'envrcpt', 'envrcpt', 'data',
          'header', 'header', 'header', 'header', 'eoh', 'body', 'eom',
          'envfrom', 'envrcpt', 'data', 'abort',
          'envfrom', 'envrcpt', 'data', 'header', 'eoh', 'body', 'eom',
          'unknown', 'close',
        ],
      );
      const byHook = (hook: string): unknown[] => calls.filter((c) => c.hook === hook).map((c) => c.args);
      // miltertest sends its fixed client port 12345 with the address given to mt.conninfo.
      assert.deepEqual(byHook('connect'), [
        { hostname: 'client.example.org', family: 'inet', address: '192.0.2.10', port: 12345, helo: undefined, j: 'mx.example.org', daemonName: 'milterd-test' },
      ]);
      assert.deepEqual(byHook('helo'), [{ name: 'helo.example.org', tls: 'TLSv1.3', j: 'mx.example.org' }]);
      assert.deepEqual(byHook('envfrom'), [
        { address: '<sender@example.org>', args: ['BODY=8BITMIME', 'SIZE=1234'], i: 'QID-PHASES-1', mailAddr: 'sender@example.org' },
        { address: '<aborted@example.org>', args: [], i: 'QID-PHASES-2', mailAddr: undefined },
        // Macros of the MAIL stage are per message: later messages only sent i.
        { address: '<third@example.org>', args: [], i: 'QID-PHASES-3', mailAddr: undefined },
      ]);
      assert.deepEqual(byHook('envrcpt'), [
        { address: '<rcpt1@example.net>', args: ['NOTIFY=SUCCESS,FAILURE'], rcptAddr: 'rcpt1@example.net' },
        // As in libmilter, a stage's macros stay until the MTA sends that stage's macros again
        // or an earlier stage starts (st_rcpt clears only later stages): miltertest sent
        // {rcpt_addr} before the first RCPT only.
        { address: '<reject-me@example.net>', args: [], rcptAddr: 'rcpt1@example.net' },
        { address: '<tempfail-me@example.net>', args: [], rcptAddr: 'rcpt1@example.net' },
        { address: '<rcpt2@example.net>', args: [], rcptAddr: undefined },
        { address: '<rcpt3@example.net>', args: [], rcptAddr: undefined },
      ]);
      assert.deepEqual(byHook('data'), [{ macro: 'data-stage' }, { macro: undefined }, { macro: undefined }]);
      const headers = byHook('header') as Array<{ name: string; value: string; raw: string }>;
      const leadspc = result.echoes.includes('leadspc=true');
      const sp = leadspc ? ' ' : '';
      assert.deepEqual(headers, [
        { name: 'From', value: 'Sender <sender@example.org>', raw: `${sp}Sender <sender@example.org>` },
        { name: 'To', value: '<rcpt1@example.net>', raw: `${sp}<rcpt1@example.net>` },
        { name: 'Subject', value: 'Phase test', raw: `${sp}Phase test` },
        { name: 'X-Folded', value: 'first part\n\tsecond part', raw: `${sp}first part\n\tsecond part` },
        { name: 'Subject', value: 'Third', raw: `${sp}Third` },
      ]);
      assert.deepEqual(byHook('eoh'), [{ macro: 'eoh-stage' }, { macro: undefined }]);
      // Body chunks, concatenated per message (the last call of the first message is before its eom).
      const bodies: string[] = [];
      let prev = '';
      for (const c of calls) {
        if (c.hook === 'body') {
          if (prev === 'body') bodies[bodies.length - 1] += c.args as string;
          else bodies.push(c.args as string);
        }
        prev = c.hook;
      }
      assert.deepEqual(bodies, ['Body line one.\r\nBody line two.\r\n', 'Third body.\r\n']);
      assert.deepEqual(byHook('eom'), [
        { msgId: '<phases@example.org>', i: 'QID-PHASES-1' },
        { msgId: undefined, i: 'QID-PHASES-3' },
      ]);
      assert.deepEqual(byHook('unknown'), ['XYZZY plugh']);

      // Replies miltertest only reports as SMFIR_REPLYCODE: check their text on the wire.
      assert.deepEqual(replies(tap, 'y'), [
        ['550 5.7.1 recipient refused by the phases filter'],
        ['500 5.5.1 unknown command refused by milterd'],
      ]);
      // Nothing is ever answered to ABORT or QUIT: every command but those got exactly one
      // reply, except the content steps negotiated as SMFIP_NR_*.
      const [neg] = tap.select('milter', 'O');
      assert.ok(neg, 'no negotiation reply');
      const protocol = neg.payload.readUInt32BE(8);
      const nr = (bit: number): boolean => (protocol & bit) !== 0;
      const answered = tap
        .select('mta')
        .filter((f) => !'DAQ'.includes(f.code))
        .filter((f) => !(f.code === 'L' && nr(0x80)) && !(f.code === 'N' && nr(0x40000)) && !(f.code === 'B' && nr(0x80000)));
      // Modification requests at end of message come before the verdict and are not replies.
      const verdicts = tap.select('milter').filter((f) => 'Ocatrdys'.includes(f.code));
      assert.equal(verdicts.length, answered.length, 'one reply per command that expects one');
    });
  });

  for (const leadspc of ['1', '0']) {
    test(`modifications.lua (HDR_LEADSPC ${leadspc === '1' ? 'offered' : 'not offered'}): every modification, chained`, async (t) => {
      const seen: string[] = [];
      const { result, tap } = await runScript(t, 'modifications.lua', modificationsChain(seen), { LEADSPC: leadspc });
      t.diagnostic(result.echoes.join('\n'));
      withPackets(t, tap, () => {
        // The second filter saw the first one's edits, and the recipients as received.
        assert.equal(
          seen[0],
          [
            'X-Inserted: inserted at top',
            'From: Sender <sender@example.org>',
            'To: <keep@example.net>',
            'Subject: Changed subject',
            'X-Added: added value',
          ].join('\n'),
        );
        assert.equal(seen[1], 'Replaced body.\r\n');
        assert.equal(seen[2], '<keep@example.net>,<deleted@example.net>');

        // What eom_check cannot see: SMFIR_ADDRCPT_PAR and SMFIR_CHGFROM, with their args.
        assert.deepEqual(replies(tap, '2'), [['<added-par@example.net>', 'NOTIFY=NEVER']]);
        assert.deepEqual(replies(tap, 'e'), [['<new-sender@example.org>', 'SIZE=4321']]);
        assert.deepEqual(replies(tap, '+'), [['<added@example.net>']]);
        assert.deepEqual(replies(tap, '-'), [['<deleted@example.net>']]);
        assert.deepEqual(replies(tap, 'q'), [['held by milterd test']]);
        // Values go out with a leading space exactly when HDR_LEADSPC was negotiated.
        const sp = leadspc === '1' ? ' ' : '';
        assert.deepEqual(replies(tap, 'h'), [['X-Added', `${sp}added value`]]);
        const idx = (code: string): Array<[number, string[]]> =>
          tap.select('milter', code).map((f) => [f.payload.readUInt32BE(0), cstrings(f.payload, 4)]);
        assert.deepEqual(idx('i'), [[0, ['X-Inserted', `${sp}inserted at top`]]]);
        assert.deepEqual(
          idx('m').map(([i, [n, v]]) => [i, n, v ?? '']),
          [
            [1, 'Subject', `${sp}Changed subject`],
            [1, 'X-Remove-Me', ''],
          ],
        );
        // The negotiated version and actions: v6, everything the chain declared.
        const [neg] = tap.select('milter', 'O');
        assert.ok(neg);
        assert.equal(neg.payload.readUInt32BE(0), 6);
        assert.equal(neg.payload.readUInt32BE(4) & 0xff, 0xff, 'SMFIF_ADDHDRS…ADDRCPT_PAR all requested');
      });
    });
  }

  test('negotiation.lua: v2 and restricted v6 MTAs get only what they offered, and answers to every step', async (t) => {
    const { result, tap } = await runScript(t, 'negotiation.lua', negotiationChain());
    t.diagnostic(result.echoes.join('\n'));
    withPackets(t, tap, () => {
      const offers = tap.select('mta', 'O').map((f) => ({ conn: f.conn, version: f.payload.readUInt32BE(0), actions: f.payload.readUInt32BE(4), protocol: f.payload.readUInt32BE(8) }));
      const answers = tap.select('milter', 'O').map((f) => ({ conn: f.conn, version: f.payload.readUInt32BE(0), actions: f.payload.readUInt32BE(4), protocol: f.payload.readUInt32BE(8), length: f.payload.length }));
      assert.equal(answers.length, 2);
      for (const [i, a] of answers.entries()) {
        const o = offers[i];
        assert.ok(o && o.conn === a.conn);
        assert.equal(a.version, o.version, 'answers the MTA\'s version when it is at most 6');
        assert.equal(a.actions & ~o.actions, 0, `actions 0x${a.actions.toString(16)} beyond offer 0x${o.actions.toString(16)}`);
        assert.equal(a.protocol & ~o.protocol, 0, `protocol 0x${a.protocol.toString(16)} beyond offer 0x${o.protocol.toString(16)}`);
      }
      // A version 2 MTA reads exactly three words: no symbol lists.
      assert.equal(answers[0]?.length, 12);
      assert.ok(result.echoes.includes('done'));
    });
  });

  test('verdicts.lua: reject, tempfail and discard at each phase, custom and multi-line replies', async (t) => {
    const { result, tap } = await runScript(t, 'verdicts.lua', verdictsChain());
    t.diagnostic(result.echoes.join('\n'));
    withPackets(t, tap, () => {
      assert.deepEqual(replies(tap, 'y'), [
        ['554 5.7.1 bad.example.org is not welcome'],
        ['550 5.7.1 content refused by milterd'],
        ['550-5.1.1 first line\r\n550 5.1.1 second line'],
      ]);
      assert.equal(tap.select('milter', 'd').length, 1, 'one SMFIR_DISCARD');
      // envfrom tempfail and eom tempfail, both without a custom reply
      assert.equal(tap.select('milter', 't').length, 2, 'two SMFIR_TEMPFAIL');
      assert.ok(result.echoes.includes('done'));
    });
  });
});
