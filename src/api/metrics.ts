// A small Prometheus registry (counters, gauges, histograms with labels) rendered in the text
// exposition format 0.0.4, and the server's own metrics on top of it.
import type { EngineStats } from "../engine/engine.ts";

/** The Content-Type of {@link Registry.render}'s output. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type Labels = Readonly<Record<string, string>>;

export interface MetricOptions {
  name: string;
  help: string;
  labelNames?: readonly string[];
  /** Labels with one value on every sample (e.g. `model_name`), rendered before the others. */
  constLabels?: Labels;
}

export interface HistogramOptions extends MetricOptions {
  /** Upper bounds, strictly increasing and finite; `+Inf` is always added. */
  buckets: readonly number[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeLabelValue(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

function escapeHelp(text: string): string {
  return text.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");
}

function formatValue(value: number): string {
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return Number.isNaN(value) ? "NaN" : String(value);
}

function formatPairs(names: readonly string[], values: readonly string[]): string[] {
  return names.map((name, i) => `${name}="${escapeLabelValue(values[i])}"`);
}

/** What every metric shares: its name, help, label names, and one series per label set. */
class Family<Series> {
  readonly name: string;
  readonly help: string;
  readonly type: string;
  readonly labelNames: readonly string[];
  /** The constant labels, already formatted (`a="x",b="y"`), or "" without any. */
  readonly #constPairs: string[];
  #series = new Map<string, { values: string[]; series: Series }>();
  #create: () => Series;

  constructor(type: string, opts: MetricOptions, create: () => Series) {
    if (!METRIC_NAME.test(opts.name)) throw new RangeError(`Invalid metric name "${opts.name}"`);
    const labelNames = opts.labelNames ?? [];
    const constNames = Object.keys(opts.constLabels ?? {});
    for (const label of [...labelNames, ...constNames]) {
      if (!LABEL_NAME.test(label) || label.startsWith("__")) {
        throw new RangeError(`Invalid label name "${label}" for metric ${opts.name}`);
      }
    }
    if (new Set([...labelNames, ...constNames]).size !== labelNames.length + constNames.length) {
      throw new RangeError(`Duplicate label names for metric ${opts.name}`);
    }
    this.#constPairs = formatPairs(constNames, constNames.map((n) => opts.constLabels![n]));
    this.name = opts.name;
    this.help = opts.help;
    this.type = type;
    this.labelNames = [...labelNames];
    this.#create = create;
    if (labelNames.length === 0) this.series({});
  }

  /** The series of one label set; labels must name exactly this metric's label names. */
  series(labels: Labels): Series {
    const keys = Object.keys(labels);
    if (keys.length !== this.labelNames.length || !this.labelNames.every((n) => n in labels)) {
      throw new RangeError(
        `Metric ${this.name} expects labels [${this.labelNames.join(", ")}], got [${
          keys.join(", ")
        }]`,
      );
    }
    const values = this.labelNames.map((n) => String(labels[n]));
    const key = JSON.stringify(values);
    let entry = this.#series.get(key);
    if (entry === undefined) {
      entry = { values, series: this.#create() };
      this.#series.set(key, entry);
    }
    return entry.series;
  }

  /** `{…}` for one sample: the constant labels, then the series', then `extra`; "" if none. */
  labels(values: readonly string[], extra: Labels = {}): string {
    const extraNames = Object.keys(extra);
    const pairs = [
      ...this.#constPairs,
      ...formatPairs(this.labelNames, values),
      ...formatPairs(extraNames, extraNames.map((n) => extra[n])),
    ];
    return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
  }

  entries(): { values: string[]; series: Series }[] {
    return [...this.#series.values()];
  }

  /** The HELP and TYPE lines; a counter's family is named after its `_total` samples. */
  header(name = this.name): string {
    return `# HELP ${name} ${escapeHelp(this.help)}\n# TYPE ${name} ${this.type}\n`;
  }
}

/** A value that only goes up. */
export class Counter {
  #family: Family<{ value: number }>;

  constructor(opts: MetricOptions) {
    this.#family = new Family("counter", opts, () => ({ value: 0 }));
  }

  inc(value = 1, labels: Labels = {}): void {
    if (!(value >= 0)) throw new RangeError(`A counter can only increase, got ${value}`);
    this.#family.series(labels).value += value;
  }

  /** Sets the total, for a counter that mirrors a total kept elsewhere (the engine's). */
  setTotal(value: number, labels: Labels = {}): void {
    this.#family.series(labels).value = value;
  }

  get(labels: Labels = {}): number {
    return this.#family.series(labels).value;
  }

  render(): string {
    const f = this.#family;
    const lines = f.entries().map(({ values, series }) =>
      `${f.name}_total${f.labels(values)} ${formatValue(series.value)}\n`
    );
    return f.header(`${f.name}_total`) + lines.join("");
  }
}

/** A value that goes up and down. */
export class Gauge {
  #family: Family<{ value: number }>;

  constructor(opts: MetricOptions) {
    this.#family = new Family("gauge", opts, () => ({ value: 0 }));
  }

  set(value: number, labels: Labels = {}): void {
    this.#family.series(labels).value = value;
  }

  inc(value = 1, labels: Labels = {}): void {
    this.#family.series(labels).value += value;
  }

  get(labels: Labels = {}): number {
    return this.#family.series(labels).value;
  }

  render(): string {
    const f = this.#family;
    const lines = f.entries().map(({ values, series }) =>
      `${f.name}${f.labels(values)} ${formatValue(series.value)}\n`
    );
    return f.header() + lines.join("");
  }
}

interface HistogramSeries {
  /** Per-bucket (not cumulative) counts; the last one is +Inf. */
  counts: number[];
  sum: number;
  count: number;
}

/** Observations counted into buckets, with their sum and count. */
export class Histogram {
  readonly buckets: readonly number[];
  #family: Family<HistogramSeries>;

  constructor(opts: HistogramOptions) {
    const buckets = [...opts.buckets];
    if (buckets.length === 0) throw new RangeError(`Histogram ${opts.name} needs buckets`);
    for (const [i, b] of buckets.entries()) {
      if (!Number.isFinite(b) || (i > 0 && b <= buckets[i - 1])) {
        throw new RangeError(
          `Histogram ${opts.name} buckets must be finite and strictly increasing, got ${buckets}`,
        );
      }
    }
    if (opts.labelNames?.includes("le") || "le" in (opts.constLabels ?? {})) {
      throw new RangeError(`Histogram ${opts.name} cannot have a label named "le"`);
    }
    this.buckets = buckets;
    this.#family = new Family(
      "histogram",
      opts,
      () => ({ counts: new Array(buckets.length + 1).fill(0), sum: 0, count: 0 }),
    );
  }

  observe(value: number, labels: Labels = {}): void {
    if (Number.isNaN(value)) throw new RangeError(`Histogram ${this.#family.name} observed NaN`);
    const series = this.#family.series(labels);
    let i = this.buckets.findIndex((b) => value <= b);
    if (i === -1) i = this.buckets.length;
    series.counts[i]++;
    series.sum += value;
    series.count++;
  }

  /** The number of observations of one label set. */
  count(labels: Labels = {}): number {
    return this.#family.series(labels).count;
  }

  render(): string {
    const f = this.#family;
    let out = f.header();
    const bounds = [...this.buckets.map(formatValue), "+Inf"];
    for (const { values, series } of f.entries()) {
      let cumulative = 0;
      for (const [i, le] of bounds.entries()) {
        cumulative += series.counts[i];
        out += `${f.name}_bucket${f.labels(values, { le })} ${cumulative}\n`;
      }
      const labels = f.labels(values);
      out += `${f.name}_sum${labels} ${formatValue(series.sum)}\n`;
      out += `${f.name}_count${labels} ${series.count}\n`;
    }
    return out;
  }
}

type Metric = Counter | Gauge | Histogram;

/** A set of metrics with unique names, rendered together. */
export class Registry {
  #metrics = new Map<string, Metric>();
  #constLabels: Labels;

  /** `constLabels` go on every sample of every metric registered here. */
  constructor(opts: { constLabels?: Labels } = {}) {
    this.#constLabels = { ...opts.constLabels };
  }

  #withConst<O extends MetricOptions>(opts: O): O {
    return { ...opts, constLabels: { ...this.#constLabels, ...opts.constLabels } };
  }

  #add<M extends Metric>(name: string, metric: M): M {
    if (this.#metrics.has(name)) throw new RangeError(`Metric ${name} is already registered`);
    this.#metrics.set(name, metric);
    return metric;
  }

  /** A counter; its samples are named `<name>_total`, so `name` must not end in `_total`. */
  counter(opts: MetricOptions): Counter {
    if (opts.name.endsWith("_total")) {
      throw new RangeError(`Counter names get "_total" appended; drop it from "${opts.name}"`);
    }
    return this.#add(opts.name, new Counter(this.#withConst(opts)));
  }

  gauge(opts: MetricOptions): Gauge {
    return this.#add(opts.name, new Gauge(this.#withConst(opts)));
  }

  histogram(opts: HistogramOptions): Histogram {
    return this.#add(opts.name, new Histogram(this.#withConst(opts)));
  }

  /** The text exposition format 0.0.4. */
  render(): string {
    return [...this.#metrics.values()].map((m) => m.render()).join("");
  }
}

// Latency buckets in seconds: sub-10 ms steps for tiny models up to minutes for long requests.
const TTFT_BUCKETS = [
  0.001,
  0.005,
  0.01,
  0.02,
  0.04,
  0.06,
  0.08,
  0.1,
  0.25,
  0.5,
  0.75,
  1,
  2.5,
  5,
  7.5,
  10,
  20,
  40,
  80,
];
const ITL_BUCKETS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.075,
  0.1,
  0.15,
  0.2,
  0.3,
  0.4,
  0.5,
  0.75,
  1,
  2.5,
  5,
];
const E2E_BUCKETS = [
  0.01,
  0.05,
  0.1,
  0.3,
  0.5,
  0.8,
  1,
  1.5,
  2,
  2.5,
  5,
  10,
  15,
  20,
  30,
  40,
  50,
  60,
  120,
  240,
  480,
];

/**
 * Owns the registry so that it exists, with its constant labels, before {@link Metrics}' field
 * initializers register into it (a derived class initializes its fields after `super()`).
 */
class RegistryOwner {
  readonly registry: Registry;

  constructor(constLabels: Labels) {
    this.registry = new Registry({ constLabels });
  }
}

export interface MetricsOptions {
  /**
   * `"vllm"` exposes vLLM's exact metric names (`vllm:…`, `finished_reason`) so vLLM's Grafana
   * dashboards read them; the default keeps denollm's (`denollm_…`).
   */
  names?: "denollm" | "vllm";
  /** The served model name, as `model_name` on every sample under either names (as vLLM does). */
  modelName?: string;
}

/**
 * The server's metrics. Request counters and latency histograms are fed by the API as outputs
 * arrive (one observation per generated sequence, so a request with n = 4 counts four); the
 * engine gauges and cache counters are copied from the engine's stats at scrape time.
 */
export class Metrics extends RegistryOwner {
  #names: "denollm" | "vllm";

  constructor(opts: MetricsOptions = {}) {
    super(opts.modelName === undefined ? {} : { model_name: opts.modelName });
    this.#names = opts.names ?? "denollm";
  }

  readonly requestsFinished = this.registry.counter({
    name: "denollm_requests",
    help: "Generated sequences that finished, by finish reason (stop, length, abort).",
    labelNames: ["finish_reason"],
  });
  readonly promptTokens = this.registry.counter({
    name: "denollm_prompt_tokens",
    help: "Prompt tokens of admitted requests.",
  });
  readonly generationTokens = this.registry.counter({
    name: "denollm_generation_tokens",
    help: "Generated tokens.",
  });
  readonly httpResponses = this.registry.counter({
    name: "denollm_http_responses",
    help: "HTTP responses by status code.",
    labelNames: ["status"],
  });
  readonly timeToFirstToken = this.registry.histogram({
    name: "denollm_time_to_first_token_seconds",
    help: "Time from receiving a request to its first generated token.",
    buckets: TTFT_BUCKETS,
  });
  readonly interTokenLatency = this.registry.histogram({
    name: "denollm_inter_token_latency_seconds",
    help: "Time between consecutive generated tokens of a sequence.",
    buckets: ITL_BUCKETS,
  });
  readonly e2eLatency = this.registry.histogram({
    name: "denollm_e2e_request_latency_seconds",
    help: "Time from receiving a request to the end of a generated sequence.",
    buckets: E2E_BUCKETS,
  });
  readonly queueTime = this.registry.histogram({
    name: "denollm_request_queue_time_seconds",
    help: "Time a request waited in the engine's queue before it was first scheduled.",
    buckets: E2E_BUCKETS,
  });
  readonly numRunning = this.registry.gauge({
    name: "denollm_num_requests_running",
    help: "Sequences in the engine's running batch.",
  });
  readonly numWaiting = this.registry.gauge({
    name: "denollm_num_requests_waiting",
    help: "Sequences waiting to be scheduled.",
  });
  readonly kvCacheUsage = this.registry.gauge({
    name: "denollm_kv_cache_usage_ratio",
    help: "Fraction of KV cache blocks in use (0 to 1).",
  });
  readonly prefixCacheQueries = this.registry.counter({
    name: "denollm_prefix_cache_queries",
    help: "Prompt tokens looked up in the prefix cache.",
  });
  readonly prefixCacheHits = this.registry.counter({
    name: "denollm_prefix_cache_hits",
    help: "Prompt tokens found in the prefix cache.",
  });
  readonly numPreemptions = this.registry.counter({
    name: "denollm_num_preemptions",
    help: "Requests preempted by the scheduler.",
  });
  // Speculative decoding, named as vLLM names them (vllm:spec_decode_… under --metrics-names vllm).
  readonly specDecodeNumDrafts = this.registry.counter({
    name: "denollm_spec_decode_num_drafts",
    help: "Speculative verification steps of a request with at least one proposed token.",
  });
  readonly specDecodeNumDraftTokens = this.registry.counter({
    name: "denollm_spec_decode_num_draft_tokens",
    help: "Tokens proposed by the speculative proposer.",
  });
  readonly specDecodeNumAcceptedTokens = this.registry.counter({
    name: "denollm_spec_decode_num_accepted_tokens",
    help: "Proposed tokens the target model accepted.",
  });
  readonly specDecodeNumAcceptedTokensPerPos = this.registry.counter({
    name: "denollm_spec_decode_num_accepted_tokens_per_pos",
    help: "Accepted tokens by their position among a step's proposals (0 = the first).",
    labelNames: ["position"],
  });
  // Device sampling (--sampling-device): steps whose sampled tokens came back as ids.
  readonly deviceSamplingSteps = this.registry.counter({
    name: "denollm_device_sampling_steps",
    help: "Engine steps that sampled on the device (dl_sample) and copied back token ids.",
  });
  readonly deviceSamplingStepsWithLogits = this.registry.counter({
    name: "denollm_device_sampling_steps_with_logits",
    help: "Of those, steps that still copied logits for rows sampled on the host.",
  });
  readonly deviceSampledTokens = this.registry.counter({
    name: "denollm_device_sampled_tokens",
    help: "Tokens sampled on the device.",
  });

  /** Copies the engine's stats into the gauges and mirrored counters. */
  updateFromEngine(stats: EngineStats): void {
    this.numRunning.set(stats.numRunning);
    this.numWaiting.set(stats.numWaiting);
    const used = stats.numKvBlocks - stats.numFreeKvBlocks;
    this.kvCacheUsage.set(stats.numKvBlocks > 0 ? used / stats.numKvBlocks : 0);
    this.prefixCacheQueries.setTotal(stats.prefixCacheQueries);
    this.prefixCacheHits.setTotal(stats.prefixCacheHits);
    this.numPreemptions.setTotal(stats.numPreemptions);
    const spec = stats.specDecode;
    if (spec !== undefined) {
      this.specDecodeNumDrafts.setTotal(spec.numDrafts);
      this.specDecodeNumDraftTokens.setTotal(spec.numDraftTokens);
      this.specDecodeNumAcceptedTokens.setTotal(spec.numAcceptedTokens);
      for (const [position, n] of spec.numAcceptedTokensPerPos.entries()) {
        this.specDecodeNumAcceptedTokensPerPos.setTotal(n, { position: String(position) });
      }
    }
    const device = stats.deviceSampling;
    if (device !== undefined) {
      this.deviceSamplingSteps.setTotal(device.numSteps);
      this.deviceSamplingStepsWithLogits.setTotal(device.numStepsWithLogits);
      this.deviceSampledTokens.setTotal(device.numTokens);
    }
  }

  render(): string {
    const text = this.registry.render();
    return this.#names === "vllm" ? asVllmMetrics(text) : text;
  }
}

/** denollm's metric names as vLLM (v1) spells them; the rest become `vllm:<name>`. */
const VLLM_NAMES: Record<string, string> = {
  denollm_requests_total: "vllm:request_success_total",
  denollm_kv_cache_usage_ratio: "vllm:kv_cache_usage_perc",
  // vLLM has no such metric: kept under its own name.
  denollm_http_responses_total: "denollm_http_responses_total",
};

function vllmName(name: string): string {
  if (name in VLLM_NAMES) return VLLM_NAMES[name];
  return name.startsWith("denollm_") ? `vllm:${name.slice("denollm_".length)}` : name;
}

/** Rewrites rendered samples to vLLM's names and label names (the values stay as they are). */
export function asVllmMetrics(text: string): string {
  return text.split("\n").map((line) => {
    if (line === "") return line;
    if (line.startsWith("# ")) {
      const [hash, kind, name, ...rest] = line.split(" ");
      return [hash, kind, vllmName(name), ...rest].join(" ");
    }
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) return line;
    const [, sample, labels = "", value] = match;
    const suffix = /_(bucket|sum|count)$/.exec(sample);
    const base = suffix !== null && !(sample in VLLM_NAMES)
      ? `${vllmName(sample.slice(0, -suffix[0].length))}${suffix[0]}`
      : vllmName(sample);
    // Walks whole `name="value"` pairs, so a value (a model name) that spells a label is kept.
    const renamed = labels.replace(
      /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g,
      (_, name: string, value: string) =>
        `${name === "finish_reason" ? "finished_reason" : name}="${value}"`,
    );
    return renamed === "" ? `${base} ${value}` : `${base}{${renamed}} ${value}`;
  }).join("\n");
}
