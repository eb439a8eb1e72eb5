// How ranks start and join. The daemon is rank 0: it serves the store ranks rendezvous through,
// publishes the engine's configuration there, starts this host's other ranks as child processes
// (`denollm rank ...`), loads its own shard and drives every rank through ParallelExecutor. On
// another host `denollm serve --nnodes N --node-rank K --master-addr A --master-port P` starts
// that host's ranks, which fetch the configuration from rank 0's store (docs/parallelism.md).
import { NativeBackend } from "../../ffi/native.ts";
import { readTensorBytes, type TensorInfo } from "../formats/tensor.ts";
import { KvCache } from "../kv/kv_cache.ts";
import type { ModelConfig } from "../model/config.ts";
import { LlamaModel, type ModelComm } from "../model/llama.ts";
import { type LoadedModel, openModelSource } from "../model/load.ts";
import { ropeInvFreq } from "../model/rope.ts";
import { loadWeights, type ModelWeights, releaseWeights } from "../model/weights.ts";
import { LLMEngine } from "../engine/engine.ts";
import { stepCapacity } from "../engine/executor.ts";
import { type EngineOptions, engineShape, type LocalEngine } from "../engine/local_engine.ts";
import { applyOmpEnvDefaults, defaultNumThreads } from "../engine/threads.ts";
import { CommLibrary, Communicator, ControlStore, StoreClient } from "./comm.ts";
import { ParallelExecutor, type RankParts, serveRank } from "./executor.ts";
import { SequenceParallelComm, TensorParallelComm } from "./model_comm.ts";
import {
  checkParallelOptions,
  nodeRanks,
  PARALLEL_DEFAULTS,
  type ParallelOptions,
  shardConfig,
  type ShardPlan,
  shardPlan,
  worldSize,
} from "./plan.ts";
import { shardTensors } from "./shard.ts";

const CONFIG_KEY = "denollm/engine-options";

/** What every rank needs to build its share of the engine, as rank 0 publishes it. */
interface RankConfig {
  options: EngineOptions;
  parallel:
    & Required<Pick<ParallelOptions, "masterAddr" | "masterPort" | "rankTimeoutMs">>
    & ParallelOptions;
  numKvBlocks: number;
}

/** The command line that starts one rank of this host as a child process. */
function rankCommand(args: string[]): { cmd: string; args: string[] } {
  const exec = Deno.execPath();
  const isDeno = /(^|\/)deno$/.test(exec);
  if (!isDeno) return { cmd: exec, args: ["rank", ...args] }; // the `deno compile` executable
  const main = new URL("../../main.ts", import.meta.url).href;
  const perms = ["--allow-read", "--allow-write", "--allow-env", "--allow-ffi", "--allow-net"];
  return { cmd: exec, args: ["run", ...perms, main, "rank", ...args] };
}

/** This host's non-zero ranks, started as children; their stderr is the daemon's. */
function spawnRanks(ranks: number[], parallel: RankConfig["parallel"], bindAddr: string) {
  return ranks.map((rank) => {
    const { cmd, args } = rankCommand([
      "--rank",
      String(rank),
      "--master-addr",
      parallel.masterAddr,
      "--master-port",
      String(parallel.masterPort),
      "--bind-addr",
      bindAddr,
    ]);
    const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "inherit" })
      .spawn();
    return { rank, child };
  });
}

async function readRopeFreqs(tensors: Map<string, TensorInfo>): Promise<Float32Array | undefined> {
  const info = tensors.get("rope_freqs.weight");
  if (info === undefined || info.dtype !== "F32") return undefined;
  const bytes = new Uint8Array(info.byteLength);
  await readTensorBytes(info, bytes);
  return new Float32Array(bytes.buffer);
}

interface LoadedShard {
  config: ModelConfig;
  weights: ModelWeights;
  invFreq: Float32Array;
}

/** Reads only this rank's rows and columns of the checkpoint onto the device. */
async function loadShard(
  backend: NativeBackend,
  source: { config: ModelConfig; tensors: Map<string, TensorInfo> },
  plan: ShardPlan,
  onProgress?: (loaded: number, total: number) => void,
): Promise<LoadedShard> {
  const config = shardConfig(source.config, plan);
  const tensors = shardTensors(source.tensors, source.config, plan);
  const weights = await loadWeights(backend, config, tensors, { onProgress });
  const invFreq = ropeInvFreq(
    source.config,
    source.config.headDim,
    await readRopeFreqs(source.tensors),
  );
  return { config, weights, invFreq };
}

/** The smallest KV block count any rank's budget holds: block ids are the same on every rank. */
function planBlocks(config: ModelConfig, options: EngineOptions, p: ParallelOptions): number {
  if (options.numKvBlocks !== undefined) return options.numKvBlocks;
  let fewest = Infinity;
  for (let r = 0; r < worldSize(p); r++) {
    const shard = shardConfig(config, shardPlan(config, p, r));
    fewest = Math.min(fewest, engineShape(shard, options).numBlocks);
  }
  return fewest;
}

