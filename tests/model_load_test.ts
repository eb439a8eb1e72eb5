// Bad model files get a ModelFormatError naming the file and what is wrong, through the same
// loader the CLI uses; good ones load with the config the file describes.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { ModelFormatError } from "../src/formats/errors.ts";
import { loadModel, openModelSource } from "../src/model/load.ts";

const MODEL_DIR = new URL("../../shared/models/stories260K", import.meta.url).pathname;
const HF_DIR = `${MODEL_DIR}/hf`;

/** A writable copy of the stories260K HF directory with one file changed. */
async function variant(change: (dir: string) => Promise<void>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "denollm-model-" });
  for await (const entry of Deno.readDir(HF_DIR)) {
    await Deno.copyFile(`${HF_DIR}/${entry.name}`, `${dir}/${entry.name}`);
    await Deno.chmod(`${dir}/${entry.name}`, 0o644);
  }
  await change(dir);
  return dir;
}

async function editConfig(dir: string, edit: (c: Record<string, unknown>) => void) {
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  edit(config);
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
}

async function expectLoadError(path: string, pattern: RegExp, file: string): Promise<void> {
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    await assert.rejects(
      () => loadModel(backend, path, { showProgress: false }),
      (error) => {
        assert.ok(error instanceof ModelFormatError, `expected ModelFormatError, got ${error}`);
        assert.match(error.message, pattern);
        assert.ok(error.message.includes(file), `message should name ${file}: ${error.message}`);
        return true;
      },
    );
  } finally {
    backend.close();
  }
}

Deno.test("stories260K configs agree between HF and GGUF", async () => {
  const hf = await openModelSource(HF_DIR);
  const gguf = await openModelSource(`${MODEL_DIR}/stories260K-f32.gguf`);
  assert.equal(hf.config.ropeStyle, "neox");
  assert.equal(gguf.config.ropeStyle, "interleaved");
  const { ropeStyle: _a, ...hfRest } = hf.config;
  const { ropeStyle: _b, ...ggufRest } = gguf.config;
  assert.equal(hfRest.numKvHeads, 4);
  assert.equal(hfRest.headDim, 8);
  assert.equal(Math.abs(hfRest.rmsNormEps - ggufRest.rmsNormEps) < 1e-9, true);
  assert.deepEqual({ ...hfRest, rmsNormEps: 0 }, { ...ggufRest, rmsNormEps: 0 });
});

Deno.test("bad model files are reported with the file and the problem", async (t) => {
  const dirs: string[] = [];
  try {
    await t.step("missing path", async () => {
      await expectLoadError(
        "/nonexistent/model",
        /no such file or directory/,
        "/nonexistent/model",
      );
    });
    await t.step("not a directory or .gguf", async () => {
      await expectLoadError(`${MODEL_DIR}/stories260K.bin`, /expected a Hugging Face/, ".bin");
    });
    await t.step("unsupported architecture", async () => {
      const dir = await variant((d) => editConfig(d, (c) => (c.model_type = "gpt_neox")));
      dirs.push(dir);
      await expectLoadError(dir, /unsupported architecture model_type="gpt_neox"/, "config.json");
    });
    await t.step("tensor shape that disagrees with config.json", async () => {
      const dir = await variant((d) => editConfig(d, (c) => (c.intermediate_size = 200)));
      dirs.push(dir);
      await expectLoadError(
        dir,
        /tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[172, 64\], expected \[200, 64\]/,
        "model.safetensors",
      );
    });
    await t.step("truncated safetensors", async () => {
      const dir = await variant(async (d) => {
        const file = await Deno.open(`${d}/model.safetensors`, { write: true });
        await file.truncate(500_000);
        file.close();
      });
      dirs.push(dir);
      await expectLoadError(dir, /go beyond the data section/, "model.safetensors");
    });
    await t.step("missing config.json", async () => {
      const dir = await variant((d) => Deno.remove(`${d}/config.json`));
      dirs.push(dir);
      await expectLoadError(dir, /cannot read the model config/, "config.json");
    });
    await t.step("GGUF with a bad magic", async () => {
      const dir = await Deno.makeTempDir({ prefix: "denollm-model-" });
      dirs.push(dir);
      const bytes = await Deno.readFile(`${MODEL_DIR}/stories260K-f32.gguf`);
      bytes.set(new TextEncoder().encode("GGML"), 0);
      await Deno.writeFile(`${dir}/bad.gguf`, bytes);
      await expectLoadError(`${dir}/bad.gguf`, /GGUF/, "bad.gguf");
    });
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});
