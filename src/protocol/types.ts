/**
 * Typed milter packets: what the MTA sends (`MilterCommand`) and what a filter answers
 * (`MilterReply`). Both are discriminated unions on `kind`; switch on it exhaustively.
 * @module
 */
import type { SmfimStage } from './constants.ts';

/** Address family of the SMTP client, from SMFIC_CONNECT (`SMFIA_*`). */
export type AddressFamily = 'unknown' | 'unix' | 'inet' | 'inet6';

/** A decoded command from the MTA. Strings are decoded as UTF-8. */
export type MilterCommand =
  /** SMFIC_OPTNEG: the MTA's protocol version, offered actions and protocol flags. */
  | { readonly kind: 'optneg'; readonly version: number; readonly actions: number; readonly protocol: number }
  /**
   * SMFIC_MACRO: macros for the command whose code is `stage` (e.g. 0x43 'C' for connect).
   * Pairs keep the wire order; names keep their braces (`{mail_addr}`) as sent.
   */
  | { readonly kind: 'macro'; readonly stage: number; readonly macros: ReadonlyArray<readonly [string, string]> }
  /** SMFIC_CONNECT. `port` is 0 and `address` '' when `family` is 'unknown'. */
  | {
      readonly kind: 'connect';
      readonly hostname: string;
      readonly family: AddressFamily;
      readonly port: number;
      readonly address: string;
    }
  /** SMFIC_HELO: the HELO/EHLO argument. */
  | { readonly kind: 'helo'; readonly name: string }
  /** SMFIC_MAIL: `args[0]` is the sender as sent (`<a@b>`), the rest are ESMTP arguments. */
  | { readonly kind: 'mail'; readonly args: readonly string[] }
  /** SMFIC_RCPT: `args[0]` is the recipient as sent, the rest are ESMTP arguments. */
  | { readonly kind: 'rcpt'; readonly args: readonly string[] }
  /** SMFIC_DATA. */
  | { readonly kind: 'data' }
  /** SMFIC_HEADER: value exactly as the MTA sent it (with leading space if HDR_LEADSPC). */
  | { readonly kind: 'header'; readonly name: string; readonly value: string }
  /** SMFIC_EOH. */
  | { readonly kind: 'eoh' }
  /** SMFIC_BODY: one raw chunk (CRLF line ends as the MTA sends them). */
  | { readonly kind: 'body'; readonly chunk: Uint8Array }
  /** SMFIC_BODYEOB: end of message; `chunk` is normally empty but is a last body chunk if not. */
  | { readonly kind: 'eob'; readonly chunk: Uint8Array }
  /** SMFIC_ABORT: abort the current message. Never answered. */
  | { readonly kind: 'abort' }
  /** SMFIC_QUIT: close the connection. Never answered. */
  | { readonly kind: 'quit' }
  /** SMFIC_QUIT_NC: end this SMTP connection; a new one (CONNECT, no OPTNEG) follows on the socket. */
  | { readonly kind: 'quitNc' }
  /** SMFIC_UNKNOWN: an SMTP command the MTA did not recognise, as a string. */
  | { readonly kind: 'unknown'; readonly command: string };

/** Kinds of MilterCommand. */
export type CommandKind = MilterCommand['kind'];

/** One SETSYMLIST entry of an OPTNEG reply: the macros the MTA should send at `stage`. */
export interface SymbolList {
  readonly stage: SmfimStage;
  readonly macros: readonly string[];
}

/** A reply or modification action from the filter to the MTA. */
export type MilterReply =
  /** OPTNEG reply, optionally with SETSYMLIST lists after the three words. */
  | {
      readonly kind: 'optneg';
      readonly version: number;
      readonly actions: number;
      readonly protocol: number;
      readonly symlists?: readonly SymbolList[];
    }
  | { readonly kind: 'accept' } // SMFIR_ACCEPT
  | { readonly kind: 'continue' } // SMFIR_CONTINUE
  | { readonly kind: 'discard' } // SMFIR_DISCARD
  | { readonly kind: 'reject' } // SMFIR_REJECT
  | { readonly kind: 'tempfail' } // SMFIR_TEMPFAIL
  | { readonly kind: 'skip' } // SMFIR_SKIP
  | { readonly kind: 'progress' } // SMFIR_PROGRESS
  | { readonly kind: 'shutdown' } // SMFIR_SHUTDOWN
  | { readonly kind: 'connfail' } // SMFIR_CONN_FAIL
  /** SMFIR_REPLYCODE: the whole reply text, already validated (multi-line joined with CRLF). */
  | { readonly kind: 'replycode'; readonly text: string }
  /** SMFIR_QUARANTINE. */
  | { readonly kind: 'quarantine'; readonly reason: string }
  /** SMFIR_ADDRCPT, or SMFIR_ADDRCPT_PAR when `args` is given (one string, space separated). */
  | { readonly kind: 'addrcpt'; readonly rcpt: string; readonly args?: string }
  /** SMFIR_DELRCPT: the recipient exactly as the MTA knows it. */
  | { readonly kind: 'delrcpt'; readonly rcpt: string }
  /** SMFIR_CHGFROM with optional ESMTP args (one string). */
  | { readonly kind: 'chgfrom'; readonly from: string; readonly args?: string }
  /** SMFIR_ADDHEADER: append a header. */
  | { readonly kind: 'addheader'; readonly name: string; readonly value: string }
  /** SMFIR_INSHEADER: insert at 0-based position `index` among the headers. */
  | { readonly kind: 'insheader'; readonly index: number; readonly name: string; readonly value: string }
  /** SMFIR_CHGHEADER: `index` is 1-based among headers named `name`; empty value deletes. */
  | { readonly kind: 'chgheader'; readonly index: number; readonly name: string; readonly value: string }
  /** SMFIR_REPLBODY: one chunk of at most MILTER_CHUNK_SIZE bytes (use encodeReplaceBody for more). */
  | { readonly kind: 'replbody'; readonly chunk: Uint8Array };

/** Kinds of MilterReply. */
export type ReplyKind = MilterReply['kind'];
