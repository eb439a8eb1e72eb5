// The Llama-family forward pass (Llama, Mistral, Qwen2) over a batch of sequences and the paged
// KV cache, as a sequence of native kernel calls.
import { type DevicePtr, type NativeBackend, offset, RopeStyle } from "../../ffi/native.ts";
import type { KvCache } from "../kv/kv_cache.ts";
import type { ModelConfig } from "./config.ts";
import type { ModelWeights, Projection } from "./weights.ts";

/**
 * One forward step's input, the only thing the scheduler hands the model: new tokens of several
 * sequences laid end to end, where their K/V go, and which rows need logits.
 */
export interface ForwardBatch {
  tokenIds: Int32Array; // [numTokens]
  positions: Int32Array; // [numTokens]
  slotMapping: Int32Array; // [numTokens]
  seqLens: Int32Array; // [numSeqs] tokens in the cache after this step
  queryStart: Int32Array; // [numSeqs + 1]
  blockTables: Int32Array; // [numSeqs, maxBlocksPerSeq]
  maxBlocksPerSeq: number;
  logitRows: Int32Array; // [numLogits] token rows whose logits are returned
}

const F32 = 4;

/** Device scratch sized for a number of tokens; regrown when a bigger batch arrives. */
interface Scratch {
  capacityTokens: number;
  capacityLogits: number;
  capacityMeta: number;
  x: DevicePtr; // [T, hidden] residual stream
  h: DevicePtr; // [T, hidden] normed / projected
  qkv: DevicePtr; // [T, qkvDim]
  attn: DevicePtr; // [T, qDim]
  gateUp: DevicePtr; // [T, 2 * intermediate]
  act: DevicePtr; // [T, intermediate]
  last: DevicePtr; // [R, hidden]
  logits: DevicePtr; // [R, vocab]
  meta: DevicePtr; // int32 metadata of the batch
}

export class LlamaModel {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  #backend: NativeBackend;
  #invFreq: DevicePtr;
  #scratch: Scratch | null = null;

  constructor(
    backend: NativeBackend,
    config: ModelConfig,
    weights: ModelWeights,
    invFreq: Float32Array,
  ) {
    this.#backend = backend;
    this.config = config;
    this.weights = weights;
    this.#invFreq = backend.alloc(invFreq.byteLength);
    backend.upload(this.#invFreq, invFreq);
  }

  get qkvDim(): number {
    const c = this.config;
    return (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  }

  #ensureScratch(numTokens: number, numLogits: number, numMeta: number): Scratch {
    const s = this.#scratch;
    if (
      s && s.capacityTokens >= numTokens && s.capacityLogits >= numLogits &&
      s.capacityMeta >= numMeta
    ) {
      return s;
    }
    this.#freeScratch();
    const c = this.config;
    // Grow geometrically so a slowly growing batch does not reallocate every step.
    const t = Math.max(numTokens, (s?.capacityTokens ?? 0) * 2, 16);
    const r = Math.max(numLogits, s?.capacityLogits ?? 0, 1);
    const m = Math.max(numMeta, (s?.capacityMeta ?? 0) * 2, 256);
    const alloc = (floats: number) => this.#backend.alloc(floats * F32);
    this.#scratch = {
      capacityTokens: t,
      capacityLogits: r,
      capacityMeta: m,
      x: alloc(t * c.hiddenSize),
      h: alloc(t * c.hiddenSize),
      qkv: alloc(t * this.qkvDim),
      attn: alloc(t * c.numHeads * c.headDim),
      gateUp: alloc(t * 2 * c.intermediateSize),
      act: alloc(t * c.intermediateSize),
      last: alloc(r * c.hiddenSize),
      logits: alloc(r * c.vocabSize),
      meta: alloc(m),
    };
    return this.#scratch;
  }

