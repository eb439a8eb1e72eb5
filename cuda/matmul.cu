// Linear layer out = x · wᵀ (+ bias): f32 activations, f32 / f16 / bf16 weights, f32 accumulation,
// each output row at out + i * out_row_stride.
//
// Four kernels, picked by the launcher:
// - gemv (m <= 8, decode): bandwidth-bound; each warp streams two weight rows with 128-bit loads
//   and dots them with every x row, so each weight byte is read once per call.
// - small-m WMMA (8 < m <= 64, f16 / bf16 weights: batched decode): each block streams 64 weight
//   rows once over its share of k, with the next two k chunks' loads in flight while tensor cores
//   work on the current one, and keeps all m rows' accumulators (one 16x16 fragment per 16 rows);
//   split-k over blocks when n / 64 blocks would not fill the GPU. Same x hi/lo split as below.
// - tiled f32 (m > 8, f32 weights): 64x64 output tile per 256-thread block, 4x4 per thread, plain
//   f32 FMAs: the exact path, no TF32.
// - tiled WMMA (m > 64, f16 / bf16 weights): tensor cores on 16x16x16 fragments. x is split into
//   x_hi + x_lo, both in the weight dtype, and both products are accumulated in f32, so the
//   result keeps about 16 (bf16) or 22 (f16) bits of each x instead of 8 or 11.
// Block-quantized weights and the weight-only 2:4 formats go to cuda/matmul_quant.cu's kernels, the
// activation-quantized W8A8 formats to cuda/matmul_w8a8.cu's.
#include <mma.h>

#include "common.cuh"
#include "half.cuh"
#include "quant.cuh"
#include "wmma_tile.cuh"

namespace {

constexpr int GEMV_MAX_M = 8;       // rows of x the gemv path takes
constexpr int GEMV_ROWS = 2;        // weight rows per warp
constexpr int GEMV_WARPS = 4;       // warps per block
constexpr int TILE_M = 64, TILE_N = 64;
constexpr int F32_TILE_K = 16;      // k slice of the f32 tiled kernel
constexpr int WMMA_TILE_K = 32;     // k slice of the WMMA kernel
constexpr int WMMA_LD = WMMA_TILE_K + 8;  // padded shared row: 80 bytes, a multiple of 16
// Small-m WMMA path. A block of SMALLM_WARPS warps owns SMALLM_COLS output columns, 16 per warp.
// Why tensor cores and not f32 FMAs: a weight element costs 2m flops, so at H200's 4.8 TB/s and
// 67 f32 TFLOP/s an FMA kernel stops being bandwidth-bound past m of about 14 (2 bytes per f16
// weight). The hi/lo products (two MMAs, m padded to 16) reach the weight read time only at
// m = 64: 4.3 GFLOP at some 700 dense f16 TFLOP/s of mma.sync against 34 MB at 4.8 TB/s, 4096^2.
constexpr int SMALLM_MAX_M = 64;
constexpr int SMALLM_WARPS = 4;
constexpr int SMALLM_COLS = 16 * SMALLM_WARPS;
constexpr int SMALLM_KC = 64;                   // k chunk per pipeline step
constexpr int SMALLM_LD = SMALLM_KC + 8;        // padded shared row: 144 bytes, a multiple of 16
// Split-k aims at about two blocks per SM of a 132-SM H100/H200 (a constant rather than the
// device's SM count, so the summation order, hence the bits, is the same on every GPU), with at
// least SMALLM_MIN_CHUNKS chunks per split. Tuning constants: measure them on a GPU
// (tests/gpu/bench.ts).
constexpr int SMALLM_TARGET_BLOCKS = 256;
constexpr int SMALLM_MIN_CHUNKS = 4;
constexpr int SMALLM_MAX_SPLITS = 16;
// Two blocks per SM (up to 255 registers a thread: nvcc 13.0 uses up to 254 for m > 32, no spills;
// a cap of three blocks, 168 registers, spills up to 450 bytes): the SMALLM_TARGET_BLOCKS grid
// runs in one wave on 132 SMs, with two chunks of weights (32 KB an SM) in flight.
constexpr int SMALLM_MIN_BLOCKS_PER_SM = 2;

}  // namespace

