// denollm.h — the one C ABI between the TypeScript engine and its native kernels (CPU and CUDA builds).
//
// Conventions (read these before adding a function):
// - Every function returns a dl_status (int32); on failure dl_last_error() gives a message for the
//   calling thread. Nothing in the library calls exit() or abort().
// - "Device memory" is memory from dl_alloc(): plain host memory in the CPU build, cudaMalloc memory
//   in the CUDA build. Every array argument of a kernel is device memory, including small metadata
//   (token ids, positions, slot mappings, block tables), so the engine is backend-agnostic.
// - Metadata (the int32 arrays of ids, rows, slots, block pairs, block tables, seq_lens,
//   query_start) must hold values in the ranges stated at each function. A bad value is an error in
//   both builds: DL_ERR_INVALID_ARGUMENT with a message naming the array, the index and the value.
//   The CPU build reads the metadata on the host and fails the call itself, writing nothing. The
//   CUDA build cannot read device memory before it launches, so the call returns DL_OK; the kernel
//   guards every index (a bad value never reads or writes outside the buffers; each function states
//   "CUDA:" what it writes instead), records the first bad value it meets on the device, and the
//   next dl_synchronize or dl_copy_to_host fails with that error (after completing its own work)
//   and clears it, so the context stays usable. Outputs of a call with bad metadata are
//   unspecified in both builds; the engine treats the error as a bug, never as a result.
// - Activations are f32. Weights are in one of the formats of DL_DTYPE_TABLE (dl_dtype); compute
//   accumulates in f32. With quantized weights, the CPU build's dl_matmul first quantizes each
//   activation row per block to int8 (ggml's q8_0 / q8_K idea: blocks of 32 with f16-rounded scale
//   and sum, and for the K formats blocks of 256 with 16-element sums) and takes integer dot
//   products block by block; the CUDA build dequantizes weights in registers against f32 rows. The
//   W8A8 formats quantize activations per token on both builds (see below).
// - Shapes are written outermost first, row-major: [rows, cols].
// - The KV cache of one layer is two buffers (K and V), each [num_blocks, num_kv_heads, block_size,
//   head_dim] in the cache dtype. A token's slot is block_id * block_size + offset_in_block.
// - Kernels are enqueued on the context's stream; dl_synchronize() waits for them. The CPU build
//   runs them synchronously.
// - This header is parsed by ffi/gen_symbols.ts: keep each declaration as `DL_API <type> <name>(...);`
//   with one parameter per line, and use only the scalar types in that generator's table.
#ifndef DENOLLM_H
#define DENOLLM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DL_API __declspec(dllexport)
#else
#define DL_API __attribute__((visibility("default")))
#endif

// Bumped on every incompatible change; the TypeScript side refuses a library with another value.
#define DL_ABI_VERSION 6

typedef enum dl_status {
  DL_OK = 0,
  DL_ERR_INVALID_ARGUMENT = 1,
  DL_ERR_OUT_OF_MEMORY = 2,
  DL_ERR_UNSUPPORTED = 3,
  DL_ERR_DEVICE = 4,
  DL_ERR_NOT_IMPLEMENTED = 5,
  DL_ERR_INTERNAL = 6,
} dl_status;

