// The tensor-core core shared by the f16/bf16 matmul (cuda/matmul.cu) and the quantized tiled
// matmul (cuda/matmul_quant.cu): a 64x64 output tile held by 4 warps, warp (wm, wn) owning rows
// wm * 32 and columns wn * 32 as 2x2 fragments of 16x16 f32 accumulators. x comes split into hi and
// lo halves of T (so f32 activations keep their precision); w's tile is stored column-major by
// output column. Both kernels fill their shared tiles their own way and run these steps.
//
// Each x row is first scaled by a power of two (dl_wmma_row_scales) that puts its largest |x| in
// [2^14, 2^15): f16's range then holds every row (no overflow past 65504, no subnormal lo halves
// for small activations), and the epilogue multiplies the power back, which is exact.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <cstdint>

#include "common.cuh"

// The CUDA 16-bit type of an f16/bf16 dtype (weights, or a KV cache), for WMMA fragments.
template <int DT>
struct WmmaType;
template <>
struct WmmaType<DL_DTYPE_F16> {
  using T = __half;
  static __device__ __forceinline__ T round(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ float widen(T v) { return __half2float(v); }
  // f16 overflows past 65504; rows are scaled below it, so this only bounds Inf and NaN rows.
  static __device__ __forceinline__ float clamp(float v) { return fminf(fmaxf(v, -65504.0f), 65504.0f); }
};
template <>
struct WmmaType<DL_DTYPE_BF16> {
  using T = __nv_bfloat16;
  static __device__ __forceinline__ T round(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float widen(T v) { return __bfloat162float(v); }
  static __device__ __forceinline__ float clamp(float v) { return v; }
};

using DlWmmaAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

// acc += x[64 rows, K] · w[64 cols, K]ᵀ for one shared k slice (rows LD elements apart), lo then hi.
template <class T, int K, int LD>
__device__ __forceinline__ void dl_wmma_slice(DlWmmaAcc (&acc)[2][2], const T* xs_hi, const T* xs_lo,
                                              const T* ws, int wm, int wn) {
  namespace wmma = nvcuda::wmma;
#pragma unroll
  for (int kk = 0; kk < K; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_hi[2], a_lo[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int r = wm * 32 + i * 16;
      wmma::load_matrix_sync(a_hi[i], xs_hi + r * LD + kk, LD);
      wmma::load_matrix_sync(a_lo[i], xs_lo + r * LD + kk, LD);
    }
#pragma unroll
    for (int j = 0; j < 2; j++) {
      wmma::load_matrix_sync(b[j], ws + (wn * 32 + j * 16) * LD + kk, LD);
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        wmma::mma_sync(acc[i][j], a_lo[i], b[j], acc[i][j]);
        wmma::mma_sync(acc[i][j], a_hi[i], b[j], acc[i][j]);
      }
  }
}

// A row whose largest |x| is 2^e (e = ilogb) is split as x * 2^-(e - DL_WMMA_ROW_TOP).
constexpr int DL_WMMA_ROW_TOP = 14;

// The shift s of a row whose largest |x| is a: ilogb(a) - DL_WMMA_ROW_TOP, clamped to [-126, 113] so
// both 2^s and 2^-s are normal floats; 0 for a row of zeros, Inf or NaN.
__device__ __forceinline__ int dl_wmma_row_shift(float a) {
  if (!(a > 0.0f && a <= 3.402823466e38f)) return 0;
  const int e = ilogbf(a) - DL_WMMA_ROW_TOP;
  return e < -126 ? -126 : (e > 113 ? 113 : e);
}

// Splits u, an x value already scaled by its row's 2^-s, into hi and lo halves of T (hi saturated
// at f16's range, for Inf and NaN rows), so the pair carries about twice T's precision.
template <int DT>
__device__ __forceinline__ void dl_wmma_split(float u, typename WmmaType<DT>::T& hi,
                                              typename WmmaType<DT>::T& lo) {
  using H = WmmaType<DT>;
  hi = H::round(H::clamp(u));
  lo = H::round(u - H::widen(hi));
}

// down[r] = 2^-s and up[r] = 2^s for the `rows` rows at row0 (rows past m get 1), from their largest
// |x| over columns [k0, k1): warp w of num_warps takes rows w, w + num_warps, ..., its lanes
// striding k (coalesced). s is clamped to [-126, 113] so both powers are normal floats; a row of
// zeros, Inf or NaN keeps s = 0.
__device__ __forceinline__ void dl_wmma_row_scales_range(float* down, float* up, const float* x, int64_t row0,
                                                         int rows, int64_t m, int64_t k, int64_t k0, int64_t k1,
                                                         int warp, int num_warps, int lane) {
  for (int r = warp; r < rows; r += num_warps) {
    const int64_t gr = row0 + r;
    float a = 0.0f;
    if (gr < m) {
      for (int64_t c = k0 + lane; c < k1; c += 32) a = fmaxf(a, fabsf(x[gr * k + c]));
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, off));
    if (lane == 0) {
      const int e = dl_wmma_row_shift(a);
      down[r] = ldexpf(1.0f, -e);
      up[r] = ldexpf(1.0f, e);
    }
  }
}

// The scales of the 64 rows of a 64x64 tile at row0, over whole rows, by its 4 warps.
__device__ __forceinline__ void dl_wmma_row_scales(float* down, float* up, const float* x, int64_t row0,
                                                   int64_t m, int64_t k, int warp, int lane) {
  dl_wmma_row_scales_range(down, up, x, row0, 64, m, k, 0, k, warp, 4, lane);
}

// Writes a warp's accumulators to out (+ bias) through its 16x16 staging tile in shared memory,
// with bounds per element: the tile at (row0, col0) may overhang [m, n). row_up[r] undoes row r's
// scale (dl_wmma_row_scales).
__device__ __forceinline__ void dl_wmma_store(DlWmmaAcc (&acc)[2][2], float* stage, int lane, int wm, int wn,
                                              int64_t row0, int64_t col0, int64_t m, int64_t n, float* out,
                                              int64_t ldo, const float* bias, const float* row_up) {
  namespace wmma = nvcuda::wmma;
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int lr = wm * 32 + i * 16 + e / 16;
        const int64_t r = row0 + lr;
        const int64_t c = col0 + wn * 32 + j * 16 + e % 16;
        if (r < m && c < n) out[r * ldo + c] = stage[e] * row_up[lr] + (bias != nullptr ? bias[c] : 0.0f);
      }
      __syncwarp();
    }
}