// --- Kernels

// gemv: warp w of the grid computes out[0..M, j0..j0+GEMV_ROWS) for j0 = w * GEMV_ROWS. With VEC
// (k * sizeof(W) and every pointer 16-byte aligned) lanes stride over 128-bit vectors of the
// weight rows, loaded with the streaming hint since each is used once; else over single elements.
template <int DT, int M, bool VEC>
__global__ __launch_bounds__(GEMV_WARPS * 32) void matmul_gemv_kernel(
    float* __restrict__ out,                      // [M, ldo], columns [0, n)
    const float* __restrict__ x,                  // [M, k]
    const typename Dtype<DT>::T* __restrict__ w,  // [n, k]
    const float* __restrict__ bias,               // [n] or NULL
    int32_t n, int32_t k, int32_t ldo) {
  using T = typename Dtype<DT>::T;
  const int lane = threadIdx.x % 32;
  const int64_t j0 = ((int64_t)blockIdx.x * GEMV_WARPS + threadIdx.x / 32) * GEMV_ROWS;
  if (j0 >= n) return;
  float acc[GEMV_ROWS][M];
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
    for (int i = 0; i < M; i++) acc[r][i] = 0.0f;
  // A missing last row (odd n) re-reads row j0 and its result is dropped.
  const T* wr[GEMV_ROWS];
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++) wr[r] = w + (j0 + r < n ? j0 + r : j0) * (int64_t)k;

  if constexpr (VEC) {
    constexpr int E = 16 / sizeof(T);  // elements per 128-bit load
    const int32_t num_vec = k / E;
#pragma unroll 4
    for (int32_t v = lane; v < num_vec; v += 32) {
      float wf[GEMV_ROWS][E];
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; r++) {
        dl_unpack16<DT>(__ldcs(reinterpret_cast<const uint4*>(wr[r]) + v), wf[r]);
      }
#pragma unroll
      for (int i = 0; i < M; i++) {
        const float4* xv = reinterpret_cast<const float4*>(x + (int64_t)i * k + (int64_t)v * E);
        float xf[E];
#pragma unroll
        for (int q = 0; q < E / 4; q++) {
          const float4 f = __ldg(xv + q);
          xf[4 * q] = f.x;
          xf[4 * q + 1] = f.y;
          xf[4 * q + 2] = f.z;
          xf[4 * q + 3] = f.w;
        }
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
          for (int e = 0; e < E; e++) acc[r][i] = fmaf(xf[e], wf[r][e], acc[r][i]);
      }
    }
  } else {
    for (int32_t c = lane; c < k; c += 32) {
      float wf[GEMV_ROWS];
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; r++) wf[r] = Dtype<DT>::load(wr[r][c]);
#pragma unroll
      for (int i = 0; i < M; i++) {
        const float xv = x[(int64_t)i * k + c];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) acc[r][i] = fmaf(xv, wf[r], acc[r][i]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++) {
#pragma unroll
    for (int i = 0; i < M; i++) {
      float v = acc[r][i];
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0 && j0 + r < n) {
        out[(int64_t)i * ldo + j0 + r] = v + (bias != nullptr ? bias[j0 + r] : 0.0f);
      }
    }
  }
}

