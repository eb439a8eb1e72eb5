// Reads and writes Hugging Face safetensors files, single or sharded with an index json.

import { ModelFormatError } from "./errors.ts";
import {
  type DType,
  isDType,
  numElements,
  openModelFile,
  readFileAt,
  shapeBytes,
  supportedDTypes,
  type TensorInfo,
  writeAll,
} from "./tensor.ts";

/** A parsed safetensors file: its tensors and its `__metadata__` string map. */
export interface SafetensorsFile {
  path: string;
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
  /** Absolute offset where the data section (after the header) starts. */
  dataOffset: number;
}

/**
 * What the writer can store: the weight formats, plus I32 for the integer tensors of exports
 * (token ids); the reader, which loads weights, keeps to the weight formats.
 */
export type WriteDType = DType | "I32";

/** A tensor to write: raw little-endian bytes plus its dtype and PyTorch-order shape. */
export interface TensorData {
  name: string;
  dtype: WriteDType;
  shape: number[];
  data: Uint8Array;
}

/** Options for {@link writeSafetensorsSharded}. */
export interface ShardOptions {
  /** A shard is closed before it would exceed this many data bytes (one huge tensor may). */
  maxShardBytes: number;
  metadata?: Record<string, string>;
  /** File name prefix; shards are `<prefix>-00001-of-00003.safetensors`. Default "model". */
  prefix?: string;
}

// The reference implementation refuses headers above 100 MB; we do the same so a corrupt length
// cannot make us allocate the whole file.
const MAX_HEADER_BYTES = 100_000_000;
const SINGLE_FILE = "model.safetensors";
const INDEX_FILE = "model.safetensors.index.json";

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isNonNegativeInt(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

function parseMetadata(path: string, raw: unknown): Record<string, string> {
  if (raw === undefined) return {};
  if (!isPlainObject(raw)) {
    throw new ModelFormatError(path, `expected __metadata__ to be an object, found ${typeof raw}`);
  }
  for (const [key, value] of Object.entries(raw)) {
    if (typeof value !== "string") {
      throw new ModelFormatError(
        path,
        `expected __metadata__ value for "${key}" to be a string, found ${typeof value}`,
      );
    }
  }
  return { ...(raw as Record<string, string>) };
}

function parseEntry(
  path: string,
  name: string,
  raw: unknown,
  dataSize: number,
  dataOffset: number,
): TensorInfo {
  if (!isPlainObject(raw)) {
    throw new ModelFormatError(
      path,
      `expected tensor ${name} to be an object, found ${typeof raw}`,
    );
  }
  const { dtype, shape, data_offsets: offsets } = raw;
  if (!isDType(dtype)) {
    throw new ModelFormatError(
      path,
      `unsupported dtype ${
        JSON.stringify(dtype)
      } for tensor ${name}; expected ${supportedDTypes()}`,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInt)) {
    throw new ModelFormatError(
      path,
      `expected shape of tensor ${name} to be non-negative integers, found ${
        JSON.stringify(shape)
      }`,
    );
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt) ||
    offsets[0] > offsets[1]
  ) {
    throw new ModelFormatError(
      path,
      `expected data_offsets of tensor ${name} to be [begin, end] with begin <= end, found ${
        JSON.stringify(offsets)
      }`,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (end > dataSize) {
    throw new ModelFormatError(
      path,
      `data_offsets [${begin}, ${end}] of tensor ${name} go beyond the data section ` +
        `of ${dataSize} bytes`,
    );
  }
  let expected: number;
  try {
    expected = shapeBytes(dtype, shape);
  } catch (err) {
    throw new ModelFormatError(path, `tensor ${name} has an invalid shape`, { cause: err });
  }
  if (end - begin !== expected) {
    throw new ModelFormatError(
      path,
      `tensor ${name} is ${dtype} [${shape}] so expected ${expected} bytes, ` +
        `found data_offsets [${begin}, ${end}] (${end - begin} bytes)`,
    );
  }
  return {
    name,
    dtype,
    shape: [...shape],
    file: path,
    byteOffset: dataOffset + begin,
    byteLength: expected,
  };
}

/** Parses and validates a safetensors header; tensor bytes are left on disk. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  using file = await openModelFile(path);
  const fileSize = (await file.stat()).size;
  const prefix = new Uint8Array(8);
  if (fileSize < 8 || (await readFileAt(file, 0, prefix)) < 8) {
    throw new ModelFormatError(
      path,
      `expected at least 8 bytes (header length), found a ${fileSize}-byte file`,
    );
  }
  const headerLength = new DataView(prefix.buffer).getBigUint64(0, true);
  if (headerLength > BigInt(fileSize - 8)) {
    throw new ModelFormatError(
      path,
      `header length ${headerLength} goes beyond the end of the ${fileSize}-byte file`,
    );
  }
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new ModelFormatError(
      path,
      `expected a header of at most ${MAX_HEADER_BYTES} bytes, found ${headerLength}`,
    );
  }
  const headerBytes = new Uint8Array(Number(headerLength));
  await readFileAt(file, 8, headerBytes);

  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (err) {
    throw new ModelFormatError(path, `expected a JSON header, found invalid JSON (${err})`, {
      cause: err,
    });
  }
  if (!isPlainObject(header)) {
    throw new ModelFormatError(path, `expected the JSON header to be an object`);
  }

  const dataOffset = 8 + headerBytes.byteLength;
  const dataSize = fileSize - dataOffset;
  const metadata = parseMetadata(path, header.__metadata__);
  const tensors = new Map<string, TensorInfo>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    tensors.set(name, parseEntry(path, name, raw, dataSize, dataOffset));
  }
  checkNoOverlap(path, [...tensors.values()]);
  return { path, metadata, tensors, dataOffset };
}

// Overlapping tensors would alias each other's weights, which is never what a writer meant.
function checkNoOverlap(path: string, infos: TensorInfo[]): void {
  const sorted = infos.filter((t) => t.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].byteOffset < prev.byteOffset + prev.byteLength) {
      throw new ModelFormatError(
        path,
        `tensor ${sorted[i].name} overlaps the data of tensor ${prev.name}`,
      );
    }
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

async function readIndex(indexPath: string): Promise<Record<string, string>> {
  let index: unknown;
  try {
    index = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (err) {
    throw new ModelFormatError(indexPath, `expected a JSON index, found invalid JSON (${err})`, {
      cause: err,
    });
  }
  const weightMap = isPlainObject(index) ? index.weight_map : undefined;
  if (!isPlainObject(weightMap)) {
    throw new ModelFormatError(indexPath, `expected a "weight_map" object, found none`);
  }
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard === "" || shard.includes("..")) {
      throw new ModelFormatError(
        indexPath,
        `expected weight_map["${name}"] to be a shard file name, found ${JSON.stringify(shard)}`,
      );
    }
  }
  return weightMap as Record<string, string>;
}

/**
 * Reads the tensors of a Hugging Face model directory: `model.safetensors.index.json` with its
 * shards if present, else a single `model.safetensors`.
 */
export async function readSafetensorsDir(dir: string): Promise<Map<string, TensorInfo>> {
  const indexPath = `${dir}/${INDEX_FILE}`;
  if (!(await isFile(indexPath))) {
    const singlePath = `${dir}/${SINGLE_FILE}`;
    if (!(await isFile(singlePath))) {
      throw new ModelFormatError(dir, `expected ${SINGLE_FILE} or ${INDEX_FILE}, found neither`);
    }
    return (await readSafetensors(singlePath)).tensors;
  }

  const weightMap = await readIndex(indexPath);
  const shards = new Map<string, SafetensorsFile>();
  for (const shard of new Set(Object.values(weightMap))) {
    shards.set(shard, await readSafetensors(`${dir}/${shard}`));
  }
  const tensors = new Map<string, TensorInfo>();
  for (const [name, shard] of Object.entries(weightMap)) {
    const info = shards.get(shard)!.tensors.get(name);
    if (info === undefined) {
      throw new ModelFormatError(
        indexPath,
        `weight_map puts tensor ${name} in ${shard}, but that shard has no such tensor`,
      );
    }
    tensors.set(name, info);
  }
  return tensors;
}

function checkTensorData(tensors: readonly TensorData[]): void {
  const names = new Set<string>();
  for (const t of tensors) {
    if (typeof t.name !== "string" || t.name === "" || t.name === "__metadata__") {
      throw new TypeError(`Expected a non-empty tensor name, found ${JSON.stringify(t.name)}`);
    }
    if (names.has(t.name)) {
      throw new RangeError(`Expected unique tensor names, found ${t.name} twice`);
    }
    names.add(t.name);
    const count = numElements(t.shape);
    const expected = t.dtype === "I32" ? 4 * count : shapeBytes(t.dtype, t.shape);
    if (!(t.data instanceof Uint8Array) || t.data.byteLength !== expected) {
      throw new RangeError(
        `Expected ${expected} bytes for ${t.dtype} tensor ${t.name} [${t.shape}], ` +
          `found ${t.data?.byteLength}`,
      );
    }
  }
}

function encodeHeader(tensors: readonly TensorData[], metadata?: Record<string, string>) {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") {
        throw new TypeError(`Expected metadata "${key}" to be a string, found ${typeof value}`);
      }
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.data.byteLength],
    };
    offset += t.data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  // Padding with spaces to a multiple of 8 keeps the data section 8-byte aligned, as HF does.
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const bytes = new Uint8Array(8 + padded).fill(0x20, 8 + json.byteLength);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded), true);
  bytes.set(json, 8);
  return bytes;
}

