// The engine's own thread: loads the model, runs engine steps back to back while there is work,
// and exchanges requests and outputs with the main thread by message, so forward passes never
// block the HTTP event loop.
/// <reference lib="deno.worker" />
import { errorInfo } from "../errors.ts";
import type { LLMEngine } from "./engine.ts";
import { GrammarCompiler } from "./grammar.ts";
import { startLocalEngine } from "./local_engine.ts";
import { applyOmpEnvDefaults } from "./threads.ts";
import type { FromWorker, ToWorker, WorkerInit } from "./worker_protocol.ts";

let engine: LLMEngine | undefined;
let grammarCompiler: GrammarCompiler | undefined;
let release: (() => void) | undefined;
let isLooping = false;
/** Requests whose output format is being compiled, and whether they were aborted meanwhile. */
const compiling = new Map<string, boolean>();

let numSteps = 0;

/**
 * Fault injection for the server's engine-failure test, read once: after this many steps the
 * worker throws an uncaught error, which ends it exactly as a crash in a step would. Unset, never.
 */
const CRASH_AFTER_STEPS = (() => {
  const name = "DENOLLM_TEST_CRASH_ENGINE_AFTER_STEPS";
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return Infinity;
  }
  return Number(Deno.env.get(name) ?? Infinity);
})();

function send(message: FromWorker): void {
  self.postMessage(message);
}

async function init(message: WorkerInit): Promise<void> {
  // libgomp reads its wait policy once, when the native library first loads.
  applyOmpEnvDefaults(Deno.env);
  const local = await startLocalEngine(message.options, {
    onLoadProgress: (loadedBytes, totalBytes) =>
      send({ type: "load_progress", loadedBytes, totalBytes }),
  });
  engine = local.engine;
  grammarCompiler = new GrammarCompiler(engine.tokenizer, engine.vocabSize);
  release = local.release;
  send({
    type: "ready",
    numKvBlocks: local.numKvBlocks,
    blockSize: local.blockSize,
    maxModelLen: local.maxModelLen,
    loadMs: local.loaded.loadMs,
    weightBytes: local.loaded.model.weights.sizeBytes,
    reservedBytes: local.reservedBytes,
    kvCacheBytes: local.kvCacheBytes,
    ...(local.kvMemoryPlan === undefined ? {} : { kvMemoryPlan: local.kvMemoryPlan }),
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
      // Yield first: requests posted together (one per prompt of a batch, n samples) all land
      // before the step that starts them.
      await yieldToMessages();
      if (!engine?.hasWork) break;
      const started = performance.now();
      if (++numSteps > CRASH_AFTER_STEPS) {
        setTimeout(() => {
          throw new Error(`Crashed on purpose after ${CRASH_AFTER_STEPS} steps (fault injection)`);
        });
        return;
      }
      const outputs = engine.step();
      send({
        type: "outputs",
        outputs,
        stats: engine.stats(),
        stepMs: performance.now() - started,
      });
    }
  } catch (error) {
    send({ type: "fatal", error: errorInfo(error) });
  } finally {
    isLooping = false;
  }
}

function abort(id: string): void {
  if (engine) {
    send({ type: "outputs", outputs: engine.abort(id), stats: engine.stats(), stepMs: 0 });
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
    case "add": {
      let cancelled = false;
      try {
        const structured = message.params.structured;
        let grammars;
        if (structured !== undefined) {
          compiling.set(message.id, false);
          try {
            grammars = await grammarCompiler!.matchers(structured, message.params.n ?? 1);
          } finally {
            cancelled = compiling.get(message.id) === true;
            compiling.delete(message.id);
          }
        }
        engine!.addRequest(message.id, message.promptIds, message.params, { grammars });
        // Cancelled while its format compiled: added only so that its abort outputs go out.
        if (cancelled) abort(message.id);
      } catch (error) {
        send({ type: "rejected", id: message.id, error: errorInfo(error) });
        return;
      }
      loop();
      return;
    }
    case "abort":
      if (compiling.has(message.id)) compiling.set(message.id, true);
      else abort(message.id);
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
