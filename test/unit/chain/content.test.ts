/**
 * BodyStore: in memory up to a bound, then spilled to a private temporary file; the bytes come
 * back exactly, in pieces of at most 65535 bytes when spilled, and dispose() removes the file.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BodyStore } from '../../../src/chain/content.ts';

let base = '';
let otherBase = '';

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'milterd-content-test-'));
  otherBase = await mkdtemp(join(tmpdir(), 'milterd-content-test-other-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
  await rm(otherBase, { recursive: true, force: true });
});

/** Every spill file under `dir`/milterd-*, as full paths. */
async function spillFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir(dir)) {
    if (!d.startsWith('milterd-')) continue;
    for (const f of await readdir(join(dir, d))) out.push(join(dir, d, f));
  }
  return out.sort();
}

/** Appends `data` in pieces of the given sizes (cycled). */
function fill(store: BodyStore, data: Uint8Array, sizes: readonly number[]): void {
  let off = 0;
  for (let i = 0; off < data.length; i++) {
    const n = sizes[i % sizes.length]!;
    store.append(data.subarray(off, off + n));
    off += n;
  }
}

async function collect(store: BodyStore): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const c of store.chunks()) out.push(c);
  return out;
}

const LIMIT = 64 * 1024;

describe('BodyStore in memory', () => {
  it('keeps a body up to the limit in memory, exactly', async () => {
    const s = new BodyStore({ memoryLimit: LIMIT, tmpDir: base });
    const data = randomBytes(LIMIT);
    fill(s, data, [1000, 1, 65535]);
    assert.equal(s.size, LIMIT);
    assert.equal(s.spilled, false);
    assert.deepEqual(Buffer.from(await s.read()), data);
    assert.deepEqual(await spillFiles(base), []);
  });

  it('chunks() gives the appended pieces back in order', async () => {
    const s = new BodyStore({ memoryLimit: LIMIT });
    s.append(Buffer.from('abc'));
    s.append(new Uint8Array(0)); // ignored
    s.append(Buffer.from('de'));
    const chunks = await collect(s);
    assert.deepEqual(
      chunks.map((c) => Buffer.from(c).toString('latin1')),
      ['abc', 'de'],
    );
    assert.equal(s.size, 5);
  });

  it('an empty store reads as zero bytes', async () => {
    const s = BodyStore.from(new Uint8Array(0), { memoryLimit: LIMIT });
    assert.equal(s.size, 0);
    assert.equal(s.spilled, false);
    assert.equal((await s.read()).length, 0);
    assert.deepEqual(await collect(s), []);
  });

  it('append copies the caller buffer', async () => {
    const s = new BodyStore({ memoryLimit: LIMIT });
    const buf = Buffer.from('original');
    s.append(buf);
    buf.fill(0x58);
    assert.equal(Buffer.from(await s.read()).toString('latin1'), 'original');
    const view = Buffer.from('0123456789').subarray(2, 5);
    s.append(view);
    view.fill(0x59);
    assert.equal(Buffer.from(await s.read()).toString('latin1'), 'original234');
  });

  it('BodyStore.from holds the given bytes', async () => {
    const data = randomBytes(1000);
    const s = BodyStore.from(data, { memoryLimit: LIMIT });
    assert.equal(s.size, 1000);
    assert.deepEqual(Buffer.from(await s.read()), data);
  });

  it('dispose() of an in-memory store is safe, also twice', async () => {
    const s = BodyStore.from(Buffer.from('x'), { memoryLimit: LIMIT });
    await s.dispose();
    await s.dispose();
  });
});

