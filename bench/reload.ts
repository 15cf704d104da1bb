/**
 * Hot-reload benchmark (part of `npm run bench`): a daemon with one small plugin under
 * continuous load from 4 MTA connections; the plugin's source is saved 20 times with a new
 * version each time. Reports the time from saving the file to the first message served by the
 * new version (median, p90, max), the messages sent meanwhile and how many failed (must be 0),
 * and appends the figures to docs/benchmarks.md.
 */
import { appendFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config/load.ts';
import { startDaemon } from '../src/daemon.ts';
import { MtaClient } from '../test/support/mta-client.ts';

const DOC = fileURLToPath(new URL('../docs/benchmarks.md', import.meta.url));
const RELOADS = 20;

const dir = await mkdtemp(join(tmpdir(), 'milterd-bench-reload-'));
const plugin = join(dir, 'versioned');
await mkdir(join(plugin, 'src'), { recursive: true });
await writeFile(join(plugin, 'package.json'), JSON.stringify({ name: 'versioned', version: '1.0.0', type: 'module', milterd: { sdk: '^1.0.0', actions: ['addHeader'] } }));
const source = join(plugin, 'src/index.ts');
const version = (v: number): Promise<void> =>
  writeFile(source, `import { definePlugin } from '@milterd/sdk';\nexport default definePlugin({ eom(ctx, m) { m.addHeader('X-Version', '${v}'); } });\n`);
await version(0);
const config = join(dir, 'milterd.yaml');
await writeFile(config, 'listen: ["inet:0@127.0.0.1"]\nlog: { level: warn }\nreload: { watch: true, debounceMs: 20 }\nchain:\n  - plugin: ./versioned\n');
const daemon = await startDaemon(await loadConfig(config), { baseDir: dir, configFile: config, signals: false });
await daemon.reloader!.ready();
const address = daemon.server.addresses()[0]!;

async function client(): Promise<MtaClient> {
  const c = await MtaClient.connect(address, { timeoutMs: 10_000 });
  await c.negotiate();
  await c.connect();
  await c.helo('bench');
  return c;
}
let n = 0;
async function send(c: MtaClient): Promise<string> {
  const r = await c.runMessage({ from: `<s${n++}@example.org>`, rcpts: ['<r@example.net>'], headers: [['Subject', ' x']], body: 'b\r\n', abortAfter: true });
  const h = r.eom?.modifications.find((m) => m.kind === 'addheader');
  return r.eom?.verdict.kind === 'accept' && h?.kind === 'addheader' ? h.value.trim() : `failed:${JSON.stringify(r.verdict)}`;
}

let stop = false;
let sent = 0;
const failures: string[] = [];
const load = Array.from({ length: 4 }, async () => {
  const c = await client();
  while (!stop) {
    const v = await send(c);
    sent++;
    if (v.startsWith('failed')) failures.push(v);
  }
  await c.quit();
});
const probe = await client();
const times: number[] = [];
for (let v = 1; v <= RELOADS; v++) {
  const t0 = performance.now();
  await version(v);
  let got = '';
  while (got !== String(v)) {
    got = await send(probe);
    if (performance.now() - t0 > 10_000) throw new Error(`version ${v} not served after 10 s`);
  }
  times.push(performance.now() - t0);
  await new Promise((r) => setTimeout(r, 100));
}
stop = true;
await Promise.all(load);
await probe.quit();
await daemon.stop(2000);
await rm(dir, { recursive: true, force: true });

times.sort((a, b) => a - b);
const q = (p: number): number => times[Math.min(times.length - 1, Math.floor(p * times.length))]!;
const line = `save → new version serving over ${RELOADS} reloads: median ${q(0.5).toFixed(0)} ms, p90 ${q(0.9).toFixed(0)} ms, max ${times.at(-1)!.toFixed(0)} ms; ${sent} messages under load, ${failures.length} failed`;
console.log(line);
await appendFile(
  DOC,
  `\n## Hot reload\n\n- ${new Date().toISOString()}: ${line} (goal: median < 250 ms, 0 failed). One small plugin, 4 connections sending continuously, a probe connection detecting the new version; a warm spare sandbox process is kept while reload is on.\n`,
);
if (failures.length > 0) {
  console.error(`FAILED messages during reloads: ${failures.slice(0, 5).join(', ')}`);
  process.exitCode = 1;
}
