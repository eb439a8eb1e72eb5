// One benchmark point: send the workload at the arrival times (Poisson/gamma at a rate) under an
// optional cap on requests in flight, collect every request's timings, compute the metrics.
import { arrivalTimesMs } from "./arrivals.ts";
import { type ClientOptions, sendRequest } from "./client.ts";
import { type BenchmarkMetrics, computeMetrics, type RequestResult, type Slo } from "./metrics.ts";
import type { WorkItem } from "./workload.ts";

export interface LoadOptions {
  /** Requests per second; Infinity (default) sends all at once, limited by maxConcurrency. */
  ratePerS?: number;
  burstiness?: number;
  /** At most this many requests in flight; a request due while the cap is reached waits. */
  maxConcurrency?: number;
  seed?: number;
  percentiles?: readonly number[];
  slo?: Slo;
  /** Called after each request completes. */
  onProgress?: (done: number, total: number) => void;
}

export interface PointResult {
  ratePerS: number;
  maxConcurrency?: number;
  metrics: BenchmarkMetrics;
  results: RequestResult[];
  /** Up to 5 distinct error messages of failed requests. */
  errors: string[];
}

/** A counting semaphore for the concurrency cap. */
class Semaphore {
  #free: number;
  #waiting: (() => void)[] = [];
  constructor(size: number) {
    this.#free = size;
  }
  async acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }
  release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

export async function runLoad(
  items: readonly WorkItem[],
  client: ClientOptions,
  options: LoadOptions = {},
): Promise<PointResult> {
  const ratePerS = options.ratePerS ?? Infinity;
  const cap = options.maxConcurrency;
  if (cap !== undefined && (!Number.isSafeInteger(cap) || cap < 1)) {
    throw new RangeError(`Expected a positive max concurrency, got ${cap}`);
  }
  const due = arrivalTimesMs(items.length, {
    ratePerS,
    burstiness: options.burstiness,
    seed: options.seed,
  });
  const semaphore = cap === undefined ? undefined : new Semaphore(cap);
  const started = performance.now();
  let done = 0;
  const tasks = items.map(async (item, i) => {
    const wait = started + due[i] - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    await semaphore?.acquire();
    try {
      const { text: _, ...result } = await sendRequest(item, client, started);
      return result;
    } finally {
      semaphore?.release();
      options.onProgress?.(++done, items.length);
    }
  });
  const results = await Promise.all(tasks);
  const durationMs = performance.now() - started;
  const errors = [...new Set(results.filter((r) => !r.success).map((r) => r.error ?? "?"))];
  return {
    ratePerS,
    maxConcurrency: cap,
    metrics: computeMetrics(results, durationMs, {
      percentiles: options.percentiles,
      slo: options.slo,
    }),
    results,
    errors: errors.slice(0, 5),
  };
}
