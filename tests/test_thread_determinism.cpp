// Results of the CPU backend do not depend on the number of threads: the same seed gives the same
// bits with 1, 2 or 3 OpenMP threads (OMP_NUM_THREADS, or omp_set_num_threads as here).
//
// Why this is bit-exact by design, not by luck (docs/ARCHITECTURE.md, "Same bits for any thread
// count"): every reduction of the backend is split into pieces fixed by the problem size alone
// (rows, columns, images, fixed blocks of rows or parameters), each piece is summed by one thread
// in a fixed order, and the pieces' partials are combined in a fixed order on one thread; a
// thread count only decides which thread computes which piece. The GEMMs go through OpenBLAS,
// whose sgemm/dgemm split M and N among threads but block K differently on one thread and on
// several (driver/level3/level3.c and level3_thread.c split a K remainder between GEMM_Q and
// 2 * GEMM_Q in two different ways), so the backend calls OpenBLAS with K in fixed chunks of at
// most 256 (cpu_blas.hpp), within one OpenBLAS K block on every x86-64 core it targets, and adds
// the chunks in order. The OpenMP build of OpenBLAS takes its thread count from
// omp_get_max_threads(), so omp_set_num_threads drives both.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_blas.hpp"
#include "core/half.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain {
namespace {

// Sets the OpenMP thread count for its lifetime (OpenBLAS's OpenMP build follows it), then
// restores the previous one.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

constexpr int kThreadCounts[] = {1, 2, 3};

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(float));
  return out;
}

// Runs f with 1, 2 and 3 threads and expects the same bits from each; f returns the values to
// compare, concatenated.
void expect_same_bits_for_any_thread_count(const std::function<std::vector<float>()>& f) {
  std::vector<std::uint32_t> reference;
  for (int threads : kThreadCounts) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    std::vector<std::uint32_t> got;
    {
      ThreadCount tc(threads);
      got = bits(f());
    }
    if (reference.empty()) {
      reference = got;
      ASSERT_FALSE(reference.empty());
      continue;
    }
    ASSERT_EQ(got.size(), reference.size());
    std::size_t differ = 0, first = got.size();
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (got[i] != reference[i]) {
        if (differ++ == 0) first = i;
      }
    }
    EXPECT_EQ(differ, 0u) << "values differ from the 1-thread run, the first at " << first << " of "
                          << got.size();
  }
}

std::vector<float> random_values(std::mt19937& rng, std::size_t n, float lo = -1.0f,
                                 float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Ops

template <typename T>
std::vector<T> stored(const std::vector<float>& v) {
  std::vector<T> out;
  out.reserve(v.size());
  for (float x : v) out.push_back(store<T>(x));
  return out;
}

template <typename T>
std::vector<float> loaded(const std::vector<T>& v) {
  std::vector<float> out;
  out.reserve(v.size());
  for (const T& x : v) out.push_back(static_cast<float>(load(x)));
  return out;
}

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, f16>) return DType::F16;
  if constexpr (std::is_same_v<T, bf16>) return DType::BF16;
  return DType::F32;
}

// The GEMM shapes of a training step (forward x W^T, backward dy W, dW = dy^T x) with K both
// below and far above OpenBLAS's K block, large enough that OpenBLAS runs them threaded.
template <typename T>
void check_gemm_shapes() {
  struct Shape3 {
    bool ta, tb;
    std::int64_t m, n, k;
  };
  const Shape3 shapes[] = {{false, true, 64, 512, 784},  {false, false, 64, 784, 512},
                           {true, false, 512, 784, 64},  {false, true, 100, 100, 1000},
                           {true, false, 17, 300, 5000}, {false, true, 333, 257, 700},
                           {true, false, 32, 288, 12544}};
  for (const Shape3& s : shapes) {
    SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
    std::mt19937 rng(5);
    const std::vector<T> a = stored<T>(random_values(rng, static_cast<std::size_t>(s.m * s.k)));
    const std::vector<T> b = stored<T>(random_values(rng, static_cast<std::size_t>(s.k * s.n)));
    const std::vector<float> bias = random_values(rng, static_cast<std::size_t>(s.n));
    expect_same_bits_for_any_thread_count([&] {
      cpu::CpuBackend be;
      GemmDesc g;
      g.trans_a = s.ta;
      g.trans_b = s.tb;
      g.m = s.m;
      g.n = s.n;
      g.k = s.k;
      g.a = CBuf(a.data(), dtype_of<T>());
      g.lda = s.ta ? s.m : s.k;
      g.b = CBuf(b.data(), dtype_of<T>());
      g.ldb = s.tb ? s.k : s.n;
      g.ldc = s.n;
      // fp32 output (a weight gradient's shape), then the compute dtype with a bias and ReLU.
      std::vector<float> c32(static_cast<std::size_t>(s.m * s.n));
      g.c = Buf{c32.data(), DType::F32};
      be.gemm(g);
      std::vector<T> ct(c32.size());
      g.c = Buf{ct.data(), dtype_of<T>()};
      g.bias = CBuf(bias.data(), DType::F32);
      g.epilogue = Activation::ReLU;
      be.gemm(g);
      std::vector<float> out = c32;
      const std::vector<float> low = loaded(ct);
      out.insert(out.end(), low.begin(), low.end());
      return out;
    });
  }
}

