// RoPE inverse frequencies with rope_theta and position scaling applied, computed once per model.
import type { ModelConfig } from "./config.ts";

/**
 * inv_freq[i] = 1 / theta^(2i / rotaryDim), then scaled: Llama-3 style scaling keeps high
 * frequencies, divides low ones by `factor` and blends in between; linear scaling divides all.
 * `freqFactors` (GGUF's rope_freqs tensor) divides each frequency, the way llama.cpp applies it.
 */
export function ropeInvFreq(
  config: Pick<ModelConfig, "ropeTheta" | "ropeScaling">,
  rotaryDim: number,
  freqFactors?: Float32Array,
): Float32Array {
  if (!Number.isInteger(rotaryDim) || rotaryDim <= 0 || rotaryDim % 2 !== 0) {
    throw new RangeError(`rotaryDim must be a positive even integer, got ${rotaryDim}`);
  }
  const half = rotaryDim / 2;
  if (freqFactors !== undefined && freqFactors.length !== half) {
    throw new RangeError(`rope_freqs must have ${half} values, found ${freqFactors.length}`);
  }
  const invFreq = new Float32Array(half);
  const scaling = config.ropeScaling;
  for (let i = 0; i < half; i++) {
    let freq = 1 / Math.pow(config.ropeTheta, (2 * i) / rotaryDim);
    if (scaling?.type === "linear") {
      freq /= scaling.factor;
    } else if (scaling?.type === "llama3") {
      const lowFreqWavelen = scaling.originalMaxPositionEmbeddings / scaling.lowFreqFactor;
      const highFreqWavelen = scaling.originalMaxPositionEmbeddings / scaling.highFreqFactor;
      const wavelen = (2 * Math.PI) / freq;
      if (wavelen > lowFreqWavelen) {
        freq /= scaling.factor;
      } else if (wavelen >= highFreqWavelen) {
        const smooth = (scaling.originalMaxPositionEmbeddings / wavelen - scaling.lowFreqFactor) /
          (scaling.highFreqFactor - scaling.lowFreqFactor);
        freq = (1 - smooth) * (freq / scaling.factor) + smooth * freq;
      }
    }
    if (freqFactors !== undefined) freq /= freqFactors[i];
    invFreq[i] = freq;
  }
  return invFreq;
}
