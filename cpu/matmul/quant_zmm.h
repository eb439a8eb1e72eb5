// 512-bit kernels of the AVX-512 VNNI set for the formats decode and prefill spend most time on
// (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K), included once inside that target region (no guard).
//
// A pass computes a tile of RM activation rows x NC weight rows (columns; the sizes per m are in
// the driver below) so that each unpacked weight vector is used RM times and each prepared
// activation vector NC times, keeps one vector
// accumulator per (row, column) and reduces it horizontally once at the end (the 256-bit kernels
// reduced per column and, for the K formats, per super-block). Every (row, column) pair runs the same
// instruction sequence whatever RM and NC are, so a row's result does not depend on the batch.
//
// Legacy formats: one zmm holds two blocks of 32. Weights are made unsigned (q + offset, offset 8,
// 16 or 128) so one vpdpbusd takes the products, and the offset's -offset * sum(x) per lane starts
// the integer accumulator (computed once per activation row and block pair). Q4_0/Q4_1/Q5_x store
// 16 bytes of nibbles per block, so their zmm holds [low a, low b, high a, high b] (16 bytes each),
// and the activations are permuted to match.
//
// K formats: one zmm holds two chunks of 32 of a super-block; vpmaddubsw then vpdpwssd apply the
// 16-element sub-block scales in integers, and the mins (Q6_K's offset 32 folded in as for the
// 256-bit kernels) come from the activation's 16-element sums, folded into the same accumulator.
// A weight row's super-block is unpacked once per row tile; for m > 4 the tile is 16 rows x 1
// column (KDotZ::rm, nc) where those activation rows fit L1.

namespace zmm {

// Software prefetch distances along each weight stream: bytes for the legacy formats, super-blocks
// for the K formats (2.3-3.4 KiB). With decode's 4 long streams (decode_tiles), 2 KiB and 16 measured
// faster than 1 KiB and 4 (m = 1, weights from DRAM: Q8_0 4864 x 896 138 -> 112-158 us, Q4_K
// 896 x 4864 99-105 -> 70-75 us, noisy on a loaded 2-core machine); 512 bytes was slower still.
constexpr int64_t PREFETCH_BYTES = 2048, PREFETCH_SUPERBLOCKS = 16;

// Lane patterns of a pair's two scales over the 16 int32 lanes: 'nat' = 8 lanes of a then 8 of b,
// 'alt' = 4 of a, 4 of b, 4 of a, 4 of b (the nibble formats' order).
inline __m512 pair_lanes(__m128 ab, bool alt) {
  const __m512i nat_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i alt_idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
  return _mm512_permutexvar_ps(alt ? alt_idx : nat_idx, _mm512_castps128_ps512(ab));
}
// Two f16 values (a in the low 16 bits) to [a, b, 0, 0].
inline __m128 f16_pair(uint32_t ab) { return _mm_cvtph_ps(_mm_cvtsi32_si128((int)ab)); }
inline uint32_t u16_at(const uint8_t* p) {
  uint16_t v;
  __builtin_memcpy(&v, p, 2);
  return v;
}
inline float hsum512(__m512 v) {
  const __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return hsum_f32(s);
}

// --- Legacy formats

// A weight block pair: u (unsigned values in the format's lane order), d and m as [a, b, 0, 0]
// (b = 0 for a lone last block, whose upper half of u is zero).
struct WPair {
  __m512i u;
  __m128 d, m;
};

template <int DT>
struct LZ;
// Nibble formats: 16 bytes of qs per block at byte `qs` of blocks of `size` bytes.
template <int SIZE, int QS>
inline __m512i nibble_pair(const uint8_t* p, bool two) {
  const __m128i qa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + QS));
  const __m128i qb = two ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + SIZE + QS)) : _mm_setzero_si128();
  const __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(qa), qb, 1);
  const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);
  return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}
