/** Settings of the reconnect delay (see {@link Backoff}). */
export interface BackoffOptions {
  /** Cap of the first delay, in milliseconds (default 500). */
  initialMs?: number;
  /** Cap of every delay, in milliseconds (default 20000). */
  maxMs?: number;
}

/** Default cap of the first reconnect delay, in milliseconds. */
export const DEFAULT_INITIAL_MS = 500;
/** Default cap of every reconnect delay, in milliseconds. */
export const DEFAULT_MAX_MS = 20_000;

/**
 * Exponential backoff with full jitter: the n-th delay (n from 0) is drawn uniformly from
 * [0, min(maxMs, initialMs * 2^n)). Spreading the whole interval, rather than adding a
 * little noise to a fixed delay, is what keeps thousands of clients dropped at once by the
 * same event from coming back in step.
 */
export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  #attempt = 0;
  readonly #random: () => number;

  constructor(options: BackoffOptions = {}, random: () => number = Math.random) {
    const initialMs = options.initialMs ?? DEFAULT_INITIAL_MS;
    const maxMs = options.maxMs ?? DEFAULT_MAX_MS;
    if (!Number.isFinite(initialMs) || initialMs <= 0) {
      throw new RangeError(`backoff.initialMs must be a positive number, got ${initialMs}`);
    }
    if (!Number.isFinite(maxMs) || maxMs < initialMs) {
      throw new RangeError(`backoff.maxMs must be a number at least initialMs (${initialMs}), got ${maxMs}`);
    }
    this.initialMs = initialMs;
    this.maxMs = maxMs;
    this.#random = random;
  }

  /** How many delays were drawn since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The cap of the next delay: min(maxMs, initialMs * 2^attempt). */
  ceiling(): number {
    // 2^31 times any positive initialMs is past every useful cap; stop the doubling there.
    return Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.#attempt, 31));
  }

  /** Draws the next delay, in whole milliseconds, and moves to the next attempt. */
  next(): number {
    const ceiling = this.ceiling();
    this.#attempt++;
    return Math.min(ceiling, Math.floor(this.#random() * ceiling));
  }

  /** Starts again from the first delay (after a connection that stayed up). */
  reset(): void {
    this.#attempt = 0;
  }
}
