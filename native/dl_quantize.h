// Host quantizers of every blocked format and INT8 (header-only, host-only): the CPU build's
// dl_quantize calls dl_quantize_host, and the CUDA build's copies through the host and calls it too,
// so both write the same bytes. Each block's parameters come from a weighted least-squares search
// (candidate scales, then alternating re-quantization and refits, then a search of the stored
// integer or f16 parameters themselves), scored on the floats native/dl_dequant.h reads back.
// Not ggml's algorithm and none of its code. The bytes depend only on the input, not on OpenMP or
// the thread count (see DL_LANES); both builds compile this for baseline x86-64, where nothing is
// fused into an FMA (a -march=native build could pick a different scale in rare near-ties).
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

// Rows run on OpenMP threads where the build has OpenMP (the CPU build), one after another
// elsewhere (the CUDA build's host code), without unknown-pragma warnings.
#define DL_QSTR_(...) #__VA_ARGS__
#ifdef _OPENMP
#define DL_OMP(...) _Pragma(DL_QSTR_(omp __VA_ARGS__))
#else
#define DL_OMP(...)
#endif

// Sums over a group are kept in DL_LANES partial sums added in a fixed order: the same floats in
// every build (OpenMP or not, any vector width), so both builds pick the same parameters and write
// the same bytes, while the loops still vectorize. Every group length is a multiple of DL_LANES.
constexpr int DL_LANES = 8;
struct dl_lanes {
  float v[DL_LANES] = {};
  float total() const { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }
};

// --- Scalar helpers

// The nearest integer to v (ties to even, as lrintf) for |v| < 2^22, in plain float arithmetic so
// the loops below vectorize.
inline float dl_rintf(float v) { return (v + 12582912.0f) - 12582912.0f; }

// round(v) clamped to [lo, hi], as a float.
inline float dl_qgrid(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  return dl_rintf(v);
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
//
// The searches keep q as floats holding integers (so the loops vectorize) and score candidates by
// the closed-form weighted squared error of their sums.

// Σ w x and Σ w x² of a group, fixed across its candidates.
struct dl_group_sums {
  float w, x, xx;
};

inline dl_group_sums dl_sum_group(const float* x, const float* w, int n) {
  dl_lanes sw, sx, sxx;
  for (int i = 0; i < n; i += DL_LANES) {
    for (int k = 0; k < DL_LANES; k++) {
      const float wk = w[i + k], xk = x[i + k];
      sw.v[k] += wk, sx.v[k] += wk * xk, sxx.v[k] += wk * xk * xk;
    }
  }
  return dl_group_sums{sw.total(), sx.total(), sxx.total()};
}

// x ≈ scale * q + offset with integer q in [0, nmax], minimizing Σ w (scale q + offset - x)²;
// offset_le_zero keeps offset <= 0 (the K formats store it as a non-negative min).
struct dl_affine_fit {
  float scale, offset;
  double err;
};

// Puts x on the grid q = round((x - offset) * inv) in [0, nmax] and returns the least-squares
// (scale, offset) for that q with its error.
inline dl_affine_fit dl_affine_step(const float* x, const float* w, int n, const dl_group_sums& g, float nmax,
                                    bool offset_le_zero, float offset, float inv, float prev_scale, float* q) {
  dl_lanes lq, lqq, lqx;
  for (int i = 0; i < n; i += DL_LANES) {
    for (int k = 0; k < DL_LANES; k++) {
      const float qk = dl_qgrid((x[i + k] - offset) * inv, 0.0f, nmax), wq = w[i + k] * qk;
      q[i + k] = qk;
      lq.v[k] += wq, lqq.v[k] += wq * qk, lqx.v[k] += wq * x[i + k];
    }
  }
  const double sq = lq.total(), sqq = lqq.total(), sqx = lqx.total();
  const double sw = g.w, sx = g.x;
  double s, o;
  const double det = sw * sqq - (double)sq * sq;
  if (det > 1e-9 * sw * sqq) {
    s = (sw * sqx - (double)sq * sx) / det;
    o = ((double)sqq * sx - (double)sq * sqx) / det;
  } else {  // every q alike: any scale fits, so keep the previous one and centre the offset
    s = prev_scale;
    o = (sx - s * sq) / sw;
  }
  if (offset_le_zero && o > 0) {
    o = 0;
    s = sqq > 0 ? sqx / (double)sqq : 0;
  }
  if (s < 0) s = 0;
  const double err = g.xx - 2 * s * sqx - 2 * o * sx + s * s * sqq + 2 * s * o * sq + o * o * sw;
  return dl_affine_fit{(float)s, (float)o, std::max(0.0, err)};
}

inline dl_affine_fit dl_fit_affine(const float* x, const float* w, int n, int nmax, bool offset_le_zero, float* q) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  if (offset_le_zero) lo = std::min(lo, 0.0f);
  if (!(hi > lo)) {  // a constant group (or all zeros): exact with scale 0
    std::fill(q, q + n, 0.0f);
    return dl_affine_fit{0.0f, lo, 0.0};
  }
  const dl_group_sums g = dl_sum_group(x, w, n);
  float trial[DL_QK_K];
  dl_affine_fit best{0, 0, INFINITY};
  // Candidate steps around the min/max one: stretching the grid past the extremes trades their
  // error for a finer grid everywhere else, which often pays.
  for (int c = 0; c <= 12; c++) {
    const float levels = (float)nmax - 1.0f + 0.2f * (float)c;
    const dl_affine_fit fit =
        dl_affine_step(x, w, n, g, (float)nmax, offset_le_zero, lo, levels / (hi - lo), (hi - lo) / levels, trial);
    if (fit.err < best.err) best = fit, std::memcpy(q, trial, sizeof(float) * n);
  }
  // Alternate re-quantizing and refitting (Lloyd's algorithm on a uniform grid) while it helps.
  for (int it = 0; it < 6 && best.scale > 0; it++) {
    const dl_affine_fit fit = dl_affine_step(x, w, n, g, (float)nmax, offset_le_zero, best.offset,
                                             1.0f / best.scale, best.scale, trial);
    if (!(fit.err < best.err * (1 - 1e-6))) break;
    best = fit, std::memcpy(q, trial, sizeof(float) * n);
  }
  return best;
}

