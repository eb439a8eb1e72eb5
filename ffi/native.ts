// Loads a denollm native library (CPU or CUDA build), checks its ABI version, and wraps its calls.
import { type FormatId, FORMATS, tensorBytes } from "./formats.ts";
import { ABI_VERSION, symbols } from "./symbols.gen.ts";

type Library = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** A non-null pointer to device memory (host memory in the CPU build). */
export type DevicePtr = Deno.PointerObject;

/**
 * Storage formats the ABI understands, keyed by their GGUF spelling; values equal the C enum
 * dl_dtype. Built from the one table in ffi/formats.ts.
 */
export const DType = Object.fromEntries(FORMATS.map((f) => [f.ggufName, f.id])) as {
  readonly [F in (typeof FORMATS)[number] as F["ggufName"]]: F["id"];
};
export type DTypeId = FormatId;

/** RoPE pairings; values equal the C enum dl_rope_style. */
export const RopeStyle = { NEOX: 0, INTERLEAVED: 1 } as const;
export type RopeStyleId = (typeof RopeStyle)[keyof typeof RopeStyle];

/**
 * Bytes per element of a plain (unblocked) format; blocked formats throw RangeError. Prefer
 * tensorBytes(id, numElements) from ffi/formats.ts, which handles both.
 */
export function dtypeSize(dtype: DTypeId): number {
  return tensorBytes(dtype, 1);
}

/** A failed native call: the status name plus the library's own message. */
export class NativeError extends Error {
  readonly status: number;
  constructor(fn: string, status: number, statusName: string, detail: string) {
    super(`${fn} failed with ${statusName}${detail ? `: ${detail}` : ""}`);
    this.name = "NativeError";
    this.status = status;
  }
}

/** Raised when the library cannot be opened or speaks another ABI version. */
export class LibraryLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LibraryLoadError";
  }
}

/** Where `deno task build` puts each backend's library. */
export function defaultLibraryPath(backend: "cpu" | "cuda"): string {
  const ext = Deno.build.os === "darwin" ? "dylib" : Deno.build.os === "windows" ? "dll" : "so";
  return new URL(`../build/libdenollm_${backend}.${ext}`, import.meta.url).pathname;
}

/**
 * Opens a library file. A `deno compile` binary serves included files from a virtual file system
 * that dlopen cannot read, so on failure the bytes are copied to a real temporary file first.
 */
function dlopenAnywhere(path: string): Deno.DynamicLibrary<typeof symbols> {
  try {
    return Deno.dlopen(path, symbols);
  } catch (first) {
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(path);
    } catch {
      throw new LibraryLoadError(
        `Cannot open native library ${path}: ${(first as Error).message}. ` +
          "Run `deno task build` first, or pass the library path.",
      );
    }
    const copy = Deno.makeTempFileSync({ prefix: "denollm-", suffix: ".so" });
    Deno.writeFileSync(copy, bytes);
    try {
      return Deno.dlopen(copy, symbols);
    } finally {
      // The mapping stays valid after unlink on POSIX systems.
      if (Deno.build.os !== "windows") Deno.removeSync(copy);
    }
  }
}

function cString(ptr: Deno.PointerValue): string {
  return ptr === null ? "" : Deno.UnsafePointerView.getCString(ptr);
}

/** Options for opening a backend. */
export interface OpenBackendOptions {
  /** Which build to load (default "cpu"). */
  backend?: "cpu" | "cuda";
  /** Explicit library path; defaults to build/libdenollm_<backend>.so. */
  libraryPath?: string;
  /** CUDA device ordinal (ignored by the CPU build). */
  device?: number;
  /** CPU threads for kernels; 0 means all cores. */
  numThreads?: number;
}

/** Kernel argument objects mirror the header's parameters, in camelCase. */
export interface MatmulArgs {
  out: DevicePtr;
  x: DevicePtr;
  w: DevicePtr;
  wDtype: DTypeId;
  bias?: DevicePtr | null;
  m: number;
  n: number;
  k: number;
  /** Floats between consecutive rows of out (>= n; default n). */
  outRowStride?: number;
}

/** dl_quantize's arguments: src is [rows, cols] f32, dst that matrix in dstDtype's layout. */
export interface QuantizeArgs {
  dst: DevicePtr;
  dstDtype: DTypeId;
  src: DevicePtr;
  rows: number;
  cols: number;
  /** [cols] f32 weights of each column's squared error (ggml's imatrix idea); default all alike. */
  importance?: DevicePtr | null;
}