// The one table of storage formats (ffi/formats.ts mirrors it; tests/formats_test.ts compares them
// row by row). A format stores its elements in blocks of block_len elements taking block_bytes
// bytes each (1 and the element size for plain types), so a [rows, cols] matrix takes
// rows * (cols / block_len * block_bytes + row_bytes) bytes, cols a multiple of block_len: the
// rows' blocks come first, row after row, then row_bytes per row of per-row data (the f32 scales
// of INT8), row after row. Columns: enum suffix, dl_dtype id (dense from 0), lower-case name,
// GGUF/ggml type id (-1: not a GGUF type), the name as GGUF and safetensors spell it (denollm's own
// formats get names no GGUF or safetensors file uses), block_len, block_bytes, row_bytes. Adding a
// format is one row here plus its kernels; a kernel that has none for a format fails with
// DL_ERR_UNSUPPORTED naming it.
//
// The quantized rows are ggml's block layouts, byte for byte (native/dl_quant.h declares them),
// so GGUF tensors load as they are. INT8 and INT4 are denollm's --quantization formats:
//   INT8: int8 weights, one f32 scale per output row (w = scale * q), symmetric.
//   INT4: groups of 128 along k, each an f16 scale d and an f16 offset m then 64 bytes of 4-bit
//         values, low nibbles first (w = d * q + m, q in [0, 15]): asymmetric, the zero point
//         folded into m.
// The rows from W8A8 on are the activation-quantized and 2:4 sparse formats (issue 11; their
// kernels are cpu/matmul/w8a8*.{cpp,h} and cpu/matmul/sparse*.{cpp,h}, cuda/matmul_w8a8.cu for the
// W8A8 rows and cuda/matmul_quant.cu for the weight-only 2:4 rows):
//   W8A8: INT8's int8 rows, then per row the f32 scale and the int32 sum of the row's int8 values
//         (what u8 x s8 dot-product instructions need to take activations offset by 128).
//         dl_matmul quantizes each activation row whole (per token, one f32 scale, q = round(x *
//         127 / max|x|)) and accumulates the row's products in int32: out = s_x * s_w *
//         sum(q_x * q_w). SmoothQuant's factors are folded into the weights and the preceding
//         RMSNorm at load, so nothing else is needed at run time.
//   W8A8_MIXED: LLM.int8()'s decomposition: W8A8 for all input channels but up to 16 outlier
//         ones, which stay in floating point. Rows as W8A8 (the outlier columns stored as 0), then
//         72 bytes per row: the f32 scale, the int32 sum, 16 uint16 outlier column ids (0xFFFF:
//         unused; every row holds the same list, the kernel reads row 0's; ids < k, distinct),
//         then the row's 16 weights at those columns in f16. The activation's outlier channels are
//         left out of its int8 scale and dotted in f32.
//   2:4 sparse rows: every group of 4 consecutive elements along k has at most 2 non-zeros; a
//         block of 32 stores its 16 kept values (2 per group, in order) then 4 bytes of 2-bit
//         positions: byte b holds groups 2b (low nibble) and 2b+1 (high nibble), each nibble
//         p0 | p1 << 2 with p0 < p1 the kept positions in the group.
//   F16_2_4: the kept values in f16 (36 bytes per 32).
//   INT8_2_4: the kept values in int8 (20 bytes per 32), one f32 scale per row after all rows
//         (w = scale * q, as INT8; activations in blocks of 32 as INT8's).
//   W8A8_2_4: INT8_2_4's blocks, then per row the f32 scale and the int32 sum of its kept values,
//         with W8A8's per-token activations.
//   INT4_2_4: groups of 128 along k as INT4 (f16 d, f16 m, w = d * q + m), then the 64 kept 4-bit
//         values (32 bytes: byte i holds group i's two, the first in the low nibble) and the 16
//         bytes of positions of the 32 groups: 52 bytes per 128. A pruned element is 0, not m.
//   F16_2_4 and INT4_2_4 take f32 activations (each stored block expanded once per tile of rows).
//   The CUDA build takes INT8_2_4's activations in f32 too (as its INT8's), and for W8A8_MIXED
//   treats an outlier id >= k, or one repeating an earlier slot, as unused where the CPU build
//   fails the call (the ids live in device memory; checking them would cost a copy per call).
// Q4_0_R16 is Q4_0 repacked for the CPU build's kernels (dl_repack, at load; never on disk): the
// same bytes rearranged so one vector load holds 16 weight rows, and the only row of the table
// whose rows are not stored one after another. Rows [0, 16 * floor(rows / 16)) form groups of 16
// rows; group g takes 16 * cols / 32 * 18 bytes from byte g * 16 * (cols / 32 * 18) on, and within
// it block b (values [32b, 32b + 32) of each of its rows) takes 288 bytes from 288 * b: the 16
// rows' f16 scales d (row r at bytes 2r), then for t = 0..3 64 bytes holding row r's qs[4t, 4t + 4)
// at bytes 32 + 64t + 4r (qs as Q4_0's: qs[j] holds value j in its low nibble, j + 16 in its high).
// The last rows % 16 rows follow as plain Q4_0 rows. dl_matmul, dl_embedding and dl_dequantize
// read it in the CPU build (the same values as the Q4_0 matrix it came from); CUDA has no kernel
// for it (DL_ERR_UNSUPPORTED).
#define DL_DTYPE_TABLE(X)                                     \
  X(F32, 0, "f32", 0, "F32", 1, 4, 0)                         \
  X(F16, 1, "f16", 1, "F16", 1, 2, 0)                         \
  X(BF16, 2, "bf16", 30, "BF16", 1, 2, 0)                     \
  X(Q4_0, 3, "q4_0", 2, "Q4_0", 32, 18, 0)                    \
  X(Q4_1, 4, "q4_1", 3, "Q4_1", 32, 20, 0)                    \
  X(Q5_0, 5, "q5_0", 6, "Q5_0", 32, 22, 0)                    \
  X(Q5_1, 6, "q5_1", 7, "Q5_1", 32, 24, 0)                    \
  X(Q8_0, 7, "q8_0", 8, "Q8_0", 32, 34, 0)                    \
  X(Q2_K, 8, "q2_k", 10, "Q2_K", 256, 84, 0)                  \
  X(Q3_K, 9, "q3_k", 11, "Q3_K", 256, 110, 0)                 \
  X(Q4_K, 10, "q4_k", 12, "Q4_K", 256, 144, 0)                \
  X(Q5_K, 11, "q5_k", 13, "Q5_K", 256, 176, 0)                \
  X(Q6_K, 12, "q6_k", 14, "Q6_K", 256, 210, 0)                \
  X(Q8_K, 13, "q8_k", 15, "Q8_K", 256, 292, 0)                \
  X(INT8, 14, "int8", -1, "INT8", 1, 1, 4)                    \
  X(INT4, 15, "int4", -1, "INT4", 128, 68, 0)                 \
  X(W8A8, 16, "w8a8", -1, "W8A8", 1, 1, 8)                    \
  X(W8A8_MIXED, 17, "w8a8_mixed", -1, "W8A8_MIXED", 1, 1, 72) \
  X(F16_2_4, 18, "f16_2_4", -1, "F16_2_4", 32, 36, 0)         \
  X(INT8_2_4, 19, "int8_2_4", -1, "INT8_2_4", 32, 20, 4)      \
  X(W8A8_2_4, 20, "w8a8_2_4", -1, "W8A8_2_4", 32, 20, 8)      \
  X(INT4_2_4, 21, "int4_2_4", -1, "INT4_2_4", 128, 52, 0)   \
  X(Q4_0_R16, 22, "q4_0_r16", -1, "Q4_0_R16", 32, 18, 0)

