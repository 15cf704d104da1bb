/**
 * The `milterd` command line.
 * @module
 */
import { Command, Option } from 'commander';
import { MilterdError } from '../errors.ts';
import { applyOverrides, loadConfig, type ConfigOverrides } from '../config/load.ts';
import { dirname, join, resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { startDaemon } from '../daemon.ts';
import { check } from './check.ts';
import { devCommand } from './dev.ts';
import { pluginCommand } from './plugin.ts';
import { testCommand } from './test-message.ts';
import { PACKAGE_ROOT, VERSION } from '../paths.ts';

/** The configuration used without --config: defaults plus the example plugins. */
export const DEFAULT_CONFIG_FILE = join(PACKAGE_ROOT, 'config', 'default.yaml');

/** Builds the command tree (exported for tests). */
export function buildCli(): Command {
  const program = new Command('milterd')
    .description(
      'A milter (Sendmail/Postfix mail filter protocol v6) daemon that runs a chain of filter plugins.\n' +
        'Point your MTA at it, e.g. Postfix: smtpd_milters = inet:127.0.0.1:8890',
    )
    .version(VERSION, '-V, --version')
    .showHelpAfterError();

  program
    .command('start')
    .description('Run the daemon in the foreground until SIGTERM/SIGINT (a second signal closes open connections at once).')
    .option('-c, --config <file>', 'YAML (or JSON) configuration file; without it config/default.yaml (the example plugins) is used')
    .option(
      '-l, --listen <spec...>',
      'listen address(es) in libmilter syntax, overriding the configuration: unix:/path, inet:port@host, inet6:port@host',
    )
    .addOption(new Option('--log-level <level>', 'override log.level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .addHelpText(
      'after',
      '\nExamples:\n  milterd start\n  milterd start --config /etc/milterd/milterd.yaml\n  milterd start --listen unix:/run/milterd/milterd.sock inet:8890@127.0.0.1',
    )
    .action(async (opts: { config?: string; listen?: string[]; logLevel?: string }) => {
      const file = opts.config ?? DEFAULT_CONFIG_FILE;
      const overrides: ConfigOverrides = {
        ...(opts.listen === undefined ? {} : { listen: opts.listen }),
        ...(opts.logLevel === undefined ? {} : { logLevel: opts.logLevel }),
      };
      const config = applyOverrides(await loadConfig(file), overrides, file);
      const daemon = await startDaemon(config, { baseDir: dirname(resolve(file)), configFile: resolve(file), overrides });
      await daemon.stopped;
    });
  program
    .command('check')
    .description(
      'Validate the configuration, load every plugin of the chain in its sandbox (manifest, SDK range, bundle), and print the chain and the negotiation it implies. Exit 0 if all is well, 1 otherwise.',
    )
    .option('-c, --config <file>', 'configuration file (default: config/default.yaml)')
    .action(async (opts: { config?: string }) => {
      process.stdout.write(`${await check(opts.config ?? DEFAULT_CONFIG_FILE)}\n`);
    });
  program.addCommand(testCommand(DEFAULT_CONFIG_FILE));
  program.addCommand(pluginCommand());
  program.addCommand(devCommand());
  return program;
}

/** Runs the CLI; errors from the catalogue print as `code: message` and exit 1. */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  try {
    await buildCli().parseAsync([...argv]);
  } catch (err) {
    if (err instanceof MilterdError) {
      process.stderr.write(`milterd: ${err.code}: ${err.message}\n`);
    } else {
      process.stderr.write(`milterd: ${(err as Error)?.stack ?? String(err)}\n`);
    }
    process.exitCode = 1;
  }
}
