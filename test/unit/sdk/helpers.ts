/** Fakes for SDK runtime tests: host References and wire calls. */
import type { HostReference } from '../../../sdk/src/runtime.ts';
import type { Action, WireCall, WireCallBase, WireHeader } from '../../../sdk/src/protocol.ts';

/** A fake isolated-vm Reference to a host function; records calls, copies arguments like `{ copy: true }`. */
export interface FakeReference extends HostReference {
  readonly calls: unknown[][];
}

export function fakeRef(fn: (...args: unknown[]) => unknown): FakeReference {
  const calls: unknown[][] = [];
  const run = (args: unknown[]): unknown => {
    const copy = structuredClone(args); // throws on functions, as isolated-vm's copy does
    calls.push(copy);
    return fn(...copy);
  };
  return {
    calls,
    async apply(_receiver, args) {
      return structuredClone(await run(args));
    },
    applyIgnored(_receiver, args) {
      run(args);
    },
    applySync(_receiver, args) {
      return run(args);
    },
  };
}

/** What every call carries, for connection `conn` and message `msg`. */
export function base(conn = 'c1', msg = 1, over: Partial<WireCallBase> = {}): WireCallBase {
  return {
    conn,
    msg,
    connection: { hostname: 'mx.example.net', family: 'inet', address: '192.0.2.10', port: 41234, helo: 'client.example.net' },
    from: { address: '<alice@example.net>', args: ['SIZE=100'] },
    rcpts: [{ address: '<bob@example.org>', args: [] }],
    macros: { i: 'QID1', j: 'mx.example.org', auth_authen: 'alice' },
    ...over,
  };
}

/** Headers as the host sends them. */
export function hdrs(...pairs: [string, string][]): WireHeader[] {
  return pairs.map(([name, value]) => ({ name, value, raw: ` ${value}` }));
}

/** An end-of-message call. */
export function eomCall(opts: { conn?: string; msg?: number; headers?: WireHeader[]; body?: Uint8Array | string; actions?: Action[] } = {}): WireCall {
  const body = opts.body ?? 'Hello\r\n';
  return {
    ...base(opts.conn, opts.msg),
    phase: 'eom',
    headers: opts.headers ?? hdrs(['From', 'alice@example.net'], ['Subject', 'hi'], ['To', 'bob@example.org']),
    body: typeof body === 'string' ? new TextEncoder().encode(body) : body,
    actions: opts.actions ?? [],
  };
}
