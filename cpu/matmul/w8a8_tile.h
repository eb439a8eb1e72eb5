// W8A8 kernels on 256-bit vectors, included once per instruction set (no guard) inside a namespace
// that defines dot_us(acc, u, s) (acc + 4-product sums of unsigned u times signed s) and hsum_i32.
// Products use the sign trick: |w| (unsigned) times sign(w) * q (signed); |q|, |w| <= 127 keep
// maddubs's pair sums below 2^15. A tile of R activation rows by C weight rows shares each load.

// A 2:4 block of 32 (16 values, 4 position bytes) to its 32 dense int8 weights.
inline __m256i expand_2_4(const int8_t* block) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
  const uint8_t* pos = reinterpret_cast<const uint8_t*>(block + 16);
  // Byte pair p (groups 2p, 2p + 1) reads values [4p, 4p + 4).
  const __m256i ctrl = _mm256_add_epi8(
      _mm256_setr_epi64x((long long)DL_EXPAND_2_4.ctrl[pos[0]], (long long)DL_EXPAND_2_4.ctrl[pos[1]],
                         (long long)DL_EXPAND_2_4.ctrl[pos[2]], (long long)DL_EXPAND_2_4.ctrl[pos[3]]),
      _mm256_setr_epi64x(0, 0x0404040404040404, 0x0808080808080808, 0x0C0C0C0C0C0C0C0C));
  return _mm256_shuffle_epi8(v, ctrl);
}

// Weight row loaders: dense W8A8 rows (32 bytes at j) and 2:4 rows (block j / 32).
struct DenseRows {
  static __m256i load(const int8_t* w, int64_t j) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j)); }
  static int32_t tail(const int8_t* w, const int8_t* q, int64_t j0, int64_t k) {
    int32_t s = 0;
    for (int64_t j = j0; j < k; j++) s += (int32_t)w[j] * q[j];
    return s;
  }
};
struct SparseRows {
  static __m256i load(const int8_t* w, int64_t j) { return expand_2_4(w + j / 32 * 20); }
  static int32_t tail(const int8_t*, const int8_t*, int64_t, int64_t) { return 0; }  // k % 32 == 0
};

template <class Rows, int R, int C>
inline void tile(const DlW8a8Gemm& g, int64_t i0, int64_t c0) {
  __m256i acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_si256();
  const int8_t* w[C];
  for (int c = 0; c < C; c++) w[c] = g.w + (c0 + c) * g.w_row_bytes;
  const int8_t* q[R];
  for (int r = 0; r < R; r++) q[r] = dl_w8a8_act_q(g, i0 + r);
  const int64_t k32 = g.k / 32 * 32;
  for (int64_t j = 0; j < k32; j += 32) {
    __m256i wv[C], wa[C];
    for (int c = 0; c < C; c++) {
      wv[c] = Rows::load(w[c], j);
      wa[c] = _mm256_sign_epi8(wv[c], wv[c]);
    }
    for (int r = 0; r < R; r++) {
      const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(q[r] + j));
      for (int c = 0; c < C; c++) acc[r][c] = dot_us(acc[r][c], wa[c], _mm256_sign_epi8(xv, wv[c]));
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) dl_w8a8_store(g, i0 + r, c0 + c, hsum_i32(acc[r][c]) + Rows::tail(w[c], q[r], k32, g.k));
}

template <class Rows, int R>
inline void rows_tile(const DlW8a8Gemm& g, int64_t i0, int64_t c0, int64_t c1) {
  int64_t c = c0;
  for (; c + 2 <= c1; c += 2) tile<Rows, R, 2>(g, i0, c);
  if (c < c1) tile<Rows, R, 1>(g, i0, c);
}

// Columns in panels whose weights stay in L2 while every row tile passes over them.
template <class Rows>
static void gemm(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  const int64_t panel = std::max<int64_t>(2, (int64_t)(256 * 1024) / std::max<int64_t>(1, g.w_row_bytes) / 2 * 2);
  for (int64_t p0 = c0; p0 < c1; p0 += panel) {
    const int64_t p1 = std::min(c1, p0 + panel);
    int64_t i = 0;
    for (; i + 4 <= g.m; i += 4) rows_tile<Rows, 4>(g, i, p0, p1);
    switch (g.m - i) {
      case 3: rows_tile<Rows, 3>(g, i, p0, p1); break;
      case 2: rows_tile<Rows, 2>(g, i, p0, p1); break;
      case 1: rows_tile<Rows, 1>(g, i, p0, p1); break;
      default: break;
    }
  }
}

[[maybe_unused]] static void dense(const DlW8a8Gemm& g, int64_t c0, int64_t c1) { gemm<DenseRows>(g, c0, c1); }
static void sparse_2_4(const DlW8a8Gemm& g, int64_t c0, int64_t c1) { gemm<SparseRows>(g, c0, c1); }

// INT8_2_4 (weight-only): activation rows in q8 blocks of 32 (dl_act_q8), each block's int32 sum
// scaled by its d in f32, the row's sum by the weight row's scale.
template <int R>
inline void int8_2_4_tile(const DlW8a8Gemm& g, int64_t i0, int64_t c) {
  __m256 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
  const int8_t* w = g.w + c * g.w_row_bytes;
  for (int64_t b = 0; b < g.k / 32; b++) {
    const __m256i wv = expand_2_4(w + b * 20);
    const __m256i wa = _mm256_sign_epi8(wv, wv);
    for (int r = 0; r < R; r++) {
      const dl_act_q8& a = reinterpret_cast<const dl_act_q8*>(g.act + (i0 + r) * g.act_row_bytes)[b];
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs));
      const __m256i dot = dot_us(_mm256_setzero_si256(), wa, _mm256_sign_epi8(xv, wv));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(a.d), acc[r]);
    }
  }
  const float scale = dl_w8a8_row_scale(g, c);
  for (int r = 0; r < R; r++) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float v = _mm_cvtss_f32(s) * scale;
    if (g.bias != nullptr) v += g.bias[c];
    g.out[(i0 + r) * g.ldo + c] = v;
  }
}

static void int8_2_4(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c++) {
    int64_t i = 0;
    for (; i + 4 <= g.m; i += 4) int8_2_4_tile<4>(g, i, c);
    switch (g.m - i) {
      case 3: int8_2_4_tile<3>(g, i, c); break;
      case 2: int8_2_4_tile<2>(g, i, c); break;
      case 1: int8_2_4_tile<1>(g, i, c); break;
      default: break;
    }
  }
}