// tiled f32: block (bx, by) computes out[by*64 .. +64, bx*64 .. +64]. Each k slice of x and w is
// staged transposed in shared memory ([k][row]) so the inner loop reads 4 x values and 4 w values
// per k step; thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j. Every output is one f32
// FMA chain in k order.
__global__ __launch_bounds__(256) void matmul_f32_tiled_kernel(float* __restrict__ out,
                                                               const float* __restrict__ x,
                                                               const float* __restrict__ w,
                                                               const float* __restrict__ bias,
                                                               int32_t m, int32_t n, int32_t k,
                                                               int32_t ldo) {
  __shared__ float xs[F32_TILE_K][TILE_M + 4];
  __shared__ float ws[F32_TILE_K][TILE_N + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t row0 = (int64_t)blockIdx.y * TILE_M, col0 = (int64_t)blockIdx.x * TILE_N;
  float acc[4][4] = {};
  for (int32_t k0 = 0; k0 < k; k0 += F32_TILE_K) {
#pragma unroll
    for (int l = 0; l < 4; l++) {
      const int idx = tid + l * 256, r = idx / F32_TILE_K, c = idx % F32_TILE_K;
      const int64_t gk = k0 + c;
      xs[c][r] = (row0 + r < m && gk < k) ? x[(row0 + r) * k + gk] : 0.0f;
      ws[c][r] = (col0 + r < n && gk < k) ? w[(col0 + r) * k + gk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < F32_TILE_K; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int64_t r = row0 + ty + 16 * i;
    if (r >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int64_t c = col0 + tx + 16 * j;
      if (c < n) out[r * ldo + c] = acc[i][j] + (bias != nullptr ? bias[c] : 0.0f);
    }
  }
}

// tiled WMMA: block (bx, by) computes out[by*64 .. +64, bx*64 .. +64] with 4 warps in a 2x2
// layout, each owning a 32x32 quadrant as 2x2 fragments of 16x16 f32 accumulators. Per k slice
// of 32, x is staged as x_hi and x_lo [64][40] (row-major A) and w as [64][40] (column-major B,
// since w is [n, k]). VEC: k % 8 == 0 and pointers 16-byte aligned, for 128-bit loads.
template <int DT, bool VEC>
__global__ __launch_bounds__(128) void matmul_wmma_kernel(float* __restrict__ out,
                                                          const float* __restrict__ x,
                                                          const uint16_t* __restrict__ w,
                                                          const float* __restrict__ bias,
                                                          int32_t m, int32_t n, int32_t k,
                                                          int32_t ldo) {
  namespace wmma = nvcuda::wmma;
  using H = WmmaType<DT>;
  using T = typename H::T;
  __shared__ __align__(128) T xs_hi[TILE_M * WMMA_LD];
  __shared__ __align__(128) T xs_lo[TILE_M * WMMA_LD];
  __shared__ __align__(128) T ws[TILE_N * WMMA_LD];
  __shared__ __align__(128) float staging[4][16 * 16];
  __shared__ float row_down[TILE_M], row_up[TILE_M];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t row0 = (int64_t)blockIdx.y * TILE_M, col0 = (int64_t)blockIdx.x * TILE_N;
  dl_wmma_row_scales(row_down, row_up, x, row0, m, k, warp, lane);
  __syncthreads();

  DlWmmaAcc acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int32_t k0 = 0; k0 < k; k0 += WMMA_TILE_K) {
    // x slice [64, 32] f32: 512 float4 positions, 4 per thread, split into hi and lo.
#pragma unroll
    for (int l = 0; l < 4; l++) {
      const int idx = tid + l * 128, r = idx / 8, c = (idx % 8) * 4;
      const int64_t gr = row0 + r, gc = k0 + c;
      float v[4];
      if (VEC && gr < m && gc < k) {
        const float4 f = *reinterpret_cast<const float4*>(x + gr * k + gc);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; e++) v[e] = (gr < m && gc + e < k) ? x[gr * k + gc + e] : 0.0f;
      }
#pragma unroll
      for (int e = 0; e < 4; e++) {
        // v * 2^-s is exact: a power of two
        dl_wmma_split<DT>(v[e] * row_down[r], xs_hi[r * WMMA_LD + c + e], xs_lo[r * WMMA_LD + c + e]);
      }
    }
    // w slice [64, 32] 16-bit: 256 positions of 8 elements, 2 per thread.
#pragma unroll
    for (int l = 0; l < 2; l++) {
      const int idx = tid + l * 128, r = idx / 4, c = (idx % 4) * 8;
      const int64_t gr = col0 + r, gc = k0 + c;
      uint16_t* dst = reinterpret_cast<uint16_t*>(ws + r * WMMA_LD + c);
      if (VEC && gr < n && gc < k) {
        *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(w + gr * k + gc));
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) dst[e] = (gr < n && gc + e < k) ? w[gr * k + gc + e] : 0;
      }
    }
    __syncthreads();
    dl_wmma_slice<T, WMMA_TILE_K, WMMA_LD>(acc, xs_hi, xs_lo, ws, wm, wn);
    __syncthreads();
  }
  dl_wmma_store(acc, staging[warp], lane, wm, wn, row0, col0, m, n, out, ldo, bias, row_up);
}

