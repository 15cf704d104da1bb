/** effectiveLimits: manifest, chain entry, chain-wide caps, and the tighter limit winning. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { effectiveLimits } from '../../../src/plugins/load.ts';

const MANIFEST = { memoryMb: 64, cpuMs: 200, wallMs: 1000, messageMs: 5000 };

test('the chain entry overrides the manifest', () => {
  assert.deepEqual(effectiveLimits(MANIFEST, { wallMs: 2000, memoryMb: 32 }), { memoryMb: 32, cpuMs: 200, wallMs: 2000, messageMs: 5000 });
});

test('filters.timeoutMs and filters.messageBudgetMs cap every plugin, whatever its manifest or entry asks', () => {
  assert.deepEqual(effectiveLimits(MANIFEST, { wallMs: 20_000 }, { timeoutMs: 500, messageBudgetMs: 3000 }), {
    memoryMb: 64,
    cpuMs: 200,
    wallMs: 500,
    messageMs: 3000,
  });
  // Caps above the plugin's own limits change nothing.
  assert.deepEqual(effectiveLimits(MANIFEST, undefined, { timeoutMs: 10_000, messageBudgetMs: 60_000 }), MANIFEST);
});

test('the tighter limit wins: cpuMs within wallMs within messageMs', () => {
  assert.deepEqual(effectiveLimits(MANIFEST, { wallMs: 50 }), { memoryMb: 64, cpuMs: 50, wallMs: 50, messageMs: 5000 });
  assert.deepEqual(effectiveLimits(MANIFEST, undefined, { messageBudgetMs: 100 }), { memoryMb: 64, cpuMs: 100, wallMs: 100, messageMs: 100 });
});
