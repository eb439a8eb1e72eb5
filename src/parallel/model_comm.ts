// The collectives around a tensor-parallel rank's share of each layer (llama.ts's ModelComm):
// Megatron-LM's plain TP (all-reduce after row-parallel layers) and its sequence parallelism
// (reduce-scatter after them, all-gather before column-parallel ones, norms on token shards).
import { type DevicePtr, type NativeBackend, offset } from "../../ffi/native.ts";
import type { ModelComm } from "../model/llama.ts";
import type { Communicator } from "./comm.ts";

const F32 = 4;

/** Plain tensor parallelism: every rank holds every token's residual row. */
export class TensorParallelComm implements ModelComm {
  #backend: NativeBackend;
  #comm: Communicator;
  #hidden: number;

  constructor(backend: NativeBackend, comm: Communicator, hidden: number) {
    this.#backend = backend;
    this.#comm = comm;
    this.#hidden = hidden;
  }

  residualRows(numTokens: number): number {
    return numTokens;
  }
  embeddingOut(x: DevicePtr): DevicePtr {
    return x;
  }
  reduceEmbedding(partial: DevicePtr, _x: DevicePtr, numTokens: number): void {
    this.#comm.allReduce(partial, numTokens * this.#hidden);
  }
  normOut(full: DevicePtr): DevicePtr {
    return full;
  }
  gather(): void {}
  reduceAdd(partial: DevicePtr, x: DevicePtr, numTokens: number): void {
    const n = numTokens * this.#hidden;
    this.#comm.allReduce(partial, n);
    this.#backend.add({ out: x, a: x, b: partial, numElements: n });
  }
  gatherResidual(x: DevicePtr): DevicePtr {
    return x;
  }
  release(): void {}
}

/** Rows of each rank's sequence shard: tokens padded to a multiple of the group size. */
export function shardRows(numTokens: number, groupSize: number): number {
  return Math.ceil(numTokens / groupSize);
}

/**
 * Sequence parallelism: rank t holds residual rows [t·R, (t+1)·R) of the step's tokens padded to
 * W·R (the padding rows stay zero). Its buffers: the normed shard, the reduce-scattered shard and
 * the gathered residual, beside the workspace (whose all-token buffers hold W·R rows).
 */
export class SequenceParallelComm implements ModelComm {
  readonly shardBytes: number;
  #backend: NativeBackend;
  #comm: Communicator;
  #hidden: number;
  #normShard: DevicePtr;
  #sumShard: DevicePtr;
  #fullResidual: DevicePtr;
  #zeros: Float32Array;

  constructor(backend: NativeBackend, comm: Communicator, hidden: number, maxNumTokens: number) {
    this.#backend = backend;
    this.#comm = comm;
    this.#hidden = hidden;
    const maxRows = shardRows(maxNumTokens, comm.size);
    this.shardBytes = maxRows * hidden * F32;
    this.#normShard = backend.alloc(this.shardBytes);
    this.#sumShard = backend.alloc(this.shardBytes);
    this.#fullResidual = backend.alloc(maxRows * comm.size * hidden * F32);
    this.#zeros = new Float32Array((comm.size - 1) * hidden);
  }

  residualRows(numTokens: number): number {
    return shardRows(numTokens, this.#comm.size);
  }
  embeddingOut(_x: DevicePtr, scratch: DevicePtr): DevicePtr {
    return scratch;
  }
  reduceEmbedding(partial: DevicePtr, x: DevicePtr, numTokens: number): void {
    this.#zeroPadding(partial, numTokens);
    this.#comm.reduceScatter(partial, x, this.residualRows(numTokens) * this.#hidden);
  }
  normOut(): DevicePtr {
    return this.#normShard;
  }
  gather(full: DevicePtr, numTokens: number): void {
    this.#comm.allGather(this.#normShard, full, this.residualRows(numTokens) * this.#hidden);
  }
  reduceAdd(partial: DevicePtr, x: DevicePtr, numTokens: number): void {
    const n = this.residualRows(numTokens) * this.#hidden;
    this.#zeroPadding(partial, numTokens);
    this.#comm.reduceScatter(partial, this.#sumShard, n);
    this.#backend.add({ out: x, a: x, b: this.#sumShard, numElements: n });
  }
  gatherResidual(x: DevicePtr, numTokens: number): DevicePtr {
    this.#comm.allGather(x, this.#fullResidual, this.residualRows(numTokens) * this.#hidden);
    return this.#fullResidual;
  }

  /** Rows past the last token hold stale data: they must add nothing to the shard they land in. */
  #zeroPadding(rows: DevicePtr, numTokens: number): void {
    const numPad = this.residualRows(numTokens) * this.#comm.size - numTokens;
    if (numPad > 0) {
      this.#backend.upload(
        offset(rows, numTokens * this.#hidden * F32),
        this.#zeros.subarray(0, numPad * this.#hidden),
      );
    }
  }

  release(): void {
    for (const p of [this.#normShard, this.#sumShard, this.#fullResidual]) this.#backend.free(p);
  }
}
