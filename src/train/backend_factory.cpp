#include "train/backend_factory.hpp"

#include "mixtrain/error.hpp"

namespace mixtrain {

bool cuda_available() {
#if defined(MIXTRAIN_WITH_CUDA)
  return cuda_device_present();
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(Device device) {
  if (device == Device::CPU) return make_cpu_backend();
  if (device == Device::CUDA && !cuda_available()) {
#if defined(MIXTRAIN_WITH_CUDA)
    throw DeviceError("device cuda was requested but no CUDA GPU is visible");
#else
    throw DeviceError("device cuda was requested but this build has no CUDA backend");
#endif
  }
#if defined(MIXTRAIN_WITH_CUDA)
  if (cuda_available()) return make_cuda_backend();
#endif
  return make_cpu_backend();
}

}  // namespace mixtrain
