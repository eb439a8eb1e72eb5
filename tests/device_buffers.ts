// Test helper: device buffers of one backend, created from host arrays and all freed together.
import { type DevicePtr, type DTypeId, type NativeBackend, offset } from "../ffi/native.ts";

export type HostArray = Float32Array | Int32Array | Uint16Array | Uint32Array | Uint8Array;

export class DeviceBuffers {
  readonly backend: NativeBackend;
  #owned: DevicePtr[] = [];

  constructor(backend: NativeBackend) {
    this.backend = backend;
  }

  /** Zero-filled device memory. */
  zeros(sizeBytes: number): DevicePtr {
    const ptr = this.backend.alloc(sizeBytes);
    this.#owned.push(ptr);
    return ptr;
  }

  from(data: HostArray): DevicePtr {
    const ptr = this.zeros(data.byteLength);
    this.backend.upload(ptr, data);
    return ptr;
  }

  #read<T extends HostArray>(out: T, ptr: DevicePtr): T {
    // Kernels run on the backend's stream; wait for them before reading back.
    this.backend.synchronize();
    this.backend.download(out, ptr);
    return out;
  }

  f32(ptr: DevicePtr, length: number): Float32Array {
    return this.#read(new Float32Array(length), ptr);
  }

  u16(ptr: DevicePtr, length: number): Uint16Array {
    return this.#read(new Uint16Array(length), ptr);
  }

  bytes(ptr: DevicePtr, length: number): Uint8Array {
    return this.#read(new Uint8Array(length), ptr);
  }

  freeAll(): void {
    for (const ptr of this.#owned) this.backend.free(ptr);
    this.#owned = [];
  }
}

/** Runs body with fresh buffers on `backend`, freeing them afterwards. */
export function withDeviceBuffers<T>(backend: NativeBackend, body: (b: DeviceBuffers) => T): T {
  const buffers = new DeviceBuffers(backend);
  try {
    return body(buffers);
  } finally {
    buffers.freeAll();
  }
}

/** A dl_matmul case: out has `stride` floats per row, of which the first n are the result. */
export interface StridedMatmulCase {
  m: number;
  n: number;
  k: number;
  stride: number;
}

/**
 * dl_matmul on `backend` into a NaN-filled output with a row stride past n; returns the n columns
 * of each row and throws if a column past n was written. When k is odd, x sits one float into its
 * buffer, so the kernel sees an unaligned x.
 */
export function stridedMatmul(
  backend: NativeBackend,
  dtype: DTypeId,
  w: Uint8Array,
  x: Float32Array,
  bias: Float32Array | null,
  c: StridedMatmulCase,
): Float32Array {
  return withDeviceBuffers(backend, (s) => {
    const { m, n, k, stride } = c;
    const out = s.from(new Float32Array(m * stride).fill(NaN));
    const shift = k % 2 === 1 ? 4 : 0;
    const xBuf = new Float32Array(m * k + 1);
    xBuf.set(x, shift / 4);
    backend.matmul({
      out,
      x: offset(s.from(xBuf), shift),
      w: s.from(w),
      wDtype: dtype,
      bias: bias ? s.from(bias) : null,
      m,
      n,
      k,
      outRowStride: stride,
    });
    const all = s.f32(out, m * stride);
    const result = new Float32Array(m * n);
    for (let i = 0; i < m; i++) {
      result.set(all.subarray(i * stride, i * stride + n), i * n);
      for (let j = n; j < stride; j++) {
        if (!Number.isNaN(all[i * stride + j])) {
          throw new Error(`row ${i} column ${j} past n was written`);
        }
      }
    }
    return result;
  });
}
