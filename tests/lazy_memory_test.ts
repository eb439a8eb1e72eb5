// Device memory on the CPU build: large blocks are zero-filled lazily (anonymous mappings), so a big
// KV cache costs resident memory only as it is written, and small blocks still come back zeroed.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";

/** This process's resident set in bytes. */
function residentBytes(): number {
  return Deno.memoryUsage().rss;
}

const MiB = 1 << 20;

Deno.test({
  name: "a large dl_alloc block is zero and becomes resident only as it is touched",
  ignore: Deno.build.os !== "linux",
  fn() {
    const backend = NativeBackend.open({ numThreads: 1 });
    try {
      const size = 256 * MiB;
      const before = residentBytes();
      const ptr = backend.alloc(size);
      const afterAlloc = residentBytes();
      assert.ok(
        afterAlloc - before < 32 * MiB,
        `allocating 256 MiB made ${((afterAlloc - before) / MiB).toFixed(1)} MiB resident`,
      );
      const view = backend.hostView(ptr, size)!;
      for (const at of [0, 1, size / 2, size - 1]) assert.equal(view[at], 0);
      view.fill(1);
      const afterTouch = residentBytes();
      assert.ok(
        afterTouch - before > 200 * MiB,
        `writing 256 MiB made only ${((afterTouch - before) / MiB).toFixed(1)} MiB resident`,
      );
      backend.free(ptr);
      // A fresh block after a free is zero again, small and large alike.
      for (const n of [100, 4 * MiB]) {
        const p = backend.alloc(n);
        const v = backend.hostView(p, n)!;
        assert.ok(v.every((b) => b === 0), `a fresh ${n}-byte block is zero`);
        v.fill(7);
        backend.free(p);
      }
    } finally {
      backend.close();
    }
  },
});
