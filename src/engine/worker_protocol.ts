// Messages between the main thread (AsyncEngine) and the engine worker.
import type { ErrorInfo } from "../errors.ts";
import type { EngineStats } from "./engine.ts";
import type { KvMemoryPlan } from "./kv_memory.ts";
import type { EngineOptions } from "./local_engine.ts";
import type { RequestOutput, RequestParams } from "./request.ts";

export interface WorkerInit {
  type: "init";
  options: EngineOptions;
}

export type ToWorker =
  | WorkerInit
  | { type: "add"; id: string; promptIds: number[]; params: RequestParams }
  | { type: "abort"; id: string }
  | { type: "shutdown" };

/**
 * An error from the worker: its code, name and message (src/errors.ts). The code is optional only
 * while engine_worker.ts still sends `{ name, message }`; the receiver then derives it from the
 * name. Make this `ErrorInfo` once the worker sends `errorInfo(error)`.
 */
export type WorkerErrorInfo = ErrorInfo;

export type FromWorker =
  | {
    type: "ready";
    numKvBlocks: number;
    blockSize: number;
    maxModelLen: number;
    loadMs: number;
    weightBytes: number;
    /** Device bytes reserved for steps (scratch, metadata, kernel workspace) and for KV. */
    reservedBytes: number;
    kvCacheBytes: number;
    /** How --gpu-memory-utilization sized the KV cache; absent without it. */
    kvMemoryPlan?: KvMemoryPlan;
    stats: EngineStats;
  }
  | { type: "load_progress"; loadedBytes: number; totalBytes: number }
  | { type: "outputs"; outputs: RequestOutput[]; stats: EngineStats; stepMs: number }
  | { type: "rejected"; id: string; error: WorkerErrorInfo }
  | { type: "fatal"; error: WorkerErrorInfo }
  | { type: "closed" };
