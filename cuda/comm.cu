// dl_comm_* on the CUDA build: NCCL, opened at run time (dlopen "libnccl.so.2", or
// DENOLLM_NCCL_LIBRARY) with the few documented functions declared here by hand, since no NCCL
// headers are needed to build. Rank 0's ncclUniqueId travels through the rendezvous store
// (native/dl_store.h). Every call waits for its collective on the default stream, polling so a
// dead peer turns into an error (ncclCommAbort) after the timeout instead of a hang.
#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "common.cuh"
#include "dl_store.h"

// --- NCCL's documented C API (nccl.h), the parts used here

typedef struct ncclComm* ncclComm_t;
typedef struct {
  char internal[128];
} ncclUniqueId;
typedef int ncclResult_t;  // ncclSuccess = 0, ncclInProgress = 7
typedef int ncclDataType_t;
typedef int ncclRedOp_t;
static const ncclDataType_t kNcclUint8 = 1;
static const ncclDataType_t kNcclFloat32 = 7;
static const ncclRedOp_t kNcclSum = 0;
static const ncclResult_t kNcclInProgress = 7;

struct NcclApi {
  ncclResult_t (*GetUniqueId)(ncclUniqueId*);
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  ncclResult_t (*CommAbort)(ncclComm_t);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t*);
  const char* (*GetErrorString)(ncclResult_t);
  ncclResult_t (*AllReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*AllGather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*ReduceScatter)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*Broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
};

struct dl_comm_store {
  DlStoreServer server;
  dl_comm_store(const std::string& host, int port) : server(host, port) {}
};

struct dl_comm {
  ncclComm_t nccl;
  int rank;
  int size;
  int timeout_ms;
};

namespace {

std::mutex nccl_mutex;
NcclApi nccl;
bool nccl_loaded = false;
std::string nccl_error;

bool load_nccl() {
  std::lock_guard<std::mutex> lock(nccl_mutex);
  if (nccl_loaded) return true;
  if (!nccl_error.empty()) return false;
  const char* env = std::getenv("DENOLLM_NCCL_LIBRARY");
  const std::string path = env != nullptr && *env != '\0' ? env : "libnccl.so.2";
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    nccl_error = "cannot open NCCL " + path + " (" + (why ? why : "?") + "): install NCCL 2 (libnccl2)";
    return false;
  }
  bool ok = true;
  auto bind = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    if (fn == nullptr) {
      ok = false;
      nccl_error = path + " lacks " + name + ": expected NCCL 2.7 or newer";
    }
  };
  bind(nccl.GetUniqueId, "ncclGetUniqueId");
  bind(nccl.CommInitRank, "ncclCommInitRank");
  bind(nccl.CommDestroy, "ncclCommDestroy");
  bind(nccl.CommAbort, "ncclCommAbort");
  bind(nccl.CommGetAsyncError, "ncclCommGetAsyncError");
  bind(nccl.GetErrorString, "ncclGetErrorString");
  bind(nccl.AllReduce, "ncclAllReduce");
  bind(nccl.AllGather, "ncclAllGather");
  bind(nccl.ReduceScatter, "ncclReduceScatter");
  bind(nccl.Broadcast, "ncclBroadcast");
  bind(nccl.Send, "ncclSend");
  bind(nccl.Recv, "ncclRecv");
  nccl_loaded = ok;
  return ok;
}

int32_t nccl_fail(const char* fn, ncclResult_t rc) {
  return dl_fail(DL_ERR_DEVICE, "%s: NCCL error %d: %s", fn, rc, nccl.GetErrorString(rc));
}