/** Writes one safetensors file with the tensors in the given order. */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorData[],
  metadata?: Record<string, string>,
): Promise<void> {
  checkTensorData(tensors);
  const header = encodeHeader(tensors, metadata);
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  await writeAll(file, header);
  for (const t of tensors) await writeAll(file, t.data);
}

/**
 * Writes `tensors` into `dir` as numbered shards of at most `maxShardBytes` data bytes each plus
 * `<prefix>.safetensors.index.json`; returns the shard file names in order.
 */
export async function writeSafetensorsSharded(
  dir: string,
  tensors: readonly TensorData[],
  options: ShardOptions,
): Promise<string[]> {
  const { maxShardBytes, metadata, prefix = "model" } = options;
  if (!Number.isSafeInteger(maxShardBytes) || maxShardBytes <= 0) {
    throw new RangeError(`Expected maxShardBytes to be a positive integer, found ${maxShardBytes}`);
  }
  checkTensorData(tensors);
  const groups: TensorData[][] = [];
  let current: TensorData[] = [];
  let currentBytes = 0;
  for (const t of tensors) {
    if (current.length > 0 && currentBytes + t.data.byteLength > maxShardBytes) {
      groups.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(t);
    currentBytes += t.data.byteLength;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);

  const width = (n: number) => String(n).padStart(5, "0");
  const names = groups.map((_, i) =>
    `${prefix}-${width(i + 1)}-of-${width(groups.length)}.safetensors`
  );
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let i = 0; i < groups.length; i++) {
    await writeSafetensors(`${dir}/${names[i]}`, groups[i], metadata);
    for (const t of groups[i]) {
      weightMap[t.name] = names[i];
      totalSize += t.data.byteLength;
    }
  }
  const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
  await Deno.writeTextFile(
    `${dir}/${prefix}.safetensors.index.json`,
    JSON.stringify(index, null, 2) + "\n",
  );
  return names;
}
