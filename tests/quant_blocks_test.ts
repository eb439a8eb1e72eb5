// dl_dequantize against llama.cpp itself: every GGUF quantized type must expand the blocks of
// tests/fixtures/quant/blocks.json (random bytes with finite scales, and blocks ggml quantized) to
// exactly the floats ggml's dequantize_row_* gave, bit for bit. The fixture comes from
// tools/llamacpp/quant_blocks.ts; this test reads only the committed file.
import assert from "node:assert/strict";
import { formatByGgufName } from "../ffi/formats.ts";
import { type DTypeId, NativeBackend } from "../ffi/native.ts";
import { fromBase64, GGML_QUANT_TYPES } from "../tools/llamacpp/quant_blocks.ts";
import { withDeviceBuffers } from "./device_buffers.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;
const FIXTURE = new URL("./fixtures/quant/blocks.json", import.meta.url);

interface BlocksFixture {
  types: Record<string, { numBlocks: number; blocks: string; floats: string }>;
}

const fixture: BlocksFixture = JSON.parse(await Deno.readTextFile(FIXTURE));
const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
globalThis.addEventListener("unload", () => backend.close());

function dequantize(dtype: DTypeId, blocks: Uint8Array, rows: number, cols: number): Float32Array {
  return withDeviceBuffers(backend, (b) => {
    const src = b.from(blocks);
    const dst = b.zeros(rows * cols * 4);
    backend.dequantize({ dst, src, srcDtype: dtype, rows, cols });
    return b.f32(dst, rows * cols);
  });
}

/** The first element whose bits differ, described, or null when all agree. */
function firstBitDifference(actual: Float32Array, expected: Float32Array): string | null {
  const a = new Uint32Array(actual.buffer), e = new Uint32Array(expected.buffer);
  assert.equal(a.length, e.length);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== e[i]) {
      return `element ${i}: expected ${expected[i]} (0x${e[i].toString(16)}), found ${actual[i]} ` +
        `(0x${a[i].toString(16)})`;
    }
  }
  return null;
}

Deno.test("the fixture covers every GGUF quantized type of the format table", () => {
  assert.deepEqual(Object.keys(fixture.types).sort(), [...GGML_QUANT_TYPES].sort());
});

Deno.test("dl_dequantize reproduces ggml's dequantize_row_* bit for bit", async (t) => {
  for (const type of GGML_QUANT_TYPES) {
    await t.step(type, () => {
      const format = formatByGgufName(type)!;
      const { numBlocks, blocks: b64, floats: f64 } = fixture.types[type];
      const blocks = fromBase64(b64);
      const expected = new Float32Array(fromBase64(f64).buffer);
      assert.equal(blocks.length, numBlocks * format.blockBytes);
      assert.equal(expected.length, numBlocks * format.blockLen);
      // One block per row, and all blocks in one row: both address blocks the same way.
      const perRow = dequantize(format.id as DTypeId, blocks, numBlocks, format.blockLen);
      assert.equal(firstBitDifference(perRow, expected), null, `${type}, one block per row`);
      const oneRow = dequantize(format.id as DTypeId, blocks, 1, numBlocks * format.blockLen);
      assert.equal(firstBitDifference(oneRow, expected), null, `${type}, one row`);
    });
  }
});