// Fifth bits of a pair in the nibble lane order: bit j of qh to 0x10 in value j.
inline __m512i fifth_pair(uint32_t qa, uint32_t qb) {
  const uint64_t mask = (uint64_t)(qa & 0xFFFF) | (uint64_t)(qb & 0xFFFF) << 16 | (uint64_t)(qa >> 16) << 32 |
                        (uint64_t)(qb >> 16) << 48;
  return _mm512_maskz_set1_epi8(mask, 0x10);
}
template <>
struct LZ<DL_DTYPE_Q4_0> {
  static constexpr bool alt = true, has_min = false;
  static constexpr int offset = 8, size = sizeof(dl_block_q4_0);
  static WPair load(const uint8_t* p, bool two) {
    return {nibble_pair<size, 2>(p, two), f16_pair(u16_at(p) | (two ? u16_at(p + size) << 16 : 0)), _mm_setzero_ps()};
  }
};
template <>
struct LZ<DL_DTYPE_Q4_1> {
  static constexpr bool alt = true, has_min = true;
  static constexpr int offset = 0, size = sizeof(dl_block_q4_1);
  static WPair load(const uint8_t* p, bool two) {
    return {nibble_pair<size, 4>(p, two), f16_pair(u16_at(p) | (two ? u16_at(p + size) << 16 : 0)),
            f16_pair(u16_at(p + 2) | (two ? u16_at(p + size + 2) << 16 : 0))};
  }
};
template <>
struct LZ<DL_DTYPE_Q5_0> {
  static constexpr bool alt = true, has_min = false;
  static constexpr int offset = 16, size = sizeof(dl_block_q5_0);
  static WPair load(const uint8_t* p, bool two) {
    const __m512i hi = fifth_pair(dl_load_u32(p + 2), two ? dl_load_u32(p + size + 2) : 0);
    return {_mm512_or_si512(nibble_pair<size, 6>(p, two), hi),
            f16_pair(u16_at(p) | (two ? u16_at(p + size) << 16 : 0)), _mm_setzero_ps()};
  }
};
template <>
struct LZ<DL_DTYPE_Q5_1> {
  static constexpr bool alt = true, has_min = true;
  static constexpr int offset = 0, size = sizeof(dl_block_q5_1);
  static WPair load(const uint8_t* p, bool two) {
    const __m512i hi = fifth_pair(dl_load_u32(p + 4), two ? dl_load_u32(p + size + 4) : 0);
    return {_mm512_or_si512(nibble_pair<size, 8>(p, two), hi),
            f16_pair(u16_at(p) | (two ? u16_at(p + size) << 16 : 0)),
            f16_pair(u16_at(p + 2) | (two ? u16_at(p + size + 2) << 16 : 0))};
  }
};
template <>
struct LZ<DL_DTYPE_Q8_0> {
  static constexpr bool alt = false, has_min = false;
  static constexpr int offset = 128, size = sizeof(dl_block_q8_0);
  static WPair load(const uint8_t* p, bool two) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
    const __m256i b = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + size + 2)) : _mm256_set1_epi8(-128);
    const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
    return {_mm512_xor_si512(q, _mm512_set1_epi8(-128)), f16_pair(u16_at(p) | (two ? u16_at(p + size) << 16 : 0)),
            _mm_setzero_ps()};
  }
};

// An activation block pair prepared for one format: x in the weights' lane order, the integer
// accumulator's start -offset * sum(x) per lane, d and s as lanes.
struct APair {
  __m512i x, init;
  __m512 d;
  __m128 s;
};
template <class W>
inline APair act_pair(const uint8_t* act, int64_t sb, bool two) {
  const dl_act_q8* a = reinterpret_cast<const dl_act_q8*>(act) + sb;
  const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[0].qs));
  const __m256i xb = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[1].qs)) : _mm256_setzero_si256();
  __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(xa), xb, 1);
  if (W::alt) x = _mm512_shuffle_i64x2(x, x, _MM_SHUFFLE(3, 1, 2, 0));
  __m512i init = _mm512_setzero_si512();
  if (W::offset != 0) {
    init = _mm512_sub_epi32(init, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)W::offset), x));
  }
  const __m128 d = _mm_setr_ps(a[0].d, two ? a[1].d : 0.0f, 0.0f, 0.0f);
  const __m128 s = W::has_min ? _mm_setr_ps(a[0].s, two ? a[1].s : 0.0f, 0.0f, 0.0f) : _mm_setzero_ps();
  return {x, init, pair_lanes(d, W::alt), s};
}

