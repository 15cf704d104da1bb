/**
 * A sandboxed plugin as a chain Filter: each hook becomes one call into the plugin's sandbox
 * process; at end of message the call carries the whole message, and the modifications that
 * come back are applied through the host's own EomMessage, which validates every one of them
 * (names, values, indices, declared actions, what the MTA granted) exactly as for in-process
 * filters. Nothing the plugin returns reaches the MTA without that check.
 * @module
 */
import { MilterdError } from '../errors.ts';
import type { EomMessage, Filter, FilterAction, FilterContext, MacroStage, Verdict } from '../chain/filter.ts';
import type { HookName, WireCall, WireCallBase, WireMod, WireResult } from '../../sdk/src/protocol.ts';
import type { PluginLog } from './messages.ts';
import type { Supervisor } from './supervisor.ts';

/** Most modifications one plugin may return for one message. */
const MAX_MODS = 10_000;

/** Macros every call carries (when the MTA sent them), besides those the plugin asked for. */
const COMMON_MACROS = [
  'i', 'j', '_', 'v', '{daemon_name}', '{daemon_addr}', '{if_name}', '{if_addr}', '{client_addr}', '{client_name}',
  '{client_port}', '{auth_type}', '{auth_authen}', '{auth_author}', '{mail_addr}', '{mail_host}', '{mail_mailer}',
  '{rcpt_addr}', '{rcpt_host}', '{rcpt_mailer}', '{tls_version}', '{cipher}', '{msg_id}',
];

/** What the host knows about the plugin, from its manifest and its sandbox. */
export interface SandboxFilterSpec {
  readonly name: string;
  readonly hooks: readonly HookName[];
  readonly actions: readonly FilterAction[];
  readonly macros: Readonly<Partial<Record<MacroStage, readonly string[]>>>;
  /** What the plugin reads at end of message (manifest `reads`): what it does not read is not copied to it. */
  readonly reads?: { readonly headers: boolean; readonly body: boolean };
  /** Wall-clock bound of one call as seen from the daemon (the sandbox's own limit + margin). */
  readonly callTimeoutMs: number;
}

const EMPTY = new Uint8Array(0);
let connSeq = 0;
let msgSeq = 0;

/** Builds the chain Filter that forwards to a plugin's sandbox. */
export function sandboxFilter(spec: SandboxFilterSpec, sandbox: Supervisor): Filter {
  const has = new Set(spec.hooks);
  const macroNames = [...new Set([...COMMON_MACROS, ...Object.values(spec.macros).flat()])];

  const base = (ctx: FilterContext): WireCallBase => {
    const s = ctx.connState as { sandboxConn?: string };
    const m = ctx.msgState as { sandboxMsg?: number };
    s.sandboxConn ??= `${process.pid}.${++connSeq}`;
    m.sandboxMsg ??= ++msgSeq;
    const macros: Record<string, string> = {};
    for (const n of macroNames) {
      const v = ctx.getSymbol(n);
      if (v !== undefined) macros[n.startsWith('{') ? n.slice(1, -1) : n] = v;
    }
    const c = ctx.connection;
    return {
      conn: s.sandboxConn,
      msg: m.sandboxMsg,
      connection: { hostname: c.hostname, family: c.family, address: c.address, port: c.port, helo: c.helo ?? null },
      from: ctx.from === undefined ? null : { address: ctx.from.address, args: [...ctx.from.args] },
      rcpts: ctx.rcpts.map((r) => ({ address: r.address, args: [...r.args] })),
      macros,
    };
  };

  const run = async (ctx: FilterContext, call: WireCall): Promise<WireResult> => {
    let out;
    try {
      out = await sandbox.call(call, spec.callTimeoutMs);
    } catch (err) {
      const logs = (err as MilterdError).details?.logs as PluginLog[] | undefined;
      if (logs) relayLogs(ctx, logs);
      throw err;
    }
    relayLogs(ctx, out.logs);
    return out.result;
  };

  const verdictOf = (r: WireResult): Verdict => r.verdict as Verdict;

  const f: {
    -readonly [K in keyof Filter]: Filter[K];
  } = {
    name: spec.name,
    actions: spec.actions,
    macros: spec.macros,
    reads: {
      headers: (spec.reads?.headers ?? true) && (has.has('header') || has.has('eoh') || has.has('eom')),
      body: (spec.reads?.body ?? true) && (has.has('body') || has.has('eom')),
    },
  };
  if (has.has('connect')) f.connect = async (ctx) => verdictOf(await run(ctx, { ...base(ctx), phase: 'connect' }));
  if (has.has('helo')) f.helo = async (ctx, name) => verdictOf(await run(ctx, { ...base(ctx), phase: 'helo', name }));
  if (has.has('envfrom')) {
    f.envfrom = async (ctx, from) => verdictOf(await run(ctx, { ...base(ctx), phase: 'envfrom', arg: { address: from.address, args: [...from.args] } }));
  }
  if (has.has('envrcpt')) {
    f.envrcpt = async (ctx, rcpt) => verdictOf(await run(ctx, { ...base(ctx), phase: 'envrcpt', arg: { address: rcpt.address, args: [...rcpt.args] } }));
  }
  if (has.has('data')) f.data = async (ctx) => verdictOf(await run(ctx, { ...base(ctx), phase: 'data' }));
  if (has.has('unknown')) f.unknown = async (ctx, command) => verdictOf(await run(ctx, { ...base(ctx), phase: 'unknown', command }));
  if (has.has('eom') || has.has('header') || has.has('eoh') || has.has('body')) {
    f.eom = async (ctx: FilterContext, message: EomMessage): Promise<Verdict> => {
      const r = await run(ctx, {
        ...base(ctx),
        phase: 'eom',
        headers: spec.reads?.headers === false ? [] : message.headers.map((h) => ({ name: h.name, value: h.value, raw: h.raw })),
        body: spec.reads?.body === false ? EMPTY : await message.body(),
        actions: [...spec.actions],
      });
      applyMods(message, r.mods ?? []);
      return verdictOf(r);
    };
  }
  // abort and close have no verdict: one-way messages, queued in order with the connection's
  // calls, instead of round trips (close goes to every plugin on every connection).
  if (has.has('abort')) f.abort = (ctx) => sandbox.notify({ ...base(ctx), phase: 'abort' });
  // Always: the sandbox drops the connection's state on close, hook or not.
  f.close = (ctx) => {
    if ((ctx.connState as { sandboxConn?: string }).sandboxConn === undefined) return; // never called
    sandbox.notify({ ...base(ctx), phase: 'close' });
  };
  return f as Filter;
}