// x ≈ scale * q with integer q in [qmin, qmax] (qmin < 0 < qmax), minimizing Σ w (scale q - x)²;
// scale may take either sign (which end of an asymmetric range the largest value lands on). Puts
// x on the grid round(x * inv) and returns the least-squares error for it, its scale in *scale.
inline double dl_symmetric_step(const float* x, const float* w, int n, double sxx, float qmin, float qmax, float inv,
                                float* scale, float* q) {
  dl_lanes lxq, lqq;
  for (int i = 0; i < n; i += DL_LANES) {
    for (int k = 0; k < DL_LANES; k++) {
      const float qk = dl_qgrid(x[i + k] * inv, qmin, qmax), wq = w[i + k] * qk;
      q[i + k] = qk;
      lxq.v[k] += wq * x[i + k], lqq.v[k] += wq * qk;
    }
  }
  const float sxq = lxq.total(), sqq = lqq.total();
  *scale = sqq > 0 ? sxq / sqq : 0.0f;
  return sqq > 0 ? std::max(0.0, sxx - (double)sxq * sxq / sqq) : sxx;
}

inline float dl_fit_symmetric(const float* x, const float* w, int n, int qmin, int qmax, float* q) {
  float xm = 0;  // the value of largest magnitude, with its sign
  for (int i = 0; i < n; i++) {
    if (std::fabs(x[i]) > std::fabs(xm)) xm = x[i];
  }
  if (xm == 0) {
    std::fill(q, q + n, 0.0f);
    return 0.0f;
  }
  const double sxx = dl_sum_group(x, w, n).xx;
  float trial[DL_QK_K];
  float best_scale = 0, scale;
  double best = INFINITY;
  const int ends[2] = {qmin, qmax};
  for (int e = 0; e < (qmax == -qmin ? 1 : 2); e++) {
    for (int c = 0; c <= 8; c++) {
      // The largest value lands up to 0.8 of a step inside or outside the end of the range.
      const float target = (float)ends[e] + (ends[e] < 0 ? -0.2f : 0.2f) * (float)(c - 4);
      const double err = dl_symmetric_step(x, w, n, sxx, (float)qmin, (float)qmax, target / xm, &scale, trial);
      if (err < best) best = err, best_scale = scale, std::memcpy(q, trial, sizeof(float) * n);
    }
  }
  for (int it = 0; it < 6 && best_scale != 0; it++) {
    const double err = dl_symmetric_step(x, w, n, sxx, (float)qmin, (float)qmax, 1.0f / best_scale, &scale, trial);
    if (!(err < best * (1 - 1e-6))) break;
    best = err, best_scale = scale, std::memcpy(q, trial, sizeof(float) * n);
  }
  return best_scale;
}

