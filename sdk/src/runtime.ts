/**
 * The SDK runtime inside a plugin's isolate: hides the host's References, keeps per-connection
 * and per-message state, turns one WireCall into hook calls (replaying header, eoh and body
 * hooks at end of message) and their results into one WireResult.
 *
 * Rules that keep the sandbox shut:
 * - The host References are read and deleted from the global object when this module is
 *   evaluated, which the host makes happen before any plugin code runs. They live only in
 *   closures here, are only ever called as `ref.method(...)` (never through `.call`, `.bind` or
 *   `Reflect`, which plugin code can patch), and errors from the host are rethrown as new plain
 *   Errors carrying only strings.
 * - Everything returned to the host is rebuilt here from checked primitives, never a plugin's
 *   object, so nothing the plugin controls (getters, proxies, prototypes) crosses the boundary.
 * - Only V8 built-ins are used: an isolate has no TextDecoder, timers or console.
 * @module
 */
import {
  CAPABILITIES,
  HOOK_NAMES,
  RUNTIME_ERRORS,
  RUNTIME_PROTOCOL,
  type Action,
  type Capability,
  type HookName,
  type HostGlobals,
  type WireAddress,
  type WireCall,
  type WireConnection,
  type WireDescription,
  type WireHeader,
  type WireMod,
  type WireReply,
  type WireResult,
  type WireVerdict,
} from './protocol.ts';
import type {
  Clock,
  ConnectionInfo,
  EnvelopeAddress,
  EomMessage,
  Header,
  KeyValueStore,
  Logger,
  LogFields,
  MxRecord,
  Plugin,
  PluginContext,
  Reply,
  ReplySpec,
  Resolver,
  VerdictHelpers,
} from './index.ts';
import { decodeUtf8, encodeUtf8 } from './utf8.ts';

/** This runtime's version; index.ts exports it as SDK_VERSION. Kept equal to package.json by a test. */
export const RUNTIME_SDK_VERSION = '1.0.0';

/** Largest body chunk the body hook gets: libmilter's MILTER_MAX_DATA_SIZE, what MTAs send. */
export const MAX_BODY_CHUNK = 65535;

// --- errors ---------------------------------------------------------------------------------

/** Codes of the errors this runtime throws (the host's catalogue, src/errors.ts, defines them). */
export type RuntimeErrorCode =
  | typeof RUNTIME_ERRORS.capability
  | typeof RUNTIME_ERRORS.badArgument
  | 'MILTERD_PLUGIN_LOAD'
  | 'MILTERD_FILTER_BAD_VERDICT'
  | 'MILTERD_FILTER_BAD_REPLY'
  | 'MILTERD_FILTER_BAD_MODIFICATION';

/** Throws a plain Error with a `code`: the only kind of error the SDK makes. */
function fail(code: RuntimeErrorCode, message: string): never {
  throw Object.assign(new Error(message), { code });
}

/** A short, never-throwing description of a value a plugin gave, for error messages. */
function show(value: unknown): string {
  try {
    if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
    if (value === null || typeof value !== 'object') return String(value);
    if (Array.isArray(value)) return 'an array';
    const type = (value as { type?: unknown }).type;
    return typeof type === 'string' ? `{ type: ${JSON.stringify(type)} }` : 'an object without a verdict type';
  } catch {
    return 'an unprintable value';
  }
}

// --- host references ------------------------------------------------------------------------

/** How the runtime calls a host function (the subset of isolated-vm's TransferOptions it uses). */
export interface HostApplyOptions {
  readonly arguments?: { readonly copy?: boolean };
  readonly result?: { readonly promise?: boolean; readonly copy?: boolean };
}

/**
 * The part of an isolated-vm Reference (to a host function) the runtime uses. Structural, so
 * the SDK never imports isolated-vm and tests can pass fakes.
 */
export interface HostReference {
  apply(receiver: undefined, args: unknown[], options: HostApplyOptions): Promise<unknown>;
  applyIgnored(receiver: undefined, args: unknown[], options: HostApplyOptions): void;
  applySync(receiver: undefined, args: unknown[], options?: HostApplyOptions): unknown;
}

/** The granted host services, by capability. */
export type HostServices = Partial<Record<Capability, HostReference>>;

/** Global names of the host References, by capability (see HostGlobals). */
const GLOBAL_NAMES = {
  log: '__milterd_log',
  kv: '__milterd_kv',
  dns: '__milterd_dns',
  clock: '__milterd_clock',
} as const satisfies Record<Capability, keyof HostGlobals>;

/**
 * A failure a host service reports as data. Host service functions should resolve to this
 * instead of rejecting: an immediate rejection surfaces as an unhandled rejection in the host
 * (isolated-vm #314, #417), and a rejection's `code` does not cross the isolate boundary.
 */
