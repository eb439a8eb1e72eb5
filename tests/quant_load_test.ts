// Quantized GGUF tensors load as they are: every GGUF format of the table, mixed files (a
// projection's parts in different formats, a quantized tied embedding), byte for byte on the
// device; and bad quantized files give errors naming the tensor, its type and shape.
import assert from "node:assert/strict";
import { FORMATS, matrixBytes } from "../ffi/formats.ts";
import { DType, NativeBackend } from "../ffi/native.ts";
import { ModelFormatError } from "../src/formats/errors.ts";
import { type GgufTensorData, readGguf, writeGguf } from "../src/formats/gguf.ts";
import { type DType as TensorDType, TensorFileReader } from "../src/formats/tensor.ts";
import { openModelSource } from "../src/model/load.ts";
import { type DeviceMatrix, loadWeights, releaseWeights } from "../src/model/weights.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";

const GGUF_TYPES = FORMATS.filter((f) => f.ggmlType >= 0);

/** Deterministic bytes (xorshift), so a failure replays. */
function bytesOf(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed | 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function tensor(name: string, dtype: TensorDType, shape: number[], seed = 1): GgufTensorData {
  const info = FORMATS.find((f) => f.ggufName === dtype)!;
  return { name, dtype, shape, data: bytesOf(matrixBytes(info.id, shape[0], shape[1]), seed) };
}

async function rejectsNaming(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ModelFormatError, `expected ModelFormatError, got ${err}`);
    assert.match(err.message, pattern);
    return true;
  });
}

/** Byte offset of the type field of tensor `name` in a GGUF header (after its name and dims). */
function typeFieldOffset(bytes: Uint8Array, name: string, numDims: number): number {
  const needle = new TextEncoder().encode(name);
  for (let i = 0; i + needle.length <= bytes.length; i++) {
    if (needle.every((b, j) => bytes[i + j] === b)) return i + needle.length + 4 + 8 * numDims;
  }
  throw new Error(`tensor name ${name} not in the header`);
}

