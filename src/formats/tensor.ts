// Tensor descriptors shared by the safetensors and GGUF readers, and reading tensor bytes from disk.

import {
  type Format,
  formatByGgufName,
  formatNames,
  FORMATS,
  type GgufName,
  isGgufName,
  matrixBytes,
  tensorBytes,
} from "../../ffi/formats.ts";
import { ModelFormatError } from "./errors.ts";

/**
 * Storage formats the inference kernels accept, spelled as in GGUF and safetensors (the rows of
 * ffi/formats.ts); everything else is rejected at load time.
 */
export type DType = GgufName;

/** Where one tensor's raw little-endian bytes live on disk. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  /** Outermost dimension first (PyTorch order), so `shape[0]` is the number of rows. */
  shape: number[];
  file: string;
  /** Absolute byte offset of the first element in `file`. */
  byteOffset: number;
  byteLength: number;
  /**
   * Bytes made in memory instead of read from `file` (`--load-format dummy`); `file` then only
   * names the model in errors.
   */
  generate?: () => Uint8Array;
}

// One read() call is capped because Linux read(2) returns at most ~2 GiB anyway and a bounded
// chunk keeps each call's latency predictable.
const MAX_READ_BYTES = 256 * 1024 * 1024;

/** True when `name` is one of the supported dtypes. */
export function isDType(name: unknown): name is DType {
  return isGgufName(name);
}

/** "F32, F16 or BF16": the supported dtypes, for error messages. */
export function supportedDTypes(): string {
  return formatNames("ggufName").replace(/, ([^,]*)$/, " or $1");
}

/** The formats a GGUF file can hold: the table's rows with a ggml type id. */
export const GGUF_FORMATS: readonly Format[] = FORMATS.filter((f) => f.ggmlType >= 0);

/** "F32, F16, BF16, Q4_0, …, Q8_K": the types a GGUF file may use, for error messages. */
export function supportedGgufTypes(): string {
  return GGUF_FORMATS.map((f) => f.ggufName).join(", ");
}

/**
 * Bytes of a tensor of `dtype` and `shape`, the innermost dimension being a row (as ggml and the
 * kernels store matrices), per-row data included. Throws RangeError when a row is not a whole
 * number of the format's blocks.
 */
export function shapeBytes(dtype: DType, shape: readonly number[]): number {
  const info = formatByGgufName(dtype);
  if (info === undefined) {
    throw new TypeError(`Expected a dtype of ${supportedDTypes()}, found ${JSON.stringify(dtype)}`);
  }
  const count = numElements(shape);
  const cols = shape.length === 0 ? 1 : shape[shape.length - 1];
  if (count === 0) return 0;
  return matrixBytes(info.id, count / cols, cols);
}

/**
 * Bytes that `count` elements of `dtype` take as one row; throws RangeError when count is not a
 * multiple of the format's block length. Prefer {@link shapeBytes} for matrices.
 */
export function dtypeBytes(dtype: DType, count: number): number {
  const info = formatByGgufName(dtype);
  if (info === undefined) {
    throw new TypeError(`Expected a dtype of ${supportedDTypes()}, found ${JSON.stringify(dtype)}`);
  }
  return tensorBytes(info.id, count);
}

/** Number of elements of a tensor with `shape` (1 for a scalar with shape []). */
export function numElements(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new RangeError(`Expected non-negative integer dimensions, found shape [${shape}]`);
    }
    count *= dim;
  }
  if (!Number.isSafeInteger(count)) {
    throw new RangeError(`Expected a shape with a safe-integer element count, found [${shape}]`);
  }
  return count;
}

/**
 * Reads into `dst` from `position` until `dst` is full or the file ends; returns the number of
 * bytes read. Reads go straight into `dst`, which may be a view on native memory.
 */
export async function readFileAt(
  file: Deno.FsFile,
  position: number,
  dst: Uint8Array,
): Promise<number> {
  await file.seek(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < dst.byteLength) {
    const end = Math.min(dst.byteLength, done + MAX_READ_BYTES);
    const n = await file.read(dst.subarray(done, end));
    if (n === null) break;
    done += n;
  }
  return done;
}

/** Opens `path` for reading, turning "not found" into a ModelFormatError that names the file. */
export async function openModelFile(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new ModelFormatError(path, "file not found", { cause: err });
    }
    throw err;
  }
}

/** Keeps model files open across many tensor reads; close it (or `using` it) when done. */
export class TensorFileReader {
  #files = new Map<string, Deno.FsFile>();

  /** Reads `info`'s bytes into `dst`, which must be exactly `info.byteLength` bytes long. */
  async read(info: TensorInfo, dst: Uint8Array): Promise<void> {
    if (dst.byteLength !== info.byteLength) {
      throw new RangeError(
        `Expected a ${info.byteLength}-byte buffer for tensor ${info.name}, ` +
          `found ${dst.byteLength} bytes`,
      );
    }
    if (info.generate !== undefined) {
      dst.set(info.generate());
      return;
    }
    let file = this.#files.get(info.file);
    if (file === undefined) {
      file = await openModelFile(info.file);
      this.#files.set(info.file, file);
    }
    const numRead = await readFileAt(file, info.byteOffset, dst);
    if (numRead !== info.byteLength) {
      throw new ModelFormatError(
        info.file,
        `expected ${info.byteLength} bytes for tensor ${info.name} at offset ${info.byteOffset}, ` +
          `found only ${numRead} before the end of the file`,
      );
    }
  }

  /** Closes every file this reader opened. */
  close(): void {
    for (const file of this.#files.values()) file.close();
    this.#files.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** One-shot read of a tensor's bytes into `dst` (opens and closes its file). */
export async function readTensorBytes(info: TensorInfo, dst: Uint8Array): Promise<void> {
  using reader = new TensorFileReader();
  await reader.read(info, dst);
}

/** Writes all of `data` to `file`, looping over partial writes. */
export async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.byteLength) {
    const end = Math.min(data.byteLength, done + MAX_READ_BYTES);
    done += await file.write(data.subarray(done, end));
  }
}
