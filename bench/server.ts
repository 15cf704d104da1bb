/**
 * The server under test, as a child process of bench/run.ts: a MilterServer with a named
 * scenario's chain. Prints `ready <address> sandboxes=<pid,…>` once listening; stops on SIGTERM
 * or SIGINT, then prints `stats <json>` (failures by error code, sandbox restarts) and exits.
 *
 *   node bench/server.ts --scenario NAME [--listen inet:0@127.0.0.1] [--pool 2]
 *
 * Scenarios:
 * - `empty`: no filters (the cost of the protocol and session machinery alone);
 * - `inspect`: the in-process inspect filter, bench/filters/inspect.ts;
 * - `plugin-inspect`: the same work as a sandboxed plugin, plugins/inspect;
 * - `plugin-chain`: three sandboxed plugins: inspect, recipient-policy (a pattern that matches
 *   no recipient of the load), header-stamp (`X-Stamp: qid <queue id>`);
 * - `plugin-hostile`: plugin-chain plus bench/plugins/hostile, which hangs on every 500th call
 *   and is ended by its 50 ms wall-clock watchdog (`onError: continue`, so mail flows);
 * - `plugin-hostile-idle`: the same fourth plugin, told never to hang (what the extra plugin
 *   costs without the hangs; for analysis).
 *
 * Sandbox processes are forked by this process, so they inherit its CPU affinity: pinned by
 * bench/run.ts, the daemon and all its sandboxes share the one server core.
 * @module
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import type { ChainEntry } from '../src/chain/filter.ts';
import { loadChain, loadSdkRuntime, type LoadedPlugin, type PluginEntryConfig } from '../src/plugins/load.ts';
import { MilterServer } from '../src/server/server.ts';
import { inspectFilter } from './filters/inspect.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** In-process chains, by scenario name. */
export const SCENARIOS: Readonly<Record<string, readonly ChainEntry[]>> = {
  empty: [],
  inspect: [{ filter: inspectFilter }],
};

/** Options of header-stamp in the plugin chains (the load generator checks the header). */
export const STAMP_OPTIONS = { name: 'X-Stamp', value: 'qid {qid}' } as const;

const CHAIN: readonly PluginEntryConfig[] = [
  { plugin: './plugins/inspect' },
  // The load's recipients are <rcptN@example.net>: this matches none of them.
  { plugin: './plugins/recipient-policy', capabilities: ['log'], options: { reject: ['^nobody@nowhere\\.invalid$'] } },
  { plugin: './plugins/header-stamp', capabilities: ['log'], options: STAMP_OPTIONS },
];

const hostile = (every: number): PluginEntryConfig => ({
  plugin: './bench/plugins/hostile',
  capabilities: ['kv'],
  onError: 'continue',
  limits: { wallMs: 50 },
  options: { every },
});

/** Sandboxed plugin chains, by scenario name (folders relative to the repository root). */
export const PLUGIN_SCENARIOS: Readonly<Record<string, readonly PluginEntryConfig[]>> = {
  'plugin-inspect': [{ plugin: './plugins/inspect' }],
  'plugin-chain': CHAIN,
  'plugin-hostile': [...CHAIN, hostile(500)],
  'plugin-hostile-idle': [...CHAIN, hostile(0)],
};

/** Counts warnings and errors by code instead of printing them (a hostile run logs one per hang). */
function countingLogger(counts: Record<string, number>, samples: string[]): pino.Logger {
  return pino(
    { level: 'warn' },
    {
      write(line: string) {
        try {
          const o = JSON.parse(line) as { code?: string; msg?: string };
          const code = o.code ?? 'uncoded';
          counts[code] = (counts[code] ?? 0) + 1;
          if (samples.length < 5) samples.push(`${code}: ${o.msg ?? ''}`);
        } catch {
          counts.unparsed = (counts.unparsed ?? 0) + 1;
        }
      },
    },
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      scenario: { type: 'string', default: 'empty' },
      listen: { type: 'string', default: 'inet:0@127.0.0.1' },
      pool: { type: 'string' },
    },
  });
  const name = values.scenario;
  const counts: Record<string, number> = {};
  const samples: string[] = [];
  const logger = countingLogger(counts, samples);
  let plugins: LoadedPlugin[] = [];
  let chain = SCENARIOS[name];
  if (chain === undefined) {
    const entries = PLUGIN_SCENARIOS[name];
    if (entries === undefined) {
      throw new Error(`unknown scenario ${name}; known: ${[...Object.keys(SCENARIOS), ...Object.keys(PLUGIN_SCENARIOS)].join(', ')}`);
    }
    const pool = values.pool === undefined ? undefined : Number(values.pool);
    const sdk = await loadSdkRuntime();
    plugins = await loadChain(
      entries.map((e) => (pool === undefined ? e : { ...e, poolSize: pool })),
      { baseDir: ROOT, sdk, logger, onError: 'tempfail' },
    );
    chain = plugins.map((p) => p.entry);
  }
  const server = new MilterServer({ listen: values.listen, chain, logger });
  await server.start();
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    (async () => {
      await server.stop({ deadlineMs: 2000 });
      const restarts = plugins.map((p) => ({ plugin: p.manifest.name, restarts: p.supervisor.status().restarts }));
      await Promise.all(plugins.map((p) => p.supervisor.stop()));
      process.stdout.write(`stats ${JSON.stringify({ codes: counts, samples, restarts })}\n`);
    })().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  const pids = plugins.map((p) => p.supervisor.status().pid).filter((p) => p !== undefined);
  process.stdout.write(`ready ${server.addresses().join(' ')} sandboxes=${pids.join(',')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
