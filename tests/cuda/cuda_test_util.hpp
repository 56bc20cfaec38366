// Helpers of the CUDA tests: the same inputs on the CPU backend (the oracle) and the CUDA backend,
// outputs poisoned with NaN before each run, and element-wise comparison with per-element
// tolerances derived from the dtype epsilon.
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/env_switch.hpp"
#include "core/half.hpp"
#include "mixtrain/dtype.hpp"
#include "mixtrain/error.hpp"
#include "ops/backend.hpp"
#include "train/backend_factory.hpp"

namespace mixtrain::cuda_test {

inline constexpr double kEps32 = dtype_epsilon(DType::F32);

// Spacing of the smallest (subnormal) values of a dtype: the absolute resolution of a rounding
// to it near zero.
inline double dtype_min_subnormal(DType t) {
  switch (t) {
    case DType::F16:
      return 5.9604644775390625e-08;  // 2^-24
    case DType::BF16:
      return 9.183549615799121e-41;  // 2^-133
    default:
      return 1.401298464324817e-45;  // 2^-149
  }
}

inline std::uint16_t f16_bits(float v) {
  return float_to_f16(v);
}
inline std::uint16_t bf16_bits(float v) {
  return float_to_bf16(v);
}

// Rounds a float through a storage dtype, as the backends store it.
inline float round_to_dtype(float v, DType t) {
  switch (t) {
    case DType::F16:
      return f16_to_float(float_to_f16(v));
    case DType::BF16:
      return bf16_to_float(float_to_bf16(v));
    default:
      return v;
  }
}

// Packs float values into the bytes of a dtype (F32, F16, BF16, or I32 by truncation).
inline std::vector<unsigned char> to_bytes(const std::vector<float>& v, DType t) {
  std::vector<unsigned char> out(v.size() * dtype_size(t));
  for (std::size_t i = 0; i < v.size(); ++i) {
    unsigned char* p = out.data() + i * dtype_size(t);
    if (t == DType::F32) {
      std::memcpy(p, &v[i], 4);
    } else if (t == DType::I32) {
      const auto x = static_cast<std::int32_t>(v[i]);
      std::memcpy(p, &x, 4);
    } else {
      const std::uint16_t b = t == DType::F16 ? f16_bits(v[i]) : bf16_bits(v[i]);
      std::memcpy(p, &b, 2);
    }
  }
  return out;
}

inline std::vector<float> from_bytes(const std::vector<unsigned char>& bytes, DType t) {
  const std::size_t n = bytes.size() / dtype_size(t);
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char* p = bytes.data() + i * dtype_size(t);
    if (t == DType::F32) {
      std::memcpy(&out[i], p, 4);
    } else if (t == DType::I32) {
      std::int32_t x;
      std::memcpy(&x, p, 4);
      out[i] = static_cast<float>(x);
    } else {
      std::uint16_t b;
      std::memcpy(&b, p, 2);
      out[i] = t == DType::F16 ? f16_to_float(b) : bf16_to_float(b);
    }
  }
  return out;
}

// Device memory of one backend, freed on destruction.
class DeviceMemory {
 public:
  DeviceMemory(Backend& be, std::size_t bytes) : be_(&be), ptr_(be.alloc(bytes)), bytes_(bytes) {}
  ~DeviceMemory() {
    if (ptr_ != nullptr) be_->free(ptr_);
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }

 private:
  Backend* be_;
  void* ptr_;
  std::size_t bytes_;
};

// One tensor held by both backends: the same bytes uploaded to each. `offset` elements of slack
// at the front let a test pass a pointer that is not 16-byte aligned.
class Twin {
 public:
  Twin(Backend& cpu, Backend& gpu, DType t, std::int64_t n, std::int64_t offset = 0)
      : cpu_(cpu),
        gpu_(gpu),
        dtype_(t),
        n_(n),
        offset_(offset),
        cpu_mem_(cpu, static_cast<std::size_t>(n + offset) * dtype_size(t) + 16),
        gpu_mem_(gpu, static_cast<std::size_t>(n + offset) * dtype_size(t) + 16) {}

  DType dtype() const { return dtype_; }
  std::int64_t size() const { return n_; }
  void* cpu_ptr() const { return static_cast<char*>(cpu_mem_.get()) + offset_ * elem(); }
  void* gpu_ptr() const { return static_cast<char*>(gpu_mem_.get()) + offset_ * elem(); }
  Buf cpu() const { return Buf{cpu_ptr(), dtype_}; }
  Buf gpu() const { return Buf{gpu_ptr(), dtype_}; }

  // Stores values (rounded to the dtype) on both backends; returns the rounded values.
  std::vector<float> set(const std::vector<float>& values) {
    const std::vector<unsigned char> bytes = to_bytes(values, dtype_);
    cpu_.upload(cpu_ptr(), bytes.data(), bytes.size());
    gpu_.upload(gpu_ptr(), bytes.data(), bytes.size());
    return from_bytes(bytes, dtype_);
  }
  // NaN everywhere (or -1 for I32), so an element a kernel forgot to write shows.
  void poison() {
    set(std::vector<float>(static_cast<std::size_t>(n_), dtype_ == DType::I32 ? -1.0f : NAN));
  }

  std::vector<float> cpu_values() const { return read(cpu_, cpu_ptr()); }
  std::vector<float> gpu_values() const { return read(gpu_, gpu_ptr()); }

