// Library identity, per-thread errors, contexts, host "device" memory, copies and dtype conversion.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common.h"
#include "dl_half.h"
#include "dl_status.h"

// --- Identity and errors

static thread_local std::string tls_last_error;

int32_t dl_fail(int32_t status, const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  try {
    tls_last_error = buf;
  } catch (...) {
    // Keeping the status matters more than keeping the message.
  }
  return status;
}

extern "C" DL_API uint32_t dl_abi_version(void) { return DL_ABI_VERSION; }

extern "C" DL_API const char* dl_backend_name(void) { return "cpu"; }

extern "C" DL_API const char* dl_status_string(int32_t status) { return dl_status_name(status); }

extern "C" DL_API const char* dl_last_error(void) { return tls_last_error.c_str(); }

// --- Instruction set

static DlIsa detect_isa() {
  DlIsa best = DlIsa::generic;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    best = DlIsa::avx512;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    best = DlIsa::avx2;
  }
#endif
  const char* wanted = std::getenv("DENOLLM_CPU_ISA");
  if (wanted != nullptr && std::strcmp(wanted, "generic") == 0) return DlIsa::generic;
  if (wanted != nullptr && std::strcmp(wanted, "avx2") == 0 && best == DlIsa::avx512) return DlIsa::avx2;
  return best;
}

DlIsa dl_cpu_isa() {
  static const DlIsa isa = detect_isa();
  return isa;
}

bool dl_cpu_has_avx512_vnni(bool with_vbmi) {
  if (dl_cpu_isa() != DlIsa::avx512) return false;
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bw");
  return vnni && (!with_vbmi || (__builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2")));
#else
  return false;
#endif
}

// --- Context

extern "C" DL_API int32_t dl_context_create(int32_t device, int32_t num_threads, dl_context** out) {
  return dl_guard("dl_context_create", [&]() -> int32_t {
    (void)device;  // one CPU "device"
    const char* fn = "dl_context_create";
    DL_TRY(dl_check_ptr(fn, "out", out));
    DL_TRY(dl_check_non_negative(fn, "num_threads", num_threads));
    int threads = num_threads;
    if (threads == 0) {
#ifdef _OPENMP
      threads = omp_get_num_procs();
#else
      threads = 1;
#endif
    }
    *out = new dl_context{threads < 1 ? 1 : threads, nullptr, 0, false, 0, 0, 0, {}};
    return DL_OK;
  });
}

extern "C" DL_API int32_t dl_context_destroy(dl_context* ctx) {
  DL_TRY(dl_check_ctx("dl_context_destroy", ctx));
  DL_TRY(ctx->graphs.forbid("dl_context_destroy"));
  std::free(ctx->workspace);
  delete ctx;
  return DL_OK;
}

extern "C" DL_API int32_t dl_synchronize(dl_context* ctx) {
  DL_TRY(dl_check_ctx("dl_synchronize", ctx));
  return ctx->graphs.forbid("dl_synchronize");  // kernels run synchronously on the CPU
}

// --- Memory

// Every block starts with a 64-byte header (its kind and mapped size), so dl_free knows how to
// release it and the caller's pointer stays 64-byte aligned. Blocks of LAZY_BYTES or more are
// anonymous mappings: the kernel hands out zero pages on first touch, so a large KV cache or step
// workspace costs resident memory only as it is used, not all at once at start-up.
namespace {

constexpr size_t HEADER_BYTES = 64;
constexpr size_t LAZY_BYTES = size_t(1) << 20;
constexpr uint64_t MAGIC_HEAP = 0x64656e6f6c6c6d68ULL;    // "denollmh"
constexpr uint64_t MAGIC_MAPPED = 0x64656e6f6c6c6d6dULL;  // "denollmm"
constexpr uint64_t MAGIC_HOST = 0x64656e6f6c6c6d73ULL;    // "denollms": dl_host_alloc staging

struct BlockHeader {
  uint64_t magic;
  uint64_t mapped_bytes;  // the whole mapping, header included (mapped blocks only)
};

void* alloc_block(size_t rounded) {
  const size_t total = rounded + HEADER_BYTES;
  void* base;
  uint64_t magic;
  if (rounded >= LAZY_BYTES) {
    base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    magic = MAGIC_MAPPED;
  } else {
    base = std::aligned_alloc(64, total);
    if (base == nullptr) return nullptr;
    std::memset(base, 0, total);
    magic = MAGIC_HEAP;
  }
  auto* header = static_cast<BlockHeader*>(base);
  header->magic = magic;
  header->mapped_bytes = total;
  return static_cast<char*>(base) + HEADER_BYTES;
}

uint64_t block_magic(const void* ptr) {
  return static_cast<const BlockHeader*>(static_cast<const void*>(static_cast<const char*>(ptr) - HEADER_BYTES))
      ->magic;
}

void free_block(void* ptr) {
  void* base = static_cast<char*>(ptr) - HEADER_BYTES;
  auto* header = static_cast<BlockHeader*>(base);
  if (header->magic == MAGIC_MAPPED) {
    header->magic = 0;
    munmap(base, (size_t)header->mapped_bytes);
  } else {
    header->magic = 0;
    std::free(base);
  }
}

}  // namespace

extern "C" DL_API int32_t dl_alloc(dl_context* ctx, uint64_t size_bytes, void** out) {
  const char* fn = "dl_alloc";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(ctx->graphs.forbid(fn));
  DL_TRY(dl_check_ptr(fn, "out", out));
  *out = nullptr;
  // Size 0 still gets a unique, freeable block.
  const uint64_t rounded = size_bytes == 0 ? 64 : (size_bytes + 63) / 64 * 64;
  if (rounded < size_bytes || rounded > (uint64_t)SIZE_MAX - HEADER_BYTES) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %llu bytes", fn, (unsigned long long)size_bytes);
  }
  void* p = alloc_block((size_t)rounded);
  if (p == nullptr) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %llu bytes", fn, (unsigned long long)size_bytes);
  }
  *out = p;
  ctx->num_allocs++;
  return DL_OK;
}

