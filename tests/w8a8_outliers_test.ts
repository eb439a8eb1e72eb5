// The outlier demonstration of issue 11: stories260K with a few activation-outlier channels
// injected (RMSNorm weights x80, the next projections' columns / 80: the F32 model is unchanged),
// scored against its F32 self over the same text. Naive per-token W8A8 must degrade it (its
// per-token scales are set by the outliers), SmoothQuant (deno task calibrate's factors folded into
// the norms and weights) and the LLM.int8()-style mixed decomposition must recover it.
import assert from "node:assert/strict";
import { compareScores, ourScores, textWindows } from "../bench/quant_quality.ts";
import { calibrate, writeOutlierModel } from "../tools/calibrate.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const MODEL = `${ROOT}../shared/models/stories260K/stories260K-f32.gguf`;
const TEXT = `${ROOT}bench/fixtures/aesop.txt`;

Deno.test("outlier channels: naive W8A8 degrades, SmoothQuant and w8a8-mixed recover", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denollm-outliers-" });
  try {
    const outlierModel = `${dir}/stories260K-outliers.gguf`;
    await writeOutlierModel(MODEL, outlierModel, { channels: [5, 21, 38, 50], factor: 80 });
    const cal = await calibrate({ modelPath: outlierModel, textPath: TEXT, alpha: 0.5 });
    const calPath = `${dir}/cal.json`;
    await Deno.writeTextFile(calPath, JSON.stringify(cal));
    const { windows, vocab } = await textWindows(MODEL, 256, 1000);
    const opts = { vocab, threads: 1 };
    const ref = await ourScores(MODEL, windows, opts);
    const kl = async (model: string, extra: Record<string, string>) =>
      compareScores(ref, await ourScores(model, windows, { ...opts, ...extra }));
    const rows = {
      "F32, outliers injected": await kl(outlierModel, {}),
      "w8a8, no outliers": await kl(MODEL, { quantization: "w8a8" }),
      "w8a8 naive, outliers": await kl(outlierModel, { quantization: "w8a8" }),
      "w8a8 SmoothQuant, outliers": await kl(outlierModel, {
        quantization: "w8a8",
        calibration: calPath,
      }),
      "w8a8-mixed, outliers": await kl(outlierModel, {
        quantization: "w8a8-mixed",
        calibration: calPath,
      }),
    };
    console.log("| model | KL vs F32 | same top token |\n| --- | --- | --- |");
    for (const [name, r] of Object.entries(rows)) {
      console.log(`| ${name} | ${r.kl.toFixed(5)} | ${r.sameTop.toFixed(4)} |`);
    }
    // The injection leaves the F32 function as it was (f32 rounding only).
    assert.ok(rows["F32, outliers injected"].kl < 1e-4, "the outlier model is the same model");
    const naive = rows["w8a8 naive, outliers"].kl;
    assert.ok(naive > 3 * rows["w8a8, no outliers"].kl, "the outliers hurt naive W8A8");
    assert.ok(naive > 3 * rows["w8a8 SmoothQuant, outliers"].kl, "SmoothQuant recovers");
    assert.ok(naive > 3 * rows["w8a8-mixed, outliers"].kl, "the mixed decomposition recovers");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
