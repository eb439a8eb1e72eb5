// The planted "successor" structure of a peaked random model (`make-model --peaked`): a synthetic
// model whose greedy next token wins by many logits, so engines can be compared token for token.
//
// Why: a plain random-weight model has top-1/top-2 logit margins of 0.01-0.1, while quantized
// activations (q8 blocks) amplify 1e-4 differences into 0.3-0.6 of logprob, so greedy tokens flip
// between two correct engines (llama.cpp even flips against itself between batched and one-token
// prefill). A greedy-equality check on such files tests nothing. Here the weights still have the
// real shapes and every tensor is random except the few rows and columns below, so all kernels
// run on realistic data, but the argmax is robust to 4-bit quantization of every matrix.
//
// The structure, in Hugging Face layout (the writer permutes Q/K for llama GGUF as usual):
// - Residual dims: 0 holds a constant CONSTANT in every embedding row; A = 1..m and B = m+1..2m
//   (m = (hidden-1)/2) hold random codes: row u is [CONSTANT, x_u, x_{π⁻¹(u)}], x_u ~ N(0, 1)^m,
//   π a random permutation of the vocab. Near-orthogonal codes: x_u·x_v ≈ ±√m against m.
// - Layer 0's MLP copies A into B, amplified: units j < m have gate = GATE·dim 0 (a constant, so
//   silu(gate) ≈ gate and the unit is linear), up = A_j, down = SUCCESSOR_GAIN/(...)·B_j. After it,
//   B holds ≈ SUCCESSOR_GAIN·x_t + x_{π⁻¹(t)} for the current token t. The other MLP units, all
//   attention weights and the other layers stay random, their outputs scaled by WRITER_GAIN so
//   they perturb the code without erasing it.
// - The final norm gains B so that the successor's logit is ≈ SUCCESSOR_LOGIT, A and the constant
//   by much less, and the LM head (the tied embedding, or an untied head with the same rows)
//   scores row u's B part x_{π⁻¹(u)} against x_t: the winner is u = π(t), the current token gets
//   1/SUCCESSOR_GAIN of its logit and the others ±1/√m. Measured without attention (embedding,
//   layer 0's MLP, head) over tokens 0-299: the smallest top-1/top-2 margin is 8.3 logits at
//   SmolLM-135M's hidden 576, but only 0.06 at hidden 64 (m = 31 is too short a code for some
//   token pairs), so use real widths where margins matter.
// Greedy decoding then walks t, π(t), π(π(t)), ...: the next token depends on the current one
// only (attention perturbs the margins but does not decide them), which is the limit of what this
// model checks.
import type { HfConfigJson } from "./presets.ts";

/** Fills `out` with N(mean, std²)-like values from the stream named `name` (the model's seed). */
export type NamedRandom = (out: Float32Array, name: string, mean: number, std: number) => void;

const CONSTANT = 4;
const GATE = 2;
const SUCCESSOR_GAIN = 4;
/** The successor's logit, about: the final norm's gain on B is set from it and the code length. */
const SUCCESSOR_LOGIT = 20;
/** Gains of A and of the constant dim in the final norm, next to B's. */
const SELF_GAIN = 0.1;
const CONSTANT_GAIN = 0.01;
/** Scale of the random sublayers' output projections next to the plain random model's. */
export const WRITER_GAIN = 0.25;

export class SuccessorStructure {
  readonly #hidden: number;
  readonly #vocab: number;
  readonly #ffn: number;
  /** Code length m: dims A = 1..m, B = m+1..2m. */
  readonly #m: number;
  /** x_u for every token, m values each. */
  readonly #codes: Float32Array;
  /** π⁻¹: the token whose successor is u. */
  readonly #predecessor: Int32Array;

