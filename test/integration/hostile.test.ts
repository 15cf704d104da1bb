/**
 * Hostile plugins: one bad plugin can never hang or lose mail. Each fixture in
 * test/fixtures/hostile misbehaves (spins, allocates, never answers, crashes its process,
 * floods the host, breaks the rules, tries to get out of its isolate) for messages whose sender
 * contains "hostile", and behaves for the others. Every runtime case checks, against a real
 * MilterServer driven by the MTA simulator:
 * - the message gets a verdict within the plugin's budget, by the plugin's policy ('continue');
 * - the next plugin in the chain (header-stamp) still does its work on that message;
 * - a second connection running a message at the same time is served normally, by the same
 *   plugin too (on another isolate of its pool);
 * - the daemon keeps serving: a later message gets every plugin's work, the bad one's included
 *   (its isolate was rebuilt, or its process restarted);
 * - the log has a line naming the plugin, the hook and the error code.
 * Bundle-time refusals (imports of Node built-ins, import(), import.meta) are checked at load.
 *
 * Time bounds: a runaway call must be answered within the limit that stops it plus SLACK_MS.
 * That is still below the chain's own last-resort timer (min(wallMs + 2 s, messageMs)), so a
 * sandbox that failed to enforce its limits would fail these tests, not just be rescued.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import vm from 'node:vm';
import { pino } from 'pino';
import { loadChain, loadSdkRuntime, type PluginEntryConfig } from '../../src/plugins/load.ts';
import type { WireCall } from '../../sdk/src/protocol.ts';
import type { MtaClient, PhaseResult } from '../support/mta-client.ts';
import { LIMITS, ROOT, STAMP, harness, headerStamp, hostile, sleep, type Harness, type Sent } from '../support/hostile.ts';

/** Headroom over a limit for a loaded 2-core machine (see the module comment). */
const SLACK_MS = 1500;
/** messageMs of the hostile entries: keeps the chain's last-resort timer at wallMs + 2 s. */
const MESSAGE_MS = 3000;

const HOSTILE_FROM = '<hostile@example.org>';
const CLEAN_FROM = '<alice@example.org>';

interface Case {
  readonly fixture: string;
  readonly options?: Record<string, unknown>;
  readonly limits?: Partial<typeof LIMITS>;
  readonly capabilities?: PluginEntryConfig['capabilities'];
  /** Code of the log line expected for the bad call, and its hook (the call's phase). */
  readonly code: string;
  readonly hook: 'envrcpt' | 'eom';
  /** The limit that must stop the misbehaviour, ms. */
  readonly budgetMs: number;
  /** Header the fixture adds to clean messages, if any. */
  readonly okHeader?: string;
  /** The misbehaviour lasts at least ~100 ms: the neighbour connection must finish first. */
  readonly slow?: boolean;
  /** The sandbox process dies: the neighbour's call to the same plugin may share its fate. */
  readonly crashes?: boolean;
  /** Extra checks of the bad message. */
  readonly check?: (bad: Sent, h: Harness) => void;
}

function isReply(r: PhaseResult, ...kinds: string[]): boolean {
  return typeof r !== 'string' && kinds.includes(r.kind);
}

async function closeAll(...cs: MtaClient[]): Promise<void> {
  for (const c of cs) assert.deepEqual(await c.close(500), { unexpectedReplies: 0, violations: [] });
}

/**
 * Runs one hostile message next to a clean one on another connection, then a clean one on a
 * third connection, and checks everything the module comment lists.
 */
async function misbehave(t: TestContext, c: Case): Promise<{ h: Harness; bad: Sent }> {
  const h = await harness(t, [
    hostile(c.fixture, {
      ...(c.options === undefined ? {} : { options: c.options }),
      ...(c.capabilities === undefined ? {} : { capabilities: c.capabilities }),
      limits: { messageMs: MESSAGE_MS, ...c.limits },
    }),
    headerStamp,
  ]);
  const name = h.plugins[0]!.manifest.name;
  const badConn = await h.open();
  const goodConn = await h.open();

  let badDone = 0;
  const badRun = h.send(badConn, HOSTILE_FROM).then((s) => ((badDone = performance.now()), s));
  await sleep(30); // the bad message is in the plugin by now
  const good = await h.send(goodConn, CLEAN_FROM);
  const goodDone = performance.now();
  const bad = await badRun;

  // The bad message: a verdict within budget, by policy 'continue': the plugin is skipped and
  // its edits dropped, the next plugin's work is there.
  assert.ok(bad.ms < c.budgetMs + SLACK_MS, `verdict after ${Math.round(bad.ms)} ms, budget ${c.budgetMs} ms\n${h.dump()}`);
  assert.equal(bad.r.endedAt, 'eom');
  assert.ok(isReply(bad.r.verdict, 'accept', 'continue'), JSON.stringify(bad.r.verdict));
  assert.ok(!bad.r.rcpts.some((r) => isReply(r, 'reject', 'tempfail', 'replycode')), JSON.stringify(bad.r.rcpts));
  assert.ok(bad.added.includes(STAMP), `header-stamp's header missing: ${bad.added.join(', ')}`);
  if (c.okHeader !== undefined) assert.ok(!bad.added.includes(c.okHeader));

  // The neighbour: served normally while the bad one misbehaved, by both plugins.
  assert.ok(isReply(good.r.verdict, 'accept', 'continue'));
  assert.ok(good.added.includes(STAMP));
  if (c.okHeader !== undefined && c.crashes !== true) {
    assert.ok(good.added.includes(c.okHeader), `the plugin's other isolate did not serve the neighbour: ${good.added.join(', ')}\n${h.dump()}`);
  }
  if (c.slow === true) {
    assert.ok(goodDone < badDone, `the neighbour (${Math.round(good.ms)} ms) waited for the bad message (${Math.round(bad.ms)} ms)`);
  }

  // The log names plugin, hook and code.
  assert.ok(h.failures(name, c.code, c.hook).length > 0, `no log line with ${c.code} in ${c.hook} for ${name}:\n${h.dump()}`);

  // Still serving, and the plugin works again (rebuilt isolate or restarted process).
  const laterConn = await h.open();
  const later = await h.send(laterConn, CLEAN_FROM);
  assert.ok(later.added.includes(STAMP));
  if (c.okHeader !== undefined) assert.ok(later.added.includes(c.okHeader), `plugin not back: ${later.added.join(', ')}\n${h.dump()}`);
  // Unless the misbehaviour kills V8 itself, the sandbox process handles it (isolate rebuilt):
  // the supervisor's last-resort kill (or memory guard) must not have been needed.
  if (c.crashes !== true) {
    assert.deepEqual(h.logs.filter((l) => l.plugin === name && l.level >= 50), [], 'supervisor errors');
    assert.equal(h.plugins[0]!.supervisor.status().restarts, 0, h.dump());
  }
  c.check?.(bad, h);
  await closeAll(badConn, goodConn, laterConn);
  return { h, bad };
}

