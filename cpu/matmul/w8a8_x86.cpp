// The x86 kernel sets of W8A8 dl_matmul: w8a8_tile.h for AVX2 (the sign trick, maddubs + madd),
// and AVX-512 VNNI + VBMI2 kernels written here (vpdpbusd on u8-offset activations, vpexpandb for
// the 2:4 blocks).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "dl_quant.h"
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


// --- AVX-512 VNNI on 512-bit vectors: activations offset to u8 (q + 128, an xor), so vpdpbusd
// takes them with the signed weights as they are; the stored row sums take the offset back out:
// sum(q * w) = sum((q + 128) * w) - 128 * sum(w). A tile of R rows by C columns steps k by 64.

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c")
namespace w8a8_zmm {
// acc += 4-product sums of u (u8) times s (s8). Inline asm: GCC 12 copies every accumulator of a
// tile through another register around _mm512_dpbusd_epi32 each iteration, doubling the work.
inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}
inline uint32_t load_u32(const int8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// dl_w8a8_store with the outlier part (W8A8_MIXED) as one 16-lane f16 dot product.
inline void store(const DlW8a8Gemm& g, int64_t i, int64_t c, int32_t acc) {
  const DlW8a8Row& a = *reinterpret_cast<const DlW8a8Row*>(g.act + i * g.act_row_bytes);
  float v = (float)acc * (a.scale * dl_w8a8_row_scale(g, c));
  if (g.outlier_id != nullptr) {
    const __m256i wh = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(g.row_data + c * g.row_data_bytes + DL_W8A8_OUTLIER_W_AT));
    v += _mm512_reduce_add_ps(_mm512_mul_ps(_mm512_cvtph_ps(wh), _mm512_loadu_ps(a.outlier)));
  }
  if (g.bias != nullptr) v += g.bias[c];
  g.out[i * g.ldo + c] = v;
}

// A 2:4 block of 32 to its dense int8 weights without a table: vpmultishiftqb pulls each output
// byte's group nibble out of the 32 position bits, two compares against the byte's slot give the
// kept slots' mask, and vpexpandb places the 16 stored values there in order.
inline __m256i expand_2_4(const int8_t* block) {
  const __m256i pos = _mm256_set1_epi64x((long long)load_u32(block + 16));
  const __m256i at_p0 = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 20, 20,
                                         20, 20, 24, 24, 24, 24, 28, 28, 28, 28);
  const __m256i at_p1 = _mm256_add_epi8(at_p0, _mm256_set1_epi8(2));
  const __m256i slot = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1,
                                        2, 3, 0, 1, 2, 3);
  const __m256i three = _mm256_set1_epi8(3);
  const __mmask32 k0 = _mm256_testn_epi8_mask(_mm256_xor_si256(_mm256_multishift_epi64_epi8(at_p0, pos), slot), three);
  const __mmask32 k1 = _mm256_testn_epi8_mask(_mm256_xor_si256(_mm256_multishift_epi64_epi8(at_p1, pos), slot), three);
  // From a register: the memory form of vpexpandb is microcoded on Zen 4.
  const __m256i v = _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
  return _mm256_maskz_expand_epi8(_kor_mask32(k0, k1), v);
}