  constructor(config: HfConfigJson, random: NamedRandom) {
    this.#hidden = config.hidden_size;
    this.#vocab = config.vocab_size;
    this.#ffn = config.intermediate_size;
    this.#m = Math.floor((this.#hidden - 1) / 2);
    if (this.#m < 16 || this.#ffn < this.#m) {
      throw new RangeError(
        `Expected hidden_size >= 33 and intermediate_size >= (hidden_size - 1) / 2 for a peaked ` +
          `model, found ${this.#hidden} and ${this.#ffn}`,
      );
    }
    this.#codes = new Float32Array(this.#vocab * this.#m);
    random(this.#codes, "peaked.codes", 0, 1);
    // Fisher-Yates over uniforms drawn from the same generator (its values' ranks are uniform).
    const draws = new Float32Array(this.#vocab);
    random(draws, "peaked.permutation", 0, 1);
    const successor = Int32Array.from({ length: this.#vocab }, (_, i) => i);
    for (let i = this.#vocab - 1; i > 0; i--) {
      const frac = Math.abs(draws[i] * 1e4) % 1;
      const j = Math.floor(frac * (i + 1));
      [successor[i], successor[j]] = [successor[j], successor[i]];
    }
    this.#predecessor = new Int32Array(this.#vocab);
    for (let u = 0; u < this.#vocab; u++) this.#predecessor[successor[u]] = u;
  }

  /** The token greedy decoding should pick after `token` (π). */
  successorOf(token: number): number {
    return this.#predecessor.indexOf(token);
  }

  /** Overwrites the planted parts of tensor `hfName` (HF layout, random values in `values`). */
  apply(hfName: string, values: Float32Array): void {
    const h = this.#hidden;
    const m = this.#m;
    if (hfName === "model.embed_tokens.weight" || hfName === "lm_head.weight") {
      for (let u = 0; u < this.#vocab; u++) this.#writeRow(values.subarray(u * h, (u + 1) * h), u);
    } else if (hfName === "model.norm.weight") {
      // Random values around the preset's mean: keep their relative noise, set the level per dim.
      // After layer 0 the residual's RMS is ≈ SUCCESSOR_GAIN/√2 (B dominates), so B's gain gives
      // the successor a logit of ≈ gain·SUCCESSOR_GAIN·m/rms = gain·m·√2.
      const mean = values.reduce((a, b) => a + b, 0) / values.length;
      const headGain = SUCCESSOR_LOGIT / (m * Math.SQRT2);
      for (let i = 0; i < h; i++) {
        const level = i === 0
          ? CONSTANT_GAIN * headGain
          : i <= m
          ? SELF_GAIN * headGain
          : i <= 2 * m
          ? headGain
          : 1;
        values[i] = (values[i] / mean) * level;
      }
    } else if (hfName === "model.layers.0.mlp.gate_proj.weight") {
      for (let j = 0; j < m; j++) {
        values.fill(0, j * h, (j + 1) * h);
        values[j * h] = GATE;
      }
    } else if (hfName === "model.layers.0.mlp.up_proj.weight") {
      for (let j = 0; j < m; j++) {
        values.fill(0, j * h, (j + 1) * h);
        values[j * h + 1 + j] = 1;
      }
    } else if (hfName === "model.layers.0.mlp.down_proj.weight") {
      // [hidden, ffn]: unit j writes only B_j. Its input is ≈ silu(GATE·CONSTANT)·x_t[j].
      const unitGain = SUCCESSOR_GAIN / (GATE * CONSTANT);
      for (let r = 0; r < h; r++) {
        for (let j = 0; j < m; j++) values[r * this.#ffn + j] = r === 1 + m + j ? unitGain : 0;
      }
    }
  }

  /** Embedding (or untied head) row u: [CONSTANT, x_u, x_{π⁻¹(u)}, random rest]. */
  #writeRow(row: Float32Array, u: number): void {
    const m = this.#m;
    row[0] = CONSTANT;
    row.set(this.#codes.subarray(u * m, (u + 1) * m), 1);
    const p = this.#predecessor[u];
    row.set(this.#codes.subarray(p * m, (p + 1) * m), 1 + m);
  }
}
