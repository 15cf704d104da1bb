/**
 * The internal filter interface: what the chain calls. In-process filters (tests, benchmarks)
 * implement it directly; sandboxed plugins implement it through a proxy.
 *
 * Envelope phases are one call each, answered before the MTA's next command. Content phases
 * (header, eoh, body) are not called one by one: the host buffers the message and, at end of
 * message, calls `eom` once per filter with the headers and body as modified by the filters
 * before it — the way an MTA feeds several milters in turn. `defineFilter` replays
 * libmilter-style header/eoh/body hooks on top of that one call.
 * @module
 */
import type { AddressFamily } from '../protocol/types.ts';

/** A reply the MTA should give instead of its default for a reject or tempfail. */
export interface ReplySpec {
  /** Three-digit SMTP code; 4xx with tempfail, 5xx with reject. */
  readonly code: string;
  /** Enhanced status code `x.y.z`; its class must match the code's first digit. */
  readonly xcode?: string;
  /** One line, or up to 32 lines (smfi_setmlreply). */
  readonly text?: string | readonly string[];
}

/** What a filter hook decides. `undefined` (or nothing) means continue. */
export type Verdict =
  | { readonly type: 'continue' }
  /** This filter is done with the message (or with the connection, at connect/helo). */
  | { readonly type: 'accept' }
  | { readonly type: 'reject'; readonly reply?: ReplySpec }
  | { readonly type: 'tempfail'; readonly reply?: ReplySpec }
  /** Accept the message and silently drop it, for all recipients. */
  | { readonly type: 'discard' };

/** A hook's result: a verdict, nothing (continue), or a promise of either. */
export type HookResult = Verdict | undefined | void | Promise<Verdict | undefined | void>;

/** Modification actions a filter may take at end of message. */
export type FilterAction =
  | 'addHeader' // SMFIF_ADDHDRS: add and insert
  | 'changeHeader' // SMFIF_CHGHDRS: change and delete
  | 'replaceBody' // SMFIF_CHGBODY
  | 'addRcpt' // SMFIF_ADDRCPT, and SMFIF_ADDRCPT_PAR for ESMTP args
  | 'delRcpt' // SMFIF_DELRCPT
  | 'changeFrom' // SMFIF_CHGFROM
  | 'quarantine'; // SMFIF_QUARANTINE

/** Where macros are sent, by the SMTP phase they precede (libmilter's SMFIM_* stages). */
export type MacroStage = 'connect' | 'helo' | 'envfrom' | 'envrcpt' | 'data' | 'eoh' | 'eom';

/** The SMTP client of a connection, from SMFIC_CONNECT and SMFIC_HELO. */
export interface ConnectionInfo {
  readonly hostname: string;
  readonly family: AddressFamily;
  readonly address: string;
  readonly port: number;
  /** HELO/EHLO name, once known. */
  readonly helo: string | undefined;
}

/** A recipient or sender as the MTA gave it: `<addr>` plus ESMTP arguments. */
export interface EnvelopeAddress {
  readonly address: string;
  readonly args: readonly string[];
}

/** A header of the message, as the filter sees it. */
export interface HeaderField {
  readonly name: string;
  /** The value without the one space after the colon (as libmilter delivers it). */
  readonly value: string;
  /** The value exactly as it followed the colon in the message (leading white space kept). */
  readonly raw: string;
}

/** Minimal structured logger a filter gets (a pino child in the daemon). */
export interface FilterLogger {
  debug(obj: object | string, msg?: string): void;
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
}

/** What every hook receives. One context per filter per connection. */
export interface FilterContext {
  readonly filter: string;
  readonly connection: ConnectionInfo;
  /** Sender of the current message, once MAIL was seen. */
  readonly from: EnvelopeAddress | undefined;
  /** Recipients of the current message accepted so far (rejected ones are not listed). */
  readonly rcpts: readonly EnvelopeAddress[];
  /** A macro's value: `getSymbol('i')` and `getSymbol('{i}')` are the same lookup. */
  getSymbol(name: string): string | undefined;
  /** Private per-connection state of this filter (libmilter's smfi_setpriv, connection scope). */
  readonly connState: Record<string, unknown>;
  /** Private per-message state; a fresh object for every message, also after an abort. */
  readonly msgState: Record<string, unknown>;
  readonly log: FilterLogger;
  /** Aborted when the hook's time budget runs out: pass it to anything cancellable. */
  readonly signal: AbortSignal;
}

