// Linear layer out = x · wᵀ (+ bias) with the activation-quantized formats W8A8, W8A8_MIXED and
// W8A8_2_4 (ffi/denollm.h's layouts): each activation row quantized on the device to int8 with one
// per-token scale, int8 weights with one scale per output row, products summed in int32 (exact for
// k <= DL_W8A8_MAX_K), out = (float)acc * (s_x * s_w) (+ W8A8_MIXED's outlier columns in f32) + bias.
//
// The activation rows are quantized exactly as the CPU build's dl_w8a8_quantize_row does (IEEE
// division, round-half-even), and the int32 sums are exact, so the outputs equal the CPU build's up
// to the f32 rounding of the epilogue (written here without contraction, as the CPU's is).
//
// Three kernels:
// - quantize: one block per activation row, into the context workspace: a 128-byte header (scale,
//   the row's values at the outlier columns) then round_up(k, 64) int8 values, zero past k and at
//   the outlier columns (the CPU build's DlW8a8Row layout).
// - gemv (m <= 8, decode): one warp per weight row, __dp4a over 16-byte pieces of the row. A 2:4
//   block's 16 stored values are dotted with the 16 activations at their kept positions, picked with
//   __byte_perm from the 2-bit positions: 4 __dp4a per block of 32, reading only what is stored.
// - tiled (m > 8, prefill): 64x64 output tile per 128-thread block on int8 tensor cores (WMMA
//   16x16x16, signed char operands, int32 accumulators; sm_72+). Per k slice of 64 the activation
//   and weight tiles are staged in shared memory as four 16-column panels ([panel][row][16]: every
//   fragment pointer 256-bit aligned, as load_matrix_sync needs); a 2:4 weight block is expanded to
//   its 32 dense int8 values there. The sparse tensor cores (mma.sp) are not used: the emulator
//   cannot run them, and this path is the one it checks.
#include <mma.h>

#include "common.cuh"
#include "dl_half.h"
#include "quant.cuh"

namespace {

constexpr int64_t W8A8_MAX_K = 131072;  // 127 * 127 * k below 2^31
constexpr int OUTLIERS = 16;
constexpr uint16_t NO_OUTLIER = 0xFFFF;
constexpr int64_t ACT_HEADER = 128;  // scale, 15 unused words, 16 outlier values (f32)
constexpr int64_t IDS_AT = 8, OUTLIER_W_AT = 8 + 2 * OUTLIERS;
constexpr int QUANT_THREADS = 256;
constexpr int GEMV_MAX_M = 8;
constexpr int GEMV_WARPS = 4;
constexpr int T_M = 64, T_N = 64, T_K = 64;  // tiled: output tile, k slice
constexpr int PANEL = 16;                    // k columns per shared panel (one fragment's k)

__host__ __device__ inline int64_t padded_k(int64_t k) { return (k + T_K - 1) / T_K * T_K; }
__host__ __device__ inline int64_t act_row_bytes(int64_t k) { return ACT_HEADER + padded_k(k); }

// Where a weight matrix of one of these formats keeps what: rows of row_bytes, then row_data_bytes
// per row (scale, the int32 sum of the row that only the CPU's u8 x s8 kernels read, and
// W8A8_MIXED's outlier ids and f16 weights).
struct W8a8Weights {
  const uint8_t* w;
  int64_t row_bytes;
  const uint8_t* row_data;
  int64_t row_data_bytes;
};

}  // namespace

// --- Kernels

// Whether column j is one of the (valid) outlier ids; NO_OUTLIER slots never match, even j = 0xFFFF.
__device__ __forceinline__ bool is_outlier(const uint16_t* ids, int64_t j) {
  bool hit = false;
#pragma unroll
  for (int t = 0; t < OUTLIERS; t++) hit |= ids[t] != NO_OUTLIER && ids[t] == j;
  return hit;
}