// Two consecutive 2:4 blocks (64 weights) at once: the same steps on 512-bit vectors, the two
// blocks' position words side by side in one 64-bit word.
inline __m512i expand_2_4_x2(const int8_t* block) {
  const uint64_t word = (uint64_t)load_u32(block + 16) | (uint64_t)load_u32(block + 36) << 32;
  const __m512i pos = _mm512_set1_epi64((long long)word);
  alignas(64) static constexpr uint8_t AT_P0[64] = {
      0,  0,  0,  0,  4,  4,  4,  4,  8,  8,  8,  8,  12, 12, 12, 12, 16, 16, 16, 16, 20, 20,
      20, 20, 24, 24, 24, 24, 28, 28, 28, 28, 32, 32, 32, 32, 36, 36, 36, 36, 40, 40, 40, 40,
      44, 44, 44, 44, 48, 48, 48, 48, 52, 52, 52, 52, 56, 56, 56, 56, 60, 60, 60, 60};
  const __m512i at_p0 = _mm512_load_si512(AT_P0);
  const __m512i at_p1 = _mm512_add_epi8(at_p0, _mm512_set1_epi8(2));
  const __m512i slot = _mm512_set1_epi32(0x03020100);
  const __m512i three = _mm512_set1_epi8(3);
  const __mmask64 k0 = _mm512_testn_epi8_mask(_mm512_xor_si512(_mm512_multishift_epi64_epi8(at_p0, pos), slot), three);
  const __mmask64 k1 = _mm512_testn_epi8_mask(_mm512_xor_si512(_mm512_multishift_epi64_epi8(at_p1, pos), slot), three);
  const __m256i v = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(block + 20),
                                        reinterpret_cast<const __m128i*>(block));
  return _mm512_maskz_expand_epi8(_kor_mask64(k0, k1), _mm512_castsi256_si512(v));
}

// W8A8_2_4 with few rows: each block expanded in registers and dotted with R rows' u8-offset
// activations (the row sums take the offset out, as in the dense tiles).
template <int R, int C>
inline void sparse_tile(const DlW8a8Gemm& g, int64_t i0, int64_t c0, int64_t cstride) {
  __m512i acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_si512();
  const int8_t* q[R];
  for (int r = 0; r < R; r++) q[r] = dl_w8a8_act_q(g, i0 + r);
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  const int64_t nb = g.k / 32;
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    __m512i wv[C];
    for (int c = 0; c < C; c++) wv[c] = expand_2_4_x2(g.w + (c0 + c * cstride) * g.w_row_bytes + 20 * b);
    for (int r = 0; r < R; r++) {
      const __m512i xu = _mm512_xor_si512(_mm512_load_si512(q[r] + 32 * b), flip);
      for (int c = 0; c < C; c++) acc[r][c] = dpbusd(acc[r][c], xu, wv[c]);
    }
  }
  if (b < nb) {
    // An odd last block: the activations past k are 0 in the padded row, the weights expand to 0.
    __m512i wv[C];
    for (int c = 0; c < C; c++) {
      wv[c] = _mm512_zextsi256_si512(expand_2_4(g.w + (c0 + c * cstride) * g.w_row_bytes + 20 * b));
    }
    for (int r = 0; r < R; r++) {
      const __m512i xu = _mm512_xor_si512(_mm512_load_si512(q[r] + 32 * b), flip);
      for (int c = 0; c < C; c++) acc[r][c] = dpbusd(acc[r][c], xu, wv[c]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      const int32_t sum = _mm512_reduce_add_epi32(acc[r][c]) - 128 * dl_w8a8_row_sum(g, c0 + c * cstride);
      store(g, i0 + r, c0 + c * cstride, sum);
    }
}

// 4 far-apart streams per tile, as decode_streams.
template <int R>
inline void sparse_cols(const DlW8a8Gemm& g, int64_t i0, int64_t c0, int64_t c1) {
  const int64_t part = (c1 - c0) / 4;
  for (int64_t c = c0; c < c0 + part; c++) sparse_tile<R, 4>(g, i0, c, part);
  for (int64_t c = c0 + 4 * part; c < c1; c++) sparse_tile<R, 1>(g, i0, c, 1);
}

static void sparse_few_rows(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  int64_t i = 0;
  for (; i + 4 <= g.m; i += 4) sparse_cols<4>(g, i, c0, c1);
  switch (g.m - i) {
    case 3: sparse_cols<3>(g, i, c0, c1); break;
    case 2: sparse_cols<2>(g, i, c0, c1); break;
    case 1: sparse_cols<1>(g, i, c0, c1); break;
    default: break;
  }
}

// INT8_2_4 (q8 activation blocks): the in-register expansion, products by the sign trick, each
// block's int32 sums scaled by its d in f32.
template <int R, int C>
inline void int8_2_4_tile(const DlW8a8Gemm& g, int64_t i0, int64_t c0, int64_t cstride) {
  __m512 acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  const int8_t* w[C];
  for (int c = 0; c < C; c++) w[c] = g.w + (c0 + c * cstride) * g.w_row_bytes;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  const int64_t nb = g.k / 32;
  for (int64_t b = 0; b < nb; b += 2) {
    // Two blocks per step (an odd last one alone, the other half zero): products of u8-offset
    // activations, the offset taken back out with each block's weight sums.
    const bool pair = b + 1 < nb;
    __m512i wv[C], wsum[C];
    for (int c = 0; c < C; c++) {
      // 2 KiB ahead along each stream, as the quantized formats' decode does (one line per step).
      _mm_prefetch(reinterpret_cast<const char*>(w[c] + 20 * b + 2048), _MM_HINT_T0);
      wv[c] = pair ? expand_2_4_x2(w[c] + 20 * b) : _mm512_zextsi256_si512(expand_2_4(w[c] + 20 * b));
      wsum[c] = dpbusd(_mm512_setzero_si512(), flip, wv[c]);
    }
    for (int r = 0; r < R; r++) {
      const dl_act_q8* a = reinterpret_cast<const dl_act_q8*>(g.act + (i0 + r) * g.act_row_bytes) + b;
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[0].qs));
      const __m256i x1 = pair ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[1].qs)) : _mm256_setzero_si256();
      const __m512i xu = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1), flip);
      const __m512 d = _mm512_insertf32x8(_mm512_set1_ps(a[0].d), _mm256_set1_ps(pair ? a[1].d : 0.0f), 1);
      for (int c = 0; c < C; c++) {
        const __m512i dot = _mm512_sub_epi32(dpbusd(_mm512_setzero_si512(), xu, wv[c]), wsum[c]);
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), d, acc[r][c]);
      }
    }
  }
  for (int c = 0; c < C; c++) {
    const int64_t col = c0 + c * cstride;
    const float scale = dl_w8a8_row_scale(g, col);
    for (int r = 0; r < R; r++) {
      float v = _mm512_reduce_add_ps(acc[r][c]) * scale;
      if (g.bias != nullptr) v += g.bias[col];
      g.out[(i0 + r) * g.ldo + col] = v;
    }
  }
}