// --- runaway code ---------------------------------------------------------------------------

test('a synchronous infinite loop in eom is stopped at its CPU limit', async (t) => {
  await misbehave(t, { fixture: 'loop', code: 'MILTERD_PLUGIN_CPU', hook: 'eom', budgetMs: LIMITS.cpuMs, okHeader: 'X-Hostile-Loop', slow: true });
});

test('a synchronous infinite loop in envrcpt is stopped at its CPU limit; the recipient is not refused', async (t) => {
  await misbehave(t, {
    fixture: 'loop',
    options: { hook: 'envrcpt' },
    code: 'MILTERD_PLUGIN_CPU',
    hook: 'envrcpt',
    budgetMs: LIMITS.cpuMs,
    okHeader: 'X-Hostile-Loop',
    slow: true,
  });
});

test('a loop after awaiting a resolved promise is still under the CPU limit', async (t) => {
  await misbehave(t, { fixture: 'loop-after-await', code: 'MILTERD_PLUGIN_CPU', hook: 'eom', budgetMs: LIMITS.cpuMs, okHeader: 'X-Hostile-Await', slow: true });
});

test('a loop after awaiting a host call (kv) is stopped at its CPU limit too (the watchdog reads the isolate CPU time)', async (t) => {
  await misbehave(t, {
    fixture: 'loop-after-await',
    options: { via: 'kv' },
    capabilities: ['kv'],
    code: 'MILTERD_PLUGIN_CPU',
    hook: 'eom',
    budgetMs: LIMITS.cpuMs,
    okHeader: 'X-Hostile-Await',
    slow: true,
  });
});

test('a promise that never settles (eom) is cut at the wall-clock limit', async (t) => {
  await misbehave(t, { fixture: 'never-settles', code: 'MILTERD_PLUGIN_WALL', hook: 'eom', budgetMs: LIMITS.wallMs, okHeader: 'X-Hostile-Never', slow: true });
});

test('a promise that never settles (envrcpt) is cut at the wall-clock limit', async (t) => {
  await misbehave(t, {
    fixture: 'never-settles',
    options: { hook: 'envrcpt' },
    code: 'MILTERD_PLUGIN_WALL',
    hook: 'envrcpt',
    budgetMs: LIMITS.wallMs,
    okHeader: 'X-Hostile-Never',
    slow: true,
  });
});

test('work V8 cannot interrupt is answered at its CPU limit, and the connection goes on at once', async (t) => {
  // The isolate's thread stays busy after dispose (until isolated-vm aborts the process, about
  // 5 s later): the slot must serve its next call on a fresh isolate meanwhile, not wait.
  const h = await harness(t, [hostile('uninterruptible', { limits: { messageMs: MESSAGE_MS } }), headerStamp]);
  const name = h.plugins[0]!.manifest.name;
  const c = await h.open();
  const bad = await h.send(c, HOSTILE_FROM);
  assert.ok(bad.ms < LIMITS.cpuMs + SLACK_MS, `${Math.round(bad.ms)} ms\n${h.dump()}`);
  assert.deepEqual(bad.added, [STAMP]);
  assert.ok(h.failures(name, 'MILTERD_PLUGIN_CPU', 'eom').length > 0, h.dump());
  // Same connection, so the same isolate slot.
  const next = await h.send(c, CLEAN_FROM);
  assert.ok(next.ms < 1000, `the next message on the connection took ${Math.round(next.ms)} ms\n${h.dump()}`);
  assert.deepEqual(next.added, ['X-Hostile-Stuck', STAMP], h.dump());
  await closeAll(c);
  // Answered by the sandbox's own watchdog: no kill by the supervisor was needed (the process
  // does die later, when isolated-vm gives up on the stuck thread, after this test).
  assert.equal(h.failures(name, 'MILTERD_PLUGIN_WALL', 'close').length, 0, h.dump());
  assert.deepEqual(h.logs.filter((l) => l.plugin === name && l.level >= 50), [], 'supervisor errors');
  assert.equal(h.plugins[0]!.supervisor.status().restarts, 0);
});

