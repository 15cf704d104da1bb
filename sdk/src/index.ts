/**
 * `@milterd/sdk`: write milterd filter plugins. A plugin is an ES module whose default export
 * is `definePlugin({...})`; milterd runs it in a sandbox (an isolated-vm isolate: V8 only, no
 * Node APIs) and calls its hooks, one per milter phase.
 *
 * ```ts
 * import { definePlugin, verdict } from '@milterd/sdk';
 *
 * export default definePlugin({
 *   envrcpt(ctx, rcpt) {
 *     if (rcpt.address === '<spamtrap@example.org>') return verdict.reject('No such user');
 *   },
 *   eom(ctx, message) {
 *     message.addHeader('X-Checked', 'yes');
 *   },
 * });
 * ```
 * @module
 */
import type { Action, Capability, HookName } from './protocol.ts';
import { RUNTIME_SDK_VERSION, checkPlugin, defaultRuntime, verdictHelpers } from './runtime.ts';

export type { Action, Capability, HookName };

/** Version of this SDK (semver); milterd checks plugins' `milterd.sdk` range against it. */
export const SDK_VERSION: string = RUNTIME_SDK_VERSION;

// --- values ---------------------------------------------------------------------------------

/** A value, or a promise of it: every hook may be async. */
export type Awaitable<T> = T | Promise<T>;

/** Per-connection or per-message state: any object; the plugin's `state` factories shape it. */
export type PluginState = Record<string, unknown>;

/** The SMTP client, from the MTA's connect and HELO information. */
export interface ConnectionInfo {
  /** Client host name as the MTA resolved it, or `[address]` when it has none. */
  readonly hostname: string;
  /** `inet` (IPv4), `inet6`, `unix` (local socket) or `unknown` (the MTA did not say). */
  readonly family: 'unknown' | 'unix' | 'inet' | 'inet6';
  /** Client address (IP, or socket path for `unix`); empty for `unknown`. */
  readonly address: string;
  /** Client port; 0 when not applicable. */
  readonly port: number;
  /** HELO/EHLO name, once the client sent one. */
  readonly helo: string | undefined;
}

/** A sender or recipient as the MTA gave it. */
export interface EnvelopeAddress {
  /** The address as in MAIL FROM / RCPT TO, usually with angle brackets: `<a@example.org>`, `<>`. */
  readonly address: string;
  /** ESMTP parameters, e.g. `['SIZE=1234', 'BODY=8BITMIME']`. */
  readonly args: readonly string[];
}

/** The envelope of the current message. */
export interface Envelope {
  /** Sender, once MAIL FROM was seen. */
  readonly from: EnvelopeAddress | undefined;
  /** Recipients accepted so far (rejected ones are not listed). */
  readonly rcpts: readonly EnvelopeAddress[];
}

/** A header of the message. */
export interface Header {
  /** Field name as written (`Subject`); compare case-insensitively. */
  readonly name: string;
  /** Value without the one space after the colon; folded lines keep their line breaks. */
  readonly value: string;
  /** Value exactly as it followed the colon in the message (leading white space kept). */
  readonly raw: string;
}

// --- verdicts -------------------------------------------------------------------------------

/** The SMTP reply the MTA gives for a reject or tempfail (libmilter's smfi_setreply). */
export interface ReplySpec {
  /** Three-digit code: 5xx for reject, 4xx for tempfail. */
  readonly code: string;
  /** Enhanced status code `x.y.z`, its class matching the code's first digit (`5.7.1`). */
  readonly xcode?: string;
  /** Reply text: one line, or up to 32 lines (smfi_setmlreply). No CR or LF inside a line. */
  readonly text?: string | readonly string[];
}

/** Let the message (or recipient, or connection) go on to the next plugin. */
export interface ContinueVerdict {
  readonly type: 'continue';
}
/** This plugin is done: accept without calling it again for this message (at connect or helo: this connection). */
export interface AcceptVerdict {
  readonly type: 'accept';
}
/** Refuse with a 5xx reply; at RCPT only that recipient. */
export interface RejectVerdict {
  readonly type: 'reject';
  readonly reply?: ReplySpec;
}
/** Refuse with a 4xx reply (the client retries later); at RCPT only that recipient. */
export interface TempfailVerdict {
  readonly type: 'tempfail';
  readonly reply?: ReplySpec;
}
/** Accept the message and silently drop it, for all recipients. */
export interface DiscardVerdict {
  readonly type: 'discard';
}
/** From the body hook only: stop receiving body chunks and go on to `eom` (SMFIS_SKIP). */
export interface SkipVerdict {
  readonly type: 'skip';
}
/** From header, eoh, body and eom hooks: quarantine the message (smfi_quarantine) and continue. */
export interface QuarantineVerdict {
  readonly type: 'quarantine';
  readonly reason: string;
}

