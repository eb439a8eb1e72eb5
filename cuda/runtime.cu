// CUDA build of the denollm ABI: library identity, errors, contexts and device memory.
#include <cstdarg>
#include <cstring>
#include <new>

#include "common.cuh"
#include "dl_status.h"

// --- Errors

static thread_local char g_last_error[1024] = "";

int32_t dl_fail(int32_t status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(g_last_error, sizeof(g_last_error), fmt, args);
  va_end(args);
  return status;
}

extern "C" uint32_t dl_abi_version(void) { return DL_ABI_VERSION; }

extern "C" const char* dl_backend_name(void) { return "cuda"; }

extern "C" const char* dl_status_string(int32_t status) { return dl_status_name(status); }

extern "C" const char* dl_last_error(void) { return g_last_error; }

// --- Context

extern "C" int32_t dl_context_create(int32_t device, int32_t num_threads, dl_context** out) {
  (void)num_threads;  // host threads are unused by the CUDA build
  if (out == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "out must not be NULL");
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return dl_fail(DL_ERR_DEVICE, "no usable CUDA driver or device: %s", cudaGetErrorString(err));
  }
  if (device < 0 || device >= count) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "device must be in [0, %d), got %d", count, device);
  }
  DL_CUDA_CHECK(cudaSetDevice(device));
  int max_smem_optin = 0;
  DL_CUDA_CHECK(
      cudaDeviceGetAttribute(&max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  int num_sms = 0;
  DL_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  dl_context* ctx = new (std::nothrow)
      dl_context{device, nullptr, max_smem_optin, nullptr, 0, false, 0, 0, 0, nullptr, {}, num_sms, nullptr};
  if (ctx == nullptr) return dl_fail(DL_ERR_OUT_OF_MEMORY, "cannot allocate a context");
  err = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
  if (err != cudaSuccess) {
    delete ctx;
    return dl_fail(DL_ERR_DEVICE, "cudaStreamCreate: %s", cudaGetErrorString(err));
  }
  // The bad-metadata word, then the attention counters, all zero.
  const size_t words_bytes = sizeof(unsigned long long) + DL_ATTN_COUNTERS * sizeof(unsigned);
  err = cudaMalloc(reinterpret_cast<void**>(&ctx->bad_metadata), words_bytes);
  if (err == cudaSuccess) err = cudaMemsetAsync(ctx->bad_metadata, 0, words_bytes, ctx->stream);
  ctx->attn_counters = reinterpret_cast<unsigned*>(ctx->bad_metadata + 1);
  if (err == cudaSuccess) err = cudaStreamSynchronize(ctx->stream);
  if (err != cudaSuccess) {
    cudaFree(ctx->bad_metadata);
    cudaStreamDestroy(ctx->stream);
    delete ctx;
    return dl_fail(DL_ERR_DEVICE, "cannot allocate the bad-metadata word: %s", cudaGetErrorString(err));
  }
  *out = ctx;
  return DL_OK;
}

extern "C" int32_t dl_context_destroy(dl_context* ctx) {
  if (ctx == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "ctx must not be NULL");
  DL_TRY(ctx->graphs.forbid("dl_context_destroy"));
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  for (size_t i = 0; i < ctx->graphs.live.size(); i++) {
    if (ctx->graphs.live[i]) DL_CUDA_CHECK(cudaGraphExecDestroy(ctx->graphs.take((int32_t)i)));
  }
  DL_CUDA_CHECK(cudaFree(ctx->workspace));
  DL_CUDA_CHECK(cudaFree(ctx->bad_metadata));
  DL_CUDA_CHECK(cudaStreamDestroy(ctx->stream));
  delete ctx;
  return DL_OK;
}

extern "C" int32_t dl_synchronize(dl_context* ctx) {
  if (ctx == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "ctx must not be NULL");
  DL_TRY(ctx->graphs.forbid("dl_synchronize"));
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  return dl_check_bad_metadata(ctx);
}

// --- Bad metadata reported by kernels

int32_t dl_check_bad_metadata(dl_context* ctx) {
  unsigned long long word = 0;
  DL_CUDA_CHECK(cudaMemcpyAsync(&word, ctx->bad_metadata, sizeof(word), cudaMemcpyDeviceToHost,
                                ctx->stream));
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  if (word == 0) return DL_OK;
  // Cleared first, so the context stays usable once the caller has seen the error.
  DL_CUDA_CHECK(cudaMemsetAsync(ctx->bad_metadata, 0, sizeof(word), ctx->stream));
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  const unsigned kind = (unsigned)(word >> 56);
  const int index = (int)((word >> 32) & 0xFFFFFF);
  const int value = (int)(unsigned)(word & 0xFFFFFFFFu);
  const char* what = " (found by the device; reported at the next synchronize)";
  switch (kind) {
    case DL_BAD_TOKEN_ID:
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_embedding: token_ids[%d] = %d is outside [0, vocab_size)%s",
                     index, value, what);
    case DL_BAD_GATHER_ROW:
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_gather_rows: rows[%d] = %d is outside [0, num_src_rows)%s",
                     index, value, what);
    case DL_BAD_SLOT:
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "dl_kv_write: slot_mapping[%d] = %d is not below num_blocks * block_size%s", index, value,
                     what);
    case DL_BAD_ROPE_KV_SLOT:
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "dl_rope_kv_write: slot_mapping[%d] = %d is not below num_blocks * block_size%s", index,
                     value, what);
    case DL_BAD_COPY_PAIR:
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_copy_blocks: pairs[%d] = %d is outside [0, num_blocks)%s",
                     index, value, what);
    case DL_BAD_SELF_COPY:
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_copy_blocks: pair %d copies block %d onto itself%s", index,
                     value, what);
    case DL_BAD_BLOCK_ID:
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "dl_paged_attention: block_tables entry %d (flat) = %d is outside [0, num_blocks)%s", index,
                     value, what);
    case DL_BAD_POSITION:
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "dl_paged_attention: query token %d sits at position %d, outside [0, max_blocks_per_seq * "
                     "block_size) (seq_lens or query_start out of range)%s",
                     index, value, what);
    case DL_BAD_QUERY_LEN:
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "dl_paged_attention: sequence %d has %d new tokens, more than max_query_len%s", index,
                     value, what);
    case DL_BAD_SAMPLING:
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "dl_sample: row %d needs temperature >= 0, top_p in (0, 1] and min_p in [0, 1]%s", index,
                     what);
    default:
      return dl_fail(DL_ERR_INTERNAL, "a kernel reported bad metadata of unknown kind %u", kind);
  }
}