typedef enum dl_dtype {
#define DL_DTYPE_ENUM_ROW_(suffix, id, name, ggml_type, gguf_name, block_len, block_bytes, row_bytes) \
  DL_DTYPE_##suffix = id,
  DL_DTYPE_TABLE(DL_DTYPE_ENUM_ROW_)
#undef DL_DTYPE_ENUM_ROW_
} dl_dtype;

// Number of rows of DL_DTYPE_TABLE: valid dl_dtype ids are [0, DL_DTYPE_COUNT).
#define DL_DTYPE_COUNT_ROW_(suffix, id, name, ggml_type, gguf_name, block_len, block_bytes, row_bytes) +1
#define DL_DTYPE_COUNT (0 DL_DTYPE_TABLE(DL_DTYPE_COUNT_ROW_))

typedef enum dl_rope_style {
  // Hugging Face rotate_half: pairs (i, i + rotary_dim / 2).
  DL_ROPE_NEOX = 0,
  // Original Llama / GGUF llama: pairs (2i, 2i + 1).
  DL_ROPE_INTERLEAVED = 1,
} dl_rope_style;

// Opaque per-device state: stream, thread count, kernel workspace, memory counters.
typedef struct dl_context dl_context;

// --- Library identity and errors

// DL_ABI_VERSION of the built library.
DL_API uint32_t dl_abi_version(void);

// "cpu" or "cuda": static string.
DL_API const char* dl_backend_name(void);

// Static string naming a dl_status value ("unknown status" for others).
DL_API const char* dl_status_string(int32_t status);

// Message of the last failure on this thread; empty string if none. Valid until the next call.
DL_API const char* dl_last_error(void);

// --- Context and memory

// Creates a context on `device` (ignored by the CPU build) using `num_threads` CPU threads
// (0 = all cores). Writes the handle to *out.
DL_API int32_t dl_context_create(
    int32_t device,
    int32_t num_threads,
    dl_context** out);

DL_API int32_t dl_context_destroy(
    dl_context* ctx);

// Waits until every kernel enqueued on the context has finished. CUDA: then fails with
// DL_ERR_INVALID_ARGUMENT if a kernel met bad metadata since the last check (see "Metadata").
DL_API int32_t dl_synchronize(
    dl_context* ctx);

// Allocates size_bytes of device memory (64-byte aligned), zero-filled. Writes the pointer to *out.
// The CPU build maps blocks of 1 MiB or more lazily: their pages take resident memory only once
// written, so a large KV cache or step workspace costs memory as it is used.
DL_API int32_t dl_alloc(
    dl_context* ctx,
    uint64_t size_bytes,
    void** out);

DL_API int32_t dl_free(
    dl_context* ctx,
    void* ptr);

// Maps size_bytes of the file at path, from byte file_offset on, read-only (MAP_PRIVATE,
// PROT_READ) and writes the address of byte file_offset to *out: weights whose bytes on disk are
// what the kernels read are used in place of a copy, so they cost page cache, shared and
// evictable, instead of private memory. The file must hold the whole range (checked: a shorter
// file fails with DL_ERR_INVALID_ARGUMENT). The mapping is not memory from dl_alloc: release it
// with dl_unmap_file, never dl_free; dl_memory_stats does not count it. Writing through *out
// faults. A file truncated while mapped makes a later read of the lost pages raise SIGBUS (as
// llama.cpp's mmap does), so a loaded model's file must not be rewritten in place; replacing it by
// rename is safe. CUDA: DL_ERR_UNSUPPORTED (weights live in device memory; load a copy).
DL_API int32_t dl_map_file(
    dl_context* ctx,
    const char* path,      // NUL-terminated
    uint64_t file_offset,
    uint64_t size_bytes,
    void** out);

// Releases a mapping made by dl_map_file: ptr and size_bytes as it was given and returned.
// CUDA: DL_ERR_UNSUPPORTED.
DL_API int32_t dl_unmap_file(
    dl_context* ctx,
    void* ptr,
    uint64_t size_bytes);

