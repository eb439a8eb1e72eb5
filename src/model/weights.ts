// Loads a checkpoint's tensors onto the device in the layout the forward pass wants: Q/K/V and
// gate/up fused into one projection each (one matrix when their formats agree, else one part per
// format run), norms and biases in f32, weights otherwise in their own format (GGUF's quantized
// blocks as they are) unless the caller's transform picks another (--quantization).
// Tensors stream one at a time from the file into their device matrix, so loading holds no more
// than the weights plus one tensor's staging. On a backend that can (the CPU build), a matrix whose
// bytes on disk are exactly what the kernels read is mapped from the file instead of copied: it
// then costs shared, evictable page cache rather than private memory (llama.cpp's mmap).
import { formatByGgufName, formatInfo, isQuantized, matrixBytes } from "../../ffi/formats.ts";
import {
  type DevicePtr,
  DType,
  type DTypeId,
  type NativeBackend,
  offset,
} from "../../ffi/native.ts";
import { ModelFormatError } from "../formats/errors.ts";
import { readTensorBytes, type TensorInfo } from "../formats/tensor.ts";
import type { ModelConfig } from "./config.ts";

/** A weight matrix on the device: [rows, cols] of dtype. */
export interface DeviceMatrix {
  ptr: DevicePtr;
  dtype: DTypeId;
  rows: number;
  cols: number;
}

/**
 * A fused projection [rows, cols]: its parts cover consecutive output rows in order (Q, K, V or
 * gate, up). Parts in the same format are stacked into one matrix, so there is exactly one part
 * when every source tensor shares a format; otherwise each part is a matmul of its own writing
 * its columns of the output row (`outRowStride = rows`).
 */
export interface Projection {
  parts: DeviceMatrix[];
  rows: number;
  cols: number;
}

export interface LayerWeights {
  attnNorm: DevicePtr; // [hidden] f32
  qkv: Projection; // [(num_heads + 2 * num_kv_heads) * head_dim, hidden]: Q, K, V rows
  qkvBias: DevicePtr | null; // [(num_heads + 2 * num_kv_heads) * head_dim] f32
  o: DeviceMatrix; // [hidden, num_heads * head_dim]
  ffnNorm: DevicePtr; // [hidden] f32
  gateUp: Projection; // [2 * intermediate, hidden]: gate rows, then up rows
  down: DeviceMatrix; // [hidden, intermediate]
}

export interface ModelWeights {
  embed: DeviceMatrix; // [vocab, hidden]
  layers: LayerWeights[];
  finalNorm: DevicePtr; // [hidden] f32
  lmHead: DeviceMatrix; // [vocab, hidden]; the embedding itself when tied
  /** Every allocation, for release. */
  allocations: DevicePtr[];
  /** Every file mapping (dl_map_file), for release. */
  mappings: FileMapping[];
  /** Bytes of every weight matrix and vector, mapped ones included. */
  sizeBytes: number;
  /** The part of sizeBytes mapped from the file rather than copied. */
  mappedBytes: number;
}

/** A read-only mapping of weight bytes in their file. */
export interface FileMapping {
  ptr: DevicePtr;
  sizeBytes: number;
}

/** Canonical (Hugging Face) tensor names; GGUF names are mapped onto these by their source. */
export function layerTensorName(layer: number, suffix: string): string {
  return `model.layers.${layer}.${suffix}`;
}

/** The dl_dtype of a tensor as its file spells it. */
function formatIdOf(info: TensorInfo): DTypeId {
  const format = formatByGgufName(info.dtype);
  if (format === undefined) {
    throw new ModelFormatError(
      info.file,
      `tensor ${info.name} has unsupported dtype ${info.dtype}`,
    );
  }
  return format.id;
}

/**
 * Stores chosen weight matrices in another format while loading (`--quantization`:
 * src/model/quantize.ts's QuantizeOnLoad).
 */
export interface WeightTransform {
  /** The device format of matrix `info`, or undefined to keep the file's. */
  formatOf(info: TensorInfo): DTypeId | undefined;
  /** Writes matrix `info` as rows [rowOffset, rowOffset + its rows) of `dst`, in dst's format. */
  writeRows(info: TensorInfo, dst: DeviceMatrix, rowOffset: number): Promise<void>;
  /** Rewrites a loaded f32 vector in place (SmoothQuant folds 1/s into RMSNorm weights). */
  transformVector?(name: string, values: Float32Array): void;
}

