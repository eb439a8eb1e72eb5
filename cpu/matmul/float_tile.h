// Matmul micro-kernels and driver, written once and included once per instruction set (no guard).
//
// The including namespace provides: LANES, TILE_M, TILE_N, the vector type `vf`, vzero(), vload(const
// float*), vfma(a, b, acc) = a * b + acc, vsum(v) (horizontal sum), and WLoad<dtype>::load(const T*)
// that widens LANES weights to f32 in registers. Everything here is then compiled for that target.
//
// Layout: out [m, n] = x [m, k] · w [n, k]ᵀ. Both operands are contiguous along k, so a tile of
// TILE_M x rows by TILE_N w rows keeps TILE_M * TILE_N vector accumulators of partial dot products
// (each w vector is reused TILE_M times, each x vector TILE_N times) and reduces them once at the end.

template <int DT>
struct WType;
template <>
struct WType<DL_DTYPE_F32> { using T = float; };
template <>
struct WType<DL_DTYPE_F16> { using T = uint16_t; };
template <>
struct WType<DL_DTYPE_BF16> { using T = uint16_t; };

// --- Micro-kernel

// out[RM, RN] = x[RM, k] · w[RN, k]ᵀ + bias[RN], where the tile's columns are `cs` apart: w row j at
// w + j * cs * k, out column j at out[i * ldo + j * cs], bias[j * cs]. Every output element has
// its own accumulator summed over k in LANES-wide steps in order, then reduced by vsum, whatever
// RM, RN and cs are: that fixed order is what makes a row's result independent of the batch.
template <int DT, int RM, int RN>
static void tile(const float* x, int64_t ldx, const typename WType<DT>::T* w, int64_t cs, float* out,
                 int64_t ldo, const float* bias, int64_t k) {
  const int64_t ldw = cs * k;
  using T = typename WType<DT>::T;
  vf acc[RM][RN];
#pragma GCC unroll 32
  for (int i = 0; i < RM; i++)
#pragma GCC unroll 32
    for (int j = 0; j < RN; j++) acc[i][j] = vzero();

  int64_t kk = 0;
  for (; kk + LANES <= k; kk += LANES) {
    vf wv[RN];
#pragma GCC unroll 32
    for (int j = 0; j < RN; j++) wv[j] = WLoad<DT>::load(w + j * ldw + kk);
#pragma GCC unroll 32
    for (int i = 0; i < RM; i++) {
      const vf xv = vload(x + i * ldx + kk);
#pragma GCC unroll 32
      for (int j = 0; j < RN; j++) acc[i][j] = vfma(xv, wv[j], acc[i][j]);
    }
  }
  if (kk < k) {  // tail: zero-padded copies make one more full-width step
    alignas(64) float xt[RM][LANES] = {};
    alignas(64) T wt[RN][LANES] = {};
    for (int i = 0; i < RM; i++)
      for (int64_t c = 0; c < k - kk; c++) xt[i][c] = x[i * ldx + kk + c];
    for (int j = 0; j < RN; j++)
      for (int64_t c = 0; c < k - kk; c++) wt[j][c] = w[j * ldw + kk + c];
#pragma GCC unroll 32
    for (int j = 0; j < RN; j++) {
      const vf wv = WLoad<DT>::load(wt[j]);
#pragma GCC unroll 32
      for (int i = 0; i < RM; i++) acc[i][j] = vfma(vload(xt[i]), wv, acc[i][j]);
    }
  }
  for (int i = 0; i < RM; i++)
    for (int j = 0; j < RN; j++) out[i * ldo + j * cs] = vsum(acc[i][j]) + (bias ? bias[j * cs] : 0.0f);
}

// Picks the instantiation for a tile of rm <= TILE_M rows.
template <int DT, int RN>
static void tile_rows(int rm, const float* x, int64_t ldx, const typename WType<DT>::T* w, int64_t cs,
                      float* out, int64_t ldo, const float* bias, int64_t k) {
  static_assert(TILE_M == 4, "tile_rows dispatches on up to 4 rows");
  switch (rm) {
    case 4: tile<DT, 4, RN>(x, ldx, w, cs, out, ldo, bias, k); break;
    case 3: tile<DT, 3, RN>(x, ldx, w, cs, out, ldo, bias, k); break;
    case 2: tile<DT, 2, RN>(x, ldx, w, cs, out, ldo, bias, k); break;
    default: tile<DT, 1, RN>(x, ldx, w, cs, out, ldo, bias, k); break;
  }
}

