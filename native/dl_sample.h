// The arithmetic of dl_sample shared by the CPU build and CUDA device code: the sort key, the
// integer token weights and the counter-based random draw. Every step is exact in IEEE f32 or
// integer arithmetic (fmaf, rintf, ldexpf, single products and differences that no compiler may
// fuse into an FMA differently), so both builds give the same weights, sets and token.
#pragma once

#include <cmath>
#include <cstdint>

#include "dl_half.h"

// Weights are exp((logit - max) / temperature) in units of 2^-31: the top token weighs 2^31.
constexpr uint64_t DL_SAMPLE_ONE = 1ull << 31;

// Larger key = larger logit, then lower id (ties go to the lowest id, as argmax does). NaN
// logits get key 0, below every other value.
DL_HD uint64_t dl_sample_key(float logit, int32_t id) {
  if (logit != logit) return 0;
  const uint32_t bits = dl_f32_bits(logit);
  const uint32_t ord = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ((uint64_t)ord << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)id);
}

// The logit a key was made from.
DL_HD float dl_sample_key_logit(uint64_t key) {
  const uint32_t ord = (uint32_t)(key >> 32);
  const uint32_t bits = (ord & 0x80000000u) ? (ord ^ 0x80000000u) : ~ord;
  return dl_bits_f32(bits);
}

// exp(x) for x <= 0: range reduction by ln 2 (Cody-Waite, two fmaf) and a degree-7 Taylor
// polynomial in fmaf Horner form, scaled by 2^n with ldexpf; about 2 ulp, the same bits in both
// builds. Below -87 (a weight under 2^-125, rounding to 0) it returns 0.
DL_HD float dl_sample_exp(float x) {
  if (!(x > -87.0f)) return 0.0f;
  const float n = rintf(x * 1.44269504f);
  float r = fmaf(-n, 0.693145752f, x);
  r = fmaf(-n, 1.42860677e-06f, r);
  float p = 1.98412698e-04f;  // 1/7!
  p = fmaf(p, r, 1.38888889e-03f);
  p = fmaf(p, r, 8.33333333e-03f);
  p = fmaf(p, r, 4.16666667e-02f);
  p = fmaf(p, r, 1.66666667e-01f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  return ldexpf(p, (int)n);
}

// The integer weight of a logit: round(exp((logit - max_logit) * inv_temperature) * 2^31).
DL_HD uint64_t dl_sample_weight(float logit, float max_logit, float inv_temperature) {
  const float d = (logit - max_logit) * inv_temperature;
  const float w = rintf(ldexpf(dl_sample_exp(d), 31));
  return w >= (float)DL_SAMPLE_ONE ? DL_SAMPLE_ONE : (uint64_t)w;
}

// SplitMix64's finalizer: a bijective 64-bit mix.
DL_HD uint64_t dl_sample_mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The row's uniform 64-bit draw: a counter-based hash of (seed, counter), no state to carry.
DL_HD uint64_t dl_sample_random(uint64_t seed, uint64_t counter) {
  return dl_sample_mix(dl_sample_mix(seed) ^ counter);
}

// floor(u * n / 2^64): a uniform integer in [0, n) from a uniform u (exact, in 32-bit halves).
DL_HD uint64_t dl_sample_scale(uint64_t u, uint64_t n) {
  const uint64_t u_lo = u & 0xFFFFFFFFu, u_hi = u >> 32, n_lo = n & 0xFFFFFFFFu, n_hi = n >> 32;
  const uint64_t lo_lo = u_lo * n_lo, hi_lo = u_hi * n_lo, lo_hi = u_lo * n_hi, hi_hi = u_hi * n_hi;
  const uint64_t mid = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + (lo_hi & 0xFFFFFFFFu);
  return hi_hi + (hi_lo >> 32) + (lo_hi >> 32) + (mid >> 32);
}

// Whether a row's parameters are in range (temperature >= 0 and finite, top_p in (0, 1], min_p
// in [0, 1]).
DL_HD bool dl_sample_params_ok(float temperature, float top_p, float min_p) {
  return temperature >= 0.0f && temperature <= 3.402823466e38f && top_p > 0.0f && top_p <= 1.0f &&
         min_p >= 0.0f && min_p <= 1.0f;
}
