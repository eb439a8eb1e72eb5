// Host quantizers of every blocked format and INT8 (header-only, host-only): the CPU build's
// dl_quantize calls dl_quantize_host, and the CUDA build's copies through the host and calls it too,
// so both write the same bytes. Each block's parameters come from a weighted least-squares search
// (candidate scales, then alternating re-quantization and refits, then a search of the stored
// integer or f16 parameters themselves), scored on the exact floats native/dl_dequant.h reads back.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "dl_check.h"
#include "dl_dequant.h"
#include "dl_dtype.h"
#include "dl_half.h"
#include "dl_quant.h"

// --- Scalar helpers

// round(v) clamped to [lo, hi] (ties to even, as lrintf under the default rounding mode).
inline int dl_qround(float v, int lo, int hi) {
  if (!(v > (float)lo)) return lo;  // NaN included: only reachable from a zero scale
  if (v >= (float)hi) return hi;
  return (int)std::lrintf(v);
}

// The f16 nearest to v, as stored, and the float it reads back as.
inline float dl_f16_round(float v) { return dl_f16_to_f32(dl_f32_to_f16(v)); }

// The f16 bits `steps` units away from h in magnitude, keeping the sign; clamped to finite values.
inline uint16_t dl_f16_step(uint16_t h, int steps) {
  const int mag = std::clamp((int)(h & 0x7fff) + steps, 0, 0x7bff);
  return (uint16_t)((h & 0x8000) | mag);
}

// Group weights: the caller's importance, or all ones when it is NULL or weighs the whole group 0
// (a group with no weight would leave every scale undetermined).
inline const float* dl_group_weights(const float* importance, int n, const float* ones) {
  if (importance == nullptr) return ones;
  for (int i = 0; i < n; i++) {
    if (importance[i] > 0.0f) return importance;
  }
  return ones;
}

// --- One group, float parameters

// x ≈ scale * q + offset with integer q in [0, nmax], minimizing Σ w (scale q + offset - x)²;
// offset_le_zero keeps offset <= 0 (the K formats store it as a non-negative min). q is written.
struct dl_affine_fit {
  float scale, offset;
  double err;
};

// The weighted least-squares (scale, offset) for fixed q, and its error.
inline dl_affine_fit dl_affine_refit(const float* x, const float* w, const uint8_t* q, int n, bool offset_le_zero,
                                     float prev_scale) {
  double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
  for (int i = 0; i < n; i++) {
    sw += w[i], sq += w[i] * q[i], sqq += (double)w[i] * q[i] * q[i], sx += w[i] * x[i], sqx += (double)w[i] * q[i] * x[i];
  }
  double s, o;
  const double det = sw * sqq - sq * sq;
  if (det > 1e-12 * sw * sqq) {
    s = (sw * sqx - sq * sx) / det;
    o = (sqq * sx - sq * sqx) / det;
  } else {  // every q alike: any scale fits, so keep the previous one and centre the offset
    s = prev_scale;
    o = (sx - s * sq) / sw;
  }
  if (offset_le_zero && o > 0) {
    o = 0;
    s = sqq > 0 ? sqx / sqq : 0;
  }
  if (s < 0) s = 0;
  dl_affine_fit fit{(float)s, (float)o, 0.0};
  for (int i = 0; i < n; i++) {
    const double e = (double)fit.scale * q[i] + fit.offset - x[i];
    fit.err += w[i] * e * e;
  }
  return fit;
}

inline void dl_affine_quantize(const float* x, int n, int nmax, float scale, float offset, uint8_t* q) {
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  for (int i = 0; i < n; i++) q[i] = (uint8_t)dl_qround((x[i] - offset) * inv, 0, nmax);
}

