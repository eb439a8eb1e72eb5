// The paged KV cache on the device: per layer, K and V buffers of fixed-size blocks.
//
// Layout (see ffi/denollm.h): each buffer is [numBlocks, numKvHeads, blockSize, headDim], so one
// head's keys of one block are contiguous and attention streams them block by block. A token at
// position p of a sequence lives in slot blockTable[p / blockSize] * blockSize + p % blockSize.
import { tensorBytes } from "../../ffi/formats.ts";
import { type DevicePtr, DType, type DTypeId, type NativeBackend } from "../../ffi/native.ts";
import type { ModelConfig } from "../model/config.ts";

export interface KvCacheOptions {
  blockSize?: number;
  /** Either a block count or a byte budget for the whole cache. */
  numBlocks?: number;
  memoryBytes?: number;
  dtype?: DTypeId;
}

export class KvCache {
  /** f32 keeps CPU attention exact; half-precision caches come with the CUDA build. */
  static readonly defaultDtype: DTypeId = DType.F32;
  readonly blockSize: number;
  readonly numBlocks: number;
  readonly dtype: DTypeId;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Per layer: K and V buffers. */
  readonly layers: { k: DevicePtr; v: DevicePtr }[];
  #backend: NativeBackend;

  constructor(backend: NativeBackend, config: ModelConfig, options: KvCacheOptions) {
    this.#backend = backend;
    this.blockSize = options.blockSize ?? 16;
    this.dtype = options.dtype ?? KvCache.defaultDtype;
    this.numKvHeads = config.numKvHeads;
    this.headDim = config.headDim;
    if (!Number.isInteger(this.blockSize) || this.blockSize <= 0) {
      throw new RangeError(`Block size must be a positive integer, got ${this.blockSize}`);
    }
    const blockBytes = KvCache.bytesPerBlock(config, this.blockSize, this.dtype);
    const numBlocks = options.numBlocks ??
      Math.floor((options.memoryBytes ?? 0) / blockBytes);
    if (!Number.isInteger(numBlocks) || numBlocks <= 0) {
      throw new RangeError(
        `The KV cache needs at least one block of ${blockBytes} bytes, got ${numBlocks} blocks`,
      );
    }
    this.numBlocks = numBlocks;
    const layerBytes = tensorBytes(
      this.dtype,
      numBlocks * this.numKvHeads * this.blockSize * this.headDim,
    );
    this.layers = [];
    try {
      for (let l = 0; l < config.numLayers; l++) {
        this.layers.push({ k: backend.alloc(layerBytes), v: backend.alloc(layerBytes) });
      }
    } catch (error) {
      this.release();
      throw error;
    }
  }

  /** Bytes one block takes across all layers, K and V. */
  static bytesPerBlock(config: ModelConfig, blockSize: number, dtype: DTypeId): number {
    return 2 * config.numLayers *
      tensorBytes(dtype, config.numKvHeads * blockSize * config.headDim);
  }

  get numSlots(): number {
    return this.numBlocks * this.blockSize;
  }

  release(): void {
    for (const { k, v } of this.layers) {
      this.#backend.free(k);
      this.#backend.free(v);
    }
    this.layers.length = 0;
  }
}
