/**
 * The configuration schema: one place for every key, its type, its default and its unit.
 * `docs/configuration.md` documents the same keys; a test fails when they drift apart.
 * Units are in the key names (`…Ms`, `…Bytes`) so a YAML file reads unambiguously.
 * @module
 */
import { Type, type Static, type SchemaOptions } from '@sinclair/typebox';

/** A string enum as JSON Schema `enum` (clearer validation errors than a union of literals). */
function StringEnum<const T extends readonly string[]>(values: T, options: SchemaOptions = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: values, ...options });
}

const POLICIES = ['continue', 'accept', 'tempfail', 'reject'] as const;

/** A plugin's circuit breaker when its chain entry sets none (src/sandbox/supervisor.ts applies them). */
export const BREAKER_DEFAULTS = Object.freeze({
  /** Failures in a row of one hook that switch the plugin off. */
  threshold: 5,
  /** First time switched off, ms; doubles after each failed retry... */
  cooldownMs: 10_000,
  /** ...up to this, ms. */
  maxCooldownMs: 300_000,
});

/** The whole configuration file. */
export const ConfigSchema = Type.Object(
  {
    listen: Type.Array(Type.String({ minLength: 1 }), {
      minItems: 1,
      default: ['inet:8890@127.0.0.1'],
      description: 'Sockets in libmilter syntax: unix:/path, inet:port@host, inet6:port@host.',
    }),
    socketMode: Type.String({
      pattern: '^0?[0-7]{3}$',
      default: '0660',
      description: 'Permissions of unix sockets, octal. The MTA (user postfix, smmsp...) must be able to connect.',
    }),
    tmpDir: Type.Optional(Type.String({ minLength: 1, description: 'Folder for body spill files. Default: the OS temp folder.' })),
    log: Type.Object(
      {
        level: StringEnum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
          default: 'info',
          description: 'pino level. info logs every non-accept verdict; debug every message.',
        }),
        file: Type.Optional(Type.String({ minLength: 1, description: 'Append logs to this file instead of standard output. SIGUSR2 (or SIGHUP, which also reloads) reopens it by name, for log rotation.' })),
      },
      { additionalProperties: false, default: {} },
    ),
    limits: Type.Object(
      {
        maxFrameBytes: Type.Integer({
          minimum: 65536 + 1024,
          maximum: 64 * 1024 * 1024,
          default: 1048576,
          description: 'Largest milter packet accepted (bytes). Checked before allocating.',
        }),
        bodyMemoryBytes: Type.Integer({
          minimum: 0,
          default: 1048576,
          description: 'Body bytes per message kept in memory; beyond this the body spills to a file in tmpDir.',
        }),
        highWaterMarkBytes: Type.Integer({
          minimum: 65536,
          default: 1048576,
          description: 'Unprocessed bytes per MTA connection before reading pauses (backpressure).',
        }),
      },
      { additionalProperties: false, default: {} },
    ),
    timeouts: Type.Object(
      {
        progressIntervalMs: Type.Integer({
          minimum: 0,
          default: 10000,
          description: 'Send SMFIR_PROGRESS this often while filters work on end of message; 0 turns it off.',
        }),
        idleMs: Type.Integer({
          minimum: 1000,
          default: 7210000,
          description: 'Close an MTA connection idle this long (libmilter default: 7210 s).',
        }),
        shutdownMs: Type.Integer({
          minimum: 0,
          default: 30000,
          description: 'On SIGTERM, how long open connections may finish before they are closed.',
        }),
      },
      { additionalProperties: false, default: {} },
    ),
    pluginDir: Type.Optional(
      Type.String({ minLength: 1, description: 'Folder whose node_modules holds installed plugin packages (relative to this file).' }),
    ),
    chain: Type.Array(
      Type.Object(
        {
          plugin: Type.String({
            minLength: 1,
            description: 'npm package name (looked up in pluginDir, then from this file), or a folder path starting with ./, ../ or /.',
          }),
          enabled: Type.Boolean({ default: true, description: 'false keeps the entry in the file but out of the chain.' }),
          shadow: Type.Boolean({
            default: false,
            description: 'Evaluation mode: the plugin runs and its verdicts and edits are logged and counted, but none is applied.',
          }),
          onError: Type.Optional(StringEnum(POLICIES, { description: 'Failure policy of this plugin; default filters.onError.' })),
          capabilities: Type.Array(StringEnum(['log', 'kv', 'dns', 'clock']), {
            uniqueItems: true,
            default: [],
            description: 'Host services granted to the plugin (it gets those it also asks for in its manifest).',
          }),
          limits: Type.Optional(
            Type.Object(
              {
                memoryMb: Type.Optional(Type.Integer({ minimum: 8, maximum: 4096, description: 'Isolate heap limit, MB.' })),
                cpuMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 60000, description: 'CPU time of one call, ms (at most wallMs: the tighter limit wins).' })),
                wallMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 300000, description: 'Wall-clock time of one call, awaits included, counted from its arrival in the sandbox process (waiting behind other connections\' calls on the same isolate counts), ms; at most messageMs and filters.timeoutMs.' })),
                messageMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600000, description: 'Time of all calls of one message, ms; at most filters.messageBudgetMs.' })),
              },
              { additionalProperties: false, description: "Overrides of the manifest's limits." },
            ),
          ),
          options: Type.Optional(
            Type.Record(Type.String(), Type.Unknown(), {
              description: "Passed to the plugin as ctx.options; validated against the plugin's optionsSchema if it has one.",
            }),
          ),
          breaker: Type.Optional(
            Type.Object(
              {
                threshold: Type.Optional(
                  Type.Integer({
                    minimum: 1,
                    maximum: 1000,
                    description: `Failures in a row of one hook (crash, CPU, wall clock, memory) that switch the plugin off; default ${BREAKER_DEFAULTS.threshold}.`,
                  }),
                ),
                cooldownMs: Type.Optional(
                  Type.Integer({
                    minimum: 100,
                    maximum: BREAKER_DEFAULTS.maxCooldownMs,
                    description: `First time switched off, ms; doubles after each failed retry, up to ${BREAKER_DEFAULTS.maxCooldownMs} ms; default ${BREAKER_DEFAULTS.cooldownMs}.`,
                  }),
                ),
              },
              { additionalProperties: false, description: 'Circuit breaker of this plugin.' },
            ),
          ),
          poolSize: Type.Integer({
            minimum: 1,
            maximum: 64,
            default: 2,
            description: "Isolates in the plugin's sandbox process: connections served in parallel by this plugin.",
          }),
        },
        { additionalProperties: false },
      ),
      {
        default: [],
        description: 'The plugins, in order: envelope phases stop at the first that rejects; at end of message each sees the edits of those before it.',
      },
    ),
    metrics: Type.Object(
      {
        listen: Type.Optional(
          Type.String({
            pattern: '^(\\[[0-9a-fA-F:]+\\]|[^:\\s]+):\\d{1,5}$',
            description: 'Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464). Unset: no metrics, no cost.',
          }),
        ),
      },
      { additionalProperties: false, default: {} },
    ),
    reload: Type.Object(
      {
        watch: Type.Boolean({
          default: true,
          description: 'Watch the configuration file and every plugin\'s files, and reload the chain when they change (SIGHUP always reloads).',
        }),
        debounceMs: Type.Integer({ minimum: 0, maximum: 10000, default: 50, description: 'Wait this long after the last change before reloading.' }),
      },
      { additionalProperties: false, default: {} },
    ),
    filters: Type.Object(
      {
        onError: StringEnum(POLICIES, {
          default: 'tempfail',
          description:
            'What a filter failure (throw, timeout, broken rule) turns into. continue: skip that filter for the rest of the message; accept: accept the message as it stands; tempfail / reject: fail the message (at RCPT: that recipient).',
        }),
        timeoutMs: Type.Integer({
          minimum: 1,
          default: 10000,
          description: "Time budget of one hook call, ms: caps every plugin's wallMs (and cpuMs), whatever its manifest or chain entry says.",
        }),
        messageBudgetMs: Type.Integer({
          minimum: 1,
          default: 60000,
          description: "Time budget of all hook calls of one message, ms: caps every plugin's messageMs.",
        }),
      },
      { additionalProperties: false, default: {}, description: "For every filter in the chain: the default failure policy, and ceilings on plugins' time limits." },
    ),
    storage: Type.Object(
      {
        backend: StringEnum(['memory', 'redis'], {
          default: 'memory',
          description:
            "Where plugins' kv data lives. memory: in each plugin's sandbox process (lost when it restarts, not shared between milterd instances); redis: in Redis, shared by every milterd using the same server (greylisting across several MTAs).",
        }),
        url: Type.String({
          pattern: '^rediss?://',
          default: 'redis://127.0.0.1:6379',
          description: 'Redis server (backend redis): redis[s]://[[user][:password]@]host[:port][/db].',
        }),
        prefix: Type.String({
          default: 'milterd:',
          description: "Prepended to every Redis key: a plugin's key k is stored as prefix, package name, colon, k (milterd:@milterd/plugin-greylist:k).",
        }),
        timeoutMs: Type.Integer({
          minimum: 1,
          default: 500,
          description:
            "Time one kv operation may take against Redis, connecting included; slower, or Redis down, fails the operation (the plugin can catch it). Keep it under the plugins' wallMs.",
        }),
      },
      { additionalProperties: false, default: {}, description: 'The plugin key-value store (capability kv).' },
    ),
  },
  { additionalProperties: false },
);

/** A validated configuration, defaults filled in. */
export type Config = Static<typeof ConfigSchema>;
