// Serving metrics with vLLM's definitions (`vllm bench serve`, vllm/benchmarks/serve.py
// calculate_metrics): TTFT, TPOT, ITL, E2EL, throughputs and goodput from per-request timings.

/** What the client saw of one request. Times are milliseconds on the client's clock. */
export interface RequestResult {
  success: boolean;
  error?: string;
  /** When the request was sent, relative to the benchmark's start. */
  startMs: number;
  /** Send to the first chunk that carried a token. */
  ttftMs: number;
  /** Gaps between consecutive token-carrying chunks (one chunk may carry several tokens). */
  itlMs: number[];
  /** Send to the last token-carrying chunk (the trailing usage chunk does not count). */
  e2elMs: number;
  /** `usage.prompt_tokens` when the server sent it, else the client's own count. */
  promptTokens: number;
  /** `usage.completion_tokens` when the server sent it, else the number of token chunks. */
  outputTokens: number;
}

/** Service-level objectives for goodput; a request is good when it meets every one given. */
export interface Slo {
  ttftMs?: number;
  tpotMs?: number;
  e2elMs?: number;
}

export interface Summary {
  mean: number;
  median: number;
  std: number;
  /** Percentile p (0–100) → value. */
  percentiles: Record<string, number>;
}

export interface BenchmarkMetrics {
  completed: number;
  failed: number;
  totalInputTokens: number;
  totalOutputTokens: number;
  durationS: number;
  requestThroughput: number;
  /** Good requests per second; absent when no SLO was given. */
  requestGoodput?: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  ttftMs: Summary;
  tpotMs: Summary;
  itlMs: Summary;
  e2elMs: Summary;
  /** Most requests in flight at once (half-open [start, start + e2el) intervals). */
  maxConcurrency: number;
}

/** numpy.percentile's default ("linear"): interpolates between the two nearest ranks. */
export function percentile(values: readonly number[], p: number): number {
  if (!(p >= 0 && p <= 100)) throw new RangeError(`Expected a percentile in [0, 100], got ${p}`);
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

/**
 * Mean, median, population standard deviation and percentiles. An empty list summarizes to zeros,
 * as vLLM reports (for example ITL when every request produced a single token).
 */
export function summarize(values: readonly number[], percentiles: readonly number[]): Summary {
  const n = values.length;
  const mean = n ? values.reduce((a, b) => a + b, 0) / n : 0;
  const variance = n ? values.reduce((a, b) => a + (b - mean) ** 2, 0) / n : 0;
  return {
    mean,
    median: percentile(values, 50),
    std: Math.sqrt(variance),
    percentiles: Object.fromEntries(percentiles.map((p) => [String(p), percentile(values, p)])),
  };
}

/** (E2EL − TTFT) / (output tokens − 1); undefined for a request with at most one output token. */
export function tpotMs(r: RequestResult): number | undefined {
  return r.outputTokens > 1 ? (r.e2elMs - r.ttftMs) / (r.outputTokens - 1) : undefined;
}

/** Whether a successful request meets every SLO given (vLLM counts TPOT as 0 for 1-token outputs). */
export function meetsSlo(r: RequestResult, slo: Slo): boolean {
  if (slo.ttftMs !== undefined && r.ttftMs > slo.ttftMs) return false;
  if (slo.tpotMs !== undefined && (tpotMs(r) ?? 0) > slo.tpotMs) return false;
  if (slo.e2elMs !== undefined && r.e2elMs > slo.e2elMs) return false;
  return true;
}

/** Peak number of overlapping [startMs, startMs + e2elMs) intervals. */
export function maxConcurrency(results: readonly RequestResult[]): number {
  const events: [number, number][] = [];
  for (const r of results) events.push([r.startMs, 1], [r.startMs + r.e2elMs, -1]);
  // An end and a start at the same instant do not overlap: ends (-1) sort first.
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let peak = 0;
  for (const [, delta] of events) peak = Math.max(peak, now += delta);
  return peak;
}

export interface MetricsOptions {
  percentiles?: readonly number[];
  slo?: Slo;
}

/**
 * The benchmark's metrics over `durationMs` (send of the first request to the end of the last).
 * Failed requests count in `failed` only; token totals and latencies cover successful ones.
 */
export function computeMetrics(
  results: readonly RequestResult[],
  durationMs: number,
  options: MetricsOptions = {},
): BenchmarkMetrics {
  if (!(durationMs > 0)) throw new RangeError(`Expected a positive duration, got ${durationMs}`);
  const pcts = options.percentiles ?? [50, 90, 99];
  const ok = results.filter((r) => r.success);
  const durationS = durationMs / 1000;
  const totalInputTokens = ok.reduce((n, r) => n + r.promptTokens, 0);
  const totalOutputTokens = ok.reduce((n, r) => n + r.outputTokens, 0);
  const slo = options.slo;
  const hasSlo = slo !== undefined &&
    (slo.ttftMs !== undefined || slo.tpotMs !== undefined || slo.e2elMs !== undefined);
  return {
    completed: ok.length,
    failed: results.length - ok.length,
    totalInputTokens,
    totalOutputTokens,
    durationS,
    requestThroughput: ok.length / durationS,
    requestGoodput: hasSlo ? ok.filter((r) => meetsSlo(r, slo)).length / durationS : undefined,
    outputThroughput: totalOutputTokens / durationS,
    totalTokenThroughput: (totalInputTokens + totalOutputTokens) / durationS,
    ttftMs: summarize(ok.map((r) => r.ttftMs), pcts),
    tpotMs: summarize(ok.map(tpotMs).filter((t) => t !== undefined), pcts),
    itlMs: summarize(ok.flatMap((r) => r.itlMs), pcts),
    e2elMs: summarize(ok.map((r) => r.e2elMs), pcts),
    maxConcurrency: maxConcurrency(ok),
  };
}

/** Parses vLLM's `--goodput` form: "ttft:500,tpot:50" (or space separated), milliseconds. */
export function parseSlo(text: string): Slo {
  const slo: Slo = {};
  for (const part of text.split(/[\s,]+/).filter((p) => p !== "")) {
    const [key, value] = part.split(":");
    const ms = Number(value);
    if (!(ms > 0)) {
      throw new RangeError(
        `Expected an SLO like "ttft:500" with a positive ms value, got "${part}"`,
      );
    }
    if (key === "ttft") slo.ttftMs = ms;
    else if (key === "tpot") slo.tpotMs = ms;
    else if (key === "e2el") slo.e2elMs = ms;
    else throw new RangeError(`Expected an SLO on ttft, tpot or e2el, got "${key}"`);
  }
  return slo;
}