// small-m WMMA: block (bx, by) computes columns [bx * 64, +64) of rows [0, m) over the k range
// [by * k_per_split, +k_per_split) (a multiple of SMALLM_KC, so only the last chunk of the last
// split meets k), into out + by * split_stride with row stride ldo (the launcher passes out, ldo
// and bias, or its split-k partials, n and NULL). Per chunk, x [16 * MT, 64] is staged as hi/lo
// halves of T (rows scaled by a power of two over this block's k range, as the tiled kernel does
// over whole rows) and w [64, 64] as it is; warp w multiplies its 16 weight rows with every 16-row
// fragment of x. Before a chunk's MMAs the block issues the loads of the x chunk after it and of
// the w chunk two after it (with the streaming hint: each weight byte is used once), so memory
// latency overlaps the MMAs and the staging of the next chunk. VEC: k % 8 == 0 and x, w 16-byte
// aligned, for 128-bit loads; else element loads with bounds.
template <int DT, int MT, bool VEC>
__global__ __launch_bounds__(SMALLM_WARPS * 32, SMALLM_MIN_BLOCKS_PER_SM) void matmul_smallm_kernel(
    float* __restrict__ out, const float* __restrict__ x, const uint16_t* __restrict__ w,
    const float* __restrict__ bias, int32_t m, int32_t n, int32_t k, int32_t ldo,
    int32_t k_per_split, int64_t split_stride) {
  namespace wmma = nvcuda::wmma;
  using H = WmmaType<DT>;
  using T = typename H::T;
  constexpr int ROWS = 16 * MT, THREADS = SMALLM_WARPS * 32, LD = SMALLM_LD;
  constexpr int X_LOADS = ROWS * (SMALLM_KC / 4) / THREADS;         // float4 per thread
  constexpr int W_LOADS = SMALLM_COLS * (SMALLM_KC / 8) / THREADS;  // 8 weights per thread each
  static_assert(X_LOADS * THREADS == ROWS * (SMALLM_KC / 4), "x chunk splits evenly");
  static_assert(W_LOADS * THREADS == SMALLM_COLS * (SMALLM_KC / 8), "w chunk splits evenly");
  __shared__ __align__(128) T xs_hi[ROWS * LD];
  __shared__ __align__(128) T xs_lo[ROWS * LD];
  __shared__ __align__(128) uint16_t ws[SMALLM_COLS * LD];
  __shared__ __align__(128) float staging[SMALLM_WARPS][16 * 16];
  __shared__ float row_down[ROWS], row_up[ROWS];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t col0 = (int64_t)blockIdx.x * SMALLM_COLS;
  const int32_t k_begin = (int32_t)blockIdx.y * k_per_split;
  const int32_t k_end = k - k_begin < k_per_split ? k : k_begin + k_per_split;
  dl_wmma_row_scales_range(row_down, row_up, x, 0, ROWS, m, k, k_begin, k_end, warp, SMALLM_WARPS,
                           lane);

  // Registers of the pipeline: x of the next chunk, w of the next two (w0 even chunks of this
  // split, w1 odd ones), so two chunks of weights (16 KB a block) are in flight during the MMAs.
  float4 xr[X_LOADS];
  uint4 w0[W_LOADS], w1[W_LOADS];
  // x of chunk [k0, k0 + 64): row r = idx / 16 at column 4 (idx % 16); zeros past m and k.
  auto load_x = [&](int32_t k0) {
#pragma unroll
    for (int l = 0; l < X_LOADS; l++) {
      const int idx = tid + l * THREADS, r = idx / 16;
      const int64_t c = k0 + (idx % 16) * 4;
      if (VEC && r < m && c < k) {
        xr[l] = __ldg(reinterpret_cast<const float4*>(x + r * (int64_t)k + c));
      } else {
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) v[e] = (r < m && c + e < k) ? x[r * (int64_t)k + c + e] : 0.0f;
        xr[l] = make_float4(v[0], v[1], v[2], v[3]);
      }
    }
  };
  // w of chunk [k0, k0 + 64): row col0 + idx / 8 at column 8 (idx % 8); zeros past n and k.
  auto load_w = [&](uint4 (&wr)[W_LOADS], int32_t k0) {
#pragma unroll
    for (int l = 0; l < W_LOADS; l++) {
      const int idx = tid + l * THREADS;
      const int64_t r = col0 + idx / 8, c = k0 + (idx % 8) * 8;
      if (VEC && r < n && c < k) {
        wr[l] = __ldcs(reinterpret_cast<const uint4*>(w + r * k + c));
      } else {
        uint32_t v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const uint32_t lo = (r < n && c + 2 * e < k) ? w[r * k + c + 2 * e] : 0u;
          const uint32_t hi = (r < n && c + 2 * e + 1 < k) ? w[r * k + c + 2 * e + 1] : 0u;
          v[e] = lo | hi << 16;
        }
        wr[l].x = v[0], wr[l].y = v[1], wr[l].z = v[2], wr[l].w = v[3];
      }
    }
  };
  DlWmmaAcc acc[MT];