// --- Kernel workspace

static int32_t grow_workspace(const char* fn, dl_context* ctx, size_t bytes) {
  // A sync and a cudaMalloc are illegal in a capture, and a graph keeps the old address.
  DL_TRY(ctx->graphs.forbid(fn));
  DL_TRY(ctx->graphs.forbid_move(fn));
  // Kernels already enqueued may still read the old buffer.
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  if (ctx->workspace != nullptr) {
    DL_CUDA_CHECK(cudaFree(ctx->workspace));
    ctx->num_frees++;
  }
  ctx->workspace = nullptr;
  ctx->workspace_bytes = 0;
  cudaError_t err = cudaMalloc(&ctx->workspace, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: the next launcher's check must not see it
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cudaMalloc of %zu bytes of kernel workspace failed", fn,
                   bytes);
  }
  DL_CUDA_CHECK(err);
  ctx->workspace_bytes = bytes;
  ctx->num_allocs++;
  ctx->num_workspace_growths++;
  return DL_OK;
}

int32_t dl_workspace(const char* fn, dl_context* ctx, size_t bytes, void** out) {
  if (bytes > ctx->workspace_bytes) {
    if (ctx->workspace_fixed) {
      return dl_fail(DL_ERR_OUT_OF_MEMORY,
                     "%s: this call needs %zu bytes of kernel workspace; dl_reserve_workspace "
                     "reserved %zu",
                     fn, bytes, ctx->workspace_bytes);
    }
    // Unreserved: grow in steps of at least 1 MiB so small shapes do not regrow every call.
    DL_TRY(grow_workspace(fn, ctx, bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes));
  }
  *out = ctx->workspace;
  return DL_OK;
}