inline dl_affine_fit dl_fit_affine(const float* x, const float* w, int n, int nmax, bool offset_le_zero, uint8_t* q) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  if (offset_le_zero) lo = std::min(lo, 0.0f);
  if (!(hi > lo)) {  // a constant group (or all zeros): exact with scale 0
    std::memset(q, 0, (size_t)n);
    return dl_affine_fit{0.0f, lo, 0.0};
  }
  uint8_t trial[DL_QK_K];
  dl_affine_fit best{0, 0, INFINITY};
  // Candidate steps around the min/max one: stretching the grid past the extremes trades their
  // error for a finer grid everywhere else, which often pays.
  for (int c = 0; c <= 24; c++) {
    const float levels = (float)nmax - 1.0f + 0.1f * (float)c;
    const float iscale = levels / (hi - lo);
    for (int i = 0; i < n; i++) trial[i] = (uint8_t)dl_qround((x[i] - lo) * iscale, 0, nmax);
    const dl_affine_fit fit = dl_affine_refit(x, w, trial, n, offset_le_zero, (hi - lo) / levels);
    if (fit.err < best.err) best = fit, std::memcpy(q, trial, (size_t)n);
  }
  // Alternate re-quantizing and refitting (Lloyd's algorithm on a uniform grid) while it helps.
  for (int it = 0; it < 8; it++) {
    dl_affine_quantize(x, n, nmax, best.scale, best.offset, trial);
    const dl_affine_fit fit = dl_affine_refit(x, w, trial, n, offset_le_zero, best.scale);
    if (!(fit.err < best.err * (1 - 1e-7))) break;
    best = fit, std::memcpy(q, trial, (size_t)n);
  }
  return best;
}

// x ≈ scale * q with integer q in [qmin, qmax] (qmin < 0 < qmax), minimizing Σ w (scale q - x)²;
// scale may take either sign (which end of an asymmetric range the largest value lands on).
inline double dl_symmetric_refit(const float* x, const float* w, const int8_t* q, int n, float* scale) {
  double sxq = 0, sqq = 0, sxx = 0;
  for (int i = 0; i < n; i++) sxq += (double)w[i] * x[i] * q[i], sqq += (double)w[i] * q[i] * q[i], sxx += (double)w[i] * x[i] * x[i];
  *scale = sqq > 0 ? (float)(sxq / sqq) : 0.0f;
  return sqq > 0 ? std::max(0.0, sxx - sxq * sxq / sqq) : sxx;
}

inline void dl_symmetric_quantize(const float* x, int n, int qmin, int qmax, float scale, int8_t* q) {
  const float inv = scale != 0 ? 1.0f / scale : 0.0f;
  for (int i = 0; i < n; i++) q[i] = (int8_t)dl_qround(x[i] * inv, qmin, qmax);
}

inline float dl_fit_symmetric(const float* x, const float* w, int n, int qmin, int qmax, int8_t* q) {
  float xm = 0;  // the value of largest magnitude, with its sign
  for (int i = 0; i < n; i++) {
    if (std::fabs(x[i]) > std::fabs(xm)) xm = x[i];
  }
  if (xm == 0) {
    std::memset(q, 0, (size_t)n);
    return 0.0f;
  }
  int8_t trial[DL_QK_K];
  float best_scale = 0;
  double best = INFINITY;
  const int ends[2] = {qmin, qmax};
  for (int e = 0; e < (qmax == -qmin ? 1 : 2); e++) {
    for (int c = 0; c <= 16; c++) {
      // The largest value lands up to 0.8 of a step inside or outside the end of the range.
      const float target = (float)ends[e] + (ends[e] < 0 ? -0.1f : 0.1f) * (float)(c - 8);
      const float iscale = target / xm;
      for (int i = 0; i < n; i++) trial[i] = (int8_t)dl_qround(x[i] * iscale, qmin, qmax);
      float scale;
      const double err = dl_symmetric_refit(x, w, trial, n, &scale);
      if (err < best) best = err, best_scale = scale, std::memcpy(q, trial, (size_t)n);
    }
  }
  for (int it = 0; it < 8; it++) {
    dl_symmetric_quantize(x, n, qmin, qmax, best_scale, trial);
    float scale;
    const double err = dl_symmetric_refit(x, w, trial, n, &scale);
    if (!(err < best * (1 - 1e-7))) break;
    best = err, best_scale = scale, std::memcpy(q, trial, (size_t)n);
  }
  return best_scale;
}

// --- One group, stored parameters: the error of the floats the dequantizer will produce

// y = q * d, q = round(x / d) in [qmin, qmax]; d an f16 value.
inline double dl_symmetric_error(const float* x, const float* w, int n, int qmin, int qmax, float d, int8_t* q) {
  dl_symmetric_quantize(x, n, qmin, qmax, d, q);
  double err = 0;
  for (int i = 0; i < n; i++) {
    const double e = (double)((float)q[i] * d) - x[i];
    err += w[i] * e * e;
  }
  return err;
}

// y = q * d + m, q in [0, nmax].
inline double dl_affine_error(const float* x, const float* w, int n, int nmax, float d, float m, uint8_t* q) {
  dl_affine_quantize(x, n, nmax, d, m, q);
  double err = 0;
  for (int i = 0; i < n; i++) {
    const double e = (double)((float)q[i] * d + m) - x[i];
    err += w[i] * e * e;
  }
  return err;
}

