/**
 * `milterd dev <plugin folder>`: the plugin author's loop. Runs the daemon with that plugin as
 * the whole chain (every capability it asks for granted), watches its files and reloads on every
 * save, and prints human-friendly logs: each message's verdict and edits, the plugin's own log
 * lines, reloads and errors with file and line.
 * @module
 */
import { Command } from 'commander';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { loadConfig } from '../config/load.ts';
import { startDaemon } from '../daemon.ts';
import { readManifest } from '../plugins/manifest.ts';

/** The `dev` command. */
export function devCommand(): Command {
  return new Command('dev')
    .description(
      'Run milterd with one plugin (a folder) as the chain, reload it on every save, and print readable logs with each message\'s verdict and edits. For plugin authors.',
    )
    .argument('<folder>', 'the plugin package folder')
    .option('-l, --listen <spec>', 'listen address (libmilter syntax)', 'inet:8890@127.0.0.1')
    .option('--options <json>', 'plugin options as JSON (ctx.options)', '{}')
    .option('--shadow', 'run the plugin in shadow mode (log what it would do, apply nothing)')
    .addHelpText(
      'after',
      '\nThen point a test MTA at it (e.g. Postfix smtpd_milters = inet:127.0.0.1:8890), or run\n`milterd test message.eml --config <the printed config>` in another terminal.',
    )
    .action(async (folder: string, o: { listen: string; options: string; shadow?: boolean }) => {
      const dir = resolve(folder);
      const manifest = await readManifest(dir);
      const work = await mkdtemp(join(tmpdir(), 'milterd-dev-'));
      const file = join(work, 'milterd.yaml');
      await writeFile(
        file,
        `# milterd dev ${dir}\n${stringify({
          listen: [o.listen],
          log: { level: 'debug' },
          reload: { watch: true, debounceMs: 30 },
          chain: [
            {
              plugin: dir,
              capabilities: manifest.capabilities,
              options: JSON.parse(o.options) as Record<string, unknown>,
              ...(o.shadow ? { shadow: true } : {}),
            },
          ],
        })}`,
      );
      const config = await loadConfig(file);
      const daemon = await startDaemon(config, { baseDir: work, configFile: file, pretty: true });
      process.stdout.write(
        `milterd dev: ${manifest.name}@${manifest.version} on ${daemon.server.addresses().join(', ')}; save a file in ${dir} to reload (config: ${file}); Ctrl-C stops.\n`,
      );
      await daemon.stopped;
      await rm(work, { recursive: true, force: true });
    });
}
