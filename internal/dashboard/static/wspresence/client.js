import { Backoff } from './backoff.js';
import { Emitter } from './emitter.js';
import { closeError, ConnectionError, ProtocolError, TokenError, WspresenceError } from './errors.js';
import { parseFrame, PING_FRAME, recoverFrame, SUBPROTOCOL } from './protocol.js';
const DEFAULT_STABLE_AFTER_MS = 10_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 15_000;
const DEFAULT_PING_INTERVAL_MS = 300_000;
const CLOSE_WAIT_MS = 2_000;
function duration(name, value, fallback, allowZero) {
    const v = value ?? fallback;
    if (!Number.isFinite(v) || v < 0 || (v === 0 && !allowZero)) {
        throw new RangeError(`${name} must be a ${allowZero ? 'non-negative' : 'positive'} number of milliseconds, got ${v}`);
    }
    return v;
}
/**
 * Client is one user's connection to wspresence. It connects with a token from its getter,
 * asks the server to recover from its last position, and emits each message once and in
 * order; when the connection drops it reconnects with exponential backoff and full jitter,
 * asking for a fresh token each time, and the server replays what was missed within its
 * recovery window (or the client emits `discontinuity`). It stops on errors that retrying
 * cannot fix, and on `close()`. Listeners run synchronously, in the order added.
 */