// --- memory ---------------------------------------------------------------------------------

// CPU and wall limits well above the time it takes to fill 32 MB (~50 ms), so that the memory
// limit stops it even on a loaded machine.
const BOMB_LIMITS = { cpuMs: 1000, wallMs: 1000, messageMs: 4000 };

test('a memory bomb (arrays) is stopped at the isolate memory limit', async (t) => {
  await misbehave(t, {
    fixture: 'memory-bomb',
    limits: BOMB_LIMITS,
    code: 'MILTERD_PLUGIN_MEMORY',
    hook: 'eom',
    budgetMs: BOMB_LIMITS.cpuMs,
    okHeader: 'X-Hostile-Memory',
  });
});

test('a memory bomb (strings) is stopped at the isolate memory limit', async (t) => {
  await misbehave(t, {
    fixture: 'memory-bomb',
    options: { kind: 'strings' },
    limits: BOMB_LIMITS,
    code: 'MILTERD_PLUGIN_MEMORY',
    hook: 'eom',
    budgetMs: BOMB_LIMITS.cpuMs,
    okHeader: 'X-Hostile-Memory',
  });
});

test('an object with millions of keys takes its sandbox process down (isolated-vm#457); it restarts', async (t) => {
  // CPU and wall limits high enough for V8 to run out of memory first: a catastrophic error.
  const limits = { memoryMb: 16, cpuMs: 2000, wallMs: 2000, messageMs: 6000 };
  const { h } = await misbehave(t, {
    fixture: 'many-keys',
    limits,
    code: 'MILTERD_PLUGIN_CRASHED',
    hook: 'eom',
    budgetMs: limits.wallMs,
    okHeader: 'X-Hostile-Keys',
    crashes: true,
  });
  assert.equal(h.plugins[0]!.supervisor.status().restarts, 1);
  assert.ok(h.logs.some((l) => l.plugin === h.plugins[0]!.manifest.name && l.code === 'MILTERD_PLUGIN_CRASHED' && /restarting/.test(l.msg)));
});

// --- errors ---------------------------------------------------------------------------------

test('a plugin that throws in every hook: each failure is logged with its hook, mail keeps flowing', async (t) => {
  const h = await harness(t, [hostile('throw-everywhere', { limits: { messageMs: MESSAGE_MS } }), headerStamp]);
  const name = h.plugins[0]!.manifest.name;
  const threw = (hook: string, callPhase = hook): void => {
    const lines = h.failures(name, 'MILTERD_FILTER_THREW', callPhase).filter((l) => String(l.err).includes(`hostile ${hook} hook threw`));
    assert.ok(lines.length > 0, `no MILTERD_FILTER_THREW line for the ${hook} hook:\n${h.dump()}`);
  };
  // Envelope hooks, and content hooks (replayed inside the eom call, so logged as eom).
  for (const [hook, phase] of [
    ['connect', 'connect'],
    ['helo', 'helo'],
    ['envfrom', 'envfrom'],
    ['envrcpt', 'envrcpt'],
    ['data', 'data'],
    ['header', 'eom'],
    ['eoh', 'eom'],
    ['body', 'eom'],
    ['eom', 'eom'],
  ] as const) {
    const c = await h.open(`throw-${hook}`);
    const s = await h.send(c, CLEAN_FROM);
    assert.ok(isReply(s.r.verdict, 'accept', 'continue'), `${hook}: ${JSON.stringify(s.r.verdict)}`);
    assert.deepEqual(s.added, [STAMP], `${hook}: the failing plugin's edits must be dropped, header-stamp's kept`);
    threw(hook, phase);
    await closeAll(c);
  }
  // Notification hooks and unknown commands.
  const c = await h.open('throw-abort');
  await c.mail(CLEAN_FROM);
  await c.rcpt('<bob@example.net>');
  c.abort();
  const again = await h.send(c, CLEAN_FROM);
  assert.deepEqual(again.added, ['X-Hostile-Throw', STAMP]);
  await closeAll(c);
  const u = await h.open('throw-unknown');
  assert.ok(isReply(await u.unknown('XYZZY'), 'continue'));
  await closeAll(u);
  await closeAll(await h.open('throw-close'));
  await sleep(100); // close is answered after the MTA hung up
  threw('abort');
  threw('unknown');
  threw('close');
  // And the daemon serves on.
  const last = await h.open();
  assert.deepEqual((await h.send(last, CLEAN_FROM)).added, ['X-Hostile-Throw', STAMP]);
  await closeAll(last);
});

// --- output ---------------------------------------------------------------------------------

// Building the output takes some CPU in the isolate (a 10 MB string, 20 000 calls): limits
// that leave room for it on a loaded machine, so that the output check is what refuses it.
const OUT_LIMITS = { cpuMs: 1000, wallMs: 1000, messageMs: 4000 };

test('a 10 MB header is refused before it leaves the sandbox', async (t) => {
  await misbehave(t, {
    fixture: 'big-output',
    options: { what: 'header' },
    limits: OUT_LIMITS,
    code: 'MILTERD_PLUGIN_OUTPUT',
    hook: 'eom',
    budgetMs: OUT_LIMITS.cpuMs,
    okHeader: 'X-Hostile-Output',
  });
});

