// Which part of the model each rank holds: ranks laid out as pipeline stages of tensor-parallel
// groups, and per rank its layers, attention heads, MLP columns and vocabulary rows.
import type { ModelConfig } from "../model/config.ts";

/** How the model is split across ranks, and how ranks find each other (vLLM/torchrun names). */
export interface ParallelOptions {
  /** Ranks per pipeline stage that split each layer (--tensor-parallel-size). */
  tensorParallelSize: number;
  /** Contiguous layer stages (--pipeline-parallel-size). */
  pipelineParallelSize: number;
  /** RMSNorm and the residual on sequence shards, with TP (--sequence-parallel). */
  sequenceParallel?: boolean;
  /** Hosts taking part (--nnodes); ranks are spread evenly, node 0 holds rank 0. */
  nnodes?: number;
  /** This host's index (--node-rank). */
  nodeRank?: number;
  /** Address of rank 0's control store, reachable from every host (--master-addr). */
  masterAddr?: string;
  /** Its port (--master-port); 0 on a single host picks a free one. */
  masterPort?: number;
  /** The address this host's ranks listen on for collectives (--bind-addr, default master-addr). */
  bindAddr?: string;
  /** How long ranks may take to join, and a collective to make progress (--rank-timeout). */
  rankTimeoutMs?: number;
  /** Micro-batches per step with pipeline parallelism (default the number of stages). */
  numMicroBatches?: number;
}

export const PARALLEL_DEFAULTS = {
  masterAddr: "127.0.0.1",
  masterPort: 29500,
  rankTimeoutMs: 60_000,
} as const;

export function worldSize(p: ParallelOptions): number {
  return p.tensorParallelSize * p.pipelineParallelSize;
}

/** Where one rank sits: its pipeline stage and its index in the stage's tensor-parallel group. */
export interface RankPosition {
  rank: number;
  stage: number;
  tpRank: number;
}

export function rankPosition(p: ParallelOptions, rank: number): RankPosition {
  return {
    rank,
    stage: Math.floor(rank / p.tensorParallelSize),
    tpRank: rank % p.tensorParallelSize,
  };
}

/** The ranks one host runs: world / nnodes consecutive ranks. */
export function nodeRanks(p: ParallelOptions, nodeRank: number): number[] {
  const world = worldSize(p);
  const nnodes = p.nnodes ?? 1;
  const perNode = world / nnodes;
  return Array.from({ length: perNode }, (_, i) => nodeRank * perNode + i);
}

/** Checks the options; messages name the flags. */
export function checkParallelOptions(p: ParallelOptions): void {
  const positive = (value: number | undefined, flag: string) => {
    if (value !== undefined && (!Number.isInteger(value) || value < 1)) {
      throw new RangeError(`${flag} must be a positive integer, got ${value}`);
    }
  };
  positive(p.tensorParallelSize, "--tensor-parallel-size");
  positive(p.pipelineParallelSize, "--pipeline-parallel-size");
  positive(p.nnodes, "--nnodes");
  positive(p.numMicroBatches, "--num-micro-batches");
  positive(p.rankTimeoutMs, "--rank-timeout");
  const nnodes = p.nnodes ?? 1;
  const world = worldSize(p);
  if (world % nnodes !== 0) {
    throw new RangeError(
      `--nnodes ${nnodes} must divide the ${world} ranks (--tensor-parallel-size × ` +
        "--pipeline-parallel-size)",
    );
  }
  const nodeRank = p.nodeRank ?? 0;
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) {
    throw new RangeError(`--node-rank must be an integer in [0, ${nnodes}), got ${nodeRank}`);
  }
  if (p.sequenceParallel && p.tensorParallelSize < 2) {
    throw new RangeError("--sequence-parallel needs --tensor-parallel-size of at least 2");
  }
  const port = p.masterPort;
  if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) {
    throw new RangeError(`--master-port must be an integer in [0, 65535], got ${port}`);
  }
}

/** A contiguous share of n items: the first n % parts shares get one more. */
export function evenSplit(
  n: number,
  parts: number,
  index: number,
): { start: number; count: number } {
  const base = Math.floor(n / parts);
  const extra = n % parts;
  return { start: index * base + Math.min(index, extra), count: base + (index < extra ? 1 : 0) };
}

