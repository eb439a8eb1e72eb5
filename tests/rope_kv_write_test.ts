// dl_rope_kv_write on the CPU build: the same bits as dl_rope followed by dl_kv_write on odd
// shapes, and a bad slot fails the call before anything is rotated or written, and bad
// arguments fail with what was expected.
import assert from "node:assert/strict";
import { DType, type DTypeId, NativeBackend, NativeError } from "../ffi/native.ts";
import { withDeviceBuffers } from "./device_buffers.ts";
import * as ref from "./kernel_reference.ts";
import { ropeKvCases, ropeKvInputs, ropeKvLabel, runRopeKv } from "./rope_kv_helpers.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;
const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
globalThis.addEventListener("unload", () => backend.close());

function bytes(a: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

Deno.test("rope_kv_write equals rope + kv_write bit for bit: both styles, every cache dtype, odd shapes", () => {
  const rand = ref.mulberry32(141);
  for (const c of ropeKvCases()) {
    const inputs = ropeKvInputs(c, rand);
    const fused = runRopeKv(backend, c, inputs, true);
    const apart = runRopeKv(backend, c, inputs, false);
    const label = ropeKvLabel(c);
    assert.deepEqual(bytes(fused.qkv), bytes(apart.qkv), `${label}: rows`);
    assert.deepEqual(bytes(fused.k), bytes(apart.k), `${label}: K cache`);
    assert.deepEqual(bytes(fused.v), bytes(apart.v), `${label}: V cache`);
    // Not a no-op: the Q and K heads were rotated and some slots written.
    assert.notDeepEqual(bytes(fused.qkv), bytes(inputs.qkv), `${label}: rows unchanged`);
    assert.notDeepEqual(bytes(fused.k), bytes(inputs.cache), `${label}: K cache unchanged`);
  }
});

Deno.test("rope_kv_write: a slot past the cache fails and writes nothing; bad row layout fails", () => {
  const rand = ref.mulberry32(142);
  const c = ropeKvCases()[2];
  const inputs = ropeKvInputs(c, rand);
  inputs.slots[4] = c.numBlocks * c.blockSize;
  withDeviceBuffers(backend, (s) => {
    const qkv = s.from(inputs.qkv), kCache = s.from(inputs.cache), vCache = s.from(inputs.cache);
    assert.throws(
      () =>
        backend.ropeKvWrite({
          ...c,
          cacheDtype: c.cacheDtype as DTypeId,
          qkv,
          positions: s.from(inputs.positions),
          invFreq: s.from(inputs.invFreq),
          kCache,
          vCache,
          slotMapping: s.from(inputs.slots),
        }),
      (error: unknown) =>
        error instanceof NativeError && error.status === 1 &&
        /dl_rope_kv_write: expected slot_mapping\[4\] < num_blocks \* block_size \(35\)/.test(
          error.message,
        ),
    );
    assert.deepEqual(s.f32(qkv, inputs.qkv.length), inputs.qkv, "rows were rotated");
    const elems = inputs.cache.length;
    assert.deepEqual(s.f32(kCache, elems), inputs.cache, "K cache was written");
    assert.deepEqual(s.f32(vCache, elems), inputs.cache, "V cache was written");
  });
  const rows = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  assert.throws(
    () => runRopeKv(backend, { ...c, rowStride: rows - 1 }, inputs, true),
    (error: unknown) =>
      error instanceof NativeError && error.status === 1 &&
      error.message.includes(
        `expected row_stride >= (num_heads + 2 * num_kv_heads) * head_dim (${rows})`,
      ),
  );
  assert.throws(
    () => runRopeKv(backend, { ...c, cacheDtype: DType.Q4_0 as ref.DtypeId }, inputs, true),
    (error: unknown) =>
      error instanceof NativeError && error.status === 3 &&
      /cache_dtype q4_0 \(3\) has no kernel/.test(error.message),
  );
});