test('1 000 headers of 60 KiB (each one allowed) are refused as a whole: the next plugin never sees them', async (t) => {
  await misbehave(t, {
    fixture: 'big-output',
    options: { what: 'headers' },
    limits: { ...OUT_LIMITS, memoryMb: 64 },
    code: 'MILTERD_PLUGIN_OUTPUT',
    hook: 'eom',
    budgetMs: OUT_LIMITS.cpuMs,
    okHeader: 'X-Hostile-Output',
  });
});

test('20 000 modifications are refused', async (t) => {
  await misbehave(t, {
    fixture: 'big-output',
    options: { what: 'mods' },
    limits: OUT_LIMITS,
    code: 'MILTERD_PLUGIN_OUTPUT',
    hook: 'eom',
    budgetMs: OUT_LIMITS.cpuMs,
    okHeader: 'X-Hostile-Output',
  });
});

test('a 200 MB body cannot even be allocated in a 32 MB isolate', async (t) => {
  await misbehave(t, {
    fixture: 'big-output',
    options: { what: 'body' },
    limits: OUT_LIMITS,
    code: 'MILTERD_FILTER_THREW',
    hook: 'eom',
    budgetMs: OUT_LIMITS.cpuMs,
    okHeader: 'X-Hostile-Output',
    check: (_bad, h) => assert.ok(h.logs.some((l) => /allocation failed/i.test(String(l.err))), h.dump()),
  });
});

test('a 24 MB replacement of a small body is refused before it leaves the sandbox', async (t) => {
  await misbehave(t, {
    fixture: 'big-output',
    options: { what: 'body', bodyMb: 24 },
    limits: { ...OUT_LIMITS, memoryMb: 128 },
    code: 'MILTERD_PLUGIN_OUTPUT',
    hook: 'eom',
    budgetMs: OUT_LIMITS.cpuMs,
    okHeader: 'X-Hostile-Output',
    check: (bad) => assert.ok(!bad.r.eom!.modifications.some((m) => m.kind === 'replbody')),
  });
});

// --- rules ----------------------------------------------------------------------------------

for (const [kind, hook] of [
  ['class', 'envrcpt'],
  ['crlf', 'envrcpt'],
  ['code', 'envrcpt'],
  ['lines', 'eom'],
] as const) {
  test(`an invalid reply (${kind}, in ${hook}) never reaches the MTA`, async (t) => {
    await misbehave(t, {
      fixture: 'bad-reply',
      options: { kind, hook },
      code: 'MILTERD_FILTER_BAD_REPLY',
      hook,
      budgetMs: LIMITS.cpuMs,
      check: (bad) => {
        const replies = [...bad.r.rcpts, bad.r.verdict];
        assert.ok(!replies.some((r) => isReply(r, 'replycode', 'reject')), JSON.stringify(replies));
      },
    });
  });
}

test('an action missing from the manifest (addHeader without actions) is refused', async (t) => {
  await misbehave(t, {
    fixture: 'undeclared-action',
    code: 'MILTERD_FILTER_BAD_MODIFICATION',
    hook: 'eom',
    budgetMs: LIMITS.cpuMs,
    check: (bad) => assert.ok(!bad.added.includes('X-Undeclared')),
  });
});

test('modifications forged past the SDK (patched Array.prototype.push) are refused by the host', async (t) => {
  await misbehave(t, {
    fixture: 'forged-mods',
    code: 'MILTERD_FILTER_BAD_MODIFICATION',
    hook: 'eom',
    budgetMs: LIMITS.cpuMs,
    okHeader: 'X-Hostile-Forged',
    check: (bad) => {
      const kinds = bad.r.eom!.modifications.map((m) => m.kind);
      assert.ok(!kinds.includes('addrcpt') && !kinds.includes('chgfrom'), kinds.join(', '));
    },
  });
});

test("a plugin's log fields cannot pose as the daemon's: another plugin's name, a queue id, a code or a level are renamed plugin_*", async (t) => {
  const h = await harness(t, [hostile('forged-log'), headerStamp]);
  const c = await h.open();
  const s = await h.send(c, '<alice@example.org>');
  assert.deepEqual(s.added, [STAMP]);
  const line = h.logs.find((l) => l.msg === 'all good');
  assert.ok(line, h.dump());
  assert.equal(line.pluginLog, true);
  assert.equal(line.filter, 'hostile-forged-log');
  assert.equal(line.level, 50, 'error, as logged: not the level the fields claim');
  assert.equal(line.code, undefined);
  assert.notEqual(line.qid, 'FORGED');
  assert.notEqual(line.session, 'FORGED');
  assert.equal(line.plugin, undefined);
  assert.equal(line.plugin_filter, '@milterd/plugin-header-stamp');
  assert.equal(line.plugin_qid, 'FORGED');
  assert.equal(line.plugin_code, 'MILTERD_PLUGIN_CRASHED');
  assert.equal(line.plugin_msg, 'forged message');
  assert.equal(line.note, 'kept');
  await closeAll(c);
});

