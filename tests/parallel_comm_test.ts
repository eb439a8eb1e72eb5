// The dl_comm_* ABI against plain references: three ranks (workers of this process, over Gloo's
// TCP transport) on an odd element count, rank 0's rendezvous store, and the clear errors for bad
// arguments and a missing Gloo plugin.
import assert from "node:assert/strict";
import { defaultLibraryPath, NativeError } from "../ffi/native.ts";
import { CommLibrary, Communicator, ControlStore, StoreClient } from "../src/parallel/comm.ts";

const LIBRARY = defaultLibraryPath("cpu");
const COUNT = 1001;
const SIZE = 3;

Deno.test("dl_comm collectives equal their references on 3 ranks", async () => {
  const lib = new CommLibrary(LIBRARY);
  const store = new ControlStore(lib, "127.0.0.1", 0);
  try {
    const results = await Promise.all(
      Array.from({ length: SIZE }, (_, rank) => {
        const worker = new Worker(new URL("./parallel_comm_worker.ts", import.meta.url), {
          type: "module",
        });
        const done = new Promise<Record<string, Float32Array | Uint8Array>>((resolve, reject) => {
          worker.onmessage = (e) => resolve(e.data);
          worker.onerror = (e) => reject(e.error ?? new Error(e.message));
        });
        worker.postMessage({
          libraryPath: LIBRARY,
          rank,
          size: SIZE,
          port: store.port,
          count: COUNT,
        });
        return done.finally(() => worker.terminate());
      }),
    );
    const value = (r: number, i: number) => (r + 1) * 10 + (i % 7);
    for (let rank = 0; rank < SIZE; rank++) {
      const got = results[rank];
      const sum = Float32Array.from({ length: COUNT }, (_, i) => {
        let s = 0;
        for (let r = 0; r < SIZE; r++) s += value(r, i);
        return s;
      });
      assert.deepEqual(got.reduced, sum, `all-reduce on rank ${rank}`);
      const gathered = Float32Array.from(
        { length: COUNT * SIZE },
        (_, j) => value(Math.floor(j / COUNT), j % COUNT),
      );
      assert.deepEqual(got.gathered, gathered, `all-gather on rank ${rank}`);
      const scattered = Float32Array.from({ length: COUNT }, (_, i) => {
        const j = rank * COUNT + i;
        let s = 0;
        for (let r = 0; r < SIZE; r++) s += value(r, j) + j;
        return s;
      });
      assert.deepEqual(got.scattered, scattered, `reduce-scatter on rank ${rank}`);
      assert.deepEqual(got.bytes, Uint8Array.from({ length: 333 }, (_, i) => i % 251));
      const from = (rank + SIZE - 1) % SIZE;
      assert.deepEqual(got.got, Float32Array.from({ length: COUNT }, (_, i) => from * 1000 + i));
    }
  } finally {
    store.stop();
    lib.close();
  }
});

Deno.test("the control store answers gets once a key is set, and times out", async () => {
  const lib = new CommLibrary(LIBRARY);
  const store = new ControlStore(lib, "127.0.0.1", 0);
  const a = await StoreClient.connect("127.0.0.1", store.port, 2000);
  const b = await StoreClient.connect("127.0.0.1", store.port, 2000);
  try {
    const pending = b.get("k", 5000);
    await a.set("k", new TextEncoder().encode("value"));
    assert.equal(new TextDecoder().decode(await pending), "value");
    await assert.rejects(a.get("never", 200), /did not publish never within 200 ms/);
  } finally {
    a.close();
    b.close();
    store.stop();
    lib.close();
  }
});

Deno.test("dl_comm refuses bad arguments with messages that name them", () => {
  const lib = new CommLibrary(LIBRARY);
  try {
    assert.throws(
      () => new ControlStore(lib, "127.0.0.1", 70000),
      /expected a port in \[0, 65535\]/,
    );
    const init = {
      storeHost: "127.0.0.1",
      storePort: 1,
      prefix: "x",
      bindHost: "127.0.0.1",
      timeoutMs: 100,
    };
    assert.throws(
      () => new Communicator(lib, { ...init, rank: 2, worldSize: 2 }),
      /expected 0 <= rank < world_size, found rank 2 of 2/,
    );
    // Nothing listens on port 1: the join fails within its timeout, with the reason.
    assert.throws(
      () => new Communicator(lib, { ...init, rank: 0, worldSize: 2 }),
      (e: unknown) => e instanceof NativeError && /cannot reach the control store/.test(e.message),
    );
  } finally {
    lib.close();
  }
});

Deno.test("without the Gloo plugin dl_comm_init says what to install", async () => {
  const code = `
    import { CommLibrary, Communicator } from ${
    JSON.stringify(new URL("../src/parallel/comm.ts", import.meta.url).href)
  };
    const lib = new CommLibrary(${JSON.stringify(LIBRARY)});
    try {
      new Communicator(lib, { rank: 0, worldSize: 1, storeHost: "127.0.0.1", storePort: 1,
        prefix: "x", bindHost: "127.0.0.1", timeoutMs: 100 });
    } catch (e) { console.log(e.message); }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { DENOLLM_COMM_LIBRARY: "/nonexistent/libdenollm_comm_gloo.so" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.match(text, /DL_ERR_UNSUPPORTED/);
  assert.match(text, /cannot open the Gloo collectives \/nonexistent\/libdenollm_comm_gloo\.so/);
  assert.match(text, /apt-get install libgloo-dev/);
});
