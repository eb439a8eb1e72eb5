// On a GPU host: NCCL, opened by the CUDA build at run time, initialises a group of one rank
// through the rendezvous store, and an all-reduce, an all-gather and a broadcast round-trip device
// memory through the ABI. Ignored where there is no CUDA library or no libnccl.so.2 (said why).
import assert from "node:assert/strict";
import { defaultLibraryPath, NativeBackend } from "../ffi/native.ts";
import { CommLibrary, Communicator, ControlStore } from "../src/parallel/comm.ts";

function whyNoNccl(): string | null {
  const path = defaultLibraryPath("cuda");
  try {
    Deno.statSync(path);
  } catch {
    return `no CUDA library at ${path}`;
  }
  try {
    Deno.dlopen(Deno.env.get("DENOLLM_NCCL_LIBRARY") ?? "libnccl.so.2", {}).close();
  } catch (error) {
    return `libnccl.so.2 does not load: ${(error as Error).message}`;
  }
  return null;
}

const reason = whyNoNccl();
if (reason !== null) console.error(`NCCL test ignored: ${reason}`);

Deno.test({
  name: "NCCL: one rank joins and collectives round-trip through dl_comm_*",
  ignore: reason !== null,
  fn() {
    const backend = NativeBackend.open({ backend: "cuda" });
    const lib = new CommLibrary(backend.libraryPath);
    const store = new ControlStore(lib, "127.0.0.1", 0);
    const comm = new Communicator(lib, {
      rank: 0,
      worldSize: 1,
      storeHost: "127.0.0.1",
      storePort: store.port,
      prefix: "nccl-test",
      bindHost: "127.0.0.1",
      timeoutMs: 30_000,
    });
    const count = 1001;
    const host = Float32Array.from({ length: count }, (_, i) => i - 500.5);
    const a = backend.alloc(host.byteLength);
    const b = backend.alloc(host.byteLength);
    try {
      backend.upload(a, host);
      comm.allReduce(a, count); // one rank: the sum is the value itself
      comm.allGather(a, b, count);
      comm.broadcast(b, host.byteLength, 0);
      const back = new Float32Array(count);
      backend.download(back, b);
      assert.deepEqual(back, host);
    } finally {
      backend.free(a);
      backend.free(b);
      comm.destroy();
      store.stop();
      lib.close();
      backend.close();
    }
  },
});