test('a capability not granted (kv) fails the call with MILTERD_PLUGIN_CAPABILITY', async (t) => {
  const { h } = await misbehave(t, { fixture: 'no-capability', capabilities: [], code: 'MILTERD_PLUGIN_CAPABILITY', hook: 'eom', budgetMs: LIMITS.cpuMs });
  // Also said at load, when the manifest asks for it and the configuration does not grant it.
  assert.ok(h.logs.some((l) => l.plugin === 'hostile-no-capability' && l.code === 'MILTERD_PLUGIN_CAPABILITY' && String(l.missing) === 'kv'));
});

test('a capability neither asked for nor granted (dns) fails the same way', async (t) => {
  await misbehave(t, { fixture: 'no-capability', options: { service: 'dns' }, capabilities: [], code: 'MILTERD_PLUGIN_CAPABILITY', hook: 'eom', budgetMs: LIMITS.cpuMs });
});

// --- escape attempts ------------------------------------------------------------------------

/** The X-Escape report of a message, parsed. */
function report(s: Sent, header = 'X-Escape'): Record<string, unknown> {
  const m = s.r.eom?.modifications.find((x) => x.kind === 'addheader' && x.name === header);
  assert.ok(m !== undefined && m.kind === 'addheader', `no ${header} header: ${s.added.join(', ')}`);
  return JSON.parse(m.value) as Record<string, unknown>;
}

/** Everything in an X-Escape report must say the attempt failed. */
function assertNoEscape(r: Record<string, unknown>): void {
  const typeofs = r.typeofs as Record<string, string>;
  for (const [n, v] of Object.entries(typeofs)) {
    // V8 puts a console object (a no-op without an inspector) in every context; nothing else.
    assert.equal(v, n === 'console' ? 'object' : 'undefined', `typeof ${n} inside the sandbox`);
  }
  assert.match(String(r.env), /^threw ReferenceError/);
  assert.match(String(r.requireFs), /^threw ReferenceError/);
  assert.deepEqual(r.hostGlobals, [], 'the host References are deleted before plugin code runs');
  // ({}).constructor.constructor('return this')() is the isolate's own global, and it holds
  // nothing but what V8 puts in any fresh context.
  assert.equal(r.fnGlobalIsOwn, true);
  const v8Globals = new Set<string>(vm.runInNewContext('Object.getOwnPropertyNames(globalThis)') as string[]);
  const extra = (r.globals as string[]).filter((g) => !v8Globals.has(g));
  assert.deepEqual(extra, [], 'globals beyond a fresh V8 context');
  for (const k of ['viaHeader', 'viaBody', 'viaCtx', 'viaHostError']) assert.equal(r[k], 'undefined', `${k}: process reached`);
  assert.equal(r.stackFrames, 0, 'a stack frame exposed a host receiver');
  assert.match(String(r.evalImport), /^threw .*Not supported/);
  assert.match(String(r.fnImport), /^threw .*Not supported/);
  assert.deepEqual(r.sdkReferences, [], 'the SDK module exports a host Reference');
  assert.equal(r.kvWorks, 'v', 'the granted service still works through the SDK');
}

/** Some 20 probes and host calls per message: room for them on a loaded machine. */
const ESCAPE_LIMITS = { cpuMs: 500, wallMs: 1000, messageMs: 4000 };

test('escape attempts: process, require, host globals, Function constructor, import(), timers all fail inside', async (t) => {
  const h = await harness(t, [hostile('escape', { capabilities: ['log', 'kv', 'clock'], limits: ESCAPE_LIMITS }), headerStamp]);
  const c = await h.open();
  const s = await h.send(c, CLEAN_FROM);
  assert.deepEqual(s.added, ['X-Escape', STAMP]);
  assertNoEscape(report(s));
  assert.ok(!existsSync('/tmp/hostile-was-here'));
  // Even out of its isolate, a plugin would find no secrets in its process's environment:
  // only the variables Node sets up for the IPC channel.
  const pid = h.plugins[0]!.supervisor.status().pid!;
  const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter((v) => v !== '');
  assert.deepEqual(env.filter((v) => !v.startsWith('NODE_CHANNEL_')), []);
  await closeAll(c);
});

