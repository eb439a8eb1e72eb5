// The Llama-family forward pass (Llama, Mistral, Qwen2) over a batch of sequences and the paged
// KV cache, as a sequence of native kernel calls.
import { type DevicePtr, type NativeBackend, offset, RopeStyle } from "../../ffi/native.ts";
import { batchMaxQueryLen, type ForwardBatch } from "../engine/forward_batch.ts";
import type { KvCache } from "../kv/kv_cache.ts";
import type { ModelConfig } from "./config.ts";
import type { ModelWeights, Projection } from "./weights.ts";
import type { ForwardWorkspace } from "./workspace.ts";

const F32 = 4;

/**
 * What a tensor-parallel rank does around its share of each layer (src/parallel/model_comm.ts):
 * with plain TP the residual stream has every token and partial sums are all-reduced; with
 * sequence parallelism it has a shard of the tokens, reduce-scattered into and all-gathered from.
 */
export interface ModelComm {
  /** Rows of the residual stream this rank holds in a step of numTokens tokens. */
  residualRows(numTokens: number): number;
  /** Where the vocab-parallel embedding writes its partial rows (x itself, or scratch). */
  embeddingOut(x: DevicePtr, scratch: DevicePtr): DevicePtr;
  /** x = the sum over ranks of the embedding's partial rows (this rank's residual rows). */
  reduceEmbedding(partial: DevicePtr, x: DevicePtr, numTokens: number): void;
  /** Where the norm before a column-parallel layer writes its residual rows (within `full`). */
  normOut(full: DevicePtr, numTokens: number): DevicePtr;
  /** Fills `full` with every token's normed rows from normOut's, for a column-parallel layer. */
  gather(full: DevicePtr, numTokens: number): void;
  /** x += the sum over ranks of a row-parallel layer's partial rows (all tokens, in partial). */
  reduceAdd(partial: DevicePtr, x: DevicePtr, numTokens: number): void;
  /** Every token's residual rows, before the final norm (x itself, or gathered into scratch). */
  gatherResidual(x: DevicePtr, scratch: DevicePtr, numTokens: number): DevicePtr;
}

/** Which part of the forward pass a pipeline stage runs (default: all of it). */
export interface StageSpan {
  /** The residual stream is already in the workspace's `x` (sent by the previous stage). */
  fromHidden?: boolean;
  /** Stop after the last layer, leaving the residual stream in `x` for the next stage. */
  toHidden?: boolean;
  /**
   * Leave the logits in the workspace's `logits` without copying them to the host (device
   * sampling reads them there); `forward` then returns an empty array.
   */
  keepLogitsOnDevice?: boolean;
}
/** The inputs of a layer's linear projections: after each RMSNorm, and before o and down. */
export type ActivationSite = "qkv" | "o" | "gateUp" | "down";
/** Sees each site's f32 rows [numTokens, cols] as the forward pass runs (`deno task calibrate`). */
export type ActivationObserver = (
  site: ActivationSite,
  layer: number,
  x: DevicePtr,
  numTokens: number,
  cols: number,
) => void;

export class LlamaModel {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  #backend: NativeBackend;
  #invFreq: DevicePtr;
  #comm: ModelComm | null;
  /** Calibration's view of the activations; unset when serving. */
  observer?: ActivationObserver;