export interface LoadWeightsOptions {
  /** Called after each tensor with bytes read so far and in total. */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** The device format of chosen weight matrices (default: the file's). Norms stay f32. */
  transform?: WeightTransform;
  /**
   * Map matrices stored as the kernels read them from their file instead of copying them (default
   * true; used only where the backend supports it). False is llama.cpp's --no-mmap.
   */
  mmap?: boolean;
  /**
   * Rearrange Q4_0 matrices into the layout the backend's kernels read fastest, where it has one
   * (default true; the CPU build's Q4_0_R16, dl_repack). Each matrix is repacked as it loads, so
   * loading holds at most one extra matrix; the values, and so the outputs, do not change.
   */
  repack?: boolean;
}

/** Loads and validates every tensor the config calls for. */
export async function loadWeights(
  backend: NativeBackend,
  config: ModelConfig,
  tensors: Map<string, TensorInfo>,
  options: LoadWeightsOptions = {},
): Promise<ModelWeights> {
  const loader = new WeightLoader(backend, tensors, options);
  try {
    return await loader.loadAll(config);
  } catch (error) {
    loader.releaseAll();
    throw error;
  }
}

class WeightLoader {
  #backend: NativeBackend;
  #tensors: Map<string, TensorInfo>;
  #onProgress?: (loadedBytes: number, totalBytes: number) => void;
  #transform?: WeightTransform;
  #allocations: DevicePtr[] = [];
  #mappings: FileMapping[] = [];
  #canMap: boolean;
  #canRepack: boolean;
  #sizeBytes = 0;
  #mappedBytes = 0;
  #loadedBytes = 0;
  #totalBytes = 0;

  constructor(
    backend: NativeBackend,
    tensors: Map<string, TensorInfo>,
    options: LoadWeightsOptions,
  ) {
    this.#backend = backend;
    this.#tensors = tensors;
    this.#onProgress = options.onProgress;
    this.#transform = options.transform;
    this.#canMap = options.mmap !== false;
    this.#canRepack = options.repack !== false;
    for (const info of tensors.values()) this.#totalBytes += info.byteLength;
  }

