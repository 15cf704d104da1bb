/**
 * The plugins' key-value store (capability `kv`), as the sandbox process serves it: one store
 * per sandbox process, so per plugin. Two backends behind one async interface:
 *
 * - `MemoryKv`: a Map in the sandbox process. Lost when the process restarts, not shared with
 *   other milterd instances.
 * - `RedisKv`: one Redis connection per sandbox process, opened at the first use and
 *   reconnecting on its own. Shared by every milterd instance using the same Redis (greylisting
 *   across several MTAs). Keys are `${prefix}${plugin}:${key}`; values are stored as JSON text
 *   (numbers as decimals, strings quoted) so they come back with their type.
 *
 * Both validate arguments the same way (errors prefixed `[MILTERD_PLUGIN_BAD_ARGUMENT]`). A
 * Redis that is down or slower than `timeoutMs` fails the operation with an error prefixed
 * `[MILTERD_PLUGIN_KV]`, which the plugin gets as a rejected promise it can catch.
 * @module
 */
import { createHash } from 'node:crypto';

/** Where plugins' kv data lives (configuration key `storage`). */
export interface StorageSettings {
  readonly backend: 'memory' | 'redis';
  /** `redis[s]://[[user][:password]@]host[:port][/db]` */
  readonly url: string;
  /** Prepended to every Redis key, before the plugin's name. */
  readonly prefix: string;
  /** Time one kv operation may take against Redis (connecting included), ms. */
  readonly timeoutMs: number;
}

/** The defaults of the configuration's `storage` key. */
export const DEFAULT_STORAGE: StorageSettings = Object.freeze({
  backend: 'memory',
  url: 'redis://127.0.0.1:6379',
  prefix: 'milterd:',
  timeoutMs: 500,
});

/** What a kv operation resolves to: a value (get), the new count (incr), or a boolean. */
export type KvReply = string | number | boolean | null;

/** One plugin's store, as the sandbox's `__milterd_kv` host reference calls it. */
export interface KvStore {
  /** Runs one operation; arguments come from plugin code and are checked here. */
  run(op: unknown, key: unknown, value: unknown, ttl: unknown): Promise<KvReply>;
  /** Drops the backend's connection, if any (the process is about to exit). */
  close(): void;
}

export const MAX_KV_KEY = 512;
export const MAX_KV_VALUE = 65536;
/** Keys one plugin may hold in MemoryKv (Redis has its own maxmemory policy). */
export const MAX_KV_ENTRIES = 100_000;
export const MAX_TTL_MS = 30 * 24 * 3600 * 1000;

/** A host-service argument error: thrown into the plugin as a plain Error with a code prefix. */
export function badArgument(message: string): Error {
  return new Error(`[MILTERD_PLUGIN_BAD_ARGUMENT] ${message}`);
}

/** A failure of the storage backend itself (Redis down, slow, refusing). */
export function kvFailure(message: string): Error {
  return new Error(`[MILTERD_PLUGIN_KV] ${message}`);
}

/** A checked kv operation. */
export type KvRequest =
  | { readonly op: 'get'; readonly key: string }
  | { readonly op: 'set'; readonly key: string; readonly value: string | number; readonly ttl: number | undefined }
  | { readonly op: 'incr'; readonly key: string; readonly by: number; readonly ttl: number | undefined }
  | { readonly op: 'del'; readonly key: string };

/** Checks the arguments of one operation as plugin code passed them; throws badArgument. */
export function checkRequest(op: unknown, key: unknown, value: unknown, ttl: unknown): KvRequest {
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_KV_KEY) {
    throw badArgument(`kv key must be a string of 1-${MAX_KV_KEY} characters`);
  }
  if (ttl !== undefined && ttl !== null && (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl <= 0 || ttl > MAX_TTL_MS)) {
    throw badArgument(`kv ttlMs must be an integer from 1 to ${MAX_TTL_MS}`);
  }
  const t = typeof ttl === 'number' ? ttl : undefined;
  switch (op) {
    case 'get':
    case 'del':
      return { op, key };
    case 'set':
      if (typeof value === 'string' ? value.length > MAX_KV_VALUE : typeof value !== 'number' || !Number.isFinite(value)) {
        throw badArgument(`kv value must be a finite number or a string of at most ${MAX_KV_VALUE} characters`);
      }
      return { op, key, value: value as string | number, ttl: t };
    case 'incr': {
      const by = value === undefined || value === null ? 1 : value;
      if (typeof by !== 'number' || !Number.isFinite(by)) throw badArgument('kv incr step must be a finite number');
      return { op, key, by, ttl: t };
    }
    default:
      throw badArgument(`unknown kv operation ${String(op)}`);
  }
}

