// AVX-512 (VBMI2) kernels of the f32-activation 2:4 formats, F16_2_4 and INT4_2_4: each stored
// block expanded in registers (vpmultishiftqb + compares give the kept slots' mask, vpexpandw /
// vexpandps place the values) and multiplied with up to 4 activation rows in f32; a tile reads 4
// far-apart weight rows so the hardware prefetcher sees 4 long streams.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "sparse.h"

#if defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vbmi2,avx2,fma,f16c")
namespace {

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The kept slots of 8 groups (32 elements) from their 4 position bytes: bit j set when element j
// is stored.
inline __mmask32 kept_mask(const uint8_t* pos) {
  const __m256i word = _mm256_set1_epi64x((long long)load_u32(pos));
  const __m256i at_p0 = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 20, 20,
                                         20, 20, 24, 24, 24, 24, 28, 28, 28, 28);
  const __m256i at_p1 = _mm256_add_epi8(at_p0, _mm256_set1_epi8(2));
  const __m256i slot = _mm256_set1_epi32(0x03020100);
  const __m256i three = _mm256_set1_epi8(3);
  const __mmask32 k0 = _mm256_testn_epi8_mask(_mm256_xor_si256(_mm256_multishift_epi64_epi8(at_p0, word), slot), three);
  const __mmask32 k1 = _mm256_testn_epi8_mask(_mm256_xor_si256(_mm256_multishift_epi64_epi8(at_p1, word), slot), three);
  return _kor_mask32(k0, k1);
}

// --- F16_2_4: blocks of 32, 16 f16 values then 4 position bytes

template <int R, int C>
inline void f16_tile(const DlSparseGemm& g, int64_t i0, int64_t c0, int64_t cstride) {
  __m512 acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  const uint8_t* w[C];
  for (int c = 0; c < C; c++) w[c] = g.w + (c0 + c * cstride) * g.w_row_bytes;
  for (int64_t b = 0; b < g.k / 32; b++) {
    __m512 lo[C], hi[C];
    for (int c = 0; c < C; c++) {
      const uint8_t* blk = w[c] + 36 * b;
      const __m512i halves = _mm512_maskz_expand_epi16(
          kept_mask(blk + 32), _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk))));
      lo[c] = _mm512_cvtph_ps(_mm512_castsi512_si256(halves));
      hi[c] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(halves, 1));
    }
    for (int r = 0; r < R; r++) {
      const float* x = g.x + (i0 + r) * g.k + 32 * b;
      const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
      for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(hi[c], x1, _mm512_fmadd_ps(lo[c], x0, acc[r][c]));
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      const int64_t col = c0 + c * cstride;
      g.out[(i0 + r) * g.ldo + col] = _mm512_reduce_add_ps(acc[r][c]) + (g.bias != nullptr ? g.bias[col] : 0.0f);
    }
}

// --- INT4_2_4: groups of 128: f16 d, f16 m, 32 bytes of kept nibbles, 16 position bytes

template <int R, int C>
inline void int4_tile(const DlSparseGemm& g, int64_t i0, int64_t c0, int64_t cstride) {
  __m512 acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  const uint8_t* w[C];
  for (int c = 0; c < C; c++) w[c] = g.w + (c0 + c * cstride) * g.w_row_bytes;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < g.k / 128; b++) {
    for (int part = 0; part < 4; part++) {  // 32 elements: 8 groups, 16 kept values, 8 nibble bytes
      __m512 wf[C][2];
      for (int c = 0; c < C; c++) {
        const uint8_t* blk = w[c] + 52 * b;
        uint16_t dh, mh;
        std::memcpy(&dh, blk, 2);
        std::memcpy(&mh, blk + 2, 2);
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(dh)), m = _mm512_set1_ps(_cvtsh_ss(mh));
        // 8 bytes of this part's nibbles to 16 values in order (low nibble first).
        const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 4 + 8 * part));
        const __m128i vals = _mm_unpacklo_epi8(_mm_and_si128(raw, low4), _mm_and_si128(_mm_srli_epi16(raw, 4), low4));
        const __m512 kept = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(vals)), d, m);
        const __mmask32 mask = kept_mask(blk + 36 + 4 * part);
        // The 16 kept floats spread over the part's 32 slots, pruned ones 0 (not m).
        const __mmask16 m0 = (__mmask16)(mask & 0xFFFF), m1 = (__mmask16)(mask >> 16);
        wf[c][0] = _mm512_maskz_expand_ps(m0, kept);
        const int n0 = __builtin_popcount((unsigned)m0);
        const __m512i shift = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32(n0));
        wf[c][1] = _mm512_maskz_expand_ps(m1, _mm512_permutexvar_ps(shift, kept));
      }
      for (int r = 0; r < R; r++) {
        const float* x = g.x + (i0 + r) * g.k + 128 * b + 32 * part;
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
        for (int c = 0; c < C; c++) {
          acc[r][c] = _mm512_fmadd_ps(wf[c][1], x1, _mm512_fmadd_ps(wf[c][0], x0, acc[r][c]));
        }
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      const int64_t col = c0 + c * cstride;
      g.out[(i0 + r) * g.ldo + col] = _mm512_reduce_add_ps(acc[r][c]) + (g.bias != nullptr ? g.bias[col] : 0.0f);
    }
}

// Tiles of 4 far-apart columns by up to 4 rows, every row tile over the column range.
template <bool INT4, int R>
inline void row_tile(const DlSparseGemm& g, int64_t i0, int64_t c0, int64_t c1) {
  const int64_t part = (c1 - c0) / 4;
  for (int64_t c = c0; c < c0 + part; c++) {
    if (INT4) int4_tile<R, 4>(g, i0, c, part);
    else f16_tile<R, 4>(g, i0, c, part);
  }
  for (int64_t c = c0 + 4 * part; c < c1; c++) {
    if (INT4) int4_tile<R, 1>(g, i0, c, 1);
    else f16_tile<R, 1>(g, i0, c, 1);
  }
}

template <bool INT4>
void kernel(const DlSparseGemm& g, int64_t c0, int64_t c1) {
  // Column panels small enough for their blocks to stay in L2 across the row tiles.
  const int64_t panel = std::max<int64_t>(4, (int64_t)(256 * 1024) / std::max<int64_t>(1, g.w_row_bytes) / 4 * 4);
  for (int64_t p0 = c0; p0 < c1; p0 += panel) {
    const int64_t p1 = std::min(c1, p0 + panel);
    int64_t i = 0;
    for (; i + 4 <= g.m; i += 4) row_tile<INT4, 4>(g, i, p0, p1);
    switch (g.m - i) {
      case 3: row_tile<INT4, 3>(g, i, p0, p1); break;
      case 2: row_tile<INT4, 2>(g, i, p0, p1); break;
      case 1: row_tile<INT4, 1>(g, i, p0, p1); break;
      default: break;
    }
  }
}

}  // namespace
#pragma GCC pop_options

DlSparseKernel dl_sparse_f16_2_4_avx512() { return kernel<false>; }
DlSparseKernel dl_sparse_int4_2_4_avx512() { return kernel<true>; }
#else
DlSparseKernel dl_sparse_f16_2_4_avx512() { return nullptr; }
DlSparseKernel dl_sparse_int4_2_4_avx512() { return nullptr; }
#endif
