// The x86 kernel sets of quantized dl_matmul: the same family kernels (quant_legacy.h,
// quant_kquant.h) on 256-bit vectors, compiled twice: AVX2 (u8 x s8 products through maddubs and
// madd) and AVX-512 VNNI (vpdpbusd and vpdpwssd, one instruction each; Zen 4 runs 512-bit vectors
// as two 256-bit halves, so the narrower vectors lose nothing there and keep one code path).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "dl_dequant.h"
#include "dl_dtype.h"
#include "dl_repack.h"
#include "quant.h"

#if defined(__x86_64__)
// GCC 12.2's AVX-512 intrinsics trip -Wuninitialized where they are inlined (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

// Primitives shared by both sets (included inside each target region).
#define DL_QUANT_X86_COMMON                                                                            \
  inline float f16(uint16_t h) { return _cvtsh_ss(h); }                                                \
  /* 16 bytes of nibbles: low nibbles to bytes [0, 16), high nibbles to [16, 32). */                  \
  inline __m256i nibbles16(const uint8_t* p) {                                                         \
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));                          \
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));    \
  }                                                                                                    \
  inline int32_t hsum_i32(__m256i v) {                                                                 \
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));              \
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));                                                    \
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));                                                     \
    return _mm_cvtsi128_si32(s);                                                                       \
  }                                                                                                    \
  inline float hsum_f32(__m256 v) {                                                                    \
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));                     \
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                                            \
    s = _mm_add_ss(s, _mm_movehdup_ps(s));                                                             \
    return _mm_cvtss_f32(s);                                                                           \
  }

// --- AVX2 + FMA + F16C

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
constexpr int TILE_M = 4;  // 16 ymm registers: 4 rows of accumulators, the weights and temporaries
constexpr int R16_PAIRS = 2;  // Q4_0_R16 tiles: 8 of the 16 registers hold accumulators
DL_QUANT_X86_COMMON
// acc + sums of 4 products u * s (u unsigned, s signed; each pair sum must fit int16: u <= 128).
inline __m256i dot_us(__m256i acc, __m256i u, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
// acc + sums of pairs of (u * x pair sums) times int16 scales.
inline __m256i madd_scaled(__m256i acc, __m256i u, __m256i x, __m256i sc16) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), sc16));
}
// Bit j of the little-endian 32 bits at p to 0x10 in byte j.
inline __m256i fifth_bits(const uint8_t* p) {
  const __m256i shuffle = _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)dl_load_u32(p)), shuffle);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}
#include "quant_act.h"
#include "quant_legacy.h"
#include "quant_kquant.h"
#include "quant_tile.h"
#include "quant_r16.h"
}  // namespace avx2
#pragma GCC pop_options

// --- AVX-512 VNNI (+ BW, VL)

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
namespace avx512_vnni {
constexpr int TILE_M = 8;  // 32 vector registers: 8 rows of accumulators
constexpr int R16_PAIRS = 6;  // Q4_0_R16 tiles: 24 of the 32 registers hold accumulators
DL_QUANT_X86_COMMON
inline __m256i dot_us(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
inline __m256i madd_scaled(__m256i acc, __m256i u, __m256i x, __m256i sc16) {
  return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, x), sc16);
}
inline __m256i fifth_bits(const uint8_t* p) { return _mm256_maskz_set1_epi8(dl_load_u32(p), 0x10); }
#include "quant_act.h"
#include "quant_legacy.h"
#include "quant_kquant.h"
#include "quant_tile.h"
#include "quant_zmm.h"
#include "quant_r16.h"
}  // namespace avx512_vnni
#pragma GCC pop_options

// --- Kernel tables