function nonNumeric(key: string): Error {
  return badArgument(`kv incr on a non-numeric value at ${key}`);
}

/** The plugin's key-value store in this process (namespaced per plugin by construction). */
export class MemoryKv implements KvStore {
  readonly #map = new Map<string, { value: string | number; expires: number }>();

  #live(key: string): { value: string | number; expires: number } | undefined {
    const e = this.#map.get(key);
    if (e === undefined) return undefined;
    if (e.expires !== 0 && e.expires <= Date.now()) {
      this.#map.delete(key);
      return undefined;
    }
    return e;
  }

  #room(): void {
    if (this.#map.size < MAX_KV_ENTRIES) return;
    const now = Date.now();
    for (const [k, e] of this.#map) if (e.expires !== 0 && e.expires <= now) this.#map.delete(k);
    if (this.#map.size >= MAX_KV_ENTRIES) throw badArgument(`kv is full (${MAX_KV_ENTRIES} keys)`);
  }

  async run(op: unknown, key: unknown, value: unknown, ttl: unknown): Promise<KvReply> {
    return this.runSync(checkRequest(op, key, value, ttl));
  }

  runSync(r: KvRequest): KvReply {
    const expires = r.op !== 'get' && r.op !== 'del' && r.ttl !== undefined ? Date.now() + r.ttl : 0;
    switch (r.op) {
      case 'get':
        return this.#live(r.key)?.value ?? null;
      case 'set':
        this.#room();
        this.#map.set(r.key, { value: r.value, expires });
        return true;
      case 'incr': {
        const e = this.#live(r.key);
        const cur = e === undefined ? 0 : typeof e.value === 'number' ? e.value : Number(e.value);
        if (!Number.isFinite(cur)) throw nonNumeric(r.key);
        this.#room();
        const next = cur + r.by;
        this.#map.set(r.key, { value: next, expires: r.ttl !== undefined ? expires : (e?.expires ?? 0) });
        return next;
      }
      case 'del':
        return this.#map.delete(r.key);
    }
  }

  close(): void {
    this.#map.clear();
  }
}

// --- Redis encoding ----------------------------------------------------------------------

/**
 * The Redis key of a plugin's key: `${prefix}${plugin}:${key}`. Sent as UTF-8, so a key with a
 * lone surrogate shares its Redis key with the same text holding U+FFFD instead.
 */
export function redisKey(prefix: string, plugin: string, key: string): string {
  return `${prefix}${plugin}:${key}`;
}

/** A value as stored in Redis: JSON text, so `5` and `"5"` stay apart. */
export function encodeValue(value: string | number): string {
  if (typeof value === 'number' && !Number.isFinite(value)) throw new RangeError('kv numbers must be finite');
  return JSON.stringify(value);
}

/**
 * A stored value back with its type. Text that is not a JSON string or finite number (written
 * into Redis by something else) comes back as the string it is.
 */
export function decodeValue(text: string): string | number {
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))) return v;
  } catch {
    // not JSON: raw text
  }
  return text;
}

/**
 * `incr` as one atomic step: reads the JSON value (a number, or a string holding a number, as
 * MemoryKv accepts), adds ARGV[1], writes it back as the shortest decimal that reads back to
 * the same double, with PX ARGV[2] when given and the key's TTL kept otherwise (KEEPTTL,
 * Redis >= 6). Returns the new value as text (a Lua number would be truncated to an integer).
 */
