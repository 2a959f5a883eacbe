/** A listener of one event. */
export type Listener<T> = (event: T) => void;

/**
 * Emitter is a typed, synchronous event emitter. A listener that throws does not stop the
 * others nor the emitter's owner: its exception is rethrown from a microtask, where the
 * platform reports it (the console in a browser, `uncaughtException` in Node).
 */
export class Emitter<Events> {
  readonly #listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Calls fn on every `name` event until the returned function (or off) is called. */
  on<K extends keyof Events>(name: K, fn: Listener<Events[K]>): () => void {
    let set = this.#listeners.get(name);
    if (!set) {
      set = new Set();
      this.#listeners.set(name, set);
    }
    set.add(fn as Listener<never>);
    return () => this.off(name, fn);
  }

  /** Stops calling fn on `name` events. */
  off<K extends keyof Events>(name: K, fn: Listener<Events[K]>): void {
    this.#listeners.get(name)?.delete(fn as Listener<never>);
  }

  /** Calls every listener of `name`, in the order they were added, with event. */
  emit<K extends keyof Events>(name: K, event: Events[K]): void {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<Events[K]>)(event);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
