// The generation requests being served, for graceful shutdown: wait until none is left, or cancel
// them all.

/** A registered request; `done()` unregisters it (a second call does nothing). */
export interface InflightEntry {
  done(): void;
}

export class InflightTracker {
  #aborts = new Set<() => void>();
  #idle: (() => void)[] = [];

  /** Generation requests accepted and not yet answered completely (streams included). */
  get count(): number {
    return this.#aborts.size;
  }

  /** Registers a request; call `done()` once its response is complete. */
  add(abort: () => void): InflightEntry {
    const entry = () => abort();
    this.#aborts.add(entry);
    return {
      done: () => {
        if (!this.#aborts.delete(entry) || this.#aborts.size > 0) return;
        for (const resolve of this.#idle.splice(0)) resolve();
      },
    };
  }

  /** Cancels every request in flight; each ends with finish reason "abort" and then leaves. */
  abortAll(): void {
    for (const abort of [...this.#aborts]) abort();
  }

  /** Resolves once no request is in flight (at once if none is). */
  whenIdle(): Promise<void> {
    if (this.#aborts.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }
}
