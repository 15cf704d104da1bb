/**
 * header-stamp: adds one header to every message, e.g. `X-Filtered-By: milterd`.
 * Options: `{ "name": "X-Filtered-By", "value": "milterd" }`; the value may use `{qid}` for
 * the MTA's queue id.
 */
import { definePlugin } from '@milterd/sdk';

export default definePlugin({
  eom(ctx, message) {
    const opts = (ctx as { options?: { name?: unknown; value?: unknown } }).options ?? {};
    const name = typeof opts.name === 'string' ? opts.name : 'X-Filtered-By';
    const template = typeof opts.value === 'string' ? opts.value : 'milterd';
    const value = template.replace('{qid}', ctx.getSymbol('i') ?? 'unknown');
    message.addHeader(name, value);
  },
});