  #freeScratch(): void {
    const s = this.#scratch;
    if (!s) return;
    for (const ptr of [s.x, s.h, s.qkv, s.attn, s.gateUp, s.act, s.last, s.logits, s.meta]) {
      this.#backend.free(ptr);
    }
    this.#scratch = null;
  }

  /** Runs the model on a batch, writes K/V into the cache, returns [numLogits, vocab] logits. */
  forward(batch: ForwardBatch, kv: KvCache): Float32Array {
    const c = this.config;
    const b = this.#backend;
    const numTokens = batch.tokenIds.length;
    const numSeqs = batch.seqLens.length;
    const numLogits = batch.logitRows.length;
    if (numTokens === 0) throw new RangeError("A forward batch needs at least one token");
    if (
      batch.positions.length !== numTokens || batch.slotMapping.length !== numTokens ||
      batch.queryStart.length !== numSeqs + 1 ||
      batch.blockTables.length !== numSeqs * batch.maxBlocksPerSeq
    ) {
      throw new RangeError("Forward batch arrays disagree in length");
    }

    // All int32 metadata goes to the device in one copy.
    const parts = [
      batch.tokenIds,
      batch.positions,
      batch.slotMapping,
      batch.seqLens,
      batch.queryStart,
      batch.blockTables,
      batch.logitRows,
    ];
    const metaLength = parts.reduce((n, p) => n + p.length, 0);
    const s = this.#ensureScratch(numTokens, numLogits, metaLength);
    const host = new Int32Array(metaLength);
    const ptrs: DevicePtr[] = [];
    let at = 0;
    for (const part of parts) {
      host.set(part, at);
      ptrs.push(offset(s.meta, at * 4));
      at += part.length;
    }
    b.upload(s.meta, host);
    const [tokenIds, positions, slotMapping, seqLens, queryStart, blockTables, logitRows] = ptrs;

    const hidden = c.hiddenSize;
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    const qkvDim = this.qkvDim;
    const w = this.weights;
    const ropeStyle = c.ropeStyle === "neox" ? RopeStyle.NEOX : RopeStyle.INTERLEAVED;

    b.embedding({
      out: s.x,
      table: w.embed.ptr,
      tableDtype: w.embed.dtype,
      tokenIds,
      numTokens,
      vocabSize: c.vocabSize,
      dim: hidden,
    });
    for (let l = 0; l < c.numLayers; l++) {
      const layer = w.layers[l];
      // Attention block: norm, fused QKV projection, RoPE on Q and K, cache write, attention.
      b.rmsnorm({
        out: s.h,
        x: s.x,
        weight: layer.attnNorm,
        numTokens,
        dim: hidden,
        eps: c.rmsNormEps,
      });
      matmulProjection(b, layer.qkv, { out: s.qkv, x: s.h, bias: layer.qkvBias, m: numTokens });
      b.rope({
        x: s.qkv,
        positions,
        invFreq: this.#invFreq,
        numTokens,
        numHeads: c.numHeads + c.numKvHeads,
        headDim: c.headDim,
        rotaryDim: c.headDim,
        rowStride: qkvDim,
        style: ropeStyle,
      });
      const cache = kv.layers[l];
      b.kvWrite({
        kCache: cache.k,
        vCache: cache.v,
        cacheDtype: kv.dtype,
        k: offset(s.qkv, qDim * F32),
        v: offset(s.qkv, (qDim + kvDim) * F32),
        slotMapping,
        numTokens,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        rowStride: qkvDim,
        blockSize: kv.blockSize,
        numBlocks: kv.numBlocks,
      });
      b.pagedAttention({
        out: s.attn,
        q: s.qkv,
        kCache: cache.k,
        vCache: cache.v,
        cacheDtype: kv.dtype,
        blockTables,
        seqLens,
        queryStart,
        numSeqs,
        numTokens,
        numHeads: c.numHeads,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        qRowStride: qkvDim,
        blockSize: kv.blockSize,
        maxBlocksPerSeq: batch.maxBlocksPerSeq,
        numBlocks: kv.numBlocks,
        scale: 1 / Math.sqrt(c.headDim),
      });
      b.matmul({
        out: s.h,
        x: s.attn,
        w: layer.o.ptr,
        wDtype: layer.o.dtype,
        m: numTokens,
        n: hidden,
        k: qDim,
      });
      b.add({ out: s.x, a: s.x, b: s.h, numElements: numTokens * hidden });

      // MLP block: norm, fused gate/up projection, SiLU(gate) * up, down projection.
      b.rmsnorm({
        out: s.h,
        x: s.x,
        weight: layer.ffnNorm,
        numTokens,
        dim: hidden,
        eps: c.rmsNormEps,
      });
      matmulProjection(b, layer.gateUp, { out: s.gateUp, x: s.h, m: numTokens });
      b.siluMul({ out: s.act, gateUp: s.gateUp, numTokens, dim: c.intermediateSize });
      b.matmul({
        out: s.h,
        x: s.act,
        w: layer.down.ptr,
        wDtype: layer.down.dtype,
        m: numTokens,
        n: hidden,
        k: c.intermediateSize,
      });
      b.add({ out: s.x, a: s.x, b: s.h, numElements: numTokens * hidden });
    }

    // Only the rows that sample a token go through the final norm and the LM head.
    b.gatherRows({
      out: s.last,
      x: s.x,
      rows: logitRows,
      numRows: numLogits,
      numSrcRows: numTokens,
      dim: hidden,
    });
    b.rmsnorm({
      out: s.last,
      x: s.last,
      weight: w.finalNorm,
      numTokens: numLogits,
      dim: hidden,
      eps: c.rmsNormEps,
    });
    b.matmul({
      out: s.logits,
      x: s.last,
      w: w.lmHead.ptr,
      wDtype: w.lmHead.dtype,
      m: numLogits,
      n: c.vocabSize,
      k: hidden,
    });
    const logits = new Float32Array(numLogits * c.vocabSize);
    b.download(logits, s.logits);
    return logits;
  }

  /** Frees the scratch and RoPE table (weights are released by their owner). */
  release(): void {
    this.#freeScratch();
    this.#backend.free(this.#invFreq);
  }
}

/** out = x · projᵀ (+ bias): one matmul per part, each writing its own columns of out's rows. */
function matmulProjection(
  b: NativeBackend,
  proj: Projection,
  args: { out: DevicePtr; x: DevicePtr; bias?: DevicePtr | null; m: number },
): void {
  let row = 0;
  for (const part of proj.parts) {
    b.matmul({
      out: offset(args.out, row * F32),
      x: args.x,
      w: part.ptr,
      wDtype: part.dtype,
      bias: args.bias ? offset(args.bias, row * F32) : null,
      m: args.m,
      n: part.rows,
      k: proj.cols,
      outRowStride: proj.rows,
    });
    row += part.rows;
  }
}
