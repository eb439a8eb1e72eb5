// Reads and writes GGUF v2/v3 model files (little endian; the tensor types of ffi/formats.ts,
// quantized blocks included, kept as they are).

import { formatByGgmlType, formatByGgufName } from "../../ffi/formats.ts";
import { ModelFormatError } from "./errors.ts";
import {
  type DType,
  openModelFile,
  readFileAt,
  shapeBytes,
  supportedGgufTypes,
  type TensorInfo,
  writeAll,
} from "./tensor.ts";

// --- metadata value types

export type GgufNumberType = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64";
export type GgufBigIntType = "u64" | "i64";
/** Element type of a GGUF array; "arr" means an array of arrays. */
export type GgufItemType = GgufNumberType | GgufBigIntType | "bool" | "str" | "arr";
export type GgufScalar = number | bigint | boolean | string;

/** A metadata value with its GGUF type kept, so a file can be written back unchanged. */
export type GgufValue =
  | { type: GgufNumberType; value: number }
  | { type: GgufBigIntType; value: bigint }
  | { type: "bool"; value: boolean }
  | { type: "str"; value: string }
  | { type: "arr"; itemType: Exclude<GgufItemType, "arr">; value: GgufScalar[] }
  | { type: "arr"; itemType: "arr"; value: GgufValue[] };

/** One metadata entry for {@link writeGguf}; a `Map<string, GgufValue>` also fits. */
export type GgufKV = readonly [key: string, value: GgufValue];

/** A parsed GGUF file: metadata and tensor descriptors; tensor bytes stay on disk. */
export interface GgufFile {
  path: string;
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: Map<string, TensorInfo>;
  alignment: number;
  /** Absolute offset of the tensor data section. */
  dataOffset: number;
}

/** A tensor to write; `shape` is in PyTorch order (outermost first). */
export interface GgufTensorData {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

export interface GgufWriteOptions {
  metadata: Iterable<GgufKV>;
  tensors: readonly GgufTensorData[];
  /** Data alignment in bytes (power of two); written as general.alignment when not 32. */
  alignment?: number;
}

// GGUF value type ids, in file order.
const TYPE_IDS: Record<GgufItemType, number> = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  str: 8,
  arr: 9,
  u64: 10,
  i64: 11,
  f64: 12,
};
const TYPE_BY_ID = Object.fromEntries(
  Object.entries(TYPE_IDS).map(([name, id]) => [id, name as GgufItemType]),
);
// Smallest encoded size of one value of each type, used to reject absurd counts up front.
const MIN_ENCODED_BYTES: Record<GgufItemType, number> = {
  u8: 1,
  i8: 1,
  bool: 1,
  u16: 2,
  i16: 2,
  u32: 4,
  i32: 4,
  f32: 4,
  u64: 8,
  i64: 8,
  f64: 8,
  str: 8,
  arr: 12,
};

// ggml tensor type ids (ggml.h, enum ggml_type), to name the ones we cannot load in errors.
const GGML_TYPE_NAMES: Record<number, string> = {
  0: "F32",
  1: "F16",
  2: "Q4_0",
  3: "Q4_1",
  6: "Q5_0",
  7: "Q5_1",
  8: "Q8_0",
  9: "Q8_1",
  10: "Q2_K",
  11: "Q3_K",
  12: "Q4_K",
  13: "Q5_K",
  14: "Q6_K",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  30: "BF16",
  34: "TQ1_0",
  35: "TQ2_0",
  39: "MXFP4",
};
/** The ggml type id of a dtype GGUF can hold (the formats table's ggmlType column). */
function ggmlTypeOf(dtype: DType): number {
  const info = formatByGgufName(dtype);
  if (info === undefined || info.ggmlType < 0) {
    throw new TypeError(`Expected a GGUF tensor type of ${supportedGgufTypes()}, found ${dtype}`);
  }
  return info.ggmlType;
}

const MAGIC = "GGUF";
const DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4; // GGML_MAX_DIMS
const READ_CHUNK_BYTES = 1 << 20;

// --- value constructors

function checkInt(type: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`Expected ${type} in [${min}, ${max}], found ${value}`);
  }
}