template <int DT>
struct LegacyZ {
  using W = LZ<DT>;
  static constexpr int rm = 6, nc = 4;  // the wide tile (gemm_cols): Q4_0 prefill 0.71-0.89x -> 0.83-0.96x of F16
  // res[i * NC + j] = dot(activation row i, weight row j) for the RM rows from act on and the NC
  // weight rows at w + j * w_stride.
  template <int RM, int NC>
  static void tile(const uint8_t* w, int64_t w_stride, const uint8_t* act, int64_t act_row_bytes, int64_t k,
                   float* res) {
    __m512 acc[RM][NC];
    __m128 macc[RM][NC];
#pragma GCC unroll 16
    for (int i = 0; i < RM; i++) {
#pragma GCC unroll 16
      for (int j = 0; j < NC; j++) acc[i][j] = _mm512_setzero_ps(), macc[i][j] = _mm_setzero_ps();
    }
    const int64_t num_sub = (k + DL_QK - 1) / DL_QK;
    for (int64_t sb = 0; sb < num_sub; sb += 2) {
      const bool two = sb + 1 < num_sub;
      WPair wp[NC];
      __m512 wd[NC];
#pragma GCC unroll 16
      for (int j = 0; j < NC; j++) {
        // NC row streams: a software prefetch ahead measured faster than leaving them to the hardware
        // prefetchers (decode Q8_0 0.66x -> 1.09x of F16).
        _mm_prefetch(reinterpret_cast<const char*>(w + j * w_stride + sb * W::size + PREFETCH_BYTES), _MM_HINT_T0);
        wp[j] = W::load(w + j * w_stride + sb * W::size, two);
        wd[j] = pair_lanes(wp[j].d, W::alt);
      }
#pragma GCC unroll 16
      for (int i = 0; i < RM; i++) {
        const APair ap = act_pair<W>(act + i * act_row_bytes, sb, two);
#pragma GCC unroll 16
        for (int j = 0; j < NC; j++) {
          const __m512i isum = _mm512_dpbusd_epi32(ap.init, wp[j].u, ap.x);
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(wd[j], ap.d), acc[i][j]);
          if (W::has_min) macc[i][j] = _mm_fmadd_ps(wp[j].m, ap.s, macc[i][j]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < RM; i++) {
#pragma GCC unroll 16
      for (int j = 0; j < NC; j++) {
        float r = hsum512(acc[i][j]);
        if (W::has_min) r += _mm_cvtss_f32(macc[i][j]) + _mm_cvtss_f32(_mm_movehdup_ps(macc[i][j]));
        res[i * NC + j] = r;
      }
    }
  }
};

// --- K formats

// One super-block of one weight row, unpacked: per chunk pair p (values [64p, 64p + 64)) the
// unsigned values u and the int16 scales of the 32 pair sums vpmaddubsw makes of them; the 16 min
// coefficients (one per 16 values, the upper half zero) that multiply the activation's bsums; d and
// dmin. Unpacked once per row tile and used by each of its activation rows.
struct KCol {
  __m512i u[4], sc[4];
  __m512i mn;
  float d, dmin;
};

template <int DT>
struct KZ;
template <>
struct KZ<DL_DTYPE_Q4_K> {
  using B = dl_block_q4_k;
  static void unpack(const B& b, KCol& c) {
    // The 12 bytes of 6-bit scales and mins (dl_k4_scale_min's layout) with 32-bit masks: scales and
    // mins 0-3 are the low 6 bits of bytes 0-3 and 4-7; 4-7 take a nibble of bytes 8-11 and the top
    // two bits of bytes 0-3 (scales) or 4-7 (mins).
    const uint32_t a = dl_load_u32(b.scales), bm = dl_load_u32(b.scales + 4), hi = dl_load_u32(b.scales + 8);
    const uint64_t sc8 = (uint64_t)(a & 0x3F3F3F3Fu) |
                         (uint64_t)((hi & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u)) << 32;
    const uint64_t mn8 = (uint64_t)(bm & 0x3F3F3F3Fu) |
                         (uint64_t)(((hi >> 4) & 0x0F0F0F0Fu) | ((bm >> 2) & 0x30303030u)) << 32;
    // Scale j covers values [32j, 32j + 32): pair sums [16j, 16j + 16); chunk pair p holds 2p, 2p+1.
    const __m512i sc16 = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8)));
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) {
      const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(2 * p))),
                                             _mm256_set1_epi16((short)(2 * p + 1)), 1);
      c.sc[p] = _mm512_permutexvar_epi16(idx, sc16);
    }
    // Min j covers bsums 2j and 2j + 1.
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn8));
    c.mn = _mm512_zextsi256_si512(
        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(m16, m16)), _mm_unpackhi_epi16(m16, m16), 1));
    c.d = f16(b.d), c.dmin = f16(b.dmin);
    // Values [64p, 64p + 64): the low then the high nibbles of qs[32p, 32p + 32).
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * p));
      const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
      c.u[p] = _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
    }
  }
};
template <>
struct KZ<DL_DTYPE_Q6_K> {
  using B = dl_block_q6_k;
  static void unpack(const B& b, KCol& c) {
    // Scale j covers values [16j, 16j + 16): pair sums [8j, 8j + 8).
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
    const __m512i sc16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc8));
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) {
      const __m512i idx = _mm512_setr_epi32(
          (4 * p) * 0x10001, (4 * p) * 0x10001, (4 * p) * 0x10001, (4 * p) * 0x10001, (4 * p + 1) * 0x10001,
          (4 * p + 1) * 0x10001, (4 * p + 1) * 0x10001, (4 * p + 1) * 0x10001, (4 * p + 2) * 0x10001,
          (4 * p + 2) * 0x10001, (4 * p + 2) * 0x10001, (4 * p + 2) * 0x10001, (4 * p + 3) * 0x10001,
          (4 * p + 3) * 0x10001, (4 * p + 3) * 0x10001, (4 * p + 3) * 0x10001);
      c.sc[p] = _mm512_permutexvar_epi16(idx, sc16);
    }
    c.mn = _mm512_zextsi256_si512(_mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5));  // 32 * scale
    c.d = c.dmin = f16(b.d);
    // Chunk pair p = (h, t0): values 128h + 32t for t = t0, t0 + 1 (t0 = 2 (p % 2)), u = value + 32.
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) {
      const int h = p / 2, t0 = 2 * (p % 2);
      const __m512i ql = _mm512_loadu_si512(b.ql + 64 * h);
      const __m512i low = _mm512_and_si512(t0 == 0 ? ql : _mm512_srli_epi16(ql, 4), _mm512_set1_epi8(0x0F));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h));
      const __m512i qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_srli_epi16(qh, 2 * t0)),
                                             _mm256_srli_epi16(qh, 2 * t0 + 2), 1);
      const __m512i high = _mm512_and_si512(qh2, _mm512_set1_epi8(3));
      c.u[p] = _mm512_or_si512(low, _mm512_slli_epi16(high, 4));
    }
  }
};

