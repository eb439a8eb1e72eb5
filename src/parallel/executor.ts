// The executor of a parallel group. Rank 0's `ParallelExecutor` is the engine's Executor: each
// step it broadcasts the plain ForwardBatch to every rank and runs its own share; every other
// rank runs `serveRank`, receiving the same batch. Per step each rank does its block copies, then
// the micro-batches (one without pipeline parallelism): the first stage embeds, later stages
// receive the residual stream from the stage before, the last stage's LM-head shards are
// all-gathered in its tensor-parallel group and its first rank sends the logits to rank 0.
import { type DevicePtr, dtypeSize, type NativeBackend } from "../../ffi/native.ts";
import type { Executor } from "../engine/executor.ts";
import type { ForwardBatch } from "../engine/forward_batch.ts";
import type { KvCache } from "../kv/kv_cache.ts";
import type { LlamaModel } from "../model/llama.ts";
import { ForwardWorkspace, type StepCapacity } from "../model/workspace.ts";
import { decodeBatch, encodeBatch, maxEncodedLength, splitBatch } from "./batch_codec.ts";
import type { Communicator } from "./comm.ts";
import type { ParallelOptions, ShardPlan } from "./plan.ts";

const F32 = 4;
/** An idle rank waits this long for its next step (rank 0 going away ends the wait at once). */
const IDLE_WAIT_MS = 2 ** 31 - 1;

const Kind = { step: 1, shutdown: 2, stats: 3 } as const;

/** Per-rank cost counters: what the cost bench prints. */
const MIB = 1 << 20;
/** Exact byte counts through float32: whole MiB and the rest, each well inside 24 bits. */
const mib = (bytes: number) => [Math.floor(bytes / MIB), bytes % MIB];

export interface RankStats {
  numSteps: number;
  stepMs: number;
  /** Time in tensor-parallel collectives (all-reduce, all-gather, reduce-scatter). */
  collectiveMs: number;
  collectiveBytes: number;
  /** Time in pipeline sends and receives, waiting for the neighbour stage included. */
  pipelineMs: number;
  pipelineBytes: number;
  /** Device bytes of the rank's step workspace (ForwardWorkspace.reservedBytes). */
  reservedBytes: number;
  /** Of those, the residual stream `x` and the normed / projected rows `h`. */
  residualBytes: number;
}

export interface RankParts {
  backend: NativeBackend;
  plan: ShardPlan;
  parallel: ParallelOptions;
  /** Every rank; broadcasts the batch, carries pipeline sends and the logits to rank 0. */
  world: Communicator;
  /** This stage's tensor-parallel group. */
  tp: Communicator;
  model: LlamaModel;
  kvCache: KvCache;
  /** Full vocabulary size (the shards' are padded). */
  vocabSize: number;
  capacity: Required<StepCapacity>;
  /** Releases the model's comm buffers and what else the launcher made. */
  releaseExtra?: () => void;
}

interface CommTotals {
  tpMs: number;
  tpBytes: number;
  wMs: number;
  wBytes: number;
}

/** One rank's share of every step. */
class RankRuntime {
  readonly parts: RankParts;
  readonly workspace: ForwardWorkspace;
  readonly stats: RankStats = {
    numSteps: 0,
    stepMs: 0,
    collectiveMs: 0,
    collectiveBytes: 0,
    pipelineMs: 0,
    pipelineBytes: 0,
    reservedBytes: 0,
    residualBytes: 0,
  };
  #header = new Int32Array(4);
  #headerDev: DevicePtr;
  #payload: Int32Array;
  #payloadDev: DevicePtr;
  #gathered: DevicePtr;
  #gatheredHost: Float32Array;
  #logits: Float32Array;
  #logitsDev: DevicePtr;
  #blockBytes: number;
  #localVocab: number;

