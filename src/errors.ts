/**
 * The error catalogue: every error milterd raises or logs carries one of these stable codes.
 * `docs/errors.md` lists the same codes; `test/unit/errors.test.ts` fails when the two drift.
 *
 * Codes are grouped by area (the second word). Never renumber or reuse a code: operators grep
 * logs and alert on them.
 * @module
 */

/** Where an error comes from. */
export type ErrorArea = 'protocol' | 'session' | 'filter' | 'content' | 'server' | 'config' | 'plugin' | 'cli';

interface ErrorDef {
  readonly area: ErrorArea;
  /** One sentence for docs and logs. */
  readonly summary: string;
}

/** All error codes, with their area and meaning. */
export const ERRORS = {
  // --- protocol: the pure codec (src/protocol) -------------------------------------------
  MILTERD_PROTO_FRAME_TOO_LARGE: {
    area: 'protocol',
    summary: 'A packet announced a length above the configured frame cap; the connection is closed before anything is allocated.',
  },
  MILTERD_PROTO_FRAME_EMPTY: {
    area: 'protocol',
    summary: 'A packet announced length 0, so it has no command byte; the connection is closed.',
  },
  MILTERD_PROTO_UNKNOWN_COMMAND: {
    area: 'protocol',
    summary: 'A packet carried a command code that protocol v6 does not define; the connection is closed, as libmilter does.',
  },
  MILTERD_PROTO_UNKNOWN_REPLY: {
    area: 'protocol',
    summary: 'A packet from a filter carried a reply code that protocol v6 does not define (MTA-side decoding).',
  },
  MILTERD_PROTO_TRUNCATED: {
    area: 'protocol',
    summary: 'A field runs past the end of its packet (a missing NUL terminator or a short integer).',
  },
  MILTERD_PROTO_BAD_FIELD: {
    area: 'protocol',
    summary: 'A field has a value the protocol does not allow (unknown address family, bad stage, empty header name...).',
  },
  MILTERD_PROTO_ENCODE: {
    area: 'protocol',
    summary: 'A reply could not be encoded because a field is invalid (NUL inside a string, index out of range, oversized chunk).',
  },

  // --- session: one MTA connection (src/session) -----------------------------------------
  MILTERD_SESSION_VERSION: {
    area: 'session',
    summary: 'The MTA offered a protocol version below 2; negotiation fails and the connection is closed.',
  },
  MILTERD_SESSION_OUT_OF_ORDER: {
    area: 'session',
    summary: 'A command arrived in a state where libmilter does not allow it; the transaction is aborted and state reset.',
  },
  MILTERD_SESSION_MALFORMED: {
    area: 'session',
    summary: 'A well-framed command had a malformed payload; the message is aborted and the MTA gets a tempfail.',
  },
  MILTERD_SESSION_SOCKET: {
    area: 'session',
    summary: 'The MTA connection failed (reset, write error) or timed out while idle.',
  },
  MILTERD_SESSION_MACRO_STAGE: {
    area: 'session',
    summary: 'A MACRO packet named a stage no command has; the macros are ignored.',
  },

  // --- filter: the chain and each filter's behaviour (src/chain) --------------------------
  MILTERD_FILTER_THREW: {
    area: 'filter',
    summary: 'A filter hook threw or its promise rejected; the filter\'s failure policy decides the verdict.',
  },
  MILTERD_FILTER_TIMEOUT: {
    area: 'filter',
    summary: 'A filter hook did not settle within its per-phase time budget; the failure policy decides the verdict.',
  },
  MILTERD_FILTER_BAD_VERDICT: {
    area: 'filter',
    summary: 'A filter returned something that is not a verdict, or a verdict not allowed in that phase.',
  },
  MILTERD_FILTER_BAD_REPLY: {
    area: 'filter',
    summary: 'A filter set a reply code that breaks libmilter\'s smfi_setreply/smfi_setmlreply rules; it is never sent to the MTA.',
  },
  MILTERD_FILTER_BAD_MODIFICATION: {
    area: 'filter',
    summary: 'A filter asked for an invalid modification (bad header name, index, address, NUL byte...).',
  },
  MILTERD_FILTER_ACTION_NOT_NEGOTIATED: {
    area: 'filter',
    summary: 'A filter asked for a modification whose action the MTA did not offer in negotiation.',
  },
  MILTERD_FILTER_MESSAGE_BUDGET: {
    area: 'filter',
    summary: "A filter used up its time budget for the whole message (a plugin's messageMs); its failure policy (onError) applies.",
  },

  // --- content: buffering the message (src/chain/content) --------------------------------
  MILTERD_CONTENT_SPILL: {
    area: 'content',
    summary: 'Writing or reading the temporary file that holds a large body failed.',
  },

  // --- server: sockets and process lifecycle (src/server) --------------------------------
  MILTERD_SERVER_LISTEN_SPEC: {
    area: 'server',
    summary: 'A listen address is not in libmilter\'s socket syntax (unix:/path, inet:port@host, inet6:port@host).',
  },
  MILTERD_SERVER_LISTEN: {
    area: 'server',
    summary: 'Listening failed: the address is in use by a live daemon, or permission was denied.',
  },
  MILTERD_SERVER_SHUTDOWN_TIMEOUT: {
    area: 'server',
    summary: 'Connections were still open when the shutdown deadline passed; they were closed.',
  },

  // --- plugin: loading and running sandboxed plugins (src/plugins, src/sandbox) -----------
  MILTERD_PLUGIN_NOT_FOUND: {
    area: 'plugin',
    summary: 'A plugin named in the chain could not be found (no such folder, or the npm package is not installed).',
  },
  MILTERD_PLUGIN_MANIFEST: {
    area: 'plugin',
    summary: 'A plugin\'s package.json has no valid "milterd" manifest; the message names the plugin and the field.',
  },
  MILTERD_PLUGIN_SDK_INCOMPATIBLE: {
    area: 'plugin',
    summary: 'A plugin asks for an @milterd/sdk version range the host does not provide; the message names plugin, wanted and available.',
  },
  MILTERD_PLUGIN_BUNDLE: {
    area: 'plugin',
    summary: 'A plugin could not be bundled (syntax error, missing dependency); the message gives file and line.',
  },
  MILTERD_PLUGIN_FORBIDDEN_IMPORT: {
    area: 'plugin',
    summary: 'A plugin imports a Node built-in or another module the sandbox cannot provide; it is refused at load.',
  },
  MILTERD_PLUGIN_LOAD: {
    area: 'plugin',
    summary: 'A bundled plugin failed to load in its sandbox (it threw at start-up, or defined no hooks).',
  },
  MILTERD_PLUGIN_CAPABILITY: {
    area: 'plugin',
    summary: 'A plugin used a host service (kv, dns, log, clock) that the administrator did not grant it.',
  },
  MILTERD_PLUGIN_BAD_ARGUMENT: {
    area: 'plugin',
    summary: 'A plugin called a host service with invalid arguments (wrong type, too long, bad name).',
  },
  MILTERD_PLUGIN_CPU: {
    area: 'plugin',
    summary: 'A plugin call used more CPU time than its limit; its isolate is recycled.',
  },
  MILTERD_PLUGIN_WALL: {
    area: 'plugin',
    summary: 'A plugin call (including its waits for host services) ran longer than its wall-clock limit; its isolate is recycled.',
  },
  MILTERD_PLUGIN_MEMORY: {
    area: 'plugin',
    summary: 'A plugin went over its memory limit (isolate heap, or its sandbox process); the isolate or the process is recycled.',
  },
  MILTERD_PLUGIN_CRASHED: {
    area: 'plugin',
    summary: 'A plugin\'s sandbox process died (V8 fatal error, catastrophic out-of-memory, kill); calls in flight get the failure policy and the process restarts with backoff.',
  },
  MILTERD_PLUGIN_CIRCUIT_OPEN: {
    area: 'plugin',
    summary: 'A plugin kept failing and its circuit breaker is open: it is switched off (calls get the failure policy at once) until a retry succeeds.',
  },
  MILTERD_PLUGIN_KV: {
    area: 'plugin',
    summary: 'The key-value store behind a plugin\'s kv service failed (Redis down or slower than storage.timeoutMs); the plugin gets the error and decides.',
  },
  MILTERD_PLUGIN_INSTALL: {
    area: 'plugin',
    summary: 'npm could not install or remove a plugin package (milterd plugin add/remove); nothing was changed.',
  },
  MILTERD_PLUGIN_OUTPUT: {
    area: 'plugin',
    summary: 'A plugin returned more data than allowed (too many modifications, a header or body too large).',
  },

  // --- config ------------------------------------------------------------------------------
  MILTERD_CONFIG_READ: {
    area: 'config',
    summary: 'The configuration file could not be read or parsed.',
  },
  MILTERD_CONFIG_INVALID: {
    area: 'config',
    summary: 'The configuration does not match its schema; the message names the file, key path and what was expected.',
  },

  // --- cli ---------------------------------------------------------------------------------
  MILTERD_CLI_MESSAGE: {
    area: 'cli',
    summary: 'The message file given to milterd test could not be read or is not a message.',
  },
} as const satisfies Record<string, ErrorDef>;

/** A stable error code from the catalogue. */
export type ErrorCode = keyof typeof ERRORS;

/** Base class of every error milterd creates. `code` is stable; `message` is for people. */
export class MilterdError extends Error {
  readonly code: ErrorCode;
  readonly area: ErrorArea;
  /** Structured context for logs (never secrets or message content). */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MilterdError';
    this.code = code;
    this.area = ERRORS[code].area;
    this.details = options?.details;
  }
}

/** A fault in bytes from the peer, raised only by the pure codec. */
export class ProtocolError extends MilterdError {
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, details === undefined ? undefined : { details });
    this.name = 'ProtocolError';
  }
}

/** True when `err` is a MilterdError with the given code. */
export function isErrorCode(err: unknown, code: ErrorCode): err is MilterdError {
  return err instanceof MilterdError && err.code === code;
}
