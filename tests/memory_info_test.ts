// dl_memory_info and dl_host_alloc / dl_host_free on the CPU build: the host's memory as /proc
// and the cgroup report it, staging blocks that hold what is written, and clear errors for bad
// arguments (through the raw symbols too, where the TypeScript wrapper would never pass them).
import assert from "node:assert/strict";
import { defaultLibraryPath, NativeBackend, NativeError } from "../ffi/native.ts";
import { symbols } from "../ffi/symbols.gen.ts";

const INVALID_ARGUMENT = 1;

/** A "Name:  123 kB" line of /proc/meminfo in bytes, or undefined without /proc. */
function meminfo(name: string): number | undefined {
  try {
    const line = Deno.readTextFileSync("/proc/meminfo").split("\n").find((l) =>
      l.startsWith(`${name}:`)
    );
    return line === undefined ? undefined : Number(/(\d+) kB/.exec(line)![1]) * 1024;
  } catch {
    return undefined;
  }
}

function cgroupLimit(): number | undefined {
  try {
    const text = Deno.readTextFileSync("/sys/fs/cgroup/memory.max").trim();
    return /^\d+$/.test(text) ? Number(text) : undefined;
  } catch {
    return undefined;
  }
}

Deno.test("memory info on the CPU build: the host's memory, 0 < free <= total", () => {
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    const info = backend.memoryInfo();
    assert.ok(info.freeBytes > 0, `free ${info.freeBytes}`);
    assert.ok(info.freeBytes <= info.totalBytes, `free ${info.freeBytes} > ${info.totalBytes}`);
    const memTotal = meminfo("MemTotal");
    if (memTotal !== undefined) {
      const limit = cgroupLimit();
      assert.equal(info.totalBytes, limit !== undefined && limit < memTotal ? limit : memTotal);
    }
    // Another reading moves only as the host's use does: the total never.
    assert.equal(backend.memoryInfo().totalBytes, info.totalBytes);
  } finally {
    backend.close();
  }
});

Deno.test("host staging memory: zeroed, holds what is written, freed, bad arguments fail", () => {
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    for (const size of [1, 63, 4097]) {
      const block = backend.hostAlloc(size);
      const view = new Uint8Array(block.buffer);
      assert.equal(view.length, size);
      assert.equal(Number(Deno.UnsafePointer.value(block.ptr)) % 64, 0, "64-byte aligned");
      assert.ok(view.every((b) => b === 0), "zero-filled");
      for (let i = 0; i < size; i++) view[i] = (i * 7 + size) & 0xff;
      // Through device memory and back: what the workspace does with its staging blocks.
      const device = backend.alloc(size);
      backend.upload(device, view);
      const back = backend.hostAlloc(size);
      backend.download(new Uint8Array(back.buffer), device);
      assert.deepEqual(new Uint8Array(back.buffer), view);
      backend.free(device);
      backend.hostFree(back.ptr);
      backend.hostFree(block.ptr);
    }
    backend.hostFree(null); // like free(NULL)

    assert.throws(() => backend.hostAlloc(0), RangeError);
    assert.throws(() => backend.hostAlloc(1.5), RangeError);
    const device = backend.alloc(16);
    assert.throws(
      () => backend.hostFree(device),
      (e) =>
        e instanceof NativeError && e.status === INVALID_ARGUMENT &&
        /not allocated by dl_host_alloc/.test(e.message),
    );
    backend.free(device); // still a good dl_alloc block after the refused dl_host_free
    const host = backend.hostAlloc(16);
    assert.throws(
      () => backend.free(host.ptr),
      (e) => e instanceof NativeError && /free it with dl_host_free/.test(e.message),
    );
    backend.hostFree(host.ptr);
  } finally {
    backend.close();
  }
});

Deno.test("memory info and host alloc refuse NULL pointers and size 0 at the ABI", () => {
  const lib = Deno.dlopen(defaultLibraryPath("cpu"), symbols);
  try {
    const out = new BigUint64Array(2);
    const at = (i: number) => Deno.UnsafePointer.of(out.subarray(i, i + 1));
    assert.equal(lib.symbols.dl_context_create(0, 1, at(0)), 0);
    const ctx = Deno.UnsafePointer.create(out[0]);
    const lastError = () => Deno.UnsafePointerView.getCString(lib.symbols.dl_last_error()!);
    assert.equal(lib.symbols.dl_memory_info(null, at(0), at(1)), INVALID_ARGUMENT);
    assert.equal(lib.symbols.dl_memory_info(ctx, null, at(1)), INVALID_ARGUMENT);
    assert.match(lastError(), /dl_memory_info.*free_bytes/);
    assert.equal(lib.symbols.dl_memory_info(ctx, at(0), null), INVALID_ARGUMENT);
    assert.match(lastError(), /dl_memory_info.*total_bytes/);
    assert.equal(lib.symbols.dl_host_alloc(ctx, 8n, null), INVALID_ARGUMENT);
    out[0] = 1n;
    assert.equal(lib.symbols.dl_host_alloc(ctx, 0n, at(0)), INVALID_ARGUMENT);
    assert.match(lastError(), /dl_host_alloc: size_bytes must be positive/);
    assert.equal(out[0], 0n, "*out is NULL after a failure");
    assert.equal(lib.symbols.dl_host_alloc(ctx, 2n ** 64n - 1n, at(0)), 2); // DL_ERR_OUT_OF_MEMORY
    assert.equal(lib.symbols.dl_host_free(null, null), INVALID_ARGUMENT);
    assert.equal(lib.symbols.dl_context_destroy(ctx), 0);
  } finally {
    lib.close();
  }
});
