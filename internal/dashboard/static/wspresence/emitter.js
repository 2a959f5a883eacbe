/**
 * Emitter is a typed, synchronous event emitter. A listener that throws does not stop the
 * others nor the emitter's owner: its exception is rethrown from a microtask, where the
 * platform reports it (the console in a browser, `uncaughtException` in Node).
 */
export class Emitter {
    #listeners = new Map();
    /** Calls fn on every `name` event until the returned function (or off) is called. */
    on(name, fn) {
        let set = this.#listeners.get(name);
        if (!set) {
            set = new Set();
            this.#listeners.set(name, set);
        }
        set.add(fn);
        return () => this.off(name, fn);
    }
    /** Stops calling fn on `name` events. */
    off(name, fn) {
        this.#listeners.get(name)?.delete(fn);
    }
    /** Calls every listener of `name`, in the order they were added, with event. */
    emit(name, event) {
        const set = this.#listeners.get(name);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(event);
            }
            catch (err) {
                queueMicrotask(() => {
                    throw err;
                });
            }
        }
    }
}
