// Weights mapped from their file (the CPU build's default) give the same logits as weights copied
// into device memory, bit for bit, cost no dl_alloc, are released with the model, and cost less
// private (anonymous) resident memory than copies.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { type LoadedModel, loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";

const STORIES = new URL("../../shared/models/stories260K", import.meta.url).pathname;
const MiB = 1 << 20;

/** Greedy outputs of two prompts with every prompt and sampled token's top-5 logprobs. */
function run(backend: NativeBackend, loaded: LoadedModel): string {
  const llm = LLM.over(backend, loaded, { blockSize: 16, numKvBlocks: 32, maxModelLen: 256 });
  try {
    const outputs = [];
    for (const prompt of [[1, 2, 3, 4, 5, 6, 7, 8], [1, 40, 41, 42]]) {
      for (
        const out of llm.stream(prompt, {
          sampling: GREEDY,
          maxTokens: 12,
          logprobs: 5,
          promptLogprobs: 5,
          ignoreEos: true,
        })
      ) {
        outputs.push({ ids: out.newTokenIds, lp: out.logprobs, plp: out.promptLogprobs });
      }
    }
    return JSON.stringify(outputs);
  } finally {
    llm.release();
  }
}

/** Loads `path` copied and mapped: same logits, and (expectMapped) most bytes mapped. */
async function compareLoads(path: string, expectMapped: boolean): Promise<void> {
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    const copied = await loadModel(backend, path, { showProgress: false, mmap: false });
    const copyAllocs = backend.memoryStats().numAllocs;
    const copyOutput = run(backend, copied);
    assert.equal(copied.model.weights.mappedBytes, 0);
    assert.equal(copied.model.weights.mappings.length, 0);
    copied.release();

    const before = backend.memoryStats();
    const mapped = await loadModel(backend, path, { showProgress: false });
    const mapAllocs = backend.memoryStats().numAllocs - before.numAllocs;
    const weights = mapped.model.weights;
    assert.equal(weights.sizeBytes, copied.model.weights.sizeBytes);
    if (expectMapped) {
      // Embeddings, o and down are mapped; fused Q/K/V and gate/up are copied unless the file
      // holds their parts back to back.
      assert.ok(weights.mappedBytes > 0.3 * weights.sizeBytes, `${weights.mappedBytes} mapped`);
      // A mapped matrix is no dl_alloc block: the mapped load allocates fewer.
      assert.ok(mapAllocs < copyAllocs, `${mapAllocs} allocations mapped, ${copyAllocs} copied`);
    }
    assert.equal(run(backend, mapped), copyOutput);
    mapped.release();
    assert.equal(weights.mappings.length, 0, "release unmaps");
    const after = backend.memoryStats();
    assert.equal(after.numAllocs - after.numFrees, before.numAllocs - before.numFrees);
  } finally {
    backend.close();
  }
}

/** This process's private resident bytes (RssAnon): copies count, mapped file pages do not. */
function anonResidentBytes(): number {
  // Through cat: Deno 2.9 reads /proc only with --allow-all, and the test task allows --allow-run.
  const out = new Deno.Command("cat", { args: [`/proc/${Deno.pid}/status`] }).outputSync();
  const status = new TextDecoder().decode(out.stdout);
  const kb = /RssAnon:\s+(\d+) kB/.exec(status);
  assert.ok(kb, "RssAnon in /proc/self/status");
  return Number(kb[1]) * 1024;
}

Deno.test("mapped weights equal copied ones bit for bit", async (t) => {
  await t.step("stories260K GGUF (F32)", async () => {
    await compareLoads(`${STORIES}/stories260K-f32.gguf`, true);
  });
  await t.step("stories260K safetensors", async () => {
    await compareLoads(`${STORIES}/hf`, false);
  });
  const dir = await Deno.makeTempDir({ prefix: "denollm-mmap-" });
  try {
    await t.step("random tiny-qwen2 GGUF and safetensors (F16)", async () => {
      const made = await generateRandomModel("tiny-qwen2", {
        outDir: dir,
        seed: 5,
        dtype: "F16",
        formats: ["gguf", "hf"],
      });
      await compareLoads(made.ggufPath!, true);
      await compareLoads(made.hfDir!, false);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dl_map_file maps a range at any offset and refuses one past the end of the file", async () => {
  const backend = NativeBackend.open({ numThreads: 1 });
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeFile(file, new Uint8Array(10_000).map((_, i) => i % 251));
    const ptr = backend.mapFile(file, 4099, 5000)!;
    assert.notEqual(ptr, null);
    const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, 5000));
    assert.equal(view[0], 4099 % 251);
    assert.equal(view[4999], (4099 + 4999) % 251);
    backend.unmapFile(ptr, 5000);
    assert.throws(() => backend.mapFile(file, 5001, 5000), /holds 10000 bytes/);
    assert.throws(() => backend.mapFile(`${file}.missing`, 0, 1), /cannot open/);
  } finally {
    backend.close();
    await Deno.remove(file);
  }
});

Deno.test({
  name: "mapped F16 weights of smollm-135m's shape cost far less private memory than copies",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "denollm-mmap-rss-" });
    const backend = NativeBackend.open({ numThreads: 1 });
    try {
      const made = await generateRandomModel("smollm-135m", {
        outDir: dir,
        seed: 1,
        dtype: "F16",
        formats: ["gguf"],
      });
      // What the weights hold privately: RssAnon with them loaded minus after their release (the
      // loader's own garbage, GC'd at any time, would blur a before/after difference).
      const growth = async (mmap: boolean) => {
        const loaded = await loadModel(backend, made.ggufPath!, { showProgress: false, mmap });
        const held = anonResidentBytes();
        const { sizeBytes, mappedBytes } = loaded.model.weights;
        loaded.release();
        return { grown: held - anonResidentBytes(), sizeBytes, mappedBytes };
      };
      const copied = await growth(false);
      const mapped = await growth(true);
      assert.ok(copied.sizeBytes > 200 * MiB, `${copied.sizeBytes} bytes of weights`);
      assert.ok(
        copied.grown > 0.6 * copied.sizeBytes,
        `copying ${copied.sizeBytes / MiB} MiB grew RssAnon by ${copied.grown / MiB} MiB`,
      );
      // Only the fused Q/K/V and gate/up projections and the norms are copied when mapping.
      const copiedWhenMapped = mapped.sizeBytes - mapped.mappedBytes;
      assert.ok(
        mapped.grown < copiedWhenMapped + 0.5 * mapped.mappedBytes,
        `mapping ${mapped.mappedBytes / MiB} of ${mapped.sizeBytes / MiB} MiB grew RssAnon by ` +
          `${mapped.grown / MiB} MiB`,
      );
      assert.ok(mapped.grown < copied.grown - 0.3 * copied.sizeBytes);
    } finally {
      backend.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("a backend that cannot map (the CUDA build) gets copies", async () => {
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    let numTries = 0;
    backend.mapFile = () => (numTries++, null); // what DL_ERR_UNSUPPORTED gives
    const path = `${STORIES}/stories260K-f32.gguf`;
    const loaded = await loadModel(backend, path, { showProgress: false });
    assert.equal(numTries, 1, "the loader stops asking after the first refusal");
    assert.equal(loaded.model.weights.mappedBytes, 0);
    const output = run(backend, loaded);
    loaded.release();
    const copied = await loadModel(backend, path, { showProgress: false, mmap: false });
    assert.equal(run(backend, copied), output);
    copied.release();
  } finally {
    backend.close();
  }
});
