// deno task bench:quant-quality: KL divergence and same-top-token rate of every quantized type
// against the F32 model over a fixed text (teacher forcing), ours next to llama.cpp's on the same
// files: our quantizer's GGUFs and llama.cpp's, each scored by both engines, plus our
// --quantization int8|int4 on load. Prints a markdown table (docs/quantization.md).
import { parseArgs } from "node:util";
import { LLM } from "../src/engine/llm.ts";
import { applyOmpEnvDefaults } from "../src/engine/threads.ts";
import { openModelSource } from "../src/model/load.ts";
import { getPreset } from "../tools/random_model/presets.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";
import { NativeBackend } from "../ffi/native.ts";
import { presetNames, quantPreset } from "../tools/quantize/recipe.ts";
import { quantizeGguf } from "../tools/quantize/quantize_gguf.ts";
import { llamaLogits, llamaPeerMissing, llamaQuantize } from "../tools/quantize/llama_peer.ts";
import { calibrate } from "../tools/calibrate.ts";

/**
 * The W8A8 and 2:4 rows (issue 11), each a load-time configuration of the F32 model: its flags.
 * The calibration (SmoothQuant factors, outlier channels, Wanda norms) comes from deno task
 * calibrate over the first 2048 tokens of the same text, so these rows are in-sample.
 */
const COMPRESS: Record<string, { quantization?: string; sparsity?: string; calibrated: boolean }> =
  {
    "int8": { quantization: "int8", calibrated: false },
    "w8a8": { quantization: "w8a8", calibrated: false },
    "w8a8-smoothquant": { quantization: "w8a8", calibrated: true },
    "w8a8-mixed": { quantization: "w8a8-mixed", calibrated: true },
    "2:4-magnitude": { sparsity: "2:4-magnitude", calibrated: false },
    "2:4-wanda": { sparsity: "2:4-wanda", calibrated: true },
    "2:4+int8": { sparsity: "2:4-magnitude", quantization: "int8", calibrated: false },
    "2:4+w8a8": { sparsity: "2:4-wanda", quantization: "w8a8", calibrated: true },
    "2:4+int4": { sparsity: "2:4-wanda", quantization: "int4", calibrated: true },
  };

const ROOT = new URL("../", import.meta.url).pathname;
const TEXT = `${ROOT}bench/fixtures/aesop.txt`;
const WORK = `${ROOT}.bench/quant_quality`;

const USAGE = `usage: deno task bench:quant-quality [--models stories260k,smollm-135m]
  [--types ${presetNames()}] [--on-load int8,int4] [--min-tokens 2000] [--window 512]
  [--threads 1] [--smollm-vocab 1024] [--compress ${Object.keys(COMPRESS).join(",")}]

Per model, scores every window of the text (teacher forcing, each window from an empty cache)
with the F32 model and each quantized one; reports the mean KL(F32 || quantized) per token and
the rate at which both put the same token on top, for our engine and llama.cpp's on the same files.`;

/** Log-probabilities of every scored position: [positions, vocab]. */
interface Scores {
  logprobs: Float32Array;
  vocab: number;
}

function logSoftmaxRows(logits: Float32Array, vocab: number): Float32Array {
  const out = new Float32Array(logits.length);
  for (let r = 0; r < logits.length / vocab; r++) {
    const row = logits.subarray(r * vocab, (r + 1) * vocab);
    let max = -Infinity;
    for (const x of row) max = Math.max(max, x);
    let sum = 0;
    for (const x of row) sum += Math.exp(x - max);
    const logZ = max + Math.log(sum);
    for (let i = 0; i < vocab; i++) out[r * vocab + i] = row[i] - logZ;
  }
  return out;
}

