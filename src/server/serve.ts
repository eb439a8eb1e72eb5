// `denollm serve`: resolves the model (downloading a repo id), listens at once (/health answers 503
// while the model loads), starts the engine, tells systemd it is ready, and on SIGTERM/SIGINT drains
// in-flight requests before it exits.
import { LibraryLoadError, NativeError } from "../../ffi/native.ts";
import { AsyncTokenizer } from "../api/async_tokenizer.ts";
import { createApp, Metrics } from "../api/mod.ts";
import { UsageError } from "../errors.ts";
import { AsyncEngine, EngineError } from "../engine/async_engine.ts";
import { describeKvMemoryPlan } from "../engine/kv_memory.ts";
import { ModelFormatError } from "../formats/errors.ts";
import { downloadSnapshot, HubError, parseRepoRef } from "../hub/download.ts";
import { openModelSource } from "../model/load.ts";
import { runNode } from "../parallel/launch.ts";
import {
  type ClientLimits,
  type OperatorSettings,
  parseServeConfig,
  REPO_ID,
  SERVE_USAGE,
  type ServeConfig,
  servedModelAliases,
} from "./config.ts";
import { DEMO_MODEL, DEMO_NOTICE, demoCacheRoot, ensureDemoModel } from "./demo_model.ts";
import { DeviceError, resolveDevice } from "./device.ts";
import { type Http1Server, serveHttp1 } from "./http1.ts";
import { createLogger, type Logger } from "./log.ts";
import { notify } from "./sd_notify.ts";

export const VERSION = "0.1.0";

/** After the shutdown timeout, aborted requests get this long to send their last bytes. */
const ABORT_GRACE_MS = 5000;

/**
 * The longest context a model config may declare when --max-model-len is not given: more than
 * any model we know of (16M tokens), far less than a corrupt value such as 1e15, whose block
 * tables alone would not fit in memory.
 */
const MAX_MODEL_CONTEXT = 2 ** 24;

/** The limits a server runs with when the caller gives none: the flags' defaults. */
const DEFAULT_LIMITS: ClientLimits = {
  bodyTimeoutMs: 30_000,
  maxQueueDelayMs: 120_000,
  maxQueuedTokens: 262_144,
  allowedOrigins: [],
  headerTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 1024,
};

/** Start-up failures the operator can fix; logged as one line without a stack. */
function isOperatorError(error: unknown): boolean {
  return error instanceof ModelFormatError || error instanceof HubError ||
    error instanceof DeviceError || error instanceof EngineError ||
    error instanceof LibraryLoadError || error instanceof NativeError ||
    error instanceof UsageError || error instanceof Deno.errors.AddrInUse ||
    error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.AddrNotAvailable;
}

async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** A local path as is; a repo id through the hub cache (downloaded the first time). */
async function resolveModelPath(config: ServeConfig, log: Logger): Promise<string> {
  if (config.model === DEMO_MODEL) {
    const demo = await ensureDemoModel(
      demoCacheRoot(Deno.env.toObject()),
      (msg, fields) => log("info", msg, fields),
    );
    log("warn", DEMO_NOTICE, { path: demo.path, cached: demo.isCached });
    return demo.path;
  }
  if (await pathExists(config.model) || !REPO_ID.test(config.model)) return config.model;
  const { repoId, file } = parseRepoRef(config.model);
  try {
    const snapshot = await downloadSnapshot(repoId, {
      revision: config.revision,
      cacheDir: config.hfCacheDir,
      file,
      skipWeights: config.loadFormat === "dummy" && file === undefined,
      log: (msg, fields) => log("info", msg, fields),
    });
    log("info", snapshot.isCached ? "using cached snapshot" : "downloaded snapshot", {
      repo: repoId,
      revision: config.revision,
      commit: snapshot.commit,
      path: snapshot.modelPath,
    });
    return snapshot.modelPath;
  } catch (error) {
    if (!(error instanceof HubError)) throw error;
    throw new HubError(
      `--model ${config.model} is no local file or directory, so it was taken as a Hugging Face ` +
        `repo id: ${error.message}`,
      { cause: error },
    );
  }
}

