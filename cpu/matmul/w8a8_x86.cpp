// The x86 kernel sets of W8A8 dl_matmul: w8a8_tile.h compiled twice, AVX2 (maddubs + madd) and
// AVX-512 VNNI on 256-bit vectors (vpdpbusd: one instruction for the 4-product sums).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "quant.h"
#include "w8a8.h"

// 2:4 positions to pshufb controls, per position byte (two groups): each group's 4 output bytes
// pick value 0 or 1 of its pair (0x80 zeroes a pruned slot), the high group's offset by 2.
struct Expand24 {
  uint64_t ctrl[256] = {};
  constexpr Expand24() {
    for (int b = 0; b < 256; b++) {
      uint64_t c = 0;
      for (int half = 0; half < 2; half++) {
        const int nib = (b >> (4 * half)) & 15;
        for (int p = 0; p < 4; p++) {
          uint64_t sel = 0x80;
          if ((nib & 3) == p) sel = (uint64_t)(2 * half);
          else if ((nib >> 2) == p) sel = (uint64_t)(2 * half + 1);
          c |= sel << (8 * (4 * half + p));
        }
      }
      ctrl[b] = c;
    }
  }
};
static constexpr Expand24 DL_EXPAND_2_4{};

#if defined(__x86_64__)
// GCC 12.2's AVX-512 intrinsics trip -Wuninitialized where they are inlined (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define DL_W8A8_HSUM                                                                      \
  inline int32_t hsum_i32(__m256i v) {                                                    \
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); \
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));                                       \
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));                                        \
    return _mm_cvtsi128_si32(s);                                                          \
  }

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace w8a8_avx2 {
DL_W8A8_HSUM
inline __m256i dot_us(__m256i acc, __m256i u, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
#include "w8a8_tile.h"
}  // namespace w8a8_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
namespace w8a8_vnni {
DL_W8A8_HSUM
inline __m256i dot_us(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
#include "w8a8_tile.h"
}  // namespace w8a8_vnni
#pragma GCC pop_options

// --- AVX-512 VNNI on 512-bit vectors: activations offset to u8 (q + 128, an xor), so vpdpbusd
// takes them with the signed weights as they are; the stored row sums take the offset back out:
// sum(q * w) = sum((q + 128) * w) - 128 * sum(w). A tile of R rows by C columns steps k by 64.

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
namespace w8a8_zmm {
template <int R, int C>
inline void tile(const DlW8a8Gemm& g, const int8_t* w0, int64_t w_stride, bool padded, int64_t i0, int64_t c0) {
  __m512i acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_si512();
  const int8_t* w[C];
  for (int c = 0; c < C; c++) w[c] = w0 + c * w_stride;
  const int8_t* q[R];
  for (int r = 0; r < R; r++) q[r] = dl_w8a8_act_q(g, i0 + r);
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  // Padded rows (an expanded panel) run whole; stored rows mask their last partial step.
  const int64_t k64 = padded ? dl_w8a8_padded_k(g.k) : g.k / 64 * 64;
  int64_t j = 0;
  for (; j < k64; j += 64) {
    __m512i wv[C];
    for (int c = 0; c < C; c++) wv[c] = _mm512_loadu_si512(w[c] + j);
    for (int r = 0; r < R; r++) {
      const __m512i xu = _mm512_xor_si512(_mm512_load_si512(q[r] + j), flip);
      for (int c = 0; c < C; c++) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xu, wv[c]);
    }
  }
  if (j < g.k) {
    // Weights past k load as 0, so the zero-padded activations' offset adds nothing there.
    const __mmask64 mask = _cvtu64_mask64((1ull << (g.k - j)) - 1);
    __m512i wv[C];
    for (int c = 0; c < C; c++) wv[c] = _mm512_maskz_loadu_epi8(mask, w[c] + j);
    for (int r = 0; r < R; r++) {
      const __m512i xu = _mm512_xor_si512(_mm512_load_si512(q[r] + j), flip);
      for (int c = 0; c < C; c++) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xu, wv[c]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      const int32_t sum = _mm512_reduce_add_epi32(acc[r][c]) - 128 * dl_w8a8_row_sum(g, c0 + c);
      dl_w8a8_store(g, i0 + r, c0 + c, sum);
    }
}

template <int R>
inline void cols(const DlW8a8Gemm& g, const int8_t* w0, int64_t w_stride, bool padded, int64_t i0, int64_t c0,
                 int64_t c1) {
  int64_t c = c0;
  for (; c + 4 <= c1; c += 4) tile<R, 4>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c);
  switch (c1 - c) {
    case 3: tile<R, 3>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c); break;
    case 2: tile<R, 2>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c); break;
    case 1: tile<R, 1>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c); break;
    default: break;
  }
}

