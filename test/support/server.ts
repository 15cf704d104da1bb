/**
 * Test helpers around MilterServer: start one with in-process filters on a free loopback port,
 * capture its structured log lines, connect simulated MTAs to it.
 */
import { pino } from 'pino';
import { MilterServer, type MilterServerOptions } from '../../src/server/server.ts';
import type { ChainEntry } from '../../src/chain/filter.ts';
import { MtaClient, type MtaClientOptions } from './mta-client.ts';

/** A log line as pino wrote it. */
export type LogLine = Record<string, unknown> & { level: number; msg: string };

/** A started server plus what tests need around it. */
export interface TestServer {
  readonly server: MilterServer;
  readonly address: string;
  readonly logs: LogLine[];
  connect(options?: MtaClientOptions): Promise<MtaClient>;
  /** Log lines with this stable error code. */
  withCode(code: string): LogLine[];
  stop(): Promise<void>;
}

/** Starts a server on inet:0@127.0.0.1 (or the given listen spec) with `chain`. */
export async function startServer(
  chain: readonly ChainEntry[],
  options: Partial<MilterServerOptions> = {},
): Promise<TestServer> {
  const logs: LogLine[] = [];
  const logger = pino(
    { level: 'debug' },
    {
      write(line: string) {
        logs.push(JSON.parse(line) as LogLine);
      },
    },
  );
  const server = new MilterServer({ listen: 'inet:0@127.0.0.1', logger, ...options, chain });
  await server.start();
  const address = server.addresses()[0]!;
  const clients: MtaClient[] = [];
  return {
    server,
    address,
    logs,
    async connect(o?: MtaClientOptions) {
      const c = await MtaClient.connect(address, { timeoutMs: 5000, ...o });
      clients.push(c);
      return c;
    },
    withCode(code: string) {
      return logs.filter((l) => l.code === code);
    },
    async stop() {
      for (const c of clients) c.destroy();
      await server.stop({ deadlineMs: 2000 });
    },
  };
}
