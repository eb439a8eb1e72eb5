// The capture state and graph-id table of a context, shared by the CPU and CUDA builds so both
// enforce ffi/denollm.h's "Graphs" contract the same way (each build stores its own graph handle).
#pragma once

#include <cstdint>
#include <vector>

#include "dl_check.h"

template <class Exec>
struct DlGraphTable {
  bool capturing = false;
  // The first call that broke the capture's rules (dl_graph_end then fails naming it).
  const char* spoiled_by = nullptr;
  std::vector<Exec> execs;
  std::vector<bool> live;

  // Fails `fn`, a call not allowed during a capture, and spoils the capture; DL_OK outside one.
  int32_t forbid(const char* fn) {
    if (!capturing) return DL_OK;
    if (spoiled_by == nullptr) spoiled_by = fn;
    return dl_fail(DL_ERR_INVALID_ARGUMENT,
                   "%s: not allowed while a graph is being captured (only kernel calls on fixed "
                   "buffers are; see \"Graphs\" in ffi/denollm.h)",
                   fn);
  }

  // Fails `fn` if a live graph may hold the kernel workspace's address (growing would move it).
  int32_t forbid_move(const char* fn) const {
    size_t n = 0;
    for (bool l : live) n += l;
    if (n == 0) return DL_OK;
    return dl_fail(DL_ERR_INVALID_ARGUMENT,
                   "%s: the kernel workspace cannot grow while %zu graphs of this context may use it "
                   "(reserve the largest workspace before capturing, or destroy the graphs first)",
                   fn, n);
  }

  // Starts a capture; fails if one is already open.
  int32_t begin(const char* fn) {
    if (capturing) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: a capture is already open on this context (graphs do not nest)",
                     fn);
    }
    capturing = true;
    spoiled_by = nullptr;
    return DL_OK;
  }

  // Closes the capture. DL_OK if it may become a graph; otherwise the error, the capture closed.
  int32_t end(const char* fn) {
    if (!capturing) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: no capture is open (call dl_graph_begin first)", fn);
    capturing = false;
    if (spoiled_by != nullptr) {
      const char* by = spoiled_by;
      spoiled_by = nullptr;
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "%s: the capture was spoiled by a call to %s, which is not allowed during a capture", fn, by);
    }
    return DL_OK;
  }

  // Stores a new graph and returns its id, reusing a destroyed one's slot.
  int32_t add(Exec exec) {
    for (size_t i = 0; i < live.size(); i++) {
      if (!live[i]) {
        execs[i] = exec;
        live[i] = true;
        return (int32_t)i;
      }
    }
    execs.push_back(exec);
    live.push_back(true);
    return (int32_t)(execs.size() - 1);
  }

  // DL_OK if id names a live graph of this context.
  int32_t check_id(const char* fn, int32_t id) const {
    if (id < 0 || (size_t)id >= live.size() || !live[(size_t)id]) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: graph id %d is not a live graph of this context", fn, id);
    }
    return DL_OK;
  }

  // Removes a live graph (checked with check_id first) and returns its handle.
  Exec take(int32_t id) {
    live[(size_t)id] = false;
    return execs[(size_t)id];
  }
};
