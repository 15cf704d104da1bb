/**
 * Loading the configuration: YAML (JSON is valid YAML), validated once against the schema,
 * defaults filled in, then frozen. Every error names the file, the key path and what was
 * expected, so an operator can fix it without reading code.
 * @module
 */
import { readFile } from 'node:fs/promises';
import { Ajv, type ErrorObject } from 'ajv';
import { parseDocument } from 'yaml';
import { MilterdError } from '../errors.ts';
import { parseListenSpec } from '../server/listen.ts';
import { ConfigSchema, type Config } from './schema.ts';

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
const validate = ajv.compile<Config>(ConfigSchema);

/** The configuration used when no file is given: every default. */
export function defaultConfig(): Config {
  return fromObject({}, '<defaults>');
}

/**
 * Settings given on the command line (`milterd start --listen/--log-level`). They win over the
 * file at start and at every reload, so a reload does not mistake them for edits of the file.
 */
export interface ConfigOverrides {
  readonly listen?: readonly string[];
  readonly logLevel?: string;
}

/** The configuration with `overrides` applied (validated again: an override can be invalid too). */
export function applyOverrides(config: Config, overrides: ConfigOverrides | undefined, file: string): Config {
  if (overrides === undefined || (overrides.listen === undefined && overrides.logLevel === undefined)) return config;
  const raw = structuredClone(config) as Record<string, unknown> & { log: Record<string, unknown> };
  if (overrides.listen !== undefined) raw.listen = [...overrides.listen];
  if (overrides.logLevel !== undefined) raw.log.level = overrides.logLevel;
  return fromObject(raw, file);
}

/** Reads, parses and validates a configuration file. */
export async function loadConfig(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new MilterdError('MILTERD_CONFIG_READ', `${file}: cannot read: ${(err as Error).message}`, { cause: err });
  }
  return parseConfig(text, file);
}

/** Parses and validates configuration text; `file` names it in errors. */
export function parseConfig(text: string, file: string): Config {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    throw new MilterdError('MILTERD_CONFIG_READ', `${file}: ${e.message}`);
  }
  const data: unknown = doc.toJS() ?? {};
  return fromObject(data, file);
}

/** Validates a plain object (defaults are filled in place on a copy). */
export function fromObject(data: unknown, file: string): Config {
  const copy: unknown = structuredClone(data);
  if (copy === null || typeof copy !== 'object' || Array.isArray(copy)) {
    throw new MilterdError('MILTERD_CONFIG_INVALID', `${file}: the configuration must be a mapping of keys to values`);
  }
  const lines: string[] = [];
  const valid = validate(copy);
  if (!valid) {
    for (const e of validate.errors ?? []) {
      let why = explain(e);
      // YAML reads 0660 as the decimal number 660: say how to write it.
      if (e.instancePath === '/socketMode' && e.keyword === 'type') why += ' (quote it: socketMode: "0660")';
      lines.push(`${file}: ${keyPath(e)}: ${why}`);
    }
  } else {
    // Checks JSON Schema cannot express, reported the same way.
    copy.listen.forEach((spec, i) => {
      try {
        parseListenSpec(spec);
      } catch (err) {
        lines.push(`${file}: listen[${i}]: ${(err as Error).message}`);
      }
    });
  }
  if (!valid || lines.length > 0) {
    throw new MilterdError('MILTERD_CONFIG_INVALID', lines.join('\n'), { details: { errors: lines } });
  }
  return deepFreeze(copy);
}

function keyPath(e: ErrorObject): string {
  const parts = e.instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (e.keyword === 'additionalProperties') parts.push(String((e.params as { additionalProperty: string }).additionalProperty));
  if (e.keyword === 'required') parts.push(String((e.params as { missingProperty: string }).missingProperty));
  return parts.length === 0 ? '(top level)' : parts.map((p) => (/^\d+$/.test(p) ? `[${p}]` : p)).join('.').replace(/\.\[/g, '[');
}

function explain(e: ErrorObject): string {
  switch (e.keyword) {
    case 'additionalProperties':
      return 'unknown key';
    case 'required':
      return 'missing';
    case 'enum':
      return `expected one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'const':
      return `expected ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}`;
    default:
      return `expected a value that ${e.message ?? 'matches the schema'}`;
  }
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