// --- One group, stored parameters: the error of the floats the dequantizer will produce

// y = q * d with q = round(x / d) in [qmin, qmax]: Σ w (y - x)² of the floats the dequantizer
// will produce (d is an f16 value). q is written.
inline float dl_symmetric_error(const float* x, const float* w, int n, float qmin, float qmax, float d, float* q) {
  const float inv = d != 0 ? 1.0f / d : 0.0f;
  dl_lanes err;
  for (int i = 0; i < n; i += DL_LANES) {
    for (int k = 0; k < DL_LANES; k++) {
      const float qk = dl_qgrid(x[i + k] * inv, qmin, qmax), e = qk * d - x[i + k];
      q[i + k] = qk;
      err.v[k] += w[i + k] * e * e;
    }
  }
  return err.total();
}

// y = q * d + m with q = round((x - m) / d) in [0, nmax].
inline float dl_affine_error(const float* x, const float* w, int n, float nmax, float d, float m, float* q) {
  const float inv = d > 0 ? 1.0f / d : 0.0f;
  dl_lanes err;
  for (int i = 0; i < n; i += DL_LANES) {
    for (int k = 0; k < DL_LANES; k++) {
      const float qk = dl_qgrid((x[i + k] - m) * inv, 0.0f, nmax), e = qk * d + m - x[i + k];
      q[i + k] = qk;
      err.v[k] += w[i + k] * e * e;
    }
  }
  return err.total();
}

// A symmetric group with one f16 scale (Q4_0, Q5_0, Q8_0): the fitted scale and its f16
// neighbours, and the largest value mapped exactly onto either end of the range (so a constant
// group comes back exact). Returns the f16 bits; q is written.
inline uint16_t dl_quantize_symmetric_f16(const float* x, const float* w, int n, int qmin, int qmax, float* q) {
  const uint16_t h0 = dl_f32_to_f16(dl_fit_symmetric(x, w, n, qmin, qmax, q));
  float trial[DL_QK_K];
  uint16_t best_h = h0;
  float best = INFINITY;
  auto consider = [&](uint16_t h) {
    const float err = dl_symmetric_error(x, w, n, (float)qmin, (float)qmax, dl_f16_to_f32(h), trial);
    if (err < best) best = err, best_h = h, std::memcpy(q, trial, sizeof(float) * n);
  };
  for (int s = -1; s <= 1; s++) consider(dl_f16_step(h0, s));
  float xm = 0;
  for (int i = 0; i < n; i++) {
    if (std::fabs(x[i]) > std::fabs(xm)) xm = x[i];
  }
  consider(dl_f32_to_f16(xm / (float)qmin));
  consider(dl_f32_to_f16(xm / (float)qmax));
  return best_h;
}

