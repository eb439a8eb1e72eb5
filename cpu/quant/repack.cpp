// dl_repack on the CPU: Q4_0 to the column-lane layout its matmul kernels read (Q4_0_R16) and back,
// through native/dl_repack.h.
#include "common.h"
#include "dl_repack.h"

extern "C" DL_API int32_t dl_repack(dl_context* ctx, void* dst, int32_t dst_dtype, const void* src, int32_t src_dtype,
                                    int64_t rows, int64_t cols) {
  const char* fn = "dl_repack";
  DL_TRY(dl_validate_repack(fn, ctx, dst, dst_dtype, src, src_dtype, rows, cols));
  if (rows == 0) return DL_OK;
  dl_r16_repack(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), rows, cols,
                dst_dtype == DL_DTYPE_Q4_0_R16);
  return DL_OK;
}
