// dl_comm_* on the CPU build: the rendezvous store lives here; the collectives are Gloo's, reached
// through build/libdenollm_comm_gloo.so (comm/gloo_comm.cpp), opened on first use so this library
// loads, and everything but the collectives works, on hosts without Gloo.
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "common.h"
#include "dl_store.h"

struct dl_comm_store {
  DlStoreServer server;
  dl_comm_store(const std::string& host, int port) : server(host, port) {}
};

struct dl_comm {
  void* impl;
};

namespace {

using InitFn = int (*)(int, int, const char*, int, const char*, const char*, int, void**, char*, size_t);
using DestroyFn = int (*)(void*);
using AllReduceFn = int (*)(void*, float*, long long, char*, size_t);
using GatherFn = int (*)(void*, const float*, float*, long long, char*, size_t);
using BroadcastFn = int (*)(void*, void*, long long, int, int, char*, size_t);
using SendFn = int (*)(void*, const void*, long long, int, int, char*, size_t);
using RecvFn = int (*)(void*, void*, long long, int, int, char*, size_t);

struct GlooPlugin {
  InitFn init;
  DestroyFn destroy;
  AllReduceFn all_reduce;
  GatherFn all_gather;
  GatherFn reduce_scatter;
  BroadcastFn broadcast;
  SendFn send;
  RecvFn recv;
};

std::mutex plugin_mutex;
GlooPlugin plugin;
bool plugin_loaded = false;
std::string plugin_error;

// DENOLLM_COMM_LIBRARY, else libdenollm_comm_gloo.so beside this library.
std::string plugin_path() {
  const char* env = std::getenv("DENOLLM_COMM_LIBRARY");
  if (env != nullptr && *env != '\0') return env;
  Dl_info info{};
  std::string dir = ".";
  if (dladdr(reinterpret_cast<void*>(&plugin_path), &info) != 0 && info.dli_fname != nullptr) {
    dir = info.dli_fname;
    const size_t slash = dir.rfind('/');
    dir = slash == std::string::npos ? "." : dir.substr(0, slash);
  }
  return dir + "/libdenollm_comm_gloo.so";
}

// Opens the plugin once; on failure every call reports the same reason.
bool load_plugin() {
  std::lock_guard<std::mutex> lock(plugin_mutex);
  if (plugin_loaded) return true;
  if (!plugin_error.empty()) return false;
  const std::string path = plugin_path();
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    plugin_error = "cannot open the Gloo collectives " + path + " (" + (why ? why : "?") +
                   "): install libgloo-dev (apt-get install libgloo-dev) and rebuild (deno task build)";
    return false;
  }
  auto sym = [&](const char* name) { return dlsym(lib, name); };
  plugin.init = reinterpret_cast<InitFn>(sym("dlg_init"));
  plugin.destroy = reinterpret_cast<DestroyFn>(sym("dlg_destroy"));
  plugin.all_reduce = reinterpret_cast<AllReduceFn>(sym("dlg_all_reduce"));
  plugin.all_gather = reinterpret_cast<GatherFn>(sym("dlg_all_gather"));
  plugin.reduce_scatter = reinterpret_cast<GatherFn>(sym("dlg_reduce_scatter"));
  plugin.broadcast = reinterpret_cast<BroadcastFn>(sym("dlg_broadcast"));
  plugin.send = reinterpret_cast<SendFn>(sym("dlg_send"));
  plugin.recv = reinterpret_cast<RecvFn>(sym("dlg_recv"));
  if (!plugin.init || !plugin.destroy || !plugin.all_reduce || !plugin.all_gather || !plugin.reduce_scatter ||
      !plugin.broadcast || !plugin.send || !plugin.recv) {
    plugin_error = path + " lacks a dlg_* function: rebuild it (deno task build)";
    return false;
  }
  plugin_loaded = true;
  return true;
}

int32_t check_comm(const char* fn, dl_comm* comm) {
  if (comm == nullptr || comm->impl == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a communicator, found NULL", fn);
  }
  return DL_OK;
}

int32_t check_count(const char* fn, const void* buf, int64_t count) {
  if (buf == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a buffer, found NULL", fn);
  if (count <= 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a count > 0, found %lld", fn, (long long)count);
  return DL_OK;
}

// The plugin's message becomes this thread's dl_last_error.
int32_t forward(int rc, const char* err) {
  return rc == 0 ? DL_OK : dl_fail(rc, "%s", err);
}

}  // namespace

extern "C" DL_API int32_t dl_comm_store_start(const char* host, int32_t port, int32_t* bound_port,
                                              dl_comm_store** out) {
  return dl_guard("dl_comm_store_start", [&]() -> int32_t {
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
    } catch (const std::runtime_error& e) {
      return dl_fail(DL_ERR_DEVICE, "dl_comm_store_start: %s", e.what());
    }
  });
}