#pragma unroll
  for (int i = 0; i < MT; i++) wmma::fill_fragment(acc[i], 0.0f);
  // One chunk: registers into shared memory (x split into hi + lo of its scaled value), refill
  // them with the chunks after it, then the MMAs.
  auto step = [&](uint4 (&wr)[W_LOADS], int32_t k0) {
#pragma unroll
    for (int l = 0; l < X_LOADS; l++) {
      const int idx = tid + l * THREADS, r = idx / 16, c = (idx % 16) * 4;
      const float v[4] = {xr[l].x, xr[l].y, xr[l].z, xr[l].w};
#pragma unroll
      for (int e = 0; e < 4; e++) {
        // v * 2^-s is exact: a power of two
        dl_wmma_split<DT>(v[e] * row_down[r], xs_hi[r * LD + c + e], xs_lo[r * LD + c + e]);
      }
    }
#pragma unroll
    for (int l = 0; l < W_LOADS; l++) {
      const int idx = tid + l * THREADS, r = idx / 8, c = (idx % 8) * 8;
      *reinterpret_cast<uint4*>(ws + r * LD + c) = wr[l];
    }
    __syncthreads();
    if (k0 + SMALLM_KC < k_end) load_x(k0 + SMALLM_KC);
    if (k0 + 2 * SMALLM_KC < k_end) load_w(wr, k0 + 2 * SMALLM_KC);
    const T* wt = reinterpret_cast<const T*>(ws) + warp * 16 * LD;
#pragma unroll
    for (int kk = 0; kk < SMALLM_KC; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
      wmma::load_matrix_sync(b, wt + kk, LD);
#pragma unroll
      for (int i = 0; i < MT; i++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_hi, a_lo;
        wmma::load_matrix_sync(a_hi, xs_hi + i * 16 * LD + kk, LD);
        wmma::load_matrix_sync(a_lo, xs_lo + i * 16 * LD + kk, LD);
        wmma::mma_sync(acc[i], a_lo, b, acc[i]);
        wmma::mma_sync(acc[i], a_hi, b, acc[i]);
      }
    }
    __syncthreads();
  };

  __syncthreads();  // row scales
  load_x(k_begin);
  load_w(w0, k_begin);
  if (k_begin + SMALLM_KC < k_end) load_w(w1, k_begin + SMALLM_KC);
  for (int32_t k0 = k_begin; k0 < k_end; k0 += 2 * SMALLM_KC) {
    step(w0, k0);
    if (k0 + SMALLM_KC < k_end) step(w1, k0 + SMALLM_KC);
  }

  float* dst = out + (int64_t)blockIdx.y * split_stride;
  float* stage_out = staging[warp];