export interface HostFailure {
  error: { code?: string; message: string };
}

/**
 * Reads the host References from the global object and deletes them, so plugin code never
 * sees them. Throws MILTERD_PLUGIN_LOAD if one cannot be deleted (fail closed).
 */
export function captureHostGlobals(global: object = globalThis): HostServices {
  const out: HostServices = {};
  for (const cap of CAPABILITIES) {
    const name = GLOBAL_NAMES[cap];
    const ref: unknown = (global as Record<string, unknown>)[name];
    if (!Reflect.deleteProperty(global, name) || name in global) {
      fail('MILTERD_PLUGIN_LOAD', `the SDK could not hide the host global ${name}; refusing to run plugin code`);
    }
    if (ref === undefined) continue;
    if (typeof ref !== 'object' || ref === null || typeof (ref as HostReference).apply !== 'function') {
      fail('MILTERD_PLUGIN_LOAD', `host global ${name} is not a Reference`);
    }
    out[cap] = ref as HostReference;
  }
  return out;
}

/** The granted Reference, or the capability error. */
function need(ref: HostReference | undefined, cap: Capability): HostReference {
  if (ref === undefined) {
    fail(
      RUNTIME_ERRORS.capability,
      `capability "${cap}" is not granted to this plugin: list it in milterd.capabilities in package.json, and the administrator must grant it`,
    );
  }
  return ref;
}

/**
 * Options objects for calls to the host, without a prototype: a plugin that sets, say,
 * `Object.prototype.timeout` must not change how its own host calls are made.
 */
function bare<T extends object>(o: T): T {
  return Object.freeze(Object.assign(Object.create(null) as T, o));
}
const COPY_ARGS: HostApplyOptions = bare({ arguments: bare({ copy: true }) });
const ASYNC_CALL: HostApplyOptions = bare({
  arguments: bare({ copy: true }),
  result: bare({ promise: true, copy: true }),
});
const SYNC_CALL: HostApplyOptions = bare({ arguments: bare({ copy: true }), result: bare({ copy: true }) });

/** `[CODE] message`: how a code travels in an error message across the isolate boundary. */
const CODE_PREFIX = /^\[([A-Z][A-Z0-9_]*)\] ?([\s\S]*)$/;

/**
 * A host error rebuilt as a plain Error: only its message and a string code survive. The code
 * comes from `code`, or from a `[CODE] ` prefix of the message (a rejection's `code` does not
 * cross the boundary, so the host puts it there).
 */
function hostError(what: string, err: unknown): Error {
  let message = 'failed';
  let code: unknown;
  try {
    if (typeof err === 'object' && err !== null) {
      const m = (err as { message?: unknown }).message;
      message = typeof m === 'string' ? m : message;
      code = (err as { code?: unknown }).code;
    } else if (typeof err === 'string') message = err;
  } catch {
    // keep the defaults
  }
  const prefixed = CODE_PREFIX.exec(message);
  if (prefixed !== null) {
    code ??= prefixed[1];
    message = prefixed[2]!;
  }
  const e = new Error(`${what}: ${message}`);
  return typeof code === 'string' ? Object.assign(e, { code }) : e;
}

function isHostFailure(v: unknown): v is HostFailure {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const e = (v as { error?: unknown }).error;
  return typeof e === 'object' && e !== null && typeof (e as { message?: unknown }).message === 'string';
}

/** Calls an async host service; its failures become plain Errors. */
async function callHost(ref: HostReference | undefined, cap: Capability, what: string, args: unknown[]): Promise<unknown> {
  const r = need(ref, cap);
  let out: unknown;
  try {
    out = await r.apply(undefined, args, ASYNC_CALL);
  } catch (err) {
    throw hostError(what, err);
  }
  if (isHostFailure(out)) throw hostError(what, out.error);
  return out;
}

function badArgument(message: string): never {
  fail(RUNTIME_ERRORS.badArgument, message);
}

function checkKey(what: string, key: unknown): string {
  if (typeof key !== 'string' || key.length === 0) badArgument(`${what}: key must be a non-empty string`);
  return key;
}

function checkMs(what: string, field: string, ms: unknown): number | undefined {
  if (ms === undefined) return undefined;
  if (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms <= 0) badArgument(`${what}: ${field} must be a positive integer (ms)`);
  return ms;
}

/** The host services a plugin sees: the same objects for every call. */
interface Services {
  readonly log: Logger;
  readonly kv: KeyValueStore;
  readonly dns: Resolver;
  readonly clock: Clock;
}

