/**
 * Messages between the daemon and a plugin's sandbox process: set-up and process-wide events on
 * Node's IPC channel (ToSandbox, FromSandbox), calls and their results on each lane's own pipe
 * (ToLane, FromSandbox; frames.ts), and between the process's main thread and its lane threads
 * (LaneData, ToMain). All use V8 serialization, so Uint8Array bodies cross as bytes.
 * @module
 */
import type { Capability, WireCall, WireDescription, WireResult } from '../../sdk/src/protocol.ts';
import type { StorageSettings } from './kv.ts';

/** Limits enforced inside the sandbox process. */
export interface SandboxLimits {
  /** Isolate heap limit (isolated-vm memoryLimit), MB. */
  readonly memoryMb: number;
  /** Time one call may spend running in the isolate (isolated-vm `timeout` on each entry), ms. */
  readonly cpuMs: number;
  /** Wall-clock time of one call, waits for host services included, ms. */
  readonly wallMs: number;
}

/** Daemon → sandbox. */
export type ToSandbox = {
      readonly type: 'init';
      readonly plugin: string;
      /** The SDK runtime module (one ESM file, no imports). */
      readonly sdkCode: string;
      /** The plugin bundle (one ESM file importing only '@milterd/sdk'). */
      readonly pluginCode: string;
      readonly capabilities: readonly Capability[];
      readonly limits: SandboxLimits;
      /** Lanes (threads, one isolate each; one pipe each, stdio 4, 5, ...): calls of different connections run in parallel across them. */
      readonly poolSize: number;
      /** Plugin options from the configuration, passed to the plugin as ctx.options. */
      readonly options: unknown;
      /** Where the plugin's kv data lives (configuration `storage`); absent: in memory. */
      readonly storage?: StorageSettings;
    };

/** Daemon → one lane, on its pipe. Several may travel in one write (one frame each). */
export type ToLane =
  | { readonly type: 'call'; readonly id: number; readonly call: WireCall }
  /** A call with no answer (abort, close): queued in order with the connection's calls. */
  | { readonly type: 'notify'; readonly call: WireCall };

/** What the sandbox process's main thread gives each lane thread (workerData). */
export interface LaneData {
  readonly init: Omit<Extract<ToSandbox, { type: 'init' }>, 'type' | 'storage' | 'poolSize'>;
  /** Index of this lane: its pipe is fd 4 + lane, its watchdog deadline stuck[lane]. */
  readonly lane: number;
  readonly fd: number;
  /** Float64Array of the lanes' entry deadlines (Date.now() ms, 0 between entries). */
  readonly stuck: SharedArrayBuffer;
}

/** Lane thread → the process's main thread. */
export type ToMain =
  | { readonly type: 'ready'; readonly description: WireDescription }
  | { readonly type: 'init-error'; readonly error: SandboxFailure }
  | { readonly type: 'kv'; readonly id: number; readonly op: unknown; readonly key: unknown; readonly value: unknown; readonly ttl: unknown };

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
  /** A one-way call (abort, close) failed: logged by the daemon with plugin, hook and code. */
  | { readonly type: 'notice'; readonly phase: string; readonly error: SandboxFailure; readonly logs: readonly PluginLog[] };