 private:
  std::size_t elem() const { return dtype_size(dtype_); }
  std::vector<float> read(Backend& be, const void* p) const {
    std::vector<unsigned char> bytes(static_cast<std::size_t>(n_) * elem());
    be.download(bytes.data(), p, bytes.size());
    return from_bytes(bytes, dtype_);
  }

  Backend& cpu_;
  Backend& gpu_;
  DType dtype_;
  std::int64_t n_;
  std::int64_t offset_;
  DeviceMemory cpu_mem_;
  DeviceMemory gpu_mem_;
};

// A StepControl on both backends.
class TwinControl {
 public:
  TwinControl(Backend& cpu, Backend& gpu)
      : cpu_(cpu),
        gpu_(gpu),
        cpu_mem_(cpu, sizeof(StepControl)),
        gpu_mem_(gpu, sizeof(StepControl)) {
    StepControl c{};
    c.loss_scale = 1.0f;
    c.inv_scale = 1.0f;
    c.learning_rate = 1e-3f;
    c.hysteresis_left = 1;
    c.optimizer_scalar = 1.0f;
    c.seed = 1234;
    set(c);
  }
  void set(const StepControl& c) {
    cpu_.upload(cpu_mem_.get(), &c, sizeof c);
    gpu_.upload(gpu_mem_.get(), &c, sizeof c);
  }
  StepControl* cpu() const { return static_cast<StepControl*>(cpu_mem_.get()); }
  StepControl* gpu() const { return static_cast<StepControl*>(gpu_mem_.get()); }
  StepControl cpu_value() const {
    StepControl c;
    cpu_.download(&c, cpu_mem_.get(), sizeof c);
    return c;
  }
  StepControl gpu_value() const {
    StepControl c;
    gpu_.download(&c, gpu_mem_.get(), sizeof c);
    return c;
  }

 private:
  Backend& cpu_;
  Backend& gpu_;
  DeviceMemory cpu_mem_;
  DeviceMemory gpu_mem_;
};

// Both values NaN, both the same infinity, or |gpu - cpu| <= tol.
inline bool close(float cpu, float gpu, double tol) {
  if (std::isnan(cpu) || std::isnan(gpu)) return std::isnan(cpu) && std::isnan(gpu);
  if (std::isinf(cpu) || std::isinf(gpu)) return cpu == gpu;
  return std::fabs(static_cast<double>(gpu) - static_cast<double>(cpu)) <= tol;
}

// Compares element by element; tol(i) is the allowed absolute difference at element i. Reports
// the first few mismatches (an unwritten, still-NaN element among them).
inline ::testing::AssertionResult all_close(const std::vector<float>& cpu,
                                            const std::vector<float>& gpu,
                                            const std::function<double(std::size_t)>& tol) {
  if (cpu.size() != gpu.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << cpu.size() << " vs " << gpu.size();
  }
  std::ostringstream msg;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    const double t = tol(i);
    if (!close(cpu[i], gpu[i], t)) {
      if (bad < 8) {
        msg << "\n  [" << i << "] cpu " << cpu[i] << " gpu " << gpu[i] << " |diff| "
            << std::fabs(static_cast<double>(gpu[i]) - cpu[i]) << " > tol " << t;
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << cpu.size() << " elements differ:" << msg.str();
}

inline ::testing::AssertionResult all_equal(const std::vector<float>& cpu,
                                            const std::vector<float>& gpu) {
  return all_close(cpu, gpu, [](std::size_t) { return 0.0; });
}

// No element left at its NaN poison (for outputs that are finite on the CPU).
inline ::testing::AssertionResult all_written(const std::vector<float>& gpu) {
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    if (std::isnan(gpu[i])) return ::testing::AssertionFailure() << "element " << i << " is NaN";
  }
  return ::testing::AssertionSuccess();
}

// Fixture: both backends and a random generator seeded differently for every test (from its
// name), so each test draws fresh inputs yet reruns reproduce them. Skips without a GPU.
class CudaVsCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_present()) GTEST_SKIP() << "no CUDA GPU visible";
    cpu_ = make_cpu_backend();
    gpu_ = make_cuda_backend();
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    seed_ = static_cast<std::uint32_t>(
        std::hash<std::string>{}(std::string(info->test_suite_name()) + "." + info->name()));
    rng_.seed(seed_);
  }

  Backend& cpu() { return *cpu_; }
  Backend& gpu() { return *gpu_; }

  std::vector<float> uniform(std::int64_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = d(rng_);
    return v;
  }
  std::vector<float> normal(std::int64_t n, float mean, float stddev) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = d(rng_);
    return v;
  }
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Backend> gpu_;
  std::uint32_t seed_ = 0;
  std::mt19937 rng_;
};

// Sets an environment variable for the scope (the backend reads its switches when created).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// Whether backends created now capture graphs (MIXTRAIN_CUDA_GRAPHS=0 turns capture off).
inline bool graphs_enabled() {
  return env_switch_on("MIXTRAIN_CUDA_GRAPHS");
}

inline std::vector<DType> float_dtypes() {
  return {DType::F32, DType::F16, DType::BF16};
}

inline std::string dtype_trace(DType t) {
  return "dtype " + std::string(dtype_name(t));
}

}  // namespace mixtrain::cuda_test