/** Keeps what structured clone can copy: primitives as they are, anything else as a string. */
function plainFields(fields: LogFields): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(fields)) {
    let v: unknown;
    try {
      v = fields[key];
      out[key] = v === null || (typeof v !== 'object' && typeof v !== 'function' && typeof v !== 'symbol') ? v : String(v);
    } catch {
      out[key] = '[unprintable]';
    }
  }
  return out;
}

function makeServices(host: HostServices): Services {
  const { log: logRef, kv: kvRef, dns: dnsRef, clock: clockRef } = host;

  const logAt =
    (level: 'debug' | 'info' | 'warn' | 'error') =>
    (message: string, fields?: LogFields): void => {
      const ref = need(logRef, 'log');
      const text = typeof message === 'string' ? message : String(message);
      if (fields !== undefined && (typeof fields !== 'object' || fields === null)) {
        badArgument(`log.${level}: fields must be an object`);
      }
      try {
        ref.applyIgnored(undefined, [level, text, fields], COPY_ARGS);
      } catch {
        // Not structured-clone data (a function, a class instance...): log what can be copied.
        ref.applyIgnored(undefined, [level, text, fields === undefined ? undefined : plainFields(fields)], COPY_ARGS);
      }
    };

  const kv: KeyValueStore = {
    async get(key) {
      const k = checkKey('kv.get', key);
      const v = await callHost(kvRef, 'kv', 'kv.get', ['get', k]);
      return v === undefined || v === null ? undefined : String(v);
    },
    async set(key, value, options) {
      const k = checkKey('kv.set', key);
      if (typeof value !== 'string') badArgument('kv.set: value must be a string (store JSON for more)');
      const ttl = checkMs('kv.set', 'ttlMs', options?.ttlMs);
      await callHost(kvRef, 'kv', 'kv.set', ['set', k, value, ttl]);
    },
    async incr(key, options) {
      const k = checkKey('kv.incr', key);
      const by = options?.by ?? 1;
      if (!Number.isSafeInteger(by)) badArgument('kv.incr: by must be an integer');
      const ttl = checkMs('kv.incr', 'ttlMs', options?.ttlMs);
      return Number(await callHost(kvRef, 'kv', 'kv.incr', ['incr', k, by, ttl]));
    },
    async del(key) {
      const k = checkKey('kv.del', key);
      await callHost(kvRef, 'kv', 'kv.del', ['del', k]);
    },
  };

  const lookup = async (type: 'a' | 'aaaa' | 'mx' | 'txt' | 'ptr', name: unknown, timeoutMs: unknown): Promise<unknown[]> => {
    const what = `dns.${type}`;
    if (typeof name !== 'string' || name.length === 0) badArgument(`${what}: name must be a non-empty string`);
    const timeout = checkMs(what, 'timeoutMs', timeoutMs);
    const r = await callHost(dnsRef, 'dns', `${what}(${name})`, [type, name, timeout]);
    return Array.isArray(r) ? r : [];
  };
  const strings = (list: unknown[]): string[] => list.map((s) => String(s));
  const dns: Resolver = {
    a: async (name, o) => strings(await lookup('a', name, o?.timeoutMs)),
    aaaa: async (name, o) => strings(await lookup('aaaa', name, o?.timeoutMs)),
    ptr: async (address, o) => strings(await lookup('ptr', address, o?.timeoutMs)),
    // Node's resolveTxt gives each record as its <character-string>s: join them, as SPF/DKIM readers do.
    txt: async (name, o) =>
      (await lookup('txt', name, o?.timeoutMs)).map((r) => (Array.isArray(r) ? r.map(String).join('') : String(r))),
    mx: async (name, o) =>
      (await lookup('mx', name, o?.timeoutMs)).map((r): MxRecord => {
        const { exchange, priority } = (r ?? {}) as { exchange?: unknown; priority?: unknown };
        return { exchange: String(exchange), priority: Number(priority) };
      }),
  };

  const clock: Clock = {
    now() {
      const ref = need(clockRef, 'clock');
      let v: unknown;
      try {
        v = ref.applySync(undefined, [], SYNC_CALL);
      } catch (err) {
        throw hostError('clock.now', err);
      }
      return Number(v);
    },
  };

  return Object.freeze({
    log: Object.freeze({ debug: logAt('debug'), info: logAt('info'), warn: logAt('warn'), error: logAt('error') }),
    kv: Object.freeze(kv),
    dns: Object.freeze(dns),
    clock: Object.freeze(clock),
  });
}

// --- verdicts -------------------------------------------------------------------------------

/** A hook's result after checking: a wire verdict, or skip / quarantine-and-continue. */
type Outcome = WireVerdict | { type: 'skip' } | { type: 'quarantine'; reason: string };

/** Hooks run inside the end-of-message call, where quarantine is allowed (Sendmail refuses it elsewhere). */
const CONTENT_HOOKS: ReadonlySet<HookName> = new Set<HookName>(['header', 'eoh', 'body', 'eom']);

