// 2:4 sparse dl_matmul with weight-only formats (F16_2_4, INT8_2_4, INT4_2_4): each stored block is
// read once and expanded in registers, then dotted with a tile of activation rows. W8A8_2_4 is
// w8a8.cpp's (per-token int8 activations).
#include <algorithm>
#include <cstring>

#include "common.h"
#include "dl_dtype.h"
#include "dl_half.h"
#include "quant.h"
#include "sparse.h"
#include "w8a8.h"

// quantize_row_q8: INT8_2_4's activations are INT8's blocks of 32 (the header's q8_k twin is unused).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "quant_act.h"
#pragma GCC diagnostic pop

namespace {

constexpr int TILE_M = 4;

// Expands one stored block to its dense floats (pruned elements 0).
void expand_f16_block(const uint8_t* block, float* dense) {
  const uint8_t* pos = block + 32;
  for (int i = 0; i < 32; i++) dense[i] = 0.0f;
  for (int grp = 0; grp < 8; grp++) {
    const int nib = dl_2_4_nibble(pos, grp);
    uint16_t h0, h1;
    std::memcpy(&h0, block + 4 * grp, 2);
    std::memcpy(&h1, block + 4 * grp + 2, 2);
    dense[4 * grp + (nib & 3)] = dl_f16_to_f32(h0);
    dense[4 * grp + (nib >> 2)] = dl_f16_to_f32(h1);
  }
}

// INT4_2_4 group of 128: f16 d, f16 m, 32 bytes of the 64 kept nibbles, 16 position bytes.
void expand_int4_block(const uint8_t* block, float* dense) {
  uint16_t dh, mh;
  std::memcpy(&dh, block, 2);
  std::memcpy(&mh, block + 2, 2);
  const float d = dl_f16_to_f32(dh), m = dl_f16_to_f32(mh);
  const uint8_t* q = block + 4;
  const uint8_t* pos = block + 36;
  for (int i = 0; i < 128; i++) dense[i] = 0.0f;
  for (int grp = 0; grp < 32; grp++) {
    const int nib = dl_2_4_nibble(pos, grp);
    dense[4 * grp + (nib & 3)] = d * (float)(q[grp] & 15) + m;
    dense[4 * grp + (nib >> 2)] = d * (float)(q[grp] >> 4) + m;
  }
}

// Dense f32 dot products of one expanded block with R rows (the compiler vectorizes per target).
template <int LEN>
DL_TARGET_CLONES void block_dots(const float* dense, const float* x, int64_t k, int rows, float* acc) {
  for (int r = 0; r < rows; r++) {
    const float* xr = x + r * k;
    float s = 0.0f;
    for (int j = 0; j < LEN; j++) s += dense[j] * xr[j];
    acc[r] += s;
  }
}

template <int LEN, int BYTES, void (*EXPAND)(const uint8_t*, float*)>
void float_kernel(const DlSparseGemm& g, int64_t c0, int64_t c1) {
  const float* x = g.x;
  const uint8_t* w = g.w;
  const int64_t w_row_bytes = g.w_row_bytes, ldo = g.ldo, m = g.m, k = g.k;
  const float* bias = g.bias;
  float* out = g.out;
  alignas(64) float dense[LEN];
  for (int64_t i0 = 0; i0 < m; i0 += TILE_M) {
    const int rows = (int)std::min<int64_t>(TILE_M, m - i0);
    for (int64_t c = c0; c < c1; c++) {
      float acc[TILE_M] = {};
      const uint8_t* wr = w + c * w_row_bytes;
      for (int64_t b = 0; b < k / LEN; b++) {
        EXPAND(wr + b * BYTES, dense);
        block_dots<LEN>(dense, x + i0 * k + b * LEN, k, rows, acc);
      }
      for (int r = 0; r < rows; r++) out[(i0 + r) * ldo + c] = acc[r] + (bias != nullptr ? bias[c] : 0.0f);
    }
  }
}

}  // namespace

int32_t dl_matmul_sparse(dl_context* ctx, float* out, int64_t ldo, const float* x, const void* w, int32_t w_dtype,
                         const float* bias, int32_t m, int32_t n, int32_t k) {
  const char* fn = "dl_matmul";
  const auto* wb = static_cast<const uint8_t*>(w);
  const int64_t w_row_bytes = (int64_t)dl_dtype_bytes(w_dtype, (uint64_t)k);
  const int threads = dl_threads_for(ctx, (int64_t)m * n * k);
  if (w_dtype == DL_DTYPE_F16_2_4 || w_dtype == DL_DTYPE_INT4_2_4) {
    const bool f16 = w_dtype == DL_DTYPE_F16_2_4;
    // The AVX-512 VBMI2 kernels where the W8A8 formats take theirs, else the generic ones.
    const bool avx512 = std::strcmp(dl_w8a8_isa().name, "avx512-vnni") == 0;
    DlSparseKernel kernel = f16 ? float_kernel<32, 36, expand_f16_block> : float_kernel<128, 52, expand_int4_block>;
    if (avx512) {
      const DlSparseKernel fast = f16 ? dl_sparse_f16_2_4_avx512() : dl_sparse_int4_2_4_avx512();
      if (fast != nullptr) kernel = fast;
    }
    const DlSparseGemm sg{x, wb, w_row_bytes, bias, out, ldo, m, k};
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
      const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
      const int64_t nt = 1, tid = 0;
#endif
      const int64_t units = (n + 15) / 16;
      const int64_t c0 = std::min<int64_t>(n, units * tid / nt * 16);
      const int64_t c1 = std::min<int64_t>(n, units * (tid + 1) / nt * 16);
      if (c0 < c1) kernel(sg, c0, c1);
    }
    return DL_OK;
  }
  if (w_dtype != DL_DTYPE_INT8_2_4) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: no 2:4 kernel for w_dtype %s", fn, dl_dtype_name(w_dtype));
  }
  const int64_t act_row_bytes = dl_act_row_bytes(DlActKind::q8, k);
  void* scratch = nullptr;
  DL_TRY(dl_workspace(fn, ctx, (size_t)(m * act_row_bytes), &scratch));
  auto* act = static_cast<uint8_t*>(scratch);
  const DlW8a8Gemm g{reinterpret_cast<const int8_t*>(wb), w_row_bytes, wb + (int64_t)n * w_row_bytes, 4, nullptr, act,
                     act_row_bytes, m, k, out, ldo, bias, nullptr, 0};
  const DlW8a8Kernel kernel = dl_w8a8_isa().int8_2_4;
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int64_t nt = 1, tid = 0;
#endif
    for (int64_t r = tid; r < m; r += nt) quantize_row_q8(x + r * k, k, act + r * act_row_bytes);
#pragma omp barrier
    const int64_t units = (n + 15) / 16;
    const int64_t c0 = std::min<int64_t>(n, units * tid / nt * 16);
    const int64_t c1 = std::min<int64_t>(n, units * (tid + 1) / nt * 16);
    if (c0 < c1) kernel(g, c0, c1);
  }
  return DL_OK;
}