// Waits for the collective just enqueued; a peer that is gone shows as an async error or as no
// progress within the timeout, and the communicator is aborted so nothing waits forever.
int32_t wait_done(const char* fn, dl_comm* comm, int timeout_ms) {
#ifdef __CUDA_EMU__
  (void)comm;
  (void)timeout_ms;
  DL_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  return DL_OK;
#else
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const cudaError_t q = cudaStreamQuery(nullptr);
    if (q == cudaSuccess) return DL_OK;
    if (q != cudaErrorNotReady) return dl_fail(DL_ERR_DEVICE, "%s: %s", fn, cudaGetErrorString(q));
    ncclResult_t async = 0;
    nccl.CommGetAsyncError(comm->nccl, &async);
    if (async != 0 && async != kNcclInProgress) {
      nccl.CommAbort(comm->nccl);
      comm->nccl = nullptr;
      return nccl_fail(fn, async);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      nccl.CommAbort(comm->nccl);
      comm->nccl = nullptr;
      return dl_fail(DL_ERR_DEVICE, "%s: no progress within %d ms (a rank died or hung)", fn, timeout_ms);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
#endif
}

int32_t check(const char* fn, dl_comm* comm, const void* buf, int64_t count) {
  if (comm == nullptr || comm->nccl == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a live communicator, found NULL or aborted", fn);
  }
  if (buf == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a buffer, found NULL", fn);
  if (count <= 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a count > 0, found %lld", fn, (long long)count);
  return DL_OK;
}

}  // namespace

extern "C" DL_API int32_t dl_comm_store_start(const char* host, int32_t port, int32_t* bound_port,
                                              dl_comm_store** out) {
  if (host == nullptr || bound_port == nullptr || out == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_comm_store_start: expected host, bound_port and out, found NULL");
  }
  if (port < 0 || port > 65535) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_comm_store_start: expected a port in [0, 65535], found %d", port);
  }
  try {
    auto* store = new dl_comm_store(host, port);
    *bound_port = store->server.port();
    *out = store;
    return DL_OK;
  } catch (const std::exception& e) {
    return dl_fail(DL_ERR_DEVICE, "dl_comm_store_start: %s", e.what());
  }
}

extern "C" DL_API int32_t dl_comm_store_stop(dl_comm_store* store) {
  delete store;
  return DL_OK;
}

extern "C" DL_API int32_t dl_comm_init(int32_t rank, int32_t world_size, const char* store_host, int32_t store_port,
                                       const char* prefix, const char* bind_host, int32_t timeout_ms,
                                       dl_comm** out) {
  const char* fn = "dl_comm_init";
  if (store_host == nullptr || prefix == nullptr || bind_host == nullptr || out == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected store_host, prefix, bind_host and out, found NULL", fn);
  }
  if (world_size <= 0 || rank < 0 || rank >= world_size) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected 0 <= rank < world_size, found rank %d of %d", fn, rank,
                   world_size);
  }
  if (timeout_ms <= 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected timeout_ms > 0, found %d", fn, timeout_ms);
  if (!load_nccl()) return dl_fail(DL_ERR_UNSUPPORTED, "%s: %s", fn, nccl_error.c_str());
  ncclUniqueId id;
  try {
    // Rank 0 makes the group's id; everyone else reads it from the store.
    DlStoreClient store(store_host, store_port, timeout_ms);
    const std::string key = std::string(prefix) + "/nccl-unique-id";
    if (rank == 0) {
      const ncclResult_t rc = nccl.GetUniqueId(&id);
      if (rc != 0) return nccl_fail(fn, rc);
      store.set(key, std::vector<char>(id.internal, id.internal + sizeof id.internal));
    } else {
      const std::vector<char> bytes = store.get(key);
      if (bytes.size() != sizeof id.internal) {
        return dl_fail(DL_ERR_DEVICE, "%s: the store's ncclUniqueId has %zu bytes, expected %zu", fn, bytes.size(),
                       sizeof id.internal);
      }
      std::memcpy(id.internal, bytes.data(), sizeof id.internal);
    }
  } catch (const std::exception& e) {
    return dl_fail(DL_ERR_DEVICE, "%s: %s", fn, e.what());
  }
  ncclComm_t nccl_comm = nullptr;
  const ncclResult_t rc = nccl.CommInitRank(&nccl_comm, world_size, id, rank);
  if (rc != 0) return nccl_fail(fn, rc);
  *out = new dl_comm{nccl_comm, rank, world_size, timeout_ms};
  return DL_OK;
}