/** The message at end of message, as left by the filters before this one, with modifiers. */
export interface EomMessage {
  /** Current headers, in order. */
  readonly headers: readonly HeaderField[];
  /** Current body size in bytes. */
  readonly bodySize: number;
  /** Current body (CRLF line ends), read from memory or the spill file. */
  body(): Promise<Uint8Array>;
  /** Current body in chunks of at most 64 KiB, without loading it whole. */
  bodyChunks(): AsyncIterable<Uint8Array>;

  /** smfi_addheader: append a header. */
  addHeader(name: string, value: string): void;
  /** smfi_insheader: insert at 0-based `index` among the current headers (0 = top). */
  insertHeader(index: number, name: string, value: string): void;
  /** smfi_chgheader: change the `index`-th (1-based) header named `name`; '' deletes it. */
  changeHeader(name: string, index: number, value: string): void;
  /** smfi_chgheader with an empty value. */
  deleteHeader(name: string, index: number): void;
  /** smfi_addrcpt / smfi_addrcpt_par. */
  addRcpt(rcpt: string, args?: string): void;
  /** smfi_delrcpt: the address as given in RCPT TO (angle brackets optional). */
  delRcpt(rcpt: string): void;
  /** smfi_chgfrom. */
  changeFrom(from: string, args?: string): void;
  /** smfi_replacebody: the whole new body (the host chunks it). */
  replaceBody(body: Uint8Array | string): void;
  /** smfi_quarantine. */
  quarantine(reason: string): void;
}

/**
 * A filter as the chain sees it. Every hook is optional: the chain derives from the hooks
 * present which phases to negotiate (SMFIP_NO*) and which need no reply (SMFIP_NR_*).
 */
export interface Filter {
  readonly name: string;
  /** Modifications this filter may make; anything else is refused. Default: none. */
  readonly actions?: readonly FilterAction[];
  /** Macros to ask the MTA for (SETSYMLIST), by stage. */
  readonly macros?: Readonly<Partial<Record<MacroStage, readonly string[]>>>;
  /** What `eom` reads. Default: both when `eom` exists. Saying false lets the MTA skip sending it. */
  readonly reads?: { readonly headers?: boolean; readonly body?: boolean };

  connect?(ctx: FilterContext, info: ConnectionInfo): HookResult;
  helo?(ctx: FilterContext, name: string): HookResult;
  envfrom?(ctx: FilterContext, from: EnvelopeAddress): HookResult;
  envrcpt?(ctx: FilterContext, rcpt: EnvelopeAddress): HookResult;
  data?(ctx: FilterContext): HookResult;
  unknown?(ctx: FilterContext, command: string): HookResult;
  eom?(ctx: FilterContext, message: EomMessage): HookResult;
  /** The message was aborted (SMFIC_ABORT) or ended early; no verdict. */
  abort?(ctx: FilterContext): void | Promise<void>;
  /** The connection ended; no verdict. */
  close?(ctx: FilterContext): void | Promise<void>;
}

/** What to do when a filter throws, times out or breaks a rule. */
export type FailurePolicy = 'continue' | 'accept' | 'tempfail' | 'reject';

/** A filter in the chain with the host-side settings that govern it. */
export interface ChainEntry {
  readonly filter: Filter;
  /** Default 'tempfail' (like Postfix's milter_default_action). */
  readonly onError?: FailurePolicy;
  /** Time budget of one hook call, in ms. Default 10 000. */
  readonly timeoutMs?: number;
  /** Time budget of all hook calls of one message, in ms. Default 60 000. */
  readonly messageBudgetMs?: number;
  /** Evaluation mode: run it, log and count its verdicts and edits, apply none of them. */
  readonly shadow?: boolean;
}