test('prototype pollution (own realm, passed objects, transfer options) reaches neither the host nor the next message', async (t) => {
  const h = await harness(t, [hostile('escape', { capabilities: ['log', 'kv', 'clock'], limits: ESCAPE_LIMITS }), headerStamp]);
  const name = h.plugins[0]!.manifest.name;
  const c = await h.open();
  const other = await h.open();
  const vandal = await h.send(c, '<pollute@example.org>');
  assert.ok(vandal.ms < ESCAPE_LIMITS.wallMs, `${Math.round(vandal.ms)} ms\n${h.dump()}`);
  assert.deepEqual(vandal.added, ['X-Escape-Vandal', 'X-Escape', STAMP], h.dump());
  // Host calls made under inherited transfer flags either failed inside the isolate or
  // returned plain values: never an object (a Reference would be one).
  const steps = report(vandal, 'X-Escape-Vandal') as Record<string, string[]>;
  assert.deepEqual(Object.keys(steps), ['reference', 'externalCopy', 'promise', 'result', 'arguments']);
  for (const [step, seen] of Object.entries(steps)) {
    for (const line of seen) assert.match(line, /^(log|kv|clock)(: (undefined|number|string)| threw: .*)$/, `${step}: ${line}`);
  }
  assertNoEscape(report(vandal));
  // The host is untouched.
  for (const p of ['polluted', 'headerPolluted', 'bodyPolluted', 'lasting', 'reference', 'externalCopy', 'promise', 'result', 'arguments']) {
    assert.equal(p in Object.prototype, false, `host Object.prototype.${p}`);
    assert.equal(p in Array.prototype, false);
    assert.equal(p in Uint8Array.prototype, false);
  }
  assert.equal(typeof Function.prototype.call.call(() => 7, undefined), 'number');
  // No crash, no kill: the sandbox answered everything itself.
  for (const code of ['MILTERD_PLUGIN_CRASHED', 'MILTERD_PLUGIN_WALL', 'MILTERD_PLUGIN_OUTPUT', 'MILTERD_FILTER_THREW']) {
    assert.equal(h.failures(name, code).length, 0, `${code}\n${h.dump()}`);
  }
  // The plugin's log lines came through as plain data.
  assert.ok(h.logs.some((l) => l.msg === 'from a vandalised isolate' && l.filter === name), h.dump());
  // The next message in the same (still polluted) isolate, and one on another connection.
  const next = await h.send(c, CLEAN_FROM);
  assert.deepEqual(next.added, ['X-Escape', STAMP]);
  const r = report(next);
  assert.equal(r.lastingMarkSeen, true, 'same isolate: the plugin sees its own mark');
  assertNoEscape(r);
  const elsewhere = await h.send(other, CLEAN_FROM);
  assert.deepEqual(elsewhere.added, ['X-Escape', STAMP]);
  assertNoEscape(report(elsewhere));
  await closeAll(c, other);
});

for (const [fixture, code] of [
  ['import-dynamic', 'MILTERD_PLUGIN_FORBIDDEN_IMPORT'],
  ['import-dynamic-computed', 'MILTERD_PLUGIN_FORBIDDEN_IMPORT'],
  ['import-fs', 'MILTERD_PLUGIN_FORBIDDEN_IMPORT'],
  ['import-net', 'MILTERD_PLUGIN_FORBIDDEN_IMPORT'],
  ['require-builtin', 'MILTERD_PLUGIN_FORBIDDEN_IMPORT'],
  // docs/plugin-manifest.md: import.meta is a bundle error, not a forbidden import.
  ['import-meta', 'MILTERD_PLUGIN_BUNDLE'],
] as const) {
  test(`refused at load: ${fixture} (${code})`, async () => {
    const logger = pino({ level: 'silent' });
    await assert.rejects(
      loadChain([hostile(fixture)], { baseDir: ROOT, sdk: await loadSdkRuntime(), logger, onError: 'tempfail' }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, code, err.message);
        assert.match(err.message, new RegExp(`hostile-${fixture}`));
        assert.match(err.message, /index\.js:\d+:\d+/, 'names file and line');
        return true;
      },
    );
  });
}

// --- supervision ----------------------------------------------------------------------------

test('a slow plugin under many connections: calls that cannot start within wallMs are answered by the sandbox, which is not killed as hung', async (t) => {
  // One isolate, 40 ms of work per recipient, 40 connections at once: the last call waits
  // about 1.6 s. The daemon gives a call wallMs + 1 s (1.3 s here) before it kills the sandbox
  // as hung; before the wall-clock limit counted queueing, that is what happened, failing every
  // call in flight and restarting the process.
  const wallMs = 300;
  const h = await harness(
    t,
    [
      {
        plugin: './test/fixtures/plugins/busy',
        onError: 'tempfail',
        poolSize: 1,
        options: { spinMs: 40 },
        limits: { ...LIMITS, cpuMs: 100, wallMs },
        breaker: { threshold: 1000, cooldownMs: 100 },
      },
      headerStamp,
    ],
  );
  const name = h.plugins[0]!.manifest.name;
  const conns = await Promise.all(Array.from({ length: 40 }, () => h.open()));
  const t0 = performance.now();
  const replies = await Promise.all(
    conns.map(async (c) => {
      await c.mail('<alice@example.org>');
      const r = await c.rcpt('<bob@example.net>');
      return { kind: typeof r === 'string' ? r : r.kind, ms: performance.now() - t0 };
    }),
  );
  const ok = replies.filter((r) => r.kind === 'continue').length;
  const late = replies.filter((r) => r.kind === 'tempfail').length;
  assert.equal(ok + late, replies.length, JSON.stringify(replies));
  assert.ok(ok >= 1, `${ok} calls ran`);
  assert.ok(late >= 10, `${late} calls waited too long`);
  // Every answer came from the sandbox, about wallMs after the call (plus the time to reach
  // it), before the daemon's hung-process timer (wallMs + 1 s).
  const slowest = Math.max(...replies.map((r) => r.ms));
  assert.ok(slowest < wallMs + 950, `slowest answer after ${Math.round(slowest)} ms`);
  assert.equal(h.plugins[0]!.supervisor.status().restarts, 0, h.dump());
  assert.equal(h.logs.filter((l) => /killing it/.test(String(l.msg))).length, 0, h.dump());
  const walls = h.failures(name, 'MILTERD_PLUGIN_WALL', 'envrcpt');
  assert.ok(walls.length >= late, h.dump());
  assert.ok(walls.some((l) => /did not start within 300 ms/.test(String(l.err ?? l.msg))), h.dump());
  // Still serving: the next message goes through.
  const after = await h.send(conns[0]!, '<alice@example.org>');
  assert.deepEqual(after.added, [STAMP]);
  await closeAll(...conns);
});

