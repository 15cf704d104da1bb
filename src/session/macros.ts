/**
 * Macros (Sendmail "symbols") by stage, as libmilter keeps them: a MACRO packet replaces the
 * macros of its stage, lookups search the newest stage first, and `x` and `{x}` name the same
 * macro (smfi_getsymval accepts both spellings).
 * @module
 */
import { SMFIC } from '../protocol/constants.ts';

/**
 * Stages in lookup order, newest first: the value sent closest to the current command wins.
 * (libmilter walks its own table, where EOH comes after EOM; the difference only shows when an
 * MTA sends one macro name at both stages with different values.) `{x}` and `x` are one name
 * for every name, a superset of libmilter's single-letter rule.
 */
const LOOKUP_ORDER = [SMFIC.BODYEOB, SMFIC.EOH, SMFIC.DATA, SMFIC.RCPT, SMFIC.MAIL, SMFIC.HELO, SMFIC.CONNECT] as const;
/** Stages that belong to a message, cleared when it ends. */
const MESSAGE_STAGES = [SMFIC.MAIL, SMFIC.RCPT, SMFIC.DATA, SMFIC.EOH, SMFIC.BODYEOB] as const;
/** Every stage code a MACRO packet may name. */
export const MACRO_STAGES: ReadonlySet<number> = new Set([...LOOKUP_ORDER, SMFIC.BODY, SMFIC.HEADER, SMFIC.UNKNOWN]);

/** "{x}" → "x"; anything else unchanged. */
export function macroKey(name: string): string {
  return name.length > 2 && name.charCodeAt(0) === 0x7b && name.charCodeAt(name.length - 1) === 0x7d ? name.slice(1, -1) : name;
}

/** The macros a connection has received. */
export class MacroStore {
  readonly #byStage = new Map<number, Map<string, string>>();

  /** Replaces the macros of `stage` (a MACRO packet). A new MAIL stage also drops the last message's. */
  set(stage: number, pairs: ReadonlyArray<readonly [string, string]>): void {
    const m = new Map<string, string>();
    for (const [k, v] of pairs) m.set(macroKey(k), v);
    if (stage === SMFIC.MAIL) this.clearMessage();
    this.#byStage.set(stage, m);
  }

  /** smfi_getsymval. */
  get(name: string): string | undefined {
    const key = macroKey(name);
    for (const stage of LOOKUP_ORDER) {
      const v = this.#byStage.get(stage)?.get(key);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  /** Drops message-stage macros (after end of message and ABORT). */
  clearMessage(): void {
    for (const s of MESSAGE_STAGES) this.#byStage.delete(s);
  }

  /** Drops everything (QUIT_NC: a new connection follows). */
  clearAll(): void {
    this.#byStage.clear();
  }
}
