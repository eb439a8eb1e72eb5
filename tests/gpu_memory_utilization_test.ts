// --gpu-memory-utilization: the flag's values and its conflict with --kv-cache-memory (serve and
// the offline commands), and an engine whose KV block count follows the budget's terms, each
// recomputed here from its own source (the memory handed in, the model's weights, the executor's
// reservation, KV bytes per block from the config).
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { kvSizingFlags } from "../src/cli/engine_flags.ts";
import { UsageError } from "../src/errors.ts";
import { LLM } from "../src/engine/llm.ts";
import { createLocalEngine, startLocalEngine } from "../src/engine/local_engine.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { parseServeConfig, type ServeConfig } from "../src/server/config.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const MIB = 2 ** 20;
const GIB = 2 ** 30;

function serveConfig(args: string[], env: Record<string, string> = {}): ServeConfig {
  const parsed = parseServeConfig(["--model", "m", ...args], { env: { HOME: "/h", ...env } });
  assert.equal(parsed.help, false);
  return (parsed as { config: ServeConfig }).config;
}

function assertUsage(run: () => unknown, message: RegExp): void {
  assert.throws(run, (e: Error) => {
    assert.ok(e instanceof UsageError, `${e.name}: ${e.message}`);
    assert.match(e.message, message);
    return true;
  });
}

Deno.test("--gpu-memory-utilization: values and the conflict with --kv-cache-memory", async (t) => {
  await t.step("serve takes a fraction in (0, 1] instead of --kv-cache-memory", () => {
    const config = serveConfig(["--gpu-memory-utilization", "0.9"]);
    assert.equal(config.gpuMemoryUtilization, 0.9);
    assert.equal(config.kvCacheMemoryBytes, undefined);
    assert.equal(serveConfig(["--gpu-memory-utilization=1"]).gpuMemoryUtilization, 1);
    assert.equal(
      serveConfig([], { DENOLLM_GPU_MEMORY_UTILIZATION: ".5" }).gpuMemoryUtilization,
      0.5,
    );
    // Unset: the 1 GiB default budget, as before.
    assert.equal(serveConfig([]).kvCacheMemoryBytes, GIB);
    assert.equal(serveConfig([]).gpuMemoryUtilization, undefined);
  });

  await t.step("serve refuses 0, above 1, and non-numbers, naming the flag or variable", () => {
    for (const bad of ["0", "1.5", "x", "-0.5", "", "0.9x", "1e-1"]) {
      assertUsage(
        () => serveConfig([`--gpu-memory-utilization=${bad}`]),
        new RegExp(
          `^--gpu-memory-utilization "${bad}": expected a fraction above 0 and at most 1`,
        ),
      );
    }
    assertUsage(
      () => serveConfig([], { DENOLLM_GPU_MEMORY_UTILIZATION: "2" }),
      /^DENOLLM_GPU_MEMORY_UTILIZATION="2": expected a fraction/,
    );
  });

  await t.step("serve refuses it together with --kv-cache-memory, from flags or variables", () => {
    const both = /--gpu-memory-utilization "0.8" and --kv-cache-memory "1G" both size the KV cache/;
    assertUsage(
      () => serveConfig(["--gpu-memory-utilization", "0.8", "--kv-cache-memory", "1G"]),
      both,
    );
    assertUsage(
      () => serveConfig(["--gpu-memory-utilization", "0.8"], { DENOLLM_KV_CACHE_MEMORY: "1G" }),
      /--gpu-memory-utilization "0.8" and DENOLLM_KV_CACHE_MEMORY="1G" both size the KV cache/,
    );
  });

  await t.step("batch and distill-export parse the same flag", () => {
    assert.deepEqual(kvSizingFlags(undefined, "0.25"), { gpuMemoryUtilization: 0.25 });
    assert.deepEqual(kvSizingFlags(undefined, undefined), { kvCacheMemoryBytes: GIB });
    assert.deepEqual(kvSizingFlags("64M", undefined), { kvCacheMemoryBytes: 64 * MIB });
    for (const bad of ["0", "1.5", "x"]) {
      assertUsage(
        () => kvSizingFlags(undefined, bad),
        /--gpu-memory-utilization expects a fraction/,
      );
    }
    assertUsage(() => kvSizingFlags("64M", "0.5"), /both size the KV cache: give one of them/);
  });
});