function listenError(error: unknown, config: ServeConfig): unknown {
  const where = `${config.host}:${config.port}`;
  if (error instanceof Deno.errors.AddrInUse) {
    return new Deno.errors.AddrInUse(`Cannot listen on ${where}: the address is already in use`);
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return new Deno.errors.AddrNotAvailable(`Cannot listen on ${where}: no such local address`);
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return new Deno.errors.PermissionDenied(`Cannot listen on ${where}: permission denied`);
  }
  // Deno 2.9.6 throws a plain Error when the host name does not resolve.
  if (error instanceof Error && /failed to lookup address/i.test(error.message)) {
    return new Deno.errors.AddrNotAvailable(
      `Cannot listen on ${where}: --host ${config.host} does not resolve to a local address`,
    );
  }
  return error;
}

/** sd_notify that cannot take the server down: a failure to reach systemd is only logged. */
function tellSystemd(log: Logger, ...assignments: string[]): void {
  try {
    notify(...assignments);
  } catch (error) {
    log("warn", `sd_notify failed: ${(error as Error).message}`);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The answer to a request that arrives while the server drains. */
function shuttingDown(): Response {
  return Response.json(
    {
      error: {
        message: "The server is shutting down",
        type: "service_unavailable",
        param: null,
        code: "shutting_down",
      },
    },
    { status: 503, headers: { connection: "close", "retry-after": "5" } },
  );
}

interface SignalWatch {
  /** Resolves with the first SIGTERM/SIGINT's name. */
  first: Promise<string>;
  /** Resolves on a second signal (stop waiting for in-flight requests). */
  again: Promise<void>;
  readonly isStopping: boolean;
  remove(): void;
}

/**
 * Signals this soon after the first are the same interrupt delivered twice: a terminal's Ctrl+C
 * reaches the whole process group, and `deno task` forwards it to its child as well.
 */
export const SIGNAL_ECHO_MS = 1000;

function watchSignals(): SignalWatch {
  const first = Promise.withResolvers<string>();
  const again = Promise.withResolvers<void>();
  let count = 0;
  let firstAt = 0;
  const signals = ["SIGTERM", "SIGINT"] as const;
  const handlers = signals.map((signal) => () => {
    if (count++ === 0) {
      firstAt = performance.now();
      first.resolve(signal);
    } else if (performance.now() - firstAt >= SIGNAL_ECHO_MS) {
      again.resolve();
    }
  });
  signals.forEach((signal, i) => Deno.addSignalListener(signal, handlers[i]));
  return {
    first: first.promise,
    again: again.promise,
    get isStopping() {
      return count > 0;
    },
    remove: () => signals.forEach((signal, i) => Deno.removeSignalListener(signal, handlers[i])),
  };
}

/** What the log and /v1/models say under --load-format dummy. */
export function dummyNotice(seed: number): string {
  return `--load-format dummy: the weights are RANDOM (seed ${seed}), not the checkpoint's; ` +
    "the output is noise (for benchmarks only)";
}

/** How often long work (download, load) logs a progress line. */
export const PROGRESS_LOG_INTERVAL_MS = 5000;

/**
 * A progress callback that logs a start line, a line every PROGRESS_LOG_INTERVAL_MS, and an end
 * line, each with the bytes done and the total (for log files and JSON logs; the TTY keeps its
 * progress bar).
 */
export function loadProgressLog(
  log: Logger,
  intervalMs = PROGRESS_LOG_INTERVAL_MS,
): (loadedBytes: number, totalBytes: number) => void {
  let started = 0;
  let lastAt = 0;
  let isDone = false;
  return (loadedBytes, totalBytes) => {
    const now = performance.now();
    const fields = {
      loaded_bytes: loadedBytes,
      total_bytes: totalBytes,
      percent: Math.floor((100 * loadedBytes) / Math.max(totalBytes, 1)),
    };
    if (started === 0) {
      started = now;
      lastAt = now;
      log("info", `loading weights: ${mb(totalBytes)} MB`, fields);
      if (loadedBytes < totalBytes) return;
    }
    if (loadedBytes >= totalBytes) {
      if (isDone) return;
      isDone = true;
      log("info", `loaded weights: ${mb(totalBytes)} MB`, {
        ...fields,
        elapsed_ms: Math.round(now - started),
      });
    } else if (now - lastAt >= intervalMs) {
      lastAt = now;
      log(
        "info",
        `loading weights: ${fields.percent}% (${mb(loadedBytes)}/${mb(totalBytes)} MB)`,
        fields,
      );
    }
  };
}

function mb(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/**
 * An operator's error naming --kv-cache-memory (or --gpu-memory-utilization), for a KV cache the
 * machine cannot hold (the native allocator's own message names only dl_alloc).
 */
function kvTooLarge(config: ServeConfig, detail: string): EngineError {
  const bytes = config.kvCacheMemoryBytes;
  const message = bytes === undefined
    ? `--gpu-memory-utilization ${config.gpuMemoryUtilization} cannot be allocated: ${detail}; ` +
      "lower --gpu-memory-utilization"
    : `--kv-cache-memory ${bytes} bytes (${
      gib(bytes)
    }) cannot be allocated: ${detail}; lower --kv-cache-memory`;
  return new EngineError({ code: "native", name: "EngineError", message });
}

/** Starts the engine; under --device auto a CUDA start that fails falls back to the CPU. */
async function startEngine(
  config: ServeConfig,
  modelPath: string,
  maxModelLen: number,
  log: Logger,
  loadSeed: number,
): Promise<{ engine: AsyncEngine; device: string }> {
  const device = resolveDevice(config.device);
  log("info", "loading model", {
    model: modelPath,
    device: device.description,
    load_format: config.loadFormat ?? "auto",
    quantization: config.quantization ?? "none",
  });
  const start = (backend: "cpu" | "cuda") =>
    AsyncEngine.start({
      modelPath,
      loadFormat: config.loadFormat,
      loadSeed,
      quantization: config.quantization,
      sparsity: config.sparsity,
      calibration: config.calibration,
      mmap: config.mmap,
      enforceEager: config.enforceEager,
      backend,
      numThreads: config.numThreads,
      blockSize: config.blockSize,
      kvCacheDtype: config.kvCacheDtype,
      ...(config.gpuMemoryUtilization === undefined
        ? { kvCacheMemoryBytes: config.kvCacheMemoryBytes }
        : { gpuMemoryUtilization: config.gpuMemoryUtilization }),
      ...(config.samplingDevice === undefined ? {} : { samplingDevice: config.samplingDevice }),
      maxModelLen,
      maxNumBatchedTokens: config.maxNumBatchedTokens,
      maxNumSeqs: config.maxNumSeqs,
      enablePrefixCaching: config.enablePrefixCaching,
      mode: config.scheduler,
      ...(config.speculative === undefined ? {} : { speculative: config.speculative }),
      ...(config.parallel === undefined ? {} : { parallel: config.parallel }),
    }, { onLoadProgress: loadProgressLog(log) });
  try {
    return { engine: await start(device.backend), device: device.description };
  } catch (error) {
    if (error instanceof EngineError && /OUT_OF_MEMORY/.test(error.message)) {
      throw kvTooLarge(config, error.message);
    }
    const isBackendFailure = error instanceof EngineError && error.code === "native";
    if (config.device.kind !== "auto" || device.backend !== "cuda" || !isBackendFailure) {
      throw error;
    }
    log("warn", "the CUDA backend failed to start; using the CPU", {
      error: (error as Error).message,
    });
    return { engine: await start("cpu"), device: "cpu" };
  }
}

/** Runs the server until SIGTERM/SIGINT; returns the exit code. */
export async function serve(
  config: ServeConfig,
  options: { log?: Logger; limits?: ClientLimits; operator?: OperatorSettings } = {},
): Promise<number> {
  const operator = options.operator ?? { logLevel: "info" };
  const log = options.log ??
    createLogger(config.logFormat, { level: operator.logLevel, timestamps: true });
  const limits = options.limits ?? DEFAULT_LIMITS;
  const signals = watchSignals();
  let server: Http1Server | undefined;
  const stopped = (signal: string) => {
    log("info", `received ${signal} while starting; exiting`);
    tellSystemd(log, "STOPPING=1");
    return 0;
  };
  try {
    // A signal during a long download or load ends the process at once.
    const resolving = resolveModelPath(config, log);
    // If a signal wins a race, the loser's later failure must not surface as unhandled.
    resolving.catch(() => {});
    const modelPath = await Promise.race([resolving, signals.first]);
    if (signals.isStopping) return stopped(await signals.first);
    const loadSeed = operator.seed ?? 0;
    if (config.loadFormat === "dummy") {
      log("warn", dummyNotice(loadSeed), { path: modelPath, seed: loadSeed });
    }
    const source = await openModelSource(modelPath, {
      loadFormat: config.loadFormat,
      seed: loadSeed,
    }).catch((error) => {
      // A directory with a config but no weights: say how to serve it with random ones.
      if (error instanceof ModelFormatError && /found neither$/.test(error.message)) {
        throw new ModelFormatError(
          modelPath,
          `${
            error.message.slice(modelPath.length + 2)
          } (--load-format dummy serves random weights of its config.json's shape)`,
          { cause: error },
        );
      }
      throw error;
    });
    const modelMax = source.config.maxPositionEmbeddings;
    if (config.maxModelLen === undefined && !(modelMax <= MAX_MODEL_CONTEXT)) {
      const field = source.format === "gguf"
        ? "the GGUF's context_length"
        : "max_position_embeddings in config.json";
      throw new ModelFormatError(
        modelPath,
        `${field} is ${modelMax}, more than ${MAX_MODEL_CONTEXT} tokens; the model's config ` +
          `looks wrong (set --max-model-len to serve it anyway)`,
      );
    }
    if (config.maxModelLen !== undefined && config.maxModelLen > modelMax) {
      log(
        "warn",
        `--max-model-len ${config.maxModelLen} exceeds the model's ${modelMax}; using ${modelMax}`,
      );
    }
    const maxModelLen = Math.min(config.maxModelLen ?? modelMax, modelMax);

    // What the request handlers see: no engine while loading, and a flag once draining.
    const state: { engine?: AsyncEngine; tokenizer?: AsyncTokenizer; isDraining: boolean } = {
      isDraining: false,
    };
    const { app, inflight } = createApp({
      getEngine: () => state.engine,
      tokenizer: source.tokenizer,
      chatTemplate: operator.chatTemplate ?? source.chatTemplate,
      ...(operator.seed === undefined ? {} : { defaultSeed: operator.seed }),
      get asyncTokenizer() {
        return state.tokenizer;
      },
      servedModelName: config.servedModelName,
      modelAliases: servedModelAliases(config),
      ...(config.model === DEMO_MODEL
        ? { modelNotice: DEMO_NOTICE }
        : config.loadFormat === "dummy"
        ? { modelNotice: dummyNotice(loadSeed) }
        : {}),
      version: VERSION,
      apiKey: config.apiKey,
      maxQueuedRequests: config.maxQueuedRequests,
      maxQueuedPromptTokens: limits.maxQueuedTokens,
      maxQueueDelayMs: limits.maxQueueDelayMs,
      bodyTimeoutMs: limits.bodyTimeoutMs,
      allowedOrigins: limits.allowedOrigins,
      metrics: new Metrics({ names: operator.metricsNames, modelName: config.servedModelName }),
      toolCallParser: config.toolCallParser,
      log,
      requestLog: (level, fields) => log(level, "request", { ...fields }),
    });
    // Every request from its arrival until its response has reached the client: more than the
    // generations `inflight` counts (a body still arriving, a prompt being tokenized, a finished
    // response still being written to a client that reads slowly), and what shutdown waits for.
    let numOpenRequests = 0;
    const listening = Promise.withResolvers<Deno.NetAddr>();
    try {
      // Not Deno.serve: it (2.9.6) has no header-read or idle timeout and no connection cap.
      server = serveHttp1({
        hostname: config.host,
        port: config.port,
        headerTimeoutMs: limits.headerTimeoutMs,
        keepAliveTimeoutMs: limits.keepAliveTimeoutMs,
        maxConnections: limits.maxConnections,
        onListen: (addr) => listening.resolve(addr),
        onConnectionError: (msg, fields) => log("debug", msg, fields),
      }, (request, info) => {
        numOpenRequests++;
        info.completed.catch(() => {}).finally(() => numOpenRequests--);
        return state.isDraining ? shuttingDown() : app.fetch(request, info);
      });
    } catch (error) {
      throw listenError(error, config);
    }
    const addr = await listening.promise;
    const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
    const url = `http://${host}:${addr.port}`;
    log("info", `listening on ${url}`, { port: addr.port });

    // Long prompts are tokenized in a worker of their own, so they never stall other streams.
    const loading = Promise.all([
      startEngine(config, modelPath, maxModelLen, log, loadSeed),
      AsyncTokenizer.start(modelPath, {
        chatTemplate: operator.chatTemplate,
        loadFormat: config.loadFormat,
      }),
    ]);
    loading.catch(() => {});
    const started = await Promise.race([loading, signals.first]);
    if (typeof started === "string") {
      state.isDraining = true;
      await server.shutdown();
      return stopped(started);
    }
    const [{ engine, device }, tokenizer] = started;
    state.tokenizer = tokenizer;
    state.engine = engine;
    const plan = engine.kvMemoryPlan;
    if (plan !== undefined) {
      log("info", `KV cache sized by --gpu-memory-utilization: ${describeKvMemoryPlan(plan)}`, {
        gpu_memory_utilization: plan.utilization,
        total_bytes: plan.totalBytes,
        in_use_at_start_bytes: plan.inUseBytes,
        weight_bytes: plan.weightBytes,
        step_reserved_bytes: plan.reservedBytes,
        margin_bytes: plan.marginBytes,
        kv_budget_bytes: plan.kvCacheMemoryBytes,
      });
    }
    log("info", `serving ${config.servedModelName}`, {
      model: config.servedModelName,
      path: modelPath,
      format: source.format,
      device,
      kv_blocks: engine.numKvBlocks,
      kv_tokens: engine.numKvBlocks * engine.blockSize,
      block_size: engine.blockSize,
      kv_dtype: config.kvCacheDtype,
      // Where tokens are sampled, as --sampling-device resolved on this build.
      sampling_device: engine.stats.deviceSampling === undefined ? "host" : "device",
      max_model_len: engine.maxModelLen,
      weight_bytes: engine.weightBytes,
      kv_cache_bytes: engine.kvCacheBytes,
      step_reserved_bytes: engine.reservedBytes,
      load_ms: Math.round(engine.loadMs),
    });
    if (config.model === DEMO_MODEL) log("warn", `${DEMO_NOTICE} (${url})`);
    if (config.loadFormat === "dummy") log("warn", `${dummyNotice(loadSeed)} (${url})`);
    tellSystemd(log, "READY=1", `STATUS=Serving ${config.servedModelName} on ${url}`);

    const signal = await Promise.race([signals.first, engine.failed, tokenizer.failed]);
    if (signal instanceof Error) {
      // Without an engine or a tokenizer nothing can be served: exit non-zero so systemd restarts
      // the service.
      log("error", `a worker failed: ${signal.message}`);
      tellSystemd(log, "STOPPING=1");
      state.isDraining = true;
      inflight.abortAll();
      await server.shutdown();
      await tokenizer.close();
      return 1;
    }
    log("info", `received ${signal}; draining`, {
      inflight: inflight.count,
      open_requests: numOpenRequests,
      timeout_s: config.shutdownTimeoutMs / 1000,
    });
    tellSystemd(log, "STOPPING=1", `STATUS=Draining ${inflight.count} requests`);
    state.isDraining = true;
    const closed = server.shutdown();
    const isDrained = await Promise.race([
      Promise.all([closed, inflight.whenIdle()]).then(() => true),
      delay(config.shutdownTimeoutMs).then(() => false),
      signals.again.then(() => false),
    ]);
    if (!isDrained) {
      // What held the drain: generations still running, or only responses not yet delivered
      // and requests not yet generating (inflight alone would read 0 for those).
      if (inflight.count > 0) {
        log("warn", "aborting requests still in flight", {
          inflight: inflight.count,
          open_requests: numOpenRequests,
        });
      } else {
        log("warn", "closing connections still open", { open_requests: numOpenRequests });
      }
      inflight.abortAll();
      await Promise.race([closed, delay(ABORT_GRACE_MS)]);
    }
    await engine.shutdown();
    await tokenizer.close();
    log("info", "stopped");
    return 0;
  } catch (error) {
    if (isOperatorError(error)) {
      log("error", (error as Error).message);
    } else {
      const e = error instanceof Error ? error : new Error(String(error));
      log("error", `${e.name}: ${e.message}`, { stack: e.stack });
    }
    await server?.shutdown();
    return 1;
  } finally {
    signals.remove();
  }
}

/** `denollm serve [flags]`: parses the configuration (UsageError when bad) and serves. */
export async function runServe(args: string[]): Promise<number> {
  // With no model named, the CLI serves the built-in demo (random weights; it says so).
  const parsed = parseServeConfig(args, { defaultModel: DEMO_MODEL });
  if (parsed.help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  if (parsed.version === true) {
    console.log(`denollm ${VERSION}`);
    return 0;
  }
  // Another host of a parallel group runs its ranks; rank 0's host serves.
  const parallel = parsed.config.parallel;
  if (parallel !== undefined && (parallel.nodeRank ?? 0) > 0) return await runNode(parallel);
  return await serve(parsed.config, { limits: parsed.limits, operator: parsed.operator });
}