// A symmetric group with one f16 scale (Q4_0, Q5_0, Q8_0): the fitted scale, then its f16
// neighbours. Returns the f16 bits; q is written.
inline uint16_t dl_quantize_symmetric_f16(const float* x, const float* w, int n, int qmin, int qmax, int8_t* q) {
  const uint16_t h0 = dl_f32_to_f16(dl_fit_symmetric(x, w, n, qmin, qmax, q));
  int8_t trial[DL_QK_K];
  uint16_t best_h = h0;
  double best = INFINITY;
  auto consider = [&](uint16_t h) {
    const double err = dl_symmetric_error(x, w, n, qmin, qmax, dl_f16_to_f32(h), trial);
    if (err < best) best = err, best_h = h, std::memcpy(q, trial, (size_t)n);
  };
  for (int s = -2; s <= 2; s++) consider(dl_f16_step(h0, s));
  // The largest value on either end of the range exactly (a constant group comes back exact).
  float xm = 0;
  for (int i = 0; i < n; i++) {
    if (std::fabs(x[i]) > std::fabs(xm)) xm = x[i];
  }
  consider(dl_f32_to_f16(xm / (float)qmin));
  consider(dl_f32_to_f16(xm / (float)qmax));
  return best_h;
}

// An affine group with f16 scale and offset (Q4_1, Q5_1, INT4): the fitted pair, its f16
// neighbours, and plain min/max (so it is never worse than that). Writes d, m bits and q.
inline void dl_quantize_affine_f16(const float* x, const float* w, int n, int nmax, uint16_t* d_bits,
                                   uint16_t* m_bits, uint8_t* q) {
  const dl_affine_fit fit = dl_fit_affine(x, w, n, nmax, false, q);
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  uint8_t trial[DL_QK_K];
  double best = INFINITY;
  auto consider = [&](uint16_t hd, uint16_t hm) {
    const double err = dl_affine_error(x, w, n, nmax, dl_f16_to_f32(hd), dl_f16_to_f32(hm), trial);
    if (err < best) best = err, *d_bits = hd, *m_bits = hm, std::memcpy(q, trial, (size_t)n);
  };
  consider(dl_f32_to_f16((hi - lo) / (float)nmax), dl_f32_to_f16(lo));
  const uint16_t hd = dl_f32_to_f16(fit.scale), hm = dl_f32_to_f16(fit.offset);
  for (int a = -1; a <= 1; a++) {
    for (int b = -1; b <= 1; b++) consider(dl_f16_step(hd, a), dl_f16_step(hm, b));
  }
}

// --- K formats: two levels of scales

// Sub-blocks with a scale and a min (Q2_K, Q4_K, Q5_K): y = (d sc_j) q - (dmin mn_j), with sc, mn
// in [0, smax] and q in [0, nmax]. Writes d, dmin (as stored, f16-exact floats), sc, mn, q[256].
struct dl_k_affine_spec {
  int group, nmax, smax;
};

inline double dl_k_affine_assign(const float* x, const float* w, const dl_k_affine_spec& spec,
                                 const dl_affine_fit* fits, float d, float dmin, uint8_t* sc, uint8_t* mn,
                                 uint8_t* q) {
  const int groups = DL_QK_K / spec.group;
  uint8_t trial[DL_QK_K];
  double total = 0;
  for (int j = 0; j < groups; j++) {
    const float* xj = x + j * spec.group;
    const float* wj = w + j * spec.group;
    const int sc0 = d > 0 ? dl_qround(fits[j].scale / d, 0, spec.smax) : 0;
    const int mn0 = dmin > 0 ? dl_qround(-fits[j].offset / dmin, 0, spec.smax) : 0;
    double best = INFINITY;
    for (int a = std::max(0, sc0 - 1); a <= std::min(spec.smax, sc0 + 1); a++) {
      for (int b = std::max(0, mn0 - 1); b <= std::min(spec.smax, mn0 + 1); b++) {
        // The dequantizer's own floats: dl = d * sc, ml = dmin * mn, y = dl * q - ml.
        const float dl = d * (float)a, ml = dmin * (float)b;
        const float inv = dl > 0 ? 1.0f / dl : 0.0f;
        double err = 0;
        for (int i = 0; i < spec.group; i++) {
          trial[i] = (uint8_t)dl_qround((xj[i] + ml) * inv, 0, spec.nmax);
          const double e = (double)(dl * (float)trial[i] - ml) - xj[i];
          err += wj[i] * e * e;
        }
        if (err < best) best = err, sc[j] = (uint8_t)a, mn[j] = (uint8_t)b, std::memcpy(q + j * spec.group, trial, (size_t)spec.group);
      }
    }
    total += best;
  }
  return total;
}