/** Checks a reply's shape and copies it into a plain WireReply (the host checks its content). */
function toWireReply(reply: unknown, what: string): WireReply {
  const bad: (why: string) => never = (why) => fail('MILTERD_FILTER_BAD_REPLY', `${what}: ${why}`);
  if (typeof reply !== 'object' || reply === null) bad('the reply must be { code, xcode?, text? }');
  const { code, xcode, text } = reply as Record<string, unknown>;
  if (typeof code !== 'string') bad(`reply code must be a string such as '550', got ${show(code)}`);
  if (xcode !== undefined && typeof xcode !== 'string') bad(`reply xcode must be a string such as '5.7.1', got ${show(xcode)}`);
  const out: WireReply = { code };
  if (xcode !== undefined) out.xcode = xcode;
  if (typeof text === 'string') out.text = text;
  else if (Array.isArray(text) && text.every((l) => typeof l === 'string')) out.text = text.slice();
  else if (text !== undefined) bad('reply text must be a string or an array of strings');
  return out;
}

function checkReason(what: string, reason: unknown): string {
  if (typeof reason !== 'string' || reason.length === 0 || /[\0\r\n]/.test(reason)) {
    fail('MILTERD_FILTER_BAD_MODIFICATION', `${what}: the reason must be a non-empty single-line string`);
  }
  return reason;
}

/** Turns what a hook returned into an Outcome, or throws MILTERD_FILTER_BAD_VERDICT. */
function toOutcome(value: unknown, hook: HookName): Outcome {
  if (value === undefined) return { type: 'continue' };
  const type = typeof value === 'object' && value !== null ? (value as { type?: unknown }).type : undefined;
  switch (type) {
    case 'continue':
    case 'accept':
    case 'discard':
      return { type };
    case 'reject':
    case 'tempfail': {
      const reply = (value as { reply?: unknown }).reply;
      return reply === undefined ? { type } : { type, reply: toWireReply(reply, `${type} from the ${hook} hook`) };
    }
    case 'skip':
      if (hook === 'body') return { type };
      return fail('MILTERD_FILTER_BAD_VERDICT', `the ${hook} hook returned skip, which only the body hook may return`);
    case 'quarantine':
      if (CONTENT_HOOKS.has(hook)) return { type, reason: checkReason(`quarantine from the ${hook} hook`, (value as { reason?: unknown }).reason) };
      return fail(
        'MILTERD_FILTER_BAD_VERDICT',
        `the ${hook} hook returned quarantine, which is only possible at end of message (header, eoh, body and eom hooks)`,
      );
  }
  return fail(
    'MILTERD_FILTER_BAD_VERDICT',
    `the ${hook} hook returned ${show(value)}, which is not a verdict: return one of verdict.continue(), accept(), reject(), tempfail(), discard(), or nothing`,
  );
}

/** A reply for verdict.reject/tempfail: text alone gets the usual code for the verdict. */
function replySpec(type: 'reject' | 'tempfail', reply: Reply): ReplySpec {
  if (typeof reply === 'string') {
    return type === 'reject' ? { code: '550', xcode: '5.7.1', text: reply } : { code: '451', xcode: '4.7.1', text: reply };
  }
  const r = toWireReply(reply, `verdict.${type}`);
  if (Array.isArray(r.text)) Object.freeze(r.text);
  return r;
}

const CONTINUE = Object.freeze({ type: 'continue' as const });
const ACCEPT = Object.freeze({ type: 'accept' as const });
const DISCARD = Object.freeze({ type: 'discard' as const });
const SKIP = Object.freeze({ type: 'skip' as const });
const REJECT = Object.freeze({ type: 'reject' as const });
const TEMPFAIL = Object.freeze({ type: 'tempfail' as const });

/** The verdict builders (exported by index.ts as `verdict`). */
export const verdictHelpers: VerdictHelpers = Object.freeze({
  continue: () => CONTINUE,
  accept: () => ACCEPT,
  discard: () => DISCARD,
  skip: () => SKIP,
  reject: (reply?: Reply) =>
    reply === undefined ? REJECT : Object.freeze({ type: 'reject' as const, reply: Object.freeze(replySpec('reject', reply)) }),
  tempfail: (reply?: Reply) =>
    reply === undefined ? TEMPFAIL : Object.freeze({ type: 'tempfail' as const, reply: Object.freeze(replySpec('tempfail', reply)) }),
  quarantine: (reason: string) => Object.freeze({ type: 'quarantine' as const, reason: checkReason('verdict.quarantine', reason) }),
});

// --- the end-of-message message -------------------------------------------------------------

