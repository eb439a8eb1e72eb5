// SIMD dot kernels of the legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and denollm's INT8 and INT4
// against q8 activation blocks, written once and included once per instruction set (no guard).
//
// The including namespace provides the 256-bit integer primitives dot_us (u8 x s8 sums of 4 into
// int32 lanes), f16 (scalar f16 to f32), fifth_bits (32 bits to bytes of 0x10) and hsum_f32. Each
// weight sub-block of 32 is unpacked into one vector: signed values, dotted with the sign trick
// (|w| times x with w's sign, so the unsigned operand stays <= 128), or for the formats with an
// offset unsigned values q in [0, 31], whose m * sum(x) term comes from the activation's s.

template <int DT>
struct LegacyW;
template <>
struct LegacyW<DL_DTYPE_Q4_0> {
  static constexpr bool has_min = false;
  static __m256i unpack(const uint8_t* w, int64_t sb, int64_t, float& d, float&) {
    const auto* b = reinterpret_cast<const dl_block_q4_0*>(w) + sb;
    d = f16(b->d);
    return _mm256_sub_epi8(nibbles16(b->qs), _mm256_set1_epi8(8));
  }
};
template <>
struct LegacyW<DL_DTYPE_Q4_1> {
  static constexpr bool has_min = true;
  static __m256i unpack(const uint8_t* w, int64_t sb, int64_t, float& d, float& m) {
    const auto* b = reinterpret_cast<const dl_block_q4_1*>(w) + sb;
    d = f16(b->d), m = f16(b->m);
    return nibbles16(b->qs);
  }
};
template <>
struct LegacyW<DL_DTYPE_Q5_0> {
  static constexpr bool has_min = false;
  static __m256i unpack(const uint8_t* w, int64_t sb, int64_t, float& d, float&) {
    const auto* b = reinterpret_cast<const dl_block_q5_0*>(w) + sb;
    d = f16(b->d);
    const __m256i u = _mm256_or_si256(nibbles16(b->qs), fifth_bits(b->qh));
    return _mm256_sub_epi8(u, _mm256_set1_epi8(16));
  }
};
template <>
struct LegacyW<DL_DTYPE_Q5_1> {
  static constexpr bool has_min = true;
  static __m256i unpack(const uint8_t* w, int64_t sb, int64_t, float& d, float& m) {
    const auto* b = reinterpret_cast<const dl_block_q5_1*>(w) + sb;
    d = f16(b->d), m = f16(b->m);
    return _mm256_or_si256(nibbles16(b->qs), fifth_bits(b->qh));
  }
};
template <>
struct LegacyW<DL_DTYPE_Q8_0> {
  static constexpr bool has_min = false;
  static __m256i unpack(const uint8_t* w, int64_t sb, int64_t, float& d, float&) {
    const auto* b = reinterpret_cast<const dl_block_q8_0*>(w) + sb;
    d = f16(b->d);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs));
  }
};
// INT8: 32 values of the row (a zero-padded copy for the last partial block, so nothing past the
// row is read); d = 1, the row's scale is applied by the driver.
template <>
struct LegacyW<DL_DTYPE_INT8> {
  static constexpr bool has_min = false;
  static __m256i unpack(const uint8_t* w, int64_t sb, int64_t k, float& d, float&) {
    d = 1.0f;
    if (k - sb * DL_QK >= DL_QK) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + sb * DL_QK));
    alignas(32) uint8_t tail[DL_QK] = {};
    __builtin_memcpy(tail, w + sb * DL_QK, (size_t)(k - sb * DL_QK));
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
  }
};
// INT4: sub-block sb is part sb % 4 of group sb / 4: low nibbles of qs[0, 32), of qs[32, 64), then
// the high nibbles of each.
template <>
struct LegacyW<DL_DTYPE_INT4> {
  static constexpr bool has_min = true;
  static __m256i unpack(const uint8_t* w, int64_t sb, int64_t, float& d, float& m) {
    const auto* b = reinterpret_cast<const dl_block_int4*>(w) + sb / 4;
    d = f16(b->d), m = f16(b->m);
    const int part = (int)(sb % 4);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs + 32 * (part % 2)));
    const __m256i lo = _mm256_set1_epi8(0x0F);
    return part < 2 ? _mm256_and_si256(v, lo) : _mm256_and_si256(_mm256_srli_epi16(v, 4), lo);
  }
};

// Two accumulators per row, for even and odd sub-blocks: one chain of dependent FMAs per row would
// bind decode (RM = 1) to the FMA latency. Which sub-block goes where depends only on its index, so a
// row's sum is the same whatever RM is.
template <int DT>
struct LegacyDot {
  template <int RM>
  static void rows(const uint8_t* w, const uint8_t* act, int64_t act_row_bytes, int64_t k, float* res) {
    __m256 acc[2][RM];
    float macc[RM];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) acc[0][i] = acc[1][i] = _mm256_setzero_ps(), macc[i] = 0.0f;
    const int64_t num_sub = (k + DL_QK - 1) / DL_QK;
    int64_t sb = 0;
    for (; sb + 2 <= num_sub; sb += 2) {
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) step<RM>(w, act, act_row_bytes, k, sb + h, acc[h], macc);
    }
    if (sb < num_sub) step<RM>(w, act, act_row_bytes, k, sb, acc[0], macc);
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) res[i] = hsum_f32(_mm256_add_ps(acc[0][i], acc[1][i])) + macc[i];
  }

  // Sub-block sb of the weight row against RM activation rows.
  template <int RM>
  static inline __attribute__((always_inline)) void step(const uint8_t* w, const uint8_t* act, int64_t act_row_bytes,
                                                         int64_t k, int64_t sb, __m256* acc, float* macc) {
    using W = LegacyW<DT>;
    float d, m = 0.0f;
    const __m256i q = W::unpack(w, sb, k, d, m);
    const __m256i qa = W::has_min ? q : _mm256_abs_epi8(q);
    const __m256 dv = _mm256_set1_ps(d);
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) {
      const dl_act_q8* a = reinterpret_cast<const dl_act_q8*>(act + i * act_row_bytes) + sb;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a->qs));
      const __m256i p = dot_us(_mm256_setzero_si256(), qa, W::has_min ? xv : _mm256_sign_epi8(xv, q));
      const __m256 scale = _mm256_mul_ps(dv, _mm256_broadcast_ss(&a->d));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i]);
      if (W::has_min) macc[i] = std::fma(m, a->s, macc[i]);  // explicit: the same rounding in every tile
    }
  }
};
