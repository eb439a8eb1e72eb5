// The scratch of quantized dl_matmul (dl_quantize and dl_dequantize are in cpu/quant/).
// (Wave 2 placeholder: the kernels land with the quantized-weights issue.)
#include <cstring>

#include "common.h"
#include "dl_dtype.h"
#include "dl_quant.h"

size_t dl_matmul_workspace_bytes(int64_t max_rows, int64_t max_k) {
  if (max_rows <= 0 || max_k <= 0) return 0;
  // One q8_K row (the largest activation layout: 292 bytes per 256) plus per-block sums.
  const int64_t blocks = (max_k + DL_QK - 1) / DL_QK;
  return dl_align64((size_t)max_rows * (size_t)(blocks * 48 + 64));
}