// Every activation row against the columns [c0, c1) whose rows start at w0, w_stride apart.
static void rows_over(const DlW8a8Gemm& g, const int8_t* w0, int64_t w_stride, bool padded, int64_t c0, int64_t c1) {
  int64_t i = 0;
  for (; i + 4 <= g.m; i += 4) cols<4>(g, w0, w_stride, padded, i, c0, c1);
  switch (g.m - i) {
    case 3: cols<3>(g, w0, w_stride, padded, i, c0, c1); break;
    case 2: cols<2>(g, w0, w_stride, padded, i, c0, c1); break;
    case 1: cols<1>(g, w0, w_stride, padded, i, c0, c1); break;
    default: break;
  }
}

static void dense(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  // Panels of columns whose weights stay in L2 while every row tile passes over them.
  const int64_t panel = std::max<int64_t>(4, (int64_t)(256 * 1024) / std::max<int64_t>(1, g.w_row_bytes) / 4 * 4);
  for (int64_t p0 = c0; p0 < c1; p0 += panel) {
    const int64_t p1 = std::min(c1, p0 + panel);
    rows_over(g, g.w + p0 * g.w_row_bytes, g.w_row_bytes, false, p0, p1);
  }
}

// W8A8_2_4: few rows expand each block in registers (w8a8_vnni's kernel); more expand
// DL_W8A8_PANEL columns at a time into this thread's scratch, once, for every row tile to read.
static void sparse_2_4(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  if (g.m < 8 || g.panel == nullptr) {
    w8a8_vnni::sparse_2_4(g, c0, c1);
    return;
  }
#ifdef _OPENMP
  const int64_t tid = omp_get_thread_num();
#else
  const int64_t tid = 0;
#endif
  int8_t* panel = reinterpret_cast<int8_t*>(g.panel + tid * g.panel_bytes);
  const int64_t kp = dl_w8a8_padded_k(g.k);
  for (int64_t p0 = c0; p0 < c1; p0 += DL_W8A8_PANEL) {
    const int64_t p1 = std::min(c1, p0 + DL_W8A8_PANEL);
    for (int64_t c = p0; c < p1; c++) {
      const int8_t* src = g.w + c * g.w_row_bytes;
      int8_t* dst = panel + (c - p0) * kp;
      for (int64_t b = 0; b < g.k / 32; b++) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * b), w8a8_vnni::expand_2_4(src + 20 * b));
      }
      std::memset(dst + g.k, 0, (size_t)(kp - g.k));
    }
    rows_over(g, panel, kp, true, p0, p1);
  }
}
}  // namespace w8a8_zmm
#pragma GCC pop_options

static const DlW8a8Isa avx2_set = {"avx2", w8a8_avx2::dense, w8a8_avx2::sparse_2_4, w8a8_avx2::int8_2_4};
static const DlW8a8Isa vnni_set = {"avx512-vnni", w8a8_zmm::dense, w8a8_zmm::sparse_2_4, w8a8_vnni::int8_2_4};
const DlW8a8Isa* dl_w8a8_avx2() { return &avx2_set; }
const DlW8a8Isa* dl_w8a8_avx512_vnni() { return &vnni_set; }
#else
const DlW8a8Isa* dl_w8a8_avx2() { return nullptr; }
const DlW8a8Isa* dl_w8a8_avx512_vnni() { return nullptr; }
#endif
