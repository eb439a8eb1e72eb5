// Elementwise dtype conversion (f32 / f16 / bf16), device to device, bit for bit like the CPU build.
#include "common.cuh"
#include "half.cuh"

// --- Kernels

// dst[i] = round(widen(src[i])) over a grid-stride loop; f16 and bf16 go through an exact f32.
template <int SRC, int DST>
__global__ void convert_kernel(typename Dtype<DST>::T* __restrict__ dst,
                               const typename Dtype<SRC>::T* __restrict__ src, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    float v;
    if constexpr (SRC == DL_DTYPE_F16) {
      v = dl_f16_to_f32(src[i]);  // exact, NaN payloads included
    } else {
      v = Dtype<SRC>::load(src[i]);
    }
    dst[i] = Dtype<DST>::store(v);
  }
}

template <int SRC, int DST>
static void launch_convert(cudaStream_t stream, void* dst, const void* src, int64_t n) {
  constexpr int threads = 256;
  convert_kernel<SRC, DST><<<dl_grid_for(n, threads), threads, 0, stream>>>(
      static_cast<typename Dtype<DST>::T*>(dst), static_cast<const typename Dtype<SRC>::T*>(src),
      n);
}

// --- Launcher

extern "C" int32_t dl_convert(dl_context* ctx, void* dst, int32_t dst_dtype, const void* src,
                              int32_t src_dtype, uint64_t num_elements) {
  const char* fn = "dl_convert";
  DL_TRY(dl_validate_convert(fn, ctx, dst, dst_dtype, src, src_dtype, num_elements));
  if (num_elements == 0) return DL_OK;
  const int64_t n = (int64_t)num_elements;
  cudaStream_t s = ctx->stream;
  if (dst_dtype == src_dtype) {
    DL_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)dl_dtype_bytes(src_dtype, num_elements),
                                  cudaMemcpyDeviceToDevice, s));
    return DL_OK;
  }
  if (src_dtype == DL_DTYPE_F32 && dst_dtype == DL_DTYPE_F16) {
    launch_convert<DL_DTYPE_F32, DL_DTYPE_F16>(s, dst, src, n);
  } else if (src_dtype == DL_DTYPE_F32) {
    launch_convert<DL_DTYPE_F32, DL_DTYPE_BF16>(s, dst, src, n);
  } else if (src_dtype == DL_DTYPE_F16 && dst_dtype == DL_DTYPE_F32) {
    launch_convert<DL_DTYPE_F16, DL_DTYPE_F32>(s, dst, src, n);
  } else if (src_dtype == DL_DTYPE_F16) {
    launch_convert<DL_DTYPE_F16, DL_DTYPE_BF16>(s, dst, src, n);
  } else if (dst_dtype == DL_DTYPE_F32) {
    launch_convert<DL_DTYPE_BF16, DL_DTYPE_F32>(s, dst, src, n);
  } else {
    launch_convert<DL_DTYPE_BF16, DL_DTYPE_F16>(s, dst, src, n);
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
