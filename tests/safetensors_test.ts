// Tests for the safetensors reader and writer: the real stories260K file, round trips, bad files.

import assert from "node:assert/strict";
import { ModelFormatError } from "../src/formats/errors.ts";
import {
  readSafetensors,
  readSafetensorsDir,
  type TensorData,
  writeSafetensors,
  writeSafetensorsSharded,
} from "../src/formats/safetensors.ts";
import { readTensorBytes, TensorFileReader, type TensorInfo } from "../src/formats/tensor.ts";

const HF_DIR = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

async function readAll(infos: Iterable<TensorInfo>): Promise<Map<string, Uint8Array>> {
  using reader = new TensorFileReader();
  const out = new Map<string, Uint8Array>();
  for (const info of infos) {
    const dst = new Uint8Array(info.byteLength);
    await reader.read(info, dst);
    out.set(info.name, dst);
  }
  return out;
}

// Builds a raw safetensors file from a header (object or literal text) and a data section.
function rawFile(header: unknown, data = new Uint8Array(0)): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const bytes = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  bytes.set(json, 8);
  bytes.set(data, 8 + json.byteLength);
  return bytes;
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

Deno.test("stories260K model.safetensors", async (t) => {
  const st = await readSafetensors(`${HF_DIR}/model.safetensors`);

  await t.step("lists tensors with dtype, shape and absolute offsets", () => {
    const embed = st.tensors.get("model.embed_tokens.weight");
    assert.ok(embed);
    assert.equal(embed.dtype, "F32");
    assert.deepEqual(embed.shape, [512, 64]);
    assert.equal(embed.byteLength, 512 * 64 * 4);
    assert.equal(embed.byteOffset, st.dataOffset);
    assert.deepEqual(st.tensors.get("model.layers.0.self_attn.k_proj.weight")?.shape, [32, 64]);
    assert.deepEqual(st.tensors.get("model.layers.4.mlp.down_proj.weight")?.shape, [64, 172]);
    assert.deepEqual(st.tensors.get("model.norm.weight")?.shape, [64]);
    assert.equal(st.dataOffset % 8, 0);
  });

  await t.step("readSafetensorsDir finds the single file", async () => {
    const tensors = await readSafetensorsDir(HF_DIR);
    assert.equal(tensors.size, st.tensors.size);
    assert.deepEqual(tensors.get("model.norm.weight"), st.tensors.get("model.norm.weight"));
  });

  await t.step("reads tensor bytes that look like trained weights", async () => {
    const info = st.tensors.get("model.norm.weight")!;
    const dst = new Uint8Array(info.byteLength);
    await readTensorBytes(info, dst);
    const values = new Float32Array(dst.buffer);
    assert.ok(values.every(Number.isFinite));
    assert.ok(values.some((v) => v !== 0));
  });
});

