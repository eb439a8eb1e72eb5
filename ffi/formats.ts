// The storage formats of the ABI: the TypeScript mirror of DL_DTYPE_TABLE in ffi/denollm.h
// (tests/formats_test.ts parses the header and checks that the two agree row by row).

/** One storage format: a row of DL_DTYPE_TABLE. */
export interface FormatInfo {
  /** The dl_dtype id. */
  id: number;
  /** Lower-case name, as the CLI and the engine spell it: "f16". */
  name: string;
  /** The GGUF / ggml type id of tensors stored in this format. */
  ggmlType: number;
  /** The name as GGUF and safetensors spell it: "F16". */
  ggufName: string;
  /** Elements per block (1 for plain types). */
  blockLen: number;
  /** Bytes per block. */
  blockBytes: number;
  /** Bytes of per-row data stored after all rows' blocks (INT8's f32 row scales), else 0. */
  rowBytes: number;
}

/** Every format, in dl_dtype id order. Adding one is a row here and in the header. */
export const FORMATS = [
  { id: 0, name: "f32", ggmlType: 0, ggufName: "F32", blockLen: 1, blockBytes: 4, rowBytes: 0 },
  { id: 1, name: "f16", ggmlType: 1, ggufName: "F16", blockLen: 1, blockBytes: 2, rowBytes: 0 },
  { id: 2, name: "bf16", ggmlType: 30, ggufName: "BF16", blockLen: 1, blockBytes: 2, rowBytes: 0 },
  { id: 3, name: "q4_0", ggmlType: 2, ggufName: "Q4_0", blockLen: 32, blockBytes: 18, rowBytes: 0 },
  { id: 4, name: "q4_1", ggmlType: 3, ggufName: "Q4_1", blockLen: 32, blockBytes: 20, rowBytes: 0 },
  { id: 5, name: "q5_0", ggmlType: 6, ggufName: "Q5_0", blockLen: 32, blockBytes: 22, rowBytes: 0 },
  { id: 6, name: "q5_1", ggmlType: 7, ggufName: "Q5_1", blockLen: 32, blockBytes: 24, rowBytes: 0 },
  { id: 7, name: "q8_0", ggmlType: 8, ggufName: "Q8_0", blockLen: 32, blockBytes: 34, rowBytes: 0 },
  {
    id: 8,
    name: "q2_k",
    ggmlType: 10,
    ggufName: "Q2_K",
    blockLen: 256,
    blockBytes: 84,
    rowBytes: 0,
  },
  {
    id: 9,
    name: "q3_k",
    ggmlType: 11,
    ggufName: "Q3_K",
    blockLen: 256,
    blockBytes: 110,
    rowBytes: 0,
  },
  {
    id: 10,
    name: "q4_k",
    ggmlType: 12,
    ggufName: "Q4_K",
    blockLen: 256,
    blockBytes: 144,
    rowBytes: 0,
  },
  {
    id: 11,
    name: "q5_k",
    ggmlType: 13,
    ggufName: "Q5_K",
    blockLen: 256,
    blockBytes: 176,
    rowBytes: 0,
  },
  {
    id: 12,
    name: "q6_k",
    ggmlType: 14,
    ggufName: "Q6_K",
    blockLen: 256,
    blockBytes: 210,
    rowBytes: 0,
  },
  {
    id: 13,
    name: "q8_k",
    ggmlType: 15,
    ggufName: "Q8_K",
    blockLen: 256,
    blockBytes: 292,
    rowBytes: 0,
  },
  { id: 14, name: "int8", ggmlType: -1, ggufName: "INT8", blockLen: 1, blockBytes: 1, rowBytes: 4 },
  {
    id: 15,
    name: "int4",
    ggmlType: -1,
    ggufName: "INT4",
    blockLen: 128,
    blockBytes: 68,
    rowBytes: 0,
  },
  {
    id: 16,
    name: "w8a8",
    ggmlType: -1,
    ggufName: "W8A8",
    blockLen: 1,
    blockBytes: 1,
    rowBytes: 8,
  },
  {
    id: 17,
    name: "w8a8_mixed",
    ggmlType: -1,
    ggufName: "W8A8_MIXED",
    blockLen: 1,
    blockBytes: 1,
    rowBytes: 72,
  },
  {
    id: 18,
    name: "f16_2_4",
    ggmlType: -1,
    ggufName: "F16_2_4",
    blockLen: 32,
    blockBytes: 36,
    rowBytes: 0,
  },
  {
    id: 19,
    name: "int8_2_4",
    ggmlType: -1,
    ggufName: "INT8_2_4",
    blockLen: 32,
    blockBytes: 20,
    rowBytes: 4,
  },
  {
    id: 20,
    name: "w8a8_2_4",
    ggmlType: -1,
    ggufName: "W8A8_2_4",
    blockLen: 32,
    blockBytes: 20,
    rowBytes: 8,
  },
  {
    id: 21,
    name: "int4_2_4",
    ggmlType: -1,
    ggufName: "INT4_2_4",
    blockLen: 128,
    blockBytes: 52,
    rowBytes: 0,
  },
  {
    id: 22,
    name: "q4_0_r16",
    ggmlType: -1,
    ggufName: "Q4_0_R16",
    blockLen: 32,
    blockBytes: 18,
    rowBytes: 0,
  },
] as const satisfies readonly FormatInfo[];