extern "C" DL_API int32_t dl_free(dl_context* ctx, void* ptr) {
  DL_TRY(dl_check_ctx("dl_free", ctx));
  DL_TRY(ctx->graphs.forbid("dl_free"));
  if (ptr == nullptr) return DL_OK;  // like cudaFree(NULL)
  if (block_magic(ptr) == MAGIC_HOST) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_free: %p is host staging memory from dl_host_alloc: free it with "
                   "dl_host_free", ptr);
  }
  ctx->num_frees++;
  free_block(ptr);
  return DL_OK;
}

// --- Host staging memory: the CPU build copies with memmove, so there is nothing to pin; the
// header only lets dl_host_free and dl_free tell the two kinds of block apart.

extern "C" DL_API int32_t dl_host_alloc(dl_context* ctx, uint64_t size_bytes, void** out) {
  const char* fn = "dl_host_alloc";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "out", out));
  *out = nullptr;
  if (size_bytes == 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: size_bytes must be positive", fn);
  const uint64_t rounded = (size_bytes + 63) / 64 * 64;
  if (rounded < size_bytes || rounded > (uint64_t)SIZE_MAX - HEADER_BYTES) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %llu bytes", fn, (unsigned long long)size_bytes);
  }
  void* base = std::aligned_alloc(64, (size_t)rounded + HEADER_BYTES);
  if (base == nullptr) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %llu bytes", fn, (unsigned long long)size_bytes);
  }
  std::memset(base, 0, (size_t)rounded + HEADER_BYTES);
  auto* header = static_cast<BlockHeader*>(base);
  header->magic = MAGIC_HOST;
  header->mapped_bytes = rounded + HEADER_BYTES;
  *out = static_cast<char*>(base) + HEADER_BYTES;
  return DL_OK;
}

extern "C" DL_API int32_t dl_host_free(dl_context* ctx, void* ptr) {
  const char* fn = "dl_host_free";
  DL_TRY(dl_check_ctx(fn, ctx));
  if (ptr == nullptr) return DL_OK;
  // A block from dl_alloc has a header too; anything else is outside what can be checked.
  if (block_magic(ptr) != MAGIC_HOST) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: %p was not allocated by dl_host_alloc", fn, ptr);
  }
  void* base = static_cast<char*>(ptr) - HEADER_BYTES;
  static_cast<BlockHeader*>(base)->magic = 0;
  std::free(base);
  return DL_OK;
}

// --- Memory info: the host's, since host memory is this build's device memory.

