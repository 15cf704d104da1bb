/**
 * Configuration loading: defaults, YAML and JSON text, validation errors that name the file,
 * the key path and what was expected, frozen results, unreadable files.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultConfig, fromObject, loadConfig, parseConfig } from '../../../src/config/load.ts';
import { MilterdError, type ErrorCode } from '../../../src/errors.ts';

const FILE = '/etc/milterd/milterd.yaml';

const DEFAULTS = {
  listen: ['inet:8890@127.0.0.1'],
  socketMode: '0660',
  log: { level: 'info' },
  limits: { maxFrameBytes: 1048576, bodyMemoryBytes: 1048576, highWaterMarkBytes: 1048576 },
  timeouts: { progressIntervalMs: 10000, idleMs: 7210000, shutdownMs: 30000 },
  chain: [],
  metrics: {},
  reload: { watch: true, debounceMs: 50 },
  filters: { onError: 'tempfail', timeoutMs: 10000, messageBudgetMs: 60000 },
  storage: { backend: 'memory', url: 'redis://127.0.0.1:6379', prefix: 'milterd:', timeoutMs: 500 },
};

/** Asserts `fn` throws a MilterdError with `code` whose message has exactly `lines`. */
function refused(fn: () => unknown, code: ErrorCode, lines: readonly (string | RegExp)[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MilterdError, String(err));
    assert.equal(err.code, code);
    const got = err.message.split('\n');
    if (code === 'MILTERD_CONFIG_INVALID') assert.equal(got.length, lines.length, err.message);
    lines.forEach((l, i) => {
      if (typeof l === 'string') assert.equal(got[i], l);
      else assert.match(got[i]!, l);
    });
    return true;
  });
}

function isDeepFrozen(o: unknown, path = '$'): void {
  if (o === null || typeof o !== 'object') return;
  assert.ok(Object.isFrozen(o), `${path} is not frozen`);
  for (const [k, v] of Object.entries(o)) isDeepFrozen(v, `${path}.${k}`);
}

describe('defaultConfig', () => {
  it('has every default', () => {
    assert.deepEqual(defaultConfig(), DEFAULTS);
    assert.equal('tmpDir' in defaultConfig(), false);
    assert.equal('file' in defaultConfig().log, false);
  });

  it('is deeply frozen, and each call is independent', () => {
    const a = defaultConfig();
    isDeepFrozen(a);
    assert.throws(() => {
      (a.listen as string[]).push('unix:/x');
    }, TypeError);
    assert.throws(() => {
      (a.limits as { maxFrameBytes: number }).maxFrameBytes = 1;
    }, TypeError);
    assert.deepEqual(defaultConfig(), DEFAULTS);
  });
});

