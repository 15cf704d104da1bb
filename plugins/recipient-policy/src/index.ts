/**
 * recipient-policy: rejects (or tempfails) recipients whose address matches a pattern. Only that
 * recipient is refused; the message goes on for the others, as libmilter's xxfi_envrcpt does.
 *
 * Options:
 *   { "reject": ["^nobody@", "@old-domain\\.example$"],  regular expressions, case-insensitive,
 *     "tempfail": ["@maintenance\\.example$"],          matched against the address without <>
 *     "code": "550", "xcode": "5.1.1", "text": "Recipient not accepted here" }
 */
import { definePlugin, verdict } from '@milterd/sdk';

interface Options {
  reject?: string[];
  tempfail?: string[];
  code?: string;
  xcode?: string;
  text?: string;
}

function compile(list: unknown): RegExp[] {
  return Array.isArray(list) ? list.filter((p): p is string => typeof p === 'string').map((p) => new RegExp(p, 'i')) : [];
}

let compiled: { reject: RegExp[]; tempfail: RegExp[]; opts: Options } | undefined;

export default definePlugin({
  envrcpt(ctx, rcpt) {
    const opts = ((ctx as { options?: Options }).options ?? {}) as Options;
    if (compiled === undefined || compiled.opts !== opts) {
      compiled = { reject: compile(opts.reject ?? ['^nobody@']), tempfail: compile(opts.tempfail), opts };
    }
    const address = rcpt.address.replace(/^<|>$/g, '');
    if (compiled.reject.some((r) => r.test(address))) {
      ctx.log.info('recipient rejected by policy', { rcpt: address });
      return verdict.reject({ code: opts.code ?? '550', xcode: opts.xcode ?? '5.1.1', text: opts.text ?? 'Recipient not accepted here' });
    }
    if (compiled.tempfail.some((r) => r.test(address))) {
      return verdict.tempfail({ code: '451', xcode: '4.3.2', text: 'Recipient temporarily unavailable' });
    }
    return undefined;
  },
});