// Reserves, once at start-up, the context's kernel workspace for the largest step the engine will
// run: up to max_num_tokens tokens (and sequences) with these attention shapes and contexts of up
// to max_blocks_per_seq * block_size positions, and dl_matmul calls of up to max_num_tokens rows and
// max_matmul_k columns. It covers every kernel's scratch (the CPU build: per-thread attention and
// RoPE scratch for the context's thread count, the quantized activation rows of dl_matmul; the CUDA
// build: split decode attention partials, the W8A8 formats' int8 activation rows and the split-k
// partials of f16 / bf16 dl_matmul with 8 < m <= 64, the largest of the three — its other
// quantized formats keep activations in f32). Writes the workspace bytes now held to *out_bytes.
// Afterwards no kernel allocates: a call that would need more than the reservation fails with
// DL_ERR_OUT_OF_MEMORY naming both sizes (the CUDA f16 / bf16 dl_matmul takes fewer k splits
// instead). Before any reservation kernels grow the workspace on
// demand. Calling it again may grow the reservation (it never shrinks).
DL_API int32_t dl_reserve_workspace(
    dl_context* ctx,
    int32_t max_num_tokens,
    int32_t num_heads,
    int32_t num_kv_heads,
    int32_t head_dim,
    int32_t block_size,
    int32_t max_blocks_per_seq,
    int32_t max_matmul_k,  // the largest k of any dl_matmul (its activation quantization scratch)
    uint64_t* out_bytes);

// Writes the context's memory counters to out[0..3]:
//   out[0] device allocations made by this context: every dl_alloc plus every workspace growth;
//   out[1] frees: every dl_free of a non-NULL pointer plus every old workspace given back on growth;
//   out[2] bytes of kernel workspace held now;
//   out[3] workspace growths (each also counted in out[0]).
DL_API int32_t dl_memory_stats(
    dl_context* ctx,
    uint64_t* out);  // [4]

// Writes the memory of the context's device: *free_bytes that nobody holds now and *total_bytes in
// all, what --gpu-memory-utilization sizes the KV cache from. CUDA: cudaMemGetInfo, device-wide, so
// other processes' allocations and the CUDA context itself count as used. CPU: the host's memory
// (the CPU build's "device" memory), from /proc/meminfo's MemAvailable and MemTotal, or sysconf's
// available and physical pages where there is no /proc; under a cgroup v2 memory limit smaller
// than that, the limit is the total and the limit less the cgroup's usage caps the free bytes.
// dl_alloc's lazily mapped blocks count as used only once their pages are written.
DL_API int32_t dl_memory_info(
    dl_context* ctx,
    uint64_t* free_bytes,    // [1] out
    uint64_t* total_bytes);  // [1] out

// Allocates size_bytes (> 0) of host memory for staging copies to and from device memory: CUDA:
// page-locked (cudaHostAlloc), so dl_copy_to_device and dl_copy_to_host move it by DMA straight
// from and to it, without the driver's bounce through a pinned buffer of its own; CPU: plain
// memory (no copy there goes through DMA). 64-byte aligned, zero-filled. Writes the pointer to
// *out. Not device memory: kernels must not read it; dl_memory_stats does not count it; release it
// with dl_host_free, never dl_free.
DL_API int32_t dl_host_alloc(
    dl_context* ctx,
    uint64_t size_bytes,
    void** out);

// Frees memory from dl_host_alloc (NULL: nothing). A pointer that dl_host_alloc did not return is
// DL_ERR_INVALID_ARGUMENT (the CPU build recognises dl_alloc blocks; CUDA reports what
// cudaFreeHost says).
DL_API int32_t dl_host_free(
    dl_context* ctx,
    void* ptr);

// Host → device copy of size_bytes.
DL_API int32_t dl_copy_to_device(
    dl_context* ctx,
    void* dst,        // device [size_bytes]
    const void* src,  // host [size_bytes]
    uint64_t size_bytes);

// Device → host copy of size_bytes; returns once the data is on the host. CUDA: like
// dl_synchronize, then fails if a kernel met bad metadata (see "Metadata"); the data is copied.
DL_API int32_t dl_copy_to_host(
    dl_context* ctx,
    void* dst,        // host [size_bytes]
    const void* src,  // device [size_bytes]
    uint64_t size_bytes);

// Converts num_elements values between the plain dtypes F32, F16 and BF16 (device to device);
// dl_quantize and dl_dequantize handle the blocked formats.
DL_API int32_t dl_convert(
    dl_context* ctx,
    void* dst,        // device [num_elements] of dst_dtype
    int32_t dst_dtype,
    const void* src,  // device [num_elements] of src_dtype
    int32_t src_dtype,
    uint64_t num_elements);

// Quantizes a [rows, cols] f32 matrix into dst_dtype, one of the blocked formats or INT8 (cols a
// multiple of its block length; the layout is DL_DTYPE_TABLE's). importance, when not NULL, weighs
// each column's squared error in the formats whose quantizer searches for scales (ggml's imatrix
// idea; NULL weighs all columns alike). Both buffers are device memory; the CUDA build copies
// through the host and runs the CPU build's quantizers, so both give the same bytes.
DL_API int32_t dl_quantize(
    dl_context* ctx,
    void* dst,                // device [rows, cols] of dst_dtype
    int32_t dst_dtype,
    const float* src,         // device [rows, cols]
    int64_t rows,
    int64_t cols,
    const float* importance); // device [cols], or NULL