// The K tile loops over columns outside rows inside each super-block, so only one column's unpacked
// super-block (8 zmm) and the RM x NC accumulators are live; the activation chunks are memory
// operands. The mins are folded into the same accumulator (upper 8 lanes of their zmm are zero).
template <int DT>
struct KDotZ {
  using W = KZ<DT>;
  static constexpr int rm = 16, nc = 1;  // the wide tile (gemm_cols)
  template <int RM, int NC>
  static void tile(const uint8_t* w, int64_t w_stride, const uint8_t* act, int64_t act_row_bytes, int64_t k,
                   float* res) {
    __m512 acc[RM][NC];
#pragma GCC unroll 16
    for (int i = 0; i < RM; i++) {
#pragma GCC unroll 16
      for (int j = 0; j < NC; j++) acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t ib = 0; ib < k / DL_QK_K; ib++) {
#pragma GCC unroll 16
      for (int j = 0; j < NC; j++) {
        const char* next = reinterpret_cast<const char*>(w + j * w_stride) + (ib + PREFETCH_SUPERBLOCKS) * sizeof(typename W::B);
        _mm_prefetch(next, _MM_HINT_T0), _mm_prefetch(next + 64, _MM_HINT_T0), _mm_prefetch(next + 128, _MM_HINT_T0);
        KCol c;
        W::unpack(reinterpret_cast<const typename W::B*>(w + j * w_stride)[ib], c);
#pragma GCC unroll 16
        for (int i = 0; i < RM; i++) {
          const dl_block_q8_k& a = reinterpret_cast<const dl_block_q8_k*>(act + i * act_row_bytes)[ib];
          __m512i isum = _mm512_setzero_si512();
#pragma GCC unroll 4
          for (int p = 0; p < 4; p++) {
            isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(c.u[p], _mm512_loadu_si512(a.qs + 64 * p)), c.sc[p]);
          }
          const __m512i bs = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsums)));
          const __m512 mins = _mm512_cvtepi32_ps(_mm512_madd_epi16(bs, c.mn));
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(c.d * a.d), acc[i][j]);
          acc[i][j] = _mm512_fnmadd_ps(mins, _mm512_set1_ps(c.dmin * a.d), acc[i][j]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < RM; i++) {
#pragma GCC unroll 16
      for (int j = 0; j < NC; j++) res[i * NC + j] = hsum512(acc[i][j]);
    }
  }
};

// --- Driver

// Decode (m <= 4) tiles m rows x 4 columns. Larger m takes the format's wide tile, F::rm rows x
// F::nc columns, so each unpacked weight vector serves more rows (the K formats: 16 x 1 against
// 4 x 4, Q4_K prefill at k = 1536 6.7 -> 5.1 ms).
constexpr int NC_DECODE = 4, RM_DECODE = 4;

// out[i * ldo + c + j * step] for the tile's RM x TNC results, columns c + j * step.
template <int RM, int TNC>
inline void store(const DlQuantGemm& g, float* out, const float* res, int64_t c, int64_t step) {
  for (int j = 0; j < TNC; j++) {
    const int64_t col = c + j * step;
    const float scale = g.row_scale != nullptr ? g.row_scale[col] : 1.0f;
    const float bias = g.bias != nullptr ? g.bias[col] : 0.0f;
    for (int i = 0; i < RM; i++) out[i * g.ldo + col] = res[i * TNC + j] * scale + bias;
  }
}