  async loadAll(c: ModelConfig): Promise<ModelWeights> {
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    const embed = await this.#matrix("model.embed_tokens.weight", c.vocabSize, c.hiddenSize);
    const layers: LayerWeights[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const name = (suffix: string) => layerTensorName(l, suffix);
      layers.push({
        attnNorm: await this.#vector(name("input_layernorm.weight"), c.hiddenSize),
        qkv: await this.#fused(
          [
            name("self_attn.q_proj.weight"),
            name("self_attn.k_proj.weight"),
            name(
              "self_attn.v_proj.weight",
            ),
          ],
          [qDim, kvDim, kvDim],
          c.hiddenSize,
        ),
        qkvBias: c.attentionBias
          ? await this.#fusedVector(
            [
              name("self_attn.q_proj.bias"),
              name("self_attn.k_proj.bias"),
              name(
                "self_attn.v_proj.bias",
              ),
            ],
            [qDim, kvDim, kvDim],
          )
          : null,
        o: await this.#matrix(name("self_attn.o_proj.weight"), c.hiddenSize, qDim),
        ffnNorm: await this.#vector(name("post_attention_layernorm.weight"), c.hiddenSize),
        gateUp: await this.#fused(
          [name("mlp.gate_proj.weight"), name("mlp.up_proj.weight")],
          [c.intermediateSize, c.intermediateSize],
          c.hiddenSize,
        ),
        down: await this.#matrix(name("mlp.down_proj.weight"), c.hiddenSize, c.intermediateSize),
      });
    }
    const finalNorm = await this.#vector("model.norm.weight", c.hiddenSize);
    // Some checkpoints say tie_word_embeddings yet still ship lm_head; use it when present.
    const lmHead = this.#tensors.has("lm_head.weight")
      ? await this.#matrix("lm_head.weight", c.vocabSize, c.hiddenSize)
      : c.tieWordEmbeddings
      ? embed
      : this.#missing("lm_head.weight");
    return {
      embed,
      layers,
      finalNorm,
      lmHead,
      allocations: this.#allocations,
      mappings: this.#mappings,
      sizeBytes: this.#sizeBytes,
      mappedBytes: this.#mappedBytes,
    };
  }

  releaseAll(): void {
    for (const ptr of this.#allocations) this.#backend.free(ptr);
    for (const m of this.#mappings) this.#backend.unmapFile(m.ptr, m.sizeBytes);
    this.#allocations = [];
    this.#mappings = [];
  }

  #missing(name: string): never {
    const anyInfo = this.#tensors.values().next().value;
    throw new ModelFormatError(anyInfo?.file ?? "model", `missing tensor ${name}`);
  }

  #info(name: string, shape: number[]): TensorInfo {
    const info = this.#tensors.get(name) ?? this.#missing(name);
    const matches = info.shape.length === shape.length &&
      info.shape.every((d, i) => d === shape[i]);
    if (!matches) {
      throw new ModelFormatError(
        info.file,
        `tensor ${name} has shape [${info.shape.join(", ")}], expected [${
          shape.join(", ")
        }] from the model config`,
      );
    }
    return info;
  }

  #alloc(sizeBytes: number): DevicePtr {
    const ptr = this.#backend.alloc(sizeBytes);
    this.#allocations.push(ptr);
    this.#sizeBytes += sizeBytes;
    return ptr;
  }

  /**
   * Copies one tensor into device memory at dst in dstDtype: its own format, or f32 (from any
   * format), or another plain format (from a plain one).
   */
  async #copy(info: TensorInfo, dst: DevicePtr, dstDtype: DTypeId): Promise<void> {
    const srcDtype = formatIdOf(info);
    if (srcDtype === dstDtype) {
      // The CPU build's device memory is host memory: read the file straight into it.
      const view = this.#backend.hostView(dst, info.byteLength);
      if (view !== null) {
        await readTensorBytes(info, view);
      } else {
        const staging = new Uint8Array(info.byteLength);
        await readTensorBytes(info, staging);
        this.#backend.upload(dst, staging);
      }
    } else {
      const { rows, cols } = matrixShape(info);
      if (isQuantized(srcDtype) && dstDtype !== DType.F32) {
        throw new RangeError(
          `Expected f32 or ${info.dtype} as the device format of ${info.name}, found ` +
            formatInfo(dstDtype).ggufName,
        );
      }
      const staging = this.#backend.alloc(info.byteLength);
      try {
        await this.#copy(info, staging, srcDtype);
        this.#loadedBytes -= info.byteLength; // counted once, below
        if (isQuantized(srcDtype)) {
          this.#backend.dequantize({ dst, src: staging, srcDtype, rows, cols });
        } else {
          this.#backend.convert(dst, dstDtype, staging, srcDtype, rows * cols);
        }
      } finally {
        this.#backend.free(staging);
      }
    }
    this.#loadedBytes += info.byteLength;
    this.#onProgress?.(this.#loadedBytes, this.#totalBytes);
  }

  /** The device format of a weight matrix: the transform's choice, else the file's. */
  #formatOf(info: TensorInfo): DTypeId {
    return this.#transform?.formatOf(info) ?? formatIdOf(info);
  }

  /**
   * Stacks the row blocks of several [rows_i, cols] tensors into a projection, each in its own
   * format (never converted): neighbouring tensors of one format share a matrix.
   */
  async #fused(names: string[], rows: number[], cols: number): Promise<Projection> {
    const infos = names.map((name, i) => this.#info(name, [rows[i], cols]));
    const dtypes = infos.map((info) => this.#formatOf(info));
    const parts: DeviceMatrix[] = [];
    for (let first = 0; first < infos.length;) {
      let end = first + 1;
      while (end < infos.length && dtypes[end] === dtypes[first]) end++;
      parts.push(
        await this.#stack(infos.slice(first, end), rows.slice(first, end), cols, dtypes[first]),
      );
      first = end;
    }
    return { parts, rows: rows.reduce((a, b) => a + b, 0), cols };
  }

  /** One matrix in `dtype` of the row blocks of several tensors. */
  async #stack(
    infos: TensorInfo[],
    rows: number[],
    cols: number,
    dtype: DTypeId,
  ): Promise<DeviceMatrix> {
    const totalRows = rows.reduce((a, b) => a + b, 0);
    const sizeBytes = matrixBytes(dtype, totalRows, cols);
    const mapped = await this.#map(infos, dtype, sizeBytes);
    if (mapped !== null) {
      return this.#repacked({ ptr: mapped, dtype, rows: totalRows, cols }, sizeBytes);
    }
    const ptr = this.#alloc(sizeBytes);
    const matrix = { ptr, dtype, rows: totalRows, cols };
    // Parts kept in their file's format are read straight into place; formats with per-row data
    // after all rows (INT8) interleave across parts, so only the transform may stack those.
    let rowOffset = 0;
    for (let i = 0; i < infos.length; i++) {
      // The transform writes every matrix it claims, even one it keeps in the file's format (a
      // 2:4 matrix pruned in place).
      if (this.#transform !== undefined && this.#transform.formatOf(infos[i]) !== undefined) {
        await this.#transform.writeRows(infos[i], matrix, rowOffset);
        this.#loadedBytes += infos[i].byteLength;
        this.#onProgress?.(this.#loadedBytes, this.#totalBytes);
      } else {
        if (infos.length > 1 && formatInfo(dtype).rowBytes !== 0) {
          throw new ModelFormatError(
            infos[i].file,
            `cannot stack ${infos[i].dtype} tensor ${infos[i].name} with others: its per-row ` +
              "data follows all rows",
          );
        }
        const at = rowOffset === 0 ? 0 : matrixBytes(dtype, rowOffset, cols);
        await this.#copy(infos[i], offset(ptr, at), dtype);
      }
      rowOffset += rows[i];
    }
    return this.#repacked(matrix, sizeBytes);
  }

  /**
   * The matrix in the backend's repacked layout (Q4_0 to Q4_0_R16 on the CPU build), its plain
   * copy or file mapping released; unchanged where there is none. A mapped matrix thus becomes
   * private memory of the same size, page cache it came from left to the kernel to evict.
   */
  #repacked(matrix: DeviceMatrix, sizeBytes: number): DeviceMatrix {
    if (!this.#canRepack || matrix.dtype !== DType.Q4_0 || sizeBytes === 0) return matrix;
    const args = { dstDtype: DType.Q4_0_R16, srcDtype: DType.Q4_0, cols: matrix.cols };
    // Zero rows ask the backend whether it repacks at all (the CUDA build does not).
    if (!this.#backend.repack({ ...args, dst: matrix.ptr, src: matrix.ptr, rows: 0 })) {
      this.#canRepack = false;
      return matrix;
    }
    const ptr = this.#alloc(sizeBytes);
    this.#backend.repack({ ...args, dst: ptr, src: matrix.ptr, rows: matrix.rows });
    this.#release(matrix.ptr, sizeBytes);
    return { ...matrix, ptr, dtype: DType.Q4_0_R16 };
  }

  /** Frees one allocation or unmaps one mapping of sizeBytes made by this loader. */
  #release(ptr: DevicePtr, sizeBytes: number): void {
    const same = (p: DevicePtr) => Deno.UnsafePointer.equals(p, ptr);
    const mapping = this.#mappings.findIndex((m) => same(m.ptr));
    if (mapping >= 0) {
      this.#backend.unmapFile(ptr, sizeBytes);
      this.#mappings.splice(mapping, 1);
      this.#mappedBytes -= sizeBytes;
    } else {
      this.#backend.free(ptr);
      this.#allocations.splice(this.#allocations.findIndex(same), 1);
    }
    this.#sizeBytes -= sizeBytes;
  }

  /**
   * Maps the stacked matrix from the file when its bytes there are the matrix: every part kept in
   * the file's format by no transform, from one file, back to back in order, and the first at an
   * offset the kernels can read from (see mapAlignment). Null: copy instead.
   */
  async #map(infos: TensorInfo[], dtype: DTypeId, sizeBytes: number): Promise<DevicePtr | null> {
    if (!this.#canMap || sizeBytes === 0) return null;
    const first = infos[0];
    let end = first.byteOffset;
    for (const info of infos) {
      const isAsStored = info.generate === undefined && info.file === first.file &&
        info.byteOffset === end && formatIdOf(info) === dtype &&
        this.#transform?.formatOf(info) === undefined;
      if (!isAsStored) return null;
      end += info.byteLength;
    }
    // Formats with per-row data after all rows (INT8) lay out a stack unlike its parts' files.
    if (infos.length > 1 && formatInfo(dtype).rowBytes !== 0) return null;
    if (end - first.byteOffset !== sizeBytes) return null;
    if (first.byteOffset % mapAlignment(dtype) !== 0) return null;
    // A file cut short since its header was read is left to the copy path, whose error names the
    // tensor (dl_map_file checks the range again, for a file cut in between).
    if (first.byteOffset + sizeBytes > (await Deno.stat(first.file)).size) return null;
    const ptr = this.#backend.mapFile(first.file, first.byteOffset, sizeBytes);
    if (ptr === null) {
      this.#canMap = false; // the backend cannot map: copy from now on
      return null;
    }
    this.#mappings.push({ ptr, sizeBytes });
    this.#sizeBytes += sizeBytes;
    this.#mappedBytes += sizeBytes;
    for (const info of infos) this.#loadedBytes += info.byteLength;
    this.#onProgress?.(this.#loadedBytes, this.#totalBytes);
    return ptr;
  }

  async #matrix(name: string, rows: number, cols: number): Promise<DeviceMatrix> {
    const info = this.#info(name, [rows, cols]);
    return await this.#stack([info], [rows], cols, this.#formatOf(info));
  }

  /** Concatenates 1-D tensors into one f32 vector. */
  async #fusedVector(names: string[], lengths: number[]): Promise<DevicePtr> {
    const total = lengths.reduce((a, b) => a + b, 0);
    const ptr = this.#alloc(total * 4);
    let at = 0;
    for (let i = 0; i < names.length; i++) {
      const at4 = offset(ptr, at * 4);
      await this.#copy(this.#info(names[i], [lengths[i]]), at4, DType.F32);
      if (this.#transform?.transformVector !== undefined) {
        const values = new Float32Array(lengths[i]);
        this.#backend.download(values, at4);
        this.#transform.transformVector(names[i], values);
        this.#backend.upload(at4, values);
      }
      at += lengths[i];
    }
    return ptr;
  }

  #vector(name: string, length: number): Promise<DevicePtr> {
    return this.#fusedVector([name], [length]);
  }
}