function checkBigInt(type: string, value: bigint, min: bigint, max: bigint): void {
  if (typeof value !== "bigint" || value < min || value > max) {
    throw new RangeError(`Expected ${type} as a bigint in [${min}, ${max}], found ${value}`);
  }
}

function toBigInt(value: number | bigint): bigint {
  if (typeof value === "number" && !Number.isInteger(value)) {
    throw new RangeError(`Expected an integer, found ${value}`);
  }
  return BigInt(value);
}

function checkScalar(type: Exclude<GgufItemType, "arr">, value: GgufScalar): void {
  switch (type) {
    case "u8":
      return checkInt(type, value as number, 0, 0xff);
    case "i8":
      return checkInt(type, value as number, -0x80, 0x7f);
    case "u16":
      return checkInt(type, value as number, 0, 0xffff);
    case "i16":
      return checkInt(type, value as number, -0x8000, 0x7fff);
    case "u32":
      return checkInt(type, value as number, 0, 0xffffffff);
    case "i32":
      return checkInt(type, value as number, -0x80000000, 0x7fffffff);
    case "u64":
      return checkBigInt(type, value as bigint, 0n, 0xffffffffffffffffn);
    case "i64":
      return checkBigInt(type, value as bigint, -0x8000000000000000n, 0x7fffffffffffffffn);
    case "f32":
    case "f64":
      if (typeof value !== "number") throw new TypeError(`Expected ${type} number, found ${value}`);
      return;
    case "bool":
      if (typeof value !== "boolean") throw new TypeError(`Expected a boolean, found ${value}`);
      return;
    case "str":
      if (typeof value !== "string") throw new TypeError(`Expected a string, found ${value}`);
      return;
  }
}

function num(type: GgufNumberType) {
  return (value: number): GgufValue => {
    checkScalar(type, value);
    return { type, value };
  };
}

function big(type: GgufBigIntType) {
  return (value: number | bigint): GgufValue => {
    const v = toBigInt(value);
    checkScalar(type, v);
    return { type, value: v };
  };
}

function arr(itemType: Exclude<GgufItemType, "arr">, values: readonly GgufScalar[]): GgufValue;
function arr(itemType: "arr", values: readonly GgufValue[]): GgufValue;
function arr(itemType: GgufItemType, values: readonly (GgufScalar | GgufValue)[]): GgufValue {
  if (!(itemType in TYPE_IDS)) throw new TypeError(`Expected a GGUF item type, found ${itemType}`);
  if (itemType === "arr") {
    for (const v of values as GgufValue[]) {
      if (v?.type !== "arr") throw new TypeError(`Expected nested arrays, found ${v?.type}`);
    }
    return { type: "arr", itemType, value: [...values] as GgufValue[] };
  }
  const items = itemType === "u64" || itemType === "i64"
    ? (values as (number | bigint)[]).map(toBigInt)
    : [...values] as GgufScalar[];
  for (const v of items) checkScalar(itemType, v);
  return { type: "arr", itemType, value: items };
}

/** Typed metadata value constructors for {@link writeGguf}, e.g. `gguf.u32(32)`. */
export const gguf = {
  u8: num("u8"),
  i8: num("i8"),
  u16: num("u16"),
  i16: num("i16"),
  u32: num("u32"),
  i32: num("i32"),
  f32: num("f32"),
  f64: num("f64"),
  u64: big("u64"),
  i64: big("i64"),
  bool(value: boolean): GgufValue {
    checkScalar("bool", value);
    return { type: "bool", value };
  },
  str(value: string): GgufValue {
    checkScalar("str", value);
    return { type: "str", value };
  },
  arr,
};

// --- reading

// Reads the header through a buffer so that a multi-gigabyte file costs a few small reads.
class HeaderReader {
  #file: Deno.FsFile;
  #path: string;
  #fileSize: number;
  #buf = new Uint8Array(READ_CHUNK_BYTES);
  #view = new DataView(this.#buf.buffer);
  #start = 0; // absolute file offset of #buf[0]
  #pos = 0; // read position inside #buf
  #end = 0; // valid bytes in #buf
  #decoder = new TextDecoder("utf-8", { fatal: true });

  constructor(file: Deno.FsFile, path: string, fileSize: number) {
    this.#file = file;
    this.#path = path;
    this.#fileSize = fileSize;
  }