inline void dl_quantize_k_affine(const float* x, const float* w, const dl_k_affine_spec& spec, float* d_out,
                                 float* dmin_out, uint8_t* sc, uint8_t* mn, uint8_t* q) {
  const int groups = DL_QK_K / spec.group;
  dl_affine_fit fits[DL_QK_K / 16];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < groups; j++) {
    fits[j] = dl_fit_affine(x + j * spec.group, w + j * spec.group, spec.group, spec.nmax, true, q + j * spec.group);
    max_scale = std::max(max_scale, fits[j].scale);
    max_min = std::max(max_min, -fits[j].offset);
  }
  float d = dl_f16_round(max_scale / (float)spec.smax), dmin = dl_f16_round(max_min / (float)spec.smax);
  double best = dl_k_affine_assign(x, w, spec, fits, d, dmin, sc, mn, q);
  // Refit the two super-block scales to the chosen integers by least squares, then re-pick the
  // integers for them; keep each round that lowers the error.
  uint8_t sc2[DL_QK_K / 16], mn2[DL_QK_K / 16], q2[DL_QK_K];
  for (int it = 0; it < 3; it++) {
    double saa = 0, sab = 0, sbb = 0, sax = 0, sbx = 0;  // y = d a - dmin b
    for (int i = 0; i < DL_QK_K; i++) {
      const int j = i / spec.group;
      const double a = (double)sc[j] * q[i], b = mn[j];
      saa += w[i] * a * a, sab += w[i] * a * b, sbb += w[i] * b * b, sax += w[i] * a * x[i], sbx += w[i] * b * x[i];
    }
    const double det = saa * sbb - sab * sab;
    double nd, ndmin;
    if (det > 1e-12 * saa * sbb) {
      nd = (sax * sbb - sbx * sab) / det;
      ndmin = (sax * sab - sbx * saa) / det;
    } else {
      nd = saa > 0 ? sax / saa : 0, ndmin = dmin;
    }
    const float td = dl_f16_round((float)std::max(0.0, nd)), tdmin = dl_f16_round((float)std::max(0.0, ndmin));
    if (td == d && tdmin == dmin) break;
    const double err = dl_k_affine_assign(x, w, spec, fits, td, tdmin, sc2, mn2, q2);
    if (!(err < best)) break;
    best = err, d = td, dmin = tdmin;
    std::memcpy(sc, sc2, (size_t)groups), std::memcpy(mn, mn2, (size_t)groups), std::memcpy(q, q2, DL_QK_K);
  }
  *d_out = d, *dmin_out = dmin;
}

// Sub-blocks with a signed scale (Q3_K, Q6_K): y = (d sc_j) q with sc in [smin, smax] and q in
// [qmin, qmax]. Writes d (f16-exact), sc, q[256].
struct dl_k_symmetric_spec {
  int group, qmin, qmax, smin, smax;
};

inline double dl_k_symmetric_assign(const float* x, const float* w, const dl_k_symmetric_spec& spec,
                                    const float* scales, float d, int8_t* sc, int8_t* q) {
  const int groups = DL_QK_K / spec.group;
  int8_t trial[DL_QK_K];
  double total = 0;
  for (int j = 0; j < groups; j++) {
    const float* xj = x + j * spec.group;
    const float* wj = w + j * spec.group;
    const int s0 = d != 0 ? dl_qround(scales[j] / d, spec.smin, spec.smax) : 0;
    double best = INFINITY;
    for (int a = std::max(spec.smin, s0 - 1); a <= std::min(spec.smax, s0 + 1); a++) {
      const float dl = d * (float)a;
      const float inv = dl != 0 ? 1.0f / dl : 0.0f;
      double err = 0;
      for (int i = 0; i < spec.group; i++) {
        trial[i] = (int8_t)dl_qround(xj[i] * inv, spec.qmin, spec.qmax);
        const double e = (double)(dl * (float)trial[i]) - xj[i];
        err += wj[i] * e * e;
      }
      if (err < best) best = err, sc[j] = (int8_t)a, std::memcpy(q + j * spec.group, trial, (size_t)spec.group);
    }
    total += best;
  }
  return total;
}

