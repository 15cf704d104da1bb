/** The error catalogue and docs/errors.md must list the same codes with the same meaning. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERRORS, MilterdError, isErrorCode } from '../../src/errors.ts';

const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');

test('every catalogue code is documented under its area with its summary', () => {
  for (const [code, def] of Object.entries(ERRORS)) {
    const section = doc.split(/^## /m).find((s) => s.startsWith(`${def.area}\n`));
    assert.ok(section, `docs/errors.md has no section for area ${def.area}`);
    const row = section.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
    assert.ok(row, `${code} is missing from the ${def.area} section of docs/errors.md`);
    assert.ok(row.includes(def.summary), `${code}: docs/errors.md summary differs from src/errors.ts`);
  }
});

test('docs/errors.md documents no code the catalogue lacks', () => {
  const documented = [...doc.matchAll(/^\| `(MILTERD_[A-Z_]+)` \|/gm)].map((m) => m[1]);
  assert.deepEqual(documented.filter((c) => !(c! in ERRORS)), []);
  assert.equal(documented.length, Object.keys(ERRORS).length);
});

test('codes are grouped by area and carried by MilterdError', () => {
  for (const [code, def] of Object.entries(ERRORS)) {
    assert.match(code, /^MILTERD_[A-Z]+_[A-Z_]+$/);
    const e = new MilterdError(code as keyof typeof ERRORS, 'x');
    assert.equal(e.area, def.area);
    assert.ok(isErrorCode(e, code as keyof typeof ERRORS));
  }
});
