/**
 * `milterd plugin add | list | remove | new`: managing the plugins of a configuration's chain,
 * and starting a new plugin package. The work is done in src/plugins/install.ts and
 * src/plugins/scaffold.ts; this file parses flags and prints.
 * @module
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { join, relative, resolve } from 'node:path';
import type { Capability } from '../../sdk/src/protocol.ts';
import type { FailurePolicy } from '../chain/filter.ts';
import { addPlugin, FAILURE_POLICIES, listPlugins, parseCapabilities, removePlugin, type ListResult } from '../plugins/install.ts';
import { loadSdkRuntime } from '../plugins/load.ts';
import { scaffoldPlugin, ScaffoldError } from '../plugins/scaffold.ts';
import { PACKAGE_ROOT, VERSION } from '../paths.ts';

/** The configuration used without --config, as for `milterd start` and `milterd check`. */
const DEFAULT_CONFIG_FILE = join(PACKAGE_ROOT, 'config', 'default.yaml');

const CONFIG_HELP = 'configuration file to read and edit (default: config/default.yaml, as for milterd start)';

function positiveInt(value: string): number {
  if (!/^[1-9]\d*$/.test(value)) throw new InvalidArgumentError('expected a position: 1 for the first entry, 2 for the second...');
  return Number(value);
}