namespace {

// The value of one "Name:   123 kB" line of /proc/meminfo, in bytes; false when absent.
bool meminfo_bytes(const char* text, const char* name, uint64_t* out) {
  const char* at = std::strstr(text, name);
  if (at == nullptr) return false;
  unsigned long long kib = 0;
  if (std::sscanf(at + std::strlen(name), " %llu kB", &kib) != 1) return false;
  *out = (uint64_t)kib * 1024;
  return true;
}

// A file holding one unsigned number (cgroup v2's memory.max holds "max" when unlimited).
bool file_number(const char* path, uint64_t* out) {
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return false;
  unsigned long long v = 0;
  const bool ok = std::fscanf(f, "%llu", &v) == 1;
  std::fclose(f);
  if (ok) *out = (uint64_t)v;
  return ok;
}

}  // namespace

extern "C" DL_API int32_t dl_memory_info(dl_context* ctx, uint64_t* free_bytes, uint64_t* total_bytes) {
  const char* fn = "dl_memory_info";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "free_bytes", free_bytes));
  DL_TRY(dl_check_ptr(fn, "total_bytes", total_bytes));
  uint64_t total = 0, avail = 0;
  bool found = false;
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {
    char text[8192];
    const size_t n = std::fread(text, 1, sizeof text - 1, f);
    std::fclose(f);
    text[n] = '\0';
    found = meminfo_bytes(text, "MemTotal:", &total) && meminfo_bytes(text, "MemAvailable:", &avail);
  }
  if (!found) {
    const long page = sysconf(_SC_PAGESIZE), phys = sysconf(_SC_PHYS_PAGES), free_pages = sysconf(_SC_AVPHYS_PAGES);
    if (page <= 0 || phys <= 0 || free_pages < 0) {
      return dl_fail(DL_ERR_UNSUPPORTED, "%s: neither /proc/meminfo nor sysconf gives the host's memory", fn);
    }
    total = (uint64_t)phys * (uint64_t)page;
    avail = (uint64_t)free_pages * (uint64_t)page;
  }
  // A container's limit is what this process can use, whatever the host has.
  uint64_t limit = 0, usage = 0;
  if (file_number("/sys/fs/cgroup/memory.max", &limit) && limit < total) {
    total = limit;
    if (file_number("/sys/fs/cgroup/memory.current", &usage)) {
      const uint64_t left = usage < limit ? limit - usage : 0;
      if (left < avail) avail = left;
    }
  }
  if (avail > total) avail = total;
  *free_bytes = avail;
  *total_bytes = total;
  return DL_OK;
}

// --- File mappings

// A mapping starts at the page holding file_offset; the caller's pointer is that byte. Unmapping
// recomputes the page-aligned start and length from the pointer and size, so nothing is recorded.
static uint64_t page_bytes() {
  static const uint64_t bytes = (uint64_t)sysconf(_SC_PAGESIZE);
  return bytes;
}

extern "C" DL_API int32_t dl_map_file(dl_context* ctx, const char* path, uint64_t file_offset, uint64_t size_bytes,
                                      void** out) {
  const char* fn = "dl_map_file";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "path", path));
  DL_TRY(dl_check_ptr(fn, "out", out));
  *out = nullptr;
  if (size_bytes == 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: size_bytes must be positive", fn);
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: cannot open %s: %s", fn, path, std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: cannot stat %s: %s", fn, path, std::strerror(err));
  }
  // The range must lie inside the file now: a mapping past its end would fault on first read.
  const uint64_t file_bytes = (uint64_t)st.st_size;
  if (file_offset > file_bytes || size_bytes > file_bytes - file_offset) {
    close(fd);
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: %s holds %llu bytes, expected %llu from offset %llu", fn, path,
                   (unsigned long long)file_bytes, (unsigned long long)size_bytes, (unsigned long long)file_offset);
  }
  const uint64_t start = file_offset / page_bytes() * page_bytes();
  const uint64_t length = size_bytes + (file_offset - start);
  void* base = mmap(nullptr, (size_t)length, PROT_READ, MAP_PRIVATE, fd, (off_t)start);
  const int err = errno;
  close(fd);  // the mapping keeps the file referenced
  if (base == MAP_FAILED) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot map %llu bytes of %s: %s", fn, (unsigned long long)length, path,
                   std::strerror(err));
  }
  // A hint only: start reading the pages in now rather than on the first forward pass's faults.
  (void)madvise(base, (size_t)length, MADV_WILLNEED);
  *out = static_cast<char*>(base) + (file_offset - start);
  return DL_OK;
}