export const INCR_SCRIPT = `
local v = redis.call('GET', KEYS[1])
local cur = 0
if v then
  local s = v
  if string.sub(v, 1, 1) == '"' then
    local ok, d = pcall(cjson.decode, v)
    if not ok or type(d) ~= 'string' then return redis.error_reply('MILTERD_NONNUMERIC') end
    s = d
  end
  if string.find(s, '^%s*$') then cur = 0 else cur = tonumber(s) end
  if cur == nil or cur ~= cur or cur == math.huge or cur == -math.huge then
    return redis.error_reply('MILTERD_NONNUMERIC')
  end
end
local n = cur + tonumber(ARGV[1])
if n ~= n or n == math.huge or n == -math.huge then return redis.error_reply('MILTERD_NONNUMERIC') end
local out = string.format('%.17g', n)
for p = 15, 16 do
  local t = string.format('%.' .. p .. 'g', n)
  if tonumber(t) == n then out = t break end
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], out, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], out, 'PX', ARGV[2])
end
return out
`;
const INCR_SHA = createHash('sha1').update(INCR_SCRIPT).digest('hex');

/** The Redis commands of one checked operation (incr: EVALSHA of INCR_SCRIPT). */
export function redisCommand(r: KvRequest, prefix: string, plugin: string): string[] {
  const k = redisKey(prefix, plugin, r.key);
  switch (r.op) {
    case 'get':
      return ['GET', k];
    case 'set':
      return r.ttl === undefined ? ['SET', k, encodeValue(r.value)] : ['SET', k, encodeValue(r.value), 'PX', String(r.ttl)];
    case 'incr':
      return ['EVALSHA', INCR_SHA, '1', k, String(r.by), r.ttl === undefined ? '' : String(r.ttl)];
    case 'del':
      return ['DEL', k];
  }
}