const HEADER_NAME = /^[\x21-\x39\x3b-\x7e]+$/; // RFC 5322 ftext: printable ASCII except ':'

function sameName(a: string, b: string): boolean {
  return a.length === b.length && a.toLowerCase() === b.toLowerCase();
}

function freezeHeader(h: WireHeader): Header {
  return Object.freeze({ name: h.name, value: h.value, raw: h.raw });
}

/** A header as this plugin added it, shown as the host will store it (line ends LF, one space after the colon). */
function newHeader(name: string, value: string): Header {
  const v = value.includes('\r') ? value.replace(/\r\n?/g, '\n') : value;
  return Object.freeze({ name, value: v, raw: ` ${v}` });
}

/** Line ends of a string body made CRLF, as the MTA stores a message. */
function crlf(s: string): string {
  return s.replace(/\r\n|\r|\n/g, '\r\n');
}

/**
 * The EomMessage of one end-of-message call: records WireMods in order and keeps its own view
 * of headers and body up to date, with the same rules as the host's MessageEditor
 * (src/chain/message.ts). `close` ends it: later modifications throw.
 */
function createMessage(
  call: Extract<WireCall, { phase: 'eom' }>,
  mods: WireMod[],
): { message: EomMessage; close(): void } {
  const actions: ReadonlySet<Action> = new Set(call.actions);
  let headers: readonly Header[] = Object.freeze(call.headers.map(freezeHeader));
  let body = call.body;
  let text: string | undefined;
  let open = true;

  const bad: (message: string) => never = (message) => fail('MILTERD_FILTER_BAD_MODIFICATION', message);
  const may = (action: Action, op: string): void => {
    if (!open) bad(`${op}: the end-of-message call is over; modify the message before the eom hook returns`);
    if (!actions.has(action)) {
      bad(
        `${op} needs the "${action}" action, which this plugin may not take on this message: list it in milterd.actions in package.json (the MTA must offer it too; check message.can('${action}'))`,
      );
    }
  };
  const name = (op: string, n: unknown): string => {
    if (typeof n !== 'string' || !HEADER_NAME.test(n)) bad(`${op}: invalid header name ${show(n)}`);
    return n;
  };
  const value = (op: string, v: unknown): string => {
    if (typeof v !== 'string' || v.includes('\0')) bad(`${op}: the header value must be a string without NUL`);
    return v;
  };
  const position = (op: string, i: unknown, min: number): number => {
    if (typeof i !== 'number' || !Number.isSafeInteger(i) || i < min) bad(`${op}: the index must be an integer >= ${min}, got ${show(i)}`);
    return i;
  };
  const address = (op: string, a: unknown): string => {
    if (typeof a !== 'string' || a.length === 0 || /[\0\r\n]/.test(a)) bad(`${op}: the address must be a non-empty string without NUL, CR or LF`);
    return a;
  };
  const esmtpArgs = (op: string, args: unknown): string | undefined => {
    const list = typeof args === 'string' ? [args] : Array.isArray(args) ? args : args === undefined ? [] : undefined;
    if (list === undefined || !list.every((a) => typeof a === 'string' && !/[\0\r\n]/.test(a))) {
      bad(`${op}: ESMTP arguments must be a string or an array of strings, without NUL, CR or LF`);
    }
    const joined = (list as string[]).join(' ').trim();
    return joined === '' ? undefined : joined;
  };
  const edit = (next: Header[]): void => {
    headers = Object.freeze(next);
  };
  /** smfi_chgheader on the view, as the host applies it (and Sendmail: changing a missing header adds it). */
  const change = (n: string, v: string, index: number): void => {
    const next = headers.slice();
    let seen = 0;
    const at = next.findIndex((h) => sameName(h.name, n) && ++seen === index);
    if (at === -1) {
      if (v !== '') next.push(newHeader(n, v));
    } else if (v === '') {
      next.splice(at, 1);
    } else {
      // Keep the original's leading white space style, as the host does.
      const old = next[at]!;
      const ws = /^[ \t]*/.exec(old.raw)![0];
      const lead = ws === '' && old.raw.length > 0 ? '' : ws || ' ';
      const h = newHeader(old.name, v);
      next[at] = Object.freeze({ name: old.name, value: h.value, raw: lead + h.value });
    }
    edit(next);
  };

  const message: EomMessage = {
    get headers() {
      return headers;
    },
    header(n, index = 1) {
      if (typeof n !== 'string') return undefined;
      let seen = 0;
      return headers.find((h) => sameName(h.name, n) && ++seen === index)?.value;
    },
    get body() {
      return body;
    },
    bodyText() {
      return (text ??= decodeUtf8(body));
    },
    can(action) {
      return actions.has(action);
    },
    addHeader(n, v) {
      may('addHeader', 'addHeader');
      const hn = name('addHeader', n);
      const hv = value('addHeader', v);
      mods.push({ op: 'addHeader', name: hn, value: hv });
      edit([...headers, newHeader(hn, hv)]);
    },
    insertHeader(n, v, index = 0) {
      may('addHeader', 'insertHeader');
      const hn = name('insertHeader', n);
      const hv = value('insertHeader', v);
      const i = position('insertHeader', index, 0);
      mods.push({ op: 'insertHeader', index: i, name: hn, value: hv });
      const next = headers.slice();
      next.splice(Math.min(i, next.length), 0, newHeader(hn, hv));
      edit(next);
    },
    changeHeader(n, v, index = 1) {
      may('changeHeader', 'changeHeader');
      const hn = name('changeHeader', n);
      const hv = value('changeHeader', v);
      const i = position('changeHeader', index, 1);
      mods.push({ op: 'changeHeader', name: hn, index: i, value: hv });
      change(hn, hv, i);
    },
    deleteHeader(n, index = 1) {
      may('changeHeader', 'deleteHeader');
      const hn = name('deleteHeader', n);
      const i = position('deleteHeader', index, 1);
      mods.push({ op: 'changeHeader', name: hn, index: i, value: '' });
      change(hn, '', i);
    },
    addRcpt(rcpt, args) {
      may('addRcpt', 'addRcpt');
      const a = address('addRcpt', rcpt);
      const x = esmtpArgs('addRcpt', args);
      mods.push(x === undefined ? { op: 'addRcpt', rcpt: a } : { op: 'addRcpt', rcpt: a, args: x });
    },
    delRcpt(rcpt) {
      may('delRcpt', 'delRcpt');
      mods.push({ op: 'delRcpt', rcpt: address('delRcpt', rcpt) });
    },
    changeFrom(from, args) {
      may('changeFrom', 'changeFrom');
      const a = address('changeFrom', from);
      const x = esmtpArgs('changeFrom', args);
      mods.push(x === undefined ? { op: 'changeFrom', from: a } : { op: 'changeFrom', from: a, args: x });
    },
    replaceBody(b) {
      may('replaceBody', 'replaceBody');
      // Copy a Uint8Array: the body is what it was at the call, whatever the plugin does later.
      const bytes = typeof b === 'string' ? encodeUtf8(crlf(b)) : b instanceof Uint8Array ? b.slice() : undefined;
      if (bytes === undefined) bad('replaceBody: the body must be a Uint8Array or a string');
      mods.push({ op: 'replaceBody', body: bytes });
      body = bytes;
      text = undefined;
    },
    quarantine(reason) {
      may('quarantine', 'quarantine');
      mods.push({ op: 'quarantine', reason: checkReason('quarantine', reason) });
    },
  };
  return {
    message: Object.freeze(message),
    close() {
      open = false;
    },
  };
}