  constructor(parts: RankParts) {
    this.parts = parts;
    const b = parts.backend;
    const c = parts.model.config;
    // Sequence shards pad the step to a multiple of the group: the all-token buffers need it.
    const tpSize = parts.tp.size;
    const capacity = {
      ...parts.capacity,
      maxNumTokens: Math.ceil(parts.capacity.maxNumTokens / tpSize) * tpSize,
    };
    // With sequence parallelism the residual stream holds only this rank's shard of the tokens.
    const residualRows = parts.parallel.sequenceParallel
      ? capacity.maxNumTokens / tpSize
      : capacity.maxNumTokens;
    this.workspace = new ForwardWorkspace(b, c, capacity, { residualRows });
    this.stats.reservedBytes = this.workspace.reservedBytes;
    this.stats.residualBytes = this.workspace.residualBytes;
    this.#headerDev = b.alloc(this.#header.byteLength);
    this.#payload = new Int32Array(maxEncodedLength(parts.capacity));
    this.#payloadDev = b.alloc(this.#payload.byteLength);
    const rows = parts.capacity.maxNumLogitRows;
    this.#localVocab = c.vocabSize;
    this.#gathered = b.alloc(tpSize * rows * c.vocabSize * F32);
    this.#gatheredHost = new Float32Array(tpSize * rows * c.vocabSize);
    this.#logits = new Float32Array(rows * parts.vocabSize);
    this.#logitsDev = b.alloc(this.#logits.byteLength);
    const kv = parts.kvCache;
    this.#blockBytes = kv.numKvHeads * kv.blockSize * kv.headDim * dtypeSize(kv.dtype);
  }

  get rank(): number {
    return this.parts.world.rank;
  }

