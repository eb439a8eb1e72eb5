// Tests for the GGUF reader and writer: the real stories260K file, round trips, bad files.

import assert from "node:assert/strict";
import { ModelFormatError } from "../src/formats/errors.ts";
import {
  gguf,
  ggufBool,
  ggufNumber,
  ggufNumberArray,
  ggufString,
  ggufStringArray,
  type GgufTensorData,
  readGguf,
  writeGguf,
} from "../src/formats/gguf.ts";
import { readSafetensors } from "../src/formats/safetensors.ts";
import { TensorFileReader, type TensorInfo } from "../src/formats/tensor.ts";

const MODEL_DIR = new URL("../../shared/models/stories260K", import.meta.url).pathname;
const GGUF_PATH = `${MODEL_DIR}/stories260K-f32.gguf`;

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

async function readBytes(reader: TensorFileReader, info: TensorInfo): Promise<Uint8Array> {
  const dst = new Uint8Array(info.byteLength);
  await reader.read(info, dst);
  return dst;
}

async function assertFormatError(
  promise: Promise<unknown>,
  file: string,
  pattern: RegExp,
): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ModelFormatError, `expected ModelFormatError, got ${err}`);
    assert.equal(err.file, file);
    assert.ok(err.message.includes(file), `message should name the file: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("stories260K GGUF", async (t) => {
  const g = await readGguf(GGUF_PATH);

  await t.step("header and metadata", () => {
    assert.equal(g.version, 3);
    assert.equal(g.alignment, 32);
    assert.equal(g.dataOffset % 32, 0);
    assert.equal(ggufString(g, "general.architecture"), "llama");
    assert.equal(ggufNumber(g, "llama.embedding_length"), 64);
    assert.equal(ggufNumber(g, "llama.block_count"), 5);
    assert.equal(ggufNumber(g, "llama.attention.head_count_kv"), 4);
    assert.ok(Math.abs(ggufNumber(g, "llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-9);
    assert.equal(ggufNumber(g, "llama.rope.scaling.factor", 1), 1);
    assert.equal(ggufBool(g, "tokenizer.ggml.add_bos_token"), true);
    const tokens = ggufStringArray(g, "tokenizer.ggml.tokens");
    assert.equal(tokens.length, 512);
    assert.deepEqual(tokens.slice(0, 3), ["<unk>", "<s>", "</s>"]);
    assert.equal(ggufNumberArray(g, "tokenizer.ggml.token_type").length, 512);
  });

  await t.step("accessors throw ModelFormatError naming the key", () => {
    assert.throws(() => ggufNumber(g, "llama.nope"), (e: unknown) => {
      return e instanceof ModelFormatError && /missing metadata key llama\.nope/.test(e.message) &&
        e.message.includes(GGUF_PATH);
    });
    assert.throws(
      () => ggufNumber(g, "general.architecture"),
      /expected metadata general\.architecture to be a number, found str/,
    );
    assert.throws(
      () => ggufStringArray(g, "tokenizer.ggml.scores"),
      /to be an array of str, found array of f32/,
    );
  });

  await t.step("tensor shapes are in PyTorch order", () => {
    assert.equal(g.tensors.size, 47);
    const embd = g.tensors.get("token_embd.weight")!;
    assert.equal(embd.dtype, "F32");
    assert.deepEqual(embd.shape, [512, 64]);
    assert.deepEqual(g.tensors.get("blk.0.attn_k.weight")?.shape, [32, 64]);
    assert.deepEqual(g.tensors.get("blk.0.ffn_down.weight")?.shape, [64, 172]);
    assert.deepEqual(g.tensors.get("blk.4.ffn_norm.weight")?.shape, [64]);
    for (const info of g.tensors.values()) assert.equal((info.byteOffset - g.dataOffset) % 32, 0);
  });

  await t.step("unpermuted tensors match the HF safetensors bytes", async () => {
    const hf = await readSafetensors(`${MODEL_DIR}/hf/model.safetensors`);
    using reader = new TensorFileReader();
    const pairs = [
      ["token_embd.weight", "model.embed_tokens.weight"],
      ["blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"],
      ["blk.2.ffn_down.weight", "model.layers.2.mlp.down_proj.weight"],
      ["blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"],
      ["output_norm.weight", "model.norm.weight"],
    ];
    for (const [ggufName, hfName] of pairs) {
      const a = await readBytes(reader, g.tensors.get(ggufName)!);
      const b = await readBytes(reader, hf.tensors.get(hfName)!);
      assert.deepEqual(g.tensors.get(ggufName)!.shape, hf.tensors.get(hfName)!.shape);
      assert.ok(a.length > 0 && a.every((x, i) => x === b[i]), `${ggufName} != ${hfName}`);
    }
  });

  await t.step("rewriting it with writeGguf reproduces the file byte for byte", async () => {
    const dir = await Deno.makeTempDir({ prefix: "denollm_gguf_copy_" });
    try {
      using reader = new TensorFileReader();
      const tensors: GgufTensorData[] = [];
      for (const info of g.tensors.values()) {
        tensors.push({ ...info, data: await readBytes(reader, info) });
      }
      const path = `${dir}/copy.gguf`;
      await writeGguf(path, { metadata: g.metadata, tensors });
      const original = await Deno.readFile(GGUF_PATH);
      const copy = await Deno.readFile(path);
      assert.equal(copy.byteLength, original.byteLength);
      assert.ok(copy.every((x, i) => x === original[i]));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

Deno.test("GGUF round trips", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_gguf_" });
  try {
    const metadata = [
      ["t.u8", gguf.u8(255)],
      ["t.i8", gguf.i8(-128)],
      ["t.u16", gguf.u16(65535)],
      ["t.i16", gguf.i16(-32768)],
      ["t.u32", gguf.u32(4294967295)],
      ["t.i32", gguf.i32(-2147483648)],
      ["t.f32", gguf.f32(1.5)],
      ["t.f64", gguf.f64(Math.PI)],
      ["t.u64", gguf.u64(0xffffffffffffffffn)],
      ["t.i64", gguf.i64(-(2n ** 63n))],
      ["t.bool", gguf.bool(false)],
      ["t.str", gguf.str("héllo ✓")],
      ["t.empty_str", gguf.str("")],
      ["t.arr_str", gguf.arr("str", ["a", "", "ü"])],
      ["t.arr_f32", gguf.arr("f32", [0.5, -2])],
      ["t.arr_i32", gguf.arr("i32", [1, -1])],
      ["t.arr_u8", gguf.arr("u8", [0, 255])],
      ["t.arr_i64", gguf.arr("i64", [-5, 2n ** 40n])],
      ["t.arr_bool", gguf.arr("bool", [true, false])],
      ["t.arr_f64", gguf.arr("f64", [])],
      ["t.arr_arr", gguf.arr("arr", [gguf.arr("u16", [1, 2]), gguf.arr("str", ["x"])])],
    ] as const;
    const tensors: GgufTensorData[] = [
      { name: "a", dtype: "F32", shape: [3, 5], data: randomBytes(60) },
      { name: "b", dtype: "F16", shape: [7], data: randomBytes(14) },
      { name: "c", dtype: "BF16", shape: [2, 3, 4], data: randomBytes(48) },
      { name: "d", dtype: "F32", shape: [1, 2, 3, 4], data: randomBytes(96) },
    ];

    for (const alignment of [32, 64]) {
      await t.step(`all metadata types and dtypes, alignment ${alignment}`, async () => {
        const path = `${dir}/rt${alignment}.gguf`;
        await writeGguf(path, { metadata, tensors, alignment });
        const g = await readGguf(path);
        assert.equal(g.version, 3);
        assert.equal(g.alignment, alignment);
        for (const [key, value] of metadata) {
          const read = g.metadata.get(key);
          if (value.type === "f32") {
            assert.equal(read?.value, Math.fround(value.value));
          } else {
            assert.deepEqual(read, value);
          }
        }
        assert.equal(g.metadata.has("general.alignment"), alignment !== 32);
        using reader = new TensorFileReader();
        for (const x of tensors) {
          const info = g.tensors.get(x.name)!;
          assert.equal(info.dtype, x.dtype);
          assert.deepEqual(info.shape, x.shape);
          assert.equal((info.byteOffset - g.dataOffset) % alignment, 0);
          assert.deepEqual(await readBytes(reader, info), x.data);
        }
      });
    }

    await t.step("value constructors and writer reject bad arguments", async () => {
      assert.throws(() => gguf.u8(256), RangeError);
      assert.throws(() => gguf.u32(1.5), RangeError);
      assert.throws(() => gguf.arr("i8", [200]), RangeError);
      assert.throws(() => gguf.u64(-1), RangeError);
      // deno-lint-ignore no-explicit-any
      assert.throws(() => gguf.str(3 as any), TypeError);
      const path = `${dir}/bad.gguf`;
      await assert.rejects(writeGguf(path, { metadata: [], tensors, alignment: 24 }), RangeError);
      await assert.rejects(
        writeGguf(path, {
          metadata: [],
          tensors: [{ name: "x", dtype: "F32", shape: [2], data: new Uint8Array(7) }],
        }),
        RangeError,
      );
      await assert.rejects(
        writeGguf(path, { metadata: [["k", gguf.u8(1)], ["k", gguf.u8(2)]], tensors: [] }),
        RangeError,
      );
    });

    await t.step("a 200k-token vocabulary outgrows the header buffers", async () => {
      const path = `${dir}/vocab.gguf`;
      const tokens = Array.from({ length: 200_000 }, (_, i) => `tok_${i}_ĠĠ`);
      const scores = tokens.map((_, i) => i);
      await writeGguf(path, {
        metadata: [
          ["tokenizer.ggml.tokens", gguf.arr("str", tokens)],
          ["tokenizer.ggml.scores", gguf.arr("f32", scores)],
          ["long", gguf.str("x".repeat(3 << 20))],
        ],
        tensors: [],
      });
      const g = await readGguf(path);
      assert.deepEqual(ggufStringArray(g, "tokenizer.ggml.tokens"), tokens);
      assert.deepEqual(ggufNumberArray(g, "tokenizer.ggml.scores"), scores);
      assert.equal(ggufString(g, "long").length, 3 << 20);
    });

    await t.step("a larger model writes quickly", async () => {
      const path = `${dir}/big.gguf`;
      const big = [0, 1, 2, 3].map((i): GgufTensorData => ({
        name: `w${i}`,
        dtype: "F16",
        shape: [4096, 4096],
        data: new Uint8Array(4096 * 4096 * 2),
      }));
      const start = performance.now();
      await writeGguf(path, {
        metadata: [["general.architecture", gguf.str("llama")]],
        tensors: big,
      });
      const elapsedMs = performance.now() - start;
      assert.ok(elapsedMs < 5000, `writing 128 MiB took ${elapsedMs} ms`);
      const g = await readGguf(path);
      assert.deepEqual(g.tensors.get("w3")?.shape, [4096, 4096]);
      await Deno.remove(path);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GGUF errors name the file", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_gguf_bad_" });
  // A valid file with no metadata and one 1-D F32 tensor "x" of 4 elements; header layout:
  // magic 0, version 4, n_tensors 8, n_kv 16, name len 24, name 32, n_dims 33, ne0 37, type 45,
  // offset 49, data at 64.
  const base = `${dir}/base.gguf`;
  await writeGguf(base, {
    metadata: [],
    tensors: [{ name: "x", dtype: "F32", shape: [4], data: new Uint8Array(16) }],
  });
  const good = await Deno.readFile(base);

  const bad = (name: string, edit: Edit, pattern: RegExp) =>
    assertBadEdit(`${dir}/${name}.gguf`, good, edit, pattern);

  try {
    await t.step("the crafted base file is valid", async () => {
      const g = await readGguf(base);
      assert.equal(g.dataOffset, 64);
      assert.deepEqual(g.tensors.get("x")?.shape, [4]);
    });
    await t.step("missing file", async () => {
      const path = `${dir}/nope.gguf`;
      await assertFormatError(readGguf(path), path, /not found/);
    });
    await t.step("bad magic", () =>
      bad("magic", (b) => {
        b.set([0x47, 0x47, 0x4d, 0x4c]);
      }, /expected "GGUF", found bytes \[47 47 4d 4c\]/));
    await t.step("empty file", () => bad("empty", () => new Uint8Array(0), /found bytes \[\]/));
    await t.step("unsupported versions", async () => {
      await bad("v1", (_, v) => v.setUint32(4, 1, true), /unsupported GGUF version 1; expected 2/);
      await bad("be", (_, v) => v.setUint32(4, 3, false), /big-endian/);
    });
    await t.step("version 2 is accepted", async () => {
      const bytes = good.slice();
      new DataView(bytes.buffer).setUint32(4, 2, true);
      const path = `${dir}/v2.gguf`;
      await Deno.writeFile(path, bytes);
      assert.equal((await readGguf(path)).version, 2);
    });
    await t.step("truncated header", () => bad("trunc", (b) => b.slice(0, 40), /truncated file/));
    await t.step(
      "tensor data beyond file end",
      () => bad("data", (b) => b.slice(0, 72), /tensor data beyond file end: tensor x/),
    );
    await t.step(
      "absurd tensor count",
      () => bad("ntensors", (_, v) => v.setBigUint64(8, 1n << 60n, true), /absurd tensor count/),
    );
    await t.step(
      "absurd metadata count",
      () =>
        bad(
          "nkv",
          (_, v) => v.setBigUint64(16, 1n << 50n, true),
          /absurd metadata key\/value count/,
        ),
    );
    await t.step(
      "absurd string length",
      () =>
        bad("strlen", (_, v) => v.setBigUint64(24, 1n << 62n, true), /absurd tensor name length/),
    );
    await t.step("unsupported tensor types are named", async () => {
      await bad(
        "iq2",
        (_, v) => v.setUint32(45, 16, true),
        /unsupported tensor type IQ2_XXS \(id 16\) for tensor x/,
      );
      await bad("q8_1", (_, v) => v.setUint32(45, 9, true), /Q8_1 \(id 9\)/);
    });
    await t.step(
      "too many dimensions",
      () => bad("dims", (_, v) => v.setUint32(33, 5, true), /at most 4 dimensions/),
    );
    await t.step(
      "misaligned tensor offset",
      () => bad("misaligned", (_, v) => v.setBigUint64(49, 4n, true), /multiple of 32/),
    );

    // Metadata errors need a file with one key/value: key "k" then type at 33, value at 37.
    const kvPath = `${dir}/kv.gguf`;
    await writeGguf(kvPath, { metadata: [["k", gguf.arr("str", ["ab"])]], tensors: [] });
    const kvGood = await Deno.readFile(kvPath);
    const badKv = (name: string, edit: Edit, pattern: RegExp) =>
      assertBadEdit(`${dir}/${name}.gguf`, kvGood, edit, pattern);
    await t.step(
      "unknown metadata value type",
      () =>
        badKv("vtype", (_, v) => v.setUint32(33, 13, true), /value type id 0\.\.12 .* found 13/),
    );
    await t.step(
      "absurd array length",
      () =>
        badKv(
          "arrlen",
          (_, v) => v.setBigUint64(41, 1n << 40n, true),
          /absurd metadata k array length/,
        ),
    );
    await t.step(
      "absurd string length inside an array",
      () =>
        badKv("arrstr", (_, v) => v.setBigUint64(49, 1n << 40n, true), /absurd metadata k length/),
    );
    await t.step("bad general.alignment", async () => {
      const path = `${dir}/align.gguf`;
      const bytes = kvGood.slice(0, 24);
      const w = new Uint8Array([...bytes, ...encodeKv("general.alignment", 4, [24, 0, 0, 0])]);
      new DataView(w.buffer).setBigUint64(16, 1n, true);
      await Deno.writeFile(path, w);
      await assertFormatError(readGguf(path), path, /general\.alignment to be a u32 power of two/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

type Edit = (bytes: Uint8Array, view: DataView) => Uint8Array | void;

// Writes an edited copy of `source` to `path` and checks readGguf rejects it as expected.
async function assertBadEdit(path: string, source: Uint8Array, edit: Edit, pattern: RegExp) {
  const bytes = source.slice();
  await Deno.writeFile(path, edit(bytes, new DataView(bytes.buffer)) ?? bytes);
  await assertFormatError(readGguf(path), path, pattern);
}

// Encodes one raw metadata key/value: key string, type id, then the value's bytes.
function encodeKv(key: string, typeId: number, value: number[]): Uint8Array {
  const name = new TextEncoder().encode(key);
  const out = new Uint8Array(8 + name.byteLength + 4 + value.length);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(name.byteLength), true);
  out.set(name, 8);
  view.setUint32(8 + name.byteLength, typeId, true);
  out.set(value, 12 + name.byteLength);
  return out;
}
