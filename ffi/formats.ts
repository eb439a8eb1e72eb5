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
}

/** Every format, in dl_dtype id order. Adding one is a row here and in the header. */
export const FORMATS = [
  { id: 0, name: "f32", ggmlType: 0, ggufName: "F32", blockLen: 1, blockBytes: 4 },
  { id: 1, name: "f16", ggmlType: 1, ggufName: "F16", blockLen: 1, blockBytes: 2 },
  { id: 2, name: "bf16", ggmlType: 30, ggufName: "BF16", blockLen: 1, blockBytes: 2 },
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
const BY_GGML_TYPE = new Map<number, Format>(FORMATS.map((f) => [f.ggmlType, f]));
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
 * Bytes that `numElements` elements of format `id` take. Throws RangeError when numElements is
 * not a non-negative multiple of the format's block length.
 */
export function tensorBytes(id: number, numElements: number): number {
  return formatBytes(formatInfo(id), numElements);
}

/** {@link tensorBytes} for a row given whole (any FormatInfo, in the table or not). */
export function formatBytes(info: FormatInfo, numElements: number): number {
  if (!Number.isSafeInteger(numElements) || numElements < 0) {
    throw new RangeError(`Expected a non-negative integer element count, found ${numElements}`);
  }
  if (numElements % info.blockLen !== 0) {
    throw new RangeError(
      `Expected a multiple of the ${info.name} block length ${info.blockLen}, ` +
        `found ${numElements} elements`,
    );
  }
  return (numElements / info.blockLen) * info.blockBytes;
}
