// One API request's engine work: its prompts submitted together, their outputs merged as they
// arrive, metrics recorded per sequence, and everything aborted when the client goes away.
import type { EngineStats } from "../engine/engine.ts";
import type { RequestOutput, RequestParams } from "../engine/request.ts";
import { ApiError, type ErrorBody } from "./errors.ts";
import type { RunStats } from "./request_log.ts";
import type { Metrics } from "./metrics.ts";
import { sseResponse } from "./sse.ts";

/** The engine as the API uses it; AsyncEngine satisfies it. */
export interface EngineClient {
  generate(id: string, promptIds: number[], params: RequestParams): AsyncIterator<RequestOutput>;
  abort(id: string): void;
  readonly stats: EngineStats;
  readonly maxModelLen: number;
}

/** One prompt of a request and its engine parameters. */
export interface Submission {
  promptIds: number[];
  params: RequestParams;
}

/** An engine output and the prompt (position in the request) it belongs to. */
export interface RunEvent {
  prompt: number;
  output: RequestOutput;
}

type Pulled<T> = { source: number; result: IteratorResult<T> } | {
  source: number;
  error: unknown;
};

/** Yields the values of several iterators as they arrive, tagged with their position. */
async function* merge<T>(
  iterators: AsyncIterator<T>[],
  onDone: (source: number) => void,
): AsyncGenerator<{ source: number; value: T }> {
  const pending = new Map<number, Promise<Pulled<T>>>();
  const pull = (source: number) => {
    // Errors become values so that a pull nobody awaits any more is never an unhandled rejection.
    pending.set(
      source,
      iterators[source].next().then(
        (result) => ({ source, result }),
        (error) => ({ source, error }),
      ),
    );
  };
  iterators.forEach((_, i) => pull(i));
  while (pending.size > 0) {
    const pulled = await Promise.race(pending.values());
    if ("error" in pulled) throw pulled.error;
    if (pulled.result.done) {
      pending.delete(pulled.source);
      onDone(pulled.source);
      continue;
    }
    pull(pulled.source);
    yield { source: pulled.source, value: pulled.result.value };
  }
}

/**
 * Submits `submissions` as engine requests `${id}-${i}` when iterated, and merges their outputs.
 * The run aborts its unfinished engine requests when `signal` fires, when {@link abort} is
 * called, or when the consumer stops iterating early, so their KV blocks return at once.
 */
export class GenerationRun {
  readonly id: string;
  #engine: EngineClient;
  #submissions: Submission[];
  #metrics: Metrics;
  #signal?: AbortSignal;
  #active = new Set<string>();
  #startMs = performance.now();
  /** When each sequence (`prompt:index`) last produced tokens; present once it has output. */
  #lastTokenMs = new Map<string, number | undefined>();
  #isAborted = false;
  #numFinished = 0;

  #stats?: RunStats;

