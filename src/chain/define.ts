/**
 * libmilter-style filters in process: per-header, end-of-headers and per-body-chunk hooks
 * (xxfi_header, xxfi_eoh, xxfi_body), replayed from the buffered message when the chain
 * reaches this filter at end of message, then `eom`. This is how each filter sees the headers
 * and body as left by the filters before it, as with several milters at an MTA.
 * @module
 */
import type { EomMessage, Filter, FilterContext, HookResult, Verdict } from './filter.ts';

/** A body hook may also skip the rest of the body (SMFIS_SKIP). */
export type BodyResult = HookResult | { readonly type: 'skip' } | Promise<{ readonly type: 'skip' }>;

/** A filter written with libmilter's callbacks. */
export interface ClassicFilter extends Omit<Filter, 'eom'> {
  /** xxfi_header: `value` without the space after the colon, `raw` exactly as sent. */
  header?(ctx: FilterContext, name: string, value: string, raw: string): HookResult;
  /** xxfi_eoh. */
  eoh?(ctx: FilterContext): HookResult;
  /** xxfi_body: one chunk (at most 64 KiB) of the current body. */
  body?(ctx: FilterContext, chunk: Uint8Array): BodyResult;
  /** xxfi_eom: modifications go through `message`. */
  eom?(ctx: FilterContext, message: EomMessage): HookResult;
}

function stops(v: Verdict | undefined | void): v is Verdict {
  return v !== undefined && v.type !== 'continue';
}

/** Builds a chain Filter from libmilter-style hooks. */
export function defineFilter(def: ClassicFilter): Filter {
  const { header, eoh, body, eom, ...rest } = def;
  if (header === undefined && eoh === undefined && body === undefined) {
    return eom === undefined ? rest : { ...rest, eom };
  }
  const reads = {
    headers: def.reads?.headers ?? (header !== undefined || eom !== undefined),
    body: def.reads?.body ?? (body !== undefined || eom !== undefined),
  };
  return {
    ...rest,
    reads,
    async eom(ctx: FilterContext, message: EomMessage): Promise<Verdict | undefined | void> {
      if (header !== undefined) {
        for (const h of message.headers) {
          const r = await header.call(def, ctx, h.name, h.value, h.raw);
          if (stops(r)) return r;
        }
      }
      if (eoh !== undefined) {
        const r = await eoh.call(def, ctx);
        if (stops(r)) return r;
      }
      if (body !== undefined) {
        for await (const chunk of message.bodyChunks()) {
          const r = (await body.call(def, ctx, chunk)) as Verdict | { type: 'skip' } | undefined | void;
          if (r !== undefined && r.type === 'skip') break;
          if (stops(r as Verdict | undefined)) return r as Verdict;
        }
      }
      if (eom !== undefined) return eom.call(def, ctx, message);
      return undefined;
    },
  };
}
