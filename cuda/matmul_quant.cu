// Linear layer out = x · wᵀ (+ bias) with block-quantized weights (every quantized row of
// DL_DTYPE_TABLE before W8A8, and the weight-only 2:4 rows F16_2_4, INT8_2_4 and INT4_2_4): f32
// activations, weights dequantized on the fly, f32 accumulation. A 2:4 row is read as stored (its
// kept values and 2-bit positions) and expanded in registers (gemv) or into the f16 shared tile
// (tiled WMMA); mma.sp's sparse tensor cores are not used (the emulator has no model of them).
//
// Two kernels, picked by dl_matmul_quant:
// - gemv (m <= 8, decode): bandwidth-bound; one warp per weight row, each lane decodes 32-element
//   chunks of it in registers (cuda/quant.cuh) and dots each chunk with every x row, so each weight
//   byte is read once per call. x stays f32: no activation quantization, hence no workspace.
// - tiled WMMA (m > 8, prefill): 64x64 output tile per 128-thread block; per k slice of 64 every
//   thread decodes one chunk of one weight row into an f16 tile in shared memory, and x is staged
//   as x_hi + x_lo in f16 (as cuda/matmul.cu's WMMA kernel does), both multiplied on tensor cores
//   with f32 accumulators. The weights are rounded to f16 (11 bits, 2^-11 relative, finer than any
//   of these formats' steps); x keeps about 22 bits.
//   The emulator (../shared/cuda-emu) runs this same WMMA code, so CI checks this exact path.
#include <cuda_fp16.h>
#include <mma.h>

#include "common.cuh"
#include "quant.cuh"
#include "wmma_tile.cuh"

namespace {

constexpr int QGEMV_MAX_M = 8;
constexpr int QGEMV_WARPS = 4;  // warps (weight rows) per block
constexpr int QT_M = 64, QT_N = 64;
constexpr int QT_K = 2 * DL_CHUNK;  // k slice: two chunks, one per thread of the 128
constexpr int QT_LD = QT_K + 8;     // padded shared row: 144 bytes, a multiple of 16

}  // namespace

// --- Kernels

// Chunk c of weight row j into y; INT8 and INT8_2_4 read their row's scale (after all n rows) first.
template <int DT>
__device__ __forceinline__ void decode_weight_chunk(const uint8_t* w, int64_t j, int64_t c, int32_t n,
                                                    int32_t k, float* y) {
  if constexpr (DT == DL_DTYPE_INT8) {
    const float scale = dl_load_f32_unaligned(w + (int64_t)n * k + 4 * j);
    dl_decode_int8_chunk(w + j * k, scale, c, k, y);
  } else if constexpr (DT == DL_DTYPE_INT8_2_4) {
    const int64_t row_bytes = k / 32 * 20;
    const float scale = dl_load_f32_unaligned(w + (int64_t)n * row_bytes + 4 * j);
    dl_decode_int8_2_4_chunk(w + j * row_bytes, scale, c, y);
  } else {
    dl_decode_chunk<DT>(w + j * (k / QuantTraits<DT>::BLOCK_LEN * QuantTraits<DT>::BLOCK_BYTES), c, y);
  }
}

// gemv: warp w of the grid computes out[0..m, j] for weight row j = w. M is the compile-time
// upper bound of m (1, 2, 4 or 8), so one instantiation serves several m.
template <int DT, int M>
__global__ __launch_bounds__(QGEMV_WARPS * 32) void matmul_quant_gemv_kernel(
    float* __restrict__ out,      // [m, ldo], columns [0, n)
    const float* __restrict__ x,  // [m, k]
    const uint8_t* __restrict__ w,  // [n, k] of DT
    const float* __restrict__ bias,  // [n] or NULL
    int32_t m, int32_t n, int32_t k, int32_t ldo) {
  const int lane = threadIdx.x % 32;
  const int64_t j = (int64_t)blockIdx.x * QGEMV_WARPS + threadIdx.x / 32;
  if (j >= n) return;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; i++) acc[i] = 0.0f;
  const int64_t num_chunks = ((int64_t)k + DL_CHUNK - 1) / DL_CHUNK;
  for (int64_t c = lane; c < num_chunks; c += 32) {
    float y[DL_CHUNK];
    decode_weight_chunk<DT>(w, j, c, n, k, y);
    // Only INT8 has a partial last chunk (its k is any); its missing weights decode as 0.
    const int64_t left = (int64_t)k - c * DL_CHUNK;
    const int valid = left < DL_CHUNK ? (int)left : DL_CHUNK;
#pragma unroll
    for (int i = 0; i < M; i++) {
      if (i >= m) break;
      const float* xr = x + (int64_t)i * k + c * DL_CHUNK;
      float a = acc[i];
      if (valid == DL_CHUNK) {
#pragma unroll
        for (int e = 0; e < DL_CHUNK; e++) a = fmaf(__ldg(xr + e), y[e], a);
      } else {
        for (int e = 0; e < valid; e++) a = fmaf(__ldg(xr + e), y[e], a);
      }
      acc[i] = a;
    }
  }
#pragma unroll
  for (int i = 0; i < M; i++) {
    float v = acc[i];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0 && i < m) out[(int64_t)i * ldo + j] = v + (bias != nullptr ? bias[j] : 0.0f);
  }
}