/** What a hook decides. Returning nothing is the same as `verdict.continue()`. */
export type Verdict = ContinueVerdict | AcceptVerdict | RejectVerdict | TempfailVerdict | DiscardVerdict;
/** What header, eoh and eom hooks may return: a verdict, or quarantine-and-continue. */
export type ContentVerdict = Verdict | QuarantineVerdict;
/** What the body hook may return: a content verdict, or skip the rest of the body. */
export type BodyVerdict = ContentVerdict | SkipVerdict;

/**
 * A reply: a full {@link ReplySpec}, or just its text, which gets `550 5.7.1` with reject and
 * `451 4.7.1` with tempfail.
 */
export type Reply = ReplySpec | string;

/** Builds verdicts: `return verdict.reject({ code: '550', xcode: '5.7.1', text: 'No' })`. */
export interface VerdictHelpers {
  /** Go on (the same as returning nothing). */
  continue(): ContinueVerdict;
  /** Done with this message (or connection, at connect/helo): no more calls for it. */
  accept(): AcceptVerdict;
  /** 5xx: refuse the message, or at RCPT the recipient. Checks the reply's shape at once. */
  reject(reply?: Reply): RejectVerdict;
  /** 4xx: ask the client to retry later. Checks the reply's shape at once. */
  tempfail(reply?: Reply): TempfailVerdict;
  /** Accept and silently drop the message. */
  discard(): DiscardVerdict;
  /** Body hook only: no more body chunks; `eom` is still called. */
  skip(): SkipVerdict;
  /** Header, eoh, body or eom hooks: quarantine the message and continue (needs the `quarantine` action). */
  quarantine(reason: string): QuarantineVerdict;
}

/** The verdict builders. Verdict objects are frozen; plain `{ type: 'reject' }` objects work too. */
export const verdict: VerdictHelpers = verdictHelpers;

// --- host services --------------------------------------------------------------------------

/** Structured fields of a log line: plain data (strings, numbers, booleans, arrays, objects). */
export type LogFields = Readonly<Record<string, unknown>>;

/** Logging through milterd's logger, tagged with the plugin's name (capability `log`). */
export interface Logger {
  /** Debug detail, usually filtered out. */
  debug(message: string, fields?: LogFields): void;
  /** Normal events. */
  info(message: string, fields?: LogFields): void;
  /** Something unexpected the plugin handled. */
  warn(message: string, fields?: LogFields): void;
  /** Something failed. */
  error(message: string, fields?: LogFields): void;
}

/** Options of a key/value write. */
export interface KvSetOptions {
  /** Expire the key this many ms (an integer) after this write. Without it, the key lives until deleted or evicted. */
  readonly ttlMs?: number;
}

/** Options of a key/value increment. */
export interface KvIncrOptions {
  /** Amount to add (an integer, may be negative). Default 1. */
  readonly by?: number;
  /** Set the key's expiry to this many ms from now (an integer), as `set` does; without it the expiry is kept. */
  readonly ttlMs?: number;
}

/**
 * A key/value store shared by all of this plugin's sandboxes, namespaced per plugin by milterd
 * (capability `kv`). Values are strings; store JSON for more.
 */
export interface KeyValueStore {
  /** The value, or undefined when the key does not exist or expired. */
  get(key: string): Promise<string | undefined>;
  /** Sets the value, optionally with an expiry. */
  set(key: string, value: string, options?: KvSetOptions): Promise<void>;
  /** Adds to an integer counter (a missing key counts from 0) and returns the new value. */
  incr(key: string, options?: KvIncrOptions): Promise<number>;
  /** Deletes the key (nothing happens when it does not exist). */
  del(key: string): Promise<void>;
}

/** Options of a DNS lookup. */
export interface DnsOptions {
  /** Give up after this many ms (an integer; the lookup rejects). Default: milterd's; keep it below the plugin's wallMs. */
  readonly timeoutMs?: number;
}

/** An MX record. */
export interface MxRecord {
  /** Mail exchanger host name. */
  readonly exchange: string;
  /** Preference: lower is tried first. */
  readonly priority: number;
}

