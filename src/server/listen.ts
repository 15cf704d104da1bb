/**
 * libmilter's socket syntax (smfi_setconn): `unix:/path` (or `local:/path`),
 * `inet:port@host` and `inet6:port@host`; a bare `inet:port` listens on every IPv4 address.
 * @module
 */
import { MilterdError } from '../errors.ts';
import { isIP } from 'node:net';

/** A parsed listen address. */
export type ListenSpec =
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'inet'; readonly port: number; readonly host: string }
  | { readonly kind: 'inet6'; readonly port: number; readonly host: string };

function badSpec(spec: string, why: string): never {
  throw new MilterdError('MILTERD_SERVER_LISTEN_SPEC', `listen address ${JSON.stringify(spec)}: ${why}`);
}

/** Parses one address; throws MILTERD_SERVER_LISTEN_SPEC with the reason. */
export function parseListenSpec(spec: string): ListenSpec {
  const colon = spec.indexOf(':');
  if (colon === -1) {
    if (spec.startsWith('/')) return { kind: 'unix', path: spec }; // libmilter accepts a bare path
    badSpec(spec, 'expected unix:/path, inet:port@host or inet6:port@host');
  }
  const proto = spec.slice(0, colon).toLowerCase();
  const rest = spec.slice(colon + 1);
  if (proto === 'unix' || proto === 'local') {
    if (!rest.startsWith('/')) badSpec(spec, 'a unix socket needs an absolute path');
    return { kind: 'unix', path: rest };
  }
  if (proto !== 'inet' && proto !== 'inet6') badSpec(spec, `unknown socket type "${proto}"`);
  const at = rest.indexOf('@');
  const portText = at === -1 ? rest : rest.slice(0, at);
  let host = at === -1 ? (proto === 'inet' ? '0.0.0.0' : '::') : rest.slice(at + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) badSpec(spec, `port must be 0-65535, got "${portText}"`);
  if (host === '') badSpec(spec, 'empty host');
  if (proto === 'inet6' && isIP(host) === 4) badSpec(spec, 'inet6 needs an IPv6 address or a host name');
  if (proto === 'inet' && isIP(host) === 6) badSpec(spec, 'inet needs an IPv4 address or a host name');
  return { kind: proto, port: Number(portText), host };
}

/** The spec back in libmilter syntax (for logs and for configuring the MTA). */
export function formatListenSpec(s: ListenSpec): string {
  return s.kind === 'unix' ? `unix:${s.path}` : `${s.kind}:${s.port}@${s.host}`;
}
