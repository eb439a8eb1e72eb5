// `denollm serve` configuration: every flag is also a DENOLLM_<NAME> environment variable (flags
// win), parsed and validated with zod into one typed ServeConfig.
import { parseArgs } from "node:util";
import { z } from "zod";
import { TOOL_CALL_PARSERS, type ToolCallParser } from "../api/tools.ts";
import { ENGINE_DEFAULTS, type SpeculativeOptions } from "../engine/local_engine.ts";
import { speculativeOptions } from "../cli/engine_flags.ts";
import { SAMPLING_DEVICES, type SamplingDevice } from "../engine/sampling_device.ts";
import { defaultNumThreads } from "../engine/threads.ts";
import { UsageError } from "../errors.ts";
import { parseQuantization } from "../model/quantize.ts";
import { checkParallelOptions, type ParallelOptions } from "../parallel/plan.ts";

export type Device = { kind: "auto" } | { kind: "cpu" } | { kind: "cuda"; ordinal?: number };

export interface ServeConfig {
  /** Local HF directory, .gguf file, or Hugging Face repo id (`org/name`, `org/name:FILE.gguf`). */
  model: string;
  revision: string;
  /**
   * vLLM's --load-format: "auto" reads the checkpoint's weights; "dummy" makes random ones of its
   * config.json's shape in memory (seeded by --seed, or 0), for benchmarks.
   */
  loadFormat?: "auto" | "dummy";
  /** Quantize F32/F16/BF16 weights on load: a format name (src/model/quantize.ts). */
  quantization?: string;
  /** `--sparsity 2:4`: prune and compress the layer projections on load (src/model/compress.ts). */
  sparsity?: string;
  /** False with `--no-mmap`: copy weights into memory instead of mapping them from the file. */
  mmap: boolean;
  /** `--enforce-eager` (vLLM's name): no CUDA graphs, every step runs eagerly. */
  enforceEager: boolean;
  /** A `deno task calibrate` file (SmoothQuant, outlier channels, Wanda norms). */
  calibration?: string;
  host: string;
  /** 0 picks a free port (logged once listening). */
  port: number;
  servedModelName: string;
  apiKey?: string;
  /** Unset: the model's own maximum (max_position_embeddings). */
  maxModelLen?: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** The KV cache's bytes (default 1 GiB); absent when --gpu-memory-utilization sizes it. */
  kvCacheMemoryBytes?: number;
  /**
   * vLLM's --gpu-memory-utilization, in (0, 1]: the share of the device's memory (the host's on
   * the CPU build) the engine may hold; the KV cache gets what weights and steps leave.
   */
  gpuMemoryUtilization?: number;
  blockSize: number;
  /** Element type of cached K and V: f32 keeps CPU attention exact, f16/bf16 halve its memory. */
  kvCacheDtype: "f32" | "f16" | "bf16";
  /** CPU threads for kernels; 0 = all cores. */
  numThreads: number;
  device: Device;
  /** Where tokens are sampled (src/engine/sampling_device.ts); unset: auto. */
  samplingDevice?: SamplingDevice;
  scheduler: "continuous" | "static";
  enablePrefixCaching: boolean;
  maxQueuedRequests: number;
  shutdownTimeoutMs: number;
  logFormat: "text" | "json";
  hfCacheDir: string;
  /** The tool-call format to parse (vLLM's --tool-call-parser); unset: the chat template's. */
  toolCallParser?: ToolCallParser;
  /** Speculative decoding (--speculative-model and the flags with it); unset: off. */
  speculative?: SpeculativeOptions;
  /** Ranks across processes and hosts; unset: one process. */
  parallel?: ParallelOptions;
}

/** What the server holds its clients to: deadlines, queue bounds and cross-origin access. */
export interface ClientLimits {
  /** A POST body not complete this long after its headers is answered 408. */
  bodyTimeoutMs: number;
  /** A generation request with no output this long after it was queued is answered 503. */
  maxQueueDelayMs: number;
  /** New requests get a 429 while the queued requests' prompt tokens pass this. */
  maxQueuedTokens: number;
  /** Origins allowed to call the API from a browser (`*`: any); empty means CORS is off. */
  allowedOrigins: string[];
  /** A request head not complete this long after the connection opened or the last response: 408. */
  headerTimeoutMs: number;
  /** A keep-alive connection with no new request this long after a response is closed. */
  keepAliveTimeoutMs: number;
  /** Connections past this many open ones get HTTP 503 and are closed. */
  maxConnections: number;
}

