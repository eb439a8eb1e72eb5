// Activation quantization (quant.h's contract), written once and included once per instruction set
// (no guard): plain loops the compiler vectorizes for each target with the same IEEE operations, so
// every ISA writes the same bytes.
//
// Per block: amax = max |x|, d = amax / 127, q = round-half-even(x * (127 / amax)), so |q| <= 127
// (0 for an all-zero block). rint rounds in the default mode, to nearest even; unlike the
// add-and-subtract-2^23 trick it has no sum that FMA contraction could fuse into one rounding.

inline float act_amax(const float* x, int64_t len) {
  float amax = 0.0f;
  for (int64_t j = 0; j < len; j++) {
    const float a = x[j] < 0.0f ? -x[j] : x[j];
    amax = amax > a ? amax : a;
  }
  return amax;
}

// q[0, len) of one block whose amax is given; returns the sum of q.
inline int32_t act_round(const float* x, int64_t len, float amax, int8_t* q) {
  const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
  int32_t sum = 0;
  for (int64_t j = 0; j < len; j++) {
    const int32_t v = (int32_t)__builtin_rintf(x[j] * id);
    q[j] = (int8_t)v;
    sum += v;
  }
  return sum;
}

// x [k] to ceil(k / 32) dl_act_q8 blocks; a partial last block is zero-padded.
static void quantize_row_q8(const float* x, int64_t k, uint8_t* dst) {
  dl_act_q8* blocks = reinterpret_cast<dl_act_q8*>(dst);
  for (int64_t b = 0; b * DL_QK < k; b++) {
    const int64_t len = k - b * DL_QK < DL_QK ? k - b * DL_QK : DL_QK;
    const float* xb = x + b * DL_QK;
    dl_act_q8& a = blocks[b];
    const float amax = act_amax(xb, len);
    const float d = amax / 127.0f;
    if (len < DL_QK) __builtin_memset(a.qs, 0, sizeof a.qs);
    const int32_t sum = act_round(xb, len, amax, a.qs);
    // d and s rounded to f16, as ggml's q8_0 / q8_1 store them: llama.cpp's sums on the same file.
    a.d = dl_f16_to_f32(dl_f32_to_f16(d));
    a.s = dl_f16_to_f32(dl_f32_to_f16(d * (float)sum));
  }
}

// x [k] (k a multiple of 256) to k / 256 dl_block_q8_k blocks with their 16-element sums.
static void quantize_row_q8_k(const float* x, int64_t k, uint8_t* dst) {
  dl_block_q8_k* blocks = reinterpret_cast<dl_block_q8_k*>(dst);
  for (int64_t b = 0; b < k / DL_QK_K; b++) {
    const float* xb = x + b * DL_QK_K;
    dl_block_q8_k& a = blocks[b];
    const float amax = act_amax(xb, DL_QK_K);
    a.d = amax / 127.0f;
    for (int j = 0; j < DL_QK_K / 16; j++) a.bsums[j] = (int16_t)act_round(xb + 16 * j, 16, amax, a.qs + 16 * j);
  }
}