// Expands a [rows, cols] matrix of any format of DL_DTYPE_TABLE to f32: for GGUF's types, the same
// floats as ggml's dequantize_row_* (tests/quant_blocks_test.ts checks this bit for bit).
DL_API int32_t dl_dequantize(
    dl_context* ctx,
    float* dst,               // device [rows, cols]
    const void* src,          // device [rows, cols] of src_dtype
    int32_t src_dtype,
    int64_t rows,
    int64_t cols);

// Rearranges a [rows, cols] matrix between a format and its repacked row of DL_DTYPE_TABLE (Q4_0
// to Q4_0_R16 or back; cols a multiple of 32): the same number of bytes, the same values. dst and
// src must not overlap. The loader repacks each Q4_0 matrix once, where the build can, so that
// dl_matmul reads 16 weight rows per vector load. CUDA: DL_ERR_UNSUPPORTED (its kernels read Q4_0).
DL_API int32_t dl_repack(
    dl_context* ctx,
    void* dst,        // device [rows, cols] of dst_dtype
    int32_t dst_dtype,
    const void* src,  // device [rows, cols] of src_dtype
    int32_t src_dtype,
    int64_t rows,
    int64_t cols);

// --- Graphs: one step's kernels captured once, replayed per step
//
// A decode step launches a few hundred small kernels; a CUDA graph replays all of them with one
// host call. The engine captures one graph per batch-size bucket and replays it on later steps,
// after writing the step's metadata into the same fixed buffers (src/model/workspace.ts).
// Contract (both builds check it, so the CPU tests catch an illegal forward pass):
// - Between dl_graph_begin and dl_graph_end only kernel calls (dl_embedding ... dl_sample,
//   dl_convert, dl_dequantize) may run, on buffers that stay at their addresses for as long as
//   the graph is used, with the kernel workspace already reserved (dl_reserve_workspace) so no
//   kernel grows it. Everything a kernel reads is read when the graph runs, not when it is
//   captured: pointers and scalar arguments are frozen, the contents of device memory are not.
// - A call that waits for the device or moves memory through the host (dl_synchronize,
//   dl_copy_to_device, dl_copy_to_host, dl_quantize, dl_alloc, dl_free, dl_reserve_workspace,
//   dl_graph_begin, dl_graph_launch, dl_context_destroy) fails during a capture with
//   DL_ERR_INVALID_ARGUMENT and spoils it: the next dl_graph_end fails too (ending the capture,
//   so the context stays usable). A kernel call that fails its argument checks fails as it would
//   eagerly and is left out of the graph; the caller ends the capture and destroys that graph
//   (the engine does). A capture that meets a CUDA error makes dl_graph_end fail (DL_ERR_DEVICE).
// - Graph ids are the context's; launching or destroying an id that dl_graph_end did not return,
//   or one already destroyed, is DL_ERR_INVALID_ARGUMENT. While any graph is live, a call that
//   would grow (so move) the kernel workspace fails with DL_ERR_INVALID_ARGUMENT: the graphs
//   hold its address. Every other buffer is the caller's to keep in place until it destroys them.
// CUDA: stream capture on the context's stream (cudaStreamCaptureModeThreadLocal); kernels are
// recorded, not run, until dl_graph_launch, which enqueues the whole graph like one kernel.
// CPU: kernels run synchronously, so a capture runs them eagerly and records nothing, and
// dl_graph_launch of a valid id does nothing. The CPU engine therefore never replays a graph
// (NativeBackend.replaysGraphs); a replayable list of closures would buy nothing there, as the
// host cost of a CPU kernel call is small beside its work.

// Starts capturing the calls made on this context.
DL_API int32_t dl_graph_begin(
    dl_context* ctx);

// Ends the capture and makes it a graph; writes its id (>= 0) to *graph_id.
DL_API int32_t dl_graph_end(
    dl_context* ctx,
    int32_t* graph_id);  // [1] out

// Enqueues the graph's kernels on the context's stream, in the order they were captured.
DL_API int32_t dl_graph_launch(
    dl_context* ctx,
    int32_t graph_id);

// Frees the graph; its id may be handed out again by a later dl_graph_end.
DL_API int32_t dl_graph_destroy(
    dl_context* ctx,
    int32_t graph_id);

// --- Kernels

// out[t] = table[token_ids[t]] converted (or dequantized) to f32; ids in [0, vocab_size) (a bad id
// is an error: see "Metadata" above). CUDA: the row of a bad id is written as zeros.
DL_API int32_t dl_embedding(
    dl_context* ctx,
    float* out,                // [num_tokens, dim]
    const void* table,         // [vocab_size, dim] of table_dtype
    int32_t table_dtype,
    const int32_t* token_ids,  // [num_tokens]
    int32_t num_tokens,
    int32_t vocab_size,
    int32_t dim);

// out = x / sqrt(mean(x^2) + eps) * weight, row by row. out may equal x.
DL_API int32_t dl_rmsnorm(
    dl_context* ctx,
    float* out,           // [num_tokens, dim]
    const float* x,       // [num_tokens, dim]
    const float* weight,  // [dim]
    int32_t num_tokens,
    int32_t dim,
    float eps);