  get position(): number {
    return this.#start + this.#pos;
  }

  get remaining(): number {
    return this.#fileSize - this.position;
  }

  error(detail: string): ModelFormatError {
    return new ModelFormatError(this.#path, detail);
  }

  async #ensure(n: number, what: string): Promise<void> {
    if (this.#end - this.#pos >= n) return;
    if (n > this.remaining) {
      throw this.error(
        `truncated file: expected ${n} bytes for ${what} at offset ${this.position}, ` +
          `found ${this.remaining} before the end of the file`,
      );
    }
    if (n > this.#buf.byteLength) {
      this.#buf = new Uint8Array(n);
      this.#view = new DataView(this.#buf.buffer);
    }
    const start = this.position;
    const len = Math.min(this.#buf.byteLength, this.#fileSize - start);
    const got = await readFileAt(this.#file, start, this.#buf.subarray(0, len));
    this.#start = start;
    this.#pos = 0;
    this.#end = got;
    if (got < n) throw this.error(`truncated file: file shrank while reading ${what}`);
  }

  async #take(n: number, what: string): Promise<number> {
    await this.#ensure(n, what);
    const at = this.#pos;
    this.#pos += n;
    return at;
  }

  async bytes(n: number, what: string): Promise<Uint8Array> {
    const at = await this.#take(n, what);
    return this.#buf.slice(at, at + n);
  }

  async u32(what: string): Promise<number> {
    return await this.scalar("u32", what) as number;
  }

  async u64(what: string): Promise<bigint> {
    return await this.scalar("u64", what) as bigint;
  }

  /** A u64 count that must be small enough that `count * minBytes` still fits in the file. */
  async count(what: string, minBytesEach: number): Promise<number> {
    const at = this.position;
    const n = await this.u64(what);
    if (n * BigInt(minBytesEach) > BigInt(this.remaining)) {
      throw this.error(
        `absurd ${what} ${n} at offset ${at}: at least ${minBytesEach} bytes each would need ` +
          `more than the ${this.remaining} bytes left in the file`,
      );
    }
    return Number(n);
  }

  async string(what: string): Promise<string> {
    const n = await this.count(`${what} length`, 1);
    return this.#decodeString(await this.#take(n, what), n, what);
  }

  #decodeString(at: number, n: number, what: string): string {
    try {
      return this.#decoder.decode(this.#buf.subarray(at, at + n));
    } catch (err) {
      throw new ModelFormatError(this.#path, `expected UTF-8 in ${what}, found invalid bytes`, {
        cause: err,
      });
    }
  }

