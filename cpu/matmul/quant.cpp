// Quantized formats on the CPU: dl_quantize, dl_dequantize and the scratch of quantized dl_matmul.
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

extern "C" DL_API int32_t dl_quantize(dl_context* ctx, void* dst, int32_t dst_dtype, const float* src, int64_t rows,
                                      int64_t cols, const float* importance) {
  (void)ctx, (void)dst, (void)src, (void)rows, (void)cols, (void)importance;
  return dl_fail(DL_ERR_NOT_IMPLEMENTED, "dl_quantize: no quantizer for %s yet", dl_dtype_name(dst_dtype));
}

extern "C" DL_API int32_t dl_dequantize(dl_context* ctx, float* dst, const void* src, int32_t src_dtype, int64_t rows,
                                        int64_t cols) {
  (void)ctx, (void)dst, (void)src, (void)rows, (void)cols;
  return dl_fail(DL_ERR_NOT_IMPLEMENTED, "dl_dequantize: no dequantizer for %s yet", dl_dtype_name(src_dtype));
}