// quantize: block r writes activation row r. MIXED: row 0's outlier ids, an id at or past k or
// repeating an earlier one treated as an unused slot (the device cannot fail the call; the loader
// writes only valid lists, and the CPU build rejects the others).
template <bool MIXED>
__global__ __launch_bounds__(QUANT_THREADS) void w8a8_quantize_kernel(uint8_t* __restrict__ act,  // [m, act_row_bytes]
                                                                      const float* __restrict__ x,  // [m, k]
                                                                      int32_t k,
                                                                      const uint8_t* __restrict__ ids_at) {
  __shared__ uint16_t ids[OUTLIERS];
  __shared__ float warp_amax[QUANT_THREADS / 32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t r = blockIdx.x, row_bytes = act_row_bytes(k);
  const float* xr = x + r * k;
  if (!MIXED && tid < OUTLIERS) ids[tid] = NO_OUTLIER;
  if (MIXED && tid == 0) {
    for (int t = 0; t < OUTLIERS; t++) {
      const uint16_t id = (uint16_t)(ids_at[2 * t] | (ids_at[2 * t + 1] << 8));
      bool ok = id < k;
      for (int u = 0; u < t; u++) ok &= ids[u] != id;
      ids[t] = ok ? id : NO_OUTLIER;
    }
  }
  __syncthreads();
  float amax = 0.0f;
  for (int64_t j = tid; j < k; j += QUANT_THREADS) {
    if (MIXED && is_outlier(ids, j)) continue;
    amax = fmaxf(amax, fabsf(xr[j]));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  if (lane == 0) warp_amax[warp] = amax;
  __syncthreads();
  amax = warp_amax[0];
#pragma unroll
  for (int w = 1; w < QUANT_THREADS / 32; w++) amax = fmaxf(amax, warp_amax[w]);
  // As dl_w8a8_quantize_row: IEEE division, q = round-half-even(x * (127 / amax)).
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  uint8_t* row = act + r * row_bytes;
  int8_t* q = reinterpret_cast<int8_t*>(row + ACT_HEADER);
  for (int64_t j = tid; j < padded_k(k); j += QUANT_THREADS) {
    int v = 0;
    if (j < k && !(MIXED && is_outlier(ids, j))) v = (int)rintf(xr[j] * inv);
    q[j] = (int8_t)v;
  }
  float* header = reinterpret_cast<float*>(row);
  if (tid < 16) header[tid] = tid == 0 ? amax / 127.0f : 0.0f;
  if (tid >= 16 && tid < 16 + OUTLIERS) {
    const uint16_t id = ids[tid - 16];
    header[tid] = id != NO_OUTLIER ? xr[id] : 0.0f;
  }
}

// Output (i, j) from its exact int32 sum, as the CPU build's dl_w8a8_store: (float)acc * (s_x * s_w),
// plus the outlier products in slot order, plus the bias; each operation rounded on its own.
template <bool MIXED>
__device__ __forceinline__ float w8a8_output(const W8a8Weights& wt, const uint8_t* act_row, int64_t j, int32_t acc,
                                             const float* bias) {
  const float* header = reinterpret_cast<const float*>(act_row);
  const uint8_t* data = wt.row_data + j * wt.row_data_bytes;
  float v = __fmul_rn((float)acc, __fmul_rn(header[0], dl_load_f32_unaligned(data)));
  if (MIXED) {
    float s = 0.0f;
#pragma unroll
    for (int t = 0; t < OUTLIERS; t++) {
      const uint16_t h = (uint16_t)(data[OUTLIER_W_AT + 2 * t] | (data[OUTLIER_W_AT + 2 * t + 1] << 8));
      s = __fadd_rn(s, __fmul_rn(header[16 + t], dl_f16_to_f32(h)));
    }
    v = __fadd_rn(v, s);
  }
  if (bias != nullptr) v = __fadd_rn(v, bias[j]);
  return v;
}

// The 16 activations at a 2:4 block's kept positions, in stored order: word t holds groups 2t and
// 2t + 1 (bytes of activation words a[2t] and a[2t + 1]), picked by the position byte t.
__device__ __forceinline__ uint32_t gather_kept(uint32_t a0, uint32_t a1, uint32_t pos_byte) {
  const uint32_t lo = pos_byte & 15, hi = pos_byte >> 4;
  const uint32_t sel = (lo & 3) | ((lo >> 2) << 4) | ((4 + (hi & 3)) << 8) | ((4 + (hi >> 2)) << 12);
  return __byte_perm(a0, a1, sel);
}

// The 4 dense int8 weights of group g of a 2:4 block: the group's two stored values (bytes 2 (g % 2)
// and 2 (g % 2) + 1 of value word g / 2) at their positions, zeros elsewhere.
__device__ __forceinline__ uint32_t expand_group(uint32_t vals, int g, uint32_t nib) {
  const uint32_t p0 = nib & 3, p1 = nib >> 2, at = 2 * (g % 2);
  uint32_t sel = 0;
#pragma unroll
  for (uint32_t e = 0; e < 4; e++) sel |= (e == p0 ? at : (e == p1 ? at + 1 : 4u)) << (4 * e);
  return __byte_perm(vals, 0u, sel);
}

// gemv: warp w of the grid computes out[0..m, j] for weight row j = w; M bounds m (1, 2, 4 or 8).
// VEC (dense rows only): k % 16 == 0 and w 16-byte aligned, for 128-bit loads of the weights.
template <int M, bool SPARSE, bool MIXED, bool VEC>
__global__ __launch_bounds__(GEMV_WARPS * 32) void w8a8_gemv_kernel(float* __restrict__ out,  // [m, ldo]
                                                                    const uint8_t* __restrict__ act,
                                                                    W8a8Weights wt,
                                                                    const float* __restrict__ bias,
                                                                    int32_t m, int32_t n, int32_t k, int32_t ldo) {
  const int lane = threadIdx.x % 32;
  const int64_t j = (int64_t)blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
  if (j >= n) return;
  const int64_t arb = act_row_bytes(k);
  const uint8_t* wr = wt.w + j * wt.row_bytes;
  int32_t acc[M];
#pragma unroll
  for (int i = 0; i < M; i++) acc[i] = 0;
  if constexpr (SPARSE) {
    for (int64_t b = lane; b < k / 32; b += 32) {
      const uint8_t* block = wr + b * 20;
      uint32_t vals[4];
#pragma unroll
      for (int t = 0; t < 4; t++) vals[t] = dl_load_u32(block + 4 * t);
      const uint32_t pos = dl_load_u32(block + 16);
#pragma unroll
      for (int i = 0; i < M; i++) {
        if (i >= m) break;
        const uint4* aq = reinterpret_cast<const uint4*>(act + i * arb + ACT_HEADER + b * 32);
        const uint4 lo = aq[0], hi = aq[1];
        const uint32_t a[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
        int32_t s = acc[i];
#pragma unroll
        for (int t = 0; t < 4; t++) s = __dp4a((int)vals[t], (int)gather_kept(a[2 * t], a[2 * t + 1], (pos >> (8 * t)) & 255), s);
        acc[i] = s;
      }
    }
  } else if constexpr (VEC) {
    for (int64_t v = lane; v < k / 16; v += 32) {
      const uint4 wv = __ldcs(reinterpret_cast<const uint4*>(wr) + v);
#pragma unroll
      for (int i = 0; i < M; i++) {
        if (i >= m) break;
        const uint4 qv = *reinterpret_cast<const uint4*>(act + i * arb + ACT_HEADER + v * 16);
        acc[i] = __dp4a((int)wv.w, (int)qv.w,
                        __dp4a((int)wv.z, (int)qv.z, __dp4a((int)wv.y, (int)qv.y, __dp4a((int)wv.x, (int)qv.x, acc[i]))));
      }
    }
  } else {
    // Any k and alignment: 4 weight bytes gathered into a word (zeros past k), the activation word
    // read whole (its row is padded with zeros).
    for (int64_t c = 4 * (int64_t)lane; c < k; c += 128) {
      uint32_t word = 0;
#pragma unroll
      for (int e = 0; e < 4; e++) word |= (c + e < k ? (uint32_t)wr[c + e] : 0u) << (8 * e);
#pragma unroll
      for (int i = 0; i < M; i++) {
        if (i >= m) break;
        const uint32_t qv = *reinterpret_cast<const uint32_t*>(act + i * arb + ACT_HEADER + c);
        acc[i] = __dp4a((int)word, (int)qv, acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < M; i++) {
    int32_t v = acc[i];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0 && i < m) out[(int64_t)i * ldo + j] = w8a8_output<MIXED>(wt, act + i * arb, j, v, bias);
  }
}

// tiled: block (bx, by) computes out[by*64 .. +64, bx*64 .. +64] with 4 warps in a 2x2 layout, each
// owning a 32x32 quadrant as 2x2 int32 fragments. VEC as for gemv (dense rows only).
template <bool SPARSE, bool MIXED, bool VEC>
__global__ __launch_bounds__(128) void w8a8_tiled_kernel(float* __restrict__ out, const uint8_t* __restrict__ act,
                                                         W8a8Weights wt, const float* __restrict__ bias, int32_t m,
                                                         int32_t n, int32_t k, int32_t ldo) {
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(128) signed char xs[T_K / PANEL][T_M * PANEL];
  __shared__ __align__(128) signed char ws[T_K / PANEL][T_N * PANEL];
  __shared__ __align__(128) int staging[4][16 * 16];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t row0 = (int64_t)blockIdx.y * T_M, col0 = (int64_t)blockIdx.x * T_N;
  const int64_t arb = act_row_bytes(k);

  wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0);

  for (int64_t k0 = 0; k0 < k; k0 += T_K) {
    // Activations: 64 rows x 4 panels of 16 bytes, 2 per thread (rows are padded past k).
#pragma unroll
    for (int l = 0; l < 2; l++) {
      const int idx = tid + 128 * l, r = idx / 4, p = idx % 4;
      const int64_t gr = row0 + r;
      uint4 v = {0, 0, 0, 0};
      if (gr < m) v = *reinterpret_cast<const uint4*>(act + gr * arb + ACT_HEADER + k0 + PANEL * p);
      *reinterpret_cast<uint4*>(&xs[p][r * PANEL]) = v;
    }
    if constexpr (SPARSE) {
      // Block k0 / 32 + tid / 64 of weight row col0 + tid % 64, expanded to 32 bytes: 2 panels.
      const int r = tid % 64, half = tid / 64;
      const int64_t gj = col0 + r, b = k0 / 32 + half;
      uint32_t dense[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (gj < n && b < k / 32) {
        const uint8_t* block = wt.w + gj * wt.row_bytes + b * 20;
        const uint32_t pos = dl_load_u32(block + 16);
#pragma unroll
        for (int g = 0; g < 8; g++) dense[g] = expand_group(dl_load_u32(block + 4 * (g / 2)), g, (pos >> (4 * g)) & 15);
      }
      uint4* dst0 = reinterpret_cast<uint4*>(&ws[2 * half][r * PANEL]);
      uint4* dst1 = reinterpret_cast<uint4*>(&ws[2 * half + 1][r * PANEL]);
      *dst0 = uint4{dense[0], dense[1], dense[2], dense[3]};
      *dst1 = uint4{dense[4], dense[5], dense[6], dense[7]};
    } else {
#pragma unroll
      for (int l = 0; l < 2; l++) {
        const int idx = tid + 128 * l, r = idx / 4, p = idx % 4;
        const int64_t gj = col0 + r, gc = k0 + PANEL * p;
        const uint8_t* src = wt.w + gj * wt.row_bytes + gc;
        uint4 v = {0, 0, 0, 0};
        if (VEC) {
          if (gj < n && gc < k) v = __ldg(reinterpret_cast<const uint4*>(src));
        } else {
          uint32_t words[4] = {0, 0, 0, 0};
          for (int e = 0; e < 16; e++) {
            if (gj < n && gc + e < k) words[e / 4] |= (uint32_t)src[e] << (8 * (e % 4));
          }
          v = uint4{words[0], words[1], words[2], words[3]};
        }
        *reinterpret_cast<uint4*>(&ws[p][r * PANEL]) = v;
      }
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < T_K / PANEL; p++) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> bf[2];
#pragma unroll
      for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], &xs[p][(wm * 32 + i * 16) * PANEL], PANEL);
#pragma unroll
      for (int j = 0; j < 2; j++) wmma::load_matrix_sync(bf[j], &ws[p][(wn * 32 + j * 16) * PANEL], PANEL);
#pragma unroll
      for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], bf[j], acc[i][j]);
    }
    __syncthreads();
  }
  int* stage = staging[warp];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t r = row0 + wm * 32 + i * 16 + e / 16;
        const int64_t c = col0 + wn * 32 + j * 16 + e % 16;
        if (r < m && c < n) out[r * ldo + c] = w8a8_output<MIXED>(wt, act + r * arb, c, stage[e], bias);
      }
      __syncwarp();
    }
}

