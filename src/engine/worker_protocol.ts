// Messages between the main thread (AsyncEngine) and the engine worker.
import type { ErrorInfo, ErrorInfoWithoutCode } from "../errors.ts";
import type { EngineConfig, EngineStats } from "./engine.ts";
import type { RequestOutput, RequestParams } from "./request.ts";

export interface WorkerInit {
  type: "init";
  modelPath: string;
  backend?: "cpu" | "cuda";
  libraryPath?: string;
  numThreads: number;
  blockSize: number;
  kvCacheDtype: "f32" | "f16" | "bf16";
  kvCacheMemoryBytes: number;
  maxModelLen: number;
  engine: Omit<EngineConfig, "maxModelLen">;
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
export type WorkerErrorInfo = ErrorInfo | ErrorInfoWithoutCode;

export type FromWorker =
  | {
    type: "ready";
    numKvBlocks: number;
    blockSize: number;
    maxModelLen: number;
    loadMs: number;
    weightBytes: number;
    stats: EngineStats;
  }
  | { type: "outputs"; outputs: RequestOutput[]; stats: EngineStats; stepMs: number }
  | { type: "rejected"; id: string; error: WorkerErrorInfo }
  | { type: "fatal"; error: WorkerErrorInfo }
  | { type: "closed" };