describe('parseConfig', () => {
  it('YAML text: given keys override, missing ones get defaults', () => {
    const c = parseConfig(
      [
        '# milterd',
        'listen:',
        '  - unix:/run/milterd/milterd.sock',
        '  - inet6:8890@[::1]',
        "socketMode: '0600'",
        'tmpDir: /var/tmp/milterd',
        'log:',
        '  level: debug',
        '  file: /var/log/milterd.log',
        'limits:',
        '  bodyMemoryBytes: 0',
        'filters:',
        '  onError: continue',
        '  timeoutMs: 2500',
        '',
      ].join('\n'),
      FILE,
    );
    assert.deepEqual(c, {
      listen: ['unix:/run/milterd/milterd.sock', 'inet6:8890@[::1]'],
      socketMode: '0600',
      tmpDir: '/var/tmp/milterd',
      log: { level: 'debug', file: '/var/log/milterd.log' },
      limits: { maxFrameBytes: 1048576, bodyMemoryBytes: 0, highWaterMarkBytes: 1048576 },
      timeouts: DEFAULTS.timeouts,
      chain: [],
      metrics: {},
      reload: DEFAULTS.reload,
      filters: { onError: 'continue', timeoutMs: 2500, messageBudgetMs: 60000 },
      storage: DEFAULTS.storage,
    });
    isDeepFrozen(c);
  });

  it('JSON text (JSON is YAML)', () => {
    const c = parseConfig(JSON.stringify({ listen: ['inet:10025'], timeouts: { progressIntervalMs: 0 } }), 'milterd.json');
    assert.deepEqual(c, {
      ...DEFAULTS,
      listen: ['inet:10025'],
      timeouts: { progressIntervalMs: 0, idleMs: 7210000, shutdownMs: 30000 },
    });
    isDeepFrozen(c);
  });

  it('empty text and an empty mapping give the defaults', () => {
    assert.deepEqual(parseConfig('', FILE), DEFAULTS);
    assert.deepEqual(parseConfig('# only a comment\n', FILE), DEFAULTS);
    assert.deepEqual(parseConfig('{}', FILE), DEFAULTS);
  });

  it('unknown key, at the top and nested', () => {
    refused(() => parseConfig('colour: blue\n', FILE), 'MILTERD_CONFIG_INVALID', [`${FILE}: colour: unknown key`]);
    refused(() => parseConfig('limits:\n  maxFrame: 1\n', FILE), 'MILTERD_CONFIG_INVALID', [`${FILE}: limits.maxFrame: unknown key`]);
  });

  it('wrong type', () => {
    refused(() => parseConfig('limits:\n  maxFrameBytes: big\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: limits.maxFrameBytes: expected a value that must be integer`,
    ]);
    refused(() => parseConfig('filters:\n  timeoutMs: 1.5\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: filters.timeoutMs: expected a value that must be integer`,
    ]);
    refused(() => parseConfig('log: verbose\n', FILE), 'MILTERD_CONFIG_INVALID', [`${FILE}: log: expected a value that must be object`]);
    refused(() => parseConfig('listen: unix:/x\n', FILE), 'MILTERD_CONFIG_INVALID', [`${FILE}: listen: expected a value that must be array`]);
  });

  it('enum', () => {
    refused(() => parseConfig('log:\n  level: loud\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: log.level: expected one of "fatal", "error", "warn", "info", "debug", "trace", "silent"`,
    ]);
    refused(() => parseConfig('filters:\n  onError: ignore\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: filters.onError: expected one of "continue", "accept", "tempfail", "reject"`,
    ]);
  });

  it('minimum and maximum', () => {
    refused(() => parseConfig('timeouts:\n  idleMs: 5\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: timeouts.idleMs: expected a value that must be >= 1000`,
    ]);
    refused(() => parseConfig('limits:\n  maxFrameBytes: 65536\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: limits.maxFrameBytes: expected a value that must be >= 66560`,
    ]);
    refused(() => parseConfig('limits:\n  maxFrameBytes: 67108865\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: limits.maxFrameBytes: expected a value that must be <= 67108864`,
    ]);
    refused(() => parseConfig('listen: []\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: listen: expected a value that must NOT have fewer than 1 items`,
    ]);
  });

  it('pattern (socketMode is an octal string)', () => {
    refused(() => parseConfig("socketMode: '999'\n", FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: socketMode: expected a value that must match pattern "^0?[0-7]{3}$"`,
    ]);
  });

  it('listen[i] with a bad socket spec names the index and the reason', () => {
    refused(() => parseConfig('listen:\n  - unix:/ok.sock\n  - inet:70000@127.0.0.1\n  - tcp:1\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: listen[1]: listen address "inet:70000@127.0.0.1": port must be 0-65535, got "70000"`,
      `${FILE}: listen[2]: listen address "tcp:1": unknown socket type "tcp"`,
    ]);
    refused(() => parseConfig('listen:\n  - ""\n', FILE), 'MILTERD_CONFIG_INVALID', [
      `${FILE}: listen[0]: expected a value that must NOT have fewer than 1 characters`,
    ]);
  });

  it('every error is reported, one line each, also in details', () => {
    assert.throws(
      () => parseConfig('colour: blue\nlog:\n  level: loud\ntimeouts:\n  idleMs: 5\n', FILE),
      (err: unknown) => {
        assert.ok(err instanceof MilterdError);
        assert.equal(err.code, 'MILTERD_CONFIG_INVALID');
        const lines = err.message.split('\n').sort();
        assert.deepEqual(lines, [
          `${FILE}: colour: unknown key`,
          `${FILE}: log.level: expected one of "fatal", "error", "warn", "info", "debug", "trace", "silent"`,
          `${FILE}: timeouts.idleMs: expected a value that must be >= 1000`,
        ]);
        assert.deepEqual([...((err.details?.errors as string[]) ?? [])].sort(), lines);
        return true;
      },
    );
  });

  it('not a mapping', () => {
    for (const text of ['- a\n- b\n', 'just a string\n', '42\n']) {
      refused(() => parseConfig(text, FILE), 'MILTERD_CONFIG_INVALID', [`${FILE}: the configuration must be a mapping of keys to values`]);
    }
  });

  it('a YAML syntax error is MILTERD_CONFIG_READ naming the file and the line', () => {
    refused(() => parseConfig('listen: [\n', FILE), 'MILTERD_CONFIG_READ', [new RegExp(`^${FILE}: .*line \\d+`)]);
    refused(() => parseConfig('log:\n  level: info\n  level: debug\n', FILE), 'MILTERD_CONFIG_READ', [new RegExp(`^${FILE}: `)]);
  });

  it('fromObject does not modify its input', () => {
    const input = { log: { level: 'warn' } };
    const c = fromObject(input, 'obj');
    assert.deepEqual(input, { log: { level: 'warn' } });
    assert.equal(Object.isFrozen(input), false);
    assert.equal(c.log.level, 'warn');
  });
});

