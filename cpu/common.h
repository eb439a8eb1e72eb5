// Internal helpers shared by the CPU kernels: the context, per-thread errors, argument checks.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <new>
#include <stdexcept>

#include "denollm.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// --- Context

struct dl_context {
  int32_t num_threads;  // OpenMP team size used by every kernel launched on this context
};

// --- Errors

// Records a printf-style message as this thread's last error and returns `status`.
int32_t dl_fail(int32_t status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

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

// --- Argument checks: each returns DL_OK or fails with a message naming the argument.

inline int32_t dl_check_ctx(const char* fn, const dl_context* ctx) {
  if (ctx == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a context, found NULL", fn);
  return DL_OK;
}

inline int32_t dl_check_ptr(const char* fn, const char* name, const void* p) {
  if (p == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s to be non-NULL, found NULL", fn, name);
  return DL_OK;
}

inline int32_t dl_check_positive(const char* fn, const char* name, int64_t v) {
  if (v <= 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s > 0, found %lld", fn, name, (long long)v);
  return DL_OK;
}

inline int32_t dl_check_non_negative(const char* fn, const char* name, int64_t v) {
  if (v < 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s >= 0, found %lld", fn, name, (long long)v);
  return DL_OK;
}

inline int32_t dl_check_dtype(const char* fn, const char* name, int32_t dtype) {
  if (dtype != DL_DTYPE_F32 && dtype != DL_DTYPE_F16 && dtype != DL_DTYPE_BF16) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s to be a dl_dtype (0 f32, 1 f16, 2 bf16), found %d",
                   fn, name, dtype);
  }
  return DL_OK;
}

inline size_t dl_dtype_size(int32_t dtype) { return dtype == DL_DTYPE_F32 ? 4 : 2; }

// Evaluates a check and returns its status from the enclosing function when it fails.
#define DL_TRY(expr)                 \
  do {                               \
    int32_t dl_status_ = (expr);     \
    if (dl_status_ != DL_OK) return dl_status_; \
  } while (0)

// --- Instruction sets

// Kernels with hand-written vector paths (matmul, attention) pick one of these per process.
enum class DlIsa { generic, avx2, avx512 };

// The best path this CPU runs. DENOLLM_CPU_ISA=generic|avx2 picks a lower one, so the tests can
// cover every path on one machine; it is read once, at the first call.
DlIsa dl_cpu_isa();

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
