/** docs/configuration.md must be what the schema generates (run `npm run docs:config`). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { renderConfigDocs } from '../../../src/config/docs.ts';
import { defaultConfig } from '../../../src/config/load.ts';

test('docs/configuration.md is generated from the current schema', () => {
  const onDisk = readFileSync(new URL('../../../docs/configuration.md', import.meta.url), 'utf8');
  assert.equal(onDisk, renderConfigDocs(), 'docs/configuration.md is stale: run npm run docs:config');
});

test('every leaf key of the defaults has a row', () => {
  const doc = renderConfigDocs();
  const walk = (o: object, prefix: string): void => {
    for (const [k, v] of Object.entries(o)) {
      const path = prefix === '' ? k : `${prefix}.${k}`;
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) walk(v, path);
      else assert.ok(doc.includes(`| \`${path}\` |`), `no row for ${path}`);
    }
  };
  walk(defaultConfig(), '');
});
