// The KV cache budget under --gpu-memory-utilization (vLLM's flag): the engine may hold that share
// of the device's memory, and what its weights and step workspace do not take goes to the KV cache.
import type { MemoryInfo } from "../../ffi/native.ts";

/**
 * The safety margin left free besides the stated terms: 1% of the device, at least 64 MiB. It
 * covers what none of the terms sees: allocation granularity (cudaMalloc rounds to 2 MiB pages),
 * kernel modules CUDA loads lazily at their first launch, and on the CPU build the JS heap.
 */
export const KV_MARGIN = { fraction: 0.01, minBytes: 64 * 2 ** 20 } as const;

/** Each term of the budget, for the log line and the operator's error. */
export interface KvMemoryPlan {
  /** The flag's value, in (0, 1]. */
  utilization: number;
  /** The device's memory (the host's on the CPU build). */
  totalBytes: number;
  /** Held by anyone when the engine started, before it loaded weights: total − free then. */
  inUseBytes: number;
  /** The model's weights, mapped ones included (they take memory too, page cache on the CPU). */
  weightBytes: number;
  /** The step workspace, reserved once up front (Executor.reservedBytes): its fixed peak. */
  reservedBytes: number;
  marginBytes: number;
  /**
   * utilization × total − inUse − weights − reserved − margin, rounded down: the KV cache's
   * budget; zero or negative when nothing is left.
   */
  kvCacheMemoryBytes: number;
}

/** Throws RangeError unless 0 < utilization <= 1. */
export function checkUtilization(utilization: number): void {
  if (!(utilization > 0 && utilization <= 1)) {
    throw new RangeError(
      `--gpu-memory-utilization must be a fraction in (0, 1], got ${utilization}`,
    );
  }
}

/** The KV cache budget from the memory measured before loading and what the engine holds now. */
export function kvMemoryPlan(
  utilization: number,
  memoryAtStart: MemoryInfo,
  held: { weightBytes: number; reservedBytes: number },
): KvMemoryPlan {
  checkUtilization(utilization);
  const { freeBytes, totalBytes } = memoryAtStart;
  const inUseBytes = Math.max(0, totalBytes - freeBytes);
  const marginBytes = Math.max(KV_MARGIN.minBytes, Math.ceil(KV_MARGIN.fraction * totalBytes));
  const kvCacheMemoryBytes = Math.floor(utilization * totalBytes) - inUseBytes - held.weightBytes -
    held.reservedBytes - marginBytes;
  return {
    utilization,
    totalBytes,
    inUseBytes,
    weightBytes: held.weightBytes,
    reservedBytes: held.reservedBytes,
    marginBytes,
    kvCacheMemoryBytes,
  };
}

/** "0.9 × 80.0 GiB total − 1.2 GiB in use at start − …": the budget written out term by term. */
export function describeKvMemoryPlan(plan: KvMemoryPlan): string {
  const p = plan;
  return `${p.utilization} × ${mib(p.totalBytes)} total − ${mib(p.inUseBytes)} in use at start − ` +
    `${mib(p.weightBytes)} weights − ${mib(p.reservedBytes)} step workspace − ` +
    `${mib(p.marginBytes)} margin = ${mib(p.kvCacheMemoryBytes)} for the KV cache`;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
