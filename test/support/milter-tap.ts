/**
 * A recording TCP proxy for milter connections: the MTA (or miltertest) connects to the tap,
 * the tap connects to milterd, and every packet in both directions is split into frames and
 * kept. Tests assert on packets no MTA-side tool exposes (SMFIR_CHGFROM, SMFIR_ADDRCPT_PAR,
 * the negotiated flags) and print the log when something fails, which is what a bug report
 * needs. The framing here is written from the wire facts alone (4-byte big-endian length
 * counting the command byte), sharing no code with src/protocol.
 * @module
 */
import net from 'node:net';
import { parseInetSocket } from './mta-util.ts';

/** One milter packet as seen on the wire. */
export interface TapFrame {
  /** Connection number (1-based, in accept order). */
  readonly conn: number;
  /** `mta` = MTA→milter command, `milter` = milter→MTA reply. */
  readonly from: 'mta' | 'milter';
  /** The command/reply character, e.g. 'O', 'M', 'h', 'e'. */
  readonly code: string;
  readonly payload: Buffer;
  /** Milliseconds since the tap started. */
  readonly at: number;
}

/** A running tap. */
export interface MilterTap {
  /** Address to give the MTA, libmilter syntax: `inet:PORT@127.0.0.1`. */
  readonly address: string;
  readonly port: number;
  readonly frames: readonly TapFrame[];
  /** Frames of one direction (and optionally one code). */
  select(from: 'mta' | 'milter', code?: string): TapFrame[];
  /** Human-readable packet log, one line per frame. */
  dump(): string;
  /** Forgets the frames recorded so far. */
  clear(): void;
  close(): Promise<void>;
}

/** NUL-separated strings of a payload (trailing empty string dropped). */
export function cstrings(payload: Buffer, offset = 0): string[] {
  const parts = payload.subarray(offset).toString('latin1').split('\0');
  if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
  return parts;
}

/** One-line rendering of a frame: code, decoded fields where useful, else escaped bytes. */
export function describeFrame(f: TapFrame): string {
  const p = f.payload;
  let detail: string;
  const u32 = (o: number): number => p.readUInt32BE(o);
  const hex = (n: number): string => `0x${n.toString(16)}`;
  if (f.code === 'O' && p.length >= 12) {
    detail = `version=${u32(0)} actions=${hex(u32(4))} protocol=${hex(u32(8))}`;
    if (p.length > 12) detail += ` rest=${JSON.stringify(p.subarray(12).toString('latin1'))}`;
  } else if ((f.code === 'i' || f.code === 'm') && f.from === 'milter' && p.length >= 4) {
    detail = `index=${u32(0)} ${JSON.stringify(cstrings(p, 4))}`;
  } else if (f.code === 'B' || f.code === 'b') {
    detail = `${p.length} bytes ${JSON.stringify(p.subarray(0, 200).toString('latin1'))}${p.length > 200 ? '…' : ''}`;
  } else {
    detail = JSON.stringify(p.toString('latin1'));
  }
  return `#${f.conn} +${f.at}ms ${f.from === 'mta' ? 'MTA→milter' : 'milter→MTA'} '${f.code}' ${detail}`;
}

class FrameSplitter {
  #buf: Buffer = Buffer.alloc(0);
  feed(chunk: Buffer, emit: (code: string, payload: Buffer) => void): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    while (this.#buf.length >= 5) {
      const len = this.#buf.readUInt32BE(0);
      if (len < 1 || len > 64 * 1024 * 1024) {
        emit('?', this.#buf);
        this.#buf = Buffer.alloc(0);
        return;
      }
      if (this.#buf.length < 4 + len) return;
      emit(String.fromCharCode(this.#buf[4] as number), Buffer.from(this.#buf.subarray(5, 4 + len)));
      this.#buf = this.#buf.subarray(4 + len);
    }
  }
}

/** Starts a tap on a free loopback port forwarding to `target` (`inet:PORT@HOST`). */
export async function startMilterTap(target: string): Promise<MilterTap> {
  const { host, port: targetPort } = parseInetSocket(target);
  const t0 = Date.now();
  let frames: TapFrame[] = [];
  let connSeq = 0;
  const sockets = new Set<net.Socket>();

  const server = net.createServer((mta) => {
    const conn = ++connSeq;
    const milter = net.connect({ host, port: targetPort });
    mta.setNoDelay(true);
    milter.setNoDelay(true);
    sockets.add(mta);
    sockets.add(milter);
    const up = new FrameSplitter();
    const down = new FrameSplitter();
    const record = (from: 'mta' | 'milter') => (code: string, payload: Buffer) => {
      frames.push({ conn, from, code, payload, at: Date.now() - t0 });
    };
    mta.on('data', (d: Buffer) => {
      up.feed(d, record('mta'));
      milter.write(d);
    });
    milter.on('data', (d: Buffer) => {
      down.feed(d, record('milter'));
      mta.write(d);
    });
    // Half-closes are forwarded as such: an MTA that sends QUIT and shuts its side down must
    // still see whatever the milter writes after.
    mta.on('end', () => milter.end());
    milter.on('end', () => mta.end());
    const kill = (): void => {
      mta.destroy();
      milter.destroy();
      sockets.delete(mta);
      sockets.delete(milter);
    };
    mta.on('error', kill);
    milter.on('error', kill);
    mta.on('close', () => {
      sockets.delete(mta);
      if (!milter.destroyed) milter.end();
    });
    milter.on('close', () => {
      sockets.delete(milter);
      if (!mta.destroyed) mta.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('tap has no port');
  const port = addr.port;

  return {
    address: `inet:${port}@127.0.0.1`,
    port,
    get frames() {
      return frames;
    },
    select: (from, code) => frames.filter((f) => f.from === from && (code === undefined || f.code === code)),
    dump: () => frames.map(describeFrame).join('\n'),
    clear: () => {
      frames = [];
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