// Tiles of 4 far-apart columns (4 long weight streams, as decode_streams) by up to 4 rows.
template <int R>
inline void int8_2_4_cols(const DlW8a8Gemm& g, int64_t i0, int64_t c0, int64_t c1) {
  const int64_t part = (c1 - c0) / 4;
  for (int64_t c = c0; c < c0 + part; c++) int8_2_4_tile<R, 4>(g, i0, c, part);
  for (int64_t c = c0 + 4 * part; c < c1; c++) int8_2_4_tile<R, 1>(g, i0, c, 1);
}

static void int8_2_4(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  int64_t i = 0;
  for (; i + 4 <= g.m; i += 4) int8_2_4_cols<4>(g, i, c0, c1);
  switch (g.m - i) {
    case 3: int8_2_4_cols<3>(g, i, c0, c1); break;
    case 2: int8_2_4_cols<2>(g, i, c0, c1); break;
    case 1: int8_2_4_cols<1>(g, i, c0, c1); break;
    default: break;
  }
}

// --- Dense W8A8 rows

// The horizontal sums of C accumulators; 4 at once share the adds (the epilogue of a tile costs
// as much as a short k's whole loop otherwise).
template <int C>
inline void reduce(const __m512i* acc, int32_t* out) {
  if constexpr (C == 4) {
    __m256i h[4];
    for (int c = 0; c < 4; c++) h[c] = _mm256_add_epi32(_mm512_castsi512_si256(acc[c]), _mm512_extracti64x4_epi64(acc[c], 1));
    const __m256i ab = _mm256_hadd_epi32(h[0], h[1]), cd = _mm256_hadd_epi32(h[2], h[3]);
    const __m256i abcd = _mm256_hadd_epi32(ab, cd);
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), s);
  } else {
    for (int c = 0; c < C; c++) out[c] = _mm512_reduce_add_epi32(acc[c]);
  }
}