/** The settings `vllm serve` users bring along: --seed, --log-level and --chat-template. */
export interface OperatorSettings {
  /** The seed of requests that give none (vLLM's --seed); unset: a fresh one per request. */
  seed?: number;
  /** The least severe log line written. */
  logLevel: "debug" | "info" | "warn" | "error";
  /** --chat-template: a file's contents or the template itself; unset: the model's own. */
  chatTemplate?: string;
  /** --metrics-names vllm: vLLM's exact metric names with a model_name label. */
  metricsNames?: "denollm" | "vllm";
}

/** What `parseServeConfig` found: a configuration, or a request for the help or version text. */
export type ParsedServe = { help: true } | { help: false; version: true } | {
  help: false;
  version?: false;
  config: ServeConfig;
  limits: ClientLimits;
  operator: OperatorSettings;
};

/** Where a raw value came from, for error messages that name it. */
interface Source {
  origin: "flag" | "env";
  name: string;
  value: string;
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
};

/** "512M", "2G", "1.5GiB", "1073741824" → bytes (binary units); undefined when malformed. */
export function parseByteSize(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?$/i.exec(text.trim());
  if (!match) return undefined;
  const bytes = Number(match[1]) * SIZE_UNITS[(match[2] ?? "").toLowerCase()];
  return Number.isSafeInteger(Math.floor(bytes)) ? Math.floor(bytes) : undefined;
}

function integer(min: number, max = Number.MAX_SAFE_INTEGER) {
  const range = max === Number.MAX_SAFE_INTEGER ? `at least ${min}` : `from ${min} to ${max}`;
  return z.string().trim().regex(/^-?\d+$/, { error: `expected an integer ${range}` })
    .transform(Number)
    .pipe(
      z.number().int().min(min, { error: `expected an integer ${range}` }).max(max, {
        error: `expected an integer ${range}`,
      }),
    );
}

function choice<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `expected one of ${values.join(", ")}` });
}

const boolText = z.string().trim().toLowerCase().pipe(
  z.enum(["1", "true", "yes", "on", "0", "false", "no", "off"], {
    error: "expected true or false (1/0, yes/no)",
  }),
).transform((v) => ["1", "true", "yes", "on"].includes(v));

const nonEmpty = z.string().trim().min(1, { error: "expected a non-empty value" });

/** A number of seconds, as text. */
function seconds(opts: { isZeroAllowed?: boolean } = {}) {
  const isZeroAllowed = opts.isZeroAllowed ?? true;
  const error = isZeroAllowed
    ? "expected a number of seconds, at least 0"
    : "expected a number of seconds, more than 0";
  return z.string().trim().regex(/^\d+(\.\d+)?$/, { error }).transform(Number)
    .refine((n) => isZeroAllowed || n > 0, { error });
}

/**
 * A host name (RFC 1123 labels), an IPv4 address or an IPv6 address (bare or in brackets): what
 * Deno.listen can bind. Checked here so a typo is a usage error, not a resolver stack trace.
 */