TEST(ThreadCountDeterminism, GemmFp32) {
  check_gemm_shapes<float>();
}
TEST(ThreadCountDeterminism, GemmFp16) {
  check_gemm_shapes<f16>();
}
TEST(ThreadCountDeterminism, GemmBf16) {
  check_gemm_shapes<bf16>();
}

// The cut of a product depends on its shape only, covers it, and stays within its bounds.
TEST(ThreadCountDeterminism, GemmTilingCoversTheProduct) {
  const std::int64_t shapes[][3] = {{1, 1, 1},        {64, 10, 256},     {64, 512, 784},
                                    {512, 784, 64},   {32, 9, 50176},    {64, 288, 12544},
                                    {12544, 64, 288}, {512, 4096, 4096}, {1000, 500, 1000},
                                    {3, 5, 0},        {16, 16, 20000}};
  for (const auto& s : shapes) {
    const std::int64_t m = s[0], n = s[1], k = s[2];
    SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k));
    const cpu::GemmTiling t = cpu::gemm_tiling(m, n, k);
    EXPECT_GE(t.pieces(), 1);
    EXPECT_LE(t.pieces(), 16);
    EXPECT_GE(t.tiles_m * t.tile_m, m);
    EXPECT_LT((t.tiles_m - 1) * t.tile_m, std::max<std::int64_t>(m, 1));
    EXPECT_GE(t.tiles_n * t.tile_n, n);
    EXPECT_LT((t.tiles_n - 1) * t.tile_n, std::max<std::int64_t>(n, 1));
    if (t.tile_m != m) {
      EXPECT_EQ(t.tile_m % 16, 0);
    }
    if (t.tile_n != n) {
      EXPECT_EQ(t.tile_n % 16, 0);
    }
    EXPECT_GE(t.groups * t.k_group, k);
    if (t.groups > 1) {
      EXPECT_LT((t.groups - 1) * t.k_group, k);
      EXPECT_GE(t.k_group, 512);
    }
  }
}

// blas_gemm against a double-precision product, alpha and beta included, through both of its
// paths: tiles only, and a small C with a long K cut into groups (partials added in order).
TEST(ThreadCountDeterminism, BlasGemmComputesTheProduct) {
  struct Case {
    bool ta, tb;
    std::int64_t m, n, k;
  };
  for (const Case& s : {Case{false, true, 100, 300, 700}, Case{true, false, 16, 16, 20000},
                        Case{true, true, 24, 40, 9000}, Case{false, false, 3, 5, 0}}) {
    SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
    if (s.k > 0 && s.n * s.m < 1000) {
      EXPECT_GT(cpu::gemm_tiling(s.m, s.n, s.k).groups, 1);
    }
    std::mt19937 rng(21);
    const std::int64_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n, ldc = s.n + 3;
    const std::vector<float> a = random_values(rng, static_cast<std::size_t>(s.m * s.k));
    const std::vector<float> b = random_values(rng, static_cast<std::size_t>(s.k * s.n));
    std::vector<float> c = random_values(rng, static_cast<std::size_t>(s.m * ldc));
    const std::vector<float> c0 = c;
    std::vector<float> partials;
    const float alpha = 0.5f, beta = -2.0f;
    cpu::blas_gemm(s.ta, s.tb, s.m, s.n, s.k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(),
                   ldc, partials);
    for (std::int64_t i = 0; i < s.m; ++i) {
      for (std::int64_t j = 0; j < ldc; ++j) {
        const auto at = static_cast<std::size_t>(i * ldc + j);
        if (j >= s.n) {  // outside C: untouched
          EXPECT_EQ(c[at], c0[at]);
          continue;
        }
        double want = 0.0;
        for (std::int64_t p = 0; p < s.k; ++p) {
          const double x = a[static_cast<std::size_t>(s.ta ? p * lda + i : i * lda + p)];
          const double y = b[static_cast<std::size_t>(s.tb ? j * ldb + p : p * ldb + j)];
          want += x * y;
        }
        want = alpha * want + beta * static_cast<double>(c0[at]);
        EXPECT_NEAR(c[at], want, 1e-5 * (1.0 + std::sqrt(static_cast<double>(s.k))))
            << i << ", " << j;
      }
    }
  }
}

