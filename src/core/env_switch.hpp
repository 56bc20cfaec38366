// The library's A/B switches (MIXTRAIN_FUSION, MIXTRAIN_CUDA_*; docs/cuda.md names each): on
// unless the environment variable is "0".
#pragma once

#include <cstdlib>
#include <cstring>

namespace mixtrain {

inline bool env_switch_on(const char* name) {
  const char* v = std::getenv(name);
  return !(v != nullptr && std::strcmp(v, "0") == 0);
}

}  // namespace mixtrain
