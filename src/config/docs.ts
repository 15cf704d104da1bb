/**
 * Renders docs/configuration.md from the schema, so the page cannot drift from the code
 * (`npm run docs:config` writes it; a test compares).
 * @module
 */
import { ConfigSchema } from './schema.ts';
import { defaultConfig } from './load.ts';
import { stringify } from 'yaml';

interface Node {
  type?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  pattern?: string;
  minItems?: number;
  properties?: Record<string, Node>;
  items?: Node;
  required?: string[];
}

function typeOf(n: Node): string {
  if (n.enum) return n.enum.map((v) => `\`${String(v)}\``).join(' \\| ');
  if (n.type === 'array') return `list of ${typeOf(n.items ?? {})}`;
  return n.type ?? 'any';
}

function constraints(n: Node): string {
  const c: string[] = [];
  if (n.minimum !== undefined) c.push(`≥ ${n.minimum}`);
  if (n.maximum !== undefined) c.push(`≤ ${n.maximum}`);
  if (n.pattern !== undefined) c.push(`pattern \`${n.pattern}\``);
  if (n.minItems !== undefined) c.push(`at least ${n.minItems}`);
  return c.join(', ');
}

function rows(n: Node, prefix: string, out: string[]): void {
  for (const [key, child] of Object.entries(n.properties ?? {})) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    if (child.type === 'object' && child.properties) {
      rows(child, path, out);
      continue;
    }
    const def = child.default === undefined ? '—' : `\`${JSON.stringify(child.default)}\``;
    out.push(`| \`${path}\` | ${typeOf(child)} | ${def} | ${constraints(child) || '—'} | ${child.description ?? ''} |`);
    // A list of objects (the chain): its entries' keys too, as `chain[].key`.
    if (child.type === 'array' && child.items?.type === 'object' && child.items.properties) rows(child.items, `${path}[]`, out);
  }
}

/** The whole page. */
export function renderConfigDocs(): string {
  const out: string[] = [];
  out.push('# Configuration');
  out.push('');
  out.push('<!-- Generated from src/config/schema.ts by `npm run docs:config`; test/unit/config/docs.test.ts checks it. -->');
  out.push('');
  out.push('milterd reads one YAML file (JSON is valid YAML, so JSON files work too) given with');
  out.push('`milterd start --config FILE`. Without a file every key has its default. The file is validated');
  out.push('once at start; each error names the file, the key path and what was expected, e.g.');
  out.push('`/etc/milterd.yaml: limits.maxFrameBytes: expected a value that must be >= 66560`.');
  out.push('Unknown keys are errors (a typo must not silently fall back to a default). Units are in the key');
  out.push('names: `…Ms` milliseconds, `…Bytes` bytes.');
  out.push('');
  out.push('| key | type | default | constraints | meaning |');
  out.push('|---|---|---|---|---|');
  rows(ConfigSchema as unknown as Node, '', out);
  out.push('');
  out.push('## The defaults as a file');
  out.push('');
  out.push('```yaml');
  out.push(stringify(defaultConfig()).trimEnd());
  out.push('```');
  out.push('');
  return out.join('\n');
}