/** One row of {@link FORMATS}, with its literal types. */
export type Format = (typeof FORMATS)[number];
/** A dl_dtype id. */
export type FormatId = (typeof FORMATS)[number]["id"];
/** A lower-case format name: "f32" | "f16" | "bf16". */
export type FormatName = (typeof FORMATS)[number]["name"];
/** A format name as GGUF and safetensors spell it: "F32" | "F16" | "BF16". */
export type GgufName = (typeof FORMATS)[number]["ggufName"];

const BY_NAME = new Map<string, Format>(FORMATS.map((f) => [f.name, f]));
const BY_GGML_TYPE = new Map<number, Format>(
  FORMATS.filter((f) => f.ggmlType >= 0).map((f) => [f.ggmlType, f]),
);
const BY_GGUF_NAME = new Map<string, Format>(FORMATS.map((f) => [f.ggufName, f]));

function listOf(key: keyof FormatInfo): string {
  return FORMATS.map((f) => String(f[key])).join(", ");
}

/** The row of dl_dtype `id`; throws RangeError for an id outside the table. */
export function formatInfo(id: number): Format {
  const info: Format | undefined = Number.isInteger(id) ? FORMATS[id] : undefined;
  if (info === undefined) {
    throw new RangeError(`Expected a format id in [0, ${FORMATS.length}), found ${id}`);
  }
  return info;
}

/** The format of a lower-case name ("f16"), or undefined. */
export function formatByName(name: string): Format | undefined {
  return BY_NAME.get(name);
}

/** The format of a GGUF / ggml type id, or undefined when no kernel format matches. */
export function formatByGgmlType(ggmlType: number): Format | undefined {
  return BY_GGML_TYPE.get(ggmlType);
}

/** The format of a safetensors dtype string ("BF16"), or undefined. */
export function formatBySafetensorsName(name: string): Format | undefined {
  return BY_GGUF_NAME.get(name);
}

/** The format of a GGUF type name ("F16"); GGUF and safetensors spell names alike. */
export function formatByGgufName(name: string): Format | undefined {
  return BY_GGUF_NAME.get(name);
}

/** True when `name` is a format name as GGUF and safetensors spell it. */
export function isGgufName(name: unknown): name is GgufName {
  return typeof name === "string" && BY_GGUF_NAME.has(name);
}

/** Lists the names of one column, for error messages: "F32, F16, BF16". */
export function formatNames(key: "name" | "ggufName" = "ggufName"): string {
  return listOf(key);
}

/**
 * Bytes that `numElements` elements of format `id` take, as `rows` rows (1 unless given: only
 * formats with per-row data, INT8, need it). Throws RangeError when numElements is not a
 * non-negative multiple of the format's block length per row.
 */
export function tensorBytes(id: number, numElements: number, rows = 1): number {
  return formatBytes(formatInfo(id), numElements, rows);
}

/** Bytes of a [rows, cols] matrix of format `id`, per-row data included. */
export function matrixBytes(id: number, rows: number, cols: number): number {
  return formatBytes(formatInfo(id), rows * cols, rows);
}

/** True for the block-quantized formats: every row after BF16. */
export function isQuantized(id: number): boolean {
  return formatInfo(id).id > 2;
}

/** {@link tensorBytes} for a row given whole (any FormatInfo, in the table or not). */
export function formatBytes(info: FormatInfo, numElements: number, rows = 1): number {
  if (!Number.isSafeInteger(numElements) || numElements < 0) {
    throw new RangeError(`Expected a non-negative integer element count, found ${numElements}`);
  }
  if (!Number.isSafeInteger(rows) || rows < 1 || numElements % rows !== 0) {
    throw new RangeError(`Expected ${numElements} elements to split into ${rows} whole rows`);
  }
  const cols = numElements / rows;
  if (cols % info.blockLen !== 0) {
    throw new RangeError(
      `Expected a multiple of the ${info.name} block length ${info.blockLen}, ` +
        `found ${cols} elements${rows > 1 ? " per row" : ""}`,
    );
  }
  return rows * ((cols / info.blockLen) * info.blockBytes + info.rowBytes);
}
