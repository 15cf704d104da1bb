/**
 * The contract between milterd (the host) and the SDK runtime inside a plugin's isolate.
 * Internal: plugin authors never see these types. Every value is structured-clone data (copied
 * across the isolate boundary), never a host object.
 *
 * One call per milter phase: the end-of-message call carries the whole message (headers, body,
 * envelope), and the runtime replays the plugin's header/eoh/body hooks before its eom hook,
 * inside the isolate, so a message costs one boundary crossing per plugin.
 * @module
 */

/** Bumped when the shape below changes incompatibly; the host checks it at load. */
export const RUNTIME_PROTOCOL = 1;

/** Hooks a plugin can define (libmilter's xxfi_* callbacks). */
export const HOOK_NAMES = [
  'connect',
  'helo',
  'envfrom',
  'envrcpt',
  'data',
  'header',
  'eoh',
  'body',
  'eom',
  'abort',
  'close',
  'unknown',
] as const;
export type HookName = (typeof HOOK_NAMES)[number];

/** Capabilities (host services) an administrator may grant a plugin. */
export const CAPABILITIES = ['log', 'kv', 'dns', 'clock'] as const;
export type Capability = (typeof CAPABILITIES)[number];

/** Modification actions, as declared in manifests. */
export const ACTIONS = ['addHeader', 'changeHeader', 'replaceBody', 'addRcpt', 'delRcpt', 'changeFrom', 'quarantine'] as const;
export type Action = (typeof ACTIONS)[number];

/** The SMTP client. */
export interface WireConnection {
  hostname: string;
  family: 'unknown' | 'unix' | 'inet' | 'inet6';
  address: string;
  port: number;
  helo: string | null;
}

/** An envelope address with its ESMTP arguments. */
export interface WireAddress {
  address: string;
  args: string[];
}

/** A header: `value` without the space after the colon, `raw` exactly as in the message. */
export interface WireHeader {
  name: string;
  value: string;
  raw: string;
}

/** What every call carries. */
export interface WireCallBase {
  /** Connection id (host-chosen, unique per process): per-connection state lives under it. */
  conn: string;
  /** Message sequence number on this connection; a new one means fresh per-message state. */
  msg: number;
  connection: WireConnection;
  from: WireAddress | null;
  rcpts: WireAddress[];
  /** Current macros, names without braces. */
  macros: Record<string, string>;
}

/** A call from the host into the runtime. */
export type WireCall = WireCallBase &
  (
    | { phase: 'connect' }
    | { phase: 'helo'; name: string }
    | { phase: 'envfrom'; arg: WireAddress }
    | { phase: 'envrcpt'; arg: WireAddress }
    | { phase: 'data' }
    | { phase: 'unknown'; command: string }
    | {
        phase: 'eom';
        headers: WireHeader[];
        body: Uint8Array;
        /** Actions the plugin may take on this message (declared ∩ granted by the MTA). */
        actions: Action[];
      }
    | { phase: 'abort' }
    | { phase: 'close' }
  );

/** A reply the MTA should give, as the plugin asked for it (the host validates it). */
export interface WireReply {
  code: string;
  xcode?: string;
  text?: string | string[];
}

/** A verdict. */
export type WireVerdict =
  | { type: 'continue' }
  | { type: 'accept' }
  | { type: 'discard' }
  | { type: 'reject'; reply?: WireReply }
  | { type: 'tempfail'; reply?: WireReply };

/** One modification, in the order the plugin made it. */
export type WireMod =
  | { op: 'addHeader'; name: string; value: string }
  | { op: 'insertHeader'; index: number; name: string; value: string }
  | { op: 'changeHeader'; name: string; index: number; value: string }
  | { op: 'addRcpt'; rcpt: string; args?: string }
  | { op: 'delRcpt'; rcpt: string }
  | { op: 'changeFrom'; from: string; args?: string }
  | { op: 'replaceBody'; body: Uint8Array }
  | { op: 'quarantine'; reason: string };

/** What the runtime returns for a call. */
export interface WireResult {
  verdict: WireVerdict;
  /** Only for eom. */
  mods?: WireMod[];
}

/** What the runtime reports once the plugin module is loaded. */
export interface WireDescription {
  protocol: number;
  /** SDK runtime version (semver). */
  sdkVersion: string;
  /** Hooks the plugin defined. */
  hooks: HookName[];
}

/**
 * Globals the host installs before the runtime module is evaluated. The runtime captures them
 * and deletes them from the global object, so plugin code never reaches them. Each is an
 * isolated-vm Reference to a host function (called with copied arguments, result copied back,
 * async ones as promises). Only granted capabilities are installed.
 */
export interface HostGlobals {
  /** (level, message, fields?) → void */
  __milterd_log?: unknown;
  /** (op, key, value?, ttlMs?) → Promise<value> ; op: get | set | incr | del */
  __milterd_kv?: unknown;
  /** (type, name) → Promise<string[] | mx records> */
  __milterd_dns?: unknown;
  /** () → number (ms since epoch) */
  __milterd_clock?: unknown;
  /** The plugin's options from the configuration: plain data, copied in (always set). */
  __milterd_options?: unknown;
}

/** Error codes the runtime puts in thrown errors' `code` (the host maps them). */
export const RUNTIME_ERRORS = {
  capability: 'MILTERD_PLUGIN_CAPABILITY',
  badArgument: 'MILTERD_PLUGIN_BAD_ARGUMENT',
} as const;
