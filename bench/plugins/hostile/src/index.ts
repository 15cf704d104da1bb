/**
 * Benchmark fixture (scenarios f and g): a hostile plugin. Every call to its one hook (envfrom,
 * so one call per message) is cheap, except every Nth, which awaits a host call (kv) and then
 * spins forever. Code that runs after an await on the host is out of reach of the isolate's CPU
 * timeout (cpuMs): only the sandbox's wall-clock watchdog (wallMs) ends it, by disposing of the
 * isolate; the sandbox then builds a fresh one, so the count starts over.
 *
 * Options: `{ "every": 500 }` (0 = never spin: the same plugin, well behaved).
 */
import { definePlugin } from '@milterd/sdk';

let calls = 0;

export default definePlugin({
  async envfrom(ctx) {
    const every = Number((ctx as { options?: { every?: unknown } }).options?.every ?? 500);
    calls++;
    if (every > 0 && calls % every === 0) {
      await ctx.kv.get('hang');
      for (;;) {
        // hang
      }
    }
    return undefined;
  },
});
