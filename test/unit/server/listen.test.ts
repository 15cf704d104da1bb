/**
 * parseListenSpec / formatListenSpec: libmilter's socket syntax (smfi_setconn).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MilterdError } from '../../../src/errors.ts';
import { formatListenSpec, parseListenSpec, type ListenSpec } from '../../../src/server/listen.ts';

describe('parseListenSpec', () => {
  const good: ReadonlyArray<readonly [string, ListenSpec, string]> = [
    ['unix:/run/milterd.sock', { kind: 'unix', path: '/run/milterd.sock' }, 'unix:/run/milterd.sock'],
    ['local:/var/spool/postfix/milterd', { kind: 'unix', path: '/var/spool/postfix/milterd' }, 'unix:/var/spool/postfix/milterd'],
    ['/run/bare.sock', { kind: 'unix', path: '/run/bare.sock' }, 'unix:/run/bare.sock'],
    ['UNIX:/p', { kind: 'unix', path: '/p' }, 'unix:/p'],
    ['unix:/with:colon', { kind: 'unix', path: '/with:colon' }, 'unix:/with:colon'],
    ['inet:8890@127.0.0.1', { kind: 'inet', port: 8890, host: '127.0.0.1' }, 'inet:8890@127.0.0.1'],
    ['inet:8890@localhost', { kind: 'inet', port: 8890, host: 'localhost' }, 'inet:8890@localhost'],
    ['inet:8890', { kind: 'inet', port: 8890, host: '0.0.0.0' }, 'inet:8890@0.0.0.0'],
    ['INET:0@10.0.0.1', { kind: 'inet', port: 0, host: '10.0.0.1' }, 'inet:0@10.0.0.1'],
    ['inet:65535@[192.0.2.1]', { kind: 'inet', port: 65535, host: '192.0.2.1' }, 'inet:65535@192.0.2.1'],
    ['inet6:8890@::1', { kind: 'inet6', port: 8890, host: '::1' }, 'inet6:8890@::1'],
    ['inet6:8890@[::1]', { kind: 'inet6', port: 8890, host: '::1' }, 'inet6:8890@::1'],
    ['inet6:25@[2001:db8::25]', { kind: 'inet6', port: 25, host: '2001:db8::25' }, 'inet6:25@2001:db8::25'],
    ['inet6:8890', { kind: 'inet6', port: 8890, host: '::' }, 'inet6:8890@::'],
    ['inet6:8890@ip6-localhost', { kind: 'inet6', port: 8890, host: 'ip6-localhost' }, 'inet6:8890@ip6-localhost'],
  ];
  for (const [spec, parsed, formatted] of good) {
    it(`${spec} → ${JSON.stringify(parsed)} → ${formatted}`, () => {
      assert.deepEqual(parseListenSpec(spec), parsed);
      assert.equal(formatListenSpec(parsed), formatted);
      // The formatted spec parses back to the same address.
      assert.deepEqual(parseListenSpec(formatted), parsed);
    });
  }

  const bad: ReadonlyArray<readonly [string, RegExp]> = [
    ['unix:relative/path', /absolute path/],
    ['local:sock', /absolute path/],
    ['unix:', /absolute path/],
    ['relative.sock', /expected unix/],
    ['', /expected unix/],
    ['inet:70000@127.0.0.1', /port must be 0-65535/],
    ['inet:65536', /port must be 0-65535/],
    ['inet:-1@127.0.0.1', /port must be 0-65535/],
    ['inet:http@127.0.0.1', /port must be 0-65535/],
    ['inet:@127.0.0.1', /port must be 0-65535/],
    ['inet:123456@127.0.0.1', /port must be 0-65535/],
    ['inet:8890@', /empty host/],
    ['inet:8890@[]', /empty host/],
    ['tcp:8890@127.0.0.1', /unknown socket type "tcp"/],
    ['inet4:8890@127.0.0.1', /unknown socket type "inet4"/],
    ['inet:8890@::1', /inet needs an IPv4 address/],
    ['inet:8890@[::1]', /inet needs an IPv4 address/],
    ['inet6:8890@127.0.0.1', /inet6 needs an IPv6 address/],
  ];
  for (const [spec, why] of bad) {
    it(`refuses ${JSON.stringify(spec)} with MILTERD_SERVER_LISTEN_SPEC`, () => {
      assert.throws(
        () => parseListenSpec(spec),
        (err: unknown) => {
          assert.ok(err instanceof MilterdError, String(err));
          assert.equal(err.code, 'MILTERD_SERVER_LISTEN_SPEC');
          assert.equal(err.area, 'server');
          assert.ok(err.message.includes(JSON.stringify(spec)), err.message);
          assert.match(err.message, why);
          return true;
        },
      );
    });
  }
});
