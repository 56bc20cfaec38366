#pragma once

#include <memory>

#include "mixtrain/trainer.hpp"
#include "ops/backend.hpp"

namespace mixtrain {

// The backend for a device choice: Auto picks CUDA when available. Throws DeviceError when CUDA
// is asked for and this build or machine lacks it.
std::unique_ptr<Backend> make_backend(Device device);

#if defined(MIXTRAIN_WITH_CUDA)
std::unique_ptr<Backend> make_cuda_backend();
bool cuda_device_present();
#endif

}  // namespace mixtrain