export class Client {
    #events = new Emitter();
    #url;
    #getToken;
    #WebSocket;
    #backoff;
    #stableAfterMs;
    #connectTimeoutMs;
    #pingIntervalMs;
    #state = 'closed';
    #position;
    #ws;
    /** Bumped by connect(), close() and a fatal error: async work of an older run stops. */
    #run = 0;
    #awaitingRecovery = false;
    #retryTimer;
    #openTimer;
    #stableTimer;
    #pingTimer;
    constructor(options) {
        const url = new URL(String(options.url));
        if (url.protocol === 'http:')
            url.protocol = 'ws:';
        if (url.protocol === 'https:')
            url.protocol = 'wss:';
        if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
            throw new TypeError(`url must be a ws:, wss:, http: or https: address, got ${url.protocol}`);
        }
        this.#url = url;
        if (typeof options.getToken !== 'function')
            throw new TypeError('getToken must be a function');
        this.#getToken = options.getToken;
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (typeof WS !== 'function') {
            throw new TypeError('no WebSocket class: pass options.WebSocket, or run Node 20 with --experimental-websocket');
        }
        this.#WebSocket = WS;
        this.#backoff = new Backoff(options.backoff);
        this.#stableAfterMs = duration('stableAfterMs', options.stableAfterMs, DEFAULT_STABLE_AFTER_MS, true);
        this.#connectTimeoutMs = duration('connectTimeoutMs', options.connectTimeoutMs, DEFAULT_CONNECT_TIMEOUT_MS, false);
        this.#pingIntervalMs = duration('pingIntervalMs', options.pingIntervalMs, DEFAULT_PING_INTERVAL_MS, true);
        const p = options.position;
        if (p !== undefined) {
            if (typeof p.epoch !== 'string' || !Number.isSafeInteger(p.offset) || p.offset < 0) {
                throw new TypeError('position must be {epoch: string, offset: a non-negative integer}');
            }
            this.#position = { epoch: p.epoch, offset: p.offset };
        }
    }
    /** The current state. */
    get state() {
        return this.#state;
    }
    /** The position of the last message received (or recovered to); save it to resume later. */
    get position() {
        return this.#position;
    }
    /** Calls fn on every `name` event; returns a function that stops it. */
    on(name, fn) {
        return this.#events.on(name, fn);
    }
    /** Stops calling fn on `name` events. */
    off(name, fn) {
        this.#events.off(name, fn);
    }
    /** Starts connecting (from the `closed` state; otherwise does nothing). */
    connect() {
        if (this.#state !== 'closed')
            return;
        const run = ++this.#run;
        this.#backoff.reset();
        void this.#open(run);
    }
    /**
     * Closes the connection (code 1000) and stops reconnecting; the state becomes `closed`.
     * The returned promise settles once the socket has closed. `connect()` starts again from
     * the same position.
     */
    close() {
        this.#run++;
        this.#clearTimers();
        this.#awaitingRecovery = false;
        const ws = this.#ws;
        this.#ws = undefined;
        const closed = ws ? closeSocket(ws) : Promise.resolve();
        this.#setState('closed');
        return closed;
    }
    async #open(run) {
        this.#setState('connecting');
        if (run !== this.#run)
            return;
        let token;
        try {
            const t = await this.#getToken();
            if (typeof t !== 'string' || t === '') {
                throw new TypeError(`the token getter returned ${t === '' ? 'an empty string' : typeof t}`);
            }
            token = t;
        }
        catch (err) {
            if (run === this.#run)
                this.#failed(run, err instanceof WspresenceError ? err : new TokenError({ cause: err }));
            return;
        }
        if (run !== this.#run)
            return;
        const url = new URL(this.#url.href);
        url.searchParams.set('Authorization', token);
        let ws;
        try {
            ws = new this.#WebSocket(url.href, [SUBPROTOCOL]);
        }
        catch (err) {
            this.#failed(run, new ConnectionError('cannot open a WebSocket', { cause: err }));
            return;
        }
        this.#ws = ws;
        this.#awaitingRecovery = true;
        this.#armOpenTimer(run, ws);
        ws.onopen = () => {
            if (ws !== this.#ws)
                return;
            if (ws.protocol !== SUBPROTOCOL) {
                this.#abandon(ws);
                this.#failed(run, new ProtocolError(`the server did not select the ${SUBPROTOCOL} subprotocol`, true));
                return;
            }
            ws.send(recoverFrame(this.#position));
        };
        ws.onmessage = (event) => {
            if (ws === this.#ws)
                this.#frame(run, ws, event.data);
        };
        ws.onclose = (event) => {
            if (ws !== this.#ws)
                return;
            this.#ws = undefined;
            this.#failed(run, closeError(event.code, event.reason));
        };
        ws.onerror = () => {
            // A close event follows an error event and says more, except in the WebSocket of
            // Node 20, which fires none when the connection is refused and stays "connecting":
            // without the close event by the next task, the connection has failed.
            setTimeout(() => {
                if (ws !== this.#ws)
                    return;
                this.#abandon(ws);
                this.#failed(run, new ConnectionError('connection failed', { code: 1006 }));
            }, 0);
        };
    }
    /**
     * (Re)starts the bound of an attempt: the open and then each frame of the replay must
     * come within connectTimeoutMs, so a long replay that makes progress is not cut.
     */
    #armOpenTimer(run, ws) {
        clearTimeout(this.#openTimer);
        this.#openTimer = setTimeout(() => {
            if (ws !== this.#ws)
                return;
            this.#abandon(ws);
            this.#failed(run, new ConnectionError(`not recovered within ${this.#connectTimeoutMs} ms`));
        }, this.#connectTimeoutMs);
    }
    #frame(run, ws, data) {
        const f = parseFrame(data);
        switch (f.type) {
            case 'message': {
                if (this.#awaitingRecovery)
                    this.#armOpenTimer(run, ws);
                const at = this.#position;
                if (at && at.epoch === f.epoch && f.offset <= at.offset)
                    return; // delivered already
                if (at && at.epoch === f.epoch && f.offset > at.offset + 1) {
                    // A message ahead of the next one: two deliveries crossed (on AWS, two sender
                    // invocations for one user). Emitting it would skip the one still on its way, so
                    // the connection is dropped and recovered from the position, which replays both
                    // in order.
                    this.#abandon(ws);
                    this.#failed(run, new ConnectionError(`offset ${f.offset} came before ${at.offset + 1}: recovering in order`));
                    return;
                }
                this.#position = { epoch: f.epoch, offset: f.offset };
                this.#events.emit('message', { body: f.body, epoch: f.epoch, offset: f.offset, messageId: f.messageId });
                return;
            }
            case 'recovered':
                if (!this.#awaitingRecovery) {
                    this.#events.emit('error', new ProtocolError('a recovered frame that answers no recover request', false));
                    return;
                }
                this.#recovered(run, ws, f);
                return;
            case 'error':
                this.#events.emit('error', new ProtocolError(`the server refused a frame (${f.code})`, false, { reason: f.message }));
                return;
            case 'gateway_error':
                if (this.#awaitingRecovery) {
                    // The recover route failed and no answer will come: reconnect with backoff.
                    this.#abandon(ws);
                    this.#failed(run, new ConnectionError('the server could not answer recover', { reason: f.message }));
                    return;
                }
                this.#events.emit('error', new ProtocolError('the server failed to handle a frame', false, { reason: f.message }));
                return;
            case 'invalid':
                this.#events.emit('error', new ProtocolError(`unreadable frame: ${f.problem}`, false));
                return;
            case 'other':
                return;
        }
    }
    #recovered(run, ws, f) {
        this.#awaitingRecovery = false;
        clearTimeout(this.#openTimer);
        const at = this.#position;
        if (!f.recovered || !at || at.epoch !== f.epoch || at.offset < f.offset) {
            this.#position = { epoch: f.epoch, offset: f.offset };
        }
        this.#events.emit('recovered', { recovered: f.recovered, reason: f.reason, epoch: f.epoch, offset: f.offset, replayed: f.replayed });
        if (run !== this.#run || ws !== this.#ws)
            return;
        if (!f.recovered && f.reason !== 'fresh') {
            this.#events.emit('discontinuity', { reason: f.reason, epoch: f.epoch, offset: f.offset });
            if (run !== this.#run || ws !== this.#ws)
                return;
        }
        this.#setState('connected');
        if (run !== this.#run || ws !== this.#ws)
            return;
        this.#stableTimer = setTimeout(() => this.#backoff.reset(), this.#stableAfterMs);
        if (this.#pingIntervalMs > 0) {
            this.#pingTimer = setInterval(() => {
                if (ws === this.#ws && ws.readyState === 1)
                    ws.send(PING_FRAME);
            }, this.#pingIntervalMs);
        }
    }
    /** Reports err; then stops if it is fatal, or reconnects after the next backoff delay. */
    #failed(run, err) {
        this.#clearTimers();
        this.#awaitingRecovery = false;
        this.#events.emit('error', err);
        if (run !== this.#run)
            return;
        if (err.fatal) {
            this.#run++;
            this.#setState('closed');
            return;
        }
        const delay = this.#backoff.next();
        this.#setState('disconnected');
        if (run !== this.#run)
            return;
        this.#retryTimer = setTimeout(() => {
            this.#retryTimer = undefined;
            if (run === this.#run)
                void this.#open(run);
        }, delay);
    }
    /** Drops ws without waiting for it: its events are no longer listened to. */
    #abandon(ws) {
        if (this.#ws === ws)
            this.#ws = undefined;
        void closeSocket(ws);
    }
    #clearTimers() {
        clearTimeout(this.#retryTimer);
        clearTimeout(this.#openTimer);
        clearTimeout(this.#stableTimer);
        clearInterval(this.#pingTimer);
        this.#retryTimer = this.#openTimer = this.#stableTimer = this.#pingTimer = undefined;
    }
    #setState(state) {
        if (this.#state === state)
            return;
        this.#state = state;
        this.#events.emit('state', state);
    }
}
/** closeSocket closes ws with 1000 and settles once it has closed (or after a bound). */
function closeSocket(ws) {
    return new Promise((resolve) => {
        ws.onopen = null;
        ws.onmessage = null;
        ws.onerror = null;
        if (ws.readyState === 3) {
            ws.onclose = null;
            resolve();
            return;
        }
        const timer = setTimeout(done, CLOSE_WAIT_MS);
        function done() {
            clearTimeout(timer);
            ws.onclose = null;
            resolve();
        }
        ws.onclose = done;
        try {
            ws.close(1000, 'client closed');
        }
        catch {
            done();
        }
    });
}