test('circuit breaker (configured defaults): after 5 runaway calls the plugin is switched off and calls fail fast', async (t) => {
  const cpuMs = 300;
  const h = await harness(t, [hostile('loop-after-await', { limits: { cpuMs, wallMs: 1000, messageMs: 4000 } }), headerStamp]);
  const name = h.plugins[0]!.manifest.name;
  const c = await h.open();
  for (let i = 0; i < 5; i++) {
    const s = await h.send(c, HOSTILE_FROM);
    assert.ok(s.ms >= cpuMs * 0.8, `run ${i}: ${Math.round(s.ms)} ms`);
    assert.deepEqual(s.added, [STAMP]);
  }
  assert.equal(h.logs.filter((l) => l.plugin === name && l.code === 'MILTERD_PLUGIN_CIRCUIT_OPEN' && l.cause === 'MILTERD_PLUGIN_CPU').length, 1, h.dump());
  assert.equal(h.plugins[0]!.supervisor.status().state, 'open');
  // Switched off: a runaway message costs nothing now, a clean one gets the policy too.
  const fast = await h.send(c, HOSTILE_FROM);
  assert.ok(fast.ms < cpuMs, `${Math.round(fast.ms)} ms`);
  assert.deepEqual(fast.added, [STAMP]);
  assert.ok(h.failures(name, 'MILTERD_PLUGIN_CIRCUIT_OPEN', 'eom').length > 0, h.dump());
  await closeAll(c);
});

test('circuit breaker (configured per plugin): failures are counted per hook, so good envelope calls in between do not hide a failing end of message', async (t) => {
  // The loop fixture answers envrcpt at once and spins in eom: each message is one good call and
  // one CPU failure. Counted per plugin, each good envrcpt reset the count and the breaker never
  // opened, however often eom failed.
  const cpuMs = 150;
  const h = await harness(t, [
    hostile('loop', { limits: { cpuMs, wallMs: 1000, messageMs: 4000 }, breaker: { threshold: 2, cooldownMs: 60_000 } }),
    headerStamp,
  ]);
  const name = h.plugins[0]!.manifest.name;
  const c = await h.open();
  for (let i = 0; i < 2; i++) {
    const s = await h.send(c, HOSTILE_FROM);
    assert.ok(s.ms >= cpuMs * 0.8, `run ${i}: ${Math.round(s.ms)} ms`);
    assert.deepEqual(s.added, [STAMP]);
  }
  assert.ok(h.failures(name, 'MILTERD_PLUGIN_CPU', 'eom').length >= 2, h.dump());
  const opened = h.logs.filter((l) => l.plugin === name && l.code === 'MILTERD_PLUGIN_CIRCUIT_OPEN');
  assert.equal(opened.length, 1, h.dump());
  assert.equal(opened[0]!.retryInMs, 60_000, 'the configured cool-down');
  assert.equal(h.plugins[0]!.supervisor.status().state, 'open');
  const fast = await h.send(c, HOSTILE_FROM);
  assert.ok(fast.ms < cpuMs, `${Math.round(fast.ms)} ms`);
  assert.deepEqual(fast.added, [STAMP]);
  await closeAll(c);
});

test('circuit breaker: opens on repeated timeouts, fails fast while open, closes after a good retry', async (t) => {
  // Runaway after an await of a host call, stopped at its CPU limit; no hook but eom.
  const h = await harness(t, [
    hostile('loop-after-await', { capabilities: ['kv'], options: { via: 'kv' }, breaker: { threshold: 3, cooldownMs: 400 } }),
    headerStamp,
  ]);
  const name = h.plugins[0]!.manifest.name;
  const p = { supervisor: h.plugins[0]!.supervisor, logs: h.logs.filter((l) => l.plugin === name) };
  const c = await h.open();
  const send = async (from: string): Promise<Sent> => {
    const r = await h.send(c, from);
    p.logs = h.logs.filter((l) => l.plugin === name);
    return r;
  };
  for (let i = 0; i < 3; i++) {
    const r = await send(HOSTILE_FROM);
    // The loop after the kv await is stopped at its CPU limit.
    assert.ok(r.ms >= LIMITS.cpuMs * 0.9 && r.ms < LIMITS.wallMs + SLACK_MS, `run ${i}: ${Math.round(r.ms)} ms`);
    assert.deepEqual(r.added, [STAMP]);
  }
  assert.ok(p.logs.some((l) => l.code === 'MILTERD_PLUGIN_CIRCUIT_OPEN'), JSON.stringify(p.logs));
  assert.equal(p.supervisor.status().state, 'open');
  const fast = await send(HOSTILE_FROM);
  assert.ok(fast.ms < LIMITS.cpuMs * 0.6, `open breaker: ${Math.round(fast.ms)} ms`);
  assert.deepEqual(fast.added, [STAMP]);
  // A failed retry after the cool-down switches it off again at once, for twice as long.
  await sleep(450);
  const failedRetry = await send(HOSTILE_FROM);
  assert.deepEqual(failedRetry.added, [STAMP]);
  assert.equal(p.supervisor.status().state, 'open', JSON.stringify(p.logs.slice(-3)));
  assert.ok(p.logs.some((l) => l.code === 'MILTERD_PLUGIN_CIRCUIT_OPEN' && l.retryInMs === 800), JSON.stringify(p.logs));
  await sleep(450);
  assert.equal(p.supervisor.status().state, 'open');
  await sleep(400);
  // A good retry closes it.
  const retry = await send(CLEAN_FROM);
  assert.deepEqual(retry.added, ['X-Hostile-Await', STAMP], 'the retry after the cool-down succeeds');
  assert.equal(p.supervisor.status().state, 'running');
  // Closed: further calls are no retries, and the next failure counts from zero.
  assert.deepEqual((await send(CLEAN_FROM)).added, ['X-Hostile-Await', STAMP]);
  assert.equal(p.logs.filter((l) => /retrying a switched-off plugin/.test(String(l.msg))).length, 2, JSON.stringify(p.logs));
  await send(HOSTILE_FROM);
  assert.equal(p.supervisor.status().state, 'running');
  assert.deepEqual((await send(CLEAN_FROM)).added, ['X-Hostile-Await', STAMP]);
  await closeAll(c);
});