extern "C" DL_API int32_t dl_unmap_file(dl_context* ctx, void* ptr, uint64_t size_bytes) {
  const char* fn = "dl_unmap_file";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "ptr", ptr));
  const uintptr_t at = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t start = at / page_bytes() * page_bytes();
  if (munmap(reinterpret_cast<void*>(start), (size_t)(size_bytes + (at - start))) != 0) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: cannot unmap %llu bytes at %p: %s", fn,
                   (unsigned long long)size_bytes, ptr, std::strerror(errno));
  }
  return DL_OK;
}

// --- Kernel workspace

static int32_t grow_workspace(const char* fn, dl_context* ctx, size_t bytes) {
  // Growing moves the buffer, whose old address a graph would keep (the same rule as CUDA's).
  DL_TRY(ctx->graphs.forbid(fn));
  DL_TRY(ctx->graphs.forbid_move(fn));
  const size_t rounded = dl_align64(bytes);
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of kernel workspace", fn, rounded);
  }
  if (ctx->workspace != nullptr) ctx->num_frees++;
  std::free(ctx->workspace);
  ctx->workspace = p;
  ctx->workspace_bytes = rounded;
  ctx->num_allocs++;
  ctx->num_workspace_growths++;
  return DL_OK;
}

int32_t dl_workspace(const char* fn, dl_context* ctx, size_t bytes, void** out) {
  if (bytes > ctx->workspace_bytes) {
    if (ctx->workspace_fixed) {
      return dl_fail(DL_ERR_OUT_OF_MEMORY,
                     "%s: this call needs %zu bytes of kernel workspace; dl_reserve_workspace reserved %zu",
                     fn, bytes, ctx->workspace_bytes);
    }
    DL_TRY(grow_workspace(fn, ctx, bytes));
  }
  *out = ctx->workspace;
  return DL_OK;
}

extern "C" DL_API int32_t dl_reserve_workspace(dl_context* ctx, int32_t max_num_tokens, int32_t num_heads,
                                               int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                                               int32_t max_blocks_per_seq, int32_t max_matmul_k, uint64_t* out_bytes) {
  const char* fn = "dl_reserve_workspace";
  if (ctx != nullptr) DL_TRY(ctx->graphs.forbid(fn));
  DL_TRY(dl_validate_reserve_workspace(fn, ctx, max_num_tokens, num_heads, num_kv_heads, head_dim, block_size,
                                       max_blocks_per_seq, max_matmul_k, out_bytes));
  // Attention's worst case: a work item holding every query head, a 16-bit cache to widen.
  const size_t attention =
      dl_attention_workspace_bytes(ctx->num_threads, max_num_tokens, num_heads, head_dim, block_size, false);
  const size_t rope = dl_rope_workspace_bytes(ctx->num_threads, head_dim);
  const size_t quant = dl_matmul_workspace_bytes(max_num_tokens, max_matmul_k);
  const size_t w8a8 = dl_w8a8_workspace_bytes(ctx->num_threads, max_num_tokens, max_matmul_k);
  const size_t matmul = quant > w8a8 ? quant : w8a8;
  size_t need = attention > rope ? attention : rope;
  if (matmul > need) need = matmul;
  if (need > ctx->workspace_bytes) DL_TRY(grow_workspace(fn, ctx, need));
  ctx->workspace_fixed = true;
  *out_bytes = ctx->workspace_bytes;
  return DL_OK;
}

extern "C" DL_API int32_t dl_memory_stats(dl_context* ctx, uint64_t* out) {
  const char* fn = "dl_memory_stats";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "out", out));
  out[0] = ctx->num_allocs;
  out[1] = ctx->num_frees;
  out[2] = ctx->workspace_bytes;
  out[3] = ctx->num_workspace_growths;
  return DL_OK;
}

// --- Copies

static int32_t copy_bytes(const char* fn, dl_context* ctx, void* dst, const void* src, uint64_t size_bytes) {
  DL_TRY(dl_check_ctx(fn, ctx));
  if (size_bytes == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "dst", dst));
  DL_TRY(dl_check_ptr(fn, "src", src));
  std::memmove(dst, src, (size_t)size_bytes);
  return DL_OK;
}