/** Mean KL(ref || test) in nats and the same-argmax rate over all positions. */
export function compareScores(ref: Scores, test: Scores): { kl: number; sameTop: number } {
  const { vocab } = ref;
  const numRows = ref.logprobs.length / vocab;
  let kl = 0;
  let same = 0;
  for (let r = 0; r < numRows; r++) {
    let rowKl = 0;
    let refTop = 0;
    let testTop = 0;
    for (let i = 0; i < vocab; i++) {
      const p = ref.logprobs[r * vocab + i];
      const q = test.logprobs[r * vocab + i];
      if (p > -Infinity) rowKl += Math.exp(p) * (p - q);
      if (p > ref.logprobs[r * vocab + refTop]) refTop = i;
      if (q > test.logprobs[r * vocab + testTop]) testTop = i;
    }
    kl += rowKl;
    if (refTop === testTop) same++;
  }
  return { kl: kl / numRows, sameTop: same / numRows };
}

/** The text's windows: each [BOS] + the next window - 1 tokens, enough for minTokens scored. */
export async function textWindows(
  modelPath: string,
  window: number,
  minTokens: number,
): Promise<{ windows: number[][]; vocab: number }> {
  const source = await openModelSource(modelPath);
  const text = await Deno.readTextFile(TEXT);
  const ids = source.tokenizer.encode(text, { addSpecial: false });
  const bos = source.config.bosTokenId;
  const perWindow = bos === null ? window : window - 1;
  const numWindows = Math.ceil(minTokens / (window - 1));
  if (ids.length < numWindows * perWindow) {
    throw new RangeError(
      `Expected ${TEXT} to give at least ${numWindows * perWindow} tokens, found ${ids.length}`,
    );
  }
  const windows: number[][] = [];
  for (let w = 0; w < numWindows; w++) {
    const chunk = ids.slice(w * perWindow, (w + 1) * perWindow);
    windows.push(bos === null ? chunk : [bos, ...chunk]);
  }
  return { windows, vocab: source.config.vocabSize };
}

/** Our engine's log-probs of every position but the last of each window (prompt logprobs). */
export async function ourScores(
  modelPath: string,
  windows: number[][],
  options: {
    vocab: number;
    threads: number;
    quantization?: string;
    sparsity?: string;
    calibration?: string;
  },
): Promise<Scores> {
  const window = windows[0].length;
  const llm = await LLM.load({
    modelPath,
    numThreads: options.threads,
    maxModelLen: window,
    maxNumSeqs: 1,
    maxNumBatchedTokens: window,
    maxNumLogitRows: window,
    numKvBlocks: Math.ceil(window / 16) + 1,
    enablePrefixCaching: false,
    ...(options.quantization === undefined ? {} : { quantization: options.quantization }),
    ...(options.sparsity === undefined ? {} : { sparsity: options.sparsity }),
    ...(options.calibration === undefined ? {} : { calibration: options.calibration }),
  });
  const { vocab } = options;
  const logprobs = new Float32Array(windows.length * (window - 1) * vocab).fill(-Infinity);
  try {
    windows.forEach((ids, w) => {
      for (
        const output of llm.stream(ids, {
          maxTokens: 0,
          sampling: { temperature: 0, topK: 0, topP: 1, minP: 0 },
          promptLogprobs: vocab,
        })
      ) {
        // Entry j is the distribution that predicted prompt token j + 1, from position j.
        output.promptLogprobs?.forEach((entry, j) => {
          const row = (w * (window - 1) + j) * vocab;
          for (const t of entry.top) logprobs[row + t.tokenId] = t.logprob;
        });
      }
    });
  } finally {
    llm.release();
  }
  return { logprobs, vocab };
}

/** llama.cpp's log-probs of the same positions. */
export async function llamaScores(
  modelPath: string,
  windows: number[][],
  options: { vocab: number; threads: number },
): Promise<Scores> {
  const window = windows[0].length;
  const logits = await llamaLogits(modelPath, new Int32Array(windows.flat()), {
    window,
    threads: options.threads,
  });
  const { vocab } = options;
  const kept = new Float32Array(windows.length * (window - 1) * vocab);
  for (let w = 0; w < windows.length; w++) {
    kept.set(
      logits.subarray(w * window * vocab, (w * window + window - 1) * vocab),
      w * (window - 1) * vocab,
    );
  }
  return { logprobs: logSoftmaxRows(kept, vocab), vocab };
}

