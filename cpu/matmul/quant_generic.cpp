// Scalar reference kernels of quantized dl_matmul, one per weight format (any target): the path the
// SIMD kernels are tested against, and what runs under DENOLLM_CPU_ISA=generic.
//
// Each format unpacks a block to small integers and scales (the same decomposition the SIMD kernels
// use), then takes exact integer dot products with the int8 activations.
#include <cstring>

#include "common.h"
#include "dl_dequant.h"
#include "dl_dtype.h"
#include "dl_repack.h"
#include "quant.h"

namespace generic {
constexpr int TILE_M = 4;
#include "quant_act.h"

// --- Legacy formats, INT8 and INT4: sub-blocks of 32

// One weight sub-block of 32: w = d * q (signed q) or w = d * q + m (has_min, q in [0, 31]).
struct Sub {
  float d, m;
  int8_t q[DL_QK];
};

template <class B>
const B& block_at(const uint8_t* w, int64_t i) {
  return reinterpret_cast<const B*>(w)[i];
}

inline void nibbles(const uint8_t* qs, int8_t* q, int offset) {
  for (int j = 0; j < DL_QK / 2; j++) {
    q[j] = (int8_t)((qs[j] & 0x0F) - offset);
    q[j + DL_QK / 2] = (int8_t)((qs[j] >> 4) - offset);
  }
}

inline void fifth_bits(const uint8_t* qh, int8_t* q) {
  const uint32_t bits = dl_load_u32(qh);
  for (int j = 0; j < DL_QK; j++) q[j] = (int8_t)(q[j] | (((bits >> j) & 1) << 4));
}

template <int DT>
struct Legacy;
template <>
struct Legacy<DL_DTYPE_Q4_0> {
  static constexpr bool has_min = false;
  static void unpack(const uint8_t* w, int64_t sb, int64_t, Sub& s) {
    const auto& b = block_at<dl_block_q4_0>(w, sb);
    s.d = dl_f16_to_f32(b.d), s.m = 0.0f;
    nibbles(b.qs, s.q, 8);
  }
};
template <>
struct Legacy<DL_DTYPE_Q4_1> {
  static constexpr bool has_min = true;
  static void unpack(const uint8_t* w, int64_t sb, int64_t, Sub& s) {
    const auto& b = block_at<dl_block_q4_1>(w, sb);
    s.d = dl_f16_to_f32(b.d), s.m = dl_f16_to_f32(b.m);
    nibbles(b.qs, s.q, 0);
  }
};
template <>
struct Legacy<DL_DTYPE_Q5_0> {
  static constexpr bool has_min = false;
  static void unpack(const uint8_t* w, int64_t sb, int64_t, Sub& s) {
    const auto& b = block_at<dl_block_q5_0>(w, sb);
    s.d = dl_f16_to_f32(b.d), s.m = 0.0f;
    nibbles(b.qs, s.q, 0);
    fifth_bits(b.qh, s.q);
    for (int j = 0; j < DL_QK; j++) s.q[j] = (int8_t)(s.q[j] - 16);
  }
};
template <>
struct Legacy<DL_DTYPE_Q5_1> {
  static constexpr bool has_min = true;
  static void unpack(const uint8_t* w, int64_t sb, int64_t, Sub& s) {
    const auto& b = block_at<dl_block_q5_1>(w, sb);
    s.d = dl_f16_to_f32(b.d), s.m = dl_f16_to_f32(b.m);
    nibbles(b.qs, s.q, 0);
    fifth_bits(b.qh, s.q);
  }
};
template <>
struct Legacy<DL_DTYPE_Q8_0> {
  static constexpr bool has_min = false;
  static void unpack(const uint8_t* w, int64_t sb, int64_t, Sub& s) {
    const auto& b = block_at<dl_block_q8_0>(w, sb);
    s.d = dl_f16_to_f32(b.d), s.m = 0.0f;
    std::memcpy(s.q, b.qs, DL_QK);
  }
};
// INT8: the row's int8 values 32 at a time, zero-padded past k; its scale is applied per row.
template <>
struct Legacy<DL_DTYPE_INT8> {
  static constexpr bool has_min = false;
  static void unpack(const uint8_t* w, int64_t sb, int64_t k, Sub& s) {
    s.d = 1.0f, s.m = 0.0f;
    const int64_t len = k - sb * DL_QK < DL_QK ? k - sb * DL_QK : DL_QK;
    std::memset(s.q, 0, DL_QK);
    std::memcpy(s.q, w + sb * DL_QK, (size_t)len);
  }
};
// INT4: a group of 128 is 4 sub-blocks: low nibbles of qs[0, 32), of qs[32, 64), then the highs.
template <>
struct Legacy<DL_DTYPE_INT4> {
  static constexpr bool has_min = true;
  static void unpack(const uint8_t* w, int64_t sb, int64_t, Sub& s) {
    const auto& b = block_at<dl_block_int4>(w, sb / 4);
    s.d = dl_f16_to_f32(b.d), s.m = dl_f16_to_f32(b.m);
    const int part = (int)(sb % 4);
    const uint8_t* qs = b.qs + 32 * (part % 2);
    for (int j = 0; j < DL_QK; j++) s.q[j] = (int8_t)(part < 2 ? qs[j] & 0x0F : qs[j] >> 4);
  }
};

template <int DT>
struct LegacyDot {
  template <int RM>
  static void rows(const uint8_t* w, const uint8_t* act, int64_t act_row_bytes, int64_t k, float* res) {
    for (int i = 0; i < RM; i++) res[i] = 0.0f;
    Sub s;
    for (int64_t sb = 0; sb * DL_QK < k; sb++) {
      Legacy<DT>::unpack(w, sb, k, s);
      for (int i = 0; i < RM; i++) {
        const dl_act_q8& a = reinterpret_cast<const dl_act_q8*>(act + i * act_row_bytes)[sb];
        int32_t isum = 0;
        for (int j = 0; j < DL_QK; j++) isum += (int32_t)s.q[j] * a.qs[j];
        res[i] += (s.d * a.d) * (float)isum;
        if (Legacy<DT>::has_min) res[i] += s.m * a.s;
      }
    }
  }
};

// --- K formats: super-blocks of 256

// One weight super-block: w[e] = d * sc[e / 16] * u[e] - dmin * mn[e / 16], u unsigned (signed only
// for Q8_K). Offsets (Q3_K's 4, Q6_K's 32) are folded into mn with dmin = d, as the SIMD kernels do.
struct Super {
  float d, dmin;
  int8_t u[DL_QK_K];
  int16_t sc[16], mn[16];
};

template <int DT>
struct KQuant;
template <>
struct KQuant<DL_DTYPE_Q2_K> {
  static void unpack(const uint8_t* w, int64_t ib, Super& s) {
    const auto& b = block_at<dl_block_q2_k>(w, ib);
    s.d = dl_f16_to_f32(b.d), s.dmin = dl_f16_to_f32(b.dmin);
    for (int e = 0; e < DL_QK_K; e++) {
      s.u[e] = (int8_t)((b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3);
    }
    for (int j = 0; j < 16; j++) s.sc[j] = b.scales[j] & 0xF, s.mn[j] = b.scales[j] >> 4;
  }
};
template <>
struct KQuant<DL_DTYPE_Q3_K> {
  static void unpack(const uint8_t* w, int64_t ib, Super& s) {
    const auto& b = block_at<dl_block_q3_k>(w, ib);
    s.d = s.dmin = dl_f16_to_f32(b.d);
    for (int e = 0; e < DL_QK_K; e++) {
      const int h = e / 128, t = (e % 128) / 32, i = e % 32;
      const int low = (b.qs[32 * h + i] >> (2 * t)) & 3, high = (b.hmask[i] >> (4 * h + t)) & 1;
      s.u[e] = (int8_t)(low | (high << 2));  // value u - 4
    }
    int8_t scales[16];
    dl_q3_k_scales(b.scales, scales);
    for (int j = 0; j < 16; j++) s.sc[j] = (int16_t)(scales[j] - 32), s.mn[j] = (int16_t)(4 * s.sc[j]);
  }
};
template <>
struct KQuant<DL_DTYPE_Q4_K> {
  static void unpack(const uint8_t* w, int64_t ib, Super& s) {
    const auto& b = block_at<dl_block_q4_k>(w, ib);
    s.d = dl_f16_to_f32(b.d), s.dmin = dl_f16_to_f32(b.dmin);
    for (int e = 0; e < DL_QK_K; e++) {
      const uint8_t q = b.qs[32 * (e / 64) + e % 32];
      s.u[e] = (int8_t)((e / 32) % 2 == 0 ? q & 0xF : q >> 4);
    }
    for (int j = 0; j < 8; j++) {
      uint8_t sc, mn;
      dl_k4_scale_min(j, b.scales, &sc, &mn);
      s.sc[2 * j] = s.sc[2 * j + 1] = sc;
      s.mn[2 * j] = s.mn[2 * j + 1] = mn;
    }
  }
};
template <>
struct KQuant<DL_DTYPE_Q5_K> {
  static void unpack(const uint8_t* w, int64_t ib, Super& s) {
    const auto& b = block_at<dl_block_q5_k>(w, ib);
    s.d = dl_f16_to_f32(b.d), s.dmin = dl_f16_to_f32(b.dmin);
    for (int e = 0; e < DL_QK_K; e++) {
      const uint8_t q = b.qs[32 * (e / 64) + e % 32];
      const int low = (e / 32) % 2 == 0 ? q & 0xF : q >> 4;
      s.u[e] = (int8_t)(low | (((b.qh[e % 32] >> (e / 32)) & 1) << 4));
    }
    for (int j = 0; j < 8; j++) {
      uint8_t sc, mn;
      dl_k4_scale_min(j, b.scales, &sc, &mn);
      s.sc[2 * j] = s.sc[2 * j + 1] = sc;
      s.mn[2 * j] = s.mn[2 * j + 1] = mn;
    }
  }
};
template <>
struct KQuant<DL_DTYPE_Q6_K> {
  static void unpack(const uint8_t* w, int64_t ib, Super& s) {
    const auto& b = block_at<dl_block_q6_k>(w, ib);
    s.d = s.dmin = dl_f16_to_f32(b.d);
    for (int e = 0; e < DL_QK_K; e++) {
      const int h = e / 128, t = (e % 128) / 32, l = e % 32;
      const uint8_t ql = b.ql[64 * h + 32 * (t % 2) + l];
      const int low = t < 2 ? ql & 0xF : ql >> 4, high = (b.qh[32 * h + l] >> (2 * t)) & 3;
      s.u[e] = (int8_t)(low | (high << 4));  // value u - 32
    }
    for (int j = 0; j < 16; j++) s.sc[j] = b.scales[j], s.mn[j] = (int16_t)(32 * b.scales[j]);
  }
};
template <>
struct KQuant<DL_DTYPE_Q8_K> {
  static void unpack(const uint8_t* w, int64_t ib, Super& s) {
    const auto& b = block_at<dl_block_q8_k>(w, ib);
    s.d = b.d, s.dmin = 0.0f;
    std::memcpy(s.u, b.qs, DL_QK_K);
    for (int j = 0; j < 16; j++) s.sc[j] = 1, s.mn[j] = 0;
  }
};

template <int DT>
struct KDot {
  template <int RM>
  static void rows(const uint8_t* w, const uint8_t* act, int64_t act_row_bytes, int64_t k, float* res) {
    for (int i = 0; i < RM; i++) res[i] = 0.0f;
    Super s;
    for (int64_t ib = 0; ib < k / DL_QK_K; ib++) {
      KQuant<DT>::unpack(w, ib, s);
      for (int i = 0; i < RM; i++) {
        const dl_block_q8_k& a = reinterpret_cast<const dl_block_q8_k*>(act + i * act_row_bytes)[ib];
        int32_t isum = 0, minsum = 0;
        for (int e = 0; e < DL_QK_K; e++) isum += s.sc[e / 16] * (int32_t)s.u[e] * a.qs[e];
        for (int j = 0; j < 16; j++) minsum += s.mn[j] * a.bsums[j];
        res[i] += a.d * (s.d * (float)isum - s.dmin * (float)minsum);
      }
    }
  }
};

#include "quant_tile.h"

// --- Q4_0_R16: Q4_0's sums, each block read back from the repacked layout

static void gemm_q4_0_r16(const DlQuantGemm& g, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c++) {
    for (int64_t i = 0; i < g.m; i++) {
      const dl_act_q8* a = reinterpret_cast<const dl_act_q8*>(g.act + i * g.act_row_bytes);
      float res = 0.0f;
      Sub s;
      for (int64_t b = 0; b < g.k / DL_QK; b++) {
        const dl_block_q4_0 blk = dl_r16_block(g.w, g.n, g.k, c, b);
        s.d = dl_f16_to_f32(blk.d);
        nibbles(blk.qs, s.q, 8);
        int32_t isum = 0;
        for (int j = 0; j < DL_QK; j++) isum += (int32_t)s.q[j] * a[b].qs[j];
        res += (s.d * a[b].d) * (float)isum;
      }
      g.out[i * g.ldo + c] = res + (g.bias != nullptr ? g.bias[c] : 0.0f);
    }
  }
}
}  // namespace generic