// Prefill splits k into chunks whose activation rows stay in L1 while a panel's weights stream
// from L2; the partial int32 sums wait in the output's own floats (as int32 bits) between chunks.
constexpr int64_t K_CHUNK = 1024;
enum class Part { whole, first, middle, last };

// Column c of the tile is output column c0 + c * cstride, its weights at w0 + c * w_stride; the
// tile covers k in [jb, je) (je == k or a multiple of 64).
template <int R, int C>
inline void tile(const DlW8a8Gemm& g, const int8_t* w0, int64_t w_stride, bool padded, int64_t i0, int64_t c0,
                 int64_t cstride = 1, int64_t jb = 0, int64_t je = -1, Part part = Part::whole) {
  if (je < 0) je = g.k;
  __m512i acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_si512();
  const int8_t* w[C];
  for (int c = 0; c < C; c++) w[c] = w0 + c * w_stride;
  const int8_t* q[R];
  for (int r = 0; r < R; r++) q[r] = dl_w8a8_act_q(g, i0 + r);
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  // Padded rows (an expanded panel) run whole; stored rows mask their last partial step.
  const int64_t j64 = padded && je == g.k ? dl_w8a8_padded_k(g.k) : jb + (je - jb) / 64 * 64;
  int64_t j = jb;
  for (; j < j64; j += 64) {
    __m512i wv[C];
    for (int c = 0; c < C; c++) wv[c] = _mm512_loadu_si512(w[c] + j);
    for (int r = 0; r < R; r++) {
      const __m512i xu = _mm512_xor_si512(_mm512_load_si512(q[r] + j), flip);
      for (int c = 0; c < C; c++) acc[r][c] = dpbusd(acc[r][c], xu, wv[c]);
    }
  }
  if (j < je) {
    // Weights past k load as 0, so the zero-padded activations' offset adds nothing there.
    const __mmask64 mask = _cvtu64_mask64((1ull << (je - j)) - 1);
    __m512i wv[C];
    for (int c = 0; c < C; c++) wv[c] = _mm512_maskz_loadu_epi8(mask, w[c] + j);
    for (int r = 0; r < R; r++) {
      const __m512i xu = _mm512_xor_si512(_mm512_load_si512(q[r] + j), flip);
      for (int c = 0; c < C; c++) acc[r][c] = dpbusd(acc[r][c], xu, wv[c]);
    }
  }
  for (int r = 0; r < R; r++) {
    int32_t sums[C];
    reduce<C>(acc[r], sums);
    for (int c = 0; c < C; c++) {
      const int64_t col = c0 + c * cstride;
      int32_t* partial = reinterpret_cast<int32_t*>(g.out + (i0 + r) * g.ldo + col);
      if (part == Part::middle || part == Part::last) sums[c] += *partial;
      if (part == Part::first || part == Part::middle) {
        *partial = sums[c];
      } else {
        store(g, i0 + r, col, sums[c] - 128 * dl_w8a8_row_sum(g, col));
      }
    }
  }
}

template <int R>
inline void cols(const DlW8a8Gemm& g, const int8_t* w0, int64_t w_stride, bool padded, int64_t i0, int64_t c0,
                 int64_t c1, int64_t jb, int64_t je, Part part) {
  int64_t c = c0;
  for (; c + 4 <= c1; c += 4) tile<R, 4>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c, 1, jb, je, part);
  switch (c1 - c) {
    case 3: tile<R, 3>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c, 1, jb, je, part); break;
    case 2: tile<R, 2>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c, 1, jb, je, part); break;
    case 1: tile<R, 1>(g, w0 + (c - c0) * w_stride, w_stride, padded, i0, c, 1, jb, je, part); break;
    default: break;
  }
}

