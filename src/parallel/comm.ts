// The dl_comm_* calls of ffi/denollm.h as TypeScript: a rank's communicators (Gloo on the CPU
// build, NCCL on CUDA) and rank 0's rendezvous store. Opens the backend's library a second time
// with only these symbols (the same table, generated from the header), so ffi/native.ts stays
// as it is; dlopen hands back the same loaded library, so dl_last_error is the same.
import { type DevicePtr, NativeError } from "../../ffi/native.ts";
import { symbols } from "../../ffi/symbols.gen.ts";

const COMM_SYMBOLS = {
  dl_last_error: symbols.dl_last_error,
  dl_status_string: symbols.dl_status_string,
  dl_comm_store_start: symbols.dl_comm_store_start,
  dl_comm_store_stop: symbols.dl_comm_store_stop,
  dl_comm_init: symbols.dl_comm_init,
  dl_comm_destroy: symbols.dl_comm_destroy,
  dl_comm_all_reduce: symbols.dl_comm_all_reduce,
  dl_comm_all_gather: symbols.dl_comm_all_gather,
  dl_comm_reduce_scatter: symbols.dl_comm_reduce_scatter,
  dl_comm_broadcast: symbols.dl_comm_broadcast,
  dl_comm_send: symbols.dl_comm_send,
  dl_comm_recv: symbols.dl_comm_recv,
} as const;

type CommLib = Deno.DynamicLibrary<typeof COMM_SYMBOLS>["symbols"];

function cString(ptr: Deno.PointerValue): string {
  return ptr === null ? "" : new Deno.UnsafePointerView(ptr).getCString();
}

function cBytes(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(`${s}\0`) as Uint8Array<ArrayBuffer>;
}

/** The comm functions of one native library. */
export class CommLibrary {
  readonly #dylib: Deno.DynamicLibrary<typeof COMM_SYMBOLS>;
  readonly lib: CommLib;

  constructor(libraryPath: string) {
    this.#dylib = Deno.dlopen(libraryPath, COMM_SYMBOLS);
    this.lib = this.#dylib.symbols;
  }

  check(fn: string, status: number): void {
    if (status !== 0) {
      throw new NativeError(
        fn,
        status,
        cString(this.lib.dl_status_string(status)),
        cString(this.lib.dl_last_error()),
      );
    }
  }

  close(): void {
    this.#dylib.close();
  }
}

/** Rank 0's rendezvous store, served by a native thread (so it answers while JS is blocked). */
export class ControlStore {
  readonly port: number;
  #comm: CommLibrary;
  #handle: Deno.PointerValue;

  constructor(comm: CommLibrary, host: string, port: number) {
    const out = new BigUint64Array(1);
    const bound = new Int32Array(1);
    comm.check(
      "dl_comm_store_start",
      comm.lib.dl_comm_store_start(
        Deno.UnsafePointer.of(cBytes(host)),
        port,
        Deno.UnsafePointer.of(bound),
        Deno.UnsafePointer.of(out),
      ),
    );
    this.#comm = comm;
    this.#handle = Deno.UnsafePointer.create(out[0]);
    this.port = bound[0];
  }

  stop(): void {
    if (this.#handle === null) return;
    this.#comm.check("dl_comm_store_stop", this.#comm.lib.dl_comm_store_stop(this.#handle));
    this.#handle = null;
  }
}

export interface CommInit {
  rank: number;
  worldSize: number;
  storeHost: string;
  storePort: number;
  /** The group's name in the store. */
  prefix: string;
  bindHost: string;
  timeoutMs: number;
}

/** Bytes moved and time spent in collectives, for the cost bench. */
export interface CommCounters {
  numCalls: number;
  bytes: number;
  ms: number;
}

/** One group of ranks; every call blocks until the group has done its part (or fails). */
export class Communicator {
  readonly rank: number;
  readonly size: number;
  readonly counters: CommCounters = { numCalls: 0, bytes: 0, ms: 0 };
  #comm: CommLibrary;
  #handle: Deno.PointerValue;

  constructor(comm: CommLibrary, init: CommInit) {
    const out = new BigUint64Array(1);
    comm.check(
      "dl_comm_init",
      comm.lib.dl_comm_init(
        init.rank,
        init.worldSize,
        Deno.UnsafePointer.of(cBytes(init.storeHost)),
        init.storePort,
        Deno.UnsafePointer.of(cBytes(init.prefix)),
        Deno.UnsafePointer.of(cBytes(init.bindHost)),
        init.timeoutMs,
        Deno.UnsafePointer.of(out),
      ),
    );
    this.#comm = comm;
    this.#handle = Deno.UnsafePointer.create(out[0]);
    this.rank = init.rank;
    this.size = init.worldSize;
  }