/** Joins the world and this stage's tensor-parallel group, builds the model, cache and parts. */
function joinGroup(
  backend: NativeBackend,
  comm: CommLibrary,
  init: { rank: number; parallel: RankConfig["parallel"]; bindAddr: string },
  shard: LoadedShard,
  engine: { options: EngineOptions; numKvBlocks: number; modelConfig: ModelConfig },
  plan: ShardPlan,
): RankParts {
  const p = init.parallel;
  const base = {
    storeHost: p.masterAddr,
    storePort: p.masterPort,
    bindHost: init.bindAddr,
    timeoutMs: p.rankTimeoutMs,
  };
  const world = new Communicator(comm, {
    ...base,
    rank: init.rank,
    worldSize: worldSize(p),
    prefix: "world",
  });
  const tp = new Communicator(comm, {
    ...base,
    rank: plan.position.tpRank,
    worldSize: p.tensorParallelSize,
    prefix: `tp-stage${plan.position.stage}`,
  });
  const shape = engineShape(shard.config, { ...engine.options, numKvBlocks: engine.numKvBlocks });
  const capacity = stepCapacity(shape.config, shape.blockSize);
  const hidden = shard.config.hiddenSize;
  const modelComm: (ModelComm & { release(): void }) | null = tp.size === 1
    ? null
    : p.sequenceParallel
    ? new SequenceParallelComm(backend, tp, hidden)
    : new TensorParallelComm(backend, tp, hidden);
  const model = new LlamaModel(backend, shard.config, shard.weights, shard.invFreq, modelComm);
  const kvCache = new KvCache(backend, shard.config, {
    blockSize: shape.blockSize,
    numBlocks: engine.numKvBlocks,
    dtype: shape.dtype,
  });
  return {
    backend,
    plan,
    parallel: p,
    world,
    tp,
    model,
    kvCache,
    vocabSize: engine.modelConfig.vocabSize,
    capacity,
    releaseExtra: () => {
      modelComm?.release();
      releaseWeights(backend, shard.weights);
    },
  };
}

function withDefaults(p: ParallelOptions): RankConfig["parallel"] {
  return {
    ...p,
    masterAddr: p.masterAddr ?? PARALLEL_DEFAULTS.masterAddr,
    masterPort: p.masterPort ?? ((p.nnodes ?? 1) > 1 ? PARALLEL_DEFAULTS.masterPort : 0),
    rankTimeoutMs: p.rankTimeoutMs ?? PARALLEL_DEFAULTS.rankTimeoutMs,
  };
}