const HOST =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$|^\[?[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]?$/;

const hostSchema = nonEmpty.refine((text) => HOST.test(text), {
  error: "expected a host name or an IP address, such as 127.0.0.1, 0.0.0.0 or ::1",
}).transform((text) => text.replace(/^\[(.*)\]$/, "$1"));

const deviceSchema = z.string().trim().toLowerCase().transform((text, ctx): Device => {
  if (text === "auto" || text === "cpu" || text === "cuda") return { kind: text };
  const match = /^cuda:(\d+)$/.exec(text);
  if (match) return { kind: "cuda", ordinal: Number(match[1]) };
  ctx.addIssue({ code: "custom", message: "expected auto, cpu, cuda or cuda:N" });
  return z.NEVER;
});

const byteSize = z.string().transform((text, ctx) => {
  const bytes = parseByteSize(text);
  if (bytes === undefined || bytes < 1) {
    ctx.addIssue({
      code: "custom",
      message: "expected a positive size in bytes, optionally with a K, M, G or T suffix",
    });
    return z.NEVER;
  }
  return bytes;
});

/** "0.9", ".5", "1" → a fraction in (0, 1] (vLLM's --gpu-memory-utilization); else undefined. */
export function parseFraction(text: string): number | undefined {
  const trimmed = text.trim();
  if (!/^(\d+(\.\d*)?|\.\d+)$/.test(trimmed)) return undefined;
  const f = Number(trimmed);
  return f > 0 && f <= 1 ? f : undefined;
}

const fraction = z.string().transform((text, ctx) => {
  const f = parseFraction(text);
  if (f === undefined) {
    ctx.addIssue({
      code: "custom",
      message: "expected a fraction above 0 and at most 1, such as 0.9",
    });
    return z.NEVER;
  }
  return f;
});

/** One serve option: its flag, environment variable, default and help line. */
interface Option {
  flag: string;
  arg?: string;
  help: string;
  /** Shown in --help; the value itself comes from `defaults`. */
  defaultText?: string;
  isBoolean?: boolean;
}

const OPTIONS = [
  { flag: "model", arg: "PATH|ORG/NAME", help: "HF model directory, .gguf file, or HF repo id" },
  { flag: "revision", arg: "REV", help: "branch, tag or commit of a repo id", defaultText: "main" },
  {
    flag: "load-format",
    arg: "FMT",
    help: "auto, or dummy: random weights of config.json's shape from --seed (noise)",
    defaultText: "auto",
  },
  {
    flag: "quantization",
    arg: "Q",
    help: "quantize F32/F16/BF16 weights on load: int8, int4, q8_0, q4_k, … (docs/quantization.md)",
    defaultText: "none",
  },
  {
    flag: "sparsity",
    arg: "S",
    help: "prune the layer projections to 2:4 on load: 2:4, 2:4-magnitude, 2:4-wanda",
    defaultText: "none",
  },
  {
    flag: "calibration",
    arg: "FILE",
    help: "deno task calibrate's file for w8a8 (SmoothQuant), w8a8-mixed and 2:4 Wanda",
    defaultText: "none",
  },
  { flag: "host", arg: "HOST", help: "address to listen on", defaultText: "127.0.0.1" },
  { flag: "port", arg: "N", help: "port to listen on (0 = any free port)", defaultText: "8000" },
  {
    flag: "served-model-name",
    arg: "NAME",
    help: "model name in the API",
    defaultText: "the model's basename or repo id",
  },
  { flag: "api-key", arg: "KEY", help: "require `Authorization: Bearer KEY`", defaultText: "none" },
  {
    flag: "max-model-len",
    arg: "N",
    help: "longest prompt + output in tokens",
    defaultText: "the model's maximum",
  },
  {
    flag: "max-num-seqs",
    arg: "N",
    help: "most requests running at once",
    defaultText: String(ENGINE_DEFAULTS.maxNumSeqs),
  },
  {
    flag: "max-num-batched-tokens",
    arg: "N",
    help: "token budget of one engine step",
    defaultText: String(ENGINE_DEFAULTS.maxNumBatchedTokens),
  },
  {
    flag: "kv-cache-memory",
    arg: "BYTES",
    help: "KV cache size; K/M/G/T suffixes are powers of 1024",
    defaultText: "1G",
  },
  {
    flag: "gpu-memory-utilization",
    arg: "F",
    help: "instead of --kv-cache-memory: size the KV cache so the engine holds this share " +
      "(0 < F <= 1) of the device's memory, host memory on the CPU",
    defaultText: "unset",
  },
  {
    flag: "block-size",
    arg: "N",
    help: "tokens per KV cache block",
    defaultText: String(ENGINE_DEFAULTS.blockSize),
  },
  {
    flag: "kv-cache-dtype",
    arg: "TYPE",
    help: "f32, f16 or bf16 for cached keys and values (f16/bf16 halve KV memory)",
    defaultText: ENGINE_DEFAULTS.kvCacheDtype,
  },
  {
    flag: "threads",
    arg: "N",
    help: "CPU threads for kernels (0 = all cores)",
    defaultText: "CPUs - 1",
  },
  {
    flag: "device",
    arg: "DEV",
    help: "auto, cpu, cuda or cuda:N (auto = CUDA when a GPU is usable)",
    defaultText: "auto",
  },
  {
    flag: "sampling-device",
    arg: "WHERE",
    help: "device (dl_sample: ids come back, not logits), host or auto (device on CUDA)",
    defaultText: "auto",
  },
  {
    flag: "scheduler",
    arg: "MODE",
    help: "continuous (in-flight batching) or static (fixed batches)",
    defaultText: "continuous",
  },
  { flag: "no-prefix-caching", help: "disable prefix caching", isBoolean: true },
  {
    flag: "no-mmap",
    help: "copy weights into memory instead of mapping them from the file (CPU build)",
    isBoolean: true,
  },
  {
    flag: "enforce-eager",
    help: "no CUDA graphs: run decode steps eagerly (CUDA build; vLLM's name)",
    isBoolean: true,
  },
  // vLLM's spelling of the same switch (operator flags: see OperatorSettings).
  {
    flag: "enable-prefix-caching",
    help: "reuse the KV cache of shared prompt prefixes (vLLM's name)",
    defaultText: "on",
    isBoolean: true,
  },
  {
    flag: "no-enable-prefix-caching",
    help: "disable prefix caching (vLLM's name; same as --no-prefix-caching)",
    isBoolean: true,
  },
  {
    flag: "max-queued-requests",
    arg: "N",
    help: "requests waiting beyond this get HTTP 429",
    defaultText: "256",
  },
  {
    flag: "max-queued-tokens",
    arg: "N",
    help: "prompt tokens waiting beyond this get HTTP 429",
    defaultText: "262144",
  },
  {
    flag: "max-queue-delay",
    arg: "SECONDS",
    help: "a request not started after this long gets HTTP 503 (0 = no limit)",
    defaultText: "120",
  },
  {
    flag: "body-timeout",
    arg: "SECONDS",
    help: "a request body not received this long after its headers gets HTTP 408",
    defaultText: "30",
  },
  {
    flag: "header-timeout",
    arg: "SECONDS",
    help: "request headers not received this long after the connection opened or the last " +
      "response get HTTP 408",
    defaultText: "10",
  },
  {
    flag: "keep-alive-timeout",
    arg: "SECONDS",
    help: "an idle keep-alive connection is closed after this long",
    defaultText: "5",
  },
  {
    flag: "max-connections",
    arg: "N",
    help: "connections past this many open ones get HTTP 503 and are closed",
    defaultText: "1024",
  },
  {
    flag: "allowed-origins",
    arg: "LIST",
    help: "comma-separated origins allowed to call the API from a browser (CORS), or *",
    defaultText: "none (CORS off)",
  },
  {
    flag: "shutdown-timeout",
    arg: "SECONDS",
    help: "on SIGTERM, how long in-flight requests may run",
    defaultText: "30",
  },
  {
    flag: "tool-call-parser",
    arg: "NAME",
    help: "hermes, llama3_json or mistral: the tool-call format to parse",
    defaultText: "the one the chat template shows",
  },
  {
    flag: "speculative-model",
    arg: "MODEL",
    help:
      "speculative decoding: ngram (prompt lookup), self (the model itself, loaded again) or a " +
      "draft model path with the same vocabulary",
    defaultText: "off",
  },
  {
    flag: "speculative-model-quantization",
    arg: "Q",
    help: "quantize the draft on load (self + q4_0: the quantized self-draft): q4_0, q8_0, int4, …",
    defaultText: "none",
  },
  {
    flag: "num-speculative-tokens",
    arg: "K",
    help: "tokens proposed per step and request",
    defaultText: String(ENGINE_DEFAULTS.numSpeculativeTokens),
  },
  {
    flag: "ngram-prompt-lookup-max",
    arg: "N",
    help: "longest n-gram looked up by --speculative-model ngram",
    defaultText: String(ENGINE_DEFAULTS.ngramPromptLookupMax),
  },
  {
    flag: "ngram-prompt-lookup-min",
    arg: "N",
    help: "shortest n-gram looked up by --speculative-model ngram",
    defaultText: String(ENGINE_DEFAULTS.ngramPromptLookupMin),
  },
  {
    flag: "speculative-disable-by-batch-size",
    arg: "N",
    help: "no speculation while more requests than this are running",
    defaultText: String(ENGINE_DEFAULTS.speculativeDisableBySize),
  },
  { flag: "log-format", arg: "FMT", help: "text or json (JSON lines)", defaultText: "text" },
  // Operator flags as `vllm serve` has them (see OperatorSettings).
  {
    flag: "log-level",
    arg: "LEVEL",
    help: "debug, info, warn or error: the least severe line logged",
    defaultText: "info",
  },
  {
    flag: "seed",
    arg: "N",
    help: "seed of requests that give none (same seed, same sampled output)",
    defaultText: "none (random per request)",
  },
  {
    flag: "chat-template",
    arg: "FILE|STRING",
    help: "Jinja chat template, as a file or inline; replaces the model's own",
    defaultText: "the model's",
  },
  {
    flag: "metrics-names",
    arg: "STYLE",
    help: "denollm, or vllm: vLLM's metric names with a model_name label (for its dashboards)",
    defaultText: "denollm",
  },
  {
    flag: "hf-cache",
    arg: "DIR",
    help: "Hugging Face hub cache",
    defaultText: "$HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub",
  },
  // Ranks (docs/parallelism.md), with vLLM's and torchrun's names.
  {
    flag: "tensor-parallel-size",
    arg: "N",
    help: "ranks splitting every layer (processes over Gloo on CPU)",
    defaultText: "1",
  },
  {
    flag: "pipeline-parallel-size",
    arg: "N",
    help: "contiguous layer stages, micro-batched",
    defaultText: "1",
  },
  {
    flag: "sequence-parallel",
    help: "norms and residual on token shards (with --tensor-parallel-size)",
    isBoolean: true,
  },
  { flag: "nnodes", arg: "N", help: "hosts taking part", defaultText: "1" },
  {
    flag: "node-rank",
    arg: "K",
    help: "this host's index; K > 0 only runs its ranks",
    defaultText: "0",
  },
  {
    flag: "master-addr",
    arg: "HOST",
    help: "rank 0's address for the rendezvous store",
    defaultText: "127.0.0.1",
  },
  {
    flag: "master-port",
    arg: "N",
    help: "rendezvous store port",
    defaultText: "29500 with --nnodes > 1, else any free port",
  },
  {
    flag: "bind-addr",
    arg: "HOST",
    help: "this host's address for collectives",
    defaultText: "--master-addr",
  },
  {
    flag: "rank-timeout",
    arg: "SECONDS",
    help: "ranks must join, and collectives progress, within this",
    defaultText: "60",
  },
] as const satisfies readonly Option[];

type Flag = (typeof OPTIONS)[number]["flag"];

/** DENOLLM_MAX_NUM_SEQS for max-num-seqs. */
export function envName(flag: string): string {
  return `DENOLLM_${flag.toUpperCase().replaceAll("-", "_")}`;
}

function usage(): string {
  const lines = OPTIONS.map((o: Option) => {
    const left = `  --${o.flag}${o.arg ? ` ${o.arg}` : ""}`;
    const fallback = o.defaultText === undefined ? "" : `default ${o.defaultText}, `;
    const required = o.flag === "model" ? "default demo (built-in, random weights: noise), " : "";
    // A flag too long for the column gets its help on the next line.
    const head = left.length < 30 ? left.padEnd(30) : `${left}\n${" ".repeat(30)}`;
    return `${head}${o.help}\n${" ".repeat(30)}${required}${fallback}env ${envName(o.flag)}`;
  });
  return `Usage: denollm serve [MODEL] [options]
       denollm serve --model PATH|ORG/NAME [options]

Serves an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/embeddings,
/v1/models, /tokenize, /detokenize, /health, /metrics). Every option can also be set as an
environment variable; flags win.

${lines.join("\n")}
  -V, --version               print the version and exit
  --help                      show this help

MODEL may be given as the first argument instead of --model (as \`vllm serve MODEL\`). With neither,
the CLI serves the built-in demo model (random weights: its output is noise).
A repo id is downloaded once into the hub cache (HF_TOKEN, HF_ENDPOINT are honoured); a GGUF repo
file is named as ORG/NAME:FILE.gguf.
`;
}

export const SERVE_USAGE = usage();

/** The default hub cache, the way huggingface_hub finds it. */
export function defaultHfCache(env: Record<string, string | undefined>): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return `${env.HF_HOME.replace(/\/+$/, "")}/hub`;
  const cacheHome = env.XDG_CACHE_HOME ?? `${env.HOME ?? "."}/.cache`;
  return `${cacheHome.replace(/\/+$/, "")}/huggingface/hub`;
}