  /** `n` items of one type; decodes synchronously while whole items sit in the buffer. */
  async array(type: Exclude<GgufItemType, "arr">, n: number, what: string): Promise<GgufScalar[]> {
    const items: GgufScalar[] = new Array(n);
    let i = 0;
    while (i < n) {
      if (type === "str") {
        while (i < n && this.#end - this.#pos >= 8) {
          const len = this.#view.getBigUint64(this.#pos, true);
          if (len > BigInt(this.#end - this.#pos - 8)) break;
          const at = this.#pos + 8;
          this.#pos = at + Number(len);
          items[i++] = this.#decodeString(at, Number(len), what);
        }
      } else {
        const size = MIN_ENCODED_BYTES[type];
        for (; i < n && this.#end - this.#pos >= size; i++) {
          items[i] = this.#decodeAt(type, this.#pos, what);
          this.#pos += size;
        }
      }
      // The slow path refills the buffer (and checks lengths against the file size).
      if (i < n) items[i++] = await this.scalar(type, what);
    }
    return items;
  }

  async scalar(type: Exclude<GgufItemType, "arr">, what: string): Promise<GgufScalar> {
    if (type === "str") return await this.string(what);
    return this.#decodeAt(type, await this.#take(MIN_ENCODED_BYTES[type], what), what);
  }

  // Reads #view only after the bytes were taken, since refilling may replace the buffer.
  #decodeAt(type: Exclude<GgufItemType, "arr" | "str">, at: number, what: string): GgufScalar {
    const v = this.#view;
    switch (type) {
      case "u8":
        return v.getUint8(at);
      case "i8":
        return v.getInt8(at);
      case "bool": {
        const b = v.getUint8(at);
        if (b > 1) throw this.error(`expected bool 0 or 1 in ${what}, found ${b}`);
        return b === 1;
      }
      case "u16":
        return v.getUint16(at, true);
      case "i16":
        return v.getInt16(at, true);
      case "u32":
        return v.getUint32(at, true);
      case "i32":
        return v.getInt32(at, true);
      case "f32":
        return v.getFloat32(at, true);
      case "u64":
        return v.getBigUint64(at, true);
      case "i64":
        return v.getBigInt64(at, true);
      case "f64":
        return v.getFloat64(at, true);
    }
  }
}

async function readType(r: HeaderReader, what: string): Promise<GgufItemType> {
  const at = r.position;
  const id = await r.u32(what);
  const type = TYPE_BY_ID[id];
  if (type === undefined) {
    throw r.error(`expected a GGUF value type id 0..12 for ${what} at offset ${at}, found ${id}`);
  }
  return type;
}

async function readValue(r: HeaderReader, type: GgufItemType, what: string): Promise<GgufValue> {
  if (type !== "arr") return { type, value: await r.scalar(type, what) } as GgufValue;
  const itemType = await readType(r, `${what} item type`);
  const n = await r.count(`${what} array length`, MIN_ENCODED_BYTES[itemType]);
  if (itemType === "arr") {
    const items: GgufValue[] = [];
    for (let i = 0; i < n; i++) items.push(await readValue(r, "arr", `${what}[${i}]`));
    return { type, itemType, value: items };
  }
  return { type, itemType, value: await r.array(itemType, n, what) };
}

function ggmlTypeName(id: number): string {
  return GGML_TYPE_NAMES[id] ?? "unknown";
}

async function readTensorInfo(r: HeaderReader, path: string) {
  const name = await r.string("tensor name");
  const numDims = await r.u32(`number of dimensions of tensor ${name}`);
  if (numDims > MAX_DIMS) {
    throw r.error(`expected at most ${MAX_DIMS} dimensions for tensor ${name}, found ${numDims}`);
  }
  const ne: number[] = [];
  for (let i = 0; i < numDims; i++) {
    const dim = await r.u64(`dimension ${i} of tensor ${name}`);
    if (dim > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw r.error(`absurd dimension ${dim} for tensor ${name}`);
    }
    ne.push(Number(dim));
  }
  const typeId = await r.u32(`type of tensor ${name}`);
  // GGUF lists ne[] innermost first; PyTorch order puts rows first.
  const shape = ne.reverse();
  const format = formatByGgmlType(typeId);
  if (format === undefined || format.ggmlType < 0) {
    throw r.error(
      `unsupported tensor type ${ggmlTypeName(typeId)} (id ${typeId}) for tensor ${name} ` +
        `[${shape}]; supported types: ${supportedGgufTypes()}`,
    );
  }
  const dtype: DType = format.ggufName;
  const offset = await r.u64(`data offset of tensor ${name}`);
  let byteLength: number;
  try {
    byteLength = shapeBytes(dtype, shape);
  } catch (err) {
    throw new ModelFormatError(
      path,
      `tensor ${name} has a shape [${shape}] its type ${dtype} cannot store ` +
        `(rows must be whole ${format.blockLen}-element blocks): ${(err as Error).message}`,
      { cause: err },
    );
  }
  return { name, dtype, shape, offset, byteLength };
}

/**
 * GGUF stores no byte size per tensor: its type and shape imply one, and llama.cpp lays tensors
 * out back to back, each padded to the alignment. The gap to the next tensor is the size the
 * writer meant, so a type or shape that disagrees with the data shows up here (a Q4_0 tensor
 * whose data is F16-sized, a shape with the wrong row length) instead of as garbage weights.
 */
function checkTensorSizes(r: HeaderReader, infos: TensorInfo[], alignment: number): void {
  const sorted = infos.filter((t) => t.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset);
  for (let i = 0; i + 1 < sorted.length; i++) {
    const t = sorted[i];
    const found = sorted[i + 1].byteOffset - t.byteOffset;
    if (found < t.byteLength || found > alignUp(t.byteLength, alignment)) {
      throw r.error(
        `tensor ${t.name} is ${t.dtype} [${t.shape}] so expected ${t.byteLength} bytes ` +
          `(${alignUp(t.byteLength, alignment)} with padding), found ${found} before the next ` +
          `tensor ${sorted[i + 1].name}`,
      );
    }
  }
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

/** Parses a GGUF v2/v3 header and validates that every tensor lies inside the file. */
export async function readGguf(path: string): Promise<GgufFile> {
  using file = await openModelFile(path);
  const fileSize = (await file.stat()).size;
  const r = new HeaderReader(file, path, fileSize);

  const magic = await r.bytes(Math.min(4, fileSize), "magic");
  if (new TextDecoder().decode(magic) !== MAGIC) {
    const hex = [...magic].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    throw r.error(`bad magic: expected "GGUF", found bytes [${hex}]`);
  }
  const version = await r.u32("version");
  if (version !== 2 && version !== 3) {
    const hint = version > 0xffff ? " (big-endian GGUF files are not supported)" : "";
    throw r.error(`unsupported GGUF version ${version}; expected 2 or 3${hint}`);
  }
  // Minimum encoded tensor info: name length 8, n_dims 4, type 4, offset 8.
  const numTensors = await r.count("tensor count", 24);
  // Minimum encoded key/value: key length 8, type 4, then at least one byte.
  const numKv = await r.count("metadata key/value count", 13);

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < numKv; i++) {
    const key = await r.string(`metadata key ${i}`);
    if (metadata.has(key)) throw r.error(`duplicate metadata key ${key}`);
    const type = await readType(r, `type of metadata ${key}`);
    metadata.set(key, await readValue(r, type, `metadata ${key}`));
  }

  let alignment = DEFAULT_ALIGNMENT;
  const alignValue = metadata.get("general.alignment");
  if (alignValue !== undefined) {
    const v = alignValue.value;
    if (alignValue.type !== "u32" || typeof v !== "number" || v === 0 || (v & (v - 1)) !== 0) {
      throw r.error(
        `expected general.alignment to be a u32 power of two, found ${alignValue.type} ${v}`,
      );
    }
    alignment = v;
  }

  const infos = [];
  for (let i = 0; i < numTensors; i++) infos.push(await readTensorInfo(r, path));
  const dataOffset = alignUp(r.position, alignment);

  const tensors = new Map<string, TensorInfo>();
  for (const { name, dtype, shape, offset, byteLength } of infos) {
    if (tensors.has(name)) throw r.error(`duplicate tensor name ${name}`);
    if (offset % BigInt(alignment) !== 0n) {
      throw r.error(
        `expected data offset of tensor ${name} to be a multiple of ${alignment}, found ${offset}`,
      );
    }
    const byteOffset = BigInt(dataOffset) + offset;
    if (byteOffset + BigInt(byteLength) > BigInt(fileSize)) {
      const found = byteOffset < BigInt(fileSize) ? BigInt(fileSize) - byteOffset : 0n;
      throw r.error(
        `tensor data beyond file end: tensor ${name}, ${dtype} [${shape}], needs ` +
          `${byteLength} bytes from offset ${byteOffset}, found ${found} before the end of the ` +
          `file (${fileSize} bytes): truncated?`,
      );
    }
    tensors.set(name, {
      name,
      dtype,
      shape,
      file: path,
      byteOffset: Number(byteOffset),
      byteLength,
    });
  }
  checkTensorSizes(r, [...tensors.values()], alignment);
  return { path, version, metadata, tensors, alignment, dataOffset };
}

// --- typed accessors

function lookup(g: GgufFile, key: string): GgufValue {
  const value = g.metadata.get(key);
  if (value === undefined) throw new ModelFormatError(g.path, `missing metadata key ${key}`);
  return value;
}

function wrongType(g: GgufFile, key: string, expected: string, value: GgufValue): never {
  const found = value.type === "arr" ? `array of ${value.itemType}` : value.type;
  throw new ModelFormatError(g.path, `expected metadata ${key} to be ${expected}, found ${found}`);
}

function scalarToNumber(g: GgufFile, key: string, v: GgufScalar): number {
  if (typeof v === "number") return v;
  if (
    typeof v === "bigint" && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= Number.MAX_SAFE_INTEGER
  ) {
    return Number(v);
  }
  throw new ModelFormatError(g.path, `expected metadata ${key} to fit a JS number, found ${v}`);
}

/** A numeric metadata value of any integer or float type; `fallback` when the key is absent. */
export function ggufNumber(g: GgufFile, key: string, fallback?: number): number {
  if (fallback !== undefined && !g.metadata.has(key)) return fallback;
  const value = lookup(g, key);
  if (value.type === "arr" || value.type === "bool" || value.type === "str") {
    wrongType(g, key, "a number", value);
  }
  return scalarToNumber(g, key, value.value);
}

/** A string metadata value; `fallback` when the key is absent. */
export function ggufString(g: GgufFile, key: string, fallback?: string): string {
  if (fallback !== undefined && !g.metadata.has(key)) return fallback;
  const value = lookup(g, key);
  if (value.type !== "str") wrongType(g, key, "a string", value);
  return value.value;
}

/** A bool metadata value; `fallback` when the key is absent. */
export function ggufBool(g: GgufFile, key: string, fallback?: boolean): boolean {
  if (fallback !== undefined && !g.metadata.has(key)) return fallback;
  const value = lookup(g, key);
  if (value.type !== "bool") wrongType(g, key, "a bool", value);
  return value.value;
}

/** A metadata array of strings (e.g. tokenizer.ggml.tokens). */
export function ggufStringArray(g: GgufFile, key: string): string[] {
  const value = lookup(g, key);
  if (value.type !== "arr" || value.itemType !== "str") {
    wrongType(g, key, "an array of str", value);
  }
  return value.value as string[];
}

/** A metadata array of any numeric item type, as JS numbers. */
export function ggufNumberArray(g: GgufFile, key: string): number[] {
  const value = lookup(g, key);
  if (value.type !== "arr" || ["arr", "bool", "str"].includes(value.itemType)) {
    wrongType(g, key, "an array of numbers", value);
  }
  return (value.value as GgufScalar[]).map((v) => scalarToNumber(g, key, v));
}

// --- writing

// Growable little-endian byte buffer for the header, which is small next to the tensor data.
class ByteWriter {
  #buf = new Uint8Array(1 << 16);
  #view = new DataView(this.#buf.buffer);
  #len = 0;
  #encoder = new TextEncoder();