// Every activation row against the columns [c0, c1) whose rows start at w0, w_stride apart, k
// chunk by chunk.
static void rows_over(const DlW8a8Gemm& g, const int8_t* w0, int64_t w_stride, bool padded, int64_t c0, int64_t c1) {
  for (int64_t jb = 0; jb < g.k; jb += K_CHUNK) {
    const int64_t je = std::min(g.k, jb + K_CHUNK);
    const Part part = jb == 0 ? (je == g.k ? Part::whole : Part::first) : je == g.k ? Part::last : Part::middle;
    int64_t i = 0;
    for (; i + 4 <= g.m; i += 4) cols<4>(g, w0, w_stride, padded, i, c0, c1, jb, je, part);
    switch (g.m - i) {
      case 3: cols<3>(g, w0, w_stride, padded, i, c0, c1, jb, je, part); break;
      case 2: cols<2>(g, w0, w_stride, padded, i, c0, c1, jb, je, part); break;
      case 1: cols<1>(g, w0, w_stride, padded, i, c0, c1, jb, je, part); break;
      default: break;
    }
  }
}

// Decode: adjacent weight rows read side by side make short streams that collide in the hardware
// prefetcher (float_tile.h measured it), so a tile takes its 4 rows from 4 parts of the range far
// apart: 4 long sequential streams.
template <int R>
static void decode_streams(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  const int64_t part = (c1 - c0) / 4;
  for (int64_t c = c0; c < c0 + part; c++) {
    tile<R, 4>(g, g.w + c * g.w_row_bytes, part * g.w_row_bytes, false, 0, c, part);
  }
  for (int64_t c = c0 + 4 * part; c < c1; c++) tile<R, 1>(g, g.w + c * g.w_row_bytes, 0, false, 0, c);
}

static void dense(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  switch (g.m) {
    case 1: decode_streams<1>(g, c0, c1); return;
    case 2: decode_streams<2>(g, c0, c1); return;
    case 3: decode_streams<3>(g, c0, c1); return;
    case 4: decode_streams<4>(g, c0, c1); return;
    default: break;
  }
  // Panels of columns whose weights (a k chunk of them) stay in L2 while every row tile passes.
  const int64_t chunk = std::min<int64_t>(K_CHUNK, g.w_row_bytes);
  const int64_t panel = std::max<int64_t>(4, (int64_t)(256 * 1024) / std::max<int64_t>(1, chunk) / 4 * 4);
  for (int64_t p0 = c0; p0 < c1; p0 += panel) {
    const int64_t p1 = std::min(c1, p0 + panel);
    rows_over(g, g.w + p0 * g.w_row_bytes, g.w_row_bytes, false, p0, p1);
  }
}

// W8A8_2_4: few rows expand each block in registers (sparse_few_rows); more expand
// DL_W8A8_PANEL columns at a time into this thread's scratch, once, for every row tile to read.
static void sparse_2_4(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  if (g.m < 8 || g.panel == nullptr) {
    sparse_few_rows(g, c0, c1);
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
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * b), expand_2_4(src + 20 * b));
      }
      std::memset(dst + g.k, 0, (size_t)(kp - g.k));
    }
    rows_over(g, panel, kp, true, p0, p1);
  }
}
}  // namespace w8a8_zmm
#pragma GCC pop_options

static const DlW8a8Isa avx2_set = {"avx2", w8a8_avx2::dense, w8a8_avx2::sparse_2_4, w8a8_avx2::int8_2_4};
static const DlW8a8Isa vnni_set = {"avx512-vnni", w8a8_zmm::dense, w8a8_zmm::sparse_2_4, w8a8_zmm::int8_2_4};
const DlW8a8Isa* dl_w8a8_avx2() { return &avx2_set; }
const DlW8a8Isa* dl_w8a8_avx512_vnni() { return &vnni_set; }
#else
const DlW8a8Isa* dl_w8a8_avx2() { return nullptr; }
const DlW8a8Isa* dl_w8a8_avx512_vnni() { return nullptr; }
#endif