/** A Hugging Face repo id, optionally with `:FILE.gguf`, as opposed to a local path. */
export const REPO_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+(?::[^\s:]+\.gguf)?$/;

/** Folder names that say how a checkpoint is stored, not what it is (…/stories260K/hf). */
const FORMAT_DIRS = new Set(["hf", "gguf", "safetensors"]);

function defaultServedName(model: string): string {
  const trimmed = model.replace(/\/+$/, "");
  if (REPO_ID.test(trimmed) && !trimmed.startsWith(".")) return trimmed.split(":")[0];
  const parts = trimmed.split("/");
  const last = parts.pop() || trimmed;
  const parent = parts.at(-1);
  if (FORMAT_DIRS.has(last) && parent !== undefined && !/^\.{0,2}$/.test(parent)) return parent;
  return last;
}

/**
 * Names a request may also give for the model: the path's last part when the default name is
 * the folder above it (`hf` for …/stories260K/hf, the name earlier versions served).
 */
export function servedModelAliases(config: ServeConfig): string[] {
  if (config.servedModelName !== defaultServedName(config.model)) return [];
  const last = config.model.replace(/\/+$/, "").split("/").pop() ?? "";
  return FORMAT_DIRS.has(last) && last !== config.servedModelName ? [last] : [];
}

