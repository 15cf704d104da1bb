/**
 * The server under test, as a child process of bench/run.ts: a MilterServer with a named
 * scenario's chain. Prints `ready <address>` once listening; stops on SIGTERM or SIGINT.
 *
 *   node bench/server.ts --scenario empty|inspect [--listen inet:0@127.0.0.1]
 *
 * Scenarios: `empty` (no filters: the cost of the protocol and session machinery alone) and
 * `inspect` (the in-process inspect filter, bench/filters/inspect.ts).
 * @module
 */
import { parseArgs } from 'node:util';
import type { ChainEntry } from '../src/chain/filter.ts';
import { MilterServer } from '../src/server/server.ts';
import { inspectFilter } from './filters/inspect.ts';

/** The chains the benchmark knows, by scenario name. */
export const SCENARIOS: Readonly<Record<string, readonly ChainEntry[]>> = {
  empty: [],
  inspect: [{ filter: inspectFilter }],
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { scenario: { type: 'string', default: 'empty' }, listen: { type: 'string', default: 'inet:0@127.0.0.1' } },
  });
  const chain = SCENARIOS[values.scenario];
  if (chain === undefined) throw new Error(`unknown scenario ${values.scenario}; known: ${Object.keys(SCENARIOS).join(', ')}`);
  const server = new MilterServer({ listen: values.listen, chain });
  await server.start();
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    server.stop({ deadlineMs: 2000 }).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.write(`ready ${server.addresses().join(' ')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
