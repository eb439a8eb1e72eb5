// Picks the backend for --device: asks the CUDA driver (libcuda, by FFI) whether a GPU is there,
// and checks that the CUDA build of the native library exists.
import { defaultLibraryPath } from "../../ffi/native.ts";
import { DenollmError } from "../errors.ts";
import type { Device } from "./config.ts";

export interface ResolvedDevice {
  backend: "cpu" | "cuda";
  /** For the log: "cpu", or "cuda:0 (NVIDIA H100 80GB HBM3)". */
  description: string;
}

/** A --device value that cannot be served: no GPU, no CUDA build, ordinal out of range. */
export class DeviceError extends DenollmError {
  constructor(message: string) {
    super("device", message);
    this.name = "DeviceError";
  }
}

/** The GPUs the driver reports, or why there are none. */
export function probeCuda(): { names: string[] } | { reason: string } {
  let lib;
  try {
    lib = Deno.dlopen(
      "libcuda.so.1",
      {
        cuInit: { parameters: ["u32"], result: "i32" },
        cuDeviceGetCount: { parameters: ["buffer"], result: "i32" },
        cuDeviceGet: { parameters: ["buffer", "i32"], result: "i32" },
        cuDeviceGetName: { parameters: ["buffer", "i32", "i32"], result: "i32" },
      } as const,
    );
  } catch {
    return { reason: "the CUDA driver (libcuda.so.1) is not installed" };
  }
  try {
    const status = lib.symbols.cuInit(0);
    if (status !== 0) return { reason: `cuInit failed with CUDA error ${status}` };
    const count = new Int32Array(1);
    if (lib.symbols.cuDeviceGetCount(count) !== 0 || count[0] === 0) {
      return { reason: "the CUDA driver reports no GPU" };
    }
    const names: string[] = [];
    for (let i = 0; i < count[0]; i++) {
      const device = new Int32Array(1);
      const name = new Uint8Array(256);
      lib.symbols.cuDeviceGet(device, i);
      lib.symbols.cuDeviceGetName(name, name.length, device[0]);
      names.push(new TextDecoder().decode(name.subarray(0, name.indexOf(0))));
    }
    return { names };
  } finally {
    lib.close();
  }
}

function hasCudaLibrary(libraryPath: string): boolean {
  try {
    return Deno.statSync(libraryPath).isFile;
  } catch {
    return false;
  }
}

/**
 * Resolves --device. `cuda:N` is passed to the engine through CUDA_VISIBLE_DEVICES (the engine
 * opens device 0 of what it sees), so it is set here, before the driver is first initialized.
 */
export function resolveDevice(
  device: Device,
  options: { probe?: typeof probeCuda; cudaLibraryPath?: string } = {},
): ResolvedDevice {
  if (device.kind === "cpu") return { backend: "cpu", description: "cpu" };
  const cudaLibrary = options.cudaLibraryPath ?? defaultLibraryPath("cuda");
  const probe = options.probe ?? probeCuda;
  const flag = device.kind === "cuda" && device.ordinal !== undefined
    ? `cuda:${device.ordinal}`
    : device.kind;
  if (device.kind === "cuda" && device.ordinal !== undefined) {
    const visible = Deno.env.get("CUDA_VISIBLE_DEVICES");
    const ids = visible === undefined ? undefined : visible.split(",").map((s) => s.trim());
    if (ids !== undefined && device.ordinal >= ids.length) {
      throw new DeviceError(
        `--device ${flag}: CUDA_VISIBLE_DEVICES=${visible} makes only ${ids.length} GPU(s) visible`,
      );
    }
    Deno.env.set("CUDA_VISIBLE_DEVICES", ids?.[device.ordinal] ?? String(device.ordinal));
  }
  const gpus = probe();
  if ("reason" in gpus || !hasCudaLibrary(cudaLibrary)) {
    const reason = "reason" in gpus
      ? gpus.reason
      : `the CUDA build ${cudaLibrary} is missing (build it with nvcc present)`;
    if (device.kind === "auto") return { backend: "cpu", description: `cpu (no GPU: ${reason})` };
    throw new DeviceError(`--device ${flag}: no usable CUDA GPU: ${reason}`);
  }
  return { backend: "cuda", description: `${flag === "auto" ? "cuda" : flag} (${gpus.names[0]})` };
}
