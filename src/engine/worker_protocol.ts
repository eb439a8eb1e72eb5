// Messages between the main thread (AsyncEngine) and the engine worker.
import type { EngineStats } from "./engine.ts";
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

export interface ErrorInfo {
  name: string;
  message: string;
}

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
    stats: EngineStats;
  }
  | { type: "outputs"; outputs: RequestOutput[]; stats: EngineStats; stepMs: number }
  | { type: "rejected"; id: string; error: ErrorInfo }
  | { type: "fatal"; error: ErrorInfo }
  | { type: "closed" };
