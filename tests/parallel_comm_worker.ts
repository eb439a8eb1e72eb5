// One rank of tests/parallel_comm_test.ts: joins the group, runs every dl_comm_* collective on
// integer-valued data (so any summation order is exact) and posts what it got.
/// <reference lib="deno.worker" />
import { CommLibrary, Communicator } from "../src/parallel/comm.ts";

self.onmessage = (event: MessageEvent) => {
  const { libraryPath, rank, size, port, count } = event.data;
  const lib = new CommLibrary(libraryPath);
  const ptr = (a: Float32Array | Uint8Array) =>
    Deno.UnsafePointer.of(a as Uint8Array<ArrayBuffer>)!;
  const comm = new Communicator(lib, {
    rank,
    worldSize: size,
    storeHost: "127.0.0.1",
    storePort: port,
    prefix: "test",
    bindHost: "127.0.0.1",
    timeoutMs: 20_000,
  });
  const mine = (i: number) => (rank + 1) * 10 + (i % 7);
  const reduced = Float32Array.from({ length: count }, (_, i) => mine(i));
  comm.allReduce(ptr(reduced), count);
  const gathered = new Float32Array(count * size);
  comm.allGather(
    ptr(Float32Array.from({ length: count }, (_, i) => mine(i))),
    ptr(gathered),
    count,
  );
  const scatterIn = Float32Array.from({ length: count * size }, (_, i) => mine(i) + i);
  const scattered = new Float32Array(count);
  comm.reduceScatter(ptr(scatterIn), ptr(scattered), count);
  const bytes = rank === 1
    ? Uint8Array.from({ length: 333 }, (_, i) => i % 251)
    : new Uint8Array(333);
  comm.broadcast(ptr(bytes), bytes.length, 1);
  // A ring of sends: rank r sends to r + 1 and receives from r - 1 (even ranks send first).
  const out = Float32Array.from({ length: count }, (_, i) => rank * 1000 + i);
  const got = new Float32Array(count);
  const [to, from] = [(rank + 1) % size, (rank + size - 1) % size];
  if (rank % 2 === 0) {
    comm.send(ptr(out), out.byteLength, to, 7);
    comm.recv(ptr(got), got.byteLength, from, 7);
  } else {
    comm.recv(ptr(got), got.byteLength, from, 7);
    comm.send(ptr(out), out.byteLength, to, 7);
  }
  comm.destroy();
  lib.close();
  self.postMessage({ reduced, gathered, scattered, bytes, got });
};