Deno.test("--gpu-memory-utilization: the KV cache gets F × total − in use − weights − workspace − margin", async (t) => {
  const backend = NativeBackend.open({ numThreads: 1 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const c = loaded.config;
  const blockSize = 16;
  // K and V of every layer, f32 (the default cache dtype).
  const bytesPerBlock = 2 * c.numLayers * c.numKvHeads * blockSize * c.headDim * 4;
  const limits = { blockSize, maxModelLen: 256, maxNumBatchedTokens: 128, maxNumSeqs: 8 };
  try {
    await t.step("the block count follows the formula, term by term", () => {
      // A device of 1 GiB with 100 MiB held by others before the model loaded.
      const memoryAtStart = { totalBytes: GIB, freeBytes: GIB - 100 * MIB };
      for (const utilization of [0.25, 0.3, 0.5]) {
        const llm = LLM.over(backend, loaded, { ...limits, gpuMemoryUtilization: utilization }, {
          memoryAtStart,
        });
        try {
          const margin = Math.max(64 * MIB, Math.ceil(0.01 * GIB));
          const budget = Math.floor(utilization * GIB) - 100 * MIB -
            loaded.model.weights.sizeBytes - llm.local.reservedBytes - margin;
          const numBlocks = Math.floor(budget / bytesPerBlock);
          assert.ok(llm.local.reservedBytes > 0);
          assert.equal(llm.local.numKvBlocks, numBlocks - 1, `F = ${utilization}`); // null block
          assert.equal(llm.local.kvCacheBytes, numBlocks * bytesPerBlock);
          assert.deepEqual(llm.local.kvMemoryPlan, {
            utilization,
            totalBytes: GIB,
            inUseBytes: 100 * MIB,
            weightBytes: loaded.model.weights.sizeBytes,
            reservedBytes: llm.local.reservedBytes,
            marginBytes: margin,
            kvCacheMemoryBytes: budget,
          });
          // The engine runs in the cache it was given.
          const result = llm.generate({
            promptIds: loaded.tokenizer.encode("Once upon a time"),
            maxTokens: 8,
            sampling: GREEDY,
            ignoreEos: true,
          });
          assert.equal(result.tokenIds.length, 8);
        } finally {
          llm.release();
        }
      }
    });

    await t.step(
      "too small for one sequence: an operator's error naming the flag and the terms",
      () => {
        const memoryAtStart = { totalBytes: GIB, freeBytes: GIB - 100 * MIB };
        // The same limits reserve the same workspace: take its size from one engine, then leave
        // the KV cache 100 000 bytes, a few blocks, fewer than the 256 tokens of one sequence.
        const probe = createLocalEngine(backend, loaded, { ...limits, gpuMemoryUtilization: 0.5 }, {
          memoryAtStart,
        });
        const reserved = probe.reservedBytes;
        probe.release();
        const budget = 100_000;
        const utilization = (100 * MIB + 64 * MIB + loaded.model.weights.sizeBytes + reserved +
          budget) / GIB;
        const kvBytes = Math.floor(utilization * GIB) - 100 * MIB - 64 * MIB -
          loaded.model.weights.sizeBytes - reserved;
        const numTokens = (Math.floor(kvBytes / bytesPerBlock) - 1) * blockSize;
        assert.ok(numTokens > 0 && numTokens < 256, `${numTokens} tokens`);
        assert.throws(
          () =>
            createLocalEngine(backend, loaded, { ...limits, gpuMemoryUtilization: utilization }, {
              memoryAtStart,
            }),
          (e: Error) => {
            assert.ok(e instanceof RangeError);
            assert.ok(
              e.message.startsWith(
                `--gpu-memory-utilization ${utilization} leaves no room for one sequence`,
              ),
              e.message,
            );
            assert.match(e.message, /× 1024.0 MiB total − 100.0 MiB in use at start − /);
            assert.ok(e.message.includes(`(${kvBytes} bytes), which holds ${numTokens} tokens`));
            assert.match(e.message, /maximum length 256/);
            assert.match(
              e.message,
              /raise --gpu-memory-utilization, free device memory or lower --max-model-len/,
            );
            return true;
          },
        );
        // Others hold more than the share: the budget is negative, still the same error.
        assert.throws(
          () =>
            createLocalEngine(backend, loaded, { ...limits, gpuMemoryUtilization: 0.5 }, {
              memoryAtStart: { totalBytes: GIB, freeBytes: 100 * MIB },
            }),
          /--gpu-memory-utilization 0.5 leaves no room .* 924.0 MiB in use at start/,
        );
      },
    );

    await t.step(
      "the engine refuses two budgets, no measurement, bad values and draft models",
      () => {
        const memoryAtStart = { totalBytes: GIB, freeBytes: GIB };
        const refuses = (options: Record<string, unknown>, message: RegExp, withMemory = true) =>
          assert.throws(
            () =>
              createLocalEngine(
                backend,
                loaded,
                { ...limits, ...options },
                withMemory ? { memoryAtStart } : {},
              ),
            message,
          );
        refuses(
          { gpuMemoryUtilization: 0.5, kvCacheMemoryBytes: 64 * MIB },
          /sized by --kv-cache-memory or by --gpu-memory-utilization, not both/,
        );
        refuses(
          { gpuMemoryUtilization: 0.5, numKvBlocks: 100 },
          /sized by numKvBlocks or by --gpu-memory-utilization, not both/,
        );
        refuses({ gpuMemoryUtilization: 0.5 }, /needs the memory measured before loading/, false);
        for (const bad of [0, 1.5, NaN]) {
          refuses({ gpuMemoryUtilization: bad }, /must be a fraction in \(0, 1\]/);
        }
        refuses(
          {
            gpuMemoryUtilization: 0.5,
            speculative: { model: "self", numSpeculativeTokens: 2 },
          },
          /cannot size the KV cache beside a draft model yet/,
        );
      },
    );
  } finally {
    loaded.release();
    backend.close();
  }
});

Deno.test("--gpu-memory-utilization through startLocalEngine measures the host before loading", async () => {
  // The CPU build's device is the host: with the whole of it allowed, whatever others hold, the
  // budget's terms must add up and the in-use term must come from a measurement at start-up.
  const local = await startLocalEngine({
    modelPath: MODEL,
    numThreads: 1,
    gpuMemoryUtilization: 1,
    // Large blocks keep the pool's bookkeeping small over a whole host's memory.
    blockSize: 256,
    maxModelLen: 256,
    maxNumBatchedTokens: 128,
    maxNumSeqs: 8,
  });
  try {
    const plan = local.kvMemoryPlan!;
    const info = local.backend.memoryInfo();
    assert.equal(plan.totalBytes, info.totalBytes);
    assert.ok(plan.inUseBytes > 0 && plan.inUseBytes < plan.totalBytes);
    assert.equal(plan.weightBytes, local.loaded.model.weights.sizeBytes);
    assert.equal(plan.reservedBytes, local.reservedBytes);
    assert.equal(
      plan.kvCacheMemoryBytes,
      plan.totalBytes - plan.inUseBytes - plan.weightBytes - plan.reservedBytes - plan.marginBytes,
    );
    const c = local.loaded.config;
    const bytesPerBlock = 2 * c.numLayers * c.numKvHeads * 256 * c.headDim * 4;
    assert.equal(local.numKvBlocks + 1, Math.floor(plan.kvCacheMemoryBytes / bytesPerBlock));
  } finally {
    local.release();
  }
});