// --- plugins --------------------------------------------------------------------------------

const PLUGIN_KEYS: ReadonlySet<string> = new Set<string>([...HOOK_NAMES, 'state']);

/** A plugin with its state types erased: how the runtime holds it. */
type AnyPlugin = Plugin<object, object>;

/**
 * Checks a plugin's shape; throws MILTERD_PLUGIN_LOAD naming the problem. Hooks may be own or
 * inherited (a class instance works); own properties must be hooks or `state`, so a misspelt
 * hook (`envRcpt`) is an error instead of a hook that is never called.
 */
export function checkPlugin(def: unknown): asserts def is AnyPlugin {
  const bad: (message: string) => never = (message) => fail('MILTERD_PLUGIN_LOAD', message);
  if (typeof def !== 'object' || def === null) bad(`a plugin must be an object (export default definePlugin({ ... })), got ${show(def)}`);
  const obj = def as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!PLUGIN_KEYS.has(key)) bad(`unknown plugin property "${key}": hooks are ${HOOK_NAMES.join(', ')}; state goes in "state"`);
  }
  let hooks = 0;
  for (const hook of HOOK_NAMES) {
    const fn = obj[hook];
    if (fn === undefined) continue;
    if (typeof fn !== 'function') bad(`hook "${hook}" must be a function, got ${show(fn)}`);
    hooks++;
  }
  if (hooks === 0) bad(`a plugin must define at least one hook (${HOOK_NAMES.join(', ')})`);
  const state = obj.state;
  if (state !== undefined) {
    if (typeof state !== 'object' || state === null) bad('"state" must be an object { conn?, msg? } of factories');
    for (const key of Object.keys(state)) {
      const f = (state as Record<string, unknown>)[key];
      if (key !== 'conn' && key !== 'msg') bad(`unknown state property "${key}": state has conn and msg`);
      if (typeof f !== 'function') bad(`state.${key} must be a function returning a new object`);
    }
  }
}