#pragma unroll
  for (int i = 0; i < MT; i++) {
    wmma::store_matrix_sync(stage_out, acc[i], 16, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int r = i * 16 + e / 16;
      const int64_t c = col0 + warp * 16 + e % 16;
      if (r < m && c < n) {
        dst[r * (int64_t)ldo + c] = stage_out[e] * row_up[r] + (bias != nullptr ? bias[c] : 0.0f);
      }
    }
    __syncwarp();
  }
}

// Split-k sum: out[r, c] = sum over splits s in order of partials[s, r, c] (+ bias[c]).
__global__ void matmul_splitk_sum_kernel(float* __restrict__ out,
                                         const float* __restrict__ partials,
                                         const float* __restrict__ bias, int32_t m, int32_t n,
                                         int32_t splits, int32_t ldo) {
  const int64_t total = (int64_t)m * n;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    float v = partials[i];
    for (int32_t s = 1; s < splits; s++) v += partials[s * total + i];
    const int64_t c = i % n;
    out[(i / n) * ldo + c] = v + (bias != nullptr ? bias[c] : 0.0f);
  }
}

// --- Launchers

template <int DT, int M>
static void launch_gemv_m(cudaStream_t s, float* out, const float* x, const void* w,
                          const float* bias, int32_t n, int32_t k, int32_t ldo, bool vec) {
  using T = typename Dtype<DT>::T;
  const int64_t rows_per_block = GEMV_WARPS * GEMV_ROWS;
  const unsigned blocks = (unsigned)((n + rows_per_block - 1) / rows_per_block);
  const T* wt = static_cast<const T*>(w);
  if (vec) {
    matmul_gemv_kernel<DT, M, true><<<blocks, GEMV_WARPS * 32, 0, s>>>(out, x, wt, bias, n, k, ldo);
  } else {
    matmul_gemv_kernel<DT, M, false><<<blocks, GEMV_WARPS * 32, 0, s>>>(out, x, wt, bias, n, k, ldo);
  }
}

template <int DT>
static void launch_gemv(cudaStream_t s, float* out, const float* x, const void* w,
                        const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo) {
  using T = typename Dtype<DT>::T;
  const bool vec = ((int64_t)k * sizeof(T)) % 16 == 0 && dl_is_aligned(w, 16) &&
                   dl_is_aligned(x, 16);
  switch (m) {
    case 1: launch_gemv_m<DT, 1>(s, out, x, w, bias, n, k, ldo, vec); break;
    case 2: launch_gemv_m<DT, 2>(s, out, x, w, bias, n, k, ldo, vec); break;
    case 3: launch_gemv_m<DT, 3>(s, out, x, w, bias, n, k, ldo, vec); break;
    case 4: launch_gemv_m<DT, 4>(s, out, x, w, bias, n, k, ldo, vec); break;
    case 5: launch_gemv_m<DT, 5>(s, out, x, w, bias, n, k, ldo, vec); break;
    case 6: launch_gemv_m<DT, 6>(s, out, x, w, bias, n, k, ldo, vec); break;
    case 7: launch_gemv_m<DT, 7>(s, out, x, w, bias, n, k, ldo, vec); break;
    default: launch_gemv_m<DT, 8>(s, out, x, w, bias, n, k, ldo, vec); break;
  }
}

template <int DT>
static void launch_wmma(cudaStream_t s, float* out, const float* x, const void* w,
                        const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo) {
  const dim3 grid((unsigned)((n + TILE_N - 1) / TILE_N), (unsigned)((m + TILE_M - 1) / TILE_M));
  const bool vec = k % 8 == 0 && dl_is_aligned(w, 16) && dl_is_aligned(x, 16);
  const uint16_t* wt = static_cast<const uint16_t*>(w);
  if (vec) {
    matmul_wmma_kernel<DT, true><<<grid, 128, 0, s>>>(out, x, wt, bias, m, n, k, ldo);
  } else {
    matmul_wmma_kernel<DT, false><<<grid, 128, 0, s>>>(out, x, wt, bias, m, n, k, ldo);
  }
}