extern "C" int32_t dl_reserve_workspace(dl_context* ctx, int32_t max_num_tokens, int32_t num_heads,
                                        int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                                        int32_t max_blocks_per_seq, int32_t max_matmul_k, uint64_t* out_bytes) {
  const char* fn = "dl_reserve_workspace";
  if (ctx != nullptr) DL_TRY(ctx->graphs.forbid(fn));
  DL_TRY(dl_validate_reserve_workspace(fn, ctx, max_num_tokens, num_heads, num_kv_heads, head_dim,
                                       block_size, max_blocks_per_seq, max_matmul_k, out_bytes));
  // Attention and dl_matmul run one after another on the stream, so they share one buffer: the
  // largest of their needs (attention, W8A8 activations, small-m split-k partials).
  const size_t attention = dl_attention_workspace_bytes(
      ctx->num_sms, ctx->max_smem_optin, max_num_tokens, num_heads, num_kv_heads, head_dim, (int64_t)max_blocks_per_seq * block_size);
  const size_t w8a8 = dl_w8a8_workspace_bytes(max_num_tokens, max_matmul_k);
  const size_t smallm = dl_smallm_workspace_bytes(max_num_tokens);
  size_t need = attention > w8a8 ? attention : w8a8;
  if (smallm > need) need = smallm;
  if (need > ctx->workspace_bytes) DL_TRY(grow_workspace(fn, ctx, need));
  ctx->workspace_fixed = true;
  *out_bytes = ctx->workspace_bytes;
  return DL_OK;
}

extern "C" int32_t dl_memory_stats(dl_context* ctx, uint64_t* out) {
  const char* fn = "dl_memory_stats";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "out", out));
  out[0] = ctx->num_allocs;
  out[1] = ctx->num_frees;
  out[2] = ctx->workspace_bytes;
  out[3] = ctx->num_workspace_growths;
  return DL_OK;
}

// --- Memory: plain cudaMalloc only (never managed memory).

extern "C" int32_t dl_alloc(dl_context* ctx, uint64_t size_bytes, void** out) {
  if (ctx == nullptr || out == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "ctx and out must not be NULL");
  }
  DL_TRY(ctx->graphs.forbid("dl_alloc"));
  void* ptr = nullptr;
  cudaError_t err = cudaMalloc(&ptr, size_bytes == 0 ? 1 : size_bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: the next launcher's check must not see it
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "cudaMalloc of %llu bytes failed",
                   (unsigned long long)size_bytes);
  }
  DL_CUDA_CHECK(err);
  ctx->num_allocs++;
  *out = ptr;
  DL_CUDA_CHECK(cudaMemsetAsync(ptr, 0, size_bytes, ctx->stream));
  return DL_OK;
}

extern "C" int32_t dl_free(dl_context* ctx, void* ptr) {
  if (ctx == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "ctx must not be NULL");
  DL_TRY(ctx->graphs.forbid("dl_free"));
  DL_CUDA_CHECK(cudaFree(ptr));
  if (ptr != nullptr) ctx->num_frees++;
  return DL_OK;
}

// Weights must be in device memory: the loader falls back to a copy when mapping is unsupported.
extern "C" int32_t dl_map_file(dl_context* ctx, const char* path, uint64_t file_offset,
                               uint64_t size_bytes, void** out) {
  (void)ctx, (void)path, (void)file_offset, (void)size_bytes;
  if (out != nullptr) *out = nullptr;
  return dl_fail(DL_ERR_UNSUPPORTED, "dl_map_file: the CUDA build keeps weights in device memory");
}

extern "C" int32_t dl_unmap_file(dl_context* ctx, void* ptr, uint64_t size_bytes) {
  (void)ctx, (void)ptr, (void)size_bytes;
  return dl_fail(DL_ERR_UNSUPPORTED, "dl_unmap_file: the CUDA build maps no files");
}

extern "C" int32_t dl_copy_to_device(dl_context* ctx, void* dst, const void* src,
                                     uint64_t size_bytes) {
  if (ctx == nullptr || (size_bytes > 0 && (dst == nullptr || src == nullptr))) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "ctx, dst and src must not be NULL");
  }
  DL_TRY(ctx->graphs.forbid("dl_copy_to_device"));
  DL_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_bytes, cudaMemcpyHostToDevice, ctx->stream));
  // The host buffer may be reused as soon as we return.
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  return DL_OK;
}

extern "C" int32_t dl_copy_to_host(dl_context* ctx, void* dst, const void* src,
                                   uint64_t size_bytes) {
  if (ctx == nullptr || (size_bytes > 0 && (dst == nullptr || src == nullptr))) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "ctx, dst and src must not be NULL");
  }
  DL_TRY(ctx->graphs.forbid("dl_copy_to_host"));
  DL_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_bytes, cudaMemcpyDeviceToHost, ctx->stream));
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  return dl_check_bad_metadata(ctx);
}

// --- Device memory info and pinned host staging

