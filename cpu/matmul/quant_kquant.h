// SIMD dot kernels of the K formats (Q2_K … Q8_K) against q8_K activation blocks, written once and
// included once per instruction set (no guard).
//
// The including namespace provides madd_scaled (u8 x s8 pair products times int16 scales, summed
// into int32 lanes), dot_us and hsum_i32. A super-block of 256 is taken as 8 chunks of 32: each
// chunk's unsigned values u (at most 63, so u8 x s8 pair sums fit int16) are multiplied by their
// 16-element sub-block scales in integers, and the mins (and Q3_K's and Q6_K's offsets, folded into
// mins with dmin = d) come from the activation's 16-element sums:
//   dot = dx * (d * sum(sc * u * x) - dmin * sum(mn * bsum)).

// Unpacks the sub-block scales (sc) and min coefficients (mn) of a super-block, one per 16 values.
template <int DT>
struct KW;
template <>
struct KW<DL_DTYPE_Q2_K> {
  using B = dl_block_q2_k;
  static void scales(const B& b, int16_t* sc, int16_t* mn, float& d, float& dmin) {
    d = f16(b.d), dmin = f16(b.dmin);
    for (int j = 0; j < 16; j++) sc[j] = b.scales[j] & 0xF, mn[j] = b.scales[j] >> 4;
  }
  static __m256i chunk(const B& b, int c) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * (c / 4)));
    return _mm256_and_si256(_mm256_srli_epi16(v, 2 * (c % 4)), _mm256_set1_epi8(3));
  }
};
template <>
struct KW<DL_DTYPE_Q3_K> {
  using B = dl_block_q3_k;
  static void scales(const B& b, int16_t* sc, int16_t* mn, float& d, float& dmin) {
    d = dmin = f16(b.d);
    int8_t s[16];
    dl_q3_k_scales(b.scales, s);
    for (int j = 0; j < 16; j++) sc[j] = (int16_t)(s[j] - 32), mn[j] = (int16_t)(4 * sc[j]);
  }
  static __m256i chunk(const B& b, int c) {  // u = value + 4
    const int h = c / 4, t = c % 4;
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * h));
    const __m256i hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.hmask));
    const __m256i low = _mm256_and_si256(_mm256_srli_epi16(v, 2 * t), _mm256_set1_epi8(3));
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + t), _mm256_set1_epi8(1));
    return _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
  }
};
template <>
struct KW<DL_DTYPE_Q4_K> {
  using B = dl_block_q4_k;
  static void scales(const B& b, int16_t* sc, int16_t* mn, float& d, float& dmin) {
    d = f16(b.d), dmin = f16(b.dmin);
    for (int j = 0; j < 8; j++) {
      uint8_t s, m;
      dl_k4_scale_min(j, b.scales, &s, &m);
      sc[2 * j] = sc[2 * j + 1] = s;
      mn[2 * j] = mn[2 * j + 1] = m;
    }
  }
  static __m256i chunk(const B& b, int c) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * (c / 2)));
    return _mm256_and_si256(c % 2 == 0 ? v : _mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
  }
};
template <>
struct KW<DL_DTYPE_Q5_K> {
  using B = dl_block_q5_k;
  static void scales(const B& b, int16_t* sc, int16_t* mn, float& d, float& dmin) {
    d = f16(b.d), dmin = f16(b.dmin);
    for (int j = 0; j < 8; j++) {
      uint8_t s, m;
      dl_k4_scale_min(j, b.scales, &s, &m);
      sc[2 * j] = sc[2 * j + 1] = s;
      mn[2 * j] = mn[2 * j + 1] = m;
    }
  }
  static __m256i chunk(const B& b, int c) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * (c / 2)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh));
    const __m256i low = _mm256_and_si256(c % 2 == 0 ? v : _mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, c), _mm256_set1_epi8(1));
    return _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
  }
};
template <>
struct KW<DL_DTYPE_Q6_K> {
  using B = dl_block_q6_k;
  static void scales(const B& b, int16_t* sc, int16_t* mn, float& d, float& dmin) {
    d = dmin = f16(b.d);
    for (int j = 0; j < 16; j++) sc[j] = b.scales[j], mn[j] = (int16_t)(32 * b.scales[j]);
  }
  static __m256i chunk(const B& b, int c) {  // u = value + 32
    const int h = c / 4, t = c % 4;
    const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.ql + 64 * h + 32 * (t % 2)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h));
    const __m256i low = _mm256_and_si256(t < 2 ? ql : _mm256_srli_epi16(ql, 4), _mm256_set1_epi8(0x0F));
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * t), _mm256_set1_epi8(3));
    return _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
  }
};
// Q8_K: signed values with no sub-block scales, dotted with the sign trick.
template <>
struct KW<DL_DTYPE_Q8_K> {
  using B = dl_block_q8_k;
  static void scales(const B& b, int16_t* sc, int16_t* mn, float& d, float& dmin) {
    d = b.d, dmin = 0.0f;
    for (int j = 0; j < 16; j++) sc[j] = 1, mn[j] = 0;
  }
  static __m256i chunk(const B& b, int c) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * c));
  }
};

template <int DT>
struct KDot {
  template <int RM>
  static void rows(const uint8_t* w, const uint8_t* act, int64_t act_row_bytes, int64_t k, float* res) {
    using W = KW<DT>;
    constexpr bool is_signed = DT == DL_DTYPE_Q8_K;
    float facc[RM];
    const dl_block_q8_k* a[RM];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) facc[i] = 0.0f, a[i] = reinterpret_cast<const dl_block_q8_k*>(act + i * act_row_bytes);
    for (int64_t ib = 0; ib < k / DL_QK_K; ib++) {
      const typename W::B& b = reinterpret_cast<const typename W::B*>(w)[ib];
      alignas(32) int16_t sc[16], mn[16];
      float d, dmin;
      W::scales(b, sc, mn, d, dmin);
      __m256i isum[2][RM];  // even and odd chunks: two dependency chains per row
#pragma GCC unroll 8
      for (int i = 0; i < RM; i++) isum[0][i] = isum[1][i] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int c = 0; c < 8; c++) {
        const __m256i u = W::chunk(b, c);
        const __m256i s16 = _mm256_set_m128i(_mm_set1_epi16(sc[2 * c + 1]), _mm_set1_epi16(sc[2 * c]));
        const __m256i ua = is_signed ? _mm256_abs_epi8(u) : u;
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i][ib].qs + 32 * c));
          __m256i& acc = isum[c % 2][i];
          acc = is_signed ? dot_us(acc, ua, _mm256_sign_epi8(xv, u)) : madd_scaled(acc, u, xv, s16);
        }
      }
      const __m256i mn16 = _mm256_load_si256(reinterpret_cast<const __m256i*>(mn));
#pragma GCC unroll 8
      for (int i = 0; i < RM; i++) {
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i][ib].bsums));
        const int32_t minsum = hsum_i32(_mm256_madd_epi16(bs, mn16));
        // Explicit fma: left to contraction, the rounding could differ between tile sizes.
        const float t = std::fma(d, (float)hsum_i32(_mm256_add_epi32(isum[0][i], isum[1][i])), -(dmin * (float)minsum));
        facc[i] = std::fma(a[i][ib].d, t, facc[i]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) res[i] = facc[i];
  }
};