/** One rank's share of the model. */
export interface ShardPlan {
  position: RankPosition;
  /** Global layers [layerStart, layerStart + numLayers) of its stage. */
  layerStart: number;
  numLayers: number;
  isFirstStage: boolean;
  isLastStage: boolean;
  /** Global query heads it computes, in order. */
  qHeads: number[];
  /**
   * Global KV heads it holds, in order, one per local KV group: split with the query heads when
   * there are at least as many KV heads as ranks, else replicated (docs/parallelism.md).
   */
  kvHeads: number[];
  /** Its columns of the MLP's intermediate dimension. */
  intermediateStart: number;
  intermediateSize: number;
  /** Its vocabulary rows [vocabStart, vocabEnd), padded to vocabPerRank rows plus one zero row. */
  vocabStart: number;
  vocabEnd: number;
  vocabPerRank: number;
  /** Whether it holds the embedding and LM head at all (first and last stages). */
  holdsVocab: boolean;
}

function range(start: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => start + i);
}

/** The attention heads of tensor-parallel rank t of tp. */
export function headShare(
  c: Pick<ModelConfig, "numHeads" | "numKvHeads">,
  tp: number,
  t: number,
): { qHeads: number[]; kvHeads: number[] } {
  const group = c.numHeads / c.numKvHeads;
  if (c.numKvHeads >= tp) {
    // Whole KV groups per rank: every local query head keeps its own KV head.
    const kv = evenSplit(c.numKvHeads, tp, t);
    const kvHeads = range(kv.start, kv.count);
    return { qHeads: kvHeads.flatMap((k) => range(k * group, group)), kvHeads };
  }
  // Fewer KV heads than ranks: split the query heads and give each rank copies of the KV heads
  // they read. The kernel maps local query head i to local KV head i / (heads / kvHeads), so the
  // copies must form equal consecutive groups; when they cannot, each query head gets its own.
  const q = evenSplit(c.numHeads, tp, t);
  const qHeads = range(q.start, q.count);
  const kvOf = qHeads.map((h) => Math.floor(h / group));
  const distinct = [...new Set(kvOf)];
  const perKv = qHeads.length / distinct.length;
  const isUniform = Number.isInteger(perKv) &&
    kvOf.every((k, i) => k === distinct[Math.floor(i / perKv)]);
  return { qHeads, kvHeads: isUniform ? distinct : kvOf };
}

/** The share of the model rank `rank` holds. */
export function shardPlan(config: ModelConfig, p: ParallelOptions, rank: number): ShardPlan {
  const tp = p.tensorParallelSize;
  const pp = p.pipelineParallelSize;
  const position = rankPosition(p, rank);
  if (config.numHeads < tp || config.numHeads % config.numKvHeads !== 0) {
    throw new RangeError(
      `--tensor-parallel-size ${tp} needs at least as many attention heads (the model has ` +
        `${config.numHeads}, with ${config.numKvHeads} KV heads)`,
    );
  }
  if (config.intermediateSize < tp) {
    throw new RangeError(
      `--tensor-parallel-size ${tp} exceeds the model's intermediate size ${config.intermediateSize}`,
    );
  }
  if (config.numLayers < pp) {
    throw new RangeError(
      `--pipeline-parallel-size ${pp} exceeds the model's ${config.numLayers} layers`,
    );
  }
  const layers = evenSplit(config.numLayers, pp, position.stage);
  const heads = headShare(config, tp, position.tpRank);
  const mlp = evenSplit(config.intermediateSize, tp, position.tpRank);
  const vocabPerRank = Math.ceil(config.vocabSize / tp);
  const vocabStart = Math.min(config.vocabSize, position.tpRank * vocabPerRank);
  const isFirstStage = position.stage === 0;
  const isLastStage = position.stage === pp - 1;
  return {
    position,
    layerStart: layers.start,
    numLayers: layers.count,
    isFirstStage,
    isLastStage,
    qHeads: heads.qHeads,
    kvHeads: heads.kvHeads,
    intermediateStart: mlp.start,
    intermediateSize: mlp.count,
    vocabStart,
    vocabEnd: Math.min(config.vocabSize, vocabStart + vocabPerRank),
    vocabPerRank,
    holdsVocab: isFirstStage || isLastStage,
  };
}

/**
 * The config of a rank's share as the forward pass sees it: its heads, columns and layers, and a
 * vocabulary of its rows plus the zero row that tokens of other ranks read (one zero row when the
 * stage holds no vocabulary).
 */
export function shardConfig(config: ModelConfig, plan: ShardPlan): ModelConfig {
  return {
    ...config,
    numLayers: plan.numLayers,
    numHeads: plan.qHeads.length,
    numKvHeads: plan.kvHeads.length,
    intermediateSize: plan.intermediateSize,
    vocabSize: plan.holdsVocab ? plan.vocabPerRank + 1 : 1,
  };
}