template <class F, int RM, int TNC>
static void tile_cols(const DlQuantGemm& g, const uint8_t* act, float* out, int64_t& c, int64_t b1) {
  float res[RM * TNC];
  for (; c + TNC <= b1; c += TNC) {
    F::template tile<RM, TNC>(g.w + c * g.w_row_bytes, g.w_row_bytes, act, g.act_row_bytes, g.k, res);
    store<RM, TNC>(g, out, res, c, 1);
  }
}

template <class F, int RM, int TNC>
static void tile_row(const DlQuantGemm& g, const uint8_t* act, float* out, int64_t b0, int64_t b1) {
  int64_t c = b0;
  tile_cols<F, RM, TNC>(g, act, out, c, b1);
  tile_cols<F, RM, 1>(g, act, out, c, b1);
}

// Decode reads each weight byte once, from DRAM. Adjacent weight rows side by side make 4 short
// streams that the prefetchers serve badly (as float_tile.h measured for F16), so [c0, c1) is cut
// into NC_DECODE parts and a tile takes one column from each: 4 long sequential streams, each one
// prefetched ahead into its own next rows.
template <class F, int RM>
static void decode_tiles(const DlQuantGemm& g, int64_t c0, int64_t c1) {
  const int64_t part = (c1 - c0) / NC_DECODE;
  float res[RM * NC_DECODE];
  for (int64_t c = c0; c < c0 + part; c++) {
    F::template tile<RM, NC_DECODE>(g.w + c * g.w_row_bytes, part * g.w_row_bytes, g.act, g.act_row_bytes, g.k, res);
    store<RM, NC_DECODE>(g, g.out, res, c, part);
  }
  for (int64_t c = c0 + NC_DECODE * part; c < c1; c++) {
    F::template tile<RM, 1>(g.w + c * g.w_row_bytes, g.w_row_bytes, g.act, g.act_row_bytes, g.k, res);
    store<RM, 1>(g, g.out, res, c, 1);
  }
}

// A tile of rm <= R rows (a run-time count) to its instantiation.
template <class F, int TNC, int R>
static void tile_rows(int rm, const DlQuantGemm& g, const uint8_t* act, float* out, int64_t b0, int64_t b1) {
  if constexpr (R > 1) {
    if (rm < R) return tile_rows<F, TNC, R - 1>(rm, g, act, out, b0, b1);
  }
  tile_row<F, R, TNC>(g, act, out, b0, b1);
}

template <class F, int R>
static void decode_rows(const DlQuantGemm& g, int64_t c0, int64_t c1) {
  if constexpr (R > 1) {
    if (g.m < R) return decode_rows<F, R - 1>(g, c0, c1);
  }
  decode_tiles<F, R>(g, c0, c1);
}

template <class F, int RMX, int TNC>
static void row_tiles(const DlQuantGemm& g, int64_t b0, int64_t b1) {
  for (int64_t r = 0; r < g.m; r += RMX) {
    const int rm = (int)std::min<int64_t>(g.m - r, RMX);
    tile_rows<F, TNC, RMX>(rm, g, g.act + r * g.act_row_bytes, g.out + r * g.ldo, b0, b1);
  }
}

// Columns [c0, c1) for all rows. Beyond decode, blocked as quant_tile.h's gemm_cols: weight rows
// that stay in L2 across every tile of rows.
template <class F>
static void gemm_cols(const DlQuantGemm& g, int64_t c0, int64_t c1) {
  if (g.m <= RM_DECODE) return decode_rows<F, RM_DECODE>(g, c0, c1);
  const int64_t block_cols =
      g.w_row_bytes >= 256 * 1024 ? NC_DECODE : std::max<int64_t>(NC_DECODE, 256 * 1024 / g.w_row_bytes);
  for (int64_t b0 = c0; b0 < c1; b0 += block_cols) {
    const int64_t b1 = std::min(b0 + block_cols, c1);
    // The wide tile only where its activation rows stay in L1 (32 KiB on Zen 4) while its
    // columns sweep over them; longer rows keep the 4 x 4 tile, whose rows fit.
    if (F::rm * g.act_row_bytes > 32 * 1024) {
      row_tiles<F, RM_DECODE, NC_DECODE>(g, b0, b1);
    } else {
      row_tiles<F, F::rm, F::nc>(g, b0, b1);
    }
  }
}

}  // namespace zmm
