// dl_sample after the forward pass: one token id per LM-head row picked on the device, so a step
// copies back 4 bytes a row instead of a row of logits. The per-row parameters go to buffers
// reserved once at start-up, like the step's metadata (src/model/workspace.ts).
import { type DevicePtr, type NativeBackend, offset } from "../../ffi/native.ts";

/** One step's device-sampling parameters: one entry per LM-head logit row, in row order. */
export interface DeviceSampleParams {
  temperature: Float32Array; // [numRows] 0 = greedy
  topK: Int32Array; // [numRows] <= 0 disables
  topP: Float32Array; // [numRows] 1 disables
  minP: Float32Array; // [numRows] 0 disables
  seeds: BigUint64Array; // [numRows] the request's seed
  counters: BigUint64Array; // [numRows] the index of the token being sampled
}

/** Parameters of `numRows` rows, every one greedy until set. */
export function greedyParams(numRows: number): DeviceSampleParams {
  return {
    temperature: new Float32Array(numRows),
    topK: new Int32Array(numRows),
    topP: new Float32Array(numRows).fill(1),
    minP: new Float32Array(numRows),
    seeds: new BigUint64Array(numRows),
    counters: new BigUint64Array(numRows),
  };
}

const U64 = 8;
const B32 = 4;

export class DeviceSampler {
  /** Device bytes this sampler holds. */
  readonly reservedBytes: number;
  #backend: NativeBackend;
  #maxRows: number;
  #vocabSize: number;
  /** [seeds u64, counters u64, temperature f32, topK i32, topP f32, minP f32], maxRows each. */
  #params: DevicePtr;
  #paramsBytes: number;
  #outIds: DevicePtr; // [maxRows] int32
  /** Host staging of `#params`, or on the CPU build views of the device memory itself. */
  #staging: DeviceSampleParams;
  #stagingBytes: Uint8Array;
  #isStagingDevice: boolean;
  #idsHost: Int32Array;
  #isReleased = false;

  /** The device bytes a sampler for `maxRows` rows holds: its parameters and its ids. */
  static bytesFor(maxRows: number): number {
    return maxRows * (2 * U64 + 4 * B32) + maxRows * B32;
  }

  constructor(backend: NativeBackend, maxRows: number, vocabSize: number) {
    if (!Number.isInteger(maxRows) || maxRows < 1) {
      throw new RangeError(`A device sampler needs at least one row, got ${maxRows}`);
    }
    this.#backend = backend;
    this.#maxRows = maxRows;
    this.#vocabSize = vocabSize;
    // The 64-bit arrays first, so every array is aligned to its element size.
    this.#paramsBytes = maxRows * (2 * U64 + 4 * B32);
    this.#params = backend.alloc(this.#paramsBytes);
    try {
      this.#outIds = backend.alloc(maxRows * B32);
    } catch (error) {
      backend.free(this.#params);
      throw error;
    }
    this.reservedBytes = DeviceSampler.bytesFor(maxRows);
    const view = backend.hostView(this.#params, this.#paramsBytes);
    this.#isStagingDevice = view !== null;
    this.#stagingBytes = view ?? new Uint8Array(this.#paramsBytes);
    const buffer = this.#stagingBytes.buffer;
    const at = this.#stagingBytes.byteOffset;
    const n = maxRows;
    this.#staging = {
      seeds: new BigUint64Array(buffer, at, n),
      counters: new BigUint64Array(buffer, at + n * U64, n),
      temperature: new Float32Array(buffer, at + 2 * n * U64, n),
      topK: new Int32Array(buffer, at + 2 * n * U64 + n * B32, n),
      topP: new Float32Array(buffer, at + 2 * n * U64 + 2 * n * B32, n),
      minP: new Float32Array(buffer, at + 2 * n * U64 + 3 * n * B32, n),
    };
    this.#idsHost = new Int32Array(maxRows);
  }

  /**
   * Samples the first `params.temperature.length` rows of `logits` ([rows, vocab] device memory)
   * and copies back only their token ids; the array is reused by the next call.
   */
  sample(logits: DevicePtr, params: DeviceSampleParams): Int32Array {
    const numRows = params.temperature.length;
    if (numRows > this.#maxRows) {
      throw new RangeError(
        `A step samples ${numRows} rows, more than the ${this.#maxRows} reserved ` +
          "(--max-num-logit-rows)",
      );
    }
    const keys = Object.keys(this.#staging) as (keyof DeviceSampleParams)[];
    const short = keys.find((k) => params[k].length !== numRows);
    if (short !== undefined) {
      throw new RangeError(
        `Device sampling parameters disagree in length: ${short} has ${params[short].length} ` +
          `rows, temperature ${numRows}`,
      );
    }
    if (numRows === 0) return this.#idsHost.subarray(0, 0);
    const s = this.#staging;
    s.seeds.set(params.seeds);
    s.counters.set(params.counters);
    s.temperature.set(params.temperature);
    s.topK.set(params.topK);
    s.topP.set(params.topP);
    s.minP.set(params.minP);
    // One copy of the whole block (a few KiB at most): the rows of each array are not adjacent.
    if (!this.#isStagingDevice) this.#backend.upload(this.#params, this.#stagingBytes);
    const n = this.#maxRows;
    this.#backend.sample({
      outIds: this.#outIds,
      logits,
      seeds: this.#params,
      counters: offset(this.#params, n * U64),
      temperature: offset(this.#params, 2 * n * U64),
      topK: offset(this.#params, 2 * n * U64 + n * B32),
      topP: offset(this.#params, 2 * n * U64 + 2 * n * B32),
      minP: offset(this.#params, 2 * n * U64 + 3 * n * B32),
      numRows,
      vocabSize: this.#vocabSize,
    });
    const ids = this.#idsHost.subarray(0, numRows);
    this.#backend.download(ids, this.#outIds);
    return ids;
  }

  release(): void {
    if (this.#isReleased) return;
    this.#isReleased = true;
    this.#backend.free(this.#params);
    this.#backend.free(this.#outIds);
  }
}
