// Where a step's tokens are sampled: on the device (dl_sample, only ids come back) or on the host
// (src/sampling.ts over logits copied back), and which requests the device can serve at all.
//
// The two are different samplers, both correct: dl_sample (ffi/denollm.h) works in f32 with
// integer token weights and draws from a counter-based hash of (seed, token index), so it picks
// the same token on the CPU and CUDA builds; src/sampling.ts works in f64 with a sequential
// generator per request. Greedy is the argmax in both. Seeded requests are reproducible under
// either, but their sampled tokens differ between the two, so the CPU build keeps the host
// sampler by default and its seeded outputs stay what they were.
import type { DeviceSampleParams } from "./device_sampler.ts";
import type { Executor } from "./executor.ts";
import type { EngineRequest } from "./request.ts";

/** --sampling-device's choices: auto picks the device where logits are not host memory (CUDA). */
export const SAMPLING_DEVICES = ["auto", "device", "host"] as const;
export type SamplingDevice = (typeof SAMPLING_DEVICES)[number];

/** Whether an engine over `executor` samples on the device under `choice`. */
export function samplesOnDevice(choice: SamplingDevice, executor: Executor): boolean {
  if (choice === "host") return false;
  if (executor.executeSampled === undefined) {
    if (choice === "auto") return false;
    throw new RangeError(
      "--sampling-device device needs an executor that samples on its device; this one (ranks " +
        "across processes) returns logits only: use --sampling-device host or auto",
    );
  }
  return choice === "device" || executor.prefersDeviceSampling === true;
}

const F32_MAX = 3.4028234663852886e38;
/** The smallest normal f32: below it dl_sample's f32 1 / temperature overflows. */
const F32_MIN_NORMAL = 2 ** -126;

/**
 * Whether a request's next token can come from dl_sample, which sees only the raw logits and
 * temperature, top-k, top-p and min-p. Everything that reads or changes the logits first needs
 * them on the host: penalties and logit bias, logprobs (best_of too), a grammar's mask, and
 * min_tokens masking the stop tokens. Parameters that f32 cannot hold in dl_sample's ranges (a
 * temperature above 3.4e38, a top_p that rounds to 0) stay on the host too, and so does a
 * temperature under 2^-126, whose f32 inverse is infinite: dl_sample's top weight is then
 * 0 * inf, and it returns the last candidate instead of the argmax (both builds, ABI 5). The engine also keeps
 * on the host the steps that verify proposals and a first sample that n > 1 siblings share.
 */
export function canSampleOnDevice(request: EngineRequest): boolean {
  const sampler = request.sampler;
  const p = sampler.params;
  return !sampler.adjustsLogits && request.params.logprobs === undefined &&
    request.grammar === undefined &&
    !(request.isBelowMinTokens && request.stopTokenIds.size > 0) &&
    (p.temperature === 0 || (p.temperature >= F32_MIN_NORMAL && p.temperature <= F32_MAX)) &&
    Math.fround(p.topP) > 0;
}

/**
 * Writes a request's parameters into row `row`: its seed, and as counter the index of the token
 * being sampled, so a seeded request draws the same tokens whatever else shares its steps, and
 * after a preemption.
 */
export function setDeviceRow(params: DeviceSampleParams, row: number, request: EngineRequest) {
  const p = request.sampler.params;
  params.temperature[row] = p.temperature;
  // top_k of 2^31 or more keeps every token, as 0 does; int32 cannot hold it.
  params.topK[row] = p.topK > 0 && p.topK < 2 ** 31 ? p.topK : 0;
  params.topP[row] = p.topP;
  params.minP[row] = p.minP;
  params.seeds[row] = BigInt.asUintN(64, BigInt(request.sampler.seed));
  params.counters[row] = BigInt(request.numOutputTokens);
}
