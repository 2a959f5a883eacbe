/** The WebSocket subprotocol a client asks for to receive positions and recover. */
export const SUBPROTOCOL = 'wspresence.v1';

/** A place in a user's stream of messages: offsets are contiguous from 1 within an epoch. */
export interface Position {
  /** Opaque; changes whenever the server's offsets can no longer be trusted. */
  readonly epoch: string;
  /** The offset of the last message received in that epoch (0: none yet). */
  readonly offset: number;
}

/** A `message` frame: one message for the user, at its position. */
export interface MessageFrame {
  readonly type: 'message';
  readonly epoch: string;
  readonly offset: number;
  readonly messageId: string;
  readonly body: string;
}

/** A `recovered` frame: the answer to the client's `recover` request. */
export interface RecoveredFrame {
  readonly type: 'recovered';
  readonly recovered: boolean;
  /** Set when `recovered` is false: fresh, epoch_changed, too_old, ahead (or a newer one). */
  readonly reason: string;
  readonly epoch: string;
  readonly offset: number;
  readonly replayed: number;
}

/** An `error` frame: the server did not accept a frame; the connection stays open. */
export interface ErrorFrame {
  readonly type: 'error';
  readonly code: string;
  readonly message: string;
}

/**
 * A frame without a `type` but with a `message`: API Gateway's own answer when a route's
 * function failed (`{"message": "Internal server error", ...}`).
 */
export interface GatewayErrorFrame {
  readonly type: 'gateway_error';
  readonly message: string;
}

/** A frame of a type this version does not know; ignored, so servers can add new ones. */
export interface OtherFrame {
  readonly type: 'other';
}

/** A frame that is not what the protocol says (not JSON, a field missing or of the wrong type). */
export interface InvalidFrame {
  readonly type: 'invalid';
  readonly problem: string;
}

/** Every frame the server sends, as parsed by {@link parseFrame}. */
export type ServerFrame = MessageFrame | RecoveredFrame | ErrorFrame | GatewayErrorFrame | OtherFrame | InvalidFrame;

function isOffset(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** parseFrame reads one text frame of the server; it never throws. */
export function parseFrame(data: unknown): ServerFrame {
  if (typeof data !== 'string') return { type: 'invalid', problem: 'not a text frame' };
  let v: unknown;
  try {
    v = JSON.parse(data);
  } catch {
    return { type: 'invalid', problem: 'not JSON' };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { type: 'invalid', problem: 'not a JSON object' };
  const f = v as Record<string, unknown>;
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
      if (typeof f['message'] === 'string') return { type: 'gateway_error', message: f['message'] };
      return { type: 'other' };
    default:
      return { type: 'other' };
  }
}

/** recoverFrame is the client's first frame on a connection: resume after `from`, or start fresh. */
export function recoverFrame(from: Position | undefined): string {
  return JSON.stringify(from ? { action: 'recover', epoch: from.epoch, offset: from.offset } : { action: 'recover' });
}

/** PING_FRAME keeps a connection active for servers that close idle ones. */
export const PING_FRAME = '{"action":"ping"}';