#define DL_QUANT_ISA_TABLE(ns)                                                           \
  [] {                                                                                   \
    DlQuantIsa isa{#ns, {}, ns::quantize_row_q8, ns::quantize_row_q8_k};                 \
    isa.kernel[DL_DTYPE_Q4_0] = ns::gemm_cols<ns::LegacyDot<DL_DTYPE_Q4_0>>;             \
    isa.kernel[DL_DTYPE_Q4_1] = ns::gemm_cols<ns::LegacyDot<DL_DTYPE_Q4_1>>;             \
    isa.kernel[DL_DTYPE_Q5_0] = ns::gemm_cols<ns::LegacyDot<DL_DTYPE_Q5_0>>;             \
    isa.kernel[DL_DTYPE_Q5_1] = ns::gemm_cols<ns::LegacyDot<DL_DTYPE_Q5_1>>;             \
    isa.kernel[DL_DTYPE_Q8_0] = ns::gemm_cols<ns::LegacyDot<DL_DTYPE_Q8_0>>;             \
    isa.kernel[DL_DTYPE_INT8] = ns::gemm_cols<ns::LegacyDot<DL_DTYPE_INT8>>;             \
    isa.kernel[DL_DTYPE_INT4] = ns::gemm_cols<ns::LegacyDot<DL_DTYPE_INT4>>;             \
    isa.kernel[DL_DTYPE_Q2_K] = ns::gemm_cols<ns::KDot<DL_DTYPE_Q2_K>>;                  \
    isa.kernel[DL_DTYPE_Q3_K] = ns::gemm_cols<ns::KDot<DL_DTYPE_Q3_K>>;                  \
    isa.kernel[DL_DTYPE_Q4_K] = ns::gemm_cols<ns::KDot<DL_DTYPE_Q4_K>>;                  \
    isa.kernel[DL_DTYPE_Q5_K] = ns::gemm_cols<ns::KDot<DL_DTYPE_Q5_K>>;                  \
    isa.kernel[DL_DTYPE_Q6_K] = ns::gemm_cols<ns::KDot<DL_DTYPE_Q6_K>>;                  \
    isa.kernel[DL_DTYPE_Q8_K] = ns::gemm_cols<ns::KDot<DL_DTYPE_Q8_K>>;                  \
    isa.kernel[DL_DTYPE_Q4_0_R16] = ns::r16::gemm_cols<ns::gemm_cols<ns::LegacyDot<DL_DTYPE_Q4_0>>>; \
    return isa;                                                                          \
  }()

const DlQuantIsa* dl_quant_avx2() {
  static const DlQuantIsa isa = DL_QUANT_ISA_TABLE(avx2);
  return &isa;
}
// The 512-bit tiles (quant_zmm.h) replace the 256-bit kernels where they exist.
const DlQuantIsa* dl_quant_avx512_vnni() {
  static const DlQuantIsa isa = [] {
    namespace z = avx512_vnni::zmm;
    DlQuantIsa t = DL_QUANT_ISA_TABLE(avx512_vnni);
    t.kernel[DL_DTYPE_Q4_0] = z::gemm_cols<z::LegacyZ<DL_DTYPE_Q4_0>>;
    t.kernel[DL_DTYPE_Q4_1] = z::gemm_cols<z::LegacyZ<DL_DTYPE_Q4_1>>;
    t.kernel[DL_DTYPE_Q5_0] = z::gemm_cols<z::LegacyZ<DL_DTYPE_Q5_0>>;
    t.kernel[DL_DTYPE_Q5_1] = z::gemm_cols<z::LegacyZ<DL_DTYPE_Q5_1>>;
    t.kernel[DL_DTYPE_Q8_0] = z::gemm_cols<z::LegacyZ<DL_DTYPE_Q8_0>>;
    t.kernel[DL_DTYPE_Q4_K] = z::gemm_cols<z::KDotZ<DL_DTYPE_Q4_K>>;
    t.kernel[DL_DTYPE_Q6_K] = z::gemm_cols<z::KDotZ<DL_DTYPE_Q6_K>>;
    // Q4_0_R16's last rows % 16 rows go through the Q4_0 tile above.
    t.kernel[DL_DTYPE_Q4_0_R16] = avx512_vnni::r16::gemm_cols<z::gemm_cols<z::LegacyZ<DL_DTYPE_Q4_0>>>;
    return t;
  }();
  return &isa;
}

#else  // not x86: the generic kernels only

const DlQuantIsa* dl_quant_avx2() { return nullptr; }
const DlQuantIsa* dl_quant_avx512_vnni() { return nullptr; }

#endif
