/**
 * The pure milter codec: wire constants, packet types, bytes → packets, packets → bytes, and
 * SMTP reply-code formatting. No sockets, logger or plugin types.
 * @module
 */
export * from './constants.ts';
export type * from './types.ts';
export * from './decoder.ts';
export * from './encoder.ts';
export * from './reply-code.ts';
