// The Q4_0_R16 kernels (column lanes), written once on 256-bit vectors and included once per x86
// instruction set (no guard), after quant_tile.h: dot_us is one vpdpbusd under AVX-512 VNNI and
// vpmaddubsw + vpmaddwd under AVX2.
//
// Each 32-bit lane is one weight row: a 32-byte load of a block's chunk t holds 8 rows' qs[4t, 4t+4),
// so its low nibbles dotted with the activation's 4 bytes x[4t, 4t + 4) broadcast to every lane
// give 8 rows x 4 products in one instruction, and the high nibbles the same with x[16 + 4t, ...).
// A group of 16 rows is two such halves. Per block and (activation row, weight row) the integer sum
// starts at -8 * sum(x) (Q4_0's offset 8) and is exact; then one convert, one scale product
// d_w * d_x for 8 rows at once, and one FMA into the row's f32 accumulator, which is the row's
// result: no horizontal sum. That float sequence is the same for every (row, column) pair whatever
// the tile, so a row's result does not depend on the batch (decode and prefill share it).
//
// The namespace provides R16_PAIRS, the most (activation row, group) pairs a tile keeps in
// registers (4 vectors each: two halves' integer sums and f32 accumulators).

namespace r16 {

// Bytes ahead of each decode stream that are prefetched: 4 KiB (14 blocks) measured on par with the
// Q4_0 tiles at m = 1 on all four bench shapes, where quant_zmm.h's 2 KiB lost 6% on qwen's down
// projection (896 x 4864: 195 against 184 us, load 2).
constexpr int64_t PREFETCH_BYTES = 4096;

// The RM x NG tile: activation rows act[0, RM) against the groups at grp[0, NG) (block 0 of each),
// into out[i * ldo + col[j] + lane] (+ bias[col[j] + lane]) for the 16 rows of group j.
template <int RM, int NG, bool PREFETCH>
static void tile(const uint8_t* const* grp, const int64_t* col, const uint8_t* act, int64_t act_row_bytes,
                 int64_t nb, float* out, int64_t ldo, const float* bias) {
  __m256 acc[RM][NG][2];
#pragma GCC unroll 8
  for (int i = 0; i < RM; i++) {
#pragma GCC unroll 8
    for (int j = 0; j < NG; j++) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
  }
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi8(1);
  for (int64_t b = 0; b < nb; b++) {
    __m256i isum[RM][NG][2];
    float dx[RM];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) {
      const dl_act_q8& a = reinterpret_cast<const dl_act_q8*>(act + i * act_row_bytes)[b];
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs));
      const __m256i init = _mm256_set1_epi32(-8 * hsum_i32(dot_us(_mm256_setzero_si256(), ones, x)));
      dx[i] = a.d;
#pragma GCC unroll 8
      for (int j = 0; j < NG; j++) isum[i][j][0] = isum[i][j][1] = init;
    }
#pragma GCC unroll 8
    for (int j = 0; j < NG; j++) {
      if (PREFETCH) {
        const char* ahead = reinterpret_cast<const char*>(grp[j] + b * DL_R16_BLOCK_BYTES + PREFETCH_BYTES);
#pragma GCC unroll 5
        for (int l = 0; l < 5; l++) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) {
#pragma GCC unroll 8
      for (int j = 0; j < NG; j++) {
        const uint8_t* chunk = grp[j] + b * DL_R16_BLOCK_BYTES + 32 + 64 * t;
        const __m256i raw0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk));
        const __m256i raw1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 32));
        const __m256i lo0 = _mm256_and_si256(raw0, low4), hi0 = _mm256_and_si256(_mm256_srli_epi16(raw0, 4), low4);
        const __m256i lo1 = _mm256_and_si256(raw1, low4), hi1 = _mm256_and_si256(_mm256_srli_epi16(raw1, 4), low4);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
          const uint8_t* qs = reinterpret_cast<const uint8_t*>(reinterpret_cast<const dl_act_q8*>(act + i * act_row_bytes)[b].qs);
          const __m256i xl = _mm256_set1_epi32((int)dl_load_u32(qs + 4 * t));
          const __m256i xh = _mm256_set1_epi32((int)dl_load_u32(qs + 16 + 4 * t));
          isum[i][j][0] = dot_us(dot_us(isum[i][j][0], lo0, xl), hi0, xh);
          isum[i][j][1] = dot_us(dot_us(isum[i][j][1], lo1, xl), hi1, xh);
        }
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < NG; j++) {
      const __m128i d16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(grp[j] + b * DL_R16_BLOCK_BYTES));
      const __m128i d16b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(grp[j] + b * DL_R16_BLOCK_BYTES + 16));
      const __m256 dw0 = _mm256_cvtph_ps(d16), dw1 = _mm256_cvtph_ps(d16b);
