// Linear layer out = x · wᵀ (+ bias) with f32, f16 or bf16 weights widened in registers, f32 accumulation.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "dl_dtype.h"
#include "dl_half.h"
#include "quant.h"
#include "w8a8.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12.2's AVX-512 intrinsics initialize _mm512_undefined_ps() from itself and trip
// -Wuninitialized where they are inlined (GCC bug 105593, fixed in 12.3).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define DL_X86 1
#endif

// --- Portable path (any target; 16-byte GCC vector extensions lower to SSE2 or NEON)

namespace generic {
constexpr int LANES = 4, TILE_M = 4, TILE_N = 4, DECODE_STREAMS = 2;
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));

inline vf vzero() { return vf{}; }
inline vf vload(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline vf vfma(vf a, vf b, vf acc) { return a * b + acc; }
inline float vsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; i++) s += v[i];
  return s;
}
template <int DT>
struct WLoad;
template <>
struct WLoad<DL_DTYPE_F32> {
  static vf load(const float* p) { return vload(p); }
};
template <>
struct WLoad<DL_DTYPE_F16> {
  static vf load(const uint16_t* p) {
    vf v;
    for (int i = 0; i < LANES; i++) v[i] = dl_f16_to_f32(p[i]);
    return v;
  }
};
template <>
struct WLoad<DL_DTYPE_BF16> {
  static vf load(const uint16_t* p) {
    vf v;
    for (int i = 0; i < LANES; i++) v[i] = dl_bf16_to_f32(p[i]);
    return v;
  }
};
#include "float_tile.h"
}  // namespace generic

#ifdef DL_X86

// --- AVX2 + FMA + F16C: 16 ymm registers hold a 4x3 tile of accumulators, 3 weights and one x
// (decode: 4x2 with 2 weight streams; more streams measured no faster and would spill).

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
constexpr int LANES = 8, TILE_M = 4, TILE_N = 3, DECODE_STREAMS = 2;
typedef __m256 vf;

inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf acc) { return _mm256_fmadd_ps(a, b, acc); }
inline float vsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
template <int DT>
struct WLoad;
template <>
struct WLoad<DL_DTYPE_F32> {
  static vf load(const float* p) { return _mm256_loadu_ps(p); }
};
template <>
struct WLoad<DL_DTYPE_F16> {
  static vf load(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
};
template <>
struct WLoad<DL_DTYPE_BF16> {
  static vf load(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
};
#include "float_tile.h"
}  // namespace avx2
#pragma GCC pop_options

// --- AVX-512F: 32 zmm registers hold a 4x6 tile of accumulators, 6 weights and one x (decode: 4x4
// with 4 weight streams, the best of 1..4 at m = 1 and 2 on Zen 4).

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
namespace avx512 {
constexpr int LANES = 16, TILE_M = 4, TILE_N = 6, DECODE_STREAMS = 4;
typedef __m512 vf;

inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf acc) { return _mm512_fmadd_ps(a, b, acc); }
inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
template <int DT>
struct WLoad;
template <>
struct WLoad<DL_DTYPE_F32> {
  static vf load(const float* p) { return _mm512_loadu_ps(p); }
};
template <>
struct WLoad<DL_DTYPE_F16> {
  static vf load(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
};
template <>
struct WLoad<DL_DTYPE_BF16> {
  static vf load(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
};
#include "float_tile.h"
}  // namespace avx512
#pragma GCC pop_options

#endif  // DL_X86

// --- Launcher

extern "C" DL_API int32_t dl_matmul(dl_context* ctx, float* out, const float* x, const void* w, int32_t w_dtype,
                                    const float* bias, int32_t m, int32_t n, int32_t k, int32_t out_row_stride) {
  const char* fn = "dl_matmul";
  DL_TRY(dl_validate_matmul(fn, ctx, out, x, w, dl_dtype_unpacked(w_dtype), m, n, k, out_row_stride));
  if (m == 0) return DL_OK;
  if (w_dtype == DL_DTYPE_W8A8 || w_dtype == DL_DTYPE_W8A8_MIXED || w_dtype == DL_DTYPE_W8A8_2_4) {
    return dl_matmul_w8a8(ctx, out, out_row_stride, x, w, w_dtype, bias, m, n, k);
  }
  if (dl_dtype_is_sparse_2_4(w_dtype)) return dl_matmul_sparse(ctx, out, out_row_stride, x, w, w_dtype, bias, m, n, k);
  if (dl_dtype_is_quantized(w_dtype)) return dl_matmul_quant(ctx, out, out_row_stride, x, w, w_dtype, bias, m, n, k);
  const int threads = dl_threads_for(ctx, (int64_t)m * n * k);
  const int64_t ldo = out_row_stride;
  switch (dl_cpu_isa()) {
#ifdef DL_X86
    case DlIsa::avx512: avx512::matmul_dispatch(threads, out, ldo, x, w, w_dtype, bias, m, n, k); break;
    case DlIsa::avx2: avx2::matmul_dispatch(threads, out, ldo, x, w, w_dtype, bias, m, n, k); break;
#endif
    default: generic::matmul_dispatch(threads, out, ldo, x, w, w_dtype, bias, m, n, k); break;
  }
  return DL_OK;
}