/** dl_dequantize's arguments: src is [rows, cols] in srcDtype's layout, dst [rows, cols] f32. */
export interface DequantizeArgs {
  dst: DevicePtr;
  src: DevicePtr;
  srcDtype: DTypeId;
  rows: number;
  cols: number;
}

/** A matrix rearranged into another layout of the same values (dl_repack: Q4_0 and Q4_0_R16). */
export interface RepackArgs {
  dst: DevicePtr;
  dstDtype: DTypeId;
  src: DevicePtr;
  srcDtype: DTypeId;
  rows: number;
  cols: number;
}

/** The largest step the engine will run, for {@link NativeBackend.reserveWorkspace}. */
export interface WorkspaceShape {
  maxNumTokens: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  maxBlocksPerSeq: number;
  /** The largest k of any matmul (scratch for quantizing its activation rows); 0 if none. */
  maxMatmulK: number;
}

/** A context's memory counters (dl_memory_stats). */
export interface MemoryStats {
  /** Device allocations: every alloc plus every workspace growth. */
  numAllocs: number;
  /** Frees: every free of a non-null pointer plus every old workspace given back on growth. */
  numFrees: number;
  /** Bytes of kernel workspace held now. */
  workspaceBytes: number;
  /** Workspace growths (each also counted in numAllocs). */
  numWorkspaceGrowths: number;
}

/** The device's memory now (dl_memory_info): the CPU build reports the host's. */
export interface MemoryInfo {
  /** Bytes nobody holds now (other processes and this one's context counted as holding). */
  freeBytes: number;
  totalBytes: number;
}

export interface RopeArgs {
  x: DevicePtr;
  positions: DevicePtr;
  invFreq: DevicePtr;
  numTokens: number;
  numHeads: number;
  headDim: number;
  rotaryDim: number;
  rowStride: number;
  style: RopeStyleId;
}

export interface KvWriteArgs {
  kCache: DevicePtr;
  vCache: DevicePtr;
  cacheDtype: DTypeId;
  k: DevicePtr;
  v: DevicePtr;
  slotMapping: DevicePtr;
  numTokens: number;
  numKvHeads: number;
  headDim: number;
  rowStride: number;
  blockSize: number;
  numBlocks: number;
}

/** dl_rope_kv_write: RoPE on the Q and K heads of fused QKV rows, then K and V into the cache. */
export interface RopeKvWriteArgs {
  qkv: DevicePtr;
  positions: DevicePtr;
  invFreq: DevicePtr;
  kCache: DevicePtr;
  vCache: DevicePtr;
  cacheDtype: DTypeId;
  slotMapping: DevicePtr;
  numTokens: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
  rowStride: number;
  style: RopeStyleId;
  blockSize: number;
  numBlocks: number;
}

export interface AttentionArgs {
  out: DevicePtr;
  q: DevicePtr;
  kCache: DevicePtr;
  vCache: DevicePtr;
  cacheDtype: DTypeId;
  blockTables: DevicePtr;
  seqLens: DevicePtr;
  queryStart: DevicePtr;
  numSeqs: number;
  numTokens: number;
  /**
   * The most new tokens of any sequence (default numTokens, always valid). 1 tells the CUDA build
   * the batch is all decode, so it launches only its decode kernel.
   */
  maxQueryLen?: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  qRowStride: number;
  blockSize: number;
  maxBlocksPerSeq: number;
  numBlocks: number;
  scale: number;
}

/** dl_status DL_ERR_UNSUPPORTED: the backend has no such feature (not a failure of the call). */
const UNSUPPORTED = 3;

/** One opened library plus one context on it. Every method throws NativeError on failure. */
export class NativeBackend {
  readonly name: string;
  readonly libraryPath: string;
  #dylib: Deno.DynamicLibrary<typeof symbols>;
  #lib: Library;
  #ctx: Deno.PointerValue;
  #outPtr = new BigUint64Array(1);

