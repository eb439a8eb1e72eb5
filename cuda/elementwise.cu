// Elementwise kernels: SwiGLU activation (silu_mul), residual add, row gather.
#include "common.cuh"

// --- Kernels

// out[t, i] = silu(gate[t, i]) * up[t, i] with gate_up rows [gate (dim) | up (dim)].
__global__ void silu_mul_kernel(float* __restrict__ out, const float* __restrict__ gate_up,
                                int32_t dim, int64_t n) {
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = idx / dim, i = idx % dim;
    const float g = gate_up[t * 2 * dim + i], u = gate_up[t * 2 * dim + dim + i];
    out[idx] = g / (1.0f + expf(-g)) * u;
  }
}

// out = a + b with 128-bit accesses over the first n4 float4s (every pointer 16-byte aligned).
__global__ void add4_kernel(float4* out, const float4* a, const float4* b, int64_t n4) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float4 x = a[i], y = b[i];
    out[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  }
}

// out[i] = a[i] + b[i] for i in [begin, n). out may alias a or b: each element is read, then
// written, by one thread.
__global__ void add_kernel(float* out, const float* a, const float* b, int64_t begin, int64_t n) {
  for (int64_t i = begin + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    out[i] = a[i] + b[i];
  }
}

// out[r] = x[rows[r]], one block per output row; an out-of-range row index writes zeros and is
// reported (dl_bad_report).
__global__ void gather_rows_kernel(float* __restrict__ out, const float* __restrict__ x,
                                   const int32_t* __restrict__ rows, int32_t num_src_rows,
                                   int32_t dim, unsigned long long* bad) {
  const int64_t r = blockIdx.x;
  const int32_t src = rows[r];
  float* dst = out + r * dim;
  const bool ok = src >= 0 && src < num_src_rows;
  if (!ok && threadIdx.x == 0) dl_bad_report(bad, DL_BAD_GATHER_ROW, r, src);
  const float* row = x + (int64_t)(ok ? src : 0) * dim;
  for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = ok ? row[i] : 0.0f;
}

// --- Launchers

extern "C" int32_t dl_silu_mul(dl_context* ctx, float* out, const float* gate_up,
                               int32_t num_tokens, int32_t dim) {
  const char* fn = "dl_silu_mul";
  DL_TRY(dl_validate_silu_mul(fn, ctx, out, gate_up, num_tokens, dim));
  if (num_tokens == 0) return DL_OK;
  const int64_t n = (int64_t)num_tokens * dim;
  constexpr int threads = 256;
  silu_mul_kernel<<<dl_grid_for(n, threads), threads, 0, ctx->stream>>>(out, gate_up, dim, n);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}

extern "C" int32_t dl_add(dl_context* ctx, float* out, const float* a, const float* b,
                          uint64_t num_elements) {
  const char* fn = "dl_add";
  DL_TRY(dl_validate_add(fn, ctx, out, a, b, num_elements));
  if (num_elements == 0) return DL_OK;
  const int64_t n = (int64_t)num_elements;
  constexpr int threads = 256;
  int64_t begin = 0;
  if (dl_is_aligned(out, 16) && dl_is_aligned(a, 16) && dl_is_aligned(b, 16)) {
    const int64_t n4 = n / 4;
    if (n4 > 0) {
      add4_kernel<<<dl_grid_for(n4, threads), threads, 0, ctx->stream>>>(
          reinterpret_cast<float4*>(out), reinterpret_cast<const float4*>(a),
          reinterpret_cast<const float4*>(b), n4);
      DL_CUDA_CHECK(cudaGetLastError());
    }
    begin = n4 * 4;
  }
  if (begin < n) {
    add_kernel<<<dl_grid_for(n - begin, threads), threads, 0, ctx->stream>>>(out, a, b, begin, n);
    DL_CUDA_CHECK(cudaGetLastError());
  }
  return DL_OK;
}

extern "C" int32_t dl_gather_rows(dl_context* ctx, float* out, const float* x, const int32_t* rows,
                                  int32_t num_rows, int32_t num_src_rows, int32_t dim) {
  const char* fn = "dl_gather_rows";
  DL_TRY(dl_validate_gather_rows(fn, ctx, out, x, rows, num_rows, num_src_rows, dim));
  if (num_rows == 0) return DL_OK;
  const int threads = dim >= 256 ? 256 : ((dim + 31) / 32) * 32;
  gather_rows_kernel<<<num_rows, threads, 0, ctx->stream>>>(out, x, rows, num_src_rows, dim,
                                                             ctx->bad_metadata);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