// A convolution's three passes; the filter gradient is a GEMM with K = N * P * Q = 5776 (not a
// multiple of OpenBLAS's K block: the last blocks are split by a rule that differs with threads).
template <typename T>
void check_conv() {
  ConvDesc d;
  d.N = 16, d.H = 19, d.W = 19, d.C = 8, d.K = 24, d.R = 3, d.S = 3;
  d.pad_h = 1, d.pad_w = 1;
  d.P = 19, d.Q = 19;
  std::mt19937 rng(9);
  const auto count = [](std::int64_t n) { return static_cast<std::size_t>(n); };
  const std::vector<T> x = stored<T>(random_values(rng, count(d.N * d.H * d.W * d.C)));
  const std::vector<T> w = stored<T>(random_values(rng, count(d.K * d.R * d.S * d.C)));
  const std::vector<T> bias = stored<T>(random_values(rng, count(d.K)));
  const std::vector<T> dy = stored<T>(random_values(rng, count(d.N * d.P * d.Q * d.K)));
  constexpr DType dt = dtype_of<T>();
  expect_same_bits_for_any_thread_count([&] {
    cpu::CpuBackend be;
    std::vector<T> y(dy.size()), dx(x.size()), dw(w.size());
    std::vector<float> db(count(d.K));
    be.conv2d_forward(d, CBuf(x.data(), dt), CBuf(w.data(), dt), CBuf(bias.data(), dt),
                      Buf{y.data(), dt});
    be.conv2d_backward_data(d, CBuf(dy.data(), dt), CBuf(w.data(), dt), Buf{dx.data(), dt}, false);
    be.conv2d_backward_filter(d, CBuf(x.data(), dt), CBuf(dy.data(), dt), Buf{dw.data(), dt},
                              Buf{db.data(), DType::F32});
    std::vector<float> out = loaded(y);
    for (const auto& part : {loaded(dx), loaded(dw), db}) {
      out.insert(out.end(), part.begin(), part.end());
    }
    return out;
  });
}

TEST(ThreadCountDeterminism, ConvFp32) {
  check_conv<float>();
}
TEST(ThreadCountDeterminism, ConvFp16) {
  check_conv<f16>();
}
TEST(ThreadCountDeterminism, ConvBf16) {
  check_conv<bf16>();
}

// ---------------------------------------------------------------------------------------------
// Training

struct Data {
  std::vector<float> x;
  std::vector<std::int32_t> labels;
  std::vector<float> targets;
};

// `steps` batches of [batch, features...] inputs, class labels in [0, classes) and targets in
// [0, 1] of [batch, outputs] (one-hot of the labels when one_hot).
Data make_data(int steps, std::int64_t batch, std::int64_t features, std::int64_t outputs,
               bool one_hot, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Data d;
  d.x = random_values(rng, static_cast<std::size_t>(steps * batch * features), -2.0f, 2.0f);
  std::uniform_int_distribution<std::int32_t> label(0, static_cast<std::int32_t>(outputs - 1));
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (std::int64_t i = 0; i < steps * batch; ++i) {
    const std::int32_t l = label(rng);
    d.labels.push_back(l);
    for (std::int64_t o = 0; o < outputs; ++o) {
      d.targets.push_back(one_hot ? (o == l ? 1.0f : 0.0f) : unit(rng));
    }
  }
  return d;
}

// Trains `steps` steps and returns the master weights (and batch-norm running statistics), then
// every step's loss, loss scale and gradient norm, then the predictions on the first batch.
std::vector<float> train(const Model& model, const TrainerConfig& config, const Data& data,
                         int steps, const Shape& sample) {
  Trainer t(model, config);
  const std::int64_t batch = model.input_shape()[0];
  std::int64_t features = 1;
  for (std::int64_t s : sample) features *= s;
  Shape input = {batch};
  input.insert(input.end(), sample.begin(), sample.end());
  const std::int64_t outputs = static_cast<std::int64_t>(data.targets.size() / data.labels.size());
  for (int s = 0; s < steps; ++s) {
    const float* x = data.x.data() + s * batch * features;
    if (loss_takes_labels(config.loss)) {
      t.train_batch(x, input, data.labels.data() + s * batch, {batch});
    } else {
      t.train_batch(x, input, data.targets.data() + s * batch * outputs, {batch, outputs});
    }
  }
  std::vector<float> out = t.weights();
  for (const StepStats& st : t.history()) {
    out.push_back(st.loss);
    out.push_back(st.loss_scale);
    out.push_back(st.grad_norm);
    out.push_back(st.skipped ? 1.0f : 0.0f);
  }
  const std::vector<float> pred = t.predict(data.x.data(), input);
  out.insert(out.end(), pred.begin(), pred.end());
  return out;
}