  private constructor(dylib: Deno.DynamicLibrary<typeof symbols>, path: string) {
    this.#dylib = dylib;
    this.#lib = dylib.symbols;
    this.libraryPath = path;
    this.name = cString(this.#lib.dl_backend_name());
    this.#ctx = null;
  }

  /** Opens the library, checks its ABI version and creates a context. */
  static open(options: OpenBackendOptions = {}): NativeBackend {
    const path = options.libraryPath ?? defaultLibraryPath(options.backend ?? "cpu");
    const dylib = dlopenAnywhere(path);
    const version = dylib.symbols.dl_abi_version();
    if (version !== ABI_VERSION) {
      dylib.close();
      throw new LibraryLoadError(
        `Native library ${path} has ABI version ${version}, expected ${ABI_VERSION}; rebuild it with ` +
          "`deno task build`",
      );
    }
    const backend = new NativeBackend(dylib, path);
    backend.#check(
      "dl_context_create",
      dylib.symbols.dl_context_create(
        options.device ?? 0,
        options.numThreads ?? 0,
        Deno.UnsafePointer.of(backend.#outPtr),
      ),
    );
    backend.#ctx = Deno.UnsafePointer.create(backend.#outPtr[0]);
    return backend;
  }

  /** Names a status code the way the library does. */
  statusString(status: number): string {
    return cString(this.#lib.dl_status_string(status));
  }

  #check(fn: string, status: number): void {
    if (status !== 0) {
      throw new NativeError(
        fn,
        status,
        this.statusString(status),
        cString(this.#lib.dl_last_error()),
      );
    }
  }

  /** Whether device pointers are plain host memory that JS may view directly. */
  get isHostMemory(): boolean {
    return this.name === "cpu";
  }

  close(): void {
    if (this.#ctx !== null) {
      this.#check("dl_context_destroy", this.#lib.dl_context_destroy(this.#ctx));
      this.#ctx = null;
    }
    this.#dylib.close();
  }

  synchronize(): void {
    this.#check("dl_synchronize", this.#lib.dl_synchronize(this.#ctx));
  }

  /**
   * Whether dl_graph_launch replays what a capture recorded (the CUDA build). The CPU build runs
   * a capture's kernels eagerly and replays nothing, so its engine never uses graphs.
   */
  get replaysGraphs(): boolean {
    return this.name === "cuda";
  }

  /** Starts capturing this context's kernel calls into a graph (ffi/denollm.h "Graphs"). */
  graphBegin(): void {
    this.#check("dl_graph_begin", this.#lib.dl_graph_begin(this.#ctx));
  }

  /** Ends the capture; returns the new graph's id. */
  graphEnd(): number {
    const id = new Int32Array(1);
    this.#check("dl_graph_end", this.#lib.dl_graph_end(this.#ctx, Deno.UnsafePointer.of(id)));
    return id[0];
  }

  /** Enqueues a captured graph's kernels, in their captured order. */
  graphLaunch(graphId: number): void {
    this.#check("dl_graph_launch", this.#lib.dl_graph_launch(this.#ctx, graphId));
  }

  graphDestroy(graphId: number): void {
    this.#check("dl_graph_destroy", this.#lib.dl_graph_destroy(this.#ctx, graphId));
  }

  /** Allocates zeroed device memory. */
  alloc(sizeBytes: number): DevicePtr {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
      throw new RangeError(`Allocation size must be a non-negative integer, got ${sizeBytes}`);
    }
    this.#check(
      "dl_alloc",
      this.#lib.dl_alloc(this.#ctx, BigInt(sizeBytes), Deno.UnsafePointer.of(this.#outPtr)),
    );
    const ptr = Deno.UnsafePointer.create(this.#outPtr[0]);
    if (ptr === null) throw new NativeError("dl_alloc", 2, "DL_ERR_OUT_OF_MEMORY", "null pointer");
    return ptr;
  }

  free(ptr: DevicePtr): void {
    this.#check("dl_free", this.#lib.dl_free(this.#ctx, ptr));
  }

  /**
   * Maps sizeBytes of a file from fileOffset on, read-only, as device memory the kernels may read
   * (the CPU build: weights used in place). Returns null when the backend cannot (the CUDA build),
   * so the caller copies instead. Release with {@link unmapFile}, never {@link free}.
   */
  mapFile(path: string, fileOffset: number, sizeBytes: number): DevicePtr | null {
    if (!Number.isSafeInteger(fileOffset) || fileOffset < 0) {
      throw new RangeError(`File offset must be a non-negative integer, got ${fileOffset}`);
    }
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
      throw new RangeError(`Mapping size must be a positive integer, got ${sizeBytes}`);
    }
    const cPath = new TextEncoder().encode(`${path}\0`);
    const status = this.#lib.dl_map_file(
      this.#ctx,
      Deno.UnsafePointer.of(cPath),
      BigInt(fileOffset),
      BigInt(sizeBytes),
      Deno.UnsafePointer.of(this.#outPtr),
    );
    if (status === UNSUPPORTED) return null;
    this.#check("dl_map_file", status);
    return Deno.UnsafePointer.create(this.#outPtr[0]);
  }

  /** Releases a {@link mapFile} mapping of sizeBytes. */
  unmapFile(ptr: DevicePtr, sizeBytes: number): void {
    this.#check("dl_unmap_file", this.#lib.dl_unmap_file(this.#ctx, ptr, BigInt(sizeBytes)));
  }

  /** Copies host bytes to device memory at dst + offsetBytes. */
  upload(dst: DevicePtr, src: ArrayBufferView, offsetBytes = 0): void {
    const target = offsetBytes === 0 ? dst : offset(dst, offsetBytes);
    const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    if (bytes.byteLength === 0) return;
    this.#check(
      "dl_copy_to_device",
      this.#lib.dl_copy_to_device(
        this.#ctx,
        target,
        Deno.UnsafePointer.of(bytes),
        BigInt(bytes.byteLength),
      ),
    );
  }

  /** Copies device bytes at src + offsetBytes into a host view (its whole length). */
  download(dst: ArrayBufferView, src: DevicePtr, offsetBytes = 0): void {
    const source = offsetBytes === 0 ? src : offset(src, offsetBytes);
    const bytes = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
    if (bytes.byteLength === 0) return;
    this.#check(
      "dl_copy_to_host",
      this.#lib.dl_copy_to_host(
        this.#ctx,
        Deno.UnsafePointer.of(bytes),
        source,
        BigInt(bytes.byteLength),
      ),
    );
  }

  /**
   * A Uint8Array aliasing device memory, for backends whose device memory is host memory (the CPU
   * build): the loader reads weight files straight into it. Returns null on other backends.
   */
  hostView(ptr: DevicePtr, sizeBytes: number): Uint8Array | null {
    if (!this.isHostMemory) return null;
    if (sizeBytes === 0) return new Uint8Array(0);
    return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, sizeBytes));
  }

  convert(dst: DevicePtr, dstDtype: DTypeId, src: DevicePtr, srcDtype: DTypeId, n: number): void {
    this.#check(
      "dl_convert",
      this.#lib.dl_convert(this.#ctx, dst, dstDtype, src, srcDtype, BigInt(n)),
    );
  }

  /**
   * Quantizes a [rows, cols] f32 matrix into dstDtype (a blocked format, INT8, or a plain one by
   * conversion; cols a multiple of its block length). `importance` ([cols] f32, optional) weighs
   * each column's squared error in the formats whose quantizer searches for scales.
   */
  quantize(args: QuantizeArgs): void {
    const a = args;
    this.#check(
      "dl_quantize",
      this.#lib.dl_quantize(
        this.#ctx,
        a.dst,
        a.dstDtype,
        a.src,
        BigInt(a.rows),
        BigInt(a.cols),
        a.importance ?? null,
      ),
    );
  }

  /** Expands a [rows, cols] matrix of any format to f32 (GGUF types: ggml's floats, bit for bit). */
  dequantize(args: DequantizeArgs): void {
    const a = args;
    this.#check(
      "dl_dequantize",
      this.#lib.dl_dequantize(this.#ctx, a.dst, a.src, a.srcDtype, BigInt(a.rows), BigInt(a.cols)),
    );
  }

  /**
   * Rearranges a matrix into its repacked layout or back (dl_repack). Returns false, writing
   * nothing, where the backend's kernels read only the plain layout (the CUDA build).
   */
  repack(args: RepackArgs): boolean {
    const a = args;
    const status = this.#lib.dl_repack(
      this.#ctx,
      a.dst,
      a.dstDtype,
      a.src,
      a.srcDtype,
      BigInt(a.rows),
      BigInt(a.cols),
    );
    if (status === UNSUPPORTED) return false;
    this.#check("dl_repack", status);
    return true;
  }

  embedding(
    args: {
      out: DevicePtr;
      table: DevicePtr;
      tableDtype: DTypeId;
      tokenIds: DevicePtr;
      numTokens: number;
      vocabSize: number;
      dim: number;
    },
  ): void {
    const a = args;
    this.#check(
      "dl_embedding",
      this.#lib.dl_embedding(
        this.#ctx,
        a.out,
        a.table,
        a.tableDtype,
        a.tokenIds,
        a.numTokens,
        a.vocabSize,
        a.dim,
      ),
    );
  }

  rmsnorm(
    args: {
      out: DevicePtr;
      x: DevicePtr;
      weight: DevicePtr;
      numTokens: number;
      dim: number;
      eps: number;
    },
  ): void {
    const a = args;
    this.#check(
      "dl_rmsnorm",
      this.#lib.dl_rmsnorm(this.#ctx, a.out, a.x, a.weight, a.numTokens, a.dim, a.eps),
    );
  }

  /** residual += x, then out = rmsnorm(residual) * weight; out may equal x, residual may not. */
  addRmsnorm(
    args: {
      out: DevicePtr;
      residual: DevicePtr;
      x: DevicePtr;
      weight: DevicePtr;
      numTokens: number;
      dim: number;
      eps: number;
    },
  ): void {
    const a = args;
    this.#check(
      "dl_add_rmsnorm",
      this.#lib.dl_add_rmsnorm(
        this.#ctx,
        a.out,
        a.residual,
        a.x,
        a.weight,
        a.numTokens,
        a.dim,
        a.eps,
      ),
    );
  }

  matmul(a: MatmulArgs): void {
    this.#check(
      "dl_matmul",
      this.#lib.dl_matmul(
        this.#ctx,
        a.out,
        a.x,
        a.w,
        a.wDtype,
        a.bias ?? null,
        a.m,
        a.n,
        a.k,
        a.outRowStride ?? a.n,
      ),
    );
  }

  /**
   * Reserves the context's kernel workspace for the largest step (call once at start-up); after
   * it no kernel allocates, and a call needing more fails with DL_ERR_OUT_OF_MEMORY. Returns the
   * workspace bytes held.
   */
  reserveWorkspace(shape: WorkspaceShape): number {
    const s = shape;
    this.#check(
      "dl_reserve_workspace",
      this.#lib.dl_reserve_workspace(
        this.#ctx,
        s.maxNumTokens,
        s.numHeads,
        s.numKvHeads,
        s.headDim,
        s.blockSize,
        s.maxBlocksPerSeq,
        s.maxMatmulK,
        Deno.UnsafePointer.of(this.#outPtr),
      ),
    );
    return Number(this.#outPtr[0]);
  }

  /** Free and total bytes of the device (the host's memory on the CPU build). */
  memoryInfo(): MemoryInfo {
    const out = new BigUint64Array(2);
    this.#check(
      "dl_memory_info",
      this.#lib.dl_memory_info(
        this.#ctx,
        Deno.UnsafePointer.of(out.subarray(0, 1)),
        Deno.UnsafePointer.of(out.subarray(1, 2)),
      ),
    );
    return { freeBytes: Number(out[0]), totalBytes: Number(out[1]) };
  }

  /**
   * Allocates sizeBytes (> 0) of zeroed host staging memory, page-locked on the CUDA build so
   * {@link upload} and {@link download} through it run by DMA. Returns its address and a view of
   * it; the view is valid until {@link hostFree}. Not device memory: kernels must not read it.
   */
  hostAlloc(sizeBytes: number): { ptr: Deno.PointerObject; buffer: ArrayBuffer } {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
      throw new RangeError(`Host allocation size must be a positive integer, got ${sizeBytes}`);
    }
    this.#check(
      "dl_host_alloc",
      this.#lib.dl_host_alloc(this.#ctx, BigInt(sizeBytes), Deno.UnsafePointer.of(this.#outPtr)),
    );
    const ptr = Deno.UnsafePointer.create(this.#outPtr[0]);
    if (ptr === null) {
      throw new NativeError("dl_host_alloc", 2, "DL_ERR_OUT_OF_MEMORY", "null pointer");
    }
    return { ptr, buffer: Deno.UnsafePointerView.getArrayBuffer(ptr, sizeBytes) };
  }

  /** Frees a {@link hostAlloc} block; views of it must not be used afterwards. */
  hostFree(ptr: Deno.PointerObject | null): void {
    this.#check("dl_host_free", this.#lib.dl_host_free(this.#ctx, ptr));
  }

  /** The context's allocation counters and workspace size. */
  memoryStats(): MemoryStats {
    const out = new BigUint64Array(4);
    this.#check(
      "dl_memory_stats",
      this.#lib.dl_memory_stats(this.#ctx, Deno.UnsafePointer.of(out)),
    );
    return {
      numAllocs: Number(out[0]),
      numFrees: Number(out[1]),
      workspaceBytes: Number(out[2]),
      numWorkspaceGrowths: Number(out[3]),
    };
  }

  rope(a: RopeArgs): void {
    this.#check(
      "dl_rope",
      this.#lib.dl_rope(
        this.#ctx,
        a.x,
        a.positions,
        a.invFreq,
        a.numTokens,
        a.numHeads,
        a.headDim,
        a.rotaryDim,
        a.rowStride,
        a.style,
      ),
    );
  }

  siluMul(args: { out: DevicePtr; gateUp: DevicePtr; numTokens: number; dim: number }): void {
    const a = args;
    this.#check(
      "dl_silu_mul",
      this.#lib.dl_silu_mul(this.#ctx, a.out, a.gateUp, a.numTokens, a.dim),
    );
  }

  add(args: { out: DevicePtr; a: DevicePtr; b: DevicePtr; numElements: number }): void {
    this.#check(
      "dl_add",
      this.#lib.dl_add(this.#ctx, args.out, args.a, args.b, BigInt(args.numElements)),
    );
  }

  gatherRows(
    args: {
      out: DevicePtr;
      x: DevicePtr;
      rows: DevicePtr;
      numRows: number;
      numSrcRows: number;
      dim: number;
    },
  ): void {
    const a = args;
    this.#check(
      "dl_gather_rows",
      this.#lib.dl_gather_rows(this.#ctx, a.out, a.x, a.rows, a.numRows, a.numSrcRows, a.dim),
    );
  }

  /** dl_sample: one token id per logits row (the per-row parameters are device arrays). */
  sample(
    a: {
      outIds: DevicePtr;
      logits: DevicePtr;
      temperature: DevicePtr;
      topK: DevicePtr;
      topP: DevicePtr;
      minP: DevicePtr;
      seeds: DevicePtr;
      counters: DevicePtr;
      numRows: number;
      vocabSize: number;
    },
  ): void {
    this.#check(
      "dl_sample",
      this.#lib.dl_sample(
        this.#ctx,
        a.outIds,
        a.logits,
        a.temperature,
        a.topK,
        a.topP,
        a.minP,
        a.seeds,
        a.counters,
        a.numRows,
        a.vocabSize,
      ),
    );
  }

  kvWrite(a: KvWriteArgs): void {
    this.#check(
      "dl_kv_write",
      this.#lib.dl_kv_write(
        this.#ctx,
        a.kCache,
        a.vCache,
        a.cacheDtype,
        a.k,
        a.v,
        a.slotMapping,
        a.numTokens,
        a.numKvHeads,
        a.headDim,
        a.rowStride,
        a.blockSize,
        a.numBlocks,
      ),
    );
  }

  ropeKvWrite(a: RopeKvWriteArgs): void {
    this.#check(
      "dl_rope_kv_write",
      this.#lib.dl_rope_kv_write(
        this.#ctx,
        a.qkv,
        a.positions,
        a.invFreq,
        a.kCache,
        a.vCache,
        a.cacheDtype,
        a.slotMapping,
        a.numTokens,
        a.numHeads,
        a.numKvHeads,
        a.headDim,
        a.rotaryDim,
        a.rowStride,
        a.style,
        a.blockSize,
        a.numBlocks,
      ),
    );
  }

  /** Copies cache blocks pairs[i][0] → pairs[i][1] inside one K or V buffer (copy-on-write). */
  copyBlocks(
    args: {
      cache: DevicePtr;
      pairs: DevicePtr;
      numPairs: number;
      blockBytes: number;
      numBlocks: number;
    },
  ): void {
    const a = args;
    this.#check(
      "dl_copy_blocks",
      this.#lib.dl_copy_blocks(
        this.#ctx,
        a.cache,
        a.pairs,
        a.numPairs,
        BigInt(a.blockBytes),
        a.numBlocks,
      ),
    );
  }

  pagedAttention(a: AttentionArgs): void {
    this.#check(
      "dl_paged_attention",
      this.#lib.dl_paged_attention(
        this.#ctx,
        a.out,
        a.q,
        a.kCache,
        a.vCache,
        a.cacheDtype,
        a.blockTables,
        a.seqLens,
        a.queryStart,
        a.numSeqs,
        a.numTokens,
        a.maxQueryLen ?? a.numTokens,
        a.numHeads,
        a.numKvHeads,
        a.headDim,
        a.qRowStride,
        a.blockSize,
        a.maxBlocksPerSeq,
        a.numBlocks,
        a.scale,
      ),
    );
  }
}

/** ptr + bytes, for addressing into a larger device allocation. */
export function offset(ptr: DevicePtr, bytes: number): DevicePtr {
  if (bytes === 0) return ptr;
  const moved = Deno.UnsafePointer.offset(ptr, bytes);
  if (moved === null) throw new RangeError(`Pointer offset ${bytes} produced a null pointer`);
  return moved;
}