describe('BodyStore spilled', () => {
  it('one byte above the limit spills', async () => {
    const s = new BodyStore({ memoryLimit: LIMIT, tmpDir: base });
    const data = randomBytes(LIMIT + 1);
    fill(s, data, [LIMIT, 1]);
    assert.equal(s.spilled, true);
    assert.equal(s.size, LIMIT + 1);
    assert.deepEqual(Buffer.from(await s.read()), data);
    await s.dispose();
  });

  it('3 MiB of random data in random pieces: read() and chunks() give back exactly the bytes', async () => {
    const before = await spillFiles(base);
    const s = new BodyStore({ memoryLimit: LIMIT, tmpDir: base });
    const data = randomBytes(3 * 1024 * 1024);
    fill(s, data, [65535, 1, 4096, 30000, 65535, 12345, 7]);
    assert.equal(s.spilled, true);
    assert.equal(s.size, data.length);

    // Read straight away: writes still in flight must be waited for.
    const whole = await s.read();
    assert.equal(whole.length, data.length);
    assert.ok(Buffer.from(whole).equals(data));

    const chunks = await collect(s);
    const sizes = chunks.map((c) => c.length);
    const full = Math.floor(data.length / 65535);
    assert.deepEqual(sizes, [...Array<number>(full).fill(65535), data.length - full * 65535]);
    assert.ok(Buffer.concat(chunks).equals(data));

    // The spill file: one new file, private, holding the body.
    const added = (await spillFiles(base)).filter((f) => !before.includes(f));
    assert.equal(added.length, 1);
    const st = await stat(added[0]!);
    assert.equal(st.size, data.length);
    assert.equal(st.mode & 0o777, 0o600);
    const dirSt = await stat(join(added[0]!, '..'));
    assert.equal(dirSt.mode & 0o777, 0o700);

    await s.dispose();
    assert.deepEqual(
      (await spillFiles(base)).filter((f) => !before.includes(f)),
      [],
      'dispose() must remove the spill file',
    );
    await s.dispose(); // twice is safe
  });

  it('dispose() right after append (writes in flight) still removes the file', async () => {
    const before = await spillFiles(base);
    const s = new BodyStore({ memoryLimit: 10, tmpDir: base });
    s.append(randomBytes(500_000));
    s.append(randomBytes(500_000));
    await s.dispose();
    assert.deepEqual(
      (await spillFiles(base)).filter((f) => !before.includes(f)),
      [],
    );
  });

  it('append copies the caller buffer when spilled', async () => {
    const s = new BodyStore({ memoryLimit: 4, tmpDir: base });
    const buf = Buffer.from('0123456789');
    s.append(buf);
    buf.fill(0x58); // before the chained write ran
    const more = Buffer.from('abc');
    s.append(more);
    more.fill(0x59);
    assert.equal(s.spilled, true);
    assert.equal(Buffer.from(await s.read()).toString('latin1'), '0123456789abc');
    await s.dispose();
  });

  it('pieces kept in memory before the spill are written first, in order', async () => {
    const s = new BodyStore({ memoryLimit: 10, tmpDir: base });
    s.append(Buffer.from('aaaa'));
    s.append(Buffer.from('bbbb'));
    assert.equal(s.spilled, false);
    s.append(Buffer.from('cccc'));
    assert.equal(s.spilled, true);
    s.append(Buffer.from('dd'));
    assert.equal(Buffer.from(await s.read()).toString('latin1'), 'aaaabbbbccccdd');
    await s.dispose();
  });
});

describe('BodyStore.equals', () => {
  it('same bytes in different pieces → true; different bytes, size → false', async () => {
    const a = new BodyStore({ memoryLimit: LIMIT });
    const b = new BodyStore({ memoryLimit: LIMIT });
    a.append(Buffer.from('hello world'));
    b.append(Buffer.from('hello'));
    b.append(Buffer.from(' world'));
    assert.equal(await a.equals(b), true);
    assert.equal(await b.equals(a), true);
    const c = BodyStore.from(Buffer.from('hello World'), { memoryLimit: LIMIT });
    assert.equal(await a.equals(c), false);
    const d = BodyStore.from(Buffer.from('hello world!'), { memoryLimit: LIMIT });
    assert.equal(await a.equals(d), false);
    const e1 = new BodyStore({ memoryLimit: LIMIT });
    const e2 = BodyStore.from(new Uint8Array(0), { memoryLimit: LIMIT });
    assert.equal(await e1.equals(e2), true);
  });

  it('a spilled store is never reported equal (not worth reading back; the body is sent)', async () => {
    const data = randomBytes(200);
    const a = BodyStore.from(data, { memoryLimit: 100, tmpDir: base });
    const b = BodyStore.from(data, { memoryLimit: 100, tmpDir: base });
    const m = BodyStore.from(data, { memoryLimit: 1000 });
    assert.equal(a.spilled, true);
    assert.equal(await a.equals(b), false);
    assert.equal(await a.equals(m), false);
    assert.equal(await m.equals(a), false);
    await a.dispose();
    await b.dispose();
  });
});

describe('BodyStore spill folder', () => {
  it(
    'each store spills into its own tmpDir',
    async () => {
      const s = new BodyStore({ memoryLimit: 1, tmpDir: otherBase });
      s.append(Buffer.from('spill me'));
      await s.read();
      try {
        assert.equal((await spillFiles(otherBase)).length, 1);
      } finally {
        await s.dispose();
      }
    },
  );
});
