/**
 * `milterd check`: validates the configuration, loads every plugin of the chain in its sandbox
 * (resolve, manifest, SDK range, bundle, start), prints the chain and the negotiation it implies
 * with an MTA that offers everything (Postfix and Sendmail do), then stops the sandboxes.
 * @module
 */
import { dirname, resolve } from 'node:path';
import { Chain } from '../chain/chain.ts';
import { loadConfig } from '../config/load.ts';
import { BREAKER_DEFAULTS } from '../config/schema.ts';
import { silentLogger } from '../log.ts';
import { SMFI_CURR_ACTS, SMFI_CURR_PROT, SMFI_PROT_VERSION, SMFIF, SMFIM, SMFIP } from '../protocol/constants.ts';
import { contextFromConfig, loadChain, loadSdkRuntime } from '../plugins/load.ts';
import { negotiate } from '../session/negotiate.ts';

function flagNames(value: number, table: Readonly<Record<string, number>>): string[] {
  return Object.entries(table)
    .filter(([, bit]) => (value & bit) !== 0)
    .map(([name]) => name);
}

/** Runs the check; returns the report text. Throws (a MilterdError) when something is wrong. */
export async function check(file: string): Promise<string> {
  const config = await loadConfig(file);
  const baseDir = dirname(resolve(file));
  const sdk = await loadSdkRuntime();
  const plugins = await loadChain(config.chain, contextFromConfig(config, baseDir, { sdk, logger: silentLogger() }));
  try {
    const out: string[] = [];
    out.push(`configuration ${file}: valid`);
    out.push(`listen: ${config.listen.join(', ')}`);
    out.push(`SDK runtime: @milterd/sdk ${sdk.version}`);
    const disabled = config.chain.filter((e) => e.enabled === false).length;
    out.push(`chain (${plugins.length} plugin${plugins.length === 1 ? '' : 's'}${disabled ? `, ${disabled} disabled` : ''}):`);
    plugins.forEach((p, i) => {
      const m = p.manifest;
      const cfg = config.chain.filter((e) => e.enabled !== false)[i]!;
      out.push(`  ${i + 1}. ${m.name}@${m.version} (${m.dir})${cfg.shadow === true ? ' [shadow: verdicts and edits logged, not applied]' : ''}`);
      out.push(`     sdk ${m.sdk}; hooks: ${p.supervisor.description?.hooks.join(', ') || '-'}`);
      out.push(`     actions: ${m.actions.join(', ') || '-'}; capabilities: ${p.granted.join(', ') || '-'}${
        m.capabilities.length > p.granted.length ? ` (asked but not granted: ${m.capabilities.filter((c) => !p.granted.includes(c)).join(', ')})` : ''
      }`);
      const l = p.limits;
      out.push(`     limits: memory ${l.memoryMb} MB, cpu ${l.cpuMs} ms, wall ${l.wallMs} ms, message ${l.messageMs} ms; pool ${cfg.poolSize}; on error: ${cfg.onError ?? config.filters.onError}; breaker: ${cfg.breaker?.threshold ?? BREAKER_DEFAULTS.threshold} failures of a hook, off ${cfg.breaker?.cooldownMs ?? BREAKER_DEFAULTS.cooldownMs} ms`);
    });
    const chain = new Chain(plugins.map((p) => p.entry));
    const neg = negotiate({ version: SMFI_PROT_VERSION, actions: SMFI_CURR_ACTS, protocol: SMFI_CURR_PROT }, chain.needs);
    out.push(`negotiation with an MTA offering everything (v${SMFI_PROT_VERSION}, actions 0x1ff, protocol 0x1fffff):`);
    out.push(`  actions 0x${neg.actions.toString(16)}: ${flagNames(neg.actions, SMFIF).join(' ') || '-'}`);
    out.push(`  protocol 0x${neg.protocol.toString(16)}: ${flagNames(neg.protocol, SMFIP).join(' ') || '-'}`);
    if (neg.reply.kind === 'optneg' && neg.reply.symlists) {
      const stageName = Object.fromEntries(Object.entries(SMFIM).map(([k, v]) => [v, k]));
      for (const l of neg.reply.symlists) out.push(`  macros at ${stageName[l.stage]}: ${l.macros.join(' ')}`);
    }
    return out.join('\n');
  } finally {
    await Promise.all(plugins.map((p) => p.supervisor.stop()));
  }
}