inline void dl_quantize_k_symmetric(const float* x, const float* w, const dl_k_symmetric_spec& spec, float* d_out,
                                    int8_t* sc, int8_t* q) {
  const int groups = DL_QK_K / spec.group;
  float scales[DL_QK_K / 16];
  float extreme = 0;  // the sub-block scale of largest magnitude, with its sign
  for (int j = 0; j < groups; j++) {
    scales[j] = dl_fit_symmetric(x + j * spec.group, w + j * spec.group, spec.group, spec.qmin, spec.qmax,
                                 q + j * spec.group);
    if (std::fabs(scales[j]) > std::fabs(extreme)) extreme = scales[j];
  }
  // The largest sub-block scale maps to either end of the integer scale range.
  int8_t sc2[DL_QK_K / 16], q2[DL_QK_K];
  float d = dl_f16_round(extreme / (float)spec.smin);
  double best = dl_k_symmetric_assign(x, w, spec, scales, d, sc, q);
  const float d_hi = dl_f16_round(extreme / (float)spec.smax);
  const double err_hi = dl_k_symmetric_assign(x, w, spec, scales, d_hi, sc2, q2);
  if (err_hi < best) {
    best = err_hi, d = d_hi;
    std::memcpy(sc, sc2, (size_t)groups), std::memcpy(q, q2, DL_QK_K);
  }
  for (int it = 0; it < 3; it++) {
    double saa = 0, sax = 0;
    for (int i = 0; i < DL_QK_K; i++) {
      const double a = (double)sc[i / spec.group] * q[i];
      saa += w[i] * a * a, sax += w[i] * a * x[i];
    }
    if (!(saa > 0)) break;
    const float td = dl_f16_round((float)(sax / saa));
    if (td == d) break;
    const double err = dl_k_symmetric_assign(x, w, spec, scales, td, sc2, q2);
    if (!(err < best)) break;
    best = err, d = td;
    std::memcpy(sc, sc2, (size_t)groups), std::memcpy(q, q2, DL_QK_K);
  }
  *d_out = d;
}

// --- Blocks: search, then pack into native/dl_quant.h's layouts

inline void dl_quantize_q4_0(const float* x, const float* w, dl_block_q4_0* b) {
  int8_t q[DL_QK];
  b->d = dl_quantize_symmetric_f16(x, w, DL_QK, -8, 7, q);
  for (int j = 0; j < DL_QK / 2; j++) b->qs[j] = (uint8_t)((q[j] + 8) | ((q[j + DL_QK / 2] + 8) << 4));
}

inline void dl_quantize_q4_1(const float* x, const float* w, dl_block_q4_1* b) {
  uint8_t q[DL_QK];
  dl_quantize_affine_f16(x, w, DL_QK, 15, &b->d, &b->m, q);
  for (int j = 0; j < DL_QK / 2; j++) b->qs[j] = (uint8_t)(q[j] | (q[j + DL_QK / 2] << 4));
}

// Low nibbles into qs as Q4 does, fifth bits into qh (bit e for element e).
inline void dl_pack_q5(const uint8_t* u, uint8_t* qs, uint8_t* qh) {
  uint32_t high = 0;
  for (int j = 0; j < DL_QK / 2; j++) {
    qs[j] = (uint8_t)((u[j] & 0xF) | ((u[j + DL_QK / 2] & 0xF) << 4));
  }
  for (int e = 0; e < DL_QK; e++) high |= (uint32_t)(u[e] >> 4) << e;
  for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(high >> (8 * k));
}

inline void dl_quantize_q5_0(const float* x, const float* w, dl_block_q5_0* b) {
  int8_t q[DL_QK];
  b->d = dl_quantize_symmetric_f16(x, w, DL_QK, -16, 15, q);
  uint8_t u[DL_QK];
  for (int e = 0; e < DL_QK; e++) u[e] = (uint8_t)(q[e] + 16);
  dl_pack_q5(u, b->qs, b->qh);
}

inline void dl_quantize_q5_1(const float* x, const float* w, dl_block_q5_1* b) {
  uint8_t u[DL_QK];
  dl_quantize_affine_f16(x, w, DL_QK, 31, &b->d, &b->m, u);
  dl_pack_q5(u, b->qs, b->qh);
}

// Q8_0 keeps q in [-127, 127], as ggml's does (integer dot products may rely on it).
inline void dl_quantize_q8_0(const float* x, const float* w, dl_block_q8_0* b) {
  b->d = dl_quantize_symmetric_f16(x, w, DL_QK, -127, 127, b->qs);
}

