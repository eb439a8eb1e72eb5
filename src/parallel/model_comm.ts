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
 * W·R (the padding rows stay zero), in a workspace whose `x` has only the shard's rows. It needs no
 * buffer of its own: the normed shard is written into its own slot of the all-token `h` and
 * gathered there in place, row-parallel partials are reduce-scattered in place into the same slot,
 * and the final residual is gathered into `h` once the layers are done with it.
 */
export class SequenceParallelComm implements ModelComm {
  #backend: NativeBackend;
  #comm: Communicator;
  #hidden: number;
  #zeros: Float32Array;

  constructor(backend: NativeBackend, comm: Communicator, hidden: number) {
    this.#backend = backend;
    this.#comm = comm;
    this.#hidden = hidden;
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
  normOut(full: DevicePtr, numTokens: number): DevicePtr {
    return this.#slot(full, numTokens);
  }
  gather(full: DevicePtr, numTokens: number): void {
    const n = this.residualRows(numTokens) * this.#hidden;
    this.#comm.allGather(this.#slot(full, numTokens), full, n);
  }
  reduceAdd(partial: DevicePtr, x: DevicePtr, numTokens: number): void {
    const n = this.residualRows(numTokens) * this.#hidden;
    this.#zeroPadding(partial, numTokens);
    const sum = this.#slot(partial, numTokens);
    this.#comm.reduceScatter(partial, sum, n);
    this.#backend.add({ out: x, a: x, b: sum, numElements: n });
  }
  gatherResidual(x: DevicePtr, scratch: DevicePtr, numTokens: number): DevicePtr {
    this.#comm.allGather(x, scratch, this.residualRows(numTokens) * this.#hidden);
    return scratch;
  }

  /** This rank's rows [t·R, (t+1)·R) of an all-token buffer. */
  #slot(full: DevicePtr, numTokens: number): DevicePtr {
    return offset(full, this.#comm.rank * this.residualRows(numTokens) * this.#hidden * F32);
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

  release(): void {}
}
