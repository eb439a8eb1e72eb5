// The CPU build's collectives: Gloo (Debian libgloo-dev) over TCP, as a small plugin the CPU
// library opens at run time (cpu/comm/comm.cpp), so libdenollm_cpu.so never links against Gloo.
// Every algorithm is Gloo's; this file only adapts its C++ API to plain C calls.
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/broadcast.h>
#include <gloo/reduce_scatter.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dl_store.h"

#define DLG_API extern "C" __attribute__((visibility("default")))

namespace {

// Gloo's Store interface over rank 0's control store.
class ControlStore : public gloo::rendezvous::Store {
 public:
  ControlStore(const std::string& host, int port, int timeout_ms) : client_(host, port, timeout_ms) {}
  void set(const std::string& key, const std::vector<char>& data) override { client_.set(key, data); }
  std::vector<char> get(const std::string& key) override { return client_.get(key); }
  void wait(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) client_.get(k);
  }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override { wait(keys); }

 private:
  DlStoreClient client_;
};

struct Comm {
  std::shared_ptr<gloo::rendezvous::Context> context;
  std::shared_ptr<gloo::transport::Device> device;
  int rank;
  int size;
  std::chrono::milliseconds timeout;
  uint32_t next_tag = 1;
};

int fail(char* err, size_t err_len, const char* what, const std::exception& e) {
  std::snprintf(err, err_len, "%s: %s", what, e.what());
  return 4;  // DL_ERR_DEVICE: the group, not the arguments, is what failed
}

}  // namespace

DLG_API int dlg_init(int rank, int size, const char* store_host, int store_port, const char* prefix,
                     const char* bind_host, int timeout_ms, void** out, char* err, size_t err_len) {
  try {
    auto comm = std::make_unique<Comm>();
    comm->rank = rank;
    comm->size = size;
    comm->timeout = std::chrono::milliseconds(timeout_ms);
    gloo::transport::tcp::attr attr;
    attr.hostname = bind_host;
    comm->device = gloo::transport::tcp::CreateDevice(attr);
    ControlStore store(store_host, store_port, timeout_ms);
    gloo::rendezvous::PrefixStore prefixed(prefix, store);
    comm->context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    comm->context->setTimeout(comm->timeout);
    comm->context->connectFullMesh(prefixed, comm->device);
    *out = comm.release();
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, "dl_comm_init", e);
  }
}

DLG_API int dlg_destroy(void* c) {
  delete static_cast<Comm*>(c);
  return 0;
}

DLG_API int dlg_all_reduce(void* c, float* buf, long long count, char* err, size_t err_len) {
  auto* comm = static_cast<Comm*>(c);
  try {
    gloo::AllreduceOptions opts(comm->context);
    opts.setOutput(buf, size_t(count));
    opts.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTag(comm->next_tag++);
    opts.setTimeout(comm->timeout);
    gloo::allreduce(opts);
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, "dl_comm_all_reduce", e);
  }
}

DLG_API int dlg_all_gather(void* c, const float* send, float* recv, long long count, char* err, size_t err_len) {
  auto* comm = static_cast<Comm*>(c);
  try {
    gloo::AllgatherOptions opts(comm->context);
    // In place (send is this rank's slot of recv, NCCL's convention): Gloo gathers into the output
    // alone when it is given no input.
    if (send != recv + size_t(count) * comm->rank) opts.setInput(const_cast<float*>(send), size_t(count));
    opts.setOutput(recv, size_t(count) * comm->size);
    opts.setTag(comm->next_tag++);
    opts.setTimeout(comm->timeout);
    gloo::allgather(opts);
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, "dl_comm_all_gather", e);
  }
}

DLG_API int dlg_reduce_scatter(void* c, const float* send, float* recv, long long count, char* err,
                               size_t err_len) {
  auto* comm = static_cast<Comm*>(c);
  try {
    // Gloo's reduce-scatter works in place over the whole [size, count] buffer and leaves this
    // rank's reduced chunk at the start of it (gloo/reduce_scatter.h, distribution phase).
    std::vector<float> work(send, send + size_t(count) * comm->size);
    std::vector<float*> ptrs{work.data()};
    std::vector<int> counts(comm->size, int(count));
    gloo::ReduceScatterHalvingDoubling<float> algorithm(comm->context, ptrs, int(work.size()), counts);
    algorithm.run();
    std::memcpy(recv, work.data(), size_t(count) * sizeof(float));
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, "dl_comm_reduce_scatter", e);
  }
}

DLG_API int dlg_broadcast(void* c, void* buf, long long num_bytes, int root, int timeout_ms, char* err,
                          size_t err_len) {
  auto* comm = static_cast<Comm*>(c);
  try {
    gloo::BroadcastOptions opts(comm->context);
    opts.setOutput(static_cast<char*>(buf), size_t(num_bytes));
    opts.setRoot(root);
    opts.setTag(comm->next_tag++);
    opts.setTimeout(timeout_ms > 0 ? std::chrono::milliseconds(timeout_ms) : comm->timeout);
    gloo::broadcast(opts);
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, "dl_comm_broadcast", e);
  }
}

DLG_API int dlg_send(void* c, const void* buf, long long num_bytes, int peer, int tag, char* err, size_t err_len) {
  auto* comm = static_cast<Comm*>(c);
  try {
    auto ub = comm->context->createUnboundBuffer(const_cast<void*>(buf), size_t(num_bytes));
    ub->send(peer, uint64_t(tag));
    if (!ub->waitSend(comm->timeout)) throw std::runtime_error("send to rank " + std::to_string(peer) + " timed out");
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, "dl_comm_send", e);
  }
}

DLG_API int dlg_recv(void* c, void* buf, long long num_bytes, int peer, int tag, char* err, size_t err_len) {
  auto* comm = static_cast<Comm*>(c);
  try {
    auto ub = comm->context->createUnboundBuffer(buf, size_t(num_bytes));
    ub->recv(peer, uint64_t(tag));
    if (!ub->waitRecv(comm->timeout)) {
      throw std::runtime_error("receive from rank " + std::to_string(peer) + " timed out");
    }
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, "dl_comm_recv", e);
  }
}