// 2-bit fields of Q2_K / Q3_K: element half * 128 + k * 32 + i sits at bits 2k of qs[half * 32 + i].
inline void dl_pack_2bit(const uint8_t* u, uint8_t* qs) {
  for (int half = 0; half < 2; half++) {
    for (int i = 0; i < 32; i++) {
      uint8_t byte = 0;
      for (int k = 0; k < 4; k++) byte |= (uint8_t)((u[half * 128 + k * 32 + i] & 3) << (2 * k));
      qs[half * 32 + i] = byte;
    }
  }
}

inline void dl_quantize_q2_k(const float* x, const float* w, dl_block_q2_k* b) {
  float d, dmin;
  uint8_t sc[16], mn[16], q[DL_QK_K];
  dl_quantize_k_affine(x, w, dl_k_affine_spec{16, 3, 15}, &d, &dmin, sc, mn, q);
  b->d = dl_f32_to_f16(d), b->dmin = dl_f32_to_f16(dmin);
  for (int j = 0; j < 16; j++) b->scales[j] = (uint8_t)(sc[j] | (mn[j] << 4));
  dl_pack_2bit(q, b->qs);
}

inline void dl_quantize_q3_k(const float* x, const float* w, dl_block_q3_k* b) {
  float d;
  int8_t sc[16], q[DL_QK_K];
  dl_quantize_k_symmetric(x, w, dl_k_symmetric_spec{16, -4, 3, -32, 31}, &d, sc, q);
  b->d = dl_f32_to_f16(d);
  // 6-bit scales biased by 32: low nibbles in bytes 0..7, high 2 bits in bytes 8..11 (dl_q3_k_scales).
  std::memset(b->scales, 0, sizeof(b->scales));
  for (int j = 0; j < 16; j++) {
    const int s = sc[j] + 32;
    b->scales[j % 8] |= (uint8_t)((s & 0xF) << (j < 8 ? 0 : 4));
    b->scales[8 + j % 4] |= (uint8_t)((s >> 4) << (2 * (j / 4)));
  }
  uint8_t u[DL_QK_K];
  for (int e = 0; e < DL_QK_K; e++) u[e] = (uint8_t)(q[e] + 4);
  dl_pack_2bit(u, b->qs);
  // The third bit of element half * 128 + k * 32 + i is bit half * 4 + k of hmask[i].
  std::memset(b->hmask, 0, sizeof(b->hmask));
  for (int e = 0; e < DL_QK_K; e++) b->hmask[e % 32] |= (uint8_t)((u[e] >> 2) << (e / 32));
}