// residual += x, then out = residual / sqrt(mean(residual^2) + eps) * weight, row by row: the
// residual add of a sublayer and the next RMSNorm in one kernel. Both builds compute the same f32
// sum and the same norm as dl_add followed by dl_rmsnorm, so the results are bit-identical. out
// may equal x (the normed row replaces the sublayer output); residual must be neither.
DL_API int32_t dl_add_rmsnorm(
    dl_context* ctx,
    float* out,           // [num_tokens, dim]
    float* residual,      // [num_tokens, dim], updated in place
    const float* x,       // [num_tokens, dim]
    const float* weight,  // [dim]
    int32_t num_tokens,
    int32_t dim,
    float eps);

// out = x · wᵀ (+ bias): the linear layer of every projection. out must not alias x. Row i of the
// result goes to out + i * out_row_stride, so the parts of a fused projection whose weights differ
// in format each write their own columns of one output row; the floats between rows are left as
// they are.
DL_API int32_t dl_matmul(
    dl_context* ctx,
    float* out,         // [m, out_row_stride], columns [0, n) written
    const float* x,     // [m, k]
    const void* w,      // [n, k] of w_dtype
    int32_t w_dtype,
    const float* bias,  // [n], or NULL
    int32_t m,
    int32_t n,
    int32_t k,
    int32_t out_row_stride);  // floats between consecutive rows of out, >= n

// Rotates, in place, the first num_heads heads of each row of x by its token's position.
// Rows may hold more than the rotated heads (a fused QKV row rotates Q and K heads, not V).
// Every int32 is a valid position (neither build checks them).
DL_API int32_t dl_rope(
    dl_context* ctx,
    float* x,                  // [num_tokens, row_stride], heads at the start of each row
    const int32_t* positions,  // [num_tokens]
    const float* inv_freq,     // [rotary_dim / 2], scaling already applied
    int32_t num_tokens,
    int32_t num_heads,
    int32_t head_dim,
    int32_t rotary_dim,        // <= head_dim, even; dims past it are left as they are
    int32_t row_stride,        // floats between consecutive rows of x
    int32_t style);            // dl_rope_style

// out = silu(gate) * up, where each row of gate_up is [gate (dim) | up (dim)].
DL_API int32_t dl_silu_mul(
    dl_context* ctx,
    float* out,            // [num_tokens, dim]
    const float* gate_up,  // [num_tokens, 2 * dim]
    int32_t num_tokens,
    int32_t dim);

// out = a + b, elementwise. out may equal a or b.
DL_API int32_t dl_add(
    dl_context* ctx,
    float* out,     // [num_elements]
    const float* a, // [num_elements]
    const float* b, // [num_elements]
    uint64_t num_elements);

// out[i] = x[rows[i]]: picks, for example, the last token of each sequence before the LM head.
// A bad index is an error (see "Metadata" above); CUDA: its row is written as zeros.
DL_API int32_t dl_gather_rows(
    dl_context* ctx,
    float* out,           // [num_rows, dim]
    const float* x,       // [num_src_rows, dim]
    const int32_t* rows,  // [num_rows], each in [0, num_src_rows)
    int32_t num_rows,
    int32_t num_src_rows,
    int32_t dim);

// Writes each token's K and V heads into the paged cache at its slot. A negative slot skips the
// token (padding). k and v may point into the same fused QKV rows. Slots below
// num_blocks * block_size; a larger slot is an error (see "Metadata" above); CUDA: it is skipped.
DL_API int32_t dl_kv_write(
    dl_context* ctx,
    void* k_cache,                // [num_blocks, num_kv_heads, block_size, head_dim] of cache_dtype
    void* v_cache,                // [num_blocks, num_kv_heads, block_size, head_dim] of cache_dtype
    int32_t cache_dtype,
    const float* k,               // [num_tokens, row_stride], num_kv_heads * head_dim used
    const float* v,               // [num_tokens, row_stride], num_kv_heads * head_dim used
    const int32_t* slot_mapping,  // [num_tokens]
    int32_t num_tokens,
    int32_t num_kv_heads,
    int32_t head_dim,
    int32_t row_stride,
    int32_t block_size,
    int32_t num_blocks);

// dl_rope of the Q and K heads of fused QKV rows followed by dl_kv_write of their K and V heads,
// in one launch, with the same bits as those two calls. Each row of qkv starts with Q
// (num_heads * head_dim floats), then K and V (num_kv_heads * head_dim each); Q and K are rotated
// in place by the token's position (padding tokens too, as dl_rope does), then the rotated K and V
// go to the token's slot (negative: skipped). Positions and slots as in dl_rope and dl_kv_write: a
// slot past the cache is an error (see "Metadata" above; CUDA: the token is rotated, its cache
// write skipped).
DL_API int32_t dl_rope_kv_write(
    dl_context* ctx,
    float* qkv,                   // [num_tokens, row_stride], Q | K | V at the start of each row
    const int32_t* positions,     // [num_tokens]
    const float* inv_freq,        // [rotary_dim / 2], scaling already applied
    void* k_cache,                // [num_blocks, num_kv_heads, block_size, head_dim] of cache_dtype
    void* v_cache,                // [num_blocks, num_kv_heads, block_size, head_dim] of cache_dtype
    int32_t cache_dtype,
    const int32_t* slot_mapping,  // [num_tokens]
    int32_t num_tokens,
    int32_t num_heads,
    int32_t num_kv_heads,
    int32_t head_dim,
    int32_t rotary_dim,           // <= head_dim, even; dims past it are left as they are
    int32_t row_stride,           // >= (num_heads + 2 * num_kv_heads) * head_dim
    int32_t style,                // dl_rope_style
    int32_t block_size,
    int32_t num_blocks);