const DlQuantIsa dl_quant_generic = [] {
  DlQuantIsa isa{"generic", {}, generic::quantize_row_q8, generic::quantize_row_q8_k};
  isa.kernel[DL_DTYPE_Q4_0] = generic::gemm_cols<generic::LegacyDot<DL_DTYPE_Q4_0>>;
  isa.kernel[DL_DTYPE_Q4_1] = generic::gemm_cols<generic::LegacyDot<DL_DTYPE_Q4_1>>;
  isa.kernel[DL_DTYPE_Q5_0] = generic::gemm_cols<generic::LegacyDot<DL_DTYPE_Q5_0>>;
  isa.kernel[DL_DTYPE_Q5_1] = generic::gemm_cols<generic::LegacyDot<DL_DTYPE_Q5_1>>;
  isa.kernel[DL_DTYPE_Q8_0] = generic::gemm_cols<generic::LegacyDot<DL_DTYPE_Q8_0>>;
  isa.kernel[DL_DTYPE_INT8] = generic::gemm_cols<generic::LegacyDot<DL_DTYPE_INT8>>;
  isa.kernel[DL_DTYPE_INT4] = generic::gemm_cols<generic::LegacyDot<DL_DTYPE_INT4>>;
  isa.kernel[DL_DTYPE_Q2_K] = generic::gemm_cols<generic::KDot<DL_DTYPE_Q2_K>>;
  isa.kernel[DL_DTYPE_Q3_K] = generic::gemm_cols<generic::KDot<DL_DTYPE_Q3_K>>;
  isa.kernel[DL_DTYPE_Q4_K] = generic::gemm_cols<generic::KDot<DL_DTYPE_Q4_K>>;
  isa.kernel[DL_DTYPE_Q5_K] = generic::gemm_cols<generic::KDot<DL_DTYPE_Q5_K>>;
  isa.kernel[DL_DTYPE_Q6_K] = generic::gemm_cols<generic::KDot<DL_DTYPE_Q6_K>>;
  isa.kernel[DL_DTYPE_Q8_K] = generic::gemm_cols<generic::KDot<DL_DTYPE_Q8_K>>;
  isa.kernel[DL_DTYPE_Q4_0_R16] = generic::gemm_q4_0_r16;
  return isa;
}();
