// Every buffer a forward step needs, reserved once at start-up for the largest step the scheduler
// can emit and kept at fixed addresses: no allocation, free or device sync in the steady state, so
// a step can be captured as a CUDA graph (src/engine/decode_graphs.ts).
import { type DevicePtr, type NativeBackend, offset } from "../../ffi/native.ts";
import type { ForwardBatch } from "../engine/forward_batch.ts";
import type { ModelConfig } from "./config.ts";

/** The largest step, from --max-num-batched-tokens, --max-num-seqs and --max-model-len. */
export interface StepCapacity {
  /** Tokens in one step: prefill chunks plus decode tokens. */
  maxNumTokens: number;
  /** Sequences in one step; also the most block copies. */
  maxNumSeqs: number;
  /**
   * Token rows that get logits in one step (sampling rows, and prompt rows for prompt logprobs);
   * at least maxNumSeqs, which is the default.
   */
  maxNumLogitRows?: number;
  /** Width of every block table: ceil(max model length / block size). */
  maxBlocksPerSeq: number;
  /** Tokens per KV block. */
  blockSize: number;
}

const F32 = 4;
const I32 = 4;

/** Device addresses of one step's int32 metadata; fixed for the workspace's lifetime. */
export interface StepMetadata {
  tokenIds: DevicePtr; // [maxNumTokens]
  positions: DevicePtr; // [maxNumTokens]
  slotMapping: DevicePtr; // [maxNumTokens]
  seqLens: DevicePtr; // [maxNumSeqs]
  queryStart: DevicePtr; // [maxNumSeqs + 1]
  blockTables: DevicePtr; // [maxNumSeqs, maxBlocksPerSeq]
  logitRows: DevicePtr; // [maxNumLogitRows]
  blockCopies: DevicePtr; // [maxNumSeqs, 2]
}

/** Checks that a capacity is usable; the messages name the flags the values come from. */
function checkCapacity(c: StepCapacity): void {
  const flags: Record<Exclude<keyof StepCapacity, "maxNumLogitRows">, string> = {
    maxNumTokens: "--max-num-batched-tokens",
    maxNumSeqs: "--max-num-seqs",
    maxBlocksPerSeq: "--max-model-len",
    blockSize: "--block-size",
  };
  for (const key of Object.keys(flags) as (keyof typeof flags)[]) {
    if (!Number.isInteger(c[key]) || c[key] <= 0) {
      throw new RangeError(`${key} (${flags[key]}) must be a positive integer, got ${c[key]}`);
    }
  }
}

export class ForwardWorkspace {
  readonly capacity: Required<StepCapacity>;
  /** Device bytes this workspace holds, kernel workspace included. */
  readonly reservedBytes: number;
  readonly x: DevicePtr; // [residualRows, hidden] residual stream
  readonly h: DevicePtr; // [T, hidden] normed / projected
  /** Rows of `x`: maxNumTokens, or a sequence-parallel rank's shard of them. */
  readonly residualRows: number;
  /** Bytes of `x` and `h`, the residual stream and the normed / projected rows. */
  readonly residualBytes: number;
  readonly qkv: DevicePtr; // [T, qkvDim]
  readonly attn: DevicePtr; // [T, qDim]
  readonly gateUp: DevicePtr; // [T, 2 * intermediate]
  readonly act: DevicePtr; // [T, intermediate]
  readonly last: DevicePtr; // [L, hidden] rows that get logits (L = maxNumLogitRows)
  readonly logits: DevicePtr; // [L, vocab]
  /** Layers whose output rows are kept for the logit rows, in this order (empty: none). */
  readonly captureLayers: readonly number[];
  /** [captureLayers.length, L, hidden]: each captured layer's output at the logit rows. */
  readonly captured: DevicePtr | null = null;
  readonly meta: StepMetadata;
  #backend: NativeBackend;
  #vocabSize: number;
  #allocations: DevicePtr[] = [];
  /** Host staging blocks (dl_host_alloc: pinned on CUDA, so copies through them are DMA). */
  #hostBlocks: Deno.PointerObject[] = [];
  #metaDevice: DevicePtr;
  /** Staging for the metadata, or on the CPU build a view of the device memory itself. */
  #metaHost: Int32Array;
  #metaIsDevice: boolean;
  #offsets: Record<keyof StepMetadata, number>;
  #logitsHost: Float32Array;
  #hiddenHost: Float32Array;
  #hiddenSize: number;
  /** Layer index -> its slot in `captured`, or -1; null when nothing is captured. */
  #captureSlot: Int32Array | null = null;
  #capturedHost: Float32Array | null = null;