test('circuit breaker: a good call ends the run of process deaths with no call in flight (counted as "process")', async (t) => {
  // Such deaths (the memory guard between calls, a kill from outside) have no hook whose good
  // calls would reset their count; without a reset, rare ones add up over days to an opening.
  const h = await harness(t, [hostile('loop', { limits: { messageMs: MESSAGE_MS }, breaker: { threshold: 2, cooldownMs: 60_000 } }), headerStamp]);
  const name = h.plugins[0]!.manifest.name;
  const sup = h.plugins[0]!.supervisor;
  const c = await h.open();
  const killAndWait = async (): Promise<void> => {
    const pid = sup.status().pid!;
    process.kill(pid, 'SIGKILL');
    const deadline = Date.now() + 5000;
    while ((sup.status().pid === pid || sup.status().state !== 'running') && Date.now() < deadline) await sleep(20);
    assert.notEqual(sup.status().pid, pid, 'restarted');
  };
  await killAndWait();
  assert.deepEqual((await h.send(c, CLEAN_FROM)).added, ['X-Hostile-Loop', STAMP]);
  await killAndWait();
  assert.equal(sup.status().restarts, 2);
  assert.equal(sup.status().state, 'running');
  assert.deepEqual(h.logs.filter((l) => l.plugin === name && l.code === 'MILTERD_PLUGIN_CIRCUIT_OPEN'), [], h.dump());
  await closeAll(c);
});

test('a killed sandbox process is restarted and serves again', async (t) => {
  const h = await harness(t, [hostile('loop', { limits: { messageMs: MESSAGE_MS } }), headerStamp]);
  const name = h.plugins[0]!.manifest.name;
  const sup = h.plugins[0]!.supervisor;
  const c = await h.open();
  assert.deepEqual((await h.send(c, CLEAN_FROM)).added, ['X-Hostile-Loop', STAMP]);
  const pid = sup.status().pid!;
  process.kill(pid, 'SIGKILL');
  const deadline = Date.now() + 5000;
  while ((sup.status().pid === pid || sup.status().state !== 'running') && Date.now() < deadline) await sleep(20);
  assert.notEqual(sup.status().pid, pid);
  assert.equal(sup.status().restarts, 1);
  assert.ok(h.logs.some((l) => l.plugin === name && l.code === 'MILTERD_PLUGIN_CRASHED'), h.dump());
  // The connection's state lived in the dead process: a new message on it still works.
  assert.deepEqual((await h.send(c, CLEAN_FROM)).added, ['X-Hostile-Loop', STAMP]);
  const d = await h.open();
  assert.deepEqual((await h.send(d, CLEAN_FROM)).added, ['X-Hostile-Loop', STAMP]);
  await closeAll(c, d);
});

test('a sandbox that does not answer is killed by the supervisor; the next call waits for the restart', async (t) => {
  // The daemon-side timeout of a call (150 ms here) is shorter than the sandbox's own wall
  // limit (300 ms), as if the sandbox process were stuck: the supervisor kills it.
  const h = await harness(t, [hostile('never-settles')]);
  const sup = h.plugins[0]!.supervisor;
  const call = (from: string): WireCall => ({
    conn: 'c1',
    msg: 1,
    connection: { hostname: 'client.example.org', family: 'inet', address: '192.0.2.7', port: 40001, helo: 'client.example.org' },
    from: { address: from, args: [] },
    rcpts: [{ address: '<bob@example.net>', args: [] }],
    macros: {},
    phase: 'eom',
    headers: [{ name: 'Subject', value: 'hi', raw: ' hi' }],
    body: new Uint8Array([0x78, 0x0d, 0x0a]),
    actions: ['addHeader'],
  });
  await assert.rejects(sup.call(call(HOSTILE_FROM), 150), { code: 'MILTERD_PLUGIN_WALL' });
  assert.ok(h.logs.some((l) => l.code === 'MILTERD_PLUGIN_WALL' && l.hook === 'eom' && /killing it/.test(l.msg)), h.dump());
  // Issued right after the kill, while the old process is still dying.
  const start = performance.now();
  const r = await sup.call(call(CLEAN_FROM), 5000);
  assert.deepEqual(r.result.mods, [{ op: 'addHeader', name: 'X-Hostile-Never', value: 'ok' }]);
  assert.ok(performance.now() - start < 3000);
  assert.equal(sup.status().restarts, 1);
});