Deno.test("safetensors round trips", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_st_" });
  try {
    const tensors: TensorData[] = [
      { name: "a.f32", dtype: "F32", shape: [3, 5], data: randomBytes(60) },
      { name: "b.f16", dtype: "F16", shape: [7], data: randomBytes(14) },
      { name: "c.bf16", dtype: "BF16", shape: [2, 3, 4], data: randomBytes(48) },
      { name: "d.scalar", dtype: "F32", shape: [], data: randomBytes(4) },
      { name: "e.empty", dtype: "F16", shape: [0, 4], data: new Uint8Array(0) },
    ];

    await t.step("single file with metadata, all dtypes", async () => {
      const path = `${dir}/one.safetensors`;
      await writeSafetensors(path, tensors, { format: "pt", note: "héllo" });
      const st = await readSafetensors(path);
      assert.deepEqual(st.metadata, { format: "pt", note: "héllo" });
      assert.equal(st.dataOffset % 8, 0, "header is padded to 8 bytes");
      const header = await Deno.readFile(path);
      assert.equal(header[st.dataOffset - 1], 0x20);
      assert.deepEqual([...st.tensors.keys()], tensors.map((x) => x.name));
      const data = await readAll(st.tensors.values());
      for (const x of tensors) {
        const info = st.tensors.get(x.name)!;
        assert.equal(info.dtype, x.dtype);
        assert.deepEqual(info.shape, x.shape);
        assert.deepEqual(data.get(x.name), x.data);
      }
    });

    await t.step("sharded set with index json", async () => {
      const shardDir = `${dir}/sharded`;
      await Deno.mkdir(shardDir);
      const big = [
        { name: "w0", dtype: "F32", shape: [100], data: randomBytes(400) },
        { name: "w1", dtype: "F32", shape: [100], data: randomBytes(400) },
        { name: "w2", dtype: "BF16", shape: [300], data: randomBytes(600) },
        { name: "w3", dtype: "F16", shape: [10], data: randomBytes(20) },
      ] satisfies TensorData[];
      const names = await writeSafetensorsSharded(shardDir, big, { maxShardBytes: 700 });
      assert.deepEqual(names, [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
      ]);
      const index = JSON.parse(await Deno.readTextFile(`${shardDir}/model.safetensors.index.json`));
      assert.equal(index.metadata.total_size, 1420);
      assert.equal(index.weight_map.w1, names[1]);
      assert.equal(index.weight_map.w2, names[2]);
      const infos = await readSafetensorsDir(shardDir);
      assert.deepEqual([...infos.keys()].sort(), ["w0", "w1", "w2", "w3"]);
      assert.equal(infos.get("w3")!.file, `${shardDir}/${names[2]}`);
      const data = await readAll(infos.values());
      for (const x of big) assert.deepEqual(data.get(x.name), x.data);
    });

    await t.step("writer rejects bad arguments", async () => {
      await assert.rejects(
        writeSafetensors(`${dir}/bad.safetensors`, [
          { name: "x", dtype: "F32", shape: [4], data: new Uint8Array(15) },
        ]),
        RangeError,
      );
      await assert.rejects(
        writeSafetensors(`${dir}/bad.safetensors`, [
          // deno-lint-ignore no-explicit-any
          { name: "x", dtype: "I8" as any, shape: [4], data: new Uint8Array(4) },
        ]),
        TypeError,
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors errors name the file", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_st_bad_" });
  const ok = { x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  async function bad(name: string, bytes: Uint8Array, pattern: RegExp) {
    const path = `${dir}/${name}.safetensors`;
    await Deno.writeFile(path, bytes);
    await assertFormatError(readSafetensors(path), path, pattern);
  }
  try {
    await t.step("missing file", async () => {
      const path = `${dir}/nope.safetensors`;
      await assertFormatError(readSafetensors(path), path, /not found/);
    });
    await t.step("shorter than 8 bytes", () => bad("short", new Uint8Array(5), /at least 8 bytes/));
    await t.step("header length beyond file end", async () => {
      const bytes = rawFile(ok, new Uint8Array(8));
      new DataView(bytes.buffer).setBigUint64(0, 1n << 40n, true);
      await bad("hdrlen", bytes, /header length 1099511627776 goes beyond/);
    });
    await t.step("invalid JSON", () => bad("json", rawFile("{not json"), /invalid JSON/));
    await t.step("header not an object", () => bad("array", rawFile("[1,2]"), /object/));
    await t.step("unsupported dtypes are named", async () => {
      for (const dtype of ["I8", "F64", "Q9"]) {
        const header = { x: { dtype, shape: [2], data_offsets: [0, 2] } };
        await bad(
          `dtype_${dtype}`,
          rawFile(header, new Uint8Array(2)),
          new RegExp(`unsupported dtype "${dtype}"`),
        );
      }
    });
    await t.step(
      "data_offsets beyond data section",
      () => bad("range", rawFile(ok, new Uint8Array(4)), /go beyond the data section of 4 bytes/),
    );
    await t.step("data_offsets inconsistent with shape", () =>
      bad(
        "size",
        rawFile({ x: { dtype: "F16", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
        /expected 6 bytes, found data_offsets \[0, 8\]/,
      ));
    await t.step("malformed data_offsets", () =>
      bad(
        "offsets",
        rawFile({ x: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, new Uint8Array(8)),
        /begin <= end/,
      ));
    await t.step("bad shape", () =>
      bad(
        "shape",
        rawFile({ x: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, new Uint8Array(8)),
        /non-negative integers/,
      ));
    await t.step("overlapping tensors", () =>
      bad(
        "overlap",
        rawFile(
          { ...ok, y: { dtype: "F32", shape: [1], data_offsets: [4, 8] } },
          new Uint8Array(8),
        ),
        /overlaps/,
      ));
    await t.step(
      "bad __metadata__",
      () => bad("meta", rawFile({ __metadata__: { n: 1 } }), /__metadata__ value for "n"/),
    );
    await t.step("directory with no model files", async () => {
      const empty = `${dir}/empty`;
      await Deno.mkdir(empty);
      await assertFormatError(readSafetensorsDir(empty), empty, /found neither/);
    });
    await t.step("index naming a tensor its shard lacks", async () => {
      const sub = `${dir}/idx`;
      await Deno.mkdir(sub);
      await Deno.writeFile(`${sub}/s1.safetensors`, rawFile(ok, new Uint8Array(8)));
      const indexPath = `${sub}/model.safetensors.index.json`;
      await Deno.writeTextFile(
        indexPath,
        JSON.stringify({ weight_map: { x: "s1.safetensors", y: "s1.safetensors" } }),
      );
      await assertFormatError(readSafetensorsDir(sub), indexPath, /tensor y in s1.safetensors/);
      await Deno.writeTextFile(indexPath, JSON.stringify({ weight_map: { x: "s2.safetensors" } }));
      await assertFormatError(readSafetensorsDir(sub), `${sub}/s2.safetensors`, /not found/);
      await Deno.writeTextFile(indexPath, "{");
      await assertFormatError(readSafetensorsDir(sub), indexPath, /invalid JSON/);
    });
    await t.step("tensor bytes cut short after the header was read", async () => {
      const path = `${dir}/cut.safetensors`;
      await Deno.writeFile(path, rawFile(ok, new Uint8Array(8)));
      const info = (await readSafetensors(path)).tensors.get("x")!;
      await Deno.truncate(path, info.byteOffset + 3);
      await assertFormatError(readTensorBytes(info, new Uint8Array(8)), path, /found only 3/);
      await assert.rejects(readTensorBytes(info, new Uint8Array(7)), RangeError);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