function grants(value: string, previous: Capability[] = []): Capability[] {
  try {
    return [...previous, ...parseCapabilities(value)];
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function jsonObject(value: string): Record<string, unknown> {
  let data: unknown;
  try {
    data = JSON.parse(value);
  } catch (err) {
    throw new InvalidArgumentError(`not valid JSON: ${(err as Error).message}`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw new InvalidArgumentError('expected a JSON object, e.g. \'{"reject":["^nobody@"]}\'');
  return data as Record<string, unknown>;
}

const progress = (line: string) => process.stderr.write(`milterd: ${line}\n`);

/** The chain as a table, then the installed packages no entry uses. */
export function formatList(r: ListResult, cwd = process.cwd()): string {
  const out: string[] = [];
  const show = (p: string) => {
    const rel = relative(cwd, p);
    return rel !== '' && !rel.startsWith('..') ? rel : p;
  };
  out.push(`chain of ${show(r.configFile)} (${r.entries.length} entr${r.entries.length === 1 ? 'y' : 'ies'})${r.pluginDir === undefined ? '' : `, plugin folder ${show(r.pluginDir)}`}:`);
  if (r.entries.length === 0) out.push('  (empty: add a plugin with milterd plugin add <package|folder|tarball>)');
  else {
    const rows = r.entries.map((e) => {
      const plugin = e.name === undefined ? e.spec : `${e.name}@${e.version ?? '?'}`;
      const notGranted = (e.asks ?? []).filter((c) => !e.capabilities.includes(c));
      const caps = `${e.capabilities.join(',') || '-'}${notGranted.length > 0 ? ` (asks also: ${notGranted.join(',')})` : ''}`;
      let source: string;
      switch (e.source) {
        case 'folder':
          source = `folder ${e.spec}`;
          break;
        case 'pluginDir':
          source = `package ${e.spec} in the plugin folder`;
          break;
        case 'node_modules':
          source = `package ${e.spec} (${e.dir === undefined ? '' : show(e.dir)})`;
          break;
        default:
          source = `NOT FOUND: ${e.problem ?? e.spec}`;
      }
      return [String(e.position), plugin, e.enabled ? 'yes' : 'no', caps, e.onError ?? 'default', source];
    });
    const head = ['#', 'plugin', 'enabled', 'capabilities', 'on error', 'source'];
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const line = (cells: string[]) => `  ${cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')}`.trimEnd();
    out.push(line(head));
    for (const row of rows) out.push(line(row));
  }
  if (r.unused.length > 0) {
    out.push(`installed in the plugin folder but not in the chain (milterd plugin remove <name> uninstalls):`);
    for (const p of r.unused) out.push(`  ${p.name}@${p.version ?? '?'} (${p.spec})`);
  }
  return out.join('\n');
}

/** The `plugin` command and its subcommands. */
export function pluginCommand(): Command {
  const plugin = new Command('plugin')
    .description('Install, list and remove the plugins of the chain, or start a new plugin package.')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  milterd plugin add @acme/milterd-spf --grant dns,log --after @milterd/plugin-recipient-policy -c /etc/milterd/milterd.yaml\n' +
        '  milterd plugin add ./my-plugin-1.0.0.tgz --grant log --position 1\n' +
        '  milterd plugin list -c /etc/milterd/milterd.yaml\n' +
        '  milterd plugin remove @acme/milterd-spf -c /etc/milterd/milterd.yaml\n' +
        '  milterd plugin new my-filter\n' +
        '\nSee docs/plugins.md.',
    );

  plugin
    .command('add')
    .summary('install a plugin (npm package, tarball or folder), check it, and add it to the chain')
    .description(
      'Install a plugin and add it to the chain. <spec> is an npm package (name, name@range, @scope/name), a package tarball (.tgz, from npm pack) ' +
        'or a folder. Packages and tarballs are installed with npm into the plugin folder (pluginDir; default: "plugins" next to the configuration file, ' +
        'recorded in it) without running their install scripts; a folder is referenced by its path. Before the configuration is changed, the plugin is ' +
        'checked as milterd start would load it: manifest, SDK range, bundle, the capabilities it asks for against --grant, and a start in its sandbox. ' +
        'If any check fails, the install is undone and the configuration is left as it was. The configuration keeps its comments and layout.',
    )
    .argument('<spec>', 'npm package spec, tarball path or folder path')
    .option('-c, --config <file>', CONFIG_HELP)
    .addOption(new Option('--position <n>', 'put the plugin at this position of the chain (1 = first; default: last)').argParser(positiveInt).conflicts(['before', 'after']))
    .addOption(new Option('--before <name>', 'put the plugin just before this one (package name or plugin spec as written)').conflicts(['position', 'after']))
    .addOption(new Option('--after <name>', 'put the plugin just after this one').conflicts(['position', 'before']))
    .option('--grant <capabilities>', 'host services granted to the plugin, comma-separated: log, kv, dns, clock (repeatable); every one its manifest asks for is required', grants)
    .addOption(new Option('--on-error <policy>', "the entry's failure policy (default: filters.onError)").choices(FAILURE_POLICIES))
    .option('--options <json>', "the entry's options (ctx.options) as a JSON object, checked against the plugin's optionsSchema", jsonObject)
    .option('--disabled', 'add the entry with enabled: false (checked, but not started)')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  milterd plugin add milterd-greylist@^1 --grant kv,clock,log --before @milterd/plugin-header-stamp\n' +
        '  milterd plugin add ./dist/acme-filter-1.2.0.tgz --grant log --on-error continue\n' +
        "  milterd plugin add ../plugins/recipient-policy --grant log --position 1 --options '{\"reject\":[\"^nobody@\"]}'",
    )
    .action(
      async (
        spec: string,
        o: { config?: string; position?: number; before?: string; after?: string; grant?: Capability[]; onError?: FailurePolicy; options?: Record<string, unknown>; disabled?: boolean },
      ) => {
        const r = await addPlugin({
          configFile: o.config ?? DEFAULT_CONFIG_FILE,
          spec,
          ...(o.position === undefined ? {} : { position: o.position }),
          ...(o.before === undefined ? {} : { before: o.before }),
          ...(o.after === undefined ? {} : { after: o.after }),
          grant: o.grant ?? [],
          ...(o.onError === undefined ? {} : { onError: o.onError }),
          ...(o.options === undefined ? {} : { options: o.options }),
          disabled: o.disabled === true,
          progress,
        });
        for (const n of r.notes) progress(`note: ${n}`);
        const out = [`added ${r.name}@${r.version} at position ${r.position} as "${r.spec}"${r.installedIn === undefined ? '' : ` (installed in ${r.installedIn})`}`];
        if (r.recordedPluginDir) out.push(`the configuration now names its plugin folder: pluginDir: plugins`);
        out.push(formatList(r.chain));
        out.push('Restart milterd (or let it reload) for the change to take effect.');
        process.stdout.write(`${out.join('\n')}\n`);
      },
    );

  plugin
    .command('list')
    .alias('ls')
    .summary('show the chain and the installed plugins')
    .description(
      'Show the chain in order (position, name@version, enabled, granted capabilities, failure policy, where the plugin comes from), ' +
        'then the packages installed in the plugin folder that no chain entry uses.',
    )
    .option('-c, --config <file>', CONFIG_HELP)
    .option('--json', 'print JSON instead of a table')
    .action(async (o: { config?: string; json?: boolean }) => {
      const r = await listPlugins(o.config ?? DEFAULT_CONFIG_FILE);
      process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatList(r)}\n`);
    });

  plugin
    .command('remove')
    .alias('rm')
    .summary('remove a plugin from the chain and uninstall its package')
    .description(
      'Remove a plugin from the chain (by package name, or by the plugin spec as written in the configuration), then uninstall its package from ' +
        'the plugin folder if it was installed there and no other entry uses it. A package installed but not in the chain is just uninstalled.',
    )
    .argument('<name>', 'package name or plugin spec')
    .option('-c, --config <file>', CONFIG_HELP)
    .option('--position <n>', 'which entry, when the plugin is in the chain more than once', positiveInt)
    .action(async (name: string, o: { config?: string; position?: number }) => {
      const r = await removePlugin({
        configFile: o.config ?? DEFAULT_CONFIG_FILE,
        name,
        ...(o.position === undefined ? {} : { position: o.position }),
        progress,
      });
      const out: string[] = [];
      if (r.removed !== undefined) out.push(`removed ${r.removed.name ?? r.removed.spec} from position ${r.removed.position}`);
      if (r.uninstalled !== undefined) out.push(`uninstalled ${r.uninstalled} from ${r.chain.pluginDir}`);
      out.push(formatList(r.chain));
      process.stdout.write(`${out.join('\n')}\n`);
    });

  plugin
    .command('new')
    .summary('create a new plugin package (TypeScript, with a passing test)')
    .description(
      'Create a TypeScript plugin package: package.json with its milterd manifest, src/index.ts (adds a header, rejects recipients matching ' +
        'patterns from its options), a test with the SDK testing kit that passes as generated, tsconfig.json and a README.',
    )
    .argument('<name>', 'npm package name of the plugin, e.g. milterd-acme or @acme/milterd-filter')
    .option('--dir <dir>', 'folder to create (default: ./<name without its scope>); must not exist or be empty')
    .addHelpText('after', '\nExample:\n  milterd plugin new @acme/milterd-filter --dir acme-filter && cd acme-filter && npm install && npm test')
    .action(async (name: string, o: { dir?: string }, cmd: Command) => {
      const sdk = await loadSdkRuntime();
      try {
        const r = await scaffoldPlugin({
          name,
          ...(o.dir === undefined ? {} : { dir: resolve(o.dir) }),
          sdkVersion: sdk.version,
          milterdVersion: VERSION,
        });
        const rel = relative(process.cwd(), r.dir) || '.';
        process.stdout.write(
          `created ${name} in ${r.dir}:\n${r.files.map((f) => `  ${f}`).join('\n')}\n` +
            `next:\n  cd ${rel}\n  npm install\n  npm test\n` +
            `then add it to milterd: milterd plugin add ${rel.startsWith('.') || rel.startsWith('/') ? rel : `./${rel}`} --grant log\n`,
        );
      } catch (err) {
        if (err instanceof ScaffoldError) cmd.error(`error: ${err.message}`);
        throw err;
      }
    });

  return plugin;
}