/** A tensor as a [rows, cols] matrix: its innermost dimension is a row (1-D: one row). */
function matrixShape(info: TensorInfo): { rows: number; cols: number } {
  const cols = info.shape.length === 0 ? 1 : info.shape[info.shape.length - 1];
  const count = info.shape.reduce((a, b) => a * b, 1);
  return { rows: cols === 0 ? 0 : count / cols, cols };
}

/**
 * The alignment a mapped matrix of `dtype` must start at: the largest power of two (up to 4) that
 * divides its block size, which is the alignment of the widest field the kernels read from a
 * block (f32 values, an f32 scale; f16 scales and values need 2). The copy path puts stacked parts
 * at such offsets too, so the kernels read nothing less aligned than they already do; GGUF's
 * 32-byte tensor alignment always passes, a safetensors offset may not (then it is copied).
 */
function mapAlignment(dtype: DTypeId): number {
  const blockBytes = formatInfo(dtype).blockBytes;
  return blockBytes % 4 === 0 ? 4 : blockBytes % 2 === 0 ? 2 : 1;
}

/** Frees every allocation and unmaps every file mapping of loaded weights. */
export function releaseWeights(backend: NativeBackend, weights: ModelWeights): void {
  for (const ptr of weights.allocations) backend.free(ptr);
  for (const m of weights.mappings) backend.unmapFile(m.ptr, m.sizeBytes);
  weights.allocations.length = 0;
  weights.mappings.length = 0;
}
