/**
 * Helpers for the hostile-plugin tests: load fixture plugins from test/fixtures/hostile into a
 * real MilterServer next to well-behaved example plugins, drive it with the MTA simulator, and
 * read the structured log (one capture shared by the server, the chain and the supervisors).
 */
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { ChainEntry } from '../../src/chain/filter.ts';
import { loadChain, loadSdkRuntime, type LoadedPlugin, type PluginEntryConfig, type SdkRuntime } from '../../src/plugins/load.ts';
import type { PluginLimits } from '../../src/plugins/manifest.ts';
import type { MessageResult, MtaClient } from './mta-client.ts';
import { startServer, type LogLine, type TestServer } from './server.ts';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const HOSTILE_DIR = fileURLToPath(new URL('../fixtures/hostile/', import.meta.url));

/** Small limits, so that misbehaviour is cut short quickly. */
export const LIMITS: Readonly<PluginLimits> = Object.freeze({ wallMs: 300, cpuMs: 100, memoryMb: 32, messageMs: 2000 });

/** The well-behaved neighbour: header-stamp adds this header at end of message. */
export const STAMP = 'X-Filtered-By';

let sdk: Promise<SdkRuntime> | undefined;

/** A chain entry for the fixture `name`, with small limits and policy 'continue'. */
export function hostile(name: string, o: Partial<PluginEntryConfig> = {}): PluginEntryConfig {
  return {
    plugin: `${HOSTILE_DIR}${name}`,
    onError: 'continue',
    capabilities: ['log'],
    ...o,
    limits: { ...LIMITS, ...o.limits },
  };
}

/** header-stamp, the chain partner whose work must survive its neighbour's misbehaviour. */
export const headerStamp: PluginEntryConfig = { plugin: './plugins/header-stamp', capabilities: ['log'] };

/** A server running a chain of loaded plugins, with its log. */
export interface Harness {
  readonly server: TestServer;
  readonly plugins: readonly LoadedPlugin[];
  readonly logs: LogLine[];
  /** A connection that has negotiated and sent CONNECT and HELO. */
  open(hostname?: string): Promise<MtaClient>;
  /** One message; `ms` is how long it took to get its verdict. */
  send(c: MtaClient, from: string, extra?: { headers?: ReadonlyArray<readonly [string, string]>; body?: string }): Promise<Sent>;
  /** Log lines naming plugin `name` (field `filter` or `plugin`) with `code`, and `hook` if given. */
  failures(name: string, code: string, hook?: string): LogLine[];
  /** A readable dump of the warnings and errors logged so far, for assertion messages. */
  dump(): string;
}

export interface Sent {
  readonly r: MessageResult;
  readonly ms: number;
  /** Names of the headers the MTA was asked to add. */
  readonly added: string[];
}

/** Loads `entries` (paths relative to the repository root) and starts a server with them. */
export async function harness(
  t: { after(fn: () => unknown): void },
  entries: readonly PluginEntryConfig[],
  adjust: (e: ChainEntry, i: number) => ChainEntry = (e) => e,
): Promise<Harness> {
  const logs: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
  sdk ??= loadSdkRuntime();
  const plugins = await loadChain(entries, { baseDir: ROOT, sdk: await sdk, logger, onError: 'tempfail' });
  let server: TestServer;
  try {
    server = await startServer(
      plugins.map((p, i) => adjust(p.entry, i)),
      { logger },
    );
  } catch (err) {
    await Promise.all(plugins.map((p) => p.supervisor.stop()));
    throw err;
  }
  // The server first (its connections' close calls still reach the plugins), then the plugins.
  t.after(async () => {
    await server.stop();
    await Promise.all(plugins.map((p) => p.supervisor.stop()));
  });
  const h: Harness = {
    server,
    plugins,
    logs,
    async open(hostname = 'client.example.org') {
      const c = await server.connect({ timeoutMs: 15_000 });
      await c.negotiate();
      await c.connect({ hostname, family: 'inet', address: '192.0.2.7', port: 40001 });
      await c.helo('client.example.org');
      return c;
    },
    async send(c, from, extra = {}) {
      const start = performance.now();
      const r = await c.runMessage({
        from,
        rcpts: ['<bob@example.net>'],
        headers: extra.headers ?? [['Subject', ' hello'], ['From', ' alice@example.org']],
        body: extra.body ?? 'Hi Bob\r\n',
      });
      const ms = performance.now() - start;
      const added = (r.eom?.modifications ?? []).flatMap((m) => (m.kind === 'addheader' ? [m.name] : []));
      return { r, ms, added };
    },
    failures(name, code, hook) {
      return logs.filter((l) => (l.filter === name || l.plugin === name) && l.code === code && (hook === undefined || l.hook === hook));
    },
    dump() {
      return logs
        .filter((l) => l.level >= 40)
        .map((l) => JSON.stringify({ filter: l.filter, plugin: l.plugin, hook: l.hook, code: l.code, err: l.err, msg: l.msg }).slice(0, 300))
        .join('\n');
    },
  };
  return h;
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
