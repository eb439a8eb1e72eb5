// Test helper: device buffers of one backend, created from host arrays and all freed together.
import type { DevicePtr, NativeBackend } from "../ffi/native.ts";

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
