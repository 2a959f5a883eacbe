/**
 * wspresence: the client of a wspresence server, for browsers and Node. See {@link Client}.
 * @packageDocumentation
 */
export { Client } from './client.js';
export { SUBPROTOCOL } from './protocol.js';
export { AuthError, ConnectionError, MessageTooBigError, ProtocolError, RateLimitedError, TokenError, TokenExpiredError, TooManyConnectionsError, UnavailableError, WspresenceError, } from './errors.js';