/** Hooks a checked plugin defines, in HOOK_NAMES order. */
function hooksOf(def: AnyPlugin): HookName[] {
  return HOOK_NAMES.filter((h) => typeof def[h] === 'function');
}

// --- dispatch -------------------------------------------------------------------------------

/** State the runtime keeps for one connection. */
interface ConnectionState {
  conn: object | undefined;
  msgSeq: number;
  msg: object | undefined;
}

/** The runtime's entry points, for the host bootstrap (index.ts exports them with `__` names). */
export interface Runtime {
  /** Registers the plugin (once); throws MILTERD_PLUGIN_LOAD if it is not a valid plugin. */
  register(def: unknown): void;
  /** What the registered plugin offers. */
  describe(): WireDescription;
  /**
   * One call into the plugin. Rejects with the plugin's error; an error with a `MILTERD_*`
   * code (the runtime's own, or a host service's the plugin did not catch) is rethrown with
   * the message `[CODE] message`, since only messages cross the isolate boundary.
   */
  dispatch(call: WireCall): Promise<WireResult>;
}

function connectionInfo(c: WireConnection): ConnectionInfo {
  return Object.freeze({ hostname: c.hostname, family: c.family, address: c.address, port: c.port, helo: c.helo ?? undefined });
}

function envelopeAddress(a: WireAddress): EnvelopeAddress {
  return Object.freeze({ address: a.address, args: Object.freeze(a.args.slice()) });
}

function newState(factory: (() => object) | undefined, which: 'conn' | 'msg'): object {
  if (factory === undefined) return {};
  const s: unknown = factory();
  if (typeof s !== 'object' || s === null) throw new TypeError(`state.${which}() must return an object, got ${show(s)}`);
  return s;
}

/** An error for the host: a `MILTERD_*` code moved into the message, where it survives the boundary. */
function forHost(err: unknown): unknown {
  try {
    if (typeof err !== 'object' || err === null) return err;
    const { code, message } = err as { code?: unknown; message?: unknown };
    if (typeof code !== 'string' || !code.startsWith('MILTERD_')) return err;
    const text = typeof message === 'string' ? message : '';
    return Object.assign(new Error(text.startsWith(`[${code}]`) ? text : `[${code}] ${text}`), { code });
  } catch {
    return err;
  }
}

/**
 * Reads the plugin's options (plain data the host copied in) and deletes the global, so they
 * reach the plugin only as a frozen `ctx.options`.
 */
export function captureOptions(global: object = globalThis): Readonly<Record<string, unknown>> {
  const name = '__milterd_options';
  const raw: unknown = (global as Record<string, unknown>)[name];
  if (!Reflect.deleteProperty(global, name) || name in global) {
    fail('MILTERD_PLUGIN_LOAD', `the SDK could not hide the host global ${name}; refusing to run plugin code`);
  }
  const freeze = (v: unknown): unknown => {
    if (v !== null && typeof v === 'object') {
      for (const x of Object.values(v)) freeze(x);
      Object.freeze(v);
    }
    return v;
  };
  return (raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? freeze(raw) : Object.freeze({})) as Readonly<
    Record<string, unknown>
  >;
}

