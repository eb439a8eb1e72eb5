// The f32-activation 2:4 formats' kernel signature (F16_2_4, INT4_2_4): the generic kernels in
// sparse.cpp, the AVX-512 VBMI2 ones in sparse_x86.cpp.
#pragma once

#include <cstdint>

// One call computes out[i * ldo + c] = dot(x row i, w row c) (+ bias[c]) for the m rows and the
// columns [col_begin, col_end).
struct DlSparseGemm {
  const float* x;  // [m, k]
  const uint8_t* w;  // [n, w_row_bytes] of the format's blocks
  int64_t w_row_bytes;
  const float* bias;  // [n] or NULL
  float* out;         // [m, ldo]
  int64_t ldo;
  int64_t m, k;
};
using DlSparseKernel = void (*)(const DlSparseGemm& g, int64_t col_begin, int64_t col_end);

// NULL off x86; callers use them only where dl_w8a8_isa() is the AVX-512 VNNI set (which checks
// for VBMI and VBMI2).
DlSparseKernel dl_sparse_f16_2_4_avx512();
DlSparseKernel dl_sparse_int4_2_4_avx512();
