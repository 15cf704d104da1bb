/**
 * Shared by the plugin loading tests: fixture paths, throw-away plugin packages written to a
 * temporary folder, and an assertion on MilterdError codes and messages.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MilterdError, type ErrorCode } from '../../../src/errors.ts';

/** test/fixtures/plugins */
export const FIXTURES = fileURLToPath(new URL('../../fixtures/plugins/', import.meta.url)).replace(/\/$/, '');

/** Absolute path of a fixture plugin. */
export function fixture(name: string): string {
  return join(FIXTURES, name);
}

/** A temporary folder, removed by `cleanup()`. */
export class Scratch {
  dir = '';

  async setup(): Promise<void> {
    this.dir = await mkdtemp(join(tmpdir(), 'milterd-plugins-'));
  }

  async cleanup(): Promise<void> {
    if (this.dir !== '') await rm(this.dir, { recursive: true, force: true });
  }

  /** Writes `files` (path → text, or an object written as JSON) under `sub`; returns its path. */
  async write(sub: string, files: Record<string, string | object>): Promise<string> {
    const root = join(this.dir, sub);
    for (const [path, content] of Object.entries(files)) {
      const file = join(root, path);
      await mkdir(dirname(file), { recursive: true });
      await writeFile(file, typeof content === 'string' ? content : `${JSON.stringify(content, null, 2)}\n`);
    }
    await mkdir(root, { recursive: true });
    return root;
  }
}

/** Asserts that `p` rejects with a MilterdError of `code` whose message matches every pattern. */
export async function rejectsWith(p: Promise<unknown>, code: ErrorCode, patterns: readonly (string | RegExp)[]): Promise<MilterdError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof MilterdError, `expected a MilterdError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  for (const pat of patterns) {
    if (typeof pat === 'string') assert.ok(caught.message.includes(pat), `message lacks ${JSON.stringify(pat)}:\n${caught.message}`);
    else assert.match(caught.message, pat);
  }
  return caught;
}