// --- Launchers

template <bool SPARSE, bool MIXED, bool VEC>
static void launch_w8a8_matmul(cudaStream_t s, float* out, const uint8_t* act, const W8a8Weights& wt,
                               const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo) {
  if (m <= GEMV_MAX_M) {
    const unsigned blocks = (unsigned)((n + GEMV_WARPS - 1) / GEMV_WARPS);
    const int threads = GEMV_WARPS * 32;
    if (m == 1) {
      w8a8_gemv_kernel<1, SPARSE, MIXED, VEC><<<blocks, threads, 0, s>>>(out, act, wt, bias, m, n, k, ldo);
    } else if (m == 2) {
      w8a8_gemv_kernel<2, SPARSE, MIXED, VEC><<<blocks, threads, 0, s>>>(out, act, wt, bias, m, n, k, ldo);
    } else if (m <= 4) {
      w8a8_gemv_kernel<4, SPARSE, MIXED, VEC><<<blocks, threads, 0, s>>>(out, act, wt, bias, m, n, k, ldo);
    } else {
      w8a8_gemv_kernel<8, SPARSE, MIXED, VEC><<<blocks, threads, 0, s>>>(out, act, wt, bias, m, n, k, ldo);
    }
  } else {
    const dim3 grid((unsigned)((n + T_N - 1) / T_N), (unsigned)((m + T_M - 1) / T_M));
    w8a8_tiled_kernel<SPARSE, MIXED, VEC><<<grid, 128, 0, s>>>(out, act, wt, bias, m, n, k, ldo);
  }
}

