/**
 * The listening side: accepts MTA connections on every configured address and gives each one
 * a Session. Stopping follows libmilter's smfi_stop: stop accepting, let open connections
 * finish, and close what is left when the deadline passes.
 * @module
 */
import net from 'node:net';
import { chmod, lstat, unlink } from 'node:fs/promises';
import { MilterdError } from '../errors.ts';
import { silentLogger, type Logger } from '../log.ts';
import { DEFAULT_MAX_FRAME_SIZE } from '../protocol/decoder.ts';
import { Chain, DEFAULT_CHAIN_DEFAULTS, type ChainDefaults } from '../chain/chain.ts';
import type { ChainEntry } from '../chain/filter.ts';
import { ChainHolder } from '../chain/holder.ts';
import { Session } from '../session/session.ts';
import { formatListenSpec, parseListenSpec, type ListenSpec } from './listen.ts';

/** Everything a MilterServer can be told; only `listen` and `chain` are required. */
export interface MilterServerOptions {
  /** libmilter-syntax addresses: `unix:/path`, `inet:port@host`, `inet6:port@host`. */
  readonly listen: string | readonly string[];
  /** The filters, in order (or a prepared Chain). */
  readonly chain: readonly ChainEntry[] | Chain;
  readonly chainDefaults?: Partial<ChainDefaults>;
  readonly logger?: Logger;
  /** Permissions of unix sockets. Default 0o660: the MTA's group must be able to connect. */
  readonly socketMode?: number;
  /** Largest packet accepted, in bytes. Default 1 MiB. */
  readonly maxFrameSize?: number;
  /** Body bytes kept in memory per message before spilling to a file. Default 1 MiB. */
  readonly bodyMemoryLimit?: number;
  /** Folder for body spill files. Default: the OS temp folder. */
  readonly tmpDir?: string;
  /** SMFIR_PROGRESS interval during a long end of message, ms. Default 10 000; 0 = off. */
  readonly progressIntervalMs?: number;
  /** Unprocessed bytes per connection before reading pauses. Default 1 MiB. */
  readonly highWaterMark?: number;
  /** An idle MTA connection is closed after this long, ms. Default 7 210 000 (libmilter's 7210 s). */
  readonly idleTimeoutMs?: number;
}

/** A milter server: listeners plus their sessions. */
export class MilterServer {
  readonly #opts: MilterServerOptions;
  readonly #log: Logger;
  readonly #specs: ListenSpec[];
  readonly #servers: { spec: ListenSpec; server: net.Server }[] = [];
  readonly #sockets = new Map<net.Socket, Session>();
  readonly #chains: ChainHolder;
  #seq = 0;
  #stopping: Promise<void> | undefined;

  constructor(options: MilterServerOptions) {
    this.#opts = options;
    this.#log = options.logger ?? silentLogger();
    const list = typeof options.listen === 'string' ? [options.listen] : options.listen;
    if (list.length === 0) throw new MilterdError('MILTERD_SERVER_LISTEN_SPEC', 'no listen address given');
    this.#specs = list.map(parseListenSpec);
    this.#chains = new ChainHolder(toChain(options.chain, options.chainDefaults));
  }

  /** The chain that new connections and new messages use. */
  get chain(): Chain {
    return this.#chains.current;
  }

  /** Chains replaced by setChain that messages in progress still use. */
  get draining(): number {
    return this.#chains.draining;
  }

  /**
   * Swaps the chain (hot reload): new connections, and open ones at their next message, use
   * the new one; messages in progress finish on the old one. `onRetired` runs when the old
   * chain is no longer in use by anyone.
   */
  setChain(chain: readonly ChainEntry[] | Chain, onRetired?: () => unknown): Chain {
    const next = toChain(chain, this.#opts.chainDefaults);
    this.#chains.swap(next, onRetired);
    return next;
  }

  /** Open MTA connections. */
  get connections(): number {
    return this.#sockets.size;
  }

  /** Starts listening on every address; rejects (and closes what it opened) if one fails. */
  async start(): Promise<void> {
    try {
      for (const spec of this.#specs) this.#servers.push({ spec, server: await this.#listen(spec) });
    } catch (err) {
      await this.#closeListeners();
      throw err;
    }
    this.#log.info({ listen: this.addresses(), filters: this.chain.entries.map((e) => e.name) }, 'milterd listening');
  }

  /** Addresses in libmilter syntax with ports resolved (`inet:0@…` becomes the real port). */
  addresses(): string[] {
    return this.#servers.map(({ spec, server }) => {
      const a = server.address();
      if (spec.kind === 'unix' || a === null || typeof a === 'string') return formatListenSpec(spec);
      return formatListenSpec({ ...spec, port: a.port });
    });
  }