// --- Driver

// Decode (m <= TILE_M): each w row is used once, so the sweep is bound by DRAM streaming. Tiles
// that read several adjacent w rows side by side make many short streams that collide, and that
// halves the bandwidth the hardware prefetcher delivers (measured on Zen 4: 6 adjacent rows of
// 1152 bytes at 12 GB/s, one row after another at 27 GB/s). So the range is cut into DECODE_STREAMS
// parts far apart, and a tile takes one row from each: a few long sequential streams, and as many
// independent accumulator chains per x row.
template <int DT>
static void decode_range(const float* x, const typename WType<DT>::T* w, float* out, int64_t ldo,
                         const float* bias, int rm, int64_t k, int64_t col_begin, int64_t col_end) {
  const int64_t part = (col_end - col_begin) / DECODE_STREAMS;
  for (int64_t c = col_begin; c < col_begin + part; c++) {
    tile_rows<DT, DECODE_STREAMS>(rm, x, k, w + c * k, part, out + c, ldo, bias ? bias + c : nullptr, k);
  }
  for (int64_t c = col_begin + DECODE_STREAMS * part; c < col_end; c++) {
    tile_rows<DT, 1>(rm, x, k, w + c * k, 1, out + c, ldo, bias ? bias + c : nullptr, k);
  }
}

// Prefill: each thread owns a contiguous range of output columns (weight rows), so every weight
// byte is read by one thread. Within it, a block of weight rows sized to stay in L2 is swept across
// all x row tiles before moving on, so each block is reused m times from cache. Row i of the
// result goes to out + i * ldo.
template <int DT>
static void matmul(int threads, float* out, int64_t ldo, const float* x, const void* w_raw, const float* bias,
                   int64_t m, int64_t n, int64_t k) {
  using T = typename WType<DT>::T;
  const T* w = static_cast<const T*>(w_raw);
  const int64_t num_col_tiles = (n + TILE_N - 1) / TILE_N;
  const int64_t l2_rows = (int64_t)(512 * 1024) / (k * (int64_t)sizeof(T));
  const int64_t block_tiles = l2_rows / TILE_N < 1 ? 1 : l2_rows / TILE_N;
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int64_t num_threads = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int64_t num_threads = 1, tid = 0;
#endif
    const int64_t tile_begin = num_col_tiles * tid / num_threads;
    const int64_t tile_end = num_col_tiles * (tid + 1) / num_threads;
    if (m <= TILE_M) {
      decode_range<DT>(x, w, out, ldo, bias, (int)m, k, tile_begin * TILE_N, std::min(n, tile_end * TILE_N));
    } else {
      for (int64_t b0 = tile_begin; b0 < tile_end; b0 += block_tiles) {
        const int64_t col_begin = b0 * TILE_N;
        const int64_t col_end = std::min(n, std::min(tile_end, b0 + block_tiles) * TILE_N);
        for (int64_t r = 0; r < m; r += TILE_M) {
          const int rm = (int)std::min<int64_t>(TILE_M, m - r);
          const float* xr = x + r * k;  // [rm, k]
          int64_t c = col_begin;
          for (; c + TILE_N <= col_end; c += TILE_N) {
            tile_rows<DT, TILE_N>(rm, xr, k, w + c * k, 1, out + r * ldo + c, ldo, bias ? bias + c : nullptr, k);
          }
          for (; c < col_end; c++) {
            tile_rows<DT, 1>(rm, xr, k, w + c * k, 1, out + r * ldo + c, ldo, bias ? bias + c : nullptr, k);
          }
        }
      }
    }
  }
}

// w_dtype is one of DL_MATMUL_DTYPES (checked by the launcher).
static void matmul_dispatch(int threads, float* out, int64_t ldo, const float* x, const void* w, int32_t w_dtype,
                            const float* bias, int64_t m, int64_t n, int64_t k) {
  if (w_dtype == DL_DTYPE_F32) matmul<DL_DTYPE_F32>(threads, out, ldo, x, w, bias, m, n, k);
  else if (w_dtype == DL_DTYPE_F16) matmul<DL_DTYPE_F16>(threads, out, ldo, x, w, bias, m, n, k);
  else matmul<DL_DTYPE_BF16>(threads, out, ldo, x, w, bias, m, n, k);
}