  #timed(fn: string, bytes: number, call: () => number): void {
    const started = performance.now();
    this.#comm.check(fn, call());
    this.counters.numCalls++;
    this.counters.bytes += bytes;
    this.counters.ms += performance.now() - started;
  }

  /** buf[count] = the sum over ranks, in place. */
  allReduce(buf: DevicePtr, count: number): void {
    this.#timed(
      "dl_comm_all_reduce",
      count * 4,
      () => this.#comm.lib.dl_comm_all_reduce(this.#handle, buf, BigInt(count)),
    );
  }

  /** recv[size, count] = every rank's send[count]. */
  allGather(send: DevicePtr, recv: DevicePtr, count: number): void {
    this.#timed(
      "dl_comm_all_gather",
      count * 4 * this.size,
      () => this.#comm.lib.dl_comm_all_gather(this.#handle, send, recv, BigInt(count)),
    );
  }

  /** recv[count] = the sum over ranks of their send[rank]. */
  reduceScatter(send: DevicePtr, recv: DevicePtr, count: number): void {
    this.#timed(
      "dl_comm_reduce_scatter",
      count * 4 * this.size,
      () => this.#comm.lib.dl_comm_reduce_scatter(this.#handle, send, recv, BigInt(count)),
    );
  }

  /** Root's bytes to every rank; timeoutMs 0 uses the group's timeout. */
  broadcast(buf: DevicePtr, numBytes: number, root: number, timeoutMs = 0): void {
    this.#timed(
      "dl_comm_broadcast",
      numBytes,
      () => this.#comm.lib.dl_comm_broadcast(this.#handle, buf, BigInt(numBytes), root, timeoutMs),
    );
  }

  send(buf: DevicePtr, numBytes: number, peer: number, tag: number): void {
    this.#timed(
      "dl_comm_send",
      numBytes,
      () => this.#comm.lib.dl_comm_send(this.#handle, buf, BigInt(numBytes), peer, tag),
    );
  }

  recv(buf: DevicePtr, numBytes: number, peer: number, tag: number): void {
    this.#timed(
      "dl_comm_recv",
      numBytes,
      () => this.#comm.lib.dl_comm_recv(this.#handle, buf, BigInt(numBytes), peer, tag),
    );
  }

  destroy(): void {
    if (this.#handle === null) return;
    this.#comm.check("dl_comm_destroy", this.#comm.lib.dl_comm_destroy(this.#handle));
    this.#handle = null;
  }
}

/**
 * A TypeScript client of the control store, for what ranks exchange besides the native
 * rendezvous (the engine configuration rank 0 publishes). Same wire format as native/dl_store.h.
 */
export class StoreClient {
  #conn: Deno.TcpConn;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  /** Connects, retrying until timeoutMs: rank 0 may not listen yet. */
  static async connect(host: string, port: number, timeoutMs: number): Promise<StoreClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return new StoreClient(await Deno.connect({ hostname: host, port }));
      } catch (error) {
        if (Date.now() >= deadline) {
          throw new Error(
            `Cannot reach rank 0's control store at ${host}:${port} within ${timeoutMs} ms: ` +
              (error as Error).message,
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  async set(key: string, value: Uint8Array): Promise<void> {
    const k = new TextEncoder().encode(key);
    const msg = new Uint8Array(1 + 4 + k.length + 4 + value.length);
    const view = new DataView(msg.buffer);
    msg[0] = "S".charCodeAt(0);
    view.setUint32(1, k.length, true);
    msg.set(k, 5);
    view.setUint32(5 + k.length, value.length, true);
    msg.set(value, 9 + k.length);
    await this.#writeAll(msg);
    const ack = await this.#readExactly(1);
    if (ack[0] !== "K".charCodeAt(0)) throw new Error(`The control store refused key ${key}`);
  }

  /** The key's value once some rank has set it; fails after timeoutMs. */
  async get(key: string, timeoutMs: number): Promise<Uint8Array> {
    const k = new TextEncoder().encode(key);
    const msg = new Uint8Array(5 + k.length);
    msg[0] = "G".charCodeAt(0);
    new DataView(msg.buffer).setUint32(1, k.length, true);
    msg.set(k, 5);
    await this.#writeAll(msg);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`Rank 0 did not publish ${key} within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      const header = await Promise.race([this.#readExactly(4), timeout]);
      const length = new DataView(header.buffer).getUint32(0, true);
      return await Promise.race([this.#readExactly(length), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // already closed by the peer
    }
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    for (let done = 0; done < bytes.length;) done += await this.#conn.write(bytes.subarray(done));
  }

  async #readExactly(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    for (let done = 0; done < n;) {
      const got = await this.#conn.read(out.subarray(done));
      if (got === null) throw new Error("Rank 0's control store closed the connection");
      done += got;
    }
    return out;
  }
}
