// Reads a distill-export file back as a trainer would, for the distill-export tests.

interface Tensor {
  dtype: string;
  shape: number[];
  data: Int32Array | Float32Array;
}

/** A minimal safetensors reader: the 8-byte header length, the JSON header, the data. */
export async function readExport(path: string) {
  const bytes = await Deno.readFile(path);
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  const tensors = new Map<string, Tensor>();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: [from, to] } = info as {
      dtype: string;
      shape: number[];
      data_offsets: [number, number];
    };
    const raw = bytes.slice(8 + headerLen + from, 8 + headerLen + to).buffer;
    tensors.set(name, {
      dtype,
      shape,
      data: dtype === "I32" ? new Int32Array(raw) : new Float32Array(raw),
    });
  }
  return { metadata: header.__metadata__ as Record<string, string>, tensors };
}
