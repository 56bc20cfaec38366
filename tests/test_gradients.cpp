// Every layer's and loss's gradient against float64 finite differences, on the CPU backend's F64
// dtype (tests/grad_check.hpp explains the method and the tolerances), and a small residual
// graph end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <ostream>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "mixtrain/model.hpp"

namespace mixtrain {
namespace {

using gradcheck::Draw;
using gradcheck::Vec;

// ---------------------------------------------------------------------------------------------
// Layers

struct LayerCase {
  std::string label;  // test name
  std::string type;
  nlohmann::json attrs;
  std::vector<Shape> in_shapes;  // per sample
  std::int64_t batch;
  std::function<double(Draw&)> input;
};

// Test names print the label, not the bytes of the case.
void PrintTo(const LayerCase& c, std::ostream* os) {
  *os << c.label;
}

double symmetric(Draw& d) {
  return d.uniform(-2.0, 2.0);
}
// Inputs clear of 0, where ReLU and LeakyReLU have a kink and ELU a jump in f''.
double off_zero(Draw& d) {
  return d.away_from_zero(0.1, 2.5);
}

std::vector<LayerCase> layer_cases() {
  using J = nlohmann::json;
  return {
      {"DenseBias", "dense", J{{"units", 4}}, {{5}}, 3, symmetric},
      {"DenseNoBias", "dense", J{{"units", 4}, {"bias", false}}, {{5}}, 3, symmetric},
      {"Dense3D", "dense", J{{"units", 4}}, {{3, 5}}, 2, symmetric},
      {"Dense3DNoBias", "dense", J{{"units", 3}, {"bias", false}}, {{2, 4}}, 3, symmetric},
      {"ReLU", "relu", J::object(), {{2, 5}}, 3, off_zero},
      {"LeakyReLU", "leaky_relu", J{{"negative_slope", 0.2}}, {{2, 5}}, 3, off_zero},
      {"ELU", "elu", J{{"alpha", 0.7}}, {{2, 5}}, 3, off_zero},
      {"Sigmoid", "sigmoid", J::object(), {{2, 5}}, 3, off_zero},
      {"Tanh", "tanh", J::object(), {{2, 5}}, 3, off_zero},
      {"Swish", "swish", J::object(), {{2, 5}}, 3, off_zero},
      {"GELU", "gelu", J::object(), {{2, 5}}, 3, off_zero},
      {"GELUTanh", "gelu", J{{"approximate", true}}, {{2, 5}}, 3, off_zero},
      {"Softmax", "softmax", J::object(), {{6}}, 3, symmetric},
      {"Softmax3D", "softmax", J::object(), {{2, 5}}, 2, symmetric},
      {"Dropout", "dropout", J{{"rate", 0.3}}, {{12}}, 4, symmetric},
      {"Flatten", "flatten", J::object(), {{2, 3, 2}}, 2, symmetric},
      {"Reshape", "reshape", J{{"shape", {3, -1}}}, {{6, 2}}, 2, symmetric},
      {"Add", "add", J::object(), {{4, 3}, {4, 3}}, 2, symmetric},
  };
}

class LayerGradient : public ::testing::TestWithParam<LayerCase> {};

TEST_P(LayerGradient, MatchesFloat64FiniteDifferences) {
  const LayerCase& c = GetParam();
  for (std::uint64_t seed : {1u, 2u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const double worst =
        gradcheck::check_layer(c.type, c.attrs, c.in_shapes, c.batch, seed, c.input);
    RecordProperty("worst_scaled_error_seed" + std::to_string(seed), std::to_string(worst));
  }
}

INSTANTIATE_TEST_SUITE_P(AllLayers, LayerGradient, ::testing::ValuesIn(layer_cases()),
                         [](const ::testing::TestParamInfo<LayerCase>& param_info) {
                           return param_info.param.label;
                         });

// The dropout check is only meaningful when the fixed mask drops some elements and keeps others.
TEST(LayerGradientSetup, DropoutMaskDropsAndKeeps) {
  gradcheck::LayerRun run("dropout", {{"rate", 0.3}}, {{12}}, 4, 1, symmetric);
  const Vec y = run.forward();
  int dropped = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] == 0.0) {
      ++dropped;
    } else {
      // Kept elements are scaled by 1 / (1 - rate), in double.
      EXPECT_NEAR(y[i], run.inputs[0][i] / (1.0 - static_cast<double>(0.3f)), 1e-15);
    }
  }
  EXPECT_GT(dropped, 4);
  EXPECT_LT(dropped, 44);
}