describe('loadConfig', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'milterd-config-test-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads and validates a file', async () => {
    const file = join(dir, 'ok.yaml');
    await writeFile(file, 'listen: ["unix:/run/m.sock"]\nfilters:\n  onError: reject\n');
    const c = await loadConfig(file);
    assert.deepEqual(c, { ...DEFAULTS, listen: ['unix:/run/m.sock'], filters: { ...DEFAULTS.filters, onError: 'reject' } });
    isDeepFrozen(c);
  });

  it('names the file in validation errors', async () => {
    const file = join(dir, 'bad.yaml');
    await writeFile(file, 'limits:\n  bodyMemoryBytes: -1\n');
    await assert.rejects(loadConfig(file), (err: unknown) => {
      assert.ok(err instanceof MilterdError);
      assert.equal(err.code, 'MILTERD_CONFIG_INVALID');
      assert.equal(err.message, `${file}: limits.bodyMemoryBytes: expected a value that must be >= 0`);
      return true;
    });
  });

  it('a missing file is MILTERD_CONFIG_READ naming the file', async () => {
    const file = join(dir, 'does-not-exist.yaml');
    await assert.rejects(loadConfig(file), (err: unknown) => {
      assert.ok(err instanceof MilterdError);
      assert.equal(err.code, 'MILTERD_CONFIG_READ');
      assert.ok(err.message.startsWith(`${file}: cannot read: `), err.message);
      assert.match(err.message, /ENOENT/);
      return true;
    });
  });
});

describe('chain entries', () => {
  it('fill their defaults and keep their order', () => {
    const c = parseConfig('chain:\n  - plugin: ./a\n  - plugin: "@acme/b"\n    capabilities: [kv, log]\n    poolSize: 4\n    limits: { wallMs: 300 }\n    options: { x: 1 }\n', FILE);
    assert.deepEqual(c.chain, [
      { plugin: './a', enabled: true, shadow: false, capabilities: [], poolSize: 2 },
      { plugin: '@acme/b', enabled: true, shadow: false, capabilities: ['kv', 'log'], poolSize: 4, limits: { wallMs: 300 }, options: { x: 1 } },
    ]);
  });

  it('name the entry and key of each error', () => {
    assert.throws(
      () => parseConfig('chain:\n  - plugin: ./a\n    capabilities: [fs]\n    limits: { memoryMb: 1 }\n    colour: red\n', FILE),
      (err: MilterdError) => {
        assert.equal(err.code, 'MILTERD_CONFIG_INVALID');
        assert.match(err.message, /chain\[0\]\.capabilities\[0\]: expected one of "log", "kv", "dns", "clock"/);
        assert.match(err.message, /chain\[0\]\.limits\.memoryMb: expected a value that must be >= 8/);
        assert.match(err.message, /chain\[0\]\.colour: unknown key/);
        return true;
      },
    );
  });

  it('take circuit breaker settings, checked', () => {
    const c = parseConfig('chain:\n  - plugin: ./a\n    breaker: { threshold: 3, cooldownMs: 30000 }\n', FILE);
    assert.deepEqual(c.chain[0]!.breaker, { threshold: 3, cooldownMs: 30000 });
    assert.throws(
      () => parseConfig('chain:\n  - plugin: ./a\n    breaker: { threshold: 0, cooldownMs: 10, after: 1 }\n', FILE),
      (err: MilterdError) => {
        assert.match(err.message, /chain\[0\]\.breaker\.threshold: expected a value that must be >= 1/);
        assert.match(err.message, /chain\[0\]\.breaker\.cooldownMs: expected a value that must be >= 100/);
        assert.match(err.message, /chain\[0\]\.breaker\.after: unknown key/);
        return true;
      },
    );
  });

  it('bound the per-plugin time limits as the manifest does', () => {
    assert.throws(
      () => parseConfig('chain:\n  - plugin: ./a\n    limits: { cpuMs: 60001, wallMs: 300001, messageMs: 600001 }\n', FILE),
      (err: MilterdError) => {
        assert.match(err.message, /chain\[0\]\.limits\.cpuMs: expected a value that must be <= 60000/);
        assert.match(err.message, /chain\[0\]\.limits\.wallMs: expected a value that must be <= 300000/);
        assert.match(err.message, /chain\[0\]\.limits\.messageMs: expected a value that must be <= 600000/);
        return true;
      },
    );
  });

  it('config/default.yaml (what npm start uses) is valid and chains the example plugins', async () => {
    const c = await loadConfig(new URL('../../../config/default.yaml', import.meta.url).pathname);
    assert.deepEqual(
      c.chain.map((e) => e.plugin),
      ['../plugins/recipient-policy', '../plugins/inspect', '../plugins/header-stamp'],
    );
  });
});