/** One schema per value kind; each entry maps to one ServeConfig field. */
const SCHEMAS = {
  model: nonEmpty,
  revision: nonEmpty,
  "load-format": choice(["auto", "dummy"]),
  quantization: z.string().trim().transform((v, ctx) => {
    try {
      return parseQuantization(v).name;
    } catch (error) {
      ctx.addIssue({ code: "custom", message: (error as Error).message });
      return z.NEVER;
    }
  }),
  sparsity: choice(["2:4", "2:4-magnitude", "2:4-wanda"]),
  calibration: nonEmpty,
  host: hostSchema,
  port: integer(0, 65535),
  "served-model-name": nonEmpty,
  "api-key": nonEmpty,
  "max-model-len": integer(1),
  "max-num-seqs": integer(1),
  "max-num-batched-tokens": integer(1),
  "kv-cache-memory": byteSize,
  "gpu-memory-utilization": fraction,
  "block-size": integer(1, 1024),
  "kv-cache-dtype": choice(["f32", "f16", "bf16"]),
  threads: integer(0, 4096),
  device: deviceSchema,
  "sampling-device": choice(SAMPLING_DEVICES),
  scheduler: choice(["continuous", "static"]),
  "no-prefix-caching": boolText,
  "no-mmap": boolText,
  "enforce-eager": boolText,
  "enable-prefix-caching": boolText,
  "no-enable-prefix-caching": boolText,
  "max-queued-requests": integer(0),
  "max-queued-tokens": integer(1),
  "max-queue-delay": seconds(),
  "body-timeout": seconds({ isZeroAllowed: false }),
  "header-timeout": seconds({ isZeroAllowed: false }),
  "keep-alive-timeout": seconds({ isZeroAllowed: false }),
  "max-connections": integer(1),
  "allowed-origins": z.string().transform((text, ctx) => {
    const origins = text.split(",").map((o) => o.trim()).filter((o) => o !== "");
    const bad = origins.find((o) => o !== "*" && !/^https?:\/\/[^/\s]+$/i.test(o));
    if (bad !== undefined || origins.length === 0) {
      ctx.addIssue({
        code: "custom",
        message: "expected * or a comma-separated list of origins such as https://example.com",
      });
      return z.NEVER;
    }
    return origins;
  }),
  "shutdown-timeout": seconds(),
  "tool-call-parser": choice(TOOL_CALL_PARSERS),
  "speculative-model": nonEmpty,
  "speculative-model-quantization": nonEmpty,
  "num-speculative-tokens": integer(1, 64),
  "ngram-prompt-lookup-max": integer(1, 64),
  "ngram-prompt-lookup-min": integer(1, 64),
  "speculative-disable-by-batch-size": integer(0),
  "log-format": choice(["text", "json"]),
  "log-level": choice(["debug", "info", "warn", "error"]),
  seed: integer(0, 2 ** 32 - 1),
  "metrics-names": choice(["denollm", "vllm"]),
  "chat-template": z.string().min(1, { error: "expected a file or a template" }),
  "hf-cache": nonEmpty,
  "tensor-parallel-size": integer(1, 1024),
  "pipeline-parallel-size": integer(1, 1024),
  "sequence-parallel": boolText,
  nnodes: integer(1, 1024),
  "node-rank": integer(0, 1023),
  "master-addr": hostSchema,
  "master-port": integer(0, 65535),
  "bind-addr": hostSchema,
  "rank-timeout": seconds({ isZeroAllowed: false }),
} satisfies Record<Flag, z.ZodType>;

