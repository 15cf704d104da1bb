/**
 * Messages between the daemon and a plugin's sandbox process (Node IPC with structured-clone
 * serialization, so Uint8Array bodies cross without base64).
 * @module
 */
import type { Capability, WireCall, WireDescription, WireResult } from '../../sdk/src/protocol.ts';
import type { StorageSettings } from './kv.ts';

/** Limits enforced inside the sandbox process. */
export interface SandboxLimits {
  /** Isolate heap limit (isolated-vm memoryLimit), MB. */
  readonly memoryMb: number;
  /** CPU time of one call's synchronous part (isolated-vm `timeout`), ms. */
  readonly cpuMs: number;
  /** Wall-clock time of one call from its arrival in the sandbox process, queueing and awaits included (watchdog), ms. */
  readonly wallMs: number;
}

/** Daemon → sandbox. */
export type ToSandbox =
  | {
      readonly type: 'init';
      readonly plugin: string;
      /** The SDK runtime module (one ESM file, no imports). */
      readonly sdkCode: string;
      /** The plugin bundle (one ESM file importing only '@milterd/sdk'). */
      readonly pluginCode: string;
      readonly capabilities: readonly Capability[];
      readonly limits: SandboxLimits;
      /** Isolates in the pool: calls of different connections run in parallel across them. */
      readonly poolSize: number;
      /** Plugin options from the configuration, passed to the plugin as ctx.options. */
      readonly options: unknown;
      /** Where the plugin's kv data lives (configuration `storage`); absent: in memory. */
      readonly storage?: StorageSettings;
    }
  | { readonly type: 'call'; readonly id: number; readonly call: WireCall }
  /** A call with no answer (abort, close): queued in order with the connection's calls. */
  | { readonly type: 'notify'; readonly call: WireCall }
  /** Several of the above, written in one event-loop turn (one IPC write instead of many). */
  | { readonly type: 'batch'; readonly items: readonly ToSandbox[] };

/** One log record a plugin wrote during a call (ctx.log), shipped back with the result. */
export interface PluginLog {
  readonly level: 'debug' | 'info' | 'warn' | 'error';
  readonly msg: string;
  readonly fields?: Record<string, unknown>;
}

/** A failure inside the sandbox, with a catalogue code. */
export interface SandboxFailure {
  readonly code: string;
  readonly message: string;
}

/** Sandbox → daemon. */
export type FromSandbox =
  | { readonly type: 'ready'; readonly description: WireDescription }
  | { readonly type: 'init-error'; readonly error: SandboxFailure }
  | {
      readonly type: 'result';
      readonly id: number;
      readonly result?: WireResult;
      readonly error?: SandboxFailure;
      readonly logs: readonly PluginLog[];
    }
  | { readonly type: 'fatal'; readonly message: string }
  /** Several results written in one event-loop turn. */
  | { readonly type: 'batch'; readonly items: readonly FromSandbox[] }
  /** The kv storage backend (Redis) was lost (`reason`) or reached again. */
  | { readonly type: 'storage'; readonly up: boolean; readonly where: string; readonly reason?: string }
  /** A one-way call (abort, close) failed: logged by the daemon with plugin, hook and code. */
  | { readonly type: 'notice'; readonly phase: string; readonly error: SandboxFailure; readonly logs: readonly PluginLog[] };