extern "C" DL_API int32_t dl_comm_destroy(dl_comm* comm) {
  if (comm == nullptr) return DL_OK;
  if (comm->nccl != nullptr) nccl.CommDestroy(comm->nccl);
  delete comm;
  return DL_OK;
}

extern "C" DL_API int32_t dl_comm_all_reduce(dl_comm* comm, float* buf, int64_t count) {
  const char* fn = "dl_comm_all_reduce";
  if (int32_t rc = check(fn, comm, buf, count)) return rc;
  if (ncclResult_t rc = nccl.AllReduce(buf, buf, size_t(count), kNcclFloat32, kNcclSum, comm->nccl, nullptr)) {
    return nccl_fail(fn, rc);
  }
  return wait_done(fn, comm, comm->timeout_ms);
}

extern "C" DL_API int32_t dl_comm_all_gather(dl_comm* comm, const float* send, float* recv, int64_t count) {
  const char* fn = "dl_comm_all_gather";
  if (int32_t rc = check(fn, comm, send, count)) return rc;
  if (int32_t rc = check(fn, comm, recv, count)) return rc;
  if (ncclResult_t rc = nccl.AllGather(send, recv, size_t(count), kNcclFloat32, comm->nccl, nullptr)) {
    return nccl_fail(fn, rc);
  }
  return wait_done(fn, comm, comm->timeout_ms);
}

extern "C" DL_API int32_t dl_comm_reduce_scatter(dl_comm* comm, const float* send, float* recv, int64_t count) {
  const char* fn = "dl_comm_reduce_scatter";
  if (int32_t rc = check(fn, comm, send, count)) return rc;
  if (int32_t rc = check(fn, comm, recv, count)) return rc;
  if (ncclResult_t rc = nccl.ReduceScatter(send, recv, size_t(count), kNcclFloat32, kNcclSum, comm->nccl, nullptr)) {
    return nccl_fail(fn, rc);
  }
  return wait_done(fn, comm, comm->timeout_ms);
}

extern "C" DL_API int32_t dl_comm_broadcast(dl_comm* comm, void* buf, int64_t num_bytes, int32_t root,
                                            int32_t timeout_ms) {
  const char* fn = "dl_comm_broadcast";
  if (int32_t rc = check(fn, comm, buf, num_bytes)) return rc;
  if (timeout_ms < 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected timeout_ms >= 0, found %d", fn, timeout_ms);
  if (ncclResult_t rc = nccl.Broadcast(buf, buf, size_t(num_bytes), kNcclUint8, root, comm->nccl, nullptr)) {
    return nccl_fail(fn, rc);
  }
  return wait_done(fn, comm, timeout_ms > 0 ? timeout_ms : comm->timeout_ms);
}

// NCCL's point-to-point calls have no tag: messages between two ranks arrive in order, which is
// how the pipeline uses them (the tag is checked by the CPU build only).
extern "C" DL_API int32_t dl_comm_send(dl_comm* comm, const void* buf, int64_t num_bytes, int32_t peer, int32_t tag) {
  const char* fn = "dl_comm_send";
  (void)tag;
  if (int32_t rc = check(fn, comm, buf, num_bytes)) return rc;
  if (ncclResult_t rc = nccl.Send(buf, size_t(num_bytes), kNcclUint8, peer, comm->nccl, nullptr)) {
    return nccl_fail(fn, rc);
  }
  return wait_done(fn, comm, comm->timeout_ms);
}

extern "C" DL_API int32_t dl_comm_recv(dl_comm* comm, void* buf, int64_t num_bytes, int32_t peer, int32_t tag) {
  const char* fn = "dl_comm_recv";
  (void)tag;
  if (int32_t rc = check(fn, comm, buf, num_bytes)) return rc;
  if (ncclResult_t rc = nccl.Recv(buf, size_t(num_bytes), kNcclUint8, peer, comm->nccl, nullptr)) {
    return nccl_fail(fn, rc);
  }
  return wait_done(fn, comm, comm->timeout_ms);
}