type Values = { [K in Flag]?: z.output<(typeof SCHEMAS)[K]> };

function describe(source: Source): string {
  return source.origin === "flag"
    ? `--${source.name} ${JSON.stringify(source.value)}`
    : `${source.name}=${JSON.stringify(source.value)}`;
}

/**
 * More kernel threads than a few per core only thrash: --threads 4096 on a small machine would
 * start thousands of OpenMP threads per step, so anything above 4x the CPUs is refused.
 */
function checkThreads(numThreads: number | undefined, source: Source | undefined): void {
  const numCpus = navigator.hardwareConcurrency;
  const max = 4 * numCpus;
  if (numThreads === undefined || source === undefined || numThreads <= max) return;
  throw new UsageError(
    `${describe(source)}: expected at most ${max} threads (4 per CPU, ${numCpus} CPUs here; ` +
      `0 uses every core)`,
  );
}

/**
 * Parses `denollm serve` flags over DENOLLM_* environment variables. Throws UsageError with a
 * message that names the flag or variable and the bad value.
 */
export function parseServeConfig(
  args: string[],
  options: {
    env?: Record<string, string | undefined>;
    /** The model when none is named (the CLI's built-in demo); unset: --model is required. */
    defaultModel?: string;
    /** Reads a --chat-template file (default: Deno.readTextFileSync); tests replace it. */
    readFile?: (path: string) => string;
  } = {},
): ParsedServe {
  const env = options.env ?? Deno.env.toObject();
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        ...Object.fromEntries(
          OPTIONS.map((o: Option) => [o.flag, { type: o.isBoolean ? "boolean" : "string" }]),
        ) as Record<Flag, { type: "string" | "boolean" }>,
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (error) {
    // Positionals are allowed for the model only: drop parseArgs's hint about passing "--x" as one.
    const message = (error as Error).message.replace(/\. To specify a positional argument.*$/s, "");
    throw new UsageError(message);
  }
  if (parsed.values.help) return { help: true };
  if (parsed.values.version) return { help: false, version: true };
  const positionalModel = modelArgument(parsed.positionals, parsed.values.model !== undefined);
  if (positionalModel !== undefined) parsed.values.model = positionalModel;

  const values: Values = {};
  const sources: Partial<Record<Flag, Source>> = {};
  for (const option of OPTIONS as readonly Option[]) {
    const flag = option.flag as Flag;
    const fromFlag = parsed.values[flag];
    const fromEnv = env[envName(flag)];
    let source: Source | undefined;
    if (fromFlag !== undefined) {
      source = { origin: "flag", name: flag, value: String(fromFlag) };
    } else if (fromEnv !== undefined && fromEnv !== "") {
      source = { origin: "env", name: envName(flag), value: fromEnv };
    }
    if (source === undefined) continue;
    sources[flag] = source;
    const result = SCHEMAS[flag].safeParse(source.value);
    if (!result.success) {
      throw new UsageError(`${describe(source)}: ${result.error.issues[0].message}`);
    }
    (values as Record<string, unknown>)[flag] = result.data;
  }

  if (values.model === undefined && options.defaultModel !== undefined) {
    values.model = options.defaultModel;
  }
  if (values.model === undefined) {
    throw new UsageError(`--model (or ${envName("model")}) is required`);
  }
  checkThreads(values.threads, sources.threads);
  if (values["gpu-memory-utilization"] !== undefined && values["kv-cache-memory"] !== undefined) {
    throw new UsageError(
      `${describe(sources["gpu-memory-utilization"]!)} and ${
        describe(sources["kv-cache-memory"]!)
      } both size the KV cache: give one of them`,
    );
  }
  const enablePrefixCaching = prefixCaching(values, sources);
  const speculative = speculativeOptions({
    "speculative-model": values["speculative-model"],
    ...Object.fromEntries(
      ([
        "num-speculative-tokens",
        "ngram-prompt-lookup-max",
        "ngram-prompt-lookup-min",
        "speculative-disable-by-batch-size",
        "speculative-model-quantization",
      ] as const).flatMap((f) => values[f] === undefined ? [] : [[f, String(values[f])]]),
    ),
  });
  return {
    help: false,
    limits: {
      bodyTimeoutMs: (values["body-timeout"] ?? 30) * 1000,
      maxQueueDelayMs: (values["max-queue-delay"] ?? 120) * 1000 || Infinity,
      maxQueuedTokens: values["max-queued-tokens"] ?? 262_144,
      allowedOrigins: values["allowed-origins"] ?? [],
      headerTimeoutMs: (values["header-timeout"] ?? 10) * 1000,
      keepAliveTimeoutMs: (values["keep-alive-timeout"] ?? 5) * 1000,
      maxConnections: values["max-connections"] ?? 1024,
    },
    config: {
      model: values.model,
      revision: values.revision ?? "main",
      ...(values["load-format"] === undefined ? {} : { loadFormat: values["load-format"] }),
      ...(values.quantization === undefined ? {} : { quantization: values.quantization }),
      ...(values.sparsity === undefined ? {} : { sparsity: values.sparsity }),
      ...(values.calibration === undefined ? {} : { calibration: values.calibration }),
      mmap: !(values["no-mmap"] ?? false),
      enforceEager: values["enforce-eager"] ?? false,
      host: values.host ?? "127.0.0.1",
      port: values.port ?? 8000,
      servedModelName: values["served-model-name"] ?? defaultServedName(values.model),
      apiKey: values["api-key"],
      maxModelLen: values["max-model-len"],
      maxNumSeqs: values["max-num-seqs"] ?? ENGINE_DEFAULTS.maxNumSeqs,
      maxNumBatchedTokens: values["max-num-batched-tokens"] ?? ENGINE_DEFAULTS.maxNumBatchedTokens,
      ...(values["gpu-memory-utilization"] === undefined
        ? { kvCacheMemoryBytes: values["kv-cache-memory"] ?? 2 ** 30 }
        : { gpuMemoryUtilization: values["gpu-memory-utilization"] }),
      blockSize: values["block-size"] ?? ENGINE_DEFAULTS.blockSize,
      kvCacheDtype: values["kv-cache-dtype"] ?? ENGINE_DEFAULTS.kvCacheDtype,
      numThreads: values.threads ?? defaultNumThreads(),
      device: values.device ?? { kind: "auto" },
      ...(values["sampling-device"] === undefined
        ? {}
        : { samplingDevice: values["sampling-device"] }),
      scheduler: values.scheduler ?? "continuous",
      enablePrefixCaching,
      maxQueuedRequests: values["max-queued-requests"] ?? 256,
      shutdownTimeoutMs: (values["shutdown-timeout"] ?? 30) * 1000,
      logFormat: values["log-format"] ?? "text",
      hfCacheDir: values["hf-cache"] ?? defaultHfCache(env),
      ...(values["tool-call-parser"] === undefined
        ? {}
        : { toolCallParser: values["tool-call-parser"] }),
      ...(speculative === undefined ? {} : { speculative }),
      ...parallelConfig(values),
    },
    operator: {
      ...(values.seed === undefined ? {} : { seed: values.seed }),
      logLevel: values["log-level"] ?? "info",
      ...(values["metrics-names"] === undefined ? {} : { metricsNames: values["metrics-names"] }),
      ...(values["chat-template"] === undefined ? {} : {
        chatTemplate: chatTemplateText(
          values["chat-template"],
          sources["chat-template"]!,
          options.readFile ?? Deno.readTextFileSync,
        ),
      }),
    },
  };
}

