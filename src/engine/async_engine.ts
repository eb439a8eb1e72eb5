// The engine as the HTTP layer sees it: submit a request, iterate its incremental outputs, cancel
// it by id, read stats. The engine itself runs in a worker thread (engine_worker.ts).
import type { EngineStats } from "./engine.ts";
import type { KvMemoryPlan } from "./kv_memory.ts";
import type { EngineOptions } from "./local_engine.ts";
import type { RequestOutput, RequestParams } from "./request.ts";
import { RemoteError } from "../errors.ts";
import type { FromWorker, ToWorker, WorkerInit } from "./worker_protocol.ts";

/** An error raised inside the engine worker, re-raised here with its original code and name. */
export class EngineError extends RemoteError {}

/** Per-request delivery: outputs queue up until the consumer pulls them. */
class OutputStream {
  #queue: RequestOutput[] = [];
  #error?: Error;
  #wake?: () => void;
  #remaining: number;

  constructor(numSamples: number) {
    this.#remaining = numSamples;
  }

  get isDone(): boolean {
    return this.#remaining === 0 || this.#error !== undefined;
  }

  push(output: RequestOutput): void {
    this.#queue.push(output);
    if (output.finished) this.#remaining--;
    this.#wake?.();
  }

  fail(error: Error): void {
    this.#error = error;
    this.#wake?.();
  }

  async *iterate(): AsyncGenerator<RequestOutput> {
    while (true) {
      while (this.#queue.length > 0) yield this.#queue.shift()!;
      if (this.#error) throw this.#error;
      if (this.#remaining === 0) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

export class AsyncEngine {
  readonly numKvBlocks: number;
  readonly blockSize: number;
  readonly maxModelLen: number;
  readonly loadMs: number;
  readonly weightBytes: number;
  readonly reservedBytes: number;
  readonly kvCacheBytes: number;
  /** How --gpu-memory-utilization sized the KV cache; absent without it. */
  readonly kvMemoryPlan?: KvMemoryPlan;
  #worker: Worker;
  #streams = new Map<string, OutputStream>();
  #stats: EngineStats;
  #lastStepMs = 0;
  #fatal?: Error;
  #failed = Promise.withResolvers<Error>();
  #closed?: () => void;

  private constructor(worker: Worker, ready: Extract<FromWorker, { type: "ready" }>) {
    this.#worker = worker;
    this.numKvBlocks = ready.numKvBlocks;
    this.blockSize = ready.blockSize;
    this.maxModelLen = ready.maxModelLen;
    this.loadMs = ready.loadMs;
    this.weightBytes = ready.weightBytes;
    this.reservedBytes = ready.reservedBytes;
    this.kvCacheBytes = ready.kvCacheBytes;
    if (ready.kvMemoryPlan !== undefined) this.kvMemoryPlan = ready.kvMemoryPlan;
    this.#stats = ready.stats;
    worker.onmessage = (event: MessageEvent<FromWorker>) => this.#receive(event.data);
    worker.onerror = (event) => {
      // An uncaught error in the worker: the engine is gone, so fail like a fatal message.
      event.preventDefault();
      this.#receive({
        type: "fatal",
        error: { code: "worker_failed", name: "EngineError", message: event.message },
      });
    };
  }

  /** Settles with the error if the engine dies; the server exits non-zero to get restarted. */
  get failed(): Promise<Error> {
    return this.#failed.promise;
  }

  /** Starts the worker and waits until the model is loaded. */
  static start(
    options: EngineOptions,
    hooks: { onLoadProgress?: (loadedBytes: number, totalBytes: number) => void } = {},
  ): Promise<AsyncEngine> {
    const worker = new Worker(new URL("./engine_worker.ts", import.meta.url).href, {
      type: "module",
    });
    const init: WorkerInit = { type: "init", options };
    return new Promise((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<FromWorker>) => {
        const message = event.data;
        if (message.type === "load_progress") {
          hooks.onLoadProgress?.(message.loadedBytes, message.totalBytes);
        } else if (message.type === "ready") {
          resolve(new AsyncEngine(worker, message));
        } else if (message.type === "fatal") {
          worker.terminate();
          reject(new EngineError(message.error));
        }
      };
      worker.onerror = (event) => {
        event.preventDefault();
        worker.terminate();
        reject(new Error(`The engine worker failed to start: ${event.message}`));
      };
      worker.postMessage(init satisfies ToWorker);
    });
  }

  #post(message: ToWorker): void {
    if (this.#fatal) throw this.#fatal;
    this.#worker.postMessage(message);
  }

  #receive(message: FromWorker): void {
    switch (message.type) {
      case "outputs":
        this.#stats = message.stats;
        this.#lastStepMs = message.stepMs;
        for (const output of message.outputs) {
          const stream = this.#streams.get(output.requestId);
          if (!stream) continue;
          stream.push(output);
          if (stream.isDone) this.#streams.delete(output.requestId);
        }
        return;
      case "rejected":
        this.#streams.get(message.id)?.fail(new EngineError(message.error));
        this.#streams.delete(message.id);
        return;
      case "fatal":
        // The engine can no longer make progress: fail every open request, refuse new ones. Its
        // code says the worker is gone whatever broke it, so the API ends open streams for good.
        this.#fatal = new EngineError({
          code: "worker_failed",
          name: "EngineError",
          message: `The engine worker failed: ${message.error.message}`,
        });
        for (const stream of this.#streams.values()) stream.fail(this.#fatal);
        this.#streams.clear();
        this.#failed.resolve(this.#fatal);
        return;
      case "closed":
        this.#closed?.();
        return;
      case "load_progress":
        return;
    }
  }

  /**
   * Submits a request and returns its outputs as they are produced; the iterator ends after the
   * last sample finishes. Admission errors (too long, bad parameters) are thrown by the iterator.
   */
  generate(id: string, promptIds: number[], params: RequestParams): AsyncGenerator<RequestOutput> {
    if (this.#streams.has(id)) throw new RangeError(`Request id "${id}" is already in use`);
    const stream = new OutputStream(params.n ?? 1);
    this.#streams.set(id, stream);
    this.#post({ type: "add", id, promptIds, params });
    return stream.iterate();
  }

  /** Cancels a request; its KV blocks are freed before the engine's next step. */
  abort(id: string): void {
    if (!this.#fatal) this.#worker.postMessage({ type: "abort", id } satisfies ToWorker);
  }

  /** The stats after the latest step. */
  get stats(): EngineStats {
    return this.#stats;
  }

  get lastStepMs(): number {
    return this.#lastStepMs;
  }

  /** Frees the model and the KV cache and stops the worker. */
  async shutdown(): Promise<void> {
    if (this.#fatal) {
      this.#worker.terminate();
      return;
    }
    const closed = new Promise<void>((resolve) => (this.#closed = resolve));
    this.#worker.postMessage({ type: "shutdown" } satisfies ToWorker);
    await closed;
    this.#worker.terminate();
  }
}