extern "C" DL_API int32_t dl_copy_to_device(dl_context* ctx, void* dst, const void* src, uint64_t size_bytes) {
  if (ctx != nullptr) DL_TRY(ctx->graphs.forbid("dl_copy_to_device"));
  return copy_bytes("dl_copy_to_device", ctx, dst, src, size_bytes);
}

extern "C" DL_API int32_t dl_copy_to_host(dl_context* ctx, void* dst, const void* src, uint64_t size_bytes) {
  if (ctx != nullptr) DL_TRY(ctx->graphs.forbid("dl_copy_to_host"));
  return copy_bytes("dl_copy_to_host", ctx, dst, src, size_bytes);
}

// --- Conversion

template <class Src, class Dst, class Load, class Store>
static void convert_loop(const dl_context* ctx, Dst* dst, const Src* src, int64_t n, Load load, Store store) {
#pragma omp parallel for simd num_threads(dl_threads_for(ctx, n)) schedule(static)
  for (int64_t i = 0; i < n; i++) dst[i] = store(load(src[i]));
}

extern "C" DL_API int32_t dl_convert(dl_context* ctx, void* dst, int32_t dst_dtype, const void* src,
                                     int32_t src_dtype, uint64_t num_elements) {
  const char* fn = "dl_convert";
  DL_TRY(dl_validate_convert(fn, ctx, dst, dst_dtype, src, src_dtype, num_elements));
  if (num_elements == 0) return DL_OK;
  const int64_t n = (int64_t)num_elements;
  if (dst_dtype == src_dtype) {
    std::memmove(dst, src, (size_t)dl_dtype_bytes(src_dtype, num_elements));
    return DL_OK;
  }
  auto from_f32 = [](float v) { return v; };
  auto from_f16 = [](uint16_t v) { return dl_f16_to_f32(v); };
  auto from_bf16 = [](uint16_t v) { return dl_bf16_to_f32(v); };
  auto to_f16 = [](float v) { return dl_f32_to_f16(v); };
  auto to_bf16 = [](float v) { return dl_f32_to_bf16(v); };
  auto* d16 = static_cast<uint16_t*>(dst);
  const auto* s16 = static_cast<const uint16_t*>(src);
  if (src_dtype == DL_DTYPE_F32) {
    const auto* s = static_cast<const float*>(src);
    if (dst_dtype == DL_DTYPE_F16) convert_loop(ctx, d16, s, n, from_f32, to_f16);
    else convert_loop(ctx, d16, s, n, from_f32, to_bf16);
  } else if (dst_dtype == DL_DTYPE_F32) {
    auto* d = static_cast<float*>(dst);
    if (src_dtype == DL_DTYPE_F16) convert_loop(ctx, d, s16, n, from_f16, from_f32);
    else convert_loop(ctx, d, s16, n, from_bf16, from_f32);
  } else if (src_dtype == DL_DTYPE_F16) {  // f16 -> bf16, through an exact f32
    convert_loop(ctx, d16, s16, n, from_f16, to_bf16);
  } else {  // bf16 -> f16
    convert_loop(ctx, d16, s16, n, from_bf16, to_f16);
  }
  return DL_OK;
}

// --- Graphs: kernels run synchronously, so a capture runs them eagerly and a graph holds nothing
// (ffi/denollm.h "Graphs"); the state is kept so the same calls are refused as on the CUDA build.

extern "C" DL_API int32_t dl_graph_begin(dl_context* ctx) {
  const char* fn = "dl_graph_begin";
  DL_TRY(dl_check_ctx(fn, ctx));
  return ctx->graphs.begin(fn);
}

extern "C" DL_API int32_t dl_graph_end(dl_context* ctx, int32_t* graph_id) {
  const char* fn = "dl_graph_end";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_ptr(fn, "graph_id", graph_id));
  DL_TRY(ctx->graphs.end(fn));
  return dl_guard(fn, [&]() -> int32_t {
    *graph_id = ctx->graphs.add(true);
    return DL_OK;
  });
}

extern "C" DL_API int32_t dl_graph_launch(dl_context* ctx, int32_t graph_id) {
  const char* fn = "dl_graph_launch";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(ctx->graphs.forbid(fn));
  return ctx->graphs.check_id(fn, graph_id);
}

extern "C" DL_API int32_t dl_graph_destroy(dl_context* ctx, int32_t graph_id) {
  const char* fn = "dl_graph_destroy";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(ctx->graphs.check_id(fn, graph_id));
  ctx->graphs.take(graph_id);
  return DL_OK;
}
