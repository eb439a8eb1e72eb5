// The generation requests being served, for graceful shutdown and admission: wait until none is
// left, cancel them all, and count the prompt tokens still queued.
import { ApiError } from "./errors.ts";

/** A registered request; `done()` unregisters it (a second call does nothing). */
export interface InflightEntry {
  /** The request produced its first output: its prompt no longer counts as queued. */
  started(): void;
  done(): void;
}

export interface InflightLimits {
  /**
   * A request is refused (429) when the prompt tokens of requests still waiting for their first
   * output, its own included, would exceed this. A request alone in the queue is always admitted.
   */
  maxQueuedPromptTokens?: number;
  /** A request with no output this long after it was queued is aborted with a 503. */
  maxQueueDelayMs?: number;
}

export class InflightTracker {
  #aborts = new Set<() => void>();
  #idle: (() => void)[] = [];
  #numQueuedPromptTokens = 0;
  #maxQueuedPromptTokens: number;
  readonly maxQueueDelayMs?: number;

  constructor(limits: InflightLimits = {}) {
    this.#maxQueuedPromptTokens = limits.maxQueuedPromptTokens ?? Infinity;
    this.maxQueueDelayMs = limits.maxQueueDelayMs;
  }

  /** Generation requests accepted and not yet answered completely (streams included). */
  get count(): number {
    return this.#aborts.size;
  }

  /** Prompt tokens of the requests accepted that have not produced output yet. */
  get numQueuedPromptTokens(): number {
    return this.#numQueuedPromptTokens;
  }

  /**
   * Registers a request with `numPromptTokens` queued until `started()`; call `done()` once its
   * response is complete. Throws a 429 when the queued prompt tokens would pass the limit.
   */
  add(abort: () => void, opts: { numPromptTokens?: number } = {}): InflightEntry {
    const numTokens = opts.numPromptTokens ?? 0;
    const queued = this.#numQueuedPromptTokens;
    if (queued > 0 && queued + numTokens > this.#maxQueuedPromptTokens) {
      throw new ApiError(
        429,
        `The server is busy (${queued} prompt tokens waiting, the limit is ` +
          `${this.#maxQueuedPromptTokens}); try again shortly`,
        { code: "queue_full", headers: { "Retry-After": "1" } },
      );
    }
    this.#numQueuedPromptTokens += numTokens;
    let isQueued = true;
    const started = () => {
      if (!isQueued) return;
      isQueued = false;
      this.#numQueuedPromptTokens -= numTokens;
    };
    const entry = () => abort();
    this.#aborts.add(entry);
    return {
      started,
      done: () => {
        started();
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