// 8 6-bit scales and 8 6-bit mins of Q4_K / Q5_K (the inverse of dl_k4_scale_min).
inline void dl_pack_k4_scales(const uint8_t* sc, const uint8_t* mn, uint8_t* packed) {
  for (int j = 0; j < 4; j++) {
    packed[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
    packed[j + 4] = (uint8_t)(mn[j] | ((mn[j + 4] >> 4) << 6));
    packed[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
  }
}

inline void dl_quantize_q4_k(const float* x, const float* w, dl_block_q4_k* b) {
  float d, dmin;
  uint8_t sc[8], mn[8], q[DL_QK_K];
  dl_quantize_k_affine(x, w, dl_k_affine_spec{32, 15, 63}, &d, &dmin, sc, mn, q);
  b->d = dl_f32_to_f16(d), b->dmin = dl_f32_to_f16(dmin);
  dl_pack_k4_scales(sc, mn, b->scales);
  // Sub-blocks 2p and 2p + 1 share 32 bytes: low nibbles, then high nibbles.
  for (int p = 0; p < 4; p++) {
    for (int l = 0; l < 32; l++) b->qs[p * 32 + l] = (uint8_t)(q[p * 64 + l] | (q[p * 64 + 32 + l] << 4));
  }
}

inline void dl_quantize_q5_k(const float* x, const float* w, dl_block_q5_k* b) {
  float d, dmin;
  uint8_t sc[8], mn[8], u[DL_QK_K];
  dl_quantize_k_affine(x, w, dl_k_affine_spec{32, 31, 63}, &d, &dmin, sc, mn, u);
  b->d = dl_f32_to_f16(d), b->dmin = dl_f32_to_f16(dmin);
  dl_pack_k4_scales(sc, mn, b->scales);
  std::memset(b->qh, 0, sizeof(b->qh));
  for (int p = 0; p < 4; p++) {
    for (int l = 0; l < 32; l++) {
      b->qs[p * 32 + l] = (uint8_t)((u[p * 64 + l] & 0xF) | ((u[p * 64 + 32 + l] & 0xF) << 4));
    }
  }
  // The fifth bit of element l of sub-block j is bit j of qh[l].
  for (int e = 0; e < DL_QK_K; e++) b->qh[e % 32] |= (uint8_t)((u[e] >> 4) << (e / 32));
}

inline void dl_quantize_q6_k(const float* x, const float* w, dl_block_q6_k* b) {
  float d;
  int8_t q[DL_QK_K];
  dl_quantize_k_symmetric(x, w, dl_k_symmetric_spec{16, -32, 31, -128, 127}, &d, b->scales, q);
  b->d = dl_f32_to_f16(d);
  // Per half of 128: element 32k + l has its low nibble in ql[l + 32 (k & 1)] (high nibble when
  // k >= 2) and its top 2 bits at bits 2k of qh[l].
  for (int half = 0; half < 2; half++) {
    uint8_t* ql = b->ql + half * 64;
    uint8_t* qh = b->qh + half * 32;
    const int8_t* qq = q + half * 128;
    for (int l = 0; l < 32; l++) {
      const int u0 = qq[l] + 32, u1 = qq[l + 32] + 32, u2 = qq[l + 64] + 32, u3 = qq[l + 96] + 32;
      ql[l] = (uint8_t)((u0 & 0xF) | ((u2 & 0xF) << 4));
      ql[l + 32] = (uint8_t)((u1 & 0xF) | ((u3 & 0xF) << 4));
      qh[l] = (uint8_t)((u0 >> 4) | ((u1 >> 4) << 2) | ((u2 >> 4) << 4) | ((u3 >> 4) << 6));
    }
  }
}

// Q8_K: an f32 scale (no f16 rounding), q in [-127, 127], and the 16-element sums the K-format dot
// products use.
inline void dl_quantize_q8_k(const float* x, const float* w, dl_block_q8_k* b) {
  b->d = dl_fit_symmetric(x, w, DL_QK_K, -127, 127, b->qs);
  for (int g = 0; g < DL_QK_K / 16; g++) {
    int sum = 0;
    for (int l = 0; l < 16; l++) sum += b->qs[g * 16 + l];
    b->bsums[g] = (int16_t)sum;
  }
}

inline void dl_quantize_int4(const float* x, const float* w, dl_block_int4* b) {
  uint8_t q[DL_INT4_GROUP];
  dl_quantize_affine_f16(x, w, DL_INT4_GROUP, 15, &b->d, &b->m, q);
  for (int j = 0; j < DL_INT4_GROUP / 2; j++) b->qs[j] = (uint8_t)(q[j] | (q[j + DL_INT4_GROUP / 2] << 4));
}

// One row of a blocked format other than INT8; w_row is [cols] of importance or NULL.
inline void dl_quantize_block_row(int32_t dtype, const float* x, const float* w_row, int64_t cols, uint8_t* dst) {
  const int64_t block_len = DL_DTYPES[dtype].block_len, block_bytes = DL_DTYPES[dtype].block_bytes;
  float ones[DL_QK_K];
  std::fill(ones, ones + DL_QK_K, 1.0f);
  for (int64_t blk = 0; blk < cols / block_len; blk++) {
    const float* xb = x + blk * block_len;
    const float* wb = dl_group_weights(w_row != nullptr ? w_row + blk * block_len : nullptr, (int)block_len, ones);
    void* out = dst + blk * block_bytes;
    switch (dtype) {
      case DL_DTYPE_Q4_0: dl_quantize_q4_0(xb, wb, static_cast<dl_block_q4_0*>(out)); break;
      case DL_DTYPE_Q4_1: dl_quantize_q4_1(xb, wb, static_cast<dl_block_q4_1*>(out)); break;
      case DL_DTYPE_Q5_0: dl_quantize_q5_0(xb, wb, static_cast<dl_block_q5_0*>(out)); break;
      case DL_DTYPE_Q5_1: dl_quantize_q5_1(xb, wb, static_cast<dl_block_q5_1*>(out)); break;
      case DL_DTYPE_Q8_0: dl_quantize_q8_0(xb, wb, static_cast<dl_block_q8_0*>(out)); break;
      case DL_DTYPE_Q2_K: dl_quantize_q2_k(xb, wb, static_cast<dl_block_q2_k*>(out)); break;
      case DL_DTYPE_Q3_K: dl_quantize_q3_k(xb, wb, static_cast<dl_block_q3_k*>(out)); break;
      case DL_DTYPE_Q4_K: dl_quantize_q4_k(xb, wb, static_cast<dl_block_q4_k*>(out)); break;
      case DL_DTYPE_Q5_K: dl_quantize_q5_k(xb, wb, static_cast<dl_block_q5_k*>(out)); break;
      case DL_DTYPE_Q6_K: dl_quantize_q6_k(xb, wb, static_cast<dl_block_q6_k*>(out)); break;
      case DL_DTYPE_Q8_K: dl_quantize_q8_k(xb, wb, static_cast<dl_block_q8_k*>(out)); break;
      case DL_DTYPE_INT4: dl_quantize_int4(xb, wb, static_cast<dl_block_int4*>(out)); break;
      default: break;  // dl_quantize_host routes every other dtype elsewhere
    }
  }
}

// --- Matrices

// INT8, per row: scale = max|x| / 127, q = round(x / scale) (symmetric, no search: the format is
// defined by this rule). The scale is stored after all rows (DL_DTYPE_TABLE's row_bytes).
inline void dl_quantize_int8_row(const float* x, int64_t cols, int8_t* q, float* scale) {
  float amax = 0;
  for (int64_t j = 0; j < cols; j++) amax = std::max(amax, std::fabs(x[j]));
  *scale = amax / 127.0f;
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  for (int64_t j = 0; j < cols; j++) q[j] = (int8_t)dl_qround(x[j] * inv, -127, 127);
}

// Formats whose scales are f16 cannot hold values beyond f16's range.
inline bool dl_dtype_has_f16_scales(int32_t dtype) {
  return dl_dtype_is_quantized(dtype) && dtype != DL_DTYPE_Q8_K && dtype != DL_DTYPE_INT8;
}

// Checks the values, then quantizes a [rows, cols] host matrix into dst (dl_matrix_bytes(dtype,
// rows, cols) host bytes). Arguments are those of dl_quantize, already validated by
// dl_validate_quantize; importance is [cols] of host memory or NULL. Rows run on num_threads
// OpenMP threads where the build has OpenMP.
inline int32_t dl_quantize_host(const char* fn, int num_threads, void* dst, int32_t dtype, const float* src,
                                int64_t rows, int64_t cols, const float* importance) {
  const float limit = dl_dtype_has_f16_scales(dtype) ? 65504.0f : INFINITY;
  for (int64_t i = 0; i < rows * cols; i++) {
    if (!(std::fabs(src[i]) <= limit)) {
      if (std::isfinite(src[i])) {
        return dl_fail(DL_ERR_INVALID_ARGUMENT,
                       "%s: expected values within f16's range (|x| <= 65504) for %s's f16 scales, found %g at "
                       "row %lld, column %lld",
                       fn, DL_DTYPES[dtype].name, (double)src[i], (long long)(i / cols), (long long)(i % cols));
      }
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected finite values in src, found %g at row %lld, column %lld",
                     fn, (double)src[i], (long long)(i / cols), (long long)(i % cols));
    }
  }
  if (importance != nullptr) {
    for (int64_t j = 0; j < cols; j++) {
      if (!(importance[j] >= 0.0f) || std::isinf(importance[j])) {
        return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected finite importance >= 0, found %g at column %lld", fn,
                       (double)importance[j], (long long)j);
      }
    }
  }
  auto* out = static_cast<uint8_t*>(dst);
  const int64_t row_stride = (int64_t)dl_dtype_bytes(dtype, (uint64_t)cols);
  const int threads = rows * cols < (1 << 14) ? 1 : std::max(1, num_threads);
  (void)threads;  // unused without OpenMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < rows; r++) {
    const float* x = src + r * cols;
    uint8_t* row = out + r * row_stride;
    if (dtype == DL_DTYPE_INT8) {
      float scale;
      dl_quantize_int8_row(x, cols, reinterpret_cast<int8_t*>(row), &scale);
      std::memcpy(out + rows * row_stride + r * 4, &scale, 4);  // scales may be unaligned
    } else if (dl_dtype_is_quantized(dtype)) {
      dl_quantize_block_row(dtype, x, importance, cols, row);
    } else if (dtype == DL_DTYPE_F32) {
      std::memcpy(row, x, (size_t)cols * sizeof(float));
    } else {
      for (int64_t j = 0; j < cols; j++) {
        const uint16_t h = dtype == DL_DTYPE_F16 ? dl_f32_to_f16(x[j]) : dl_f32_to_bf16(x[j]);
        std::memcpy(row + 2 * j, &h, 2);
      }
    }
  }
  return DL_OK;
}
