// Writes a quantized copy of an F32/F16/BF16 GGUF: the same metadata (tokenizer included),
// alignment and tensor order, each tensor in the format the recipe picks, quantized by the native
// library's dl_quantize one tensor at a time, so memory stays near one f32 tensor.
import { type Format, formatByGgufName, isQuantized, matrixBytes } from "../../ffi/formats.ts";
import { DType, type NativeBackend } from "../../ffi/native.ts";
import { ModelFormatError } from "../../src/formats/errors.ts";
import {
  gguf,
  type GgufKV,
  type GgufTensorData,
  readGguf,
  writeGguf,
} from "../../src/formats/gguf.ts";
import {
  type DType as FileDType,
  readTensorBytes,
  type TensorInfo,
} from "../../src/formats/tensor.ts";
import { readAsF32 } from "../../src/model/quantize.ts";
import { type QuantPreset, tensorFormat } from "./recipe.ts";

export interface QuantizeGgufOptions {
  isPure?: boolean;
  /** Called after each tensor with its name and the format it was written in. */
  onTensor?: (name: string, format: string, done: number, total: number) => void;
}

/** One written tensor. */
export interface QuantizedTensor {
  name: string;
  shape: number[];
  format: string;
  sizeBytes: number;
}

export interface QuantizeGgufResult {
  tensors: QuantizedTensor[];
  /** Tensor data bytes of the output, and its weights per element. */
  sizeBytes: number;
  bitsPerWeight: number;
}

/** The tensor's bytes in `format`: as they are, converted, or quantized. */
async function encode(
  backend: NativeBackend,
  info: TensorInfo,
  format: Format,
): Promise<Uint8Array> {
  if (format.ggufName === info.dtype) {
    const bytes = new Uint8Array(info.byteLength);
    await readTensorBytes(info, bytes);
    return bytes;
  }
  const cols = info.shape[info.shape.length - 1];
  const rows = info.shape.reduce((a, b) => a * b, 1) / cols;
  const f32 = await readAsF32(backend, info);
  try {
    const sizeBytes = matrixBytes(format.id, rows, cols);
    const out = new Uint8Array(sizeBytes);
    if (format.id === DType.F32) {
      backend.download(out, f32);
      return out;
    }
    const dst = backend.alloc(sizeBytes);
    try {
      if (isQuantized(format.id)) {
        backend.quantize({ dst, dstDtype: format.id, src: f32, rows, cols });
      } else backend.convert(dst, format.id, f32, DType.F32, rows * cols);
      backend.download(out, dst);
    } finally {
      backend.free(dst);
    }
    return out;
  } finally {
    backend.free(f32);
  }
}

/** The input's metadata with general.file_type and general.quantization_version set. */
function outputMetadata(metadata: Map<string, unknown>, fileType: number): GgufKV[] {
  const kvs = [...metadata].filter(([key]) => key !== "general.alignment") as GgufKV[];
  const set = (key: string, value: GgufKV[1]) => {
    const at = kvs.findIndex(([k]) => k === key);
    if (at >= 0) kvs[at] = [key, value];
    else kvs.push([key, value]);
  };
  set("general.file_type", gguf.u32(fileType));
  set("general.quantization_version", gguf.u32(2));
  return kvs;
}

/**
 * Quantizes the GGUF at `inPath` into `outPath` with `preset`'s recipe. The output is written to
 * `outPath`.tmp and renamed once complete, so a failure never leaves a half-written model.
 */
export async function quantizeGguf(
  backend: NativeBackend,
  paths: { inPath: string; outPath: string },
  preset: QuantPreset,
  options: QuantizeGgufOptions = {},
): Promise<QuantizeGgufResult> {
  const input = await readGguf(paths.inPath);
  const arch = input.metadata.get("general.architecture");
  const blockCount = arch?.type === "str"
    ? input.metadata.get(`${arch.value}.block_count`)
    : undefined;
  const numLayers = typeof blockCount?.value === "number" ? blockCount.value : 0;
  const ctx = {
    numLayers,
    hasOutput: input.tensors.has("output.weight"),
    isPure: options.isPure,
    file: paths.inPath,
  };
  const plan = [...input.tensors.values()].map((info) => {
    const source = formatByGgufName(info.dtype);
    if (source === undefined || isQuantized(source.id)) {
      throw new ModelFormatError(
        paths.inPath,
        `tensor ${info.name} is ${info.dtype}; deno task quantize reads F32, F16 or BF16 models`,
      );
    }
    return { info, format: tensorFormat(info.name, info.shape, preset, ctx) };
  });
  const sizes = plan.map(({ info, format }) => {
    const cols = info.shape[info.shape.length - 1];
    return matrixBytes(format.id, info.shape.reduce((a, b) => a * b, 1) / cols, cols);
  });
  // The header needs every size up front: lay the file out with zeros, then fill each tensor in.
  const zeros = new ArrayBuffer(Math.max(0, ...sizes));
  const layout: GgufTensorData[] = plan.map(({ info, format }, i) => ({
    name: info.name,
    dtype: format.ggufName as FileDType,
    shape: info.shape,
    data: new Uint8Array(zeros, 0, sizes[i]),
  }));
  const tmpPath = `${paths.outPath}.tmp`;
  try {
    await writeGguf(tmpPath, {
      metadata: outputMetadata(input.metadata, preset.fileType),
      tensors: layout,
      alignment: input.alignment,
    });
    const written = await readGguf(tmpPath);
    using file = await Deno.open(tmpPath, { write: true });
    const tensors: QuantizedTensor[] = [];
    for (let i = 0; i < plan.length; i++) {
      const { info, format } = plan[i];
      const bytes = await encode(backend, info, format);
      await file.seek(written.tensors.get(info.name)!.byteOffset, Deno.SeekMode.Start);
      for (let done = 0; done < bytes.byteLength;) {
        done += await file.write(bytes.subarray(done));
      }
      tensors.push({
        name: info.name,
        shape: info.shape,
        format: format.ggufName,
        sizeBytes: sizes[i],
      });
      options.onTensor?.(info.name, format.ggufName, i + 1, plan.length);
    }
    await Deno.rename(tmpPath, paths.outPath);
    const sizeBytes = sizes.reduce((a, b) => a + b, 0);
    const numElements = plan.reduce((n, { info }) => n + info.shape.reduce((a, b) => a * b, 1), 0);
    return { tensors, sizeBytes, bitsPerWeight: (8 * sizeBytes) / numElements };
  } catch (error) {
    await Deno.remove(tmpPath).catch(() => {});
    throw error;
  }
}
