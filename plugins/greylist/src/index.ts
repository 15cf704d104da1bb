/**
 * greylist: the first delivery attempt for a triplet (client network, sender, recipient) is
 * refused with a temporary error; a real MTA retries after a while and is then let through, and
 * the triplet is remembered so later messages pass at once (milter-greylist's scheme). Spam
 * software that never retries stays out. The tempfail is per recipient, as with
 * milter-greylist: the message's other recipients go through their own checks.
 */
import { definePlugin, verdict, type ConnectionInfo } from '@milterd/sdk';

interface Options {
  delaySeconds?: number;
  pendingSeconds?: number;
  passedDays?: number;
}

/** `<Alice@Example.NET>` → `alice@example.net`. */
const bare = (address: string): string => address.replace(/^<|>$/g, '').toLowerCase();

/** Big senders retry from another address of the same farm: IPv4 counts by /24, IPv6 by /64. */
function network({ family, address }: ConnectionInfo): string {
  if (family === 'inet') return `${address.split('.').slice(0, 3).join('.')}.0/24`;
  if (family === 'inet6') return `${address.split(':').slice(0, 4).join(':')}::/64`;
  return address;
}

const GREYLISTED = { code: '451', xcode: '4.7.1', text: 'Greylisted, please try again later' };

export default definePlugin({
  state: { msg: () => ({ delayedS: 0 }) },

  async envrcpt(ctx, rcpt) {
    // Authenticated users and local clients are never greylisted.
    if (ctx.getSymbol('{auth_authen}') || ctx.connection.family === 'unix') return undefined;
    const o = ctx.options as Options;
    const delayMs = (o.delaySeconds ?? 300) * 1000;
    const pendingMs = (o.pendingSeconds ?? 86_400) * 1000;
    const passedMs = (o.passedDays ?? 30) * 86_400_000;
    const key = `triplet:${network(ctx.connection)}/${bare(ctx.envelope.from?.address ?? '<>')}/${bare(rcpt.address)}`;
    const now = ctx.clock.now();
    try {
      const seen = await ctx.kv.get(key);
      if (seen === 'passed') {
        await ctx.kv.set(key, 'passed', { ttlMs: passedMs }); // still in use: keep it longer
        return undefined;
      }
      if (seen === undefined || seen === null) {
        await ctx.kv.set(key, String(now), { ttlMs: pendingMs });
        ctx.log.info('greylisted', { key });
        return verdict.tempfail(GREYLISTED);
      }
      const waited = now - Number(seen);
      if (waited < delayMs) return verdict.tempfail(GREYLISTED);
      await ctx.kv.set(key, 'passed', { ttlMs: passedMs });
      ctx.msg.delayedS = Math.max(ctx.msg.delayedS, Math.round(waited / 1000));
      ctx.log.info('greylisting passed', { key, waitedMs: waited });
    } catch (err) {
      // The store failed: let mail through rather than refuse everyone.
      ctx.log.warn('greylisting skipped', { key, error: (err as Error).message });
    }
    return undefined;
  },

  eom(ctx, message) {
    if (ctx.msg.delayedS > 0 && message.can('addHeader')) {
      message.addHeader('X-Greylist', `delayed ${ctx.msg.delayedS} seconds by milterd`);
    }
  },
});
