// dl_quantize on the CPU: validates, then runs the host quantizers of native/dl_quantize.h (the
// CUDA build runs the same ones on a host copy).
#include "common.h"
#include "dl_quantize.h"

extern "C" DL_API int32_t dl_quantize(dl_context* ctx, void* dst, int32_t dst_dtype, const float* src, int64_t rows,
                                      int64_t cols, const float* importance) {
  const char* fn = "dl_quantize";
  DL_TRY(dl_validate_quantize(fn, ctx, dst, dst_dtype, src, rows, cols));
  DL_TRY(ctx->graphs.forbid(fn));  // the CUDA build copies through the host
  if (rows == 0) return DL_OK;
  return dl_guard(fn, [&] { return dl_quantize_host(fn, ctx->num_threads, dst, dst_dtype, src, rows, cols, importance); });
}
