// Internal helpers shared by the CPU kernels: the context, exception guard, ISA pick, threads
// (argument checks and validators are in native/).
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <new>
#include <stdexcept>

#include "denollm.h"
#include "dl_check.h"
#include "dl_graph.h"
#include "dl_validate.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// --- Context

struct dl_context {
  int32_t num_threads;  // OpenMP team size used by every kernel launched on this context
  // Kernel scratch, shared by every kernel of the context: one context is used by one thread at a
  // time and kernels run one after another, so each call owns all of it (OpenMP threads take
  // per-thread slices). Grows on demand until dl_reserve_workspace fixes it.
  void* workspace;
  size_t workspace_bytes;
  bool workspace_fixed;
  // dl_memory_stats counters.
  uint64_t num_allocs, num_frees, num_workspace_growths;
  // Graph capture state (ffi/denollm.h "Graphs"): kernels run eagerly, so a graph holds nothing.
  DlGraphTable<bool> graphs;
};

// At least `bytes` of 64-byte aligned workspace for kernel `fn`, valid until the next kernel call.
// Grows it when allowed; after dl_reserve_workspace fails with DL_ERR_OUT_OF_MEMORY instead.
int32_t dl_workspace(const char* fn, dl_context* ctx, size_t bytes, void** out);

// Workspace bytes one call needs (shared by the kernels and dl_reserve_workspace, which passes the
// largest shapes): paged attention with `run_heads` query heads per work item, RoPE.
size_t dl_attention_workspace_bytes(int threads, int64_t num_tokens, int64_t run_heads, int64_t head_dim,
                                    int64_t block_size, bool is_f32);
size_t dl_rope_workspace_bytes(int threads, int64_t rotary_dim);
// dl_matmul with quantized weights: the activation rows quantized per block (cpu/matmul/quant.cpp).
size_t dl_matmul_workspace_bytes(int64_t max_rows, int64_t max_k);
// dl_matmul with the W8A8 and 2:4 formats: per-token activation rows (cpu/matmul/w8a8.cpp).
size_t dl_w8a8_workspace_bytes(int threads, int64_t max_rows, int64_t max_k);

// Rounds a byte count up to the workspace's 64-byte alignment.
constexpr size_t dl_align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

// --- Errors

// Runs `body` (returning a dl_status) and maps escaping C++ exceptions to statuses, so nothing
// unwinds through the C ABI. Kernels validate before any OpenMP region: an exception thrown inside
// a parallel region cannot be caught here.
template <class Body>
int32_t dl_guard(const char* fn, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
  } catch (const std::exception& e) {
    return dl_fail(DL_ERR_INTERNAL, "%s: internal error: %s", fn, e.what());
  } catch (...) {
    return dl_fail(DL_ERR_INTERNAL, "%s: internal error (unknown exception)", fn);
  }
}

// --- Instruction sets

// Kernels with hand-written vector paths (matmul, attention) pick one of these per process.
enum class DlIsa { generic, avx2, avx512 };

// The best path this CPU runs. DENOLLM_CPU_ISA=generic|avx2 picks a lower one, so the tests can
// cover every path on one machine; it is read once, at the first call.
DlIsa dl_cpu_isa();

// True when the path dl_cpu_isa() picked is AVX-512 and the CPU also has VNNI with BW and VL (Zen 4,
// Ice Lake and later), plus VBMI and VBMI2 when `with_vbmi`: what the integer kernel sets need.
bool dl_cpu_has_avx512_vnni(bool with_vbmi);

// A kernel family's set for this CPU: the AVX-512 VNNI one when dl_cpu_has_avx512_vnni allows it,
// else the AVX2 one unless the path is generic, else the generic reference. A null set (not built
// for this target) is passed over. Families call it once and keep the result.
template <class Set>
const Set* dl_pick_kernel_set(const Set* generic, const Set* avx2, const Set* avx512_vnni, bool with_vbmi) {
  if (avx512_vnni != nullptr && dl_cpu_has_avx512_vnni(with_vbmi)) return avx512_vnni;
  if (avx2 != nullptr && dl_cpu_isa() != DlIsa::generic) return avx2;
  return generic;
}

// Clones a hot loop for AVX-512 and AVX2 with a runtime pick (ifunc); elsewhere it builds as is.
#if defined(__x86_64__)
#define DL_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define DL_TARGET_CLONES
#endif

// --- Threads

// Small kernels stay on the calling thread: waking a team costs more than the work.
constexpr int64_t DL_PARALLEL_MIN_WORK = 1 << 15;

inline int dl_threads_for(const dl_context* ctx, int64_t work) {
  return work < DL_PARALLEL_MIN_WORK ? 1 : ctx->num_threads;
}

inline int dl_thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
