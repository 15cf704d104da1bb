/**
 * Prometheus metrics (prom-client), served over HTTP when `metrics.listen` is set. When it is
 * not, every recording function returns at its first line: nothing is counted, nothing costs.
 * @module
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

interface Instruments {
  readonly registry: Registry;
  readonly messages: Counter<'verdict'>;
  readonly failures: Counter<'filter' | 'code'>;
  readonly shadow: Counter<'filter' | 'verdict'>;
  readonly restarts: Counter<'plugin' | 'code'>;
  readonly breaker: Counter<'plugin'>;
  readonly reloads: Counter<'result'>;
  readonly storageUp: Gauge<'plugin'>;
  readonly eomSeconds: Histogram;
}

let on: Instruments | undefined;

/** Turns metrics on (once, at start) and returns the registry. `connections` is read at scrape time. */
export function enableMetrics(connections: () => number): Registry {
  if (on !== undefined) return on.registry;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'milterd_' });
  const r = [registry];
  on = {
    registry,
    messages: new Counter({ name: 'milterd_messages_total', help: 'Messages by final verdict.', labelNames: ['verdict'], registers: r }),
    failures: new Counter({
      name: 'milterd_filter_failures_total',
      help: 'Filter and plugin failures (throw, timeout, limits, crashes) by filter and error code.',
      labelNames: ['filter', 'code'],
      registers: r,
    }),
    shadow: new Counter({
      name: 'milterd_shadow_verdicts_total',
      help: 'Verdicts of plugins in shadow mode (logged, not applied).',
      labelNames: ['filter', 'verdict'],
      registers: r,
    }),
    restarts: new Counter({ name: 'milterd_sandbox_restarts_total', help: 'Sandbox process restarts by plugin and cause.', labelNames: ['plugin', 'code'], registers: r }),
    breaker: new Counter({ name: 'milterd_plugin_switched_off_total', help: 'Times a plugin\'s circuit breaker opened.', labelNames: ['plugin'], registers: r }),
    reloads: new Counter({ name: 'milterd_reloads_total', help: 'Chain reloads by result.', labelNames: ['result'], registers: r }),
    storageUp: new Gauge({
      name: 'milterd_storage_up',
      help: 'Whether a plugin\'s sandbox reaches its kv storage (Redis): 1 yes, 0 no. Absent until the plugin\'s first kv call.',
      labelNames: ['plugin'],
      registers: r,
    }),
    eomSeconds: new Histogram({
      name: 'milterd_eom_seconds',
      help: 'Time the chain took at end of message.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
  };
  new Gauge({ name: 'milterd_connections', help: 'Open MTA connections.', registers: r, collect() { this.set(connections()); } });
  return registry;
}

/** Whether metrics are being recorded. */
export function metricsEnabled(): boolean {
  return on !== undefined;
}

export function countMessage(verdict: string, eomSeconds?: number): void {
  if (on === undefined) return;
  on.messages.inc({ verdict });
  if (eomSeconds !== undefined) on.eomSeconds.observe(eomSeconds);
}
export function countFailure(filter: string, code: string): void {
  on?.failures.inc({ filter, code });
}
export function countShadow(filter: string, verdict: string): void {
  on?.shadow.inc({ filter, verdict });
}
export function countRestart(plugin: string, code: string): void {
  on?.restarts.inc({ plugin, code });
}
export function countBreakerOpen(plugin: string): void {
  on?.breaker.inc({ plugin });
}
export function setStorageUp(plugin: string, up: boolean): void {
  on?.storageUp.set({ plugin }, up ? 1 : 0);
}
export function countReload(ok: boolean): void {
  on?.reloads.inc({ result: ok ? 'ok' : 'failed' });
}

/** Serves GET /metrics on `host:port`. */
export async function serveMetrics(listen: string, registry: Registry): Promise<Server> {
  const at = listen.lastIndexOf(':');
  const host = listen.slice(0, at).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(at + 1));
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('not found\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
