// Messages between the main thread (AsyncEngine) and the engine worker.
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
    stats: EngineStats;
  }
  | { type: "outputs"; outputs: RequestOutput[]; stats: EngineStats; stepMs: number }
  | { type: "rejected"; id: string; error: ErrorInfo }
  | { type: "fatal"; error: ErrorInfo }
  | { type: "closed" };
