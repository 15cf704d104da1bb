/**
 * The kv store's pieces that need no Redis: how keys and values are encoded for Redis (types
 * kept, prefix and plugin namespace), the Redis commands of each operation, argument checks,
 * MemoryKv's TTL rules, and the `storage` configuration key.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  checkRequest,
  createKv,
  decodeValue,
  DEFAULT_STORAGE,
  encodeValue,
  MemoryKv,
  RedisKv,
  redisCommand,
  redisKey,
  redisWhere,
} from '../../../src/sandbox/kv.ts';
import { parseConfig } from '../../../src/config/load.ts';

describe('value encoding', () => {
  it('stores strings as JSON strings and numbers as decimals', () => {
    assert.equal(encodeValue('passed'), '"passed"');
    assert.equal(encodeValue('5'), '"5"');
    assert.equal(encodeValue(5), '5');
    assert.equal(encodeValue(-0.25), '-0.25');
    assert.equal(encodeValue(1e21), '1e+21');
    assert.equal(encodeValue(''), '""');
    assert.throws(() => encodeValue(Number.NaN), RangeError);
    assert.throws(() => encodeValue(Infinity), RangeError);
  });

  it('gives values back with their type', () => {
    assert.equal(decodeValue('"5"'), '5');
    assert.equal(decodeValue('5'), 5);
    assert.equal(decodeValue('7.3'), 7.3);
    assert.equal(decodeValue('1e+21'), 1e21);
    assert.equal(decodeValue('""'), '');
    assert.equal(decodeValue('"a \\"b\\" \\ud800"'), 'a "b" \ud800');
  });

  it('round-trips every string and finite number exactly', () => {
    fc.assert(fc.property(fc.oneof(fc.string({ unit: 'binary' }), fc.double({ noNaN: true, noDefaultInfinity: true })), (v) => {
      const back = decodeValue(encodeValue(v));
      assert.equal(typeof back, typeof v);
      // -0 is written as 0 (JSON), as any decimal text would be.
      assert.ok(Object.is(back, v) || (v === 0 && back === 0));
    }));
  });

  it('reads text written by something else as the string it is', () => {
    assert.equal(decodeValue('passed'), 'passed');
    assert.equal(decodeValue('{"a":1}'), '{"a":1}');
    assert.equal(decodeValue('[1]'), '[1]');
    assert.equal(decodeValue('true'), 'true');
    assert.equal(decodeValue('null'), 'null');
    assert.equal(decodeValue(''), '');
  });
});

describe('keys', () => {
  it('are prefix, plugin name, colon, key', () => {
    assert.equal(redisKey('milterd:', '@milterd/plugin-greylist', 'triplet:a/b/c'), 'milterd:@milterd/plugin-greylist:triplet:a/b/c');
    assert.equal(redisKey('', 'p', 'k'), 'p:k');
    // Two plugins using the same key stay apart.
    assert.notEqual(redisKey('m:', 'a', 'k'), redisKey('m:', 'b', 'k'));
  });

  it('every operation touches only its namespaced key', () => {
    const k = 'milterd:plug:k';
    assert.deepEqual(redisCommand(checkRequest('get', 'k', undefined, undefined), 'milterd:', 'plug'), ['GET', k]);
    assert.deepEqual(redisCommand(checkRequest('set', 'k', 'v', undefined), 'milterd:', 'plug'), ['SET', k, '"v"']);
    assert.deepEqual(redisCommand(checkRequest('set', 'k', 3, 1500), 'milterd:', 'plug'), ['SET', k, '3', 'PX', '1500']);
    assert.deepEqual(redisCommand(checkRequest('del', 'k', undefined, undefined), 'milterd:', 'plug'), ['DEL', k]);
    const incr = redisCommand(checkRequest('incr', 'k', undefined, undefined), 'milterd:', 'plug');
    assert.equal(incr[0], 'EVALSHA');
    assert.match(incr[1]!, /^[0-9a-f]{40}$/);
    assert.deepEqual(incr.slice(2), ['1', k, '1', '']);
    assert.deepEqual(redisCommand(checkRequest('incr', 'k', -2, 60_000), 'milterd:', 'plug').slice(2), ['1', k, '-2', '60000']);
  });
});

describe('argument checks (both backends)', () => {
  const bad = (op: unknown, key: unknown, value: unknown, ttl: unknown, msg: RegExp) =>
    assert.throws(() => checkRequest(op, key, value, ttl), (e: Error) => /^\[MILTERD_PLUGIN_BAD_ARGUMENT\] /.test(e.message) && msg.test(e.message));

  it('refuses bad keys, TTLs, values, steps and operations', () => {
    bad('get', '', undefined, undefined, /key must be a string of 1-512/);
    bad('get', 'x'.repeat(513), undefined, undefined, /key/);
    bad('get', 5, undefined, undefined, /key/);
    bad('set', 'k', 'v', 0, /ttlMs must be an integer/);
    bad('set', 'k', 'v', 1.5, /ttlMs/);
    bad('set', 'k', 'v', 31 * 86_400_000, /ttlMs/);
    bad('set', 'k', Number.NaN, undefined, /value must be a finite number or a string/);
    bad('set', 'k', 'v'.repeat(65537), undefined, /value/);
    bad('set', 'k', { a: 1 }, undefined, /value/);
    bad('incr', 'k', 'one', undefined, /incr step must be a finite number/);
    bad('flush', 'k', undefined, undefined, /unknown kv operation flush/);
  });

  it('accepts the documented forms', () => {
    assert.deepEqual(checkRequest('incr', 'k', null, null), { op: 'incr', key: 'k', by: 1, ttl: undefined });
    assert.deepEqual(checkRequest('set', 'k', 'v'.repeat(65536), 30 * 86_400_000), { op: 'set', key: 'k', value: 'v'.repeat(65536), ttl: 30 * 86_400_000 });
  });
});

describe('MemoryKv', () => {
  it('keeps types, counts from 0, keeps the TTL on incr without one, expires', async () => {
    const kv = new MemoryKv();
    assert.equal(await kv.run('get', 'k', undefined, undefined), null);
    assert.equal(await kv.run('set', 's', '5', undefined), true);
    assert.equal(await kv.run('get', 's', undefined, undefined), '5');
    assert.equal(await kv.run('incr', 's', 2, undefined), 7);
    assert.equal(await kv.run('incr', 'c', undefined, 30), 1);
    assert.equal(await kv.run('incr', 'c', undefined, undefined), 2); // TTL kept
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(await kv.run('get', 'c', undefined, undefined), null);
    assert.equal(await kv.run('del', 's', undefined, undefined), true);
    assert.equal(await kv.run('del', 's', undefined, undefined), false);
    await kv.run('set', 'w', 'abc', undefined);
    await assert.rejects(kv.run('incr', 'w', 1, undefined), /kv incr on a non-numeric value at w/);
  });
});

describe('backend selection and settings', () => {
  it('memory by default, Redis when configured', () => {
    assert.ok(createKv(undefined, 'p') instanceof MemoryKv);
    assert.ok(createKv(DEFAULT_STORAGE, 'p') instanceof MemoryKv);
    const r = createKv({ ...DEFAULT_STORAGE, backend: 'redis' }, 'p');
    assert.ok(r instanceof RedisKv);
    r.close();
  });

  it('error messages name the server without its password', () => {
    assert.equal(redisWhere('redis://user:secret@cache.example:6380/2'), 'redis://cache.example:6380/2');
    assert.equal(redisWhere('rediss://cache.example'), 'rediss://cache.example');
    assert.equal(redisWhere('not a url'), 'redis (invalid storage.url)');
  });

  it('the storage configuration key: defaults, overrides, a URL that is not redis[s]:// refused', () => {
    assert.deepEqual(parseConfig('', 'm.yaml').storage, DEFAULT_STORAGE);
    const c = parseConfig('storage:\n  backend: redis\n  url: redis://10.0.0.5:6380/1\n  prefix: "mx1:"\n  timeoutMs: 250\n', 'm.yaml');
    assert.deepEqual(c.storage, { backend: 'redis', url: 'redis://10.0.0.5:6380/1', prefix: 'mx1:', timeoutMs: 250 });
    assert.throws(() => parseConfig('storage:\n  url: http://x\n', 'm.yaml'), /storage\.url/);
    assert.throws(() => parseConfig('storage:\n  backend: etcd\n', 'm.yaml'), /storage\.backend/);
    assert.throws(() => parseConfig('storage:\n  timeoutMs: 0\n', 'm.yaml'), /storage\.timeoutMs/);
  });
});
