// The dl_status names, one table for both builds: dl_status_string gives the enum's own name.
#pragma once

#include <cstdint>

#include "denollm.h"

inline const char* dl_status_name(int32_t status) {
  switch (status) {
    case DL_OK: return "DL_OK";
    case DL_ERR_INVALID_ARGUMENT: return "DL_ERR_INVALID_ARGUMENT";
    case DL_ERR_OUT_OF_MEMORY: return "DL_ERR_OUT_OF_MEMORY";
    case DL_ERR_UNSUPPORTED: return "DL_ERR_UNSUPPORTED";
    case DL_ERR_DEVICE: return "DL_ERR_DEVICE";
    case DL_ERR_NOT_IMPLEMENTED: return "DL_ERR_NOT_IMPLEMENTED";
    case DL_ERR_INTERNAL: return "DL_ERR_INTERNAL";
    default: return "unknown status";
  }
}