TrainerConfig config(Precision p, Loss loss = Loss::SparseCrossEntropy) {
  TrainerConfig c;
  c.device = Device::CPU;
  c.precision = p;
  c.loss = loss;
  c.learning_rate = 1e-2f;
  c.clip_grad_norm = 1.0f;  // the gradient norm feeds the update
  c.seed = 3;
  return c;
}

class ThreadCountTraining : public ::testing::TestWithParam<Precision> {};

// An MLP whose first layer has K = 1000 inputs (several OpenBLAS K blocks), with dropout (the
// counter-based RNG) and GELU; Adam with clipping. In BF16 a difference in a product shows only
// where it crosses a rounding boundary of bf16, hence the larger layers and the extra steps.
TEST_P(ThreadCountTraining, Mlp) {
  constexpr int kSteps = 6;
  const Data data = make_data(kSteps, 128, 1000, 10, false, 11);
  const Model model = ModelBuilder({128, 1000})
                          .dense(256)
                          .relu()
                          .dropout(0.2f)
                          .dense(64)
                          .gelu(true)
                          .dense(10)
                          .compile();
  expect_same_bits_for_any_thread_count(
      [&] { return train(model, config(GetParam()), data, kSteps, {1000}); });
}

// Conv (filter gradients: K = N * P * Q), batch-norm (statistics over rows), max and average
// pooling (backward accumulation), global average pooling; SGD with momentum. 15x15 images: the
// filter gradients' K (16 * 15 * 15 = 3600, then 16 * 7 * 7 = 784) ends in a K block that one
// thread and several split differently.
TEST_P(ThreadCountTraining, Cnn) {
  constexpr int kSteps = 3;
  const Data data = make_data(kSteps, 16, 15 * 15 * 3, 10, false, 12);
  const Model model = ModelBuilder({16, 15, 15, 3})
                          .conv2d(16, 3, {.padding = "same"})
                          .batch_norm()
                          .relu()
                          .max_pool2d(2)
                          .conv2d(32, 3, {.padding = "same", .bias = false})
                          .batch_norm()
                          .relu()
                          .avg_pool2d(2)
                          .global_avg_pool()
                          .dense(10)
                          .compile();
  TrainerConfig c = config(GetParam());
  c.optimizer = Optimizer::SGD;
  c.sgd.momentum = 0.9f;
  expect_same_bits_for_any_thread_count([&] { return train(model, c, data, kSteps, {15, 15, 3}); });
}

INSTANTIATE_TEST_SUITE_P(AllPrecisions, ThreadCountTraining,
                         ::testing::Values(Precision::FP32, Precision::FP16, Precision::BF16),
                         [](const auto& param_info) {
                           return std::string(precision_name(param_info.param));
                         });

// Every loss (their means over the batch, their gradients), on an MLP with K = 700 inputs.
TEST(ThreadCountDeterminism, EveryLoss) {
  constexpr int kSteps = 3;
  for (Loss loss :
       {Loss::CrossEntropy, Loss::BinaryCrossEntropy, Loss::BinaryCrossEntropyWithLogits,
        Loss::MeanSquaredError, Loss::MeanAbsoluteError, Loss::Huber}) {
    SCOPED_TRACE(std::string(loss_name(loss)));
    const bool one_hot = loss == Loss::CrossEntropy;
    const Data data = make_data(kSteps, 64, 700, 8, one_hot, 13);
    ModelBuilder b({64, 700});
    b.dense(96).tanh().dense(8);
    if (loss == Loss::BinaryCrossEntropy) b.sigmoid();
    const Model model = b.compile();
    for (Precision p : {Precision::FP32, Precision::FP16}) {
      SCOPED_TRACE(std::string(precision_name(p)));
      expect_same_bits_for_any_thread_count(
          [&] { return train(model, config(p, loss), data, kSteps, {700}); });
    }
  }
}

}  // namespace
}  // namespace mixtrain
