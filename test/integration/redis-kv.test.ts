/**
 * The Redis backend of the plugin key-value store, against a real redis-server this file starts
 * on a free loopback port (and stops): the greylist example plugin in two independent chains
 * (two sandbox processes, as two milterd instances would have) sharing its state through Redis;
 * keys carry the prefix and the plugin's name and have TTLs; a Redis that is down or stalled
 * fails the kv call, which greylist catches and lets mail through; RedisKv and MemoryKv agree.
 *
 * Needs redis-server (.ci/install-deps.sh installs it): skipped when missing, failing instead
 * when CI or MILTERD_REQUIRE_MTA is set.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { pino, type Logger } from 'pino';
import { createClient } from 'redis';
import { loadChain, loadSdkRuntime, type PluginEntryConfig, type SdkRuntime } from '../../src/plugins/load.ts';
import { runMessage, type TestMessage } from '../../src/testing/index.ts';
import { MemoryKv, RedisKv, type StorageSettings } from '../../src/sandbox/kv.ts';
import { mtaRequired, which } from '../support/mta-available.ts';
import { enableMetrics } from '../../src/metrics.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const REDIS_SERVER = which('redis-server');
const skip = REDIS_SERVER === undefined && !mtaRequired() ? 'redis-server is not installed: run `sudo .ci/install-deps.sh` (or apt-get install redis-server)' : false;

const GREYLIST: PluginEntryConfig = { plugin: './plugins/greylist', capabilities: ['kv', 'clock', 'log'], options: { delaySeconds: 1 } };
const PLUGIN = '@milterd/plugin-greylist';
const PREFIX = `milterd-test-${process.pid}:`;
const message: TestMessage = { from: 'alice@example.org', rcpts: ['bob@example.net'], client: { address: '198.51.100.7' }, headers: [['Subject', 'hi']] };
const TRIPLET = `triplet:198.51.100.0/24/alice@example.org/bob@example.net`;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** A logger that keeps every record (plugin logs included) for assertions. */
function memoryLogger(): { logger: Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, records };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('Redis kv backend', { skip, timeout: 60_000 }, () => {
  let server: ChildProcess | undefined;
  let port = 0;
  let redis: ReturnType<typeof createClient>;
  let sdk: SdkRuntime;
  let storage: StorageSettings;

  /** Two chains (two sandbox processes) with the greylist plugin on `settings`. */
  async function chain(settings: StorageSettings | undefined, logger: Logger = pino({ level: 'silent' })) {
    const plugins = await loadChain([GREYLIST], {
      baseDir: ROOT,
      sdk,
      logger,
      onError: 'tempfail',
      ...(settings === undefined ? {} : { storage: settings }),
    });
    return {
      run: (m: TestMessage) => runMessage(plugins.map((p) => p.entry), m, { logger }),
      close: () => Promise.all(plugins.map((p) => p.supervisor.stop())),
    };
  }

  before(async () => {
    if (REDIS_SERVER === undefined) throw new Error('redis-server is not installed (failing instead of skipping because CI or MILTERD_REQUIRE_MTA is set)');
    sdk = await loadSdkRuntime();
    port = await freePort();
    server = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    storage = { backend: 'redis', url: `redis://127.0.0.1:${port}`, prefix: PREFIX, timeoutMs: 500 };
    redis = createClient({ url: storage.url, socket: { reconnectStrategy: 100 } });
    redis.on('error', () => undefined);
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await redis.connect();
        await redis.ping();
        break;
      } catch (err) {
        if (Date.now() > deadline || server.exitCode !== null) throw new Error(`redis-server did not start on port ${port}: ${String(err)}`);
        if (redis.isOpen) redis.destroy();
        await sleep(50);
      }
    }
  });

  after(async () => {
    if (redis?.isOpen) redis.destroy();
    const s = server;
    if (s === undefined || s.exitCode !== null || s.signalCode !== null) return;
    const exited = new Promise<void>((r) => s.once('exit', () => r()));
    s.kill('SIGTERM');
    const t = setTimeout(() => s.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  });

  test('greylisting shared between two instances: tempfailed through A, the retry after the delay accepted through B', async (t) => {
    const a = await chain(storage);
    t.after(() => a.close());
    const b = await chain(storage);
    t.after(() => b.close());

    const first = await a.run(message);
    assert.deepEqual(first.rcpts[0], { address: '<bob@example.net>', verdict: 'tempfail', reply: '451 4.7.1 Greylisted, please try again later' });

    // The key carries the prefix and the plugin's name; the value is JSON (a string here).
    const key = `${PREFIX}${PLUGIN}:${TRIPLET}`;
    assert.deepEqual(await redis.keys(`${PREFIX}*`), [key]);
    const pending = await redis.get(key);
    assert.match(pending ?? '', /^"\d+"$/);
    const pendingTtl = await redis.pTTL(key);
    assert.ok(pendingTtl > 86_000_000 && pendingTtl <= 86_400_000, `pending PTTL ${pendingTtl}`);

    // Too early, through B: B sees A's entry.
    assert.equal((await b.run(message)).rcpts[0]?.verdict, 'tempfail');

    await sleep(1100);
    const later = await b.run(message);
    assert.equal(later.verdict, 'accept');
    assert.match(later.headers.find((h) => h.name === 'X-Greylist')?.value ?? '', /^delayed [12] seconds by milterd$/);
    assert.equal(await redis.get(key), '"passed"');
    const passedTtl = await redis.pTTL(key);
    assert.ok(passedTtl > 29 * 86_400_000 && passedTtl <= 30 * 86_400_000, `passed PTTL ${passedTtl}`);

    // And A lets the next message through at once.
    const next = await a.run(message);
    assert.equal(next.verdict, 'accept');
    assert.equal(next.headers.find((h) => h.name === 'X-Greylist'), undefined);
  });

  test('Redis down: the kv call fails with MILTERD_PLUGIN_KV, greylist lets the mail through and logs why', async (t) => {
    const { logger, records } = memoryLogger();
    const down = await chain({ ...storage, url: `redis://127.0.0.1:${await freePort()}` }, logger);
    t.after(() => down.close());
    const t0 = performance.now();
    const r = await down.run({ ...message, rcpts: ['carol@example.net'] });
    assert.equal(r.verdict, 'accept');
    assert.ok(performance.now() - t0 < 2000);
    const skipped = records.find((l) => l.msg === 'greylisting skipped');
    assert.ok(skipped, JSON.stringify(records));
    assert.match(String(skipped.error), /^kv\.get: redis:\/\/127\.0\.0\.1:\d+ unavailable: .*ECONNREFUSED/);
  });

  test('Redis stalled (CLIENT PAUSE): the kv call fails after timeoutMs, greylist lets the mail through', async (t) => {
    const { logger, records } = memoryLogger();
    const slow = await chain({ ...storage, timeoutMs: 200 }, logger);
    t.after(() => slow.close());
    // Connect first (the connection is opened at the first kv call).
    assert.equal((await slow.run({ ...message, rcpts: ['dave@example.net'] })).rcpts[0]?.verdict, 'tempfail');
    await redis.sendCommand(['CLIENT', 'PAUSE', '1500', 'ALL']);
    const t0 = performance.now();
    const r = await slow.run({ ...message, rcpts: ['erin@example.net'] });
    const ms = performance.now() - t0;
    assert.equal(r.verdict, 'accept');
    assert.ok(ms >= 190 && ms < 1000, `${ms} ms`);
    const skipped = records.find((l) => l.msg === 'greylisting skipped');
    assert.match(String(skipped?.error), /did not answer kv\.get within 200 ms/);
    await sleep(1400); // let the pause end before the next test
  });

  test('memory backend unchanged: each sandbox process has its own store', async (t) => {
    const a = await chain(undefined);
    t.after(() => a.close());
    const b = await chain({ ...storage, backend: 'memory' });
    t.after(() => b.close());
    const m = { ...message, rcpts: ['frank@example.net'] };
    assert.equal((await a.run(m)).rcpts[0]?.verdict, 'tempfail');
    assert.equal((await b.run(m)).rcpts[0]?.verdict, 'tempfail'); // B never saw A's entry
    assert.deepEqual(await redis.keys(`${PREFIX}*frank*`), []);
  });

  test('RedisKv and MemoryKv give the same answers, types kept, TTLs as documented', async (t) => {
    const kv = new RedisKv({ ...storage, prefix: `${PREFIX}direct:` }, 'p');
    t.after(() => kv.close());
    const mem = new MemoryKv();
    const both = async (op: string, key: unknown, value?: unknown, ttl?: unknown): Promise<unknown> => {
      const outcome = (p: Promise<unknown>) => p.then((v) => ({ v }), (e: Error) => ({ e: e.message }));
      const [r, m] = await Promise.all([outcome(kv.run(op, key, value, ttl)), outcome(mem.run(op, key, value, ttl))]);
      assert.deepEqual(r, m, `${op} ${String(key)}`);
      return 'v' in r ? r.v : r.e;
    };
    const k = (key: string) => `${PREFIX}direct:p:${key}`;

    assert.equal(await both('get', 'missing'), null);
    assert.equal(await both('set', 's', '5'), true);
    assert.equal(await both('get', 's'), '5'); // a string stays a string
    assert.equal(await both('set', 'n', 5), true);
    assert.equal(await both('get', 'n'), 5); // a number stays a number
    assert.equal(await redis.get(k('s')), '"5"');
    assert.equal(await redis.get(k('n')), '5');
    assert.equal(await redis.pTTL(k('s')), -1); // set without ttl: no expiry

    // incr: from 0, on numeric strings, by fractions; ttl sets PEXPIRE, none keeps it.
    assert.equal(await both('incr', 'c'), 1);
    assert.equal(await redis.pTTL(k('c')), -1);
    assert.equal(await both('incr', 'c', 2, 60_000), 3);
    const ttl1 = await redis.pTTL(k('c'));
    assert.ok(ttl1 > 59_000 && ttl1 <= 60_000, `PTTL ${ttl1}`);
    assert.equal(await both('incr', 'c', -0.5), 2.5);
    const ttl2 = await redis.pTTL(k('c'));
    assert.ok(ttl2 > 0 && ttl2 <= ttl1, `PTTL kept: ${ttl2}`);
    assert.equal(await both('incr', 's', 1), 6);
    assert.equal(await both('get', 's'), 6);
    assert.equal(await both('incr', 'big', 2 ** 53), 2 ** 53);
    assert.equal(await both('incr', 'f', 0.1), 0.1);
    assert.equal(await both('incr', 'f', 0.2), 0.1 + 0.2);
    await both('set', 'word', 'abc');
    assert.match(String(await both('incr', 'word')), /^\[MILTERD_PLUGIN_BAD_ARGUMENT\] kv incr on a non-numeric value at word$/);

    // The script cache flushed: incr sends the script again.
    await redis.sendCommand(['SCRIPT', 'FLUSH']);
    assert.equal(await both('incr', 'c'), 3.5);

    // set with a ttl: PX; then expiry.
    await both('set', 'e', 'x', 50);
    const ttl3 = await redis.pTTL(k('e'));
    assert.ok(ttl3 > 0 && ttl3 <= 50);
    await sleep(80);
    assert.equal(await both('get', 'e'), null);

    assert.equal(await both('del', 'n'), true);
    assert.equal(await both('del', 'n'), false);
    assert.equal(await both('get', 'n'), null);

    // Strings of any characters come back exactly (JSON escapes lone surrogates).
    await both('set', 'u', 'é 😀 \ud800 "quoted" \\ \n');
    assert.equal(await both('get', 'u'), 'é 😀 \ud800 "quoted" \\ \n');

    // Argument errors are the same, and never reach Redis.
    await both('get', '');
    await both('get', 'x'.repeat(513));
    await both('set', 'x', 'y', 1.5);
    await both('set', 'x', Number.NaN);
    await both('set', 'x', 'y'.repeat(65537));
    await both('incr', 'x', 'one');
    await both('drop', 'x');
    assert.deepEqual(await redis.keys(k('x')), []);
  });

  /** A redis-server of its own on port `p` (killed, then started again, by the outage tests). */
  const spawnRedis = (p: number): ChildProcess =>
    spawn(REDIS_SERVER!, ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const stopRedis = async (s: ChildProcess): Promise<void> => {
    if (s.exitCode !== null || s.signalCode !== null) return;
    const exited = new Promise<void>((r) => s.once('exit', () => r()));
    s.kill('SIGKILL');
    await exited;
  };
  const until = async (ok: () => boolean | Promise<boolean>, what: string): Promise<void> => {
    const deadline = Date.now() + 10_000;
    while (!(await ok())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(50);
    }
  };

  test('a Redis that restarts: calls fail while it is down, the connection comes back by itself; each change is reported once', async (t) => {
    const p2 = await freePort();
    let s = spawnRedis(p2);
    t.after(() => stopRedis(s));
    const states: { up: boolean; where: string; reason?: string }[] = [];
    const kv = new RedisKv({ ...storage, url: `redis://127.0.0.1:${p2}`, timeoutMs: 1000 }, 'p', (st) => states.push(st));
    t.after(() => kv.close());
    const works = () => kv.run('incr', 'r', 1, undefined).then(() => true, () => false);
    await until(works, 'the first connection');
    await stopRedis(s);
    await assert.rejects(kv.run('get', 'r', undefined, undefined), /^Error: \[MILTERD_PLUGIN_KV\] redis:\/\/127\.0\.0\.1:\d+ (unavailable|kv\.get|did not answer)/);
    await sleep(600); // several reconnection attempts fail meanwhile (50, 100, 200 ms apart...)
    s = spawnRedis(p2);
    await until(works, 'the reconnection');
    assert.equal(await kv.run('get', 'r', undefined, undefined), 1); // a new, empty server
    // Only the transitions: the first connection (before redis-server listened, the first attempt
    // may fail, which reads as down, then up), the outage, the recovery.
    const trimmed = states[0]?.up === false ? states.slice(1) : states;
    assert.deepEqual(
      trimmed.map((x) => x.up),
      [true, false, true],
      JSON.stringify(states),
    );
    assert.equal(trimmed[1]!.where, `redis://127.0.0.1:${p2}`);
    assert.ok(trimmed[1]!.reason, 'the outage says why');
  });

  test('the daemon logs a Redis outage once per plugin, and its end, with milterd_storage_up following', async (t) => {
    const registry = enableMetrics(() => 0);
    const gauge = async (): Promise<string | undefined> =>
      /milterd_storage_up\{plugin="@milterd\/plugin-greylist"\} (\d)/.exec(await registry.metrics())?.[1];
    const p2 = await freePort();
    let s = spawnRedis(p2);
    t.after(() => stopRedis(s));
    const { logger, records } = memoryLogger();
    const c = await chain({ ...storage, url: `redis://127.0.0.1:${p2}`, timeoutMs: 500 }, logger);
    t.after(() => c.close());
    const outage = () => records.filter((l) => /^storage .* unavailable/.test(String(l.msg)));
    const back = () => records.filter((l) => /^storage .* reachable again/.test(String(l.msg)));
    // Connected once greylist's kv calls work (its first message is tempfailed).
    await until(async () => (await c.run({ ...message, rcpts: ['first@example.net'] })).rcpts[0]?.verdict === 'tempfail', 'Redis up');
    assert.equal(await gauge(), '1');
    const before = outage().length; // a refused first attempt, before redis-server listened, counts as one

    await stopRedis(s);
    for (let i = 0; i < 3; i++) assert.equal((await c.run({ ...message, rcpts: [`down${i}@example.net`] })).verdict, 'accept');
    await until(() => outage().length > before, 'the outage line');
    await sleep(600); // reconnection attempts keep failing: no new line
    assert.equal(outage().length, before + 1, JSON.stringify(outage()));
    const line = outage().at(-1)!;
    assert.equal(line.level, 40);
    assert.equal(line.code, 'MILTERD_PLUGIN_KV');
    assert.equal(line.plugin, '@milterd/plugin-greylist');
    assert.equal(line.storage, `redis://127.0.0.1:${p2}`);
    assert.equal(await gauge(), '0');

    s = spawnRedis(p2);
    await until(() => back().length > 0 && back().length >= outage().length, 'the recovery line');
    const up = back().at(-1)!;
    assert.equal(up.plugin, '@milterd/plugin-greylist');
    assert.ok(typeof up.downMs === 'number' && up.downMs >= 600, JSON.stringify(up));
    assert.equal(await gauge(), '1');
  });
});