/** Rank 0: the store, this host's ranks, its own shard, and the engine over all of them. */
export async function startParallelEngine(
  options: EngineOptions,
  { onLoadProgress }: { onLoadProgress?: (loadedBytes: number, totalBytes: number) => void } = {},
): Promise<LocalEngine & { loaded: LoadedModel; backend: NativeBackend }> {
  const started = performance.now();
  checkParallelOptions(options.parallel!);
  const requested = withDefaults(options.parallel!);
  if ((requested.nodeRank ?? 0) !== 0) {
    throw new RangeError("Only node 0 serves; other nodes run their ranks (runNode)");
  }
  const source = await openModelSource(options.modelPath, {
    loadFormat: options.loadFormat,
    seed: options.loadSeed,
  });
  const plan = shardPlan(source.config, requested, 0);
  const numKvBlocks = planBlocks(source.config, options, requested);
  const backend = NativeBackend.open({
    backend: options.backend,
    libraryPath: options.libraryPath,
    numThreads: options.numThreads ?? defaultNumThreads(),
  });
  const comm = new CommLibrary(backend.libraryPath);
  const store = new ControlStore(comm, requested.masterAddr, requested.masterPort);
  const parallel = { ...requested, masterPort: store.port };
  const bindAddr = parallel.bindAddr ?? parallel.masterAddr;
  const children: { rank: number; child: Deno.ChildProcess }[] = [];
  const stopChildren = () => {
    for (const { child } of children) {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  };
  let shard: LoadedShard | undefined;
  try {
    const client = await StoreClient.connect(parallel.masterAddr, parallel.masterPort, 5000);
    const config: RankConfig = { options: { ...options, parallel }, parallel, numKvBlocks };
    await client.set(CONFIG_KEY, new TextEncoder().encode(JSON.stringify(config)));
    client.close();
    children.push(...spawnRanks(nodeRanks(parallel, 0).slice(1), parallel, bindAddr));
    shard = await loadShard(backend, source, plan, onLoadProgress);
    const parts = joinGroup(
      backend,
      comm,
      { rank: 0, parallel, bindAddr },
      shard,
      { options, numKvBlocks, modelConfig: source.config },
      plan,
    );
    const executor = new ParallelExecutor(parts);
    const shape = engineShape(shard.config, { ...options, numKvBlocks });
    const engine = new LLMEngine({ executor, tokenizer: source.tokenizer }, shape.config);
    const model = parts.model;
    const release = () => {
      executor.release();
      store.stop();
      comm.close();
      backend.close();
      // Ranks stop when told; one that does not within 10 s is killed.
      for (const { child } of children) {
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        child.status.then(() => clearTimeout(timer));
      }
    };
    const loaded: LoadedModel = {
      ...source,
      model,
      loadMs: performance.now() - started,
      release: () => {},
    };
    return {
      engine,
      numKvBlocks: numKvBlocks - 1,
      blockSize: shape.blockSize,
      maxModelLen: shape.maxModelLen,
      reservedBytes: executor.reservedBytes,
      kvCacheBytes: numKvBlocks * shape.bytesPerBlock,
      loaded,
      backend,
      rankStats: () => executor.rankStats(),
      release,
    };
  } catch (error) {
    stopChildren();
    if (shard !== undefined) releaseWeights(backend, shard.weights);
    store.stop();
    backend.close();
    throw error;
  }
}

/** Parses `denollm rank`'s flags. */
function rankArgs(
  args: string[],
): { rank: number; masterAddr: string; masterPort: number; bindAddr: string } {
  const get = (flag: string) => {
    const i = args.indexOf(flag);
    if (i < 0 || i + 1 >= args.length) throw new RangeError(`denollm rank needs ${flag}`);
    return args[i + 1];
  };
  const rank = Number(get("--rank"));
  const masterPort = Number(get("--master-port"));
  if (!Number.isInteger(rank) || rank < 1) {
    throw new RangeError(`--rank must be >= 1, got ${get("--rank")}`);
  }
  if (!Number.isInteger(masterPort) || masterPort < 1) {
    throw new RangeError(`--master-port must be a port number, got ${get("--master-port")}`);
  }
  const masterAddr = get("--master-addr");
  const bindAddr = args.includes("--bind-addr") ? get("--bind-addr") : masterAddr;
  return { rank, masterAddr, masterPort, bindAddr };
}

/** `denollm rank`: one non-zero rank, until rank 0 says stop; exits non-zero on any failure. */
export async function runRankProcess(argv: string[]): Promise<number> {
  let rank = -1;
  try {
    const a = rankArgs(argv);
    rank = a.rank;
    const client = await StoreClient.connect(
      a.masterAddr,
      a.masterPort,
      PARALLEL_DEFAULTS.rankTimeoutMs,
    );
    const config = JSON.parse(
      new TextDecoder().decode(await client.get(CONFIG_KEY, PARALLEL_DEFAULTS.rankTimeoutMs)),
    ) as RankConfig;
    client.close();
    const { options, parallel } = config;
    const source = await openModelSource(options.modelPath, {
      loadFormat: options.loadFormat,
      seed: options.loadSeed,
    });
    const plan = shardPlan(source.config, parallel, rank);
    // libgomp reads its wait policy once, when the native library loads (src/engine/threads.ts).
    applyOmpEnvDefaults(Deno.env);
    const backend = NativeBackend.open({
      backend: options.backend,
      libraryPath: options.libraryPath,
      numThreads: options.numThreads ?? defaultNumThreads(),
    });
    const comm = new CommLibrary(backend.libraryPath);
    try {
      const shard = await loadShard(backend, source, plan);
      const parts = joinGroup(
        backend,
        comm,
        { rank, parallel, bindAddr: a.bindAddr },
        shard,
        { options, numKvBlocks: config.numKvBlocks, modelConfig: source.config },
        plan,
      );
      serveRank(parts);
    } finally {
      comm.close();
      backend.close();
    }
    return 0;
  } catch (error) {
    console.error(`denollm rank ${rank}: ${(error as Error).message}`);
    return 1;
  }
}

/**
 * `serve --node-rank K` (K > 0): starts this host's ranks and waits for them; the first to fail
 * ends the others and the exit status is non-zero.
 */
export async function runNode(parallel: ParallelOptions): Promise<number> {
  checkParallelOptions(parallel);
  const p = withDefaults(parallel);
  if (p.bindAddr === undefined) {
    throw new RangeError("--node-rank > 0 needs --bind-addr: this host's address the others reach");
  }
  const children = spawnRanks(nodeRanks(p, p.nodeRank ?? 0), p, p.bindAddr);
  const codes = await Promise.all(children.map(async ({ rank, child }) => {
    const status = await child.status;
    if (status.code !== 0) {
      for (const other of children) {
        try {
          other.child.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
      console.error(`denollm node ${p.nodeRank}: rank ${rank} exited with status ${status.code}`);
    }
    return status.code;
  }));
  return codes.find((c) => c !== 0) ?? 0;
}