/**
 * DNS lookups through milterd's resolver (capability `dns`). A name that does not exist or has
 * no record of the type gives `[]`; other failures reject with an Error with a `code`, whose
 * message names the resolver's error (`ETIMEOUT`, `ESERVFAIL`, `ECONNREFUSED`...).
 */
export interface Resolver {
  /** IPv4 addresses of `name`. */
  a(name: string, options?: DnsOptions): Promise<string[]>;
  /** IPv6 addresses of `name`. */
  aaaa(name: string, options?: DnsOptions): Promise<string[]>;
  /** Mail exchangers of `name`. */
  mx(name: string, options?: DnsOptions): Promise<MxRecord[]>;
  /** TXT records of `name`, each record's strings joined into one. */
  txt(name: string, options?: DnsOptions): Promise<string[]>;
  /** Host names of an IPv4 or IPv6 address (reverse lookup). */
  ptr(address: string, options?: DnsOptions): Promise<string[]>;
}

/** The host's clock (capability `clock`): the daemon's time, which tests can control, unlike `Date.now()`. */
export interface Clock {
  /** Milliseconds since the Unix epoch, from the host. */
  now(): number;
}

// --- context and message --------------------------------------------------------------------

/**
 * What every hook receives. `conn` and `msg` are this plugin's private state; host services
 * throw an Error with `code` `MILTERD_PLUGIN_CAPABILITY` when the administrator did not grant them.
 */
export interface PluginContext<C extends object = PluginState, M extends object = PluginState> {
  /** The SMTP client. */
  readonly connection: ConnectionInfo;
  /** Sender and recipients of the current message so far. */
  readonly envelope: Envelope;
  /** A macro's value: `getSymbol('i')` and `getSymbol('{i}')` are the same lookup. */
  getSymbol(name: string): string | undefined;
  /** State of this connection (all its messages); made by `state.conn()`, `{}` without it. */
  readonly conn: C;
  /** State of the current message: a fresh `state.msg()` (or `{}`) per message and after an abort. */
  readonly msg: M;
  /** The plugin's options from the administrator's configuration (frozen plain data; `{}` if none). */
  readonly options: Readonly<Record<string, unknown>>;
  /** Logging (capability `log`). */
  readonly log: Logger;
  /** Key/value store (capability `kv`). */
  readonly kv: KeyValueStore;
  /** DNS lookups (capability `dns`). */
  readonly dns: Resolver;
  /** Wall clock (capability `clock`). */
  readonly clock: Clock;
}

/**
 * The message at end of message, as left by the plugins before this one, with its modifiers.
 * Each modifier checks its arguments, needs its action (declared in `milterd.actions`, offered
 * by the MTA: see {@link EomMessage.can}) and otherwise throws an Error with `code`
 * `MILTERD_FILTER_BAD_MODIFICATION`. Edits are visible at once in `headers` and `body`, and
 * reach the MTA only if the eom hook ends without throwing.
 */
export interface EomMessage {
  /** Current headers in order, this plugin's own edits included. */
  readonly headers: readonly Header[];
  /** Value of the `n`-th (1-based) header called `name` (case-insensitive), if there is one. */
  header(name: string, n?: number): string | undefined;
  /** Current body (CRLF line ends), this plugin's `replaceBody` included. */
  readonly body: Uint8Array;
  /** The current body decoded as UTF-8 (invalid bytes become U+FFFD). */
  bodyText(): string;
  /** Whether this plugin may take `action` on this message (declared and offered by the MTA). */
  can(action: Action): boolean;

  /** Appends a header (action `addHeader`; smfi_addheader). */
  addHeader(name: string, value: string): void;
  /** Inserts a header before the `index`-th current one, 0 = top (action `addHeader`; smfi_insheader). */
  insertHeader(name: string, value: string, index?: number): void;
  /** Sets the `n`-th (1-based) header called `name`; adds it if missing; `''` deletes it (action `changeHeader`; smfi_chgheader). */
  changeHeader(name: string, value: string, n?: number): void;
  /** Deletes the `n`-th (1-based) header called `name`, if present (action `changeHeader`). */
  deleteHeader(name: string, n?: number): void;
  /** Adds a recipient, optionally with ESMTP arguments (action `addRcpt`; smfi_addrcpt_par). */
  addRcpt(rcpt: string, args?: string | readonly string[]): void;
  /** Removes a recipient, as given in RCPT TO; angle brackets optional (action `delRcpt`; smfi_delrcpt). */
  delRcpt(rcpt: string): void;
  /** Replaces the sender, optionally with ESMTP arguments (action `changeFrom`; smfi_chgfrom). */
  changeFrom(from: string, args?: string | readonly string[]): void;
  /** Replaces the body; a string is UTF-8 encoded with its line ends made CRLF (action `replaceBody`; smfi_replacebody). */
  replaceBody(body: Uint8Array | string): void;
  /** Puts the message in the MTA's quarantine (hold queue) with a reason (action `quarantine`; smfi_quarantine). */
  quarantine(reason: string): void;
}

