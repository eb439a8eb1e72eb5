// The tensor-core core shared by the f16/bf16 matmul (cuda/matmul.cu) and the quantized tiled
// matmul (cuda/matmul_quant.cu): a 64x64 output tile held by 4 warps, warp (wm, wn) owning rows
// wm * 32 and columns wn * 32 as 2x2 fragments of 16x16 f32 accumulators. x comes split into hi and
// lo halves of T (so f32 activations keep their precision); w's tile is stored column-major by
// output column. Both kernels fill their shared tiles their own way and run these two steps.
#pragma once

#include <mma.h>

#include <cstdint>

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

// Writes a warp's accumulators to out (+ bias) through its 16x16 staging tile in shared memory,
// with bounds per element: the tile at (row0, col0) may overhang [m, n).
__device__ __forceinline__ void dl_wmma_store(DlWmmaAcc (&acc)[2][2], float* stage, int lane, int wm, int wn,
                                              int64_t row0, int64_t col0, int64_t m, int64_t n, float* out,
                                              int64_t ldo, const float* bias) {
  namespace wmma = nvcuda::wmma;
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t r = row0 + wm * 32 + i * 16 + e / 16;
        const int64_t c = col0 + wn * 32 + j * 16 + e % 16;
        if (r < m && c < n) out[r * ldo + c] = stage[e] + (bias != nullptr ? bias[c] : 0.0f);
      }
      __syncwarp();
    }
}