  #reserve(n: number): number {
    if (this.#len + n > this.#buf.byteLength) {
      const next = new Uint8Array(Math.max(this.#buf.byteLength * 2, this.#len + n));
      next.set(this.#buf.subarray(0, this.#len));
      this.#buf = next;
      this.#view = new DataView(next.buffer);
    }
    const at = this.#len;
    this.#len += n;
    return at;
  }

  get length(): number {
    return this.#len;
  }

  u32(v: number): void {
    this.scalar("u32", v);
  }

  u64(v: number | bigint): void {
    this.scalar("u64", BigInt(v));
  }

  string(s: string): void {
    const bytes = this.#encoder.encode(s);
    this.u64(bytes.byteLength);
    const at = this.#reserve(bytes.byteLength);
    this.#buf.set(bytes, at);
  }

  scalar(type: Exclude<GgufItemType, "arr">, v: GgufScalar): void {
    if (type === "str") return this.string(v as string);
    // Reserve before touching #view: reserving may replace the buffer and its view.
    const at = this.#reserve(MIN_ENCODED_BYTES[type]);
    const view = this.#view;
    switch (type) {
      case "u8":
        return view.setUint8(at, v as number);
      case "i8":
        return view.setInt8(at, v as number);
      case "bool":
        return view.setUint8(at, v ? 1 : 0);
      case "u16":
        return view.setUint16(at, v as number, true);
      case "i16":
        return view.setInt16(at, v as number, true);
      case "u32":
        return view.setUint32(at, v as number, true);
      case "i32":
        return view.setInt32(at, v as number, true);
      case "f32":
        return view.setFloat32(at, v as number, true);
      case "u64":
        return view.setBigUint64(at, v as bigint, true);
      case "i64":
        return view.setBigInt64(at, v as bigint, true);
      case "f64":
        return view.setFloat64(at, v as number, true);
    }
  }

  value(v: GgufValue): void {
    if (v.type !== "arr") return this.scalar(v.type, v.value);
    this.u32(TYPE_IDS[v.itemType]);
    this.u64(v.value.length);
    if (v.itemType === "arr") {
      for (const item of v.value as GgufValue[]) this.value(item);
    } else {
      for (const item of v.value as GgufScalar[]) this.scalar(v.itemType, item);
    }
  }

  padTo(alignment: number): void {
    this.#reserve(alignUp(this.#len, alignment) - this.#len); // new bytes are already zero
  }

  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.#len);
  }
}

function checkValue(key: string, v: GgufValue): void {
  if (v === null || typeof v !== "object" || !(v.type in TYPE_IDS)) {
    throw new TypeError(`Expected a GgufValue (use gguf.u32() etc.) for ${key}, found ${v}`);
  }
  if (v.type === "arr") {
    if (!Array.isArray(v.value)) throw new TypeError(`Expected an array value for ${key}`);
    if (v.itemType === "arr") {
      for (const item of v.value as GgufValue[]) checkValue(key, item);
    } else {
      for (const item of v.value as GgufScalar[]) checkScalar(v.itemType, item);
    }
  } else {
    checkScalar(v.type, v.value);
  }
}

/**
 * Writes a GGUF v3 file llama.cpp can load: metadata in the given order, then tensor infos, then
 * each tensor's data aligned to `alignment`.
 */
export async function writeGguf(path: string, options: GgufWriteOptions): Promise<void> {
  const { tensors, alignment = DEFAULT_ALIGNMENT } = options;
  if (!Number.isSafeInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    throw new RangeError(`Expected alignment to be a power of two, found ${alignment}`);
  }
  const metadata = [...options.metadata];
  const keys = new Set<string>();
  for (const [key, value] of metadata) {
    if (typeof key !== "string" || key === "") {
      throw new TypeError(`Expected a non-empty metadata key, found ${JSON.stringify(key)}`);
    }
    if (keys.has(key)) throw new RangeError(`Expected unique metadata keys, found ${key} twice`);
    keys.add(key);
    checkValue(key, value);
  }
  const given = metadata.find(([key]) => key === "general.alignment")?.[1];
  if (given !== undefined && (given.type !== "u32" || given.value !== alignment)) {
    throw new RangeError(
      `Expected general.alignment to be u32 ${alignment}, found ${given.type} ${given.value}`,
    );
  }
  if (given === undefined && alignment !== DEFAULT_ALIGNMENT) {
    metadata.push(["general.alignment", gguf.u32(alignment)]);
  }

  const names = new Set<string>();
  const offsets: number[] = [];
  let dataSize = 0;
  for (const t of tensors) {
    if (names.has(t.name)) {
      throw new RangeError(`Expected unique tensor names, found ${t.name} twice`);
    }
    names.add(t.name);
    if (t.shape.length > MAX_DIMS) {
      throw new RangeError(`Expected at most ${MAX_DIMS} dims for ${t.name}, found [${t.shape}]`);
    }
    const expected = shapeBytes(t.dtype, t.shape);
    if (!(t.data instanceof Uint8Array) || t.data.byteLength !== expected) {
      throw new RangeError(
        `Expected ${expected} bytes for ${t.dtype} tensor ${t.name} [${t.shape}], ` +
          `found ${t.data?.byteLength}`,
      );
    }
    offsets.push(dataSize);
    dataSize = alignUp(dataSize + expected, alignment);
  }

  const w = new ByteWriter();
  w.u32(0x46554747); // "GGUF" read as a little-endian u32
  w.u32(3);
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [key, value] of metadata) {
    w.string(key);
    w.u32(TYPE_IDS[value.type]);
    w.value(value);
  }
  tensors.forEach((t, i) => {
    w.string(t.name);
    w.u32(t.shape.length);
    for (const dim of [...t.shape].reverse()) w.u64(dim);
    w.u32(ggmlTypeOf(t.dtype));
    w.u64(offsets[i]);
  });
  w.padTo(alignment);

  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  await writeAll(file, w.bytes());
  const padding = new Uint8Array(alignment);
  for (const t of tensors) {
    await writeAll(file, t.data);
    await writeAll(
      file,
      padding.subarray(0, alignUp(t.data.byteLength, alignment) - t.data.byteLength),
    );
  }
}