// Splits of the k chunks for n columns: enough blocks to reach SMALLM_TARGET_BLOCKS, at most
// SMALLM_MAX_SPLITS, at least SMALLM_MIN_CHUNKS chunks each (but one split always).
static int32_t smallm_splits(int64_t n, int64_t k) {
  const int64_t col_blocks = (n + SMALLM_COLS - 1) / SMALLM_COLS;
  const int64_t chunks = (k + SMALLM_KC - 1) / SMALLM_KC;
  int64_t s = (SMALLM_TARGET_BLOCKS + col_blocks - 1) / col_blocks;
  if (s > chunks / SMALLM_MIN_CHUNKS) s = chunks / SMALLM_MIN_CHUNKS;
  if (s > SMALLM_MAX_SPLITS) s = SMALLM_MAX_SPLITS;
  return s < 1 ? 1 : (int32_t)s;
}

size_t dl_smallm_workspace_bytes(int64_t max_rows) {
  const int64_t rows = max_rows < SMALLM_MAX_M ? max_rows : SMALLM_MAX_M;
  if (rows <= GEMV_MAX_M) return 0;
  // Partials take splits * rows * n floats; splits > 1 only below SMALLM_TARGET_BLOCKS column
  // blocks, so the largest n of each column-block count bounds them whatever n and k are.
  int64_t most = 0;
  for (int64_t col_blocks = 1; col_blocks < SMALLM_TARGET_BLOCKS; col_blocks++) {
    const int64_t n = col_blocks * SMALLM_COLS;
    int64_t s = (SMALLM_TARGET_BLOCKS + col_blocks - 1) / col_blocks;
    if (s > SMALLM_MAX_SPLITS) s = SMALLM_MAX_SPLITS;
    if (s > 1 && s * n > most) most = s * n;
  }
  return (size_t)(most * rows) * sizeof(float);
}

template <int DT, int MT>
static void launch_smallm_mt(cudaStream_t s, dim3 grid, bool vec, float* out, const float* x,
                             const uint16_t* w, const float* bias, int32_t m, int32_t n, int32_t k,
                             int32_t ldo, int32_t k_per_split, int64_t split_stride) {
  constexpr int threads = SMALLM_WARPS * 32;
  if (vec) {
    matmul_smallm_kernel<DT, MT, true><<<grid, threads, 0, s>>>(out, x, w, bias, m, n, k, ldo,
                                                                k_per_split, split_stride);
  } else {
    matmul_smallm_kernel<DT, MT, false><<<grid, threads, 0, s>>>(out, x, w, bias, m, n, k, ldo,
                                                                 k_per_split, split_stride);
  }
}

// 8 < m <= 64. The partials of a split-k launch live in the context's workspace; once
// dl_reserve_workspace has fixed it (it reserves dl_smallm_workspace_bytes), a call that would
// need more takes fewer splits instead of failing.
template <int DT>
static int32_t launch_smallm(dl_context* ctx, float* out, const float* x, const void* w,
                             const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo) {
  const char* fn = "dl_matmul";
  const int64_t chunks = (k + SMALLM_KC - 1) / SMALLM_KC;
  int64_t splits = smallm_splits(n, k);
  const size_t split_bytes = (size_t)m * n * sizeof(float);
  if (splits > 1 && ctx->workspace_fixed && splits * split_bytes > ctx->workspace_bytes) {
    splits = (int64_t)(ctx->workspace_bytes / split_bytes);
  }
  if (splits < 1) splits = 1;
  const int64_t chunks_per_split = (chunks + splits - 1) / splits;
  splits = (chunks + chunks_per_split - 1) / chunks_per_split;  // no empty split
  float* partials = nullptr;
  if (splits > 1) {
    void* workspace = nullptr;
    DL_TRY(dl_workspace(fn, ctx, splits * split_bytes, &workspace));
    partials = static_cast<float*>(workspace);
  }
  const dim3 grid((unsigned)((n + SMALLM_COLS - 1) / SMALLM_COLS), (unsigned)splits);
  const bool vec = k % 8 == 0 && dl_is_aligned(w, 16) && dl_is_aligned(x, 16);
  const uint16_t* wt = static_cast<const uint16_t*>(w);
  float* dst = partials != nullptr ? partials : out;
  const int32_t ldd = partials != nullptr ? n : ldo;
  const float* b = partials != nullptr ? nullptr : bias;
  const int32_t kps = (int32_t)(chunks_per_split * SMALLM_KC);
  const int64_t stride = (int64_t)m * n;
  cudaStream_t s = ctx->stream;
  switch ((m + 15) / 16) {
    case 1: launch_smallm_mt<DT, 1>(s, grid, vec, dst, x, wt, b, m, n, k, ldd, kps, stride); break;
    case 2: launch_smallm_mt<DT, 2>(s, grid, vec, dst, x, wt, b, m, n, k, ldd, kps, stride); break;
    case 3: launch_smallm_mt<DT, 3>(s, grid, vec, dst, x, wt, b, m, n, k, ldd, kps, stride); break;
    default: launch_smallm_mt<DT, 4>(s, grid, vec, dst, x, wt, b, m, n, k, ldd, kps, stride); break;
  }
  if (partials != nullptr) {
    matmul_splitk_sum_kernel<<<dl_grid_for(stride, 256), 256, 0, s>>>(out, partials, bias, m, n,
                                                                      (int32_t)splits, ldo);
  }
  return DL_OK;
}