extern "C" int32_t dl_memory_info(dl_context* ctx, uint64_t* free_bytes, uint64_t* total_bytes) {
  if (ctx == nullptr || free_bytes == nullptr || total_bytes == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_memory_info: ctx, free_bytes and total_bytes must not be NULL");
  }
  // cudaMemGetInfo reports the current device; the context's may not be current on this thread.
  DL_CUDA_CHECK(cudaSetDevice(ctx->device));
  size_t free_now = 0, total = 0;
  DL_CUDA_CHECK(cudaMemGetInfo(&free_now, &total));
  *free_bytes = free_now;
  *total_bytes = total;
  return DL_OK;
}

extern "C" int32_t dl_host_alloc(dl_context* ctx, uint64_t size_bytes, void** out) {
  if (ctx == nullptr || out == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_host_alloc: ctx and out must not be NULL");
  }
  *out = nullptr;
  if (size_bytes == 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_host_alloc: size_bytes must be positive");
  void* ptr = nullptr;
  // Portable: pinned for every context of the process, so any stream may copy through it.
  cudaError_t err = cudaHostAlloc(&ptr, size_bytes, cudaHostAllocPortable);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: the next launcher's check must not see it
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "dl_host_alloc: cudaHostAlloc of %llu pinned bytes failed",
                   (unsigned long long)size_bytes);
  }
  DL_CUDA_CHECK(err);
  // cudaHostAlloc returns page-aligned memory, so the 64-byte promise holds.
  std::memset(ptr, 0, size_bytes);
  *out = ptr;
  return DL_OK;
}

extern "C" int32_t dl_host_free(dl_context* ctx, void* ptr) {
  if (ctx == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_host_free: ctx must not be NULL");
  if (ptr == nullptr) return DL_OK;
  const cudaError_t err = cudaFreeHost(ptr);
  if (err == cudaErrorInvalidValue) {
    (void)cudaGetLastError();  // not sticky: the next launcher's check must not see it
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_host_free: %p was not allocated by dl_host_alloc", ptr);
  }
  DL_CUDA_CHECK(err);
  return DL_OK;
}

// --- Graphs: stream capture on the context's stream (ffi/denollm.h "Graphs")

extern "C" int32_t dl_graph_begin(dl_context* ctx) {
  const char* fn = "dl_graph_begin";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(ctx->graphs.begin(fn));
  // Thread-local mode: this thread's unsafe calls (cudaMalloc, syncs) fail during the capture,
  // while other contexts of the process on other threads carry on.
  const cudaError_t err = cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal);
  if (err != cudaSuccess) {
    ctx->graphs.capturing = false;
    return dl_fail(DL_ERR_DEVICE, "%s: cudaStreamBeginCapture: %s", fn, cudaGetErrorString(err));
  }
  return DL_OK;
}

extern "C" int32_t dl_graph_end(dl_context* ctx, int32_t* graph_id) {
  const char* fn = "dl_graph_end";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "graph_id", graph_id));
  if (!ctx->graphs.capturing) return ctx->graphs.end(fn);
  // The CUDA capture always ends here, so the stream is usable whatever went wrong inside it.
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(ctx->stream, &graph);
  const int32_t status = ctx->graphs.end(fn);
  if (status != DL_OK || err != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (status != DL_OK) return status;
    return dl_fail(DL_ERR_DEVICE, "%s: cudaStreamEndCapture: %s (a call in the capture failed or was illegal)",
                   fn, cudaGetErrorString(err));
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    return dl_fail(DL_ERR_DEVICE, "%s: cudaGraphInstantiate: %s", fn, cudaGetErrorString(inst));
  }
  try {
    *graph_id = ctx->graphs.add(exec);
  } catch (const std::bad_alloc&) {
    cudaGraphExecDestroy(exec);
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot grow the graph table", fn);
  }
  return DL_OK;
}

extern "C" int32_t dl_graph_launch(dl_context* ctx, int32_t graph_id) {
  const char* fn = "dl_graph_launch";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(ctx->graphs.forbid(fn));
  DL_TRY(ctx->graphs.check_id(fn, graph_id));
  DL_CUDA_CHECK(cudaGraphLaunch(ctx->graphs.execs[(size_t)graph_id], ctx->stream));
  return DL_OK;
}

extern "C" int32_t dl_graph_destroy(dl_context* ctx, int32_t graph_id) {
  const char* fn = "dl_graph_destroy";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(ctx->graphs.check_id(fn, graph_id));
  DL_CUDA_CHECK(cudaGraphExecDestroy(ctx->graphs.take(graph_id)));
  return DL_OK;
}