// --- the plugin -----------------------------------------------------------------------------

/** Factories of a plugin's private state; each call must return a new object. */
export interface StateFactories<C extends object, M extends object> {
  /** Makes the state of a new connection (`ctx.conn`). */
  readonly conn?: () => C;
  /** Makes the state of a new message (`ctx.msg`), also after an abort. */
  readonly msg?: () => M;
}

/**
 * A plugin: hooks, all optional, one per milter phase (libmilter's xxfi_* callbacks), each may
 * be async. Envelope hooks (connect to data, unknown) are called as the SMTP dialogue goes;
 * header, eoh and body hooks are replayed at end of message from the message as the plugins
 * before this one left it, then eom. `this` in a hook is the plugin object.
 */
export interface Plugin<C extends object = PluginState, M extends object = PluginState> {
  /** Typed private state: `state: { conn: () => ({ seen: 0 }), msg: () => ({ score: 0 }) }`. */
  readonly state?: StateFactories<C, M>;

  /** A client connected (xxfi_connect). */
  connect?(ctx: PluginContext<C, M>, info: ConnectionInfo): Awaitable<Verdict | void>;
  /** HELO/EHLO (xxfi_helo); may come more than once per connection. */
  helo?(ctx: PluginContext<C, M>, name: string): Awaitable<Verdict | void>;
  /** MAIL FROM: a new message starts (xxfi_envfrom). */
  envfrom?(ctx: PluginContext<C, M>, from: EnvelopeAddress): Awaitable<Verdict | void>;
  /** RCPT TO, once per recipient (xxfi_envrcpt); reject or tempfail refuse this recipient only. */
  envrcpt?(ctx: PluginContext<C, M>, rcpt: EnvelopeAddress): Awaitable<Verdict | void>;
  /** DATA (xxfi_data). */
  data?(ctx: PluginContext<C, M>): Awaitable<Verdict | void>;
  /** One header, in order (xxfi_header); the first non-continue verdict ends the message for this plugin. */
  header?(ctx: PluginContext<C, M>, header: Header): Awaitable<ContentVerdict | void>;
  /** End of headers (xxfi_eoh). */
  eoh?(ctx: PluginContext<C, M>): Awaitable<ContentVerdict | void>;
  /** One body chunk of at most 65535 bytes, CRLF line ends (xxfi_body); not called for an empty body. */
  body?(ctx: PluginContext<C, M>, chunk: Uint8Array): Awaitable<BodyVerdict | void>;
  /** End of message (xxfi_eom): the only place to modify the message. */
  eom?(ctx: PluginContext<C, M>, message: EomMessage): Awaitable<ContentVerdict | void>;
  /** The message was aborted (xxfi_abort); no verdict. `ctx.msg` is fresh afterwards. */
  abort?(ctx: PluginContext<C, M>): Awaitable<void>;
  /** The connection ended (xxfi_close); no verdict. */
  close?(ctx: PluginContext<C, M>): Awaitable<void>;
  /** An SMTP command the MTA does not know (xxfi_unknown). */
  unknown?(ctx: PluginContext<C, M>, command: string): Awaitable<Verdict | void>;
}

/**
 * Declares a plugin: checks its shape (known keys, hooks are functions, at least one hook) and
 * returns it, typed. Export the result as the module's default export.
 */
export function definePlugin<C extends object = PluginState, M extends object = PluginState>(
  def: Plugin<C, M>,
): Plugin<C, M> {
  checkPlugin(def);
  return def;
}

// --- the host's entry points (internal) -----------------------------------------------------

/** @internal Host bootstrap: registers the plugin's default export. */
export const __register: (def: unknown) => void = defaultRuntime.register;
/** @internal Host: what the registered plugin offers. */
export const __describe: typeof defaultRuntime.describe = defaultRuntime.describe;
/** @internal Host: one call into the plugin; rejects when it fails, `MILTERD_*` codes as a `[CODE] ` message prefix. */
export const __dispatch: typeof defaultRuntime.dispatch = defaultRuntime.dispatch;