/** Builds a runtime over the given host services. Tests pass fakes; the isolate uses the captured globals. */
export function createRuntime(host: HostServices, options: Readonly<Record<string, unknown>> = Object.freeze({})): Runtime {
  const services = makeServices(host);
  const connections = new Map<string, ConnectionState>();
  let plugin: AnyPlugin | undefined;

  const registered = (): AnyPlugin => plugin ?? fail('MILTERD_PLUGIN_LOAD', 'no plugin is registered in this sandbox');

  function context(def: AnyPlugin, cs: ConnectionState, call: WireCall): PluginContext<object, object> {
    const macros = call.macros;
    return Object.freeze({
      connection: connectionInfo(call.connection),
      envelope: Object.freeze({
        from: call.from === null ? undefined : envelopeAddress(call.from),
        rcpts: Object.freeze(call.rcpts.map(envelopeAddress)),
      }),
      getSymbol(name: string): string | undefined {
        if (typeof name !== 'string') return undefined;
        const key = name.length > 2 && name.startsWith('{') && name.endsWith('}') ? name.slice(1, -1) : name;
        return Object.hasOwn(macros, key) ? macros[key] : undefined;
      },
      get conn() {
        return (cs.conn ??= newState(def.state?.conn, 'conn'));
      },
      get msg() {
        return (cs.msg ??= newState(def.state?.msg, 'msg'));
      },
      options,
      log: services.log,
      kv: services.kv,
      dns: services.dns,
      clock: services.clock,
    });
  }

  /** An envelope hook's result as a wire verdict (skip and quarantine are refused by toOutcome). */
  const envelope = (value: unknown, hook: HookName): WireResult => ({ verdict: toOutcome(value, hook) as WireVerdict });

  /** Replays header, eoh and body hooks, then eom; the first verdict other than continue ends it. */
  async function endOfMessage(
    def: AnyPlugin,
    ctx: PluginContext<object, object>,
    call: Extract<WireCall, { phase: 'eom' }>,
  ): Promise<WireResult> {
    const mods: WireMod[] = [];
    const { message, close } = createMessage(call, mods);
    /** undefined to go on; a verdict to stop. Quarantine is recorded as a modification. */
    const step = (value: unknown, hook: HookName): WireVerdict | 'skip' | undefined => {
      const o = toOutcome(value, hook);
      if (o.type === 'quarantine') {
        message.quarantine(o.reason);
        return undefined;
      }
      if (o.type === 'skip') return 'skip';
      return o.type === 'continue' ? undefined : o;
    };
    try {
      if (def.header !== undefined) {
        for (const h of call.headers) {
          const v = step(await def.header(ctx, freezeHeader(h)), 'header');
          if (v !== undefined) return { verdict: v as WireVerdict, mods };
        }
      }
      if (def.eoh !== undefined) {
        const v = step(await def.eoh(ctx), 'eoh');
        if (v !== undefined) return { verdict: v as WireVerdict, mods };
      }
      const body = call.body;
      if (def.body !== undefined) {
        for (let at = 0; at < body.length; at += MAX_BODY_CHUNK) {
          const v = step(await def.body(ctx, body.subarray(at, at + MAX_BODY_CHUNK)), 'body');
          if (v === 'skip') break;
          if (v !== undefined) return { verdict: v, mods };
        }
      }
      if (def.eom !== undefined) {
        const v = step(await def.eom(ctx, message), 'eom');
        if (v !== undefined) return { verdict: v as WireVerdict, mods };
      }
      return { verdict: { type: 'continue' }, mods };
    } finally {
      close();
    }
  }

  async function run(call: WireCall): Promise<WireResult> {
    const def = registered();
    let cs = connections.get(call.conn);
    if (cs === undefined) {
      cs = { conn: undefined, msgSeq: call.msg, msg: undefined };
      connections.set(call.conn, cs);
    } else if (cs.msgSeq !== call.msg) {
      cs.msgSeq = call.msg;
      cs.msg = undefined;
    }
    const ctx = context(def, cs, call);
    switch (call.phase) {
      case 'connect':
        return envelope(def.connect === undefined ? undefined : await def.connect(ctx, ctx.connection), 'connect');
      case 'helo':
        return envelope(def.helo === undefined ? undefined : await def.helo(ctx, call.name), 'helo');
      case 'envfrom':
        return envelope(def.envfrom === undefined ? undefined : await def.envfrom(ctx, envelopeAddress(call.arg)), 'envfrom');
      case 'envrcpt':
        return envelope(def.envrcpt === undefined ? undefined : await def.envrcpt(ctx, envelopeAddress(call.arg)), 'envrcpt');
      case 'data':
        return envelope(def.data === undefined ? undefined : await def.data(ctx), 'data');
      case 'unknown':
        return envelope(def.unknown === undefined ? undefined : await def.unknown(ctx, call.command), 'unknown');
      case 'eom':
        return endOfMessage(def, ctx, call);
      case 'abort':
        try {
          if (def.abort !== undefined) await def.abort(ctx);
        } finally {
          cs.msg = undefined; // libmilter: after an abort the next message starts clean
        }
        return { verdict: { type: 'continue' } };
      case 'close':
        try {
          if (def.close !== undefined) await def.close(ctx);
        } finally {
          connections.delete(call.conn);
        }
        return { verdict: { type: 'continue' } };
      default:
        return fail('MILTERD_PLUGIN_BAD_ARGUMENT', `unknown phase ${show((call as { phase?: unknown }).phase)}`);
    }
  }

  return {
    register(def) {
      if (plugin !== undefined) fail('MILTERD_PLUGIN_LOAD', 'a plugin is already registered in this sandbox');
      checkPlugin(def);
      plugin = def;
    },
    describe() {
      return { protocol: RUNTIME_PROTOCOL, sdkVersion: RUNTIME_SDK_VERSION, hooks: hooksOf(registered()) };
    },
    async dispatch(call) {
      try {
        return await run(call);
      } catch (err) {
        throw forHost(err);
      }
    },
  };
}

/** The runtime of this isolate, over the host globals captured (and deleted) right now. */
export const defaultRuntime: Runtime = createRuntime(captureHostGlobals(), captureOptions());