// The F64 path computes in double (an fp32 slip would be ~1e-8 off): forward outputs against
// direct double formulas.
TEST(Float64Path, ForwardIsDoublePrecision) {
  const double eps = dtype_epsilon(DType::F64);
  {
    gradcheck::LayerRun run("dense", {{"units", 4}}, {{5}}, 3, 3, symmetric);
    const Vec y = run.forward();
    const Vec& x = run.inputs[0];
    const Vec& w = run.params[0];
    const Vec& b = run.params[1];
    for (int r = 0; r < 3; ++r) {
      for (int u = 0; u < 4; ++u) {
        double want = b[static_cast<std::size_t>(u)];
        for (int k = 0; k < 5; ++k) {
          want += x[static_cast<std::size_t>(r * 5 + k)] * w[static_cast<std::size_t>(u * 5 + k)];
        }
        EXPECT_NEAR(y[static_cast<std::size_t>(r * 4 + u)], want, 16 * eps);
      }
    }
  }
  struct Ref {
    const char* type;
    nlohmann::json attrs;
    double (*f)(double);
  };
  const Ref refs[] = {
      {"sigmoid", nlohmann::json::object(), [](double v) { return 1.0 / (1.0 + std::exp(-v)); }},
      {"tanh", nlohmann::json::object(), [](double v) { return std::tanh(v); }},
      {"swish", nlohmann::json::object(), [](double v) { return v / (1.0 + std::exp(-v)); }},
      {"elu", {{"alpha", 0.5}}, [](double v) { return v > 0 ? v : 0.5 * std::expm1(v); }},
      {"gelu", nlohmann::json::object(),
       [](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }},
      {"gelu",
       {{"approximate", true}},
       [](double v) {
         return 0.5 * v *
                (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
       }},
  };
  for (const Ref& ref : refs) {
    SCOPED_TRACE(std::string(ref.type) + " " + ref.attrs.dump());
    gradcheck::LayerRun run(ref.type, ref.attrs, {{7}}, 3, 4, off_zero);
    const Vec y = run.forward();
    for (std::size_t i = 0; i < y.size(); ++i) {
      const double want = ref.f(run.inputs[0][i]);
      EXPECT_NEAR(y[i], want, 8 * eps * std::max(1.0, std::fabs(want))) << run.inputs[0][i];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Losses

struct LossCase {
  std::string label;
  LossKind kind;
  float delta;  // Huber
  std::function<double(Draw&)> pred;
  // Target for a prediction; kept clear of the kinks (MAE at p = t, Huber at |p - t| = delta).
  std::function<float(Draw&, double)> target;
};

void PrintTo(const LossCase& c, std::ostream* os) {
  *os << c.label;
}

float unit_target(Draw& d, double) {
  return static_cast<float>(d.uniform(0.0, 1.0));
}
// p - t of magnitude in [0.05, 0.45] or [0.55, 1.5]: either side of a delta of 0.5, never at it.
float off_kink_target(Draw& d, double p) {
  const double m = (d.bits() & 2) != 0 ? d.uniform(0.05, 0.45) : d.uniform(0.55, 1.5);
  const double t = (d.bits() & 1) != 0 ? p + m : p - m;
  return static_cast<float>(std::ldexp(std::round(std::ldexp(t, 20)), -20));  // exact in float
}

std::vector<LossCase> loss_cases() {
  auto logits = [](Draw& d) { return d.uniform(-3.0, 3.0); };
  auto probs = [](Draw& d) { return d.uniform(0.25, 0.75); };  // clear of the clamp at 1e-7
  auto any = [](Draw& d) { return d.uniform(-2.0, 2.0); };
  return {
      {"SparseCrossEntropy", LossKind::SparseCrossEntropy, 1.0f, logits, nullptr},
      {"CrossEntropy", LossKind::CrossEntropy, 1.0f, logits, nullptr},
      {"CrossEntropyProbs", LossKind::CrossEntropyProbs, 1.0f, probs, nullptr},
      {"BinaryCrossEntropy", LossKind::BinaryCrossEntropy, 1.0f, probs, unit_target},
      {"BinaryCrossEntropyLogits", LossKind::BinaryCrossEntropyLogits, 1.0f, logits, unit_target},
      {"MeanSquaredError", LossKind::MeanSquaredError, 1.0f, any, unit_target},
      {"MeanAbsoluteError", LossKind::MeanAbsoluteError, 1.0f, any, off_kink_target},
      {"Huber", LossKind::Huber, 0.5f, any, off_kink_target},
  };
}

class LossRun {
 public:
  LossRun(const LossCase& c, std::int64_t rows, std::int64_t cols, std::uint64_t seed)
      : c_(c), rows_(rows), cols_(cols), draw_(seed) {
    const auto n = static_cast<std::size_t>(rows * cols);
    pred = draw_.vec(n, c.pred);
    if (c.kind == LossKind::SparseCrossEntropy) {
      for (std::int64_t r = 0; r < rows; ++r) {
        labels.push_back(
            static_cast<std::int32_t>(draw_.bits() % static_cast<std::uint64_t>(cols)));
      }
    } else if (c.target == nullptr) {  // probability rows (soft labels)
      targets.resize(n);
      for (std::int64_t r = 0; r < rows; ++r) {
        float sum = 0.0f;
        for (std::int64_t k = 0; k < cols; ++k) {
          sum += targets[static_cast<std::size_t>(r * cols + k)] =
              static_cast<float>(draw_.uniform(0.05, 1.0));
        }
        for (std::int64_t k = 0; k < cols; ++k)
          targets[static_cast<std::size_t>(r * cols + k)] /= sum;
      }
    } else {
      for (std::size_t i = 0; i < n; ++i) targets.push_back(c.target(draw_, pred[i]));
    }
  }

  // The mean loss, in double; with `grad`, also d(loss * scale)/d pred into it.
  double run(Vec* grad = nullptr, float scale = 1.0f) {
    StepControl control{};
    control.loss_scale = scale;
    control.inv_scale = 1.0f / scale;
    LossDesc d;
    d.kind = c_.kind;
    d.huber_delta = c_.delta;
    d.pred = gradcheck::cbuf(pred);
    d.rows = rows_;
    d.cols = cols_;
    d.labels = labels.empty() ? nullptr : labels.data();
    d.targets = targets.empty() ? nullptr : targets.data();
    float loss32 = 0.0f;
    d.loss = &loss32;
    if (grad != nullptr) {
      grad->assign(pred.size(), gradcheck::kPoison);
      d.dpred = gradcheck::buf(*grad);
    }
    d.control = &control;
    backend_.loss(d);
    EXPECT_EQ(loss32, static_cast<float>(backend_.last_loss()));
    return backend_.last_loss();
  }

  // The mean loss by direct double formulas.
  double reference() const {
    double total = 0.0;
    for (std::int64_t r = 0; r < rows_; ++r) {
      const double* x = pred.data() + r * cols_;
      double mx = x[0];
      for (std::int64_t k = 1; k < cols_; ++k) mx = std::max(mx, x[k]);
      double s = 0.0;
      for (std::int64_t k = 0; k < cols_; ++k) s += std::exp(x[k] - mx);
      const double lse = mx + std::log(s);
      for (std::int64_t k = 0; k < cols_; ++k) {
        const double p = x[k];
        const double t = labels.empty() ? targets[static_cast<std::size_t>(r * cols_ + k)]
                                        : (labels[static_cast<std::size_t>(r)] == k ? 1.0 : 0.0);
        const double dlt = p - t, a = std::fabs(dlt), delta = c_.delta;
        switch (c_.kind) {
          case LossKind::SparseCrossEntropy:
          case LossKind::CrossEntropy:
            total += t * (lse - p);
            break;
          case LossKind::CrossEntropyProbs:
            total += -t * std::log(p);
            break;
          case LossKind::BinaryCrossEntropy:
            total += -(t * std::log(p) + (1 - t) * std::log(1 - p));
            break;
          case LossKind::BinaryCrossEntropyLogits:
            total +=
                -(t * std::log(1 / (1 + std::exp(-p))) + (1 - t) * std::log(1 / (1 + std::exp(p))));
            break;
          case LossKind::MeanSquaredError:
            total += dlt * dlt;
            break;
          case LossKind::MeanAbsoluteError:
            total += a;
            break;
          case LossKind::Huber:
            total += a <= delta ? 0.5 * dlt * dlt : delta * (a - 0.5 * delta);
            break;
        }
      }
    }
    // The cross-entropies are summed over classes and averaged over rows; the others are
    // averaged over every element.
    const bool per_row = c_.kind == LossKind::SparseCrossEntropy ||
                         c_.kind == LossKind::CrossEntropy ||
                         c_.kind == LossKind::CrossEntropyProbs;
    return total / static_cast<double>(per_row ? rows_ : rows_ * cols_);
  }

  Vec pred;
  std::vector<float> targets;
  std::vector<std::int32_t> labels;

 private:
  const LossCase& c_;
  std::int64_t rows_, cols_;
  Draw draw_;
  cpu::CpuBackend backend_;
};

class LossGradient : public ::testing::TestWithParam<LossCase> {};

TEST_P(LossGradient, ValueMatchesDoubleFormula) {
  LossRun run(GetParam(), 4, 5, 11);
  const double want = run.reference();
  EXPECT_NEAR(run.run(), want, 1e-14 * std::max(1.0, std::fabs(want)));
}

TEST_P(LossGradient, MatchesFloat64FiniteDifferences) {
  for (std::uint64_t seed : {1u, 2u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    LossRun run(GetParam(), 4, 5, seed);
    Vec g1, g1024;
    const double l0 = run.run(&g1, 1.0f);
    run.run(&g1024, 1024.0f);
    Vec unscaled(g1024.size());
    for (std::size_t i = 0; i < g1024.size(); ++i) unscaled[i] = g1024[i] / 1024.0;
    Vec fd(run.pred.size());
    for (std::size_t j = 0; j < fd.size(); ++j) {
      fd[j] = gradcheck::central_difference([&](double d) {
        const double keep = run.pred[j];
        run.pred[j] = keep + d;
        const double l = run.run();
        run.pred[j] = keep;
        return l - l0;
      });
    }
    gradcheck::expect_gradient_near("dpred (scale 1)", g1, fd);
    gradcheck::expect_gradient_near("dpred (scale 1024) / 1024", unscaled, fd);
    // A power-of-two scale is exact: the scaled gradient is the unscaled one times 1024.
    for (std::size_t i = 0; i < g1.size(); ++i) EXPECT_EQ(unscaled[i], g1[i]) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(AllLosses, LossGradient, ::testing::ValuesIn(loss_cases()),
                         [](const ::testing::TestParamInfo<LossCase>& param_info) {
                           return param_info.param.label;
                         });

TEST(GraphGradient, ResidualMlpWithDropoutAndCrossEntropy) {
  const Model model =
      ModelBuilder({3, 4})
          .dense(6)
          .gelu()
          .residual([](ModelBuilder& b) { b.dense(6).tanh().dropout(0.25f); },
                    [](ModelBuilder& b) { b.dense(6, {.name = "shortcut", .bias = false}); })
          .swish()
          .residual([](ModelBuilder& b) { b.dense(6).elu(0.5f); })
          .dense(3)
          .compile();
  gradcheck::check_graph(model, LossKind::SparseCrossEntropy);
}

TEST(GraphGradient, SequenceDenseFlattenSoftmax) {
  const Model model =
      ModelBuilder({2, 3, 4}).dense(5).sigmoid().flatten().dense(4).softmax().compile();
  gradcheck::check_graph(model, LossKind::CrossEntropyProbs);
}

}  // namespace
}  // namespace mixtrain
