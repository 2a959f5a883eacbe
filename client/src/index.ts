/**
 * wspresence: the client of a wspresence server, for browsers and Node. See {@link Client}.
 * @packageDocumentation
 */
export { Client } from './client.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  Discontinuity,
  ReceivedMessage,
  Recovery,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export type { BackoffOptions } from './backoff.js';
export type { Listener } from './emitter.js';
export type { Position } from './protocol.js';
export { SUBPROTOCOL } from './protocol.js';
export {
  AuthError,
  ConnectionError,
  MessageTooBigError,
  ProtocolError,
  RateLimitedError,
  TokenError,
  TokenExpiredError,
  TooManyConnectionsError,
  UnavailableError,
  WspresenceError,
} from './errors.js';
export type { ErrorDetails } from './errors.js';