export async function fileBitsPerWeight(path: string): Promise<number> {
  const source = await openModelSource(path);
  let bytes = 0;
  let elements = 0;
  for (const t of source.tensors.values()) {
    bytes += t.byteLength;
    elements += t.shape.reduce((a, b) => a * b, 1);
  }
  return (8 * bytes) / elements;
}

async function ensureModel(name: string, smollmVocab: number): Promise<string> {
  if (name === "stories260k") return `${ROOT}../shared/models/stories260K/stories260K-f32.gguf`;
  const outDir = `${WORK}/models/${name}-v${smollmVocab}-f32`;
  const path = `${outDir}/${name}.gguf`;
  try {
    await Deno.stat(`${outDir}/.complete`);
    return path;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  console.error(`making random ${name} (vocab ${smollmVocab}) F32 in ${outDir}`);
  await generateRandomModel(getPreset(name, { vocabSize: smollmVocab }), {
    outDir,
    seed: 1,
    dtype: "F32",
    formats: ["gguf"],
  });
  await Deno.writeTextFile(`${outDir}/.complete`, new Date().toISOString() + "\n");
  return path;
}

function fmt(x: number | undefined, digits = 5): string {
  return x === undefined ? "-" : x.toFixed(digits);
}

function loadAverage(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      models: { type: "string", default: "stories260k,smollm-135m" },
      types: { type: "string", default: presetNames().replaceAll(" ", "") },
      "on-load": { type: "string", default: "int8,int4" },
      "min-tokens": { type: "string", default: "2000" },
      window: { type: "string", default: "512" },
      threads: { type: "string", default: "1" },
      "smollm-vocab": { type: "string", default: "1024" },
      compress: { type: "string", default: Object.keys(COMPRESS).join(",") },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (v.help) {
    console.log(USAGE);
    return;
  }
  applyOmpEnvDefaults(Deno.env);
  const threads = Number(v.threads);
  const missing = await llamaPeerMissing();
  if (missing !== null) console.error(`llama.cpp columns left out: ${missing}`);
  console.log(`load average at start: ${loadAverage()}`);
  const rows: string[] = [];
  for (const name of v.models.split(",")) {
    const modelPath = await ensureModel(name, Number(v["smollm-vocab"]));
    const source = await openModelSource(modelPath);
    const window = Math.min(Number(v.window), source.config.maxPositionEmbeddings);
    const { windows, vocab } = await textWindows(modelPath, window, Number(v["min-tokens"]));
    const numScored = windows.length * (window - 1);
    console.error(`${name}: ${windows.length} windows of ${window}, ${numScored} tokens scored`);
    const opts = { vocab, threads };
    const oursRef = await ourScores(modelPath, windows, opts);
    const llamaRef = missing === null ? await llamaScores(modelPath, windows, opts) : undefined;
    // Our engine and llama.cpp's on the same F32 file: how far apart the references are.
    const refGap = llamaRef === undefined ? undefined : compareScores(llamaRef, oursRef);
    rows.push(
      `| ${name} | F32 (ours vs llama.cpp) | ${
        (await fileBitsPerWeight(modelPath)).toFixed(2)
      } | - | ` +
        `${fmt(refGap?.kl)} | - | - | - | ` +
        `${fmt(refGap?.sameTop, 4)} | - | - | - | - | ${numScored} |`,
    );
    const dir = `${WORK}/${name}`;
    await Deno.mkdir(dir, { recursive: true });
    const compress = v.compress.split(",").filter((s) => s !== "");
    if (compress.length > 0) {
      const calPath = `${dir}/calibration.json`;
      const cal = await calibrate({ modelPath, textPath: TEXT, alpha: 0.5, maxTokens: 2048 });
      await Deno.writeTextFile(calPath, JSON.stringify(cal));
      for (const c of compress) {
        const spec = COMPRESS[c];
        if (spec === undefined) {
          throw new RangeError(`Expected --compress names in ${Object.keys(COMPRESS)}, found ${c}`);
        }
        const ours = compareScores(
          oursRef,
          await ourScores(modelPath, windows, {
            ...opts,
            ...(spec.quantization ? { quantization: spec.quantization } : {}),
            ...(spec.sparsity ? { sparsity: spec.sparsity } : {}),
            ...(spec.calibrated ? { calibration: calPath } : {}),
          }),
        );
        rows.push(
          `| ${name} | on load: ${c} | - | - | ${fmt(ours.kl)} | - | - | - | ` +
            `${fmt(ours.sameTop, 4)} | - | - | - | - | ${numScored} |`,
        );
        console.error(rows.at(-1));
      }
    }
    for (const q of v["on-load"].split(",").filter((s) => s !== "")) {
      const ours = compareScores(
        oursRef,
        await ourScores(modelPath, windows, { ...opts, quantization: q }),
      );
      rows.push(
        `| ${name} | --quantization ${q} | - | - | ${fmt(ours.kl)} | - | - | - | ` +
          `${fmt(ours.sameTop, 4)} | - | - | - | - | ${numScored} |`,
      );
      console.error(rows.at(-1));
    }
    const backend = NativeBackend.open({ numThreads: threads });
    try {
      for (const type of v.types.split(",").filter((s) => s !== "")) {
        const preset = quantPreset(type);
        const oursFile = `${dir}/ours-${preset.name}.gguf`;
        const llamaFile = `${dir}/llama-${preset.name}.gguf`;
        await quantizeGguf(backend, { inPath: modelPath, outPath: oursFile }, preset);
        if (missing === null) {
          await llamaQuantize({ inPath: modelPath, outPath: llamaFile }, preset.fileType);
        }
        const hasLlama = missing === null;
        // [our engine, llama.cpp's engine] x [our file, llama.cpp's file]
        const oo = compareScores(oursRef, await ourScores(oursFile, windows, opts));
        const ol = hasLlama
          ? compareScores(oursRef, await ourScores(llamaFile, windows, opts))
          : undefined;
        const lo = hasLlama
          ? compareScores(llamaRef!, await llamaScores(oursFile, windows, opts))
          : undefined;
        const ll = hasLlama
          ? compareScores(llamaRef!, await llamaScores(llamaFile, windows, opts))
          : undefined;
        const bpwOurs = await fileBitsPerWeight(oursFile);
        const bpwLlama = hasLlama ? await fileBitsPerWeight(llamaFile) : undefined;
        // The goal: our quantizer's file no worse than llama.cpp's, each in llama.cpp's engine
        // (and in ours); a ratio <= 1 meets it.
        const ratioLlamaEngine = lo && ll ? lo.kl / ll.kl : undefined;
        const ratioOursEngine = ol ? oo.kl / ol.kl : undefined;
        rows.push(
          `| ${name} | ${preset.name} | ${bpwOurs.toFixed(2)} | ${fmt(bpwLlama, 2)} | ` +
            `${fmt(oo.kl)} | ${fmt(ol?.kl)} | ${fmt(lo?.kl)} | ${fmt(ll?.kl)} | ` +
            `${fmt(oo.sameTop, 4)} | ${fmt(ol?.sameTop, 4)} | ${fmt(lo?.sameTop, 4)} | ` +
            `${fmt(ll?.sameTop, 4)} | ${fmt(ratioLlamaEngine, 3)} / ${fmt(ratioOursEngine, 3)} | ` +
            `${numScored} |`,
        );
        console.error(rows.at(-1));
      }
    } finally {
      backend.close();
    }
  }
  console.log(
    "\n| model | type | bpw ours | bpw llama.cpp | KL ours file, ours engine | " +
      "KL llama.cpp file, ours engine | KL ours file, llama.cpp engine | " +
      "KL llama.cpp file, llama.cpp engine | top-1 same: oo | ol | lo | ll | " +
      "KL ratio ours/llama.cpp file (llama.cpp engine / ours) | tokens |",
  );
  console.log("|" + " --- |".repeat(14));
  for (const row of rows) console.log(row);
  console.log(`\nload average at end: ${loadAverage()}`);
}

if (import.meta.main) await main();