  /** Rank 0: sends the step to every rank. */
  broadcastStep(batch: ForwardBatch): void {
    const length = encodeBatch(batch, this.#payload);
    this.#sendHeader(Kind.step, length);
    const b = this.parts.backend;
    b.upload(this.#payloadDev, this.#payload.subarray(0, length));
    this.parts.world.broadcast(this.#payloadDev, length * 4, 0);
  }

  /** Rank 0: tells every rank what comes next. */
  #sendHeader(kind: number, value: number): void {
    this.#header.set([kind, value, 0, 0]);
    this.parts.backend.upload(this.#headerDev, this.#header);
    this.parts.world.broadcast(this.#headerDev, this.#header.byteLength, 0, IDLE_WAIT_MS);
  }

  /** Other ranks: waits for rank 0's next header; returns [kind, value]. */
  receiveHeader(): [number, number] {
    this.parts.world.broadcast(this.#headerDev, this.#header.byteLength, 0, IDLE_WAIT_MS);
    this.parts.backend.download(this.#header, this.#headerDev);
    return [this.#header[0], this.#header[1]];
  }

  receiveStep(length: number): ForwardBatch {
    this.parts.world.broadcast(this.#payloadDev, length * 4, 0);
    const data = this.#payload.subarray(0, length);
    this.parts.backend.download(data, this.#payloadDev);
    return decodeBatch(data);
  }

  /** Runs this rank's share of a step; on rank 0 returns the step's logits [rows, vocab]. */
  runStep(batch: ForwardBatch): Float32Array {
    const started = performance.now();
    const { plan, world, tp, model, kvCache } = this.parts;
    const before = this.#commTotals();
    this.#copyBlocks(batch);
    const pp = this.parts.parallel.pipelineParallelSize;
    const tpSize = tp.size;
    const micro = pp > 1 ? splitBatch(batch, this.parts.parallel.numMicroBatches ?? pp) : [batch];
    const prev = plan.position.rank - tpSize;
    const next = plan.position.rank + tpSize;
    const hidden = model.config.hiddenSize;
    const isLogitSender = plan.isLastStage && plan.position.tpRank === 0;
    let numRows = 0;
    for (let m = 0; m < micro.length; m++) {
      const mb = micro[m];
      const ws = this.workspace;
      ws.upload(plan.isFirstStage ? this.#localTokens(mb) : mb);
      const numTokens = mb.tokenIds.length;
      const residualBytes =
        Math.ceil(numTokens / (this.parts.parallel.sequenceParallel ? tpSize : 1)) *
        hidden * F32;
      if (!plan.isFirstStage) world.recv(ws.x, residualBytes, prev, m);
      model.forward(mb, kvCache, ws, {
        fromHidden: !plan.isFirstStage,
        toHidden: !plan.isLastStage,
      });
      if (!plan.isLastStage) {
        world.send(ws.x, residualBytes, next, m);
        continue;
      }
      const rows = mb.numLmHeadRows ?? mb.logitRows.length;
      if (rows > 0) {
        tp.allGather(ws.logits, this.#gathered, rows * this.#localVocab);
        if (isLogitSender) this.#assemble(rows, numRows);
      }
      numRows += rows;
    }
    // The last stage's first rank holds the step's logits; rank 0 needs them.
    const numLogits = batch.numLmHeadRows ?? batch.logitRows.length;
    const numFloats = numLogits * this.parts.vocabSize;
    if (pp > 1 && numFloats > 0) {
      if (isLogitSender) {
        this.parts.backend.upload(this.#logitsDev, this.#logits.subarray(0, numFloats));
        world.send(this.#logitsDev, numFloats * F32, 0, 1 << 20);
      } else if (this.rank === 0) {
        world.recv(
          this.#logitsDev,
          numFloats * F32,
          plan.position.rank + (pp - 1) * tpSize,
          1 << 20,
        );
        this.parts.backend.download(this.#logits.subarray(0, numFloats), this.#logitsDev);
      }
    }
    this.#account(before, performance.now() - started);
    return this.#logits.subarray(0, numFloats);
  }

  /**
   * The batch with token ids of this rank's embedding rows: its own vocabulary rows, and the zero
   * row past them for every other token (the all-reduce adds the owner's row).
   */
  #localTokens(batch: ForwardBatch): ForwardBatch {
    const { vocabStart, vocabEnd, vocabPerRank } = this.parts.plan;
    const ids = batch.tokenIds.map((id) =>
      id >= vocabStart && id < vocabEnd ? id - vocabStart : vocabPerRank
    );
    // A token outside the whole vocabulary must still fail as it would on one rank.
    const bad = batch.tokenIds.find((id) => id < 0 || id >= this.parts.vocabSize);
    if (bad !== undefined) {
      throw new RangeError(
        `Token id ${bad} is outside the vocabulary [0, ${this.parts.vocabSize})`,
      );
    }
    return { ...batch, tokenIds: ids };
  }

  /** Vocabulary shards [tp, rows, localVocab] into rows of the full vocabulary, at rowOffset. */
  #assemble(rows: number, rowOffset: number): void {
    const tpSize = this.parts.tp.size;
    const local = this.#localVocab;
    const per = this.parts.plan.vocabPerRank;
    const vocab = this.parts.vocabSize;
    const host = this.#gatheredHost.subarray(0, tpSize * rows * local);
    this.parts.backend.download(host, this.#gathered);
    for (let r = 0; r < rows; r++) {
      const dst = (rowOffset + r) * vocab;
      for (let t = 0; t < tpSize; t++) {
        const count = Math.max(0, Math.min(per, vocab - t * per));
        const src = (t * rows + r) * local;
        this.#logits.set(host.subarray(src, src + count), dst + t * per);
      }
    }
  }

  #copyBlocks(batch: ForwardBatch): void {
    const numCopies = batch.blockCopies.length / 2;
    if (numCopies === 0) return;
    const ws = this.workspace;
    // The block pairs go up with the batch's metadata.
    ws.upload({ ...batch, numLmHeadRows: 0, logitRows: new Int32Array(0) });
    for (const layer of this.parts.kvCache.layers) {
      for (const cache of [layer.k, layer.v]) {
        this.parts.backend.copyBlocks({
          cache,
          pairs: ws.meta.blockCopies,
          numPairs: numCopies,
          blockBytes: this.#blockBytes,
          numBlocks: this.parts.kvCache.numBlocks,
        });
      }
    }
  }

  #commTotals(): CommTotals {
    const { world, tp } = this.parts;
    return {
      tpMs: tp.counters.ms,
      tpBytes: tp.counters.bytes,
      wMs: world.counters.ms,
      wBytes: world.counters.bytes,
    };
  }

  #account(before: CommTotals, stepMs: number): void {
    const after = this.#commTotals();
    this.stats.numSteps++;
    this.stats.stepMs += stepMs;
    this.stats.collectiveMs += after.tpMs - before.tpMs;
    this.stats.collectiveBytes += after.tpBytes - before.tpBytes;
    this.stats.pipelineMs += after.wMs - before.wMs;
    this.stats.pipelineBytes += after.wBytes - before.wBytes;
  }

  /** Every rank's counters, gathered to every rank: [world][N] (byte counts split in MiB + rest). */
  gatherStats(): RankStats[] {
    const b = this.parts.backend;
    const s = this.stats;
    const mine = new Float32Array([
      s.numSteps,
      s.stepMs,
      s.collectiveMs,
      s.collectiveBytes / 1e6,
      s.pipelineMs,
      s.pipelineBytes / 1e6,
      ...mib(s.reservedBytes),
      ...mib(s.residualBytes),
    ]);
    const world = this.parts.world;
    const send = b.alloc(mine.byteLength);
    const recv = b.alloc(mine.byteLength * world.size);
    try {
      b.upload(send, mine);
      world.allGather(send, recv, mine.length);
      const all = new Float32Array(mine.length * world.size);
      b.download(all, recv);
      return Array.from({ length: world.size }, (_, r) => {
        const v = all.subarray(r * mine.length, (r + 1) * mine.length);
        return {
          numSteps: v[0],
          stepMs: v[1],
          collectiveMs: v[2],
          collectiveBytes: v[3] * 1e6,
          pipelineMs: v[4],
          pipelineBytes: v[5] * 1e6,
          reservedBytes: v[6] * MIB + v[7],
          residualBytes: v[8] * MIB + v[9],
        };
      });
    } finally {
      b.free(send);
      b.free(recv);
    }
  }

  /** Rank 0: ends every rank's loop. */
  shutdownAll(): void {
    this.#sendHeader(Kind.shutdown, 0);
  }

  requestStats(): RankStats[] {
    this.#sendHeader(Kind.stats, 0);
    return this.gatherStats();
  }

  release(): void {
    const b = this.parts.backend;
    this.workspace.release();
    for (const p of [this.#headerDev, this.#payloadDev, this.#gathered, this.#logitsDev]) b.free(p);
    this.parts.releaseExtra?.();
    this.parts.kvCache.release();
    this.parts.model.release();
    this.parts.tp.destroy();
    this.parts.world.destroy();
  }
}

/** Wraps a failed collective in one line that says the group, not this request, failed. */
function groupFailure(error: unknown, rank: number): Error {
  return new Error(
    `Parallel group failed on rank ${rank}: a rank died, hung or left (${
      (error as Error).message
    })`,
    { cause: error },
  );
}

/** Rank 0's executor: the engine drives the whole group through it. */
export class ParallelExecutor implements Executor {
  readonly vocabSize: number;
  readonly numKvBlocks: number;
  readonly blockSize: number;
  readonly capacity: Required<StepCapacity>;
  readonly reservedBytes: number;
  readonly hiddenSize: number;
  #runtime: RankRuntime;
  #isReleased = false;
  #onRelease: () => void;

  constructor(parts: RankParts, onRelease: () => void = () => {}) {
    if (parts.world.rank !== 0) throw new RangeError("ParallelExecutor runs on rank 0 only");
    this.#runtime = new RankRuntime(parts);
    this.vocabSize = parts.vocabSize;
    this.hiddenSize = parts.model.config.hiddenSize;
    this.numKvBlocks = parts.kvCache.numBlocks;
    this.blockSize = parts.kvCache.blockSize;
    this.capacity = parts.capacity;
    this.reservedBytes = this.#runtime.workspace.reservedBytes;
    this.#onRelease = onRelease;
  }

  execute(batch: ForwardBatch): Float32Array {
    try {
      this.#runtime.broadcastStep(batch);
      return this.#runtime.runStep(batch);
    } catch (error) {
      if (error instanceof RangeError) throw error;
      throw groupFailure(error, 0);
    }
  }

  hiddenRows(numRows: number): Float32Array {
    if (this.#runtime.parts.parallel.pipelineParallelSize > 1) {
      throw new RangeError(
        "Embeddings need the final hidden states, which stay on the last pipeline stage: serve " +
          "them without --pipeline-parallel-size",
      );
    }
    return this.#runtime.workspace.downloadHidden(numRows);
  }

  /** Every rank's cost counters (a collective: every rank takes part). */
  rankStats(): RankStats[] {
    return this.#runtime.requestStats();
  }

  release(): void {
    if (this.#isReleased) return;
    this.#isReleased = true;
    try {
      this.#runtime.shutdownAll();
    } catch {
      // A group that already failed cannot be told to stop; its ranks stop on their own.
    }
    this.#runtime.release();
    this.#onRelease();
  }
}

/** A non-zero rank's loop: steps until rank 0 says stop (returns) or the group fails (throws). */
export function serveRank(parts: RankParts): RankStats {
  const runtime = new RankRuntime(parts);
  try {
    for (;;) {
      const [kind, value] = runtime.receiveHeader();
      if (kind === Kind.shutdown) return runtime.stats;
      if (kind === Kind.stats) runtime.gatherStats();
      else if (kind === Kind.step) runtime.runStep(runtime.receiveStep(value));
      else throw new Error(`Rank 0 sent an unknown message kind ${kind}`);
    }
  } catch (error) {
    throw groupFailure(error, parts.world.rank);
  } finally {
    runtime.release();
  }
}