#pragma GCC unroll 8
      for (int i = 0; i < RM; i++) {
        const __m256 dxv = _mm256_set1_ps(dx[i]);
        acc[i][j][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i][j][0]), _mm256_mul_ps(dw0, dxv), acc[i][j][0]);
        acc[i][j][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i][j][1]), _mm256_mul_ps(dw1, dxv), acc[i][j][1]);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NG; j++) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      const int64_t c = col[j] + 8 * h;
      const __m256 bv = bias != nullptr ? _mm256_loadu_ps(bias + c) : _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int i = 0; i < RM; i++) _mm256_storeu_ps(out + i * ldo + c, _mm256_add_ps(acc[i][j][h], bv));
    }
  }
}

// Groups [gb, ge) of all activation rows [r, r + RM) with NG groups per tile, as NG long streams
// (decode: each group's blocks are one sequential run of bytes, prefetched ahead) or as neighbours.
template <int RM, int NG, bool PREFETCH>
static void sweep(const DlQuantGemm& g, int64_t r, int64_t gb, int64_t ge) {
  const int64_t group_bytes = DL_R16_ROWS * g.w_row_bytes, nb = g.k / DL_QK;
  const uint8_t* act = g.act + r * g.act_row_bytes;
  float* out = g.out + r * g.ldo;
  const int64_t part = (ge - gb) / NG;
  for (int64_t s = 0; s < part; s++) {
    const uint8_t* grp[NG];
    int64_t col[NG];
    for (int j = 0; j < NG; j++) {
      const int64_t gi = gb + (PREFETCH ? j * part + s : s * NG + j);
      grp[j] = g.w + gi * group_bytes, col[j] = gi * DL_R16_ROWS;
    }
    tile<RM, NG, PREFETCH>(grp, col, act, g.act_row_bytes, nb, out, g.ldo, g.bias);
  }
  for (int64_t gi = gb + NG * part; gi < ge; gi++) {
    const uint8_t* grp[1] = {g.w + gi * group_bytes};
    const int64_t col[1] = {gi * DL_R16_ROWS};
    tile<RM, 1, PREFETCH>(grp, col, act, g.act_row_bytes, nb, out, g.ldo, g.bias);
  }
}

// Rows [r, r + rm) for rm <= R (a run-time count) with one group per tile.
template <int R>
static void rows_one_group(int rm, const DlQuantGemm& g, int64_t r, int64_t gb, int64_t ge) {
  if constexpr (R > 1) {
    if (rm < R) return rows_one_group<R - 1>(rm, g, r, gb, ge);
  }
  sweep<R, 1, false>(g, r, gb, ge);
}

// Decode (m = 1, and m = 2 where 4 pairs fit): the most streams the registers allow, at most 4.
template <int RM>
static void decode(const DlQuantGemm& g, int64_t gb, int64_t ge) {
  constexpr int NG = R16_PAIRS / RM < 4 ? R16_PAIRS / RM : 4;
  sweep<RM, NG, true>(g, 0, gb, ge);
}

// Columns [c0, c1): whole groups here, the last rows % 16 rows (plain Q4_0 after the groups) by
// the set's Q4_0 kernel, which is batch-invariant on its own.
template <DlQuantKernel PLAIN>
static void gemm_cols(const DlQuantGemm& g, int64_t c0, int64_t c1) {
  const int64_t grouped = g.n / DL_R16_ROWS * DL_R16_ROWS;
  const int64_t gb = c0 / DL_R16_ROWS, ge = std::min(c1, grouped) / DL_R16_ROWS;
  if (gb < ge) {
    if (g.m == 1) {
      decode<1>(g, gb, ge);
    } else if (g.m == 2 && R16_PAIRS >= 4) {
      decode<2>(g, gb, ge);
    } else {
      // Groups that stay in L2 across every tile of rows, as quant_tile.h's gemm_cols.
      const int64_t group_bytes = DL_R16_ROWS * g.w_row_bytes;
      const int64_t block = std::max<int64_t>(1, 256 * 1024 / group_bytes);
      for (int64_t b0 = gb; b0 < ge; b0 += block) {
        const int64_t b1 = std::min(b0 + block, ge);
        for (int64_t r = 0; r < g.m; r += R16_PAIRS) {
          rows_one_group<R16_PAIRS>((int)std::min<int64_t>(g.m - r, R16_PAIRS), g, r, b0, b1);
        }
      }
    }
  }
  if (c1 > grouped) {
    DlQuantGemm tail = g;
    tail.w = g.w + grouped * g.w_row_bytes;
    tail.out = g.out + grouped;
    tail.bias = g.bias != nullptr ? g.bias + grouped : nullptr;
    tail.n = g.n - grouped;
    PLAIN(tail, std::max(c0, grouped) - grouped, c1 - grouped);
  }
}

}  // namespace r16