/**
 * Keys of the daemon's own log lines (pino's, and the bindings and fields milterd logs with).
 * A plugin's fields go on the same line, and pino writes duplicate keys as they come, so that
 * readers take the plugin's value: a plugin could pass for another one, forge a queue id or an
 * error code. Its fields with these names are renamed `plugin_<name>`.
 */
const HOST_LOG_KEYS = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'session', 'qid', 'filter', 'plugin', 'hook', 'code', 'err', 'cause', 'pluginLog', 'shadow', 'verdict']);

function relayLogs(ctx: FilterContext, logs: readonly PluginLog[]): void {
  for (const l of logs) {
    const fields: Record<string, unknown> = { pluginLog: true };
    for (const [k, v] of Object.entries(l.fields ?? {})) fields[HOST_LOG_KEYS.has(k) ? `plugin_${k}` : k] = v;
    ctx.log[l.level](fields, l.msg);
  }
}

/** Applies the plugin's edits in order through the host's validating EomMessage. */
function applyMods(m: EomMessage, mods: readonly WireMod[]): void {
  if (!Array.isArray(mods)) throw new MilterdError('MILTERD_FILTER_BAD_MODIFICATION', 'modifications must be a list');
  if (mods.length > MAX_MODS) {
    throw new MilterdError('MILTERD_PLUGIN_OUTPUT', `${mods.length} modifications in one message (at most ${MAX_MODS})`);
  }
  for (const mod of mods) {
    switch (mod?.op) {
      case 'addHeader':
        m.addHeader(mod.name, mod.value);
        break;
      case 'insertHeader':
        m.insertHeader(mod.index, mod.name, mod.value);
        break;
      case 'changeHeader':
        m.changeHeader(mod.name, mod.index, mod.value);
        break;
      case 'addRcpt':
        m.addRcpt(mod.rcpt, mod.args);
        break;
      case 'delRcpt':
        m.delRcpt(mod.rcpt);
        break;
      case 'changeFrom':
        m.changeFrom(mod.from, mod.args);
        break;
      case 'replaceBody':
        m.replaceBody(mod.body);
        break;
      case 'quarantine':
        m.quarantine(mod.reason);
        break;
      default:
        throw new MilterdError('MILTERD_FILTER_BAD_MODIFICATION', `unknown modification ${JSON.stringify((mod as { op?: unknown })?.op)}`);
    }
  }
}