// Operator flags as `vllm serve` has them: the positional model, the prefix-caching spellings
// and --chat-template.

/** The ranks' flags; absent when every one is at its default. */
function parallelConfig(values: Values): { parallel?: ParallelOptions } {
  const parallel: ParallelOptions = {
    tensorParallelSize: values["tensor-parallel-size"] ?? 1,
    pipelineParallelSize: values["pipeline-parallel-size"] ?? 1,
    sequenceParallel: values["sequence-parallel"] ?? false,
    nnodes: values.nnodes ?? 1,
    nodeRank: values["node-rank"] ?? 0,
    ...(values["master-addr"] === undefined ? {} : { masterAddr: values["master-addr"] }),
    ...(values["master-port"] === undefined ? {} : { masterPort: values["master-port"] }),
    ...(values["bind-addr"] === undefined ? {} : { bindAddr: values["bind-addr"] }),
    ...(values["rank-timeout"] === undefined
      ? {}
      : { rankTimeoutMs: values["rank-timeout"] * 1000 }),
  };
  const isSingle = parallel.tensorParallelSize * parallel.pipelineParallelSize === 1 &&
    parallel.nnodes === 1 && !parallel.sequenceParallel;
  if (isSingle) return {};
  try {
    checkParallelOptions(parallel);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  return { parallel };
}

/** `denollm serve MODEL`: the one positional argument, unless --model names the model already. */
function modelArgument(positionals: string[], hasModelFlag: boolean): string | undefined {
  if (positionals.length === 0) return undefined;
  if (hasModelFlag || positionals.length > 1) {
    // parseArgs's own wording, as before positional models were accepted.
    const extra = positionals[hasModelFlag ? 0 : 1];
    throw new UsageError(
      `Unexpected argument '${extra}'. This command does not take positional arguments`,
    );
  }
  return positionals[0];
}

/** --no-prefix-caching, vLLM's --[no-]enable-prefix-caching, or their variables; on by default. */
function prefixCaching(values: Values, sources: Partial<Record<Flag, Source>>): boolean {
  const off = (values["no-prefix-caching"] ?? false) ||
    (values["no-enable-prefix-caching"] ?? false);
  const on = values["enable-prefix-caching"];
  if (on === true && off) {
    const offSource = sources["no-enable-prefix-caching"] ?? sources["no-prefix-caching"]!;
    throw new UsageError(
      `${describe(sources["enable-prefix-caching"]!)} contradicts ${describe(offSource)}`,
    );
  }
  return on ?? !off;
}

/**
 * vLLM's rule: a --chat-template that names a readable file is that file's contents; one that
 * looks like a template (has `{{` or `{%`) is the template itself; anything else is a usage error.
 */
function chatTemplateText(
  value: string,
  source: Source,
  readFile: (path: string) => string,
): string {
  try {
    return readFile(value);
  } catch (error) {
    if (/\{[{%]/.test(value)) return value;
    throw new UsageError(
      `${describe(source)}: no such file, and no Jinja template either (${
        (error as Error).message
      })`,
    );
  }
}