  /**
   * `captureLayers` (decoder layer indices, 0-based) makes the forward pass keep those layers'
   * outputs at the logit rows (distill-export's hidden states); without it nothing is reserved
   * and the forward pass does no extra work. `residualRows` sizes the residual stream `x` for a
   * sequence-parallel rank, which holds only its shard of the tokens (default maxNumTokens).
   */
  constructor(
    backend: NativeBackend,
    config: ModelConfig,
    capacity: StepCapacity,
    options: { captureLayers?: readonly number[]; residualRows?: number } = {},
  ) {
    checkCapacity(capacity);
    const captureLayers = [...(options.captureLayers ?? [])];
    for (const l of captureLayers) {
      if (!Number.isInteger(l) || l < 0 || l >= config.numLayers) {
        throw new RangeError(
          `Captured layers must be integers from 0 to ${config.numLayers - 1}, got ${l}`,
        );
      }
    }
    if (new Set(captureLayers).size !== captureLayers.length) {
      throw new RangeError(`Captured layers must not repeat, got ${captureLayers.join(",")}`);
    }
    this.captureLayers = captureLayers;
    this.#backend = backend;
    this.#vocabSize = config.vocabSize;
    this.#hiddenSize = config.hiddenSize;
    this.capacity = {
      ...capacity,
      maxNumLogitRows: capacity.maxNumLogitRows ?? capacity.maxNumSeqs,
    };
    const { maxNumTokens: t, maxNumSeqs: s, maxBlocksPerSeq: w } = capacity;
    const l = this.capacity.maxNumLogitRows;
    if (!Number.isInteger(l) || l < s) {
      throw new RangeError(
        `maxNumLogitRows (--max-num-logit-rows) must be an integer of at least maxNumSeqs ` +
          `(${s}), got ${l}`,
      );
    }
    const c = config;
    const qDim = c.numHeads * c.headDim;
    const qkvDim = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
    let bytes = 0;
    const alloc = (sizeBytes: number) => {
      const ptr = backend.alloc(sizeBytes);
      this.#allocations.push(ptr);
      bytes += sizeBytes;
      return ptr;
    };
    // Every host array a step copies through lives in staging memory of fixed address.
    const staging = (sizeBytes: number) => {
      const block = backend.hostAlloc(sizeBytes);
      this.#hostBlocks.push(block.ptr);
      return block.buffer;
    };
    const residualRows = options.residualRows ?? t;
    if (!Number.isInteger(residualRows) || residualRows < 1 || residualRows > t) {
      throw new RangeError(
        `residualRows must be an integer from 1 to maxNumTokens (${t}), got ${residualRows}`,
      );
    }
    this.residualRows = residualRows;
    this.residualBytes = (residualRows + t) * c.hiddenSize * F32;
    try {
      this.x = alloc(residualRows * c.hiddenSize * F32);
      this.h = alloc(t * c.hiddenSize * F32);
      this.qkv = alloc(t * qkvDim * F32);
      this.attn = alloc(t * qDim * F32);
      this.gateUp = alloc(t * 2 * c.intermediateSize * F32);
      this.act = alloc(t * c.intermediateSize * F32);
      this.last = alloc(l * c.hiddenSize * F32);
      this.logits = alloc(l * c.vocabSize * F32);
      if (captureLayers.length > 0) {
        this.captured = alloc(captureLayers.length * l * c.hiddenSize * F32);
        this.#capturedHost = new Float32Array(
          staging(captureLayers.length * l * c.hiddenSize * F32),
        );
        this.#captureSlot = new Int32Array(c.numLayers).fill(-1);
        captureLayers.forEach((layer, slot) => this.#captureSlot![layer] = slot);
      }
      // The metadata regions, in int32 elements, one after another.
      const lengths: Record<keyof StepMetadata, number> = {
        tokenIds: t,
        positions: t,
        slotMapping: t,
        seqLens: s,
        queryStart: s + 1,
        blockTables: s * w,
        logitRows: l,
        blockCopies: 2 * s,
      };
      let at = 0;
      this.#offsets = {} as Record<keyof StepMetadata, number>;
      for (const key of Object.keys(lengths) as (keyof StepMetadata)[]) {
        this.#offsets[key] = at;
        at += lengths[key];
      }
      this.#metaDevice = alloc(at * I32);
      const view = backend.hostView(this.#metaDevice, at * I32);
      this.#metaIsDevice = view !== null;
      this.#metaHost = view === null
        ? new Int32Array(staging(at * I32))
        : new Int32Array(view.buffer, view.byteOffset, at);
      const device = this.#metaDevice;
      const offsets = this.#offsets;
      this.meta = Object.fromEntries(
        (Object.keys(offsets) as (keyof StepMetadata)[]).map((k) => [
          k,
          offset(device, offsets[k] * I32),
        ]),
      ) as unknown as StepMetadata;
      this.#logitsHost = new Float32Array(staging(l * c.vocabSize * F32));
      this.#hiddenHost = new Float32Array(staging(l * c.hiddenSize * F32));
      bytes += backend.reserveWorkspace({
        maxNumTokens: t,
        numHeads: c.numHeads,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        blockSize: capacity.blockSize,
        maxBlocksPerSeq: w,
        maxMatmulK: Math.max(c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize),
      });
    } catch (error) {
      this.release();
      throw error;
    }
    this.reservedBytes = bytes;
  }

  /**
   * Checks a batch against the capacity and writes its metadata to the fixed places (block tables
   * widened to the fixed width), with one host-to-device copy, or none on the CPU build.
   */
  upload(batch: ForwardBatch): void {
    const cap = this.capacity;
    const numTokens = batch.tokenIds.length;
    const numSeqs = batch.seqLens.length;
    const numLogits = batch.logitRows.length;
    const width = batch.maxBlocksPerSeq;
    if (numTokens === 0) throw new RangeError("A forward batch needs at least one token");
    if (
      batch.positions.length !== numTokens || batch.slotMapping.length !== numTokens ||
      batch.queryStart.length !== numSeqs + 1 || batch.blockTables.length !== numSeqs * width ||
      batch.blockCopies.length % 2 !== 0
    ) {
      throw new RangeError("Forward batch arrays disagree in length");
    }
    const over = (what: string, n: number, max: number, flag: string) => {
      if (n > max) {
        throw new RangeError(`A step has ${n} ${what}, more than the ${max} reserved (${flag})`);
      }
    };
    over("tokens", numTokens, cap.maxNumTokens, "--max-num-batched-tokens");
    over("sequences", numSeqs, cap.maxNumSeqs, "--max-num-seqs");
    over("logit rows", numLogits, cap.maxNumLogitRows, "--max-num-logit-rows");
    const numHeadRows = batch.numLmHeadRows ?? numLogits;
    if (!Number.isInteger(numHeadRows) || numHeadRows < 0 || numHeadRows > numLogits) {
      throw new RangeError(
        `numLmHeadRows must be an integer from 0 to the ${numLogits} logit rows, got ${numHeadRows}`,
      );
    }
    over("blocks per sequence", width, cap.maxBlocksPerSeq, "--max-model-len");
    over("block copies", batch.blockCopies.length / 2, cap.maxNumSeqs, "--max-num-seqs");

    const host = this.#metaHost;
    const o = this.#offsets;
    host.set(batch.tokenIds, o.tokenIds);
    host.set(batch.positions, o.positions);
    host.set(batch.slotMapping, o.slotMapping);
    host.set(batch.seqLens, o.seqLens);
    host.set(batch.queryStart, o.queryStart);
    host.set(batch.logitRows, o.logitRows);
    host.set(batch.blockCopies, o.blockCopies);
    const fixed = cap.maxBlocksPerSeq;
    for (let i = 0; i < numSeqs; i++) {
      const row = o.blockTables + i * fixed;
      host.set(batch.blockTables.subarray(i * width, (i + 1) * width), row);
      host.fill(0, row + width, row + fixed);
    }
    if (!this.#metaIsDevice) this.#backend.upload(this.#metaDevice, host);
  }

  /** The logits of the first numRows rows; the array is reused by the next step. */
  downloadLogits(numRows: number): Float32Array {
    const out = this.#logitsHost.subarray(0, numRows * this.#vocabSize);
    if (numRows > 0) this.#backend.download(out, this.logits);
    return out;
  }

  /**
   * The final-norm hidden states of the first numRows logit rows (`last`, which the LM head reads
   * and leaves as it is); the array is reused by the next step.
   */
  downloadHidden(numRows: number): Float32Array {
    const out = this.#hiddenHost.subarray(0, numRows * this.#hiddenSize);
    this.#backend.download(out, this.last);
    return out;
  }

  /** Where layer `layer`'s output rows go in `captured`, or null if it is not captured. */
  captureOut(layer: number): DevicePtr | null {
    const slot = this.#captureSlot?.[layer] ?? -1;
    if (slot < 0) return null;
    return offset(this.captured!, slot * this.capacity.maxNumLogitRows * this.#hiddenSize * F32);
  }

  /**
   * The captured layers' outputs at the first numRows logit rows, one [numRows, hidden] array per
   * layer of `captureLayers`; the arrays are reused by the next step.
   */
  downloadCaptured(numRows: number): Float32Array[] {
    const host = this.#capturedHost;
    if (host === null) throw new RangeError("This workspace captures no layers");
    const stride = this.capacity.maxNumLogitRows * this.#hiddenSize;
    return this.captureLayers.map((_, slot) => {
      const rows = host.subarray(slot * stride, slot * stride + numRows * this.#hiddenSize);
      this.#backend.download(rows, this.captured!, slot * stride * F32);
      return rows;
    });
  }

  release(): void {
    for (const ptr of this.#allocations) this.#backend.free(ptr);
    this.#allocations = [];
    // Empty views first: a download after release then copies nothing instead of into freed memory.
    this.#logitsHost = this.#hiddenHost = new Float32Array(0);
    if (this.#capturedHost !== null) this.#capturedHost = new Float32Array(0);
    for (const ptr of this.#hostBlocks) this.#backend.hostFree(ptr);
    this.#hostBlocks = [];
  }
}