  async #listen(spec: ListenSpec): Promise<net.Server> {
    if (spec.kind === 'unix') await removeStaleSocket(spec.path);
    const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => this.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(
          new MilterdError('MILTERD_SERVER_LISTEN', `cannot listen on ${formatListenSpec(spec)}: ${err.message}`, {
            cause: err,
          }),
        );
      };
      server.once('error', onError);
      const done = (): void => {
        server.off('error', onError);
        resolve();
      };
      if (spec.kind === 'unix') server.listen({ path: spec.path, backlog: 511 }, done);
      else server.listen({ port: spec.port, host: spec.host, backlog: 511, ipv6Only: spec.kind === 'inet6' }, done);
    });
    server.on('error', (err) => this.#log.error({ code: 'MILTERD_SERVER_LISTEN', err: err.message }, 'listener error'));
    if (spec.kind === 'unix') await chmod(spec.path, this.#opts.socketMode ?? 0o660);
    return server;
  }

  #accept(socket: net.Socket): void {
    if (this.#stopping !== undefined) {
      socket.destroy();
      return;
    }
    const id = (++this.#seq).toString(36);
    const o = this.#opts;
    const session = new Session(id, socket, {
      chains: this.#chains,
      logger: this.#log,
      maxFrameSize: o.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      bodyStore: { memoryLimit: o.bodyMemoryLimit ?? 1 << 20, ...(o.tmpDir === undefined ? {} : { tmpDir: o.tmpDir }) },
      progressIntervalMs: o.progressIntervalMs ?? 10_000,
      highWaterMark: o.highWaterMark ?? 1 << 20,
    });
    this.#sockets.set(socket, session);
    socket.setTimeout(o.idleTimeoutMs ?? 7_210_000);
    socket.on('data', (chunk: Buffer) => session.receive(chunk));
    socket.on('timeout', () => {
      this.#log.warn({ session: id, code: 'MILTERD_SESSION_SOCKET' }, 'MTA connection idle too long; closing');
      socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.#log.debug({ session: id, code: 'MILTERD_SESSION_SOCKET', err: err.message }, 'MTA connection error');
    });
    // The MTA closed its side: close ours (the session may have ended it already on QUIT;
    // a second end() would build an ERR_STREAM_ALREADY_FINISHED error, stack and all, on
    // every connection).
    socket.on('end', () => {
      if (!socket.writableEnded) socket.end();
    });
    socket.on('close', () => {
      void session.end().finally(() => this.#sockets.delete(socket));
    });
  }

  /**
   * Stops accepting and waits for open connections to end. After `deadlineMs` (default
   * 30 s) the remaining ones are closed. Calling it again with a shorter deadline shortens it.
   */
  stop(options: { deadlineMs?: number } = {}): Promise<void> {
    const deadline = options.deadlineMs ?? 30_000;
    if (this.#stopping !== undefined) {
      if (deadline === 0) this.#destroyAll();
      return this.#stopping;
    }
    this.#stopping = this.#stop(deadline);
    return this.#stopping;
  }

  async #stop(deadlineMs: number): Promise<void> {
    const closing = this.#closeListeners();
    const start = Date.now();
    let warned = false;
    while (this.#sockets.size > 0) {
      if (Date.now() - start >= deadlineMs && !warned) {
        warned = true;
        this.#log.warn(
          { code: 'MILTERD_SERVER_SHUTDOWN_TIMEOUT', open: this.#sockets.size },
          'shutdown deadline passed; closing open MTA connections',
        );
        this.#destroyAll();
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    await closing;
    this.#log.info('milterd stopped');
  }

  #destroyAll(): void {
    for (const s of this.#sockets.keys()) s.destroy();
  }

  async #closeListeners(): Promise<void> {
    const servers = this.#servers.splice(0);
    await Promise.all(
      servers.map(
        ({ spec, server }) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            if (spec.kind === 'unix') unlink(spec.path).catch(() => undefined);
          }),
      ),
    );
  }
}

function toChain(chain: readonly ChainEntry[] | Chain, defaults: Partial<ChainDefaults> | undefined): Chain {
  if (chain instanceof Chain) return chain;
  return new Chain(chain, { ...DEFAULT_CHAIN_DEFAULTS, ...defaults });
}

/**
 * A socket file left by a daemon that died is replaced; one a live daemon answers on is not,
 * and neither is anything that is not a socket.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) {
    throw new MilterdError('MILTERD_SERVER_LISTEN', `${path} exists and is not a socket; refusing to replace it`);
  }
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new MilterdError('MILTERD_SERVER_LISTEN', `${path} is in use by a running daemon`);
  await unlink(path);
}