  constructor(
    engine: EngineClient,
    submissions: Submission[],
    opts: { id: string; metrics: Metrics; signal?: AbortSignal; stats?: RunStats },
  ) {
    this.id = opts.id;
    this.#stats = opts.stats;
    if (this.#stats !== undefined) this.#stats.id = opts.id;
    this.#engine = engine;
    this.#submissions = submissions;
    this.#metrics = opts.metrics;
    this.#signal = opts.signal;
  }

  /** The prompt tokens this run submits (n > 1 samples share their prompt). */
  get numPromptTokens(): number {
    return this.#submissions.reduce((sum, s) => sum + s.promptIds.length, 0);
  }

  /** Cancels the engine requests still running; their outputs end with finish reason "abort". */
  abort = (): void => {
    this.#isAborted = true;
    for (const id of this.#active) this.#engine.abort(id);
  };

  async *events(): AsyncGenerator<RunEvent> {
    this.#signal?.addEventListener("abort", this.abort);
    let isFailed = false;
    try {
      const ids = this.#submissions.map((_, i) => `${this.id}-${i}`);
      const iterators = this.#submissions.map((s, i) => {
        this.#active.add(ids[i]);
        return this.#engine.generate(ids[i], s.promptIds, s.params);
      });
      if (this.#signal?.aborted || this.#isAborted) this.abort();
      for await (
        const { source, value } of merge(iterators, (i) => this.#active.delete(ids[i]))
      ) {
        this.#record(source, value);
        yield { prompt: source, output: value };
      }
    } catch (error) {
      isFailed = true;
      throw error;
    } finally {
      this.#signal?.removeEventListener("abort", this.abort);
      for (const id of this.#active) this.#engine.abort(id);
      this.#active.clear();
      // A consumer that stopped early never sees the abort outputs; count those sequences here.
      const numSequences = this.#submissions.reduce((sum, s) => sum + (s.params.n ?? 1), 0);
      const numUnseen = numSequences - this.#numFinished;
      if (!isFailed && numUnseen > 0) {
        this.#metrics.requestsFinished.inc(numUnseen, { finish_reason: "abort" });
        this.#stats?.finishReasons.push("abort");
      }
      if (this.#stats !== undefined) {
        this.#stats.isEnded = true;
        this.#stats.onEnd?.();
      }
    }
  }

  #record(prompt: number, output: RequestOutput): void {
    const m = this.#metrics;
    const now = performance.now();
    const key = `${prompt}:${output.index}`;
    const stats = this.#stats;
    if (!this.#lastTokenMs.has(key)) {
      this.#lastTokenMs.set(key, undefined);
      if (output.index === 0) m.promptTokens.inc(output.numPromptTokens);
      if (output.queueMs !== undefined) m.queueTime.observe(output.queueMs / 1000);
      if (stats !== undefined) {
        if (output.index === 0) stats.promptTokens += output.numPromptTokens;
        if (output.queueMs !== undefined) {
          stats.queueMs = Math.max(stats.queueMs ?? 0, output.queueMs);
        }
      }
    }
    const numNew = output.newTokenIds.length;
    if (numNew > 0) {
      m.generationTokens.inc(numNew);
      if (stats !== undefined) stats.outputTokens += numNew;
      const lastMs = this.#lastTokenMs.get(key);
      if (lastMs === undefined) {
        m.timeToFirstToken.observe((now - this.#startMs) / 1000);
        if (stats !== undefined && stats.ttftMs === undefined) stats.ttftMs = now - this.#startMs;
      } else {
        const perToken = (now - lastMs) / 1000 / numNew;
        for (let i = 0; i < numNew; i++) m.interTokenLatency.observe(perToken);
      }
      this.#lastTokenMs.set(key, now);
    }
    if (output.finished) {
      this.#numFinished++;
      // Speculation counts are cumulative per sequence: taken once, when it ends.
      if (stats !== undefined && output.specDecode !== undefined) {
        stats.numDraftTokens = (stats.numDraftTokens ?? 0) + output.specDecode.numDraftTokens;
        stats.numAcceptedTokens = (stats.numAcceptedTokens ?? 0) +
          output.specDecode.numAcceptedTokens;
      }
      m.requestsFinished.inc(1, { finish_reason: output.finishReason ?? "stop" });
      stats?.finishReasons.push(output.finishReason ?? "stop");
      m.e2eLatency.observe((now - this.#startMs) / 1000);
    }
  }
}

/** `first` followed by the rest of `rest`; closing this closes `rest`. */
async function* prepend<T>(first: IteratorResult<T>, rest: AsyncGenerator<T>): AsyncGenerator<T> {
  try {
    if (first.done) return;
    yield first.value;
    yield* rest;
  } finally {
    await rest.return(undefined);
  }
}

/** A run underway and registered as in flight; call `done()` once its response is complete. */
export interface StartedRun {
  events: AsyncGenerator<RunEvent>;
  done(): void;
}

/** Where a run registers: InflightTracker, or anything that counts requests the same way. */
export interface RunRegistry {
  add(abort: () => void, opts?: { numPromptTokens?: number }): {
    started?(): void;
    done(): void;
  };
  /** A run with no output after this long is aborted with a 503 (queued too long). */
  readonly maxQueueDelayMs?: number;
}

/** How long an aborted run may take to hand back its abort output before we stop waiting. */
const ABORT_WAIT_MS = 1000;

function queueTimeout(delayMs: number): ApiError {
  return new ApiError(
    503,
    `The request waited more than ${delayMs / 1000} s in the queue without starting; the server ` +
      `is overloaded, try again later`,
    { code: "queue_timeout", headers: { "Retry-After": "5" } },
  );
}

/**
 * Submits the run and waits for its first output, so that the engine's admission errors are
 * thrown here, before a streaming response has sent its status. The first output is what marks
 * a run as started: one with none after `maxQueueDelayMs` is aborted and answered with a 503
 * (a stream has sent nothing yet, so it gets the same JSON error).
 */
export async function startRun(run: GenerationRun, inflight: RunRegistry): Promise<StartedRun> {
  const entry = inflight.add(run.abort, { numPromptTokens: run.numPromptTokens });
  const events = run.events();
  const delayMs = inflight.maxQueueDelayMs;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const next = events.next();
    let first: IteratorResult<RunEvent> | "timeout";
    if (delayMs === undefined || !Number.isFinite(delayMs)) {
      first = await next;
    } else {
      const timedOut = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), delayMs);
      });
      first = await Promise.race([next, timedOut]);
    }
    if (first === "timeout") {
      run.abort();
      // The abort output frees the engine request; closing the generator then unregisters it.
      const settled = next.then(() => {}, () => {});
      await Promise.race([settled, new Promise((resolve) => setTimeout(resolve, ABORT_WAIT_MS))]);
      settled.then(() => events.return(undefined)).catch(() => {});
      throw queueTimeout(delayMs!);
    }
    entry.started?.();
    return { events: prepend(first, events), done: entry.done };
  } catch (error) {
    entry.done();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** A response format: SSE chunks when streaming, or one JSON body collected from all events. */
export interface ResponseShape {
  chunks(events: AsyncIterable<RunEvent>): AsyncGenerator<unknown>;
  collect(events: AsyncIterable<RunEvent>): Promise<unknown>;
}

/**
 * Starts a run and answers with its events in the given shape; shared by the completion and chat
 * routes. The run stays registered as in flight until its response is complete.
 */
export async function respondWithRun(
  run: GenerationRun,
  shape: ResponseShape,
  options: {
    id: string;
    stream: boolean;
    inflight: RunRegistry;
    toErrorBody: (error: unknown) => ErrorBody;
  },
): Promise<Response> {
  const started = await startRun(run, options.inflight);
  const headers = { "X-Request-Id": options.id };
  if (options.stream) {
    return sseResponse(shape.chunks(started.events), {
      onCancel: run.abort,
      onClose: started.done,
      onError: options.toErrorBody,
    }, headers);
  }
  try {
    return Response.json(await shape.collect(started.events), { headers });
  } finally {
    started.done();
  }
}
