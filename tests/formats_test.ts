// ffi/formats.ts must equal DL_DTYPE_TABLE in ffi/denollm.h row by row, and its helpers must read it.
import assert from "node:assert/strict";
import {
  formatByGgmlType,
  formatByName,
  formatBySafetensorsName,
  formatBytes,
  type FormatInfo,
  formatInfo,
  FORMATS,
  matrixBytes,
  tensorBytes,
} from "../ffi/formats.ts";
import { DType, dtypeSize } from "../ffi/native.ts";
import { HEADER_PATH } from "../ffi/gen_symbols.ts";

/** The rows of the header's DL_DTYPE_TABLE X-macro, in order. */
function parseHeaderTable(header: string): FormatInfo[] {
  const table = header.match(/#define\s+DL_DTYPE_TABLE\(X\)((?:[^\n]*\\\n)*[^\n]*)/);
  if (!table) throw new Error("DL_DTYPE_TABLE is not defined in the header");
  const row =
    /X\(\s*(\w+)\s*,\s*(\d+)\s*,\s*"(\w+)"\s*,\s*(-?\d+)\s*,\s*"(\w+)"\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)/g;
  const rows = [...table[1].matchAll(row)].map((m) => ({
    suffix: m[1],
    info: {
      id: Number(m[2]),
      name: m[3],
      ggmlType: Number(m[4]),
      ggufName: m[5],
      blockLen: Number(m[6]),
      blockBytes: Number(m[7]),
      rowBytes: Number(m[8]),
    },
  }));
  // Every X( of the table must have parsed, so a malformed row cannot slip through.
  assert.equal(rows.length, (table[1].match(/X\(/g) ?? []).length, "unparsed table rows");
  for (const { suffix, info } of rows) {
    assert.equal(suffix, info.ggufName, `enum suffix of ${info.name}`);
  }
  return rows.map((r) => r.info);
}

Deno.test("ffi/formats.ts equals the header's DL_DTYPE_TABLE row by row", () => {
  const fromHeader = parseHeaderTable(Deno.readTextFileSync(HEADER_PATH));
  assert.ok(fromHeader.length >= 3);
  assert.equal(FORMATS.length, fromHeader.length);
  fromHeader.forEach((row, i) => assert.deepEqual({ ...FORMATS[i] }, row, `row ${i}`));
  FORMATS.forEach((row, i) => assert.equal(row.id, i, "ids are dense, in table order"));
});

Deno.test("DType mirrors the table's ids by GGUF name", () => {
  assert.deepEqual({ ...DType }, Object.fromEntries(FORMATS.map((f) => [f.ggufName, f.id])));
  assert.equal(DType.F32, 0);
  assert.equal(DType.BF16, 2);
  assert.equal(dtypeSize(DType.F32), 4);
  assert.equal(dtypeSize(DType.F16), 2);
});

Deno.test("format lookups by id, name, ggml type and safetensors name", () => {
  assert.equal(formatInfo(1).name, "f16");
  assert.throws(() => formatInfo(FORMATS.length), RangeError);
  assert.throws(() => formatInfo(-1), RangeError);
  assert.throws(() => formatInfo(0.5), RangeError);
  assert.equal(formatByName("bf16")?.id, DType.BF16);
  assert.equal(formatByName("BF16"), undefined);
  assert.equal(formatByGgmlType(30)?.name, "bf16");
  assert.equal(formatByGgmlType(0)?.name, "f32");
  assert.equal(formatByGgmlType(2)?.name, "q4_0");
  assert.equal(formatByGgmlType(9), undefined); // Q8_1: an activation type, not a weight format
  assert.equal(formatByGgmlType(-1), undefined); // denollm's own formats have no GGUF type
  assert.equal(formatBySafetensorsName("F16")?.id, DType.F16);
  assert.equal(formatBySafetensorsName("I8"), undefined);
});

Deno.test("tensorBytes counts whole blocks and rejects partial ones", () => {
  assert.equal(tensorBytes(DType.F32, 10), 40);
  assert.equal(tensorBytes(DType.F16, 10), 20);
  assert.equal(tensorBytes(DType.BF16, 0), 0);
  assert.throws(() => tensorBytes(DType.F32, -1), RangeError);
  assert.throws(() => tensorBytes(DType.F32, 1.5), RangeError);
  assert.throws(() => tensorBytes(DType.Q8_0, 4), RangeError);
  assert.equal(tensorBytes(DType.Q8_0, 64), 68);
  assert.equal(tensorBytes(DType.Q4_K, 512), 288);
  // INT8 stores one f32 scale per row after the rows.
  assert.equal(matrixBytes(DType.INT8, 3, 10), 3 * 10 + 3 * 4);
  assert.equal(matrixBytes(DType.INT4, 2, 256), 2 * 2 * 68);
  assert.throws(() => matrixBytes(DType.INT4, 2, 100), /multiple of the int4 block length 128/);
  // A blocked format (as a future quantized row would be) counts blocks, not elements.
  const blocked = {
    id: 99,
    name: "q",
    ggmlType: 99,
    ggufName: "Q",
    blockLen: 32,
    blockBytes: 18,
    rowBytes: 0,
  };
  assert.equal(formatBytes(blocked, 64), 36);
  assert.throws(() => formatBytes(blocked, 48), /multiple of the q block length 32, found 48/);
});