// f16 with saturation at ±65504: a value past it keeps the sign and the largest magnitude instead
// of becoming Inf (x_lo then carries the rest for x; weights that large do not occur).
__device__ __forceinline__ __half to_half_sat(float v) {
  return __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
}

// tiled WMMA: block (bx, by) computes out[by*64 .. +64, bx*64 .. +64] with 4 warps in a 2x2
// layout, each owning a 32x32 quadrant as 2x2 fragments of 16x16 f32 accumulators. Per k slice of
// 64: x as x_hi and x_lo [64][72] (row-major A), w decoded to f16 [64][72] (column-major B, since
// w is [n, k]): thread t decodes chunk t / 64 of the slice of weight row t % 64.
template <int DT>
__global__ __launch_bounds__(128) void matmul_quant_wmma_kernel(float* __restrict__ out,
                                                                const float* __restrict__ x,
                                                                const uint8_t* __restrict__ w,
                                                                const float* __restrict__ bias,
                                                                int32_t m, int32_t n, int32_t k,
                                                                int32_t ldo) {
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(128) __half xs_hi[QT_M * QT_LD];
  __shared__ __align__(128) __half xs_lo[QT_M * QT_LD];
  __shared__ __align__(128) __half ws[QT_N * QT_LD];
  __shared__ __align__(128) float staging[4][16 * 16];
  __shared__ float row_down[QT_M], row_up[QT_M];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t row0 = (int64_t)blockIdx.y * QT_M, col0 = (int64_t)blockIdx.x * QT_N;
  dl_wmma_row_scales(row_down, row_up, x, row0, m, k, warp, lane);
  __syncthreads();
  const int64_t num_chunks = ((int64_t)k + DL_CHUNK - 1) / DL_CHUNK;

  DlWmmaAcc acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < k; k0 += QT_K) {
    // x slice [64, 64] f32, 32 values per thread: row tid / 2, columns 32 (tid % 2) ..
    {
      const int r = tid / 2, c0 = (tid % 2) * DL_CHUNK;
      const int64_t gr = row0 + r;
#pragma unroll 8
      for (int e = 0; e < DL_CHUNK; e++) {
        const int64_t gc = k0 + c0 + e;
        const float v = (gr < m && gc < k) ? x[gr * k + gc] * row_down[r] : 0.0f;  // exact scale
        dl_wmma_split<DL_DTYPE_F16>(v, xs_hi[r * QT_LD + c0 + e], xs_lo[r * QT_LD + c0 + e]);
      }
    }
    // w slice: chunk k0 / 32 + tid / 64 of weight row col0 + tid % 64, or zeros past n or k.
    {
      const int r = tid % 64, part = tid / 64;
      const int64_t gj = col0 + r, c = k0 / DL_CHUNK + part;
      float y[DL_CHUNK];
      if (gj < n && c < num_chunks) {
        decode_weight_chunk<DT>(w, gj, c, n, k, y);
      } else {
#pragma unroll
        for (int e = 0; e < DL_CHUNK; e++) y[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < DL_CHUNK; e++) ws[r * QT_LD + part * DL_CHUNK + e] = to_half_sat(y[e]);
    }
    __syncthreads();
    dl_wmma_slice<__half, QT_K, QT_LD>(acc, xs_hi, xs_lo, ws, wm, wn);
    __syncthreads();
  }
  dl_wmma_store(acc, staging[warp], lane, wm, wn, row0, col0, m, n, out, ldo, bias, row_up);
}

// --- Launcher

template <int DT>
static void launch_quant(cudaStream_t s, float* out, const float* x, const uint8_t* w, const float* bias,
                         int32_t m, int32_t n, int32_t k, int32_t ldo) {
  if (m <= QGEMV_MAX_M) {
    const unsigned blocks = (unsigned)((n + QGEMV_WARPS - 1) / QGEMV_WARPS);
    const int threads = QGEMV_WARPS * 32;
    if (m == 1) {
      matmul_quant_gemv_kernel<DT, 1><<<blocks, threads, 0, s>>>(out, x, w, bias, m, n, k, ldo);
    } else if (m == 2) {
      matmul_quant_gemv_kernel<DT, 2><<<blocks, threads, 0, s>>>(out, x, w, bias, m, n, k, ldo);
    } else if (m <= 4) {
      matmul_quant_gemv_kernel<DT, 4><<<blocks, threads, 0, s>>>(out, x, w, bias, m, n, k, ldo);
    } else {
      matmul_quant_gemv_kernel<DT, 8><<<blocks, threads, 0, s>>>(out, x, w, bias, m, n, k, ldo);
    }
  } else {
    const dim3 grid((unsigned)((n + QT_N - 1) / QT_N), (unsigned)((m + QT_M - 1) / QT_M));
    matmul_quant_wmma_kernel<DT><<<grid, 128, 0, s>>>(out, x, w, bias, m, n, k, ldo);
  }
}

int32_t dl_matmul_quant(dl_context* ctx, float* out, const float* x, const void* w, int32_t w_dtype,
                        const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const auto launch = [&](auto tag) {
    launch_quant<decltype(tag)::value>(ctx->stream, out, x, wb, bias, m, n, k, ldo);
  };
  const bool known = dl_dispatch_quant(w_dtype, launch) || dl_dispatch_sparse_f32(w_dtype, launch);
  if (!known) {
    return dl_fail(DL_ERR_INTERNAL, "dl_matmul: no quantized kernel for %s", dl_dtype_name(w_dtype));
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