Deno.test("every GGUF format of the table reads back its exact bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_quant_formats_" });
  try {
    const path = `${dir}/all.gguf`;
    // Three rows of 512 columns: two blocks of the K formats, sixteen of the 32-element ones.
    const tensors = GGUF_TYPES.map((f, i) => tensor(`t_${f.name}`, f.ggufName, [3, 512], i + 1));
    await writeGguf(path, { metadata: [], tensors });
    const g = await readGguf(path);
    using reader = new TensorFileReader();
    for (const t of tensors) {
      const info = g.tensors.get(t.name)!;
      assert.equal(info.dtype, t.dtype);
      assert.deepEqual(info.shape, [3, 512]);
      assert.equal(info.byteLength, t.data.byteLength, `${t.dtype} byte size`);
      const back = new Uint8Array(info.byteLength);
      await reader.read(info, back);
      assert.deepEqual(back, t.data, `${t.dtype} bytes`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad quantized GGUFs name the tensor, its type and shape", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_quant_bad_" });
  const write = async (name: string, tensors: GgufTensorData[]) => {
    const path = `${dir}/${name}.gguf`;
    await writeGguf(path, { metadata: [], tensors });
    return { path, bytes: await Deno.readFile(path) };
  };
  const edited = async (name: string, bytes: Uint8Array, edit: (v: DataView) => void) => {
    const copy = bytes.slice();
    edit(new DataView(copy.buffer));
    const path = `${dir}/${name}.gguf`;
    await Deno.writeFile(path, copy);
    return path;
  };
  try {
    // tensor_aa: Q4_0 [2, 64] = 72 bytes, padded to 96; then tensor_bb: Q6_K [1, 256] = 210 bytes.
    const base = await write("base", [
      tensor("tensor_aa", "Q4_0", [2, 64]),
      tensor("tensor_bb", "Q6_K", [1, 256]),
    ]);
    const typeAt = typeFieldOffset(base.bytes, "tensor_aa", 2);
    const dimAt = typeAt - 16; // ne[0], the row length

    await t.step("the crafted file is valid", async () => {
      const g = await readGguf(base.path);
      assert.equal(g.tensors.get("tensor_aa")?.byteLength, 72);
      assert.equal(g.tensors.get("tensor_bb")?.byteLength, 210);
    });
    await t.step("a type whose blocks need more bytes than the data has", async () => {
      const path = await edited("q8", base.bytes, (v) => v.setUint32(typeAt, 8, true));
      await rejectsNaming(
        readGguf(path),
        /tensor tensor_aa is Q8_0 \[2,64\] so expected 136 bytes \(160 with padding\), found 96 before the next tensor tensor_bb/,
      );
    });
    await t.step("a type whose blocks need fewer bytes than the data has", async () => {
      // F16 data [2, 64] = 256 bytes declared Q4_0 (72 bytes): llama.cpp would read garbage.
      const f16 = await write("f16", [
        tensor("tensor_aa", "F16", [2, 64]),
        tensor("tensor_bb", "Q6_K", [1, 256]),
      ]);
      const at = typeFieldOffset(f16.bytes, "tensor_aa", 2);
      const path = await edited("f16_as_q4", f16.bytes, (v) => v.setUint32(at, 2, true));
      await rejectsNaming(
        readGguf(path),
        /tensor tensor_aa is Q4_0 \[2,64\] so expected 72 bytes \(96 with padding\), found 256/,
      );
    });
    await t.step("rows that are not whole blocks", async () => {
      const path = await edited("rows", base.bytes, (v) => v.setBigUint64(dimAt, 48n, true));
      await rejectsNaming(
        readGguf(path),
        /tensor tensor_aa has a shape \[2,48\] its type Q4_0 cannot store \(rows must be whole 32-element blocks\)/,
      );
    });
    await t.step("an unsupported type lists the supported ones", async () => {
      const path = await edited("iq4nl", base.bytes, (v) => v.setUint32(typeAt, 20, true));
      const supported = GGUF_TYPES.map((f) => f.ggufName).join(", ");
      await rejectsNaming(
        readGguf(path),
        /unsupported tensor type IQ4_NL \(id 20\) for tensor tensor_aa \[2,64\]/,
      );
      await rejectsNaming(readGguf(path), new RegExp(`supported types: ${supported}$`));
    });
    await t.step("a file cut inside a quantized tensor", async () => {
      const path = `${dir}/cut.gguf`;
      const bb = (await readGguf(base.path)).tensors.get("tensor_bb")!;
      await Deno.writeFile(path, base.bytes.subarray(0, bb.byteOffset + 110));
      await rejectsNaming(
        readGguf(path),
        /tensor data beyond file end: tensor tensor_bb, Q6_K \[1,256\], needs 210 bytes from offset \d+, found 110/,
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// tiny-qwen2 (hidden 64, 4 heads, 2 KV heads, ffn 160, QKV bias, tied embeddings) rewritten with
// llama.cpp-style mixes: layer 0 gives Q, K and V two formats, gate and up two more; layer 1 stays
// F32; the tied embedding is Q8_0. Block bytes are random: loading never looks inside a block.
const MIXED: Record<string, TensorDType> = {
  "token_embd.weight": "Q8_0",
  "blk.0.attn_q.weight": "Q4_0",
  "blk.0.attn_k.weight": "Q8_0",
  "blk.0.attn_v.weight": "Q8_0",
  "blk.0.attn_output.weight": "Q5_0",
  "blk.0.ffn_gate.weight": "Q5_1",
  "blk.0.ffn_up.weight": "Q4_1",
  "blk.0.ffn_down.weight": "Q8_0",
  "blk.1.attn_q.weight": "F16",
};

async function writeMixed(dir: string): Promise<{ path: string; data: Map<string, Uint8Array> }> {
  const made = await generateRandomModel("tiny-qwen2", { outDir: dir, seed: 3, formats: ["gguf"] });
  const g = await readGguf(made.ggufPath!);
  using reader = new TensorFileReader();
  const tensors: GgufTensorData[] = [];
  let seed = 10;
  for (const info of g.tensors.values()) {
    const dtype = MIXED[info.name] ?? info.dtype;
    if (dtype === info.dtype) {
      const data = new Uint8Array(info.byteLength);
      await reader.read(info, data);
      tensors.push({ name: info.name, dtype, shape: info.shape, data });
    } else {
      tensors.push(tensor(info.name, dtype, info.shape, seed++));
    }
  }
  const path = `${dir}/mixed.gguf`;
  await writeGguf(path, { metadata: g.metadata, tensors });
  return { path, data: new Map(tensors.map((t) => [t.name, t.data])) };
}

function download(backend: NativeBackend, m: DeviceMatrix): Uint8Array {
  const out = new Uint8Array(matrixBytes(m.dtype, m.rows, m.cols));
  backend.download(out, m.ptr);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

Deno.test("a mixed quantized GGUF loads as it is, one projection part per format run", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_quant_mixed_" });
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    const { path, data } = await writeMixed(dir);
    const source = await openModelSource(path);
    const weights = await loadWeights(backend, source.config, source.tensors, { repack: false });
    try {
      const [l0, l1] = weights.layers;
      await t.step("formats and parts", () => {
        assert.equal(weights.embed.dtype, DType.Q8_0);
        assert.equal(weights.lmHead, weights.embed, "tied: the LM head is the embedding");
        assert.deepEqual(l0.qkv.parts.map((p) => [p.dtype, p.rows]), [
          [DType.Q4_0, 64],
          [DType.Q8_0, 64],
        ]);
        assert.deepEqual(l0.gateUp.parts.map((p) => [p.dtype, p.rows]), [
          [DType.Q5_1, 160],
          [DType.Q4_1, 160],
        ]);
        assert.equal(l0.o.dtype, DType.Q5_0);
        assert.equal(l0.down.dtype, DType.Q8_0);
        assert.deepEqual(l1.qkv.parts.map((p) => [p.dtype, p.rows]), [
          [DType.F16, 64],
          [DType.F32, 64],
        ]);
        assert.deepEqual(l1.gateUp.parts.map((p) => p.dtype), [DType.F32]);
      });
      await t.step("device bytes are the file's bytes", () => {
        const f = (name: string) => data.get(name)!;
        assert.deepEqual(download(backend, weights.embed), f("token_embd.weight"));
        assert.deepEqual(download(backend, l0.qkv.parts[0]), f("blk.0.attn_q.weight"));
        assert.deepEqual(
          download(backend, l0.qkv.parts[1]),
          concat(f("blk.0.attn_k.weight"), f("blk.0.attn_v.weight")),
        );
        assert.deepEqual(download(backend, l0.gateUp.parts[1]), f("blk.0.ffn_up.weight"));
        assert.deepEqual(download(backend, l0.down), f("blk.0.ffn_down.weight"));
      });
      await t.step("norms and biases are f32 vectors", () => {
        const norm = new Uint8Array(64 * 4);
        backend.download(norm, l0.attnNorm);
        assert.deepEqual(norm, f32Bytes(data, "blk.0.attn_norm.weight"));
        const bias = new Uint8Array(128 * 4);
        backend.download(bias, l0.qkvBias!);
        assert.deepEqual(
          bias,
          concat(
            f32Bytes(data, "blk.0.attn_q.bias"),
            f32Bytes(data, "blk.0.attn_k.bias"),
            f32Bytes(data, "blk.0.attn_v.bias"),
          ),
        );
      });
      await t.step("the weights take the file's bytes, not their F32 size", () => {
        let fileBytes = 0;
        for (const bytes of data.values()) fileBytes += bytes.byteLength;
        assert.equal(weights.sizeBytes, fileBytes);
      });
    } finally {
      releaseWeights(backend, weights);
    }

    await t.step("a file truncated after its header was read fails naming the tensor", async () => {
      const cut = `${dir}/cut.gguf`;
      await Deno.copyFile(path, cut);
      const opened = await openModelSource(cut);
      const embed = opened.tensors.get("model.embed_tokens.weight")!;
      await Deno.truncate(cut, embed.byteOffset + 1000);
      await rejectsNaming(
        loadWeights(backend, opened.config, opened.tensors),
        /expected \d+ bytes for tensor model\.embed_tokens\.weight at offset \d+, found only 1000/,
      );
      assert.deepEqual(backend.memoryStats().numAllocs - backend.memoryStats().numFrees, 0);
    });
  } finally {
    backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});

function f32Bytes(data: Map<string, Uint8Array>, name: string): Uint8Array {
  return data.get(name)!;
}

Deno.test("Q4_0 matrices load repacked to Q4_0_R16 on the CPU build, their bytes the file's rearranged", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_quant_repack_" });
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    const { path, data } = await writeMixed(dir);
    const source = await openModelSource(path);
    const before = backend.memoryStats();
    const weights = await loadWeights(backend, source.config, source.tensors);
    const after = backend.memoryStats();
    try {
      // The plain copy or mapping is released once repacked: only the repacked matrix is held.
      const held = (after.numAllocs - before.numAllocs) - (after.numFrees - before.numFrees);
      assert.equal(held, weights.allocations.length);
      const q = weights.layers[0].qkv.parts[0];
      const isQ = (p: Deno.PointerObject) => Deno.UnsafePointer.equals(p, q.ptr);
      assert.ok(weights.allocations.some(isQ) && !weights.mappings.some((m) => isQ(m.ptr)));
      assert.deepEqual([q.dtype, q.rows, q.cols], [DType.Q4_0_R16, 64, 64]);
      assert.equal(
        weights.layers[0].qkv.parts[1].dtype,
        DType.Q8_0,
        "other formats stay as stored",
      );
      const plain = backend.alloc(matrixBytes(DType.Q4_0, q.rows, q.cols));
      try {
        const args = { dst: plain, dstDtype: DType.Q4_0, src: q.ptr, srcDtype: DType.Q4_0_R16 };
        assert.ok(backend.repack({ ...args, rows: q.rows, cols: q.cols }));
        assert.deepEqual(
          download(backend, { ...q, ptr: plain, dtype: DType.Q4_0 }),
          data.get("blk.0.attn_q.weight"),
        );
      } finally {
        backend.free(plain);
      }
    } finally {
      releaseWeights(backend, weights);
    }
  } finally {
    backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});
