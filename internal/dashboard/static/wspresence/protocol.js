/** The WebSocket subprotocol a client asks for to receive positions and recover. */
export const SUBPROTOCOL = 'wspresence.v1';
function isOffset(v) {
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}
/** parseFrame reads one text frame of the server; it never throws. */
export function parseFrame(data) {
    if (typeof data !== 'string')
        return { type: 'invalid', problem: 'not a text frame' };
    let v;
    try {
        v = JSON.parse(data);
    }
    catch {
        return { type: 'invalid', problem: 'not JSON' };
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v))
        return { type: 'invalid', problem: 'not a JSON object' };
    const f = v;
    switch (f['type']) {
        case 'message': {
            const { epoch, offset, messageId, body } = f;
            if (typeof epoch !== 'string' || !isOffset(offset) || offset < 1 || typeof messageId !== 'string' || typeof body !== 'string') {
                return { type: 'invalid', problem: 'message frame without a string epoch, messageId and body and an offset of at least 1' };
            }
            return { type: 'message', epoch, offset, messageId, body };
        }
        case 'recovered': {
            const { recovered, reason, epoch, offset, replayed } = f;
            if (typeof recovered !== 'boolean' || typeof epoch !== 'string' || !isOffset(offset)) {
                return { type: 'invalid', problem: 'recovered frame without a boolean recovered, a string epoch and an offset' };
            }
            return {
                type: 'recovered',
                recovered,
                reason: typeof reason === 'string' ? reason : '',
                epoch,
                offset,
                replayed: isOffset(replayed) ? replayed : 0,
            };
        }
        case 'error':
            return {
                type: 'error',
                code: typeof f['code'] === 'string' ? f['code'] : '',
                message: typeof f['message'] === 'string' ? f['message'] : '',
            };
        case undefined:
            if (typeof f['message'] === 'string')
                return { type: 'gateway_error', message: f['message'] };
            return { type: 'other' };
        default:
            return { type: 'other' };
    }
}
/** recoverFrame is the client's first frame on a connection: resume after `from`, or start fresh. */
export function recoverFrame(from) {
    return JSON.stringify(from ? { action: 'recover', epoch: from.epoch, offset: from.offset } : { action: 'recover' });
}
/** PING_FRAME keeps a connection active for servers that close idle ones. */
export const PING_FRAME = '{"action":"ping"}';