// An affine group with f16 scale and offset (Q4_1, Q5_1, INT4): the fitted pair and its f16
// neighbours, and plain min/max (so it is never worse than that). Writes d, m bits and q.
inline void dl_quantize_affine_f16(const float* x, const float* w, int n, int nmax, uint16_t* d_bits,
                                   uint16_t* m_bits, float* q) {
  const dl_affine_fit fit = dl_fit_affine(x, w, n, nmax, false, q);
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  float trial[DL_QK_K];
  float best = INFINITY;
  auto consider = [&](uint16_t hd, uint16_t hm) {
    const float err = dl_affine_error(x, w, n, (float)nmax, dl_f16_to_f32(hd), dl_f16_to_f32(hm), trial);
    if (err < best) best = err, *d_bits = hd, *m_bits = hm, std::memcpy(q, trial, sizeof(float) * n);
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

// For given d and dmin, each sub-block's best (sc, mn) among the neighbours of its fitted scale
// and min, scored on the dequantizer's floats (dl = d sc, ml = dmin mn, y = dl q - ml).
inline float dl_k_affine_assign(const float* x, const float* w, const dl_k_affine_spec& spec,
                                const dl_affine_fit* fits, float d, float dmin, uint8_t* sc, uint8_t* mn,
                                float* q) {
  const int groups = DL_QK_K / spec.group;
  float trial[DL_QK_K];
  float total = 0;
  for (int j = 0; j < groups; j++) {
    const float* xj = x + j * spec.group;
    const float* wj = w + j * spec.group;
    const int sc0 = d > 0 ? (int)dl_qgrid(fits[j].scale / d, 0.0f, (float)spec.smax) : 0;
    const int mn0 = dmin > 0 ? (int)dl_qgrid(-fits[j].offset / dmin, 0.0f, (float)spec.smax) : 0;
    float best = INFINITY;
    for (int a = std::max(0, sc0 - 1); a <= std::min(spec.smax, sc0 + 1); a++) {
      for (int b = std::max(0, mn0 - 1); b <= std::min(spec.smax, mn0 + 1); b++) {
        const float dl = d * (float)a, ml = dmin * (float)b;
        const float err = dl_affine_error(xj, wj, spec.group, (float)spec.nmax, dl, -ml, trial);
        if (err < best) {
          best = err, sc[j] = (uint8_t)a, mn[j] = (uint8_t)b;
          std::memcpy(q + j * spec.group, trial, sizeof(float) * spec.group);
        }
      }
    }
    total += best;
  }
  return total;
}

inline void dl_quantize_k_affine(const float* x, const float* w, const dl_k_affine_spec& spec, float* d_out,
                                 float* dmin_out, uint8_t* sc, uint8_t* mn, float* q) {
  const int groups = DL_QK_K / spec.group;
  dl_affine_fit fits[DL_QK_K / 16];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < groups; j++) {
    fits[j] = dl_fit_affine(x + j * spec.group, w + j * spec.group, spec.group, spec.nmax, true, q + j * spec.group);
    max_scale = std::max(max_scale, fits[j].scale);
    max_min = std::max(max_min, -fits[j].offset);
  }
  float d = dl_f16_round(max_scale / (float)spec.smax), dmin = dl_f16_round(max_min / (float)spec.smax);
  float best = dl_k_affine_assign(x, w, spec, fits, d, dmin, sc, mn, q);
  // Refit the two super-block scales to the chosen integers by least squares (y = d a - dmin b
  // with a = sc q, b = mn), then re-pick the integers for them; keep each round that helps.
  uint8_t sc2[DL_QK_K / 16], mn2[DL_QK_K / 16];
  float q2[DL_QK_K];
  for (int it = 0; it < 3; it++) {
    double saa = 0, sab = 0, sbb = 0, sax = 0, sbx = 0;
    for (int j = 0; j < groups; j++) {
      const float* xj = x + j * spec.group;
      const float* wj = w + j * spec.group;
      const float* qj = q + j * spec.group;
      dl_lanes lw, lwq, lwqq, lwx, lwqx;
      for (int i = 0; i < spec.group; i += DL_LANES) {
        for (int k = 0; k < DL_LANES; k++) {
          const float wk = wj[i + k], wq = wk * qj[i + k];
          lw.v[k] += wk, lwq.v[k] += wq, lwqq.v[k] += wq * qj[i + k], lwx.v[k] += wk * xj[i + k];
          lwqx.v[k] += wq * xj[i + k];
        }
      }
      const double sw = lw.total(), swq = lwq.total(), swqq = lwqq.total(), swx = lwx.total();
      const double swqx = lwqx.total(), a = sc[j], b = mn[j];
      saa += a * a * swqq, sab += a * b * swq, sbb += b * b * sw, sax += a * swqx, sbx += b * swx;
    }
    const double det = saa * sbb - sab * sab;
    double nd, ndmin;
    if (det > 1e-9 * saa * sbb) {
      nd = (sax * sbb - sbx * sab) / det;
      ndmin = (sax * sab - sbx * saa) / det;
    } else {
      nd = saa > 0 ? sax / saa : 0, ndmin = dmin;
    }
    const float td = dl_f16_round((float)std::max(0.0, nd)), tdmin = dl_f16_round((float)std::max(0.0, ndmin));
    if (td == d && tdmin == dmin) break;
    const float err = dl_k_affine_assign(x, w, spec, fits, td, tdmin, sc2, mn2, q2);
    if (!(err < best)) break;
    best = err, d = td, dmin = tdmin;
    std::memcpy(sc, sc2, (size_t)groups), std::memcpy(mn, mn2, (size_t)groups), std::memcpy(q, q2, sizeof(q2));
  }
  *d_out = d, *dmin_out = dmin;
}

// Sub-blocks with a signed scale (Q3_K, Q6_K): y = (d sc_j) q with sc in [smin, smax] and q in
// [qmin, qmax]. Writes d (f16-exact), sc, q[256].
struct dl_k_symmetric_spec {
  int group, qmin, qmax, smin, smax;
};

inline float dl_k_symmetric_assign(const float* x, const float* w, const dl_k_symmetric_spec& spec,
                                   const float* scales, float d, int8_t* sc, float* q) {
  const int groups = DL_QK_K / spec.group;
  float trial[DL_QK_K];
  float total = 0;
  for (int j = 0; j < groups; j++) {
    const float* xj = x + j * spec.group;
    const float* wj = w + j * spec.group;
    const int s0 = d != 0 ? (int)dl_qgrid(scales[j] / d, (float)spec.smin, (float)spec.smax) : 0;
    float best = INFINITY;
    for (int a = std::max(spec.smin, s0 - 1); a <= std::min(spec.smax, s0 + 1); a++) {
      const float err =
          dl_symmetric_error(xj, wj, spec.group, (float)spec.qmin, (float)spec.qmax, d * (float)a, trial);
      if (err < best) {
        best = err, sc[j] = (int8_t)a;
        std::memcpy(q + j * spec.group, trial, sizeof(float) * spec.group);
      }
    }
    total += best;
  }
  return total;
}

inline void dl_quantize_k_symmetric(const float* x, const float* w, const dl_k_symmetric_spec& spec, float* d_out,
                                    int8_t* sc, float* q) {
  const int groups = DL_QK_K / spec.group;
  float scales[DL_QK_K / 16];
  float extreme = 0;  // the sub-block scale of largest magnitude, with its sign
  for (int j = 0; j < groups; j++) {
    scales[j] = dl_fit_symmetric(x + j * spec.group, w + j * spec.group, spec.group, spec.qmin, spec.qmax,
                                 q + j * spec.group);
    if (std::fabs(scales[j]) > std::fabs(extreme)) extreme = scales[j];
  }
  // The largest sub-block scale maps to either end of the integer scale range.
  int8_t sc2[DL_QK_K / 16];
  float q2[DL_QK_K];
  float d = dl_f16_round(extreme / (float)spec.smin);
  float best = dl_k_symmetric_assign(x, w, spec, scales, d, sc, q);
  const float d_hi = dl_f16_round(extreme / (float)spec.smax);
  const float err_hi = dl_k_symmetric_assign(x, w, spec, scales, d_hi, sc2, q2);
  if (err_hi < best) {
    best = err_hi, d = d_hi;
    std::memcpy(sc, sc2, (size_t)groups), std::memcpy(q, q2, sizeof(q2));
  }
  // Refit d to the chosen integers by least squares, then re-pick them; keep each round that helps.
  for (int it = 0; it < 3; it++) {
    double saa = 0, sax = 0;
    for (int j = 0; j < groups; j++) {
      const float* xj = x + j * spec.group;
      const float* wj = w + j * spec.group;
      const float* qj = q + j * spec.group;
      dl_lanes lwqq, lwqx;
      for (int i = 0; i < spec.group; i += DL_LANES) {
        for (int k = 0; k < DL_LANES; k++) {
          const float wq = wj[i + k] * qj[i + k];
          lwqq.v[k] += wq * qj[i + k], lwqx.v[k] += wq * xj[i + k];
        }
      }
      saa += (double)sc[j] * sc[j] * lwqq.total(), sax += (double)sc[j] * lwqx.total();
    }
    if (!(saa > 0)) break;
    const float td = dl_f16_round((float)(sax / saa));
    if (td == d) break;
    const float err = dl_k_symmetric_assign(x, w, spec, scales, td, sc2, q2);
    if (!(err < best)) break;
    best = err, d = td;
    std::memcpy(sc, sc2, (size_t)groups), std::memcpy(q, q2, sizeof(q2));
  }
  *d_out = d;
}

// --- Blocks: search, then pack into native/dl_quant.h's layouts

// The searches' integer-valued floats q, plus bias, as bytes (the unsigned field values).
inline void dl_q_bytes(const float* q, int n, int bias, uint8_t* u) {
  for (int i = 0; i < n; i++) u[i] = (uint8_t)((int)q[i] + bias);
}

inline void dl_quantize_q4_0(const float* x, const float* w, dl_block_q4_0* b) {
  float q[DL_QK];
  uint8_t u[DL_QK];
  b->d = dl_quantize_symmetric_f16(x, w, DL_QK, -8, 7, q);
  dl_q_bytes(q, DL_QK, 8, u);
  for (int j = 0; j < DL_QK / 2; j++) b->qs[j] = (uint8_t)(u[j] | (u[j + DL_QK / 2] << 4));
}

inline void dl_quantize_q4_1(const float* x, const float* w, dl_block_q4_1* b) {
  float q[DL_QK];
  uint8_t u[DL_QK];
  dl_quantize_affine_f16(x, w, DL_QK, 15, &b->d, &b->m, q);
  dl_q_bytes(q, DL_QK, 0, u);
  for (int j = 0; j < DL_QK / 2; j++) b->qs[j] = (uint8_t)(u[j] | (u[j + DL_QK / 2] << 4));
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
  float q[DL_QK];
  uint8_t u[DL_QK];
  b->d = dl_quantize_symmetric_f16(x, w, DL_QK, -16, 15, q);
  dl_q_bytes(q, DL_QK, 16, u);
  dl_pack_q5(u, b->qs, b->qh);
}

inline void dl_quantize_q5_1(const float* x, const float* w, dl_block_q5_1* b) {
  float q[DL_QK];
  uint8_t u[DL_QK];
  dl_quantize_affine_f16(x, w, DL_QK, 31, &b->d, &b->m, q);
  dl_q_bytes(q, DL_QK, 0, u);
  dl_pack_q5(u, b->qs, b->qh);
}

// Q8_0 keeps q in [-127, 127], as ggml's does (integer dot products may rely on it).
inline void dl_quantize_q8_0(const float* x, const float* w, dl_block_q8_0* b) {
  float q[DL_QK];
  b->d = dl_quantize_symmetric_f16(x, w, DL_QK, -127, 127, q);
  for (int j = 0; j < DL_QK; j++) b->qs[j] = (int8_t)q[j];
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
  float d, dmin, q[DL_QK_K];
  uint8_t sc[16], mn[16], u[DL_QK_K];
  dl_quantize_k_affine(x, w, dl_k_affine_spec{16, 3, 15}, &d, &dmin, sc, mn, q);
  b->d = dl_f32_to_f16(d), b->dmin = dl_f32_to_f16(dmin);
  for (int j = 0; j < 16; j++) b->scales[j] = (uint8_t)(sc[j] | (mn[j] << 4));
  dl_q_bytes(q, DL_QK_K, 0, u);
  dl_pack_2bit(u, b->qs);
}

inline void dl_quantize_q3_k(const float* x, const float* w, dl_block_q3_k* b) {
  float d, q[DL_QK_K];
  int8_t sc[16];
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
  dl_q_bytes(q, DL_QK_K, 4, u);
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
  float d, dmin, q[DL_QK_K];
  uint8_t sc[8], mn[8], u[DL_QK_K];
  dl_quantize_k_affine(x, w, dl_k_affine_spec{32, 15, 63}, &d, &dmin, sc, mn, q);
  b->d = dl_f32_to_f16(d), b->dmin = dl_f32_to_f16(dmin);
  dl_pack_k4_scales(sc, mn, b->scales);
  dl_q_bytes(q, DL_QK_K, 0, u);
  // Sub-blocks 2p and 2p + 1 share 32 bytes: low nibbles, then high nibbles.
  for (int p = 0; p < 4; p++) {
    for (int l = 0; l < 32; l++) b->qs[p * 32 + l] = (uint8_t)(u[p * 64 + l] | (u[p * 64 + 32 + l] << 4));
  }
}

inline void dl_quantize_q5_k(const float* x, const float* w, dl_block_q5_k* b) {
  float d, dmin, q[DL_QK_K];
  uint8_t sc[8], mn[8], u[DL_QK_K];
  dl_quantize_k_affine(x, w, dl_k_affine_spec{32, 31, 63}, &d, &dmin, sc, mn, q);
  b->d = dl_f32_to_f16(d), b->dmin = dl_f32_to_f16(dmin);
  dl_pack_k4_scales(sc, mn, b->scales);
  dl_q_bytes(q, DL_QK_K, 0, u);
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
  float d, q[DL_QK_K];
  dl_quantize_k_symmetric(x, w, dl_k_symmetric_spec{16, -32, 31, -128, 127}, &d, b->scales, q);
  b->d = dl_f32_to_f16(d);
  uint8_t u[DL_QK_K];
  dl_q_bytes(q, DL_QK_K, 32, u);
  // Per half of 128: element 32k + l has its low nibble in ql[l + 32 (k & 1)] (high nibble when
  // k >= 2) and its top 2 bits at bits 2k of qh[l].
  for (int half = 0; half < 2; half++) {
    uint8_t* ql = b->ql + half * 64;
    uint8_t* qh = b->qh + half * 32;
    const uint8_t* uu = u + half * 128;
    for (int l = 0; l < 32; l++) {
      const int u0 = uu[l], u1 = uu[l + 32], u2 = uu[l + 64], u3 = uu[l + 96];
      ql[l] = (uint8_t)((u0 & 0xF) | ((u2 & 0xF) << 4));
      ql[l + 32] = (uint8_t)((u1 & 0xF) | ((u3 & 0xF) << 4));
      qh[l] = (uint8_t)((u0 >> 4) | ((u1 >> 4) << 2) | ((u2 >> 4) << 4) | ((u3 >> 4) << 6));
    }
  }
}

// Q8_K: an f32 scale (no f16 rounding), q in [-127, 127], and the 16-element sums the K-format dot
// products use.
inline void dl_quantize_q8_k(const float* x, const float* w, dl_block_q8_k* b) {
  float q[DL_QK_K];
  b->d = dl_fit_symmetric(x, w, DL_QK_K, -127, 127, q);
  for (int j = 0; j < DL_QK_K; j++) b->qs[j] = (int8_t)q[j];
  for (int g = 0; g < DL_QK_K / 16; g++) {
    int sum = 0;
    for (int l = 0; l < 16; l++) sum += b->qs[g * 16 + l];
    b->bsums[g] = (int16_t)sum;
  }
}

inline void dl_quantize_int4(const float* x, const float* w, dl_block_int4* b) {
  float q[DL_INT4_GROUP];
  uint8_t u[DL_INT4_GROUP];
  dl_quantize_affine_f16(x, w, DL_INT4_GROUP, 15, &b->d, &b->m, q);
  dl_q_bytes(q, DL_INT4_GROUP, 0, u);
  for (int j = 0; j < DL_INT4_GROUP / 2; j++) b->qs[j] = (uint8_t)(u[j] | (u[j + DL_INT4_GROUP / 2] << 4));
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
  for (int64_t j = 0; j < cols; j++) q[j] = (int8_t)dl_qgrid(x[j] * inv, -127.0f, 127.0f);
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
DL_OMP(parallel for num_threads(threads) schedule(dynamic, 1))
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
