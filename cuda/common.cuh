// Shared helpers of the CUDA build: the context, CUDA error checks, scratch and launch helpers
// (argument checks and validators, shared with the CPU build, are in native/).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "denollm.h"
#include "dl_check.h"
#include "dl_graph.h"
#include "dl_validate.h"

// Turns a CUDA error into DL_ERR_DEVICE with file, line and CUDA's own error string.
#define DL_CUDA_CHECK(call)                                                              \
  do {                                                                                   \
    cudaError_t err_ = (call);                                                           \
    if (err_ != cudaSuccess) {                                                           \
      return dl_fail(DL_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,          \
                     cudaGetErrorString(err_));                                          \
    }                                                                                    \
  } while (0)

struct dl_context {
  int device;
  cudaStream_t stream;
  // Opt-in shared memory per block of this device (bytes).
  int max_smem_optin;
  // Device workspace for kernels that need one (split attention partials, the W8A8 formats' int8
  // activation rows). Grows on demand until
  // dl_reserve_workspace fixes it; kernels on the stream use it one after another.
  void* workspace;
  size_t workspace_bytes;
  bool workspace_fixed;
  // dl_memory_stats counters.
  uint64_t num_allocs, num_frees, num_workspace_growths;
  // Device word where kernels report bad metadata (dl_bad_report); 0 = none. Read and cleared by
  // dl_check_bad_metadata after every dl_synchronize and dl_copy_to_host.
  unsigned long long* bad_metadata;
  // Graph capture state and the instantiated graphs (ffi/denollm.h "Graphs").
  DlGraphTable<cudaGraphExec_t> graphs;
  // Streaming multiprocessors of the device: split decode attention sizes its grid by it.
  int num_sms;
  // [DL_ATTN_COUNTERS] split decode attention's per-(sequence, KV head) arrival counters, zero
  // between launches (the last block of each pair resets its own). They share bad_metadata's
  // allocation, right after its word.
  unsigned* attn_counters;
};

// Counters of split decode attention: a call splits only when num_seqs * num_kv_heads is below
// its target grid (cuda/attention.cu), far below this.
constexpr int DL_ATTN_COUNTERS = 8192;

// --- Bad metadata found on the device
//
// Kernels cannot fail a call whose metadata (ids, rows, slots, block ids) lives in device memory,
// so a kernel that meets a bad value guards the access (zeros or a skip, as ffi/denollm.h says) and
// reports it here. The next dl_synchronize or dl_copy_to_host turns the report into
// DL_ERR_INVALID_ARGUMENT, as the CPU build fails the call itself.
enum dl_bad_kind : unsigned {
  DL_BAD_TOKEN_ID = 1,      // dl_embedding: token_ids[index] = value
  DL_BAD_GATHER_ROW = 2,    // dl_gather_rows: rows[index] = value
  DL_BAD_SLOT = 3,          // dl_kv_write: slot_mapping[index] = value
  DL_BAD_COPY_PAIR = 4,     // dl_copy_blocks: pairs[index] = value (out of range)
  DL_BAD_SELF_COPY = 5,     // dl_copy_blocks: pair index copies block value onto itself
  DL_BAD_BLOCK_ID = 6,      // dl_paged_attention: block_tables (flat) [index] = value
  DL_BAD_POSITION = 7,      // dl_paged_attention: token index at position value, outside the cache
  DL_BAD_SAMPLING = 8,      // dl_sample: the parameters of row index are out of range
  DL_BAD_ROPE_KV_SLOT = 9,  // dl_rope_kv_write: slot_mapping[index] = value
  DL_BAD_QUERY_LEN = 10,     // dl_paged_attention: sequence index has value new tokens > max_query_len
};

// Records one bad value as a single 64-bit store (kind:8 | index:24 | value:32), so concurrent
// reports from several blocks cannot tear: one whole report wins. Needs no atomics.
__device__ __forceinline__ void dl_bad_report(unsigned long long* word, unsigned kind,
                                              int64_t index, int32_t value) {
  if (*word != 0) return;  // keep the first report where it is already visible
  const unsigned long long idx = index < 0 ? 0 : (index > 0xFFFFFF ? 0xFFFFFF : index);
  *word = ((unsigned long long)kind << 56) | (idx << 32) | (unsigned)value;
}

// After the stream has drained: DL_ERR_INVALID_ARGUMENT naming the kernel and the bad value if a
// kernel reported one since the last check (and clears the report), else DL_OK.
int32_t dl_check_bad_metadata(dl_context* ctx);

// A device workspace of at least `bytes` for kernel `fn`, valid for the work it enqueues next.
// Growing it (only before dl_reserve_workspace; afterwards a larger need fails with
// DL_ERR_OUT_OF_MEMORY) waits for the stream, so kernels still reading the old buffer finish first.
int32_t dl_workspace(const char* fn, dl_context* ctx, size_t bytes, void** out);

// Workspace bytes of dl_paged_attention for these shapes (shared by the kernel and
// dl_reserve_workspace, which passes the largest ones).
size_t dl_attention_workspace_bytes(int num_sms, int max_smem, int64_t num_tokens, int64_t num_heads, int64_t num_kv_heads,
                                    int64_t head_dim, int64_t max_len);

// Workspace bytes of the W8A8 formats' dl_matmul (its int8 activation rows) for up to max_rows rows
// of max_k columns (cuda/matmul_w8a8.cu).
size_t dl_w8a8_workspace_bytes(int64_t max_rows, int64_t max_k);

// Workspace bytes of dl_matmul's split-k partials on the small-m path (f16 / bf16 weights,
// 8 < m <= 64) for up to max_rows rows, whatever n and k (cuda/matmul.cu).
size_t dl_smallm_workspace_bytes(int64_t max_rows);

// dl_matmul of W8A8, W8A8_MIXED and W8A8_2_4 (cuda/matmul_w8a8.cu), called by dl_matmul's launcher
// after validation, m > 0.
int32_t dl_matmul_w8a8(dl_context* ctx, float* out, const float* x, const void* w, int32_t w_dtype,
                       const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo);

inline bool dl_is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks for a grid-stride loop over n items: enough to fill the GPU, within gridDim.x's limit.
inline unsigned dl_grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return (unsigned)(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}
