/**
 * Base class of every error the client reports on its `error` event. `fatal` says what
 * the client does next: when true it has stopped (state `closed`) because trying again
 * cannot succeed; when false it reconnects with backoff (or, for a {@link ProtocolError}
 * answered on an open connection, carries on).
 */
export class WspresenceError extends Error {
    /** The WebSocket close code, or 0 when the error did not come with a close frame. */
    code;
    /** The close reason or the server's error text, as received ("" when none). */
    reason;
    /** True when the client has stopped; false when it tries again by itself. */
    fatal;
    constructor(message, fatal, details = {}) {
        super(message, details.cause === undefined ? undefined : { cause: details.cause });
        this.name = new.target.name;
        this.code = details.code ?? 0;
        this.reason = details.reason ?? '';
        this.fatal = fatal;
    }
}
/**
 * The server refused the token (close 4003 "token refused: <refusal>"): a bad signature,
 * an algorithm or a user id it does not accept. Fatal: the same getter would be refused
 * again. `refusal` is the server's reason code (`signature`, `algorithm`, `user_id`, ...).
 */
export class AuthError extends WspresenceError {
    /** The server's reason code after "token refused: " ("" when it gave none). */
    refusal;
    constructor(details = {}) {
        const refusal = /^token refused:\s*(.*)$/.exec(details.reason ?? '')?.[1] ?? '';
        super(`wspresence: token refused${refusal ? ` (${refusal})` : ''}`, true, details);
        this.refusal = refusal;
    }
}
/** The token had expired (close 4001). Not fatal: the client asks its getter for a new one. */
export class TokenExpiredError extends WspresenceError {
    constructor(details = {}) {
        super('wspresence: token expired; asking the token getter again', false, details);
    }
}
/** The token getter threw or returned something other than a non-empty string. Not fatal. */
export class TokenError extends WspresenceError {
    constructor(details = {}) {
        super('wspresence: the token getter failed', false, details);
    }
}
/** The user is at the server's per-user connection cap (close 4029). Fatal. */
export class TooManyConnectionsError extends WspresenceError {
    constructor(details = {}) {
        super('wspresence: too many connections for this user', true, details);
    }
}
/** The server cannot take the connection now (close 4503: its store cannot write). Not fatal. */
export class UnavailableError extends WspresenceError {
    constructor(details = {}) {
        super('wspresence: server unavailable', false, details);
    }
}
/** The connection sent frames faster than the server allows (close 1008 "rate limit exceeded"). Not fatal. */
export class RateLimitedError extends WspresenceError {
    constructor(details = {}) {
        super('wspresence: closed for exceeding the rate limit', false, details);
    }
}
/** A frame was over the server's size limit (close 1009). Fatal. */
export class MessageTooBigError extends WspresenceError {
    constructor(details = {}) {
        super('wspresence: a frame was over the size limit', true, details);
    }
}
/**
 * The connection could not be opened, did not complete its handshake in time, or closed
 * for any other reason (server shutdown 1001, abnormal 1006, idle timeout, ...). Not fatal.
 */
export class ConnectionError extends WspresenceError {
    constructor(message, details = {}) {
        super(`wspresence: ${message}`, false, details);
    }
}
/**
 * The server and the client do not understand each other: the server answered with an
 * `error` frame (the connection stays open; not fatal), sent a frame the client cannot
 * read (not fatal), or did not select the `wspresence.v1` subprotocol (fatal).
 */
export class ProtocolError extends WspresenceError {
    constructor(message, fatal, details = {}) {
        super(`wspresence: ${message}`, fatal, details);
    }
}
/** closeError translates a close frame's code and reason into the error the client reports. */
export function closeError(code, reason) {
    const details = { code, reason };
    switch (code) {
        case 4001:
            return new TokenExpiredError(details);
        case 4003:
            return new AuthError(details);
        case 4029:
            return new TooManyConnectionsError(details);
        case 4503:
            return new UnavailableError(details);
        case 1009:
            return new MessageTooBigError(details);
        case 1008:
            if (reason === 'rate limit exceeded')
                return new RateLimitedError(details);
            return new ConnectionError(`closed by the server (${code}${reason ? ` ${reason}` : ''})`, details);
        case 1006:
            return new ConnectionError('connection lost', details);
        default:
            return new ConnectionError(`closed by the server (${code}${reason ? ` ${reason}` : ''})`, details);
    }
}