size_t dl_w8a8_workspace_bytes(int64_t max_rows, int64_t max_k) {
  if (max_rows <= 0 || max_k <= 0) return 0;
  return (size_t)(max_rows * act_row_bytes(max_k));
}

int32_t dl_matmul_w8a8(dl_context* ctx, float* out, const float* x, const void* w, int32_t w_dtype,
                       const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo) {
  const char* fn = "dl_matmul";
  if (k > W8A8_MAX_K) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: %s needs k <= %lld for an exact int32 sum, found %d", fn,
                   dl_dtype_name(w_dtype), (long long)W8A8_MAX_K, k);
  }
  const bool sparse = w_dtype == DL_DTYPE_W8A8_2_4, mixed = w_dtype == DL_DTYPE_W8A8_MIXED;
  if (!sparse && !mixed && w_dtype != DL_DTYPE_W8A8) {
    return dl_fail(DL_ERR_INTERNAL, "%s: no W8A8 kernel for %s", fn, dl_dtype_name(w_dtype));
  }
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const int64_t row_bytes = (int64_t)dl_dtype_bytes(w_dtype, (uint64_t)k);
  const W8a8Weights wt{wb, row_bytes, wb + (int64_t)n * row_bytes, DL_DTYPES[w_dtype].row_bytes};
  void* scratch = nullptr;
  DL_TRY(dl_workspace(fn, ctx, dl_w8a8_workspace_bytes(m, k), &scratch));
  uint8_t* act = static_cast<uint8_t*>(scratch);
  cudaStream_t s = ctx->stream;
  if (mixed) {
    w8a8_quantize_kernel<true><<<(unsigned)m, QUANT_THREADS, 0, s>>>(act, x, k, wt.row_data + IDS_AT);
  } else {
    w8a8_quantize_kernel<false><<<(unsigned)m, QUANT_THREADS, 0, s>>>(act, x, k, nullptr);
  }
  const bool vec = k % 16 == 0 && dl_is_aligned(w, 16);
  if (sparse) {
    launch_w8a8_matmul<true, false, false>(s, out, act, wt, bias, m, n, k, ldo);
  } else if (mixed) {
    if (vec) launch_w8a8_matmul<false, true, true>(s, out, act, wt, bias, m, n, k, ldo);
    else launch_w8a8_matmul<false, true, false>(s, out, act, wt, bias, m, n, k, ldo);
  } else {
    if (vec) launch_w8a8_matmul<false, false, true>(s, out, act, wt, bias, m, n, k, ldo);
    else launch_w8a8_matmul<false, false, false>(s, out, act, wt, bias, m, n, k, ldo);
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