// Copies whole cache blocks within one cache buffer: block pairs[i][1] becomes a copy of block
// pairs[i][0]. Used for copy-on-write when sequences that shared a partial block diverge; call it
// once per K and V buffer of each layer. Block ids in [0, num_blocks); a block is not copied onto
// itself; destination blocks must be distinct and not sources. An id out of range or a block
// copied onto itself is an error (see "Metadata" above); CUDA: that pair is skipped. Pairs that
// break the last rule (neither build checks it) run concurrently and leave those blocks unspecified.
DL_API int32_t dl_copy_blocks(
    dl_context* ctx,
    void* cache,             // [num_blocks, block_bytes]
    const int32_t* pairs,    // [num_pairs, 2]: (source block, destination block)
    int32_t num_pairs,
    uint64_t block_bytes,
    int32_t num_blocks);

// Causal attention over the paged cache for a batch of sequences, each with its new query tokens
// (prefill, chunked prefill and decode alike). Sequence s owns query rows
// [query_start[s], query_start[s + 1]) and has seq_lens[s] tokens in the cache, the new ones last,
// so its query i sits at position seq_lens[s] - num_new + i and sees cache positions up to it.
// Exact: tiled over the cache with an online softmax (flash attention). GQA/MQA: query head h reads
// KV head h / (num_heads / num_kv_heads). CUDA: with an f16 or bf16 cache, sequences with two or
// more new tokens (prefill) run on tensor cores: scores from Q split into two halves of the cache
// type (hi + lo, so Q keeps about 22 bits with f16, 16 with bf16) against K with f32 sums, then the
// probabilities rounded to the cache type once for P·V (the only rounding beyond f32: an output
// differs from the exact one by at most about 2^-11 (f16) or 2^-8 (bf16) of max |V|). Sequences
// with one new token (decode) run in their own launch on CUDA cores in f32, their contexts split
// over enough blocks to fill the device, the partials merged in the same launch.
// max_query_len is the host's bound on the new tokens of any sequence (the largest query_start[s +
// 1] - query_start[s], or any larger value up to num_tokens; num_tokens is always correct): with 1
// the CUDA build launches only its decode kernel.
// Metadata: query_start non-decreasing from 0 to num_tokens (a sequence may have no new tokens: it
// then has no rows and is skipped; num_tokens may be 0); no sequence with more than max_query_len
// new tokens; num_new <= seq_lens[s] <=
// max_blocks_per_seq * block_size; the first ceil(seq_lens[s] / block_size) entries of a block
// table in [0, num_blocks) (later entries are never read). Breaking any of these is an error (see
// "Metadata" above), except that a sequence with seq_lens[s] == 0 is padding (a graph's spare row:
// see "Graphs"): its query rows, however many, get zero output rows and its block table is never
// read. CUDA: a query whose position is outside [0, max_blocks_per_seq * block_size)
// or outside every sequence gets a zero output row; a block id out of range reads as K and V rows
// of zeros; seq_lens below num_new, query_start out of order or a sequence with more than
// max_query_len new tokens give unspecified output rows.
DL_API int32_t dl_paged_attention(
    dl_context* ctx,
    float* out,                   // [num_tokens, num_heads * head_dim]
    const float* q,               // [num_tokens, q_row_stride], num_heads * head_dim used
    const void* k_cache,          // [num_blocks, num_kv_heads, block_size, head_dim] of cache_dtype
    const void* v_cache,          // [num_blocks, num_kv_heads, block_size, head_dim] of cache_dtype
    int32_t cache_dtype,
    const int32_t* block_tables,  // [num_seqs, max_blocks_per_seq]
    const int32_t* seq_lens,      // [num_seqs]
    const int32_t* query_start,   // [num_seqs + 1], query_start[num_seqs] == num_tokens
    int32_t num_seqs,
    int32_t num_tokens,
    int32_t max_query_len,  // in [min(num_tokens, 1), num_tokens], >= every sequence's new tokens
    int32_t num_heads,
    int32_t num_kv_heads,
    int32_t head_dim,
    int32_t q_row_stride,
    int32_t block_size,
    int32_t max_blocks_per_seq,
    int32_t num_blocks,
    float scale);