extern "C" DL_API int32_t dl_comm_store_stop(dl_comm_store* store) {
  return dl_guard("dl_comm_store_stop", [&]() -> int32_t {
    delete store;
    return DL_OK;
  });
}

extern "C" DL_API int32_t dl_comm_init(int32_t rank, int32_t world_size, const char* store_host, int32_t store_port,
                                       const char* prefix, const char* bind_host, int32_t timeout_ms,
                                       dl_comm** out) {
  return dl_guard("dl_comm_init", [&]() -> int32_t {
    if (store_host == nullptr || prefix == nullptr || bind_host == nullptr || out == nullptr) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_comm_init: expected store_host, prefix, bind_host and out, found NULL");
    }
    if (world_size <= 0 || rank < 0 || rank >= world_size) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_comm_init: expected 0 <= rank < world_size, found rank %d of %d",
                     rank, world_size);
    }
    if (timeout_ms <= 0) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "dl_comm_init: expected timeout_ms > 0, found %d", timeout_ms);
    }
    if (!load_plugin()) return dl_fail(DL_ERR_UNSUPPORTED, "dl_comm_init: %s", plugin_error.c_str());
    char err[512] = "";
    void* impl = nullptr;
    const int rc = plugin.init(rank, world_size, store_host, store_port, prefix, bind_host, timeout_ms, &impl, err,
                               sizeof err);
    if (rc != 0) return forward(rc, err);
    *out = new dl_comm{impl};
    return DL_OK;
  });
}

extern "C" DL_API int32_t dl_comm_destroy(dl_comm* comm) {
  return dl_guard("dl_comm_destroy", [&]() -> int32_t {
    if (comm == nullptr) return DL_OK;
    if (comm->impl != nullptr) plugin.destroy(comm->impl);
    delete comm;
    return DL_OK;
  });
}

extern "C" DL_API int32_t dl_comm_all_reduce(dl_comm* comm, float* buf, int64_t count) {
  const char* fn = "dl_comm_all_reduce";
  if (int32_t rc = check_comm(fn, comm)) return rc;
  if (int32_t rc = check_count(fn, buf, count)) return rc;
  char err[512] = "";
  return forward(plugin.all_reduce(comm->impl, buf, count, err, sizeof err), err);
}

extern "C" DL_API int32_t dl_comm_all_gather(dl_comm* comm, const float* send, float* recv, int64_t count) {
  const char* fn = "dl_comm_all_gather";
  if (int32_t rc = check_comm(fn, comm)) return rc;
  if (int32_t rc = check_count(fn, send, count)) return rc;
  if (int32_t rc = check_count(fn, recv, count)) return rc;
  char err[512] = "";
  return forward(plugin.all_gather(comm->impl, send, recv, count, err, sizeof err), err);
}

extern "C" DL_API int32_t dl_comm_reduce_scatter(dl_comm* comm, const float* send, float* recv, int64_t count) {
  const char* fn = "dl_comm_reduce_scatter";
  if (int32_t rc = check_comm(fn, comm)) return rc;
  if (int32_t rc = check_count(fn, send, count)) return rc;
  if (int32_t rc = check_count(fn, recv, count)) return rc;
  char err[512] = "";
  return forward(plugin.reduce_scatter(comm->impl, send, recv, count, err, sizeof err), err);
}

extern "C" DL_API int32_t dl_comm_broadcast(dl_comm* comm, void* buf, int64_t num_bytes, int32_t root,
                                            int32_t timeout_ms) {
  const char* fn = "dl_comm_broadcast";
  if (int32_t rc = check_comm(fn, comm)) return rc;
  if (int32_t rc = check_count(fn, buf, num_bytes)) return rc;
  if (timeout_ms < 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected timeout_ms >= 0, found %d", fn, timeout_ms);
  char err[512] = "";
  return forward(plugin.broadcast(comm->impl, buf, num_bytes, root, timeout_ms, err, sizeof err), err);
}

extern "C" DL_API int32_t dl_comm_send(dl_comm* comm, const void* buf, int64_t num_bytes, int32_t peer, int32_t tag) {
  const char* fn = "dl_comm_send";
  if (int32_t rc = check_comm(fn, comm)) return rc;
  if (int32_t rc = check_count(fn, buf, num_bytes)) return rc;
  char err[512] = "";
  return forward(plugin.send(comm->impl, buf, num_bytes, peer, tag, err, sizeof err), err);
}

extern "C" DL_API int32_t dl_comm_recv(dl_comm* comm, void* buf, int64_t num_bytes, int32_t peer, int32_t tag) {
  const char* fn = "dl_comm_recv";
  if (int32_t rc = check_comm(fn, comm)) return rc;
  if (int32_t rc = check_count(fn, buf, num_bytes)) return rc;
  char err[512] = "";
  return forward(plugin.recv(comm->impl, buf, num_bytes, peer, tag, err, sizeof err), err);
}