/** Where a Redis URL points, without its credentials (for error messages and logs). */
export function redisWhere(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.hostname}${u.port === '' ? '' : `:${u.port}`}${u.pathname.length > 1 ? u.pathname : ''}`;
  } catch {
    return 'redis (invalid storage.url)';
  }
}

/** The part of the node-redis client used here. */
interface Client {
  readonly isReady: boolean;
  readonly isOpen: boolean;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  once(event: string, listener: (...args: unknown[]) => void): unknown;
  connect(): Promise<unknown>;
  sendCommand(args: string[]): Promise<unknown>;
  destroy(): void;
}

/** Reconnection delay: doubling from 50 ms up to 2 s, with jitter; never gives up. */
function reconnectDelay(retries: number): number {
  return Math.min(50 * 2 ** Math.min(retries, 6), 2000) + Math.floor(Math.random() * 100);
}

/**
 * The connection to the storage backend changed: `up` after a (re)connection, `!up` with the
 * reason when it is lost or cannot be made. Reported on transitions only, not on every failed
 * reconnection attempt.
 */
export type StorageStateListener = (state: { readonly up: boolean; readonly where: string; readonly reason?: string }) => void;

/** The plugin's key-value store in Redis, shared by every process using the same server. */
export class RedisKv implements KvStore {
  readonly #s: StorageSettings;
  readonly #plugin: string;
  readonly #where: string;
  #client: Client | undefined;
  /** Settles when the first connection attempt has succeeded or failed. */
  #firstAttempt: Promise<void> | undefined;
  /** Why the connection is down (since the last 'ready'), or undefined. */
  #down: string | undefined;
  #closed = false;
  /** The client library, loaded when the store is made (~200 ms, off the mail path). */
  readonly #lib: Promise<typeof import('redis')>;
  readonly #onState: StorageStateListener | undefined;
  /** What was last reported to #onState (undefined: nothing yet). */
  #reportedUp: boolean | undefined;

  constructor(settings: StorageSettings, plugin: string, onState?: StorageStateListener) {
    this.#s = settings;
    this.#plugin = plugin;
    this.#onState = onState;
    this.#where = redisWhere(settings.url);
    // Only processes on the Redis backend load it; the connection still waits for a kv call.
    this.#lib = import('redis');
    this.#lib.catch(() => undefined);
  }

  /**
   * Runs one operation within timeoutMs. An operation that timed out may still take effect
   * when a slow Redis gets to it (as with any client timeout).
   */
  async run(op: unknown, key: unknown, value: unknown, ttl: unknown): Promise<KvReply> {
    const r = checkRequest(op, key, value, ttl);
    const ms = this.#s.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(kvFailure(`${this.#where} did not answer kv.${r.op} within ${ms} ms`)), ms);
    });
    const work = this.#exec(r);
    work.catch(() => undefined); // may settle after the timeout
    try {
      return await Promise.race([work, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  async #exec(r: KvRequest): Promise<KvReply> {
    const client = await this.#connected();
    const cmd = redisCommand(r, this.#s.prefix, this.#plugin);
    let reply: unknown;
    try {
      try {
        reply = await client.sendCommand(cmd);
      } catch (err) {
        if (r.op !== 'incr' || !/NOSCRIPT/.test(errorText(err))) throw err;
        // Not in the server's script cache yet (or flushed): send the script itself once.
        reply = await client.sendCommand(['EVAL', INCR_SCRIPT, ...cmd.slice(2)]);
      }
    } catch (err) {
      const text = errorText(err);
      if (/MILTERD_NONNUMERIC/.test(text)) throw nonNumeric(r.key);
      throw kvFailure(`${this.#where} kv.${r.op}: ${text}`);
    }
    switch (r.op) {
      case 'get':
        return reply === null || reply === undefined ? null : decodeValue(String(reply));
      case 'set':
        return true;
      case 'incr':
        return Number(String(reply));
      case 'del':
        return Number(reply) > 0;
    }
  }

  /** The client, connected: opened at the first call; fails fast while Redis is down. */
  async #connected(): Promise<Client> {
    if (this.#closed) throw kvFailure('the store is closed');
    if (this.#client === undefined) await this.#open();
    const client = this.#client!;
    if (!client.isReady && this.#down === undefined) await this.#firstAttempt;
    if (!client.isReady) throw kvFailure(`${this.#where} unavailable: ${this.#down ?? 'not connected'}`);
    return client;
  }

  async #open(): Promise<void> {
    let createClient: (typeof import('redis'))['createClient'];
    try {
      ({ createClient } = await this.#lib);
    } catch (err) {
      throw kvFailure(`cannot load the redis client: ${errorText(err)}`);
    }
    if (this.#client !== undefined) return; // another call opened it meanwhile
    let client: Client;
    try {
      client = createClient({
        url: this.#s.url,
        // Commands sent while disconnected fail at once instead of waiting for a reconnection
        // (a `set` replayed minutes later would be wrong, and the plugin's call is long gone).
        disableOfflineQueue: true,
        socket: { connectTimeout: Math.max(1000, this.#s.timeoutMs), reconnectStrategy: reconnectDelay },
      }) as unknown as Client;
    } catch (err) {
      throw kvFailure(`${this.#where}: ${errorText(err)}`);
    }
    this.#client = client;
    this.#firstAttempt = new Promise<void>((resolve) => {
      client.once('ready', () => resolve());
      client.once('error', () => resolve());
    });
    // Without an 'error' listener a connection error would crash the process.
    client.on('error', (err) => this.#lost(errorText(err)));
    client.on('ready', () => {
      this.#down = undefined;
      this.#report(true);
    });
    client.connect().catch((err: unknown) => this.#lost(errorText(err)));
  }

  #lost(reason: string): void {
    this.#down = reason;
    this.#report(false, reason);
  }

  #report(up: boolean, reason?: string): void {
    if (this.#closed || this.#reportedUp === up) return;
    this.#reportedUp = up;
    this.#onState?.({ up, where: this.#where, ...(reason === undefined ? {} : { reason }) });
  }

  close(): void {
    this.#closed = true;
    const c = this.#client;
    this.#client = undefined;
    try {
      if (c?.isOpen) c.destroy();
    } catch {
      // already closed
    }
  }
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    if (err.message === '') return typeof code === 'string' ? code : err.name;
    return typeof code === 'string' && !err.message.includes(code) ? `${code} ${err.message}` : err.message;
  }
  return String(err);
}

/** The store a sandbox process serves its plugin from (`onState`: Redis connection changes). */
export function createKv(settings: StorageSettings | undefined, plugin: string, onState?: StorageStateListener): KvStore {
  return settings?.backend === 'redis' ? new RedisKv(settings, plugin, onState) : new MemoryKv();
}