// Samples one token id per row of logits on the device, so a decode step copies back ids, not
// rows. Row r uses temperature[r] (0 = greedy), top_k[r] (<= 0 disables), top_p[r] (1 disables)
// and min_p[r] (0 disables), like src/sampling.ts, with this exact definition so both builds pick
// the same token (native/dl_sample.h holds the shared arithmetic):
// - Greedy (temperature 0, top_k 1, or no finite logit): the largest non-NaN logit, lowest id on
//   ties (0 if every logit is NaN).
// - Otherwise the candidates are the finite logits ordered by (logit descending, id ascending);
//   top-k keeps the first top_k. Each weighs w = round(exp((logit - max) / temperature) * 2^31)
//   with dl_sample_exp (the top one exactly 2^31). top-p keeps the shortest prefix whose weight
//   sum reaches ceil(top_p * total) (total over the top-k set, in f64); min-p then drops those
//   with w < min_p * 2^31. The draw: u = dl_sample_random(seeds[r], counters[r]) (SplitMix64 of
//   the pair), t = floor(u * kept_total / 2^64), and the token is the kept id, in id order, where
//   the running weight sum first exceeds t. Weights are integers, so no sum depends on order.
// Parameters are metadata (see "Metadata"): temperature finite and >= 0, top_p in (0, 1], min_p in
// [0, 1]; CUDA: a row with bad parameters gets token 0.
DL_API int32_t dl_sample(
    dl_context* ctx,
    int32_t* out_ids,          // [num_rows]
    const float* logits,       // [num_rows, vocab_size]
    const float* temperature,  // [num_rows]
    const int32_t* top_k,      // [num_rows]
    const float* top_p,        // [num_rows]
    const float* min_p,        // [num_rows]
    const uint64_t* seeds,     // [num_rows]: the request's seed
    const uint64_t* counters,  // [num_rows]: for example the number of tokens generated so far
    int32_t num_rows,
    int32_t vocab_size);

// --- Collectives (dl_comm_*): ranks of one model across processes and hosts
//
// A communicator is a group of ranks that run the same model step together (docs/parallelism.md).
// The collective algorithms are a library's, never ours: the CPU build forwards to Gloo (TCP
// transport) through build/libdenollm_comm_gloo.so, opened at the first dl_comm_init so the CPU
// library still loads where Gloo is absent (dl_comm_init then fails with DL_ERR_UNSUPPORTED naming
// the missing file); the CUDA build opens libnccl.so.2 at run time. Ranks rendezvous through rank
// 0's control store (dl_comm_store_start): Gloo exchanges its transport addresses there, NCCL its
// ncclUniqueId. Buffers are device memory; reductions are sums of f32. A peer that dies makes the
// pending call fail with DL_ERR_DEVICE naming it (never a hang past the timeout).

typedef struct dl_comm dl_comm;
typedef struct dl_comm_store dl_comm_store;

// Starts the rendezvous store on host:port (port 0: any free port) in a background thread.
DL_API int32_t dl_comm_store_start(
    const char* host,        // NUL-terminated address to listen on, e.g. "0.0.0.0"
    int32_t port,
    int32_t* bound_port,     // [1] out: the port it listens on
    dl_comm_store** out);

DL_API int32_t dl_comm_store_stop(
    dl_comm_store* store);

// Joins the group `prefix` of world_size ranks as `rank`; blocks until every rank has joined or
// timeout_ms passes. Collectives on the result fail after timeout_ms without progress.
DL_API int32_t dl_comm_init(
    int32_t rank,
    int32_t world_size,
    const char* store_host,  // NUL-terminated address of rank 0's store
    int32_t store_port,
    const char* prefix,      // NUL-terminated group name: several groups share one store
    const char* bind_host,   // NUL-terminated address this rank's transport listens on
    int32_t timeout_ms,
    dl_comm** out);

DL_API int32_t dl_comm_destroy(
    dl_comm* comm);

// buf = sum over ranks of buf, in place.
DL_API int32_t dl_comm_all_reduce(
    dl_comm* comm,
    float* buf,              // [count]
    int64_t count);

// recv[r] = rank r's send; in place when send == recv + rank·count.
DL_API int32_t dl_comm_all_gather(
    dl_comm* comm,
    const float* send,       // [count]
    float* recv,             // [world_size, count]
    int64_t count);

// recv = sum over ranks of their send[rank]: the reduced chunk that belongs to this rank; in place
// when recv == send + rank·count.
DL_API int32_t dl_comm_reduce_scatter(
    dl_comm* comm,
    const float* send,       // [world_size, count]
    float* recv,             // [count]
    int64_t count);

// Root's bytes to every rank; timeout_ms here (0: the communicator's) lets an idle rank wait long
// for its next step without loosening the other collectives.
DL_API int32_t dl_comm_broadcast(
    dl_comm* comm,
    void* buf,               // [num_bytes]
    int64_t num_bytes,
    int32_t root,
    int32_t timeout_ms);

DL_API int32_t dl_comm_send(
    dl_comm* comm,
    const void* buf,         // [num_bytes]
    int64_t num_bytes,
    int32_t peer,
    int32_t tag);

DL_API int32_t dl_comm_recv(
    dl_comm* comm,
    void* buf,               // [num_bytes]
    int64_t num_bytes,
    int32_t peer,
    int32_t tag);

#ifdef __cplusplus
}
#endif

#endif  // DENOLLM_H