// w_dtype is one of DL_MATMUL_DTYPES (checked by dl_validate_matmul).
extern "C" int32_t dl_matmul(dl_context* ctx, float* out, const float* x, const void* w,
                             int32_t w_dtype, const float* bias, int32_t m, int32_t n, int32_t k,
                             int32_t out_row_stride) {
  const char* fn = "dl_matmul";
  DL_TRY(dl_validate_matmul(fn, ctx, out, x, w, w_dtype, m, n, k, out_row_stride));
  if (m == 0) return DL_OK;
  if ((int64_t)(m + TILE_M - 1) / TILE_M > 65535) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: m = %d is larger than this build supports", fn, m);
  }
  if (w_dtype == DL_DTYPE_W8A8 || w_dtype == DL_DTYPE_W8A8_MIXED || w_dtype == DL_DTYPE_W8A8_2_4) {
    return dl_matmul_w8a8(ctx, out, x, w, w_dtype, bias, m, n, k, out_row_stride);
  }
  if (dl_dtype_is_quantized(w_dtype)) {
    return dl_matmul_quant(ctx, out, x, w, w_dtype, bias, m, n, k, out_row_stride);
  }
  cudaStream_t s = ctx->stream;
  const int32_t ldo = out_row_stride;
  if (m <= GEMV_MAX_M) {
    if (w_dtype == DL_DTYPE_F32) launch_gemv<DL_DTYPE_F32>(s, out, x, w, bias, m, n, k, ldo);
    else if (w_dtype == DL_DTYPE_F16) launch_gemv<DL_DTYPE_F16>(s, out, x, w, bias, m, n, k, ldo);
    else launch_gemv<DL_DTYPE_BF16>(s, out, x, w, bias, m, n, k, ldo);
  } else if (m <= SMALLM_MAX_M && w_dtype == DL_DTYPE_F16) {
    DL_TRY(launch_smallm<DL_DTYPE_F16>(ctx, out, x, w, bias, m, n, k, ldo));
  } else if (m <= SMALLM_MAX_M && w_dtype == DL_DTYPE_BF16) {
    DL_TRY(launch_smallm<DL_DTYPE_BF16>(ctx, out, x, w, bias, m, n, k, ldo));
  } else if (w_dtype == DL_DTYPE_F32) {
    const dim3 grid((unsigned)((n + TILE_N - 1) / TILE_N), (unsigned)((m + TILE_M - 1) / TILE_M));
    matmul_f32_tiled_kernel<<<grid, 256, 0, s>>>(out, x, static_cast<const float*>(w), bias, m,
                                                 n, k, ldo);
  } else if (w_dtype == DL_DTYPE_F16) {
    launch_wmma<DL_DTYPE_F16>(s, out, x, w, bias, m, n, k, ldo);
  } else {
    launch_wmma<DL_DTYPE_BF16>(s, out, x, w, bias, m, n, k, ldo);
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
