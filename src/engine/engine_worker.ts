// The engine's own thread: loads the model, runs engine steps back to back while there is work,
// and exchanges requests and outputs with the main thread by message, so forward passes never
// block the HTTP event loop.
/// <reference lib="deno.worker" />
import { formatByName } from "../../ffi/formats.ts";
import { NativeBackend } from "../../ffi/native.ts";
import { KvCache } from "../kv/kv_cache.ts";
import { loadModel } from "../model/load.ts";
import { LLMEngine } from "./engine.ts";
import type { FromWorker, ToWorker, WorkerInit } from "./worker_protocol.ts";

let engine: LLMEngine | undefined;
let release: (() => void) | undefined;
let isLooping = false;

function send(message: FromWorker): void {
  self.postMessage(message);
}

function errorInfo(error: unknown): { name: string; message: string } {
  const e = error instanceof Error ? error : new Error(String(error));
  return { name: e.name, message: e.message };
}

/** KV blocks for the budget; refuses a cache that cannot hold one maximum-length sequence. */
export function planKvBlocks(
  init: Pick<WorkerInit, "kvCacheMemoryBytes" | "blockSize" | "maxModelLen">,
  bytesPerBlock: number,
): number {
  const numBlocks = Math.floor(init.kvCacheMemoryBytes / bytesPerBlock);
  // Block 0 is the null block, so one fewer is usable.
  const numTokens = Math.max(0, numBlocks - 1) * init.blockSize;
  if (numTokens < init.maxModelLen) {
    throw new RangeError(
      `A KV cache of ${init.kvCacheMemoryBytes} bytes holds ${numTokens} tokens ` +
        `(${bytesPerBlock} bytes per block of ${init.blockSize}), fewer than one sequence of the ` +
        `maximum length ${init.maxModelLen}: raise --kv-cache-memory or lower --max-model-len`,
    );
  }
  return numBlocks;
}

async function init(message: WorkerInit): Promise<void> {
  const backend = NativeBackend.open({
    backend: message.backend,
    libraryPath: message.libraryPath,
    numThreads: message.numThreads,
  });
  const loaded = await loadModel(backend, message.modelPath, { showProgress: false });
  const maxModelLen = Math.min(message.maxModelLen, loaded.config.maxPositionEmbeddings);
  const format = formatByName(message.kvCacheDtype);
  if (format === undefined) {
    throw new RangeError(`Unknown KV cache dtype ${JSON.stringify(message.kvCacheDtype)}`);
  }
  const dtype = format.id;
  const numBlocks = planKvBlocks(
    { ...message, maxModelLen },
    KvCache.bytesPerBlock(loaded.config, message.blockSize, dtype),
  );
  const kvCache = new KvCache(backend, loaded.config, {
    blockSize: message.blockSize,
    numBlocks,
    dtype,
  });
  engine = new LLMEngine(
    backend,
    { model: loaded.model, tokenizer: loaded.tokenizer, kvCache },
    { ...message.engine, maxModelLen },
  );
  release = () => {
    kvCache.release();
    loaded.release();
    backend.close();
  };
  send({
    type: "ready",
    numKvBlocks: numBlocks - 1,
    blockSize: message.blockSize,
    maxModelLen,
    loadMs: loaded.loadMs,
    weightBytes: loaded.model.weights.sizeBytes,
    stats: engine.stats(),
  });
}

/**
 * Lets queued messages (new requests, cancellations) in between steps. Not a timer: nested
 * `setTimeout(0)` calls are clamped to 4 ms, which halved single-stream decode speed in the worker;
 * `setImmediate` runs after pending message events, at no clamp.
 */
function yieldToMessages(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

async function loop(): Promise<void> {
  if (isLooping) return;
  isLooping = true;
  try {
    while (engine?.hasWork) {
      const started = performance.now();
      const outputs = engine.step();
      send({
        type: "outputs",
        outputs,
        stats: engine.stats(),
        stepMs: performance.now() - started,
      });
      await yieldToMessages();
    }
  } catch (error) {
    send({ type: "fatal", error: errorInfo(error) });
  } finally {
    isLooping = false;
  }
}

self.onmessage = async (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  switch (message.type) {
    case "init":
      try {
        await init(message);
      } catch (error) {
        send({ type: "fatal", error: errorInfo(error) });
      }
      return;
    case "add":
      try {
        engine!.addRequest(message.id, message.promptIds, message.params);
      } catch (error) {
        send({ type: "rejected", id: message.id, error: errorInfo(error) });
        return;
      }
      loop();
      return;
    case "abort":
      if (engine) {
        send({
          type: "outputs",
          outputs: engine.abort(message.id),
          stats: engine.stats(),
          stepMs: 0,
        });
      }
      return;
    case "shutdown":
      release?.();
      release = undefined;
      engine = undefined;
      send({ type: "closed" });
      self.close();
      return;
  }
};