  constructor(
    backend: NativeBackend,
    config: ModelConfig,
    weights: ModelWeights,
    invFreq: Float32Array,
    comm: ModelComm | null = null,
  ) {
    this.#backend = backend;
    this.config = config;
    this.weights = weights;
    this.#comm = comm;
    this.#invFreq = backend.alloc(invFreq.byteLength);
    backend.upload(this.#invFreq, invFreq);
  }

  get qkvDim(): number {
    const c = this.config;
    return (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  }

  /**
   * Runs the model on a batch whose metadata is already in the workspace (`upload`), writes K/V
   * into the cache, returns [numLogits, vocab] logits (a view the next step overwrites).
   */
  forward(
    batch: ForwardBatch,
    kv: KvCache,
    s: ForwardWorkspace,
    span: StageSpan = {},
  ): Float32Array {
    const numHeadRows = this.enqueue(batch, kv, s, span);
    if (span.toHidden || span.keepLogitsOnDevice) return new Float32Array(0);
    return s.downloadLogits(numHeadRows);
  }

  /**
   * The forward pass's kernel calls, with no copy to the host (so a graph can capture them: see
   * src/engine/decode_graphs.ts); the logits of the first returned number of logit rows end up in
   * the workspace's `logits`.
   */
  enqueue(
    batch: ForwardBatch,
    kv: KvCache,
    s: ForwardWorkspace,
    span: StageSpan = {},
  ): number {
    const c = this.config;
    const comm = this.#comm;
    const b = this.#backend;
    const numTokens = batch.tokenIds.length;
    const numSeqs = batch.seqLens.length;
    const maxQueryLen = batchMaxQueryLen(batch);
    const numLogits = batch.logitRows.length;
    const { tokenIds, positions, slotMapping, seqLens, queryStart, blockTables, logitRows } =
      s.meta;

    const hidden = c.hiddenSize;
    const qDim = c.numHeads * c.headDim;
    const qkvDim = this.qkvDim;
    const w = this.weights;
    const ropeStyle = c.ropeStyle === "neox" ? RopeStyle.NEOX : RopeStyle.INTERLEAVED;

    if (s.captured !== null && comm !== null) {
      throw new RangeError("Capturing layer outputs is not supported with parallel ranks");
    }
    // Rows of the residual stream here: every token, or this rank's sequence shard.
    const numRows = comm?.residualRows(numTokens) ?? numTokens;
    if (!span.fromHidden) {
      const out = comm?.embeddingOut(s.x, s.h) ?? s.x;
      b.embedding({
        out,
        table: w.embed.ptr,
        tableDtype: w.embed.dtype,
        tokenIds,
        numTokens,
        vocabSize: c.vocabSize,
        dim: hidden,
      });
      comm?.reduceEmbedding(out, s.x, numTokens);
    }
    // Without parallel ranks each residual add runs fused with the RMSNorm after it (dl_add_rmsnorm,
    // bit-identical to dl_add + dl_rmsnorm): this layer's ffn norm, the next layer's attn norm.
    const fuse = comm === null;
    for (let l = 0; l < c.numLayers; l++) {
      const layer = w.layers[l];
      // Attention block: norm, fused QKV projection, RoPE on Q and K, cache write, attention.
      if (!fuse || l === 0) {
        b.rmsnorm({
          out: comm?.normOut(s.h, numTokens) ?? s.h,
          x: s.x,
          weight: layer.attnNorm,
          numTokens: numRows,
          dim: hidden,
          eps: c.rmsNormEps,
        });
      }
      comm?.gather(s.h, numTokens);
      this.observer?.("qkv", l, s.h, numTokens, hidden);
      matmulProjection(b, layer.qkv, { out: s.qkv, x: s.h, bias: layer.qkvBias, m: numTokens });
      // RoPE on Q and K and the cache write of K and V, one launch (dl_rope_kv_write, the same bits
      // as dl_rope + dl_kv_write). Ranks too: each holds its own heads' [Q | K | V] rows.
      const cache = kv.layers[l];
      b.ropeKvWrite({
        qkv: s.qkv,
        positions,
        invFreq: this.#invFreq,
        kCache: cache.k,
        vCache: cache.v,
        cacheDtype: kv.dtype,
        slotMapping,
        numTokens,
        numHeads: c.numHeads,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        rotaryDim: c.headDim,
        rowStride: qkvDim,
        style: ropeStyle,
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
        maxQueryLen,
        numHeads: c.numHeads,
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        qRowStride: qkvDim,
        blockSize: kv.blockSize,
        maxBlocksPerSeq: s.capacity.maxBlocksPerSeq,
        numBlocks: kv.numBlocks,
        scale: 1 / Math.sqrt(c.headDim),
      });
      this.observer?.("o", l, s.attn, numTokens, qDim);
      b.matmul({
        out: s.h,
        x: s.attn,
        w: layer.o.ptr,
        wDtype: layer.o.dtype,
        m: numTokens,
        n: hidden,
        k: qDim,
      });
      // MLP block: residual add and norm, fused gate/up projection, SiLU(gate) * up, down projection.
      const ffnNorm = { weight: layer.ffnNorm, dim: hidden, eps: c.rmsNormEps };
      if (comm) {
        comm.reduceAdd(s.h, s.x, numTokens);
        b.rmsnorm({ ...ffnNorm, out: comm.normOut(s.h, numTokens), x: s.x, numTokens: numRows });
        comm.gather(s.h, numTokens);
      } else b.addRmsnorm({ ...ffnNorm, out: s.h, residual: s.x, x: s.h, numTokens });
      this.observer?.("gateUp", l, s.h, numTokens, hidden);
      matmulProjection(b, layer.gateUp, { out: s.gateUp, x: s.h, m: numTokens });
      b.siluMul({ out: s.act, gateUp: s.gateUp, numTokens, dim: c.intermediateSize });
      this.observer?.("down", l, s.act, numTokens, c.intermediateSize);
      b.matmul({
        out: s.h,
        x: s.act,
        w: layer.down.ptr,
        wDtype: layer.down.dtype,
        m: numTokens,
        n: hidden,
        k: c.intermediateSize,
      });
      if (comm) comm.reduceAdd(s.h, s.x, numTokens);
      else if (l + 1 < c.numLayers) {
        b.addRmsnorm({
          out: s.h,
          residual: s.x,
          x: s.h,
          weight: w.layers[l + 1].attnNorm,
          numTokens,
          dim: hidden,
          eps: c.rmsNormEps,
        });
      } else b.add({ out: s.x, a: s.x, b: s.h, numElements: numTokens * hidden });
      // The layer's output at the logit rows, when asked for (one null check per layer if not).
      const capture = s.captured === null ? null : s.captureOut(l);
      if (capture !== null) {
        b.gatherRows({
          out: capture,
          x: s.x,
          rows: logitRows,
          numRows: numLogits,
          numSrcRows: numTokens,
          dim: hidden,
        });
      }
    }
    if (span.toHidden) return 0;

    // Only the rows that sample a token go through the final norm and the LM head.
    b.gatherRows({
      out: s.last,
      x: comm?.gatherResidual(s.x, s.h, numTokens) ?? s.x,
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
    // Embedding rows (the last ones) need only the normed state in `last`, not the LM head.
    const numHeadRows = batch.numLmHeadRows ?? numLogits;
    if (numHeadRows > 0) {
      b.matmul({
        out: s.logits,
        x: s.last,
        w: w.lmHead.ptr,
        wDtype: w.lmHead.dtype,
        m: numHeadRows,
        n: c.vocabSize,
        k: hidden,
      });
    }
    return numHeadRows;
  }

  /** Frees the RoPE table (weights are released by their owner). */
  release(): void {
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
