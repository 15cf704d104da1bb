/**
 * Body storage for one message: chunks in memory up to a bound, then spilled to a temporary
 * file, so a 50 MB attachment costs disk, not heap. Writes to the spill file are chained so
 * that `append` stays synchronous for the session (no await per body chunk on the hot path).
 * @module
 */
import { open, mkdtemp, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { MilterdError } from '../errors.ts';

/** Where and when bodies spill to disk. */
export interface BodyStoreOptions {
  /** Bytes kept in memory before spilling. */
  readonly memoryLimit: number;
  /** Folder for spill files (default: the OS temp folder). */
  readonly tmpDir?: string;
}

/** Pieces read back from a spill file: one SMFIR_REPLBODY packet each (MILTER_CHUNK_SIZE). */
const READ_CHUNK = 65535;
/** One private (0700, mkdtemp) folder per process and base folder: spill files are message content. */
const spillDirs = new Map<string, Promise<string>>();
let spillSeq = 0;

function spillFolder(base: string | undefined): Promise<string> {
  const root = base ?? tmpdir();
  let dir = spillDirs.get(root);
  if (dir === undefined) {
    dir = mkdtemp(join(root, 'milterd-'));
    spillDirs.set(root, dir);
    dir.then(
      (d) => createdDirs.push(d),
      () => spillDirs.delete(root), // try again next time (the folder may appear)
    );
  }
  return dir;
}

const createdDirs: string[] = [];
// Spill files are removed as messages end; the folders go when the process exits.
process.once('exit', () => {
  for (const d of createdDirs) rmSync(d, { recursive: true, force: true });
});

/** A message body being received or replaced. */
export class BodyStore {
  #chunks: Uint8Array[] = [];
  #size = 0;
  #memoryLimit: number;
  #tmpDir: string | undefined;
  #file: Promise<{ fh: FileHandle; path: string }> | undefined;
  /** Tail of the chained writes; rejects if any write failed. */
  #writes: Promise<void> = Promise.resolve();
  #failure: unknown;
  #disposed = false;

  constructor(options: BodyStoreOptions) {
    this.#memoryLimit = options.memoryLimit;
    this.#tmpDir = options.tmpDir;
  }

  /** A store holding `body` (for a replaced body). */
  static from(body: Uint8Array, options: BodyStoreOptions): BodyStore {
    const store = new BodyStore(options);
    if (body.length > 0) store.append(body);
    return store;
  }

  /** Total bytes. */
  get size(): number {
    return this.#size;
  }

  /** True once the body went to disk. */
  get spilled(): boolean {
    return this.#file !== undefined;
  }

  /** Adds a chunk. The chunk is copied when kept in memory, so callers may reuse theirs. */
  append(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#size += chunk.length;
    if (this.#file === undefined && this.#size <= this.#memoryLimit) {
      this.#chunks.push(Uint8Array.prototype.slice.call(chunk));
      return;
    }
    if (this.#file === undefined) this.#startSpill();
    const copy = Uint8Array.prototype.slice.call(chunk);
    this.#enqueueWrite(copy);
  }

  #startSpill(): void {
    this.#file = (async () => {
      const dir = await spillFolder(this.#tmpDir);
      const path = join(dir, `body-${process.pid}-${++spillSeq}`);
      const fh = await open(path, 'wx+', 0o600);
      return { fh, path };
    })();
    const pending = this.#chunks;
    this.#chunks = [];
    for (const c of pending) this.#enqueueWrite(c);
  }

  #enqueueWrite(chunk: Uint8Array): void {
    const file = this.#file!;
    this.#writes = this.#writes.then(async () => {
      const { fh } = await file;
      let off = 0;
      while (off < chunk.length) {
        const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
        off += bytesWritten;
      }
    });
    // Remember the first failure; reads report it with a typed error.
    this.#writes.catch((err: unknown) => {
      this.#failure ??= err;
    });
  }

  #spillError(err: unknown): MilterdError {
    return new MilterdError('MILTERD_CONTENT_SPILL', `body spill file failed: ${(err as Error).message}`, {
      cause: err,
    });
  }

  /** The whole body in one buffer: a copy, so a reader cannot change what later filters see. */
  async read(): Promise<Uint8Array> {
    if (this.#file === undefined) return Buffer.concat(this.#chunks, this.#size);
    const out = Buffer.allocUnsafe(this.#size);
    let off = 0;
    for await (const c of this.chunks()) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }

  /** The body in pieces of at most 65535 bytes, streamed from disk when spilled. */
  async *chunks(): AsyncIterable<Uint8Array> {
    if (this.#file === undefined) {
      // Copies of at most MILTER_CHUNK_SIZE bytes, whatever size the pieces were appended in.
      for (const c of this.#chunks) {
        for (let i = 0; i < c.length; i += READ_CHUNK) yield c.slice(i, i + READ_CHUNK);
      }
      return;
    }
    try {
      await this.#writes;
    } catch (err) {
      throw this.#spillError(err);
    }
    if (this.#failure !== undefined) throw this.#spillError(this.#failure);
    const { fh } = await this.#file;
    let pos = 0;
    while (pos < this.#size) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, this.#size - pos));
      let got = 0;
      try {
        while (got < buf.length) {
          const { bytesRead } = await fh.read(buf, got, buf.length - got, pos + got);
          if (bytesRead === 0) throw new Error('spill file shorter than body');
          got += bytesRead;
        }
      } catch (err) {
        throw this.#spillError(err);
      }
      pos += got;
      yield buf;
    }
  }

  /** True if both stores hold the same bytes (used to avoid sending an identical body back). */
  async equals(other: BodyStore): Promise<boolean> {
    if (this.#size !== other.#size) return false;
    if (this.spilled || other.spilled) return false; // not worth reading both back: send it
    return Buffer.concat(this.#chunks, this.#size).equals(Buffer.concat(other.#chunks, other.#size));
  }

  /** Frees memory and removes the spill file. Safe to call twice. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#chunks = [];
    if (this.#file === undefined) return;
    await this.#writes.catch(() => undefined);
    try {
      const { fh, path } = await this.#file;
      await fh.close().catch(() => undefined);
      await rm(path, { force: true });
    } catch {
      // open failed: nothing to remove
    }
  }
}
