// Float64 finite-difference gradient checks on the CPU backend's F64 dtype: the project's rule
// that every op's gradient is checked against float64 finite differences.
//
// Method. A layer (or a graph, or a loss) is run on F64 buffers. For a layer, the scalar
// objective is L = sum_i w_i y_i with fixed random weights w, so dL/dy = w: backward() runs with
// grad_output = w and its input and parameter gradients are compared, coordinate by coordinate,
// with a fourth-order central difference of L:
//
//   g_j ~ (8 (D(h) - D(-h)) - (D(2h) - D(-2h))) / (12 h),  D(d) = L(theta + d e_j) - L(theta).
//
// Error budget (why h = 2^-11 and a relative tolerance of 1e-8 hold with a wide margin):
// - Truncation: h^4 / 30 * |f^(5)| ~ 2e-15 * |f^(5)|. Inputs are O(1) and kept more than 2h
//   away from kinks (ReLU at 0, MAE at p = t, Huber at |p - t| = delta) and clamps
//   (probabilities in [0.25, 0.75]); the largest fifth derivative is the BCE's,
//   24 / p^5 ~ 2.5e4 at p = 0.25, hence ~5e-11 at worst.
// - Rounding: for a layer, D is summed as sum_i w_i (y_i(theta + d e_j) - y_i(theta)). Outputs
//   that do not depend on theta_j are bit-identical in both runs and contribute exactly 0, so D
//   carries only the rounding of the few outputs that move, about eps * |y| each
//   (eps = 2^-52), amplified by 18 / (12 h) ~ 3e3: ~1e-12. For a loss (a graph), D is a
//   difference of two mean losses, each rounded to ~eps * |L|: again ~1e-12 absolute.
// - The perturbed values theta_j + k h are exact: every drawn value is a multiple of 2^-30 with
//   magnitude below 2^20, and h is a power of two.
// A coordinate passes when |g - fd| <= kRelTol * max(|g|, |fd|, kFloor). The floor (1e-3) keeps
// gradients that are zero or nearly so (dropped dropout elements, saturated sigmoids) from being
// judged relative to themselves. Observed worst scaled errors: 2e-11 for the layers, 5e-11 for
// the losses, 2e-10 for the residual graph: 1e-8 leaves a margin of 50 or more, and still
// catches an op that slips into fp32 (errors ~6e-8 relative). A plain second-order difference
// with the usual h ~ 1e-6 has errors near 1e-10 relative with a heavier tail and would need a
// ~1e-6 tolerance, which would not.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_backend.hpp"
#include "graph/graph.hpp"
#include "layers/layer.hpp"
#include "mixtrain/model.hpp"

namespace mixtrain::gradcheck {

using Vec = std::vector<double>;

inline constexpr double kStep = 0.00048828125;  // 2^-11
inline constexpr double kRelTol = 1e-8;
inline constexpr double kFloor = 1e-3;

// Fourth-order central difference of f'(0), where f(0) is taken as 0 (D above).
template <typename F>
double central_difference(F&& f, double h = kStep) {
  const double d1 = f(h) - f(-h);
  const double d2 = f(2 * h) - f(-2 * h);
  return (8 * d1 - d2) / (12 * h);
}

// Draws values on the 2^-30 grid (so that x + k h is exact).
class Draw {
 public:
  explicit Draw(std::uint64_t seed) : rng_(seed) {}
  double uniform(double lo, double hi) {
    const double u = std::uniform_real_distribution<double>(lo, hi)(rng_);
    return std::ldexp(std::round(std::ldexp(u, 30)), -30);
  }
  // |x| in [lo, hi] with a random sign: clear of a kink at 0.
  double away_from_zero(double lo, double hi) {
    const double m = uniform(lo, hi);
    return (rng_() & 1) != 0 ? m : -m;
  }
  Vec vec(std::size_t n, const std::function<double(Draw&)>& f) {
    Vec v(n);
    for (double& x : v) x = f(*this);
    return v;
  }
  std::uint64_t bits() { return rng_(); }

 private:
  std::mt19937_64 rng_;
};

// Compares an analytic gradient with a numeric one; returns the largest scaled error
// |g - fd| / max(|g|, |fd|, floor) and adds a failure for each coordinate above rtol (the first
// few are listed).
inline double expect_gradient_near(const std::string& what, const Vec& analytic, const Vec& numeric,
                                   double rtol = kRelTol, double floor = kFloor) {
  EXPECT_EQ(analytic.size(), numeric.size()) << what;
  double worst = 0.0;
  int reported = 0;
  for (std::size_t j = 0; j < std::min(analytic.size(), numeric.size()); ++j) {
    const double g = analytic[j], fd = numeric[j];
    const double scale = std::max({std::fabs(g), std::fabs(fd), floor});
    const double err = std::fabs(g - fd) / scale;
    if (!(err <= rtol)) {  // also catches nan
      if (reported++ < 5) {
        ADD_FAILURE() << what << "[" << j << "]: analytic " << g << ", finite difference " << fd
                      << ", scaled error " << err << " > " << rtol;
      }
    }
    worst = std::isnan(err) ? err : std::max(worst, err);
  }
  return worst;
}

inline CBuf cbuf(const Vec& v) {
  return CBuf(v.data(), DType::F64);
}
inline Buf buf(Vec& v) {
  return Buf{v.data(), DType::F64};
}

// A quiet nan: what the gradient buffers hold before a backward that should overwrite them.
inline constexpr double kPoison = std::numeric_limits<double>::quiet_NaN();

// One layer built by make_layer, with F64 inputs, parameters and objective weights.
class LayerRun {
 public:
  struct Grads {
    std::vector<Vec> inputs;
    std::vector<Vec> params;
  };

  LayerRun(const std::string& type, const nlohmann::json& attrs, std::vector<Shape> in_shapes,
           std::int64_t batch, std::uint64_t seed, const std::function<double(Draw&)>& input_value)
      : layer_(make_layer("under_test", type, attrs, 0x5EED0000ull + seed)),
        batch_(batch),
        draw_(seed) {
    const Shape out = layer_->output_shape(in_shapes);
    decls_ = layer_->params(in_shapes);
    // Layer buffers (batch-norm statistics) run in F64 too; persistent ones start at their init.
    for (const BufferDecl& b : layer_->buffers(in_shapes, batch)) {
      buffers.emplace_back(static_cast<std::size_t>(numel(b.shape)),
                           b.persistent ? static_cast<double>(b.init) : kPoison);
    }
    for (const Shape& s : in_shapes) {
      inputs.push_back(draw_.vec(static_cast<std::size_t>(batch * numel(s)), input_value));
    }
    for (const ParamDecl& p : decls_) {
      params.push_back(draw_.vec(static_cast<std::size_t>(numel(p.shape)),
                                 [](Draw& d) { return d.uniform(-1.0, 1.0); }));
    }
    out_count_ = static_cast<std::size_t>(batch * numel(out));
    weights = draw_.vec(out_count_, [](Draw& d) { return d.uniform(-1.0, 1.0); });
    layer_->bind_shapes(std::move(in_shapes), out);
    control_.loss_scale = 1.0f;
    control_.inv_scale = 1.0f;
    control_.seed = 0x0123456789ABCDEFull;
    control_.iteration = 7;
  }

  const Layer& layer() const { return *layer_; }
  Draw& draw() { return draw_; }

  Vec forward() {
    Vec y(out_count_, kPoison);
    ForwardArgs a{backend_, &control_, true, batch_, {}, buf(y), {}, false};
    for (const Vec& x : inputs) a.inputs.push_back(cbuf(x));
    for (const Vec& p : params) a.params.push_back(cbuf(p));
    for (Vec& b : buffers) a.buffers.push_back(buf(b));
    layer_->forward(a);
    return y;
  }

  // Backward with grad_output = weights. With `onto`, input gradients are accumulated onto
  // copies of it; otherwise they overwrite buffers that hold nan.
  Grads backward(const std::vector<Vec>* onto = nullptr) {
    const Vec y = forward();
    Grads g;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      g.inputs.push_back(onto != nullptr ? (*onto)[i] : Vec(inputs[i].size(), kPoison));
    }
    for (const Vec& p : params) g.params.emplace_back(p.size(), kPoison);
    BackwardArgs a{backend_, &control_, batch_, {}, cbuf(y), cbuf(weights), {}, {}, {}, {}, false};
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      a.inputs.push_back(cbuf(inputs[i]));
      a.grad_inputs.push_back(buf(g.inputs[i]));
      a.accumulate_inputs.push_back(onto != nullptr);
    }
    for (std::size_t k = 0; k < params.size(); ++k) {
      a.params.push_back(cbuf(params[k]));
      a.grad_params.push_back(Buf{g.params[k].data(), DType::F64});
    }
    for (Vec& b : buffers) a.buffers.push_back(buf(b));
    layer_->backward(a);
    return g;
  }

  // The same gradients by finite differences of the objective.
  Grads numeric() {
    const Vec y0 = forward();
    auto objective_delta = [&](Vec& tensor, std::size_t j) {
      return [&, j](double d) {
        const double keep = tensor[j];
        tensor[j] = keep + d;
        const Vec y = forward();
        tensor[j] = keep;
        double sum = 0.0;
        for (std::size_t i = 0; i < y.size(); ++i) sum += weights[i] * (y[i] - y0[i]);
        return sum;
      };
    };
    Grads g;
    for (Vec& x : inputs) {
      Vec fd(x.size());
      for (std::size_t j = 0; j < x.size(); ++j) fd[j] = central_difference(objective_delta(x, j));
      g.inputs.push_back(std::move(fd));
    }
    for (Vec& p : params) {
      Vec fd(p.size());
      for (std::size_t j = 0; j < p.size(); ++j) fd[j] = central_difference(objective_delta(p, j));
      g.params.push_back(std::move(fd));
    }
    return g;
  }

  std::vector<Vec> inputs;
  std::vector<Vec> params;
  std::vector<Vec> buffers;  // F64, in the layer's declaration order
  Vec weights;

 private:
  std::unique_ptr<Layer> layer_;
  std::vector<ParamDecl> decls_;
  std::int64_t batch_;
  std::size_t out_count_ = 0;
  Draw draw_;
  cpu::CpuBackend backend_;
  StepControl control_{};
};

// Runs every check on one layer: each input and parameter gradient against finite differences,
// and accumulation onto existing input gradients. Returns the worst scaled error.
inline double check_layer(const std::string& type, const nlohmann::json& attrs,
                          std::vector<Shape> in_shapes, std::int64_t batch, std::uint64_t seed,
                          const std::function<double(Draw&)>& input_value) {
  LayerRun run(type, attrs, std::move(in_shapes), batch, seed, input_value);
  const LayerRun::Grads analytic = run.backward();
  const LayerRun::Grads numeric = run.numeric();
  double worst = 0.0;
  for (std::size_t i = 0; i < analytic.inputs.size(); ++i) {
    worst = std::max(worst, expect_gradient_near(type + " d input " + std::to_string(i),
                                                 analytic.inputs[i], numeric.inputs[i]));
  }
  for (std::size_t k = 0; k < analytic.params.size(); ++k) {
    worst = std::max(worst, expect_gradient_near(type + " d param " + std::to_string(k),
                                                 analytic.params[k], numeric.params[k]));
  }
  // accumulate_inputs: the gradient is added onto what the buffer held.
  std::vector<Vec> base;
  for (const Vec& x : run.inputs) {
    base.push_back(run.draw().vec(x.size(), [](Draw& d) { return d.uniform(-1.0, 1.0); }));
  }
  const LayerRun::Grads summed = run.backward(&base);
  for (std::size_t i = 0; i < base.size(); ++i) {
    for (std::size_t j = 0; j < base[i].size(); ++j) {
      const double g = analytic.inputs[i][j];
      EXPECT_NEAR(summed.inputs[i][j], base[i][j] + g,
                  1e-13 * (std::fabs(base[i][j]) + std::fabs(g) + 1.0))
          << type << " accumulated d input " << i << "[" << j << "]";
    }
  }
  return worst;
}

// ---------------------------------------------------------------------------------------------
// A compiled graph, forward and backward layer by layer as the trainer runs it (gradients of a
// node read by several layers accumulate; layer buffers such as batch-norm's statistics), with a
// loss on top, in T: double (check_graph compares every parameter's and the input's gradient with
// finite differences) or float (the fusion tests compare a fused graph with its unfused twin).
// Input and parameters are drawn in double and used as they are (double) or rounded (float).

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, double> ? DType::F64 : DType::F32;
}

template <typename T = double>
class GraphRun {
 public:
  using TVec = std::vector<T>;

  GraphRun(const Model& model, LossKind kind, std::uint64_t seed)
      : g_(model.graph()), kind_(kind), draw_(seed) {
    batch_ = g_.max_batch;
    input = draw_.vec(static_cast<std::size_t>(batch_ * numel(g_.sample_shape)),
                      [](Draw& d) { return d.uniform(-1.5, 1.5); });
    for (const auto& node : g_.nodes) {
      std::vector<Vec> ps;
      std::vector<TVec> bs;
      for (const ParamDecl& p : node.params) {
        ps.push_back(draw_.vec(static_cast<std::size_t>(numel(p.shape)),
                               [](Draw& d) { return d.uniform(-0.8, 0.8); }));
      }
      for (const BufferDecl& bd : node.buffers) {
        bs.emplace_back(static_cast<std::size_t>(numel(bd.shape)),
                        bd.persistent ? static_cast<T>(bd.init) : poison());
      }
      params.push_back(std::move(ps));
      buffers_.push_back(std::move(bs));
    }
    const Shape& out = g_.nodes[static_cast<std::size_t>(g_.output)].shape;
    cols_ = out.back();
    rows_ = batch_ * numel(out) / cols_;
    // Labels, and the same as one-hot targets for the losses that read targets.
    targets.assign(static_cast<std::size_t>(rows_ * cols_), 0.0f);
    for (std::int64_t r = 0; r < rows_; ++r) {
      const auto label =
          static_cast<std::int64_t>(draw_.bits() % static_cast<std::uint64_t>(cols_));
      labels.push_back(static_cast<std::int32_t>(label));
      targets[static_cast<std::size_t>(r * cols_ + label)] = 1.0f;
    }
    control_.loss_scale = 1.0f;
    control_.inv_scale = 1.0f;
    control_.seed = 42;
    control_.iteration = 3;
  }

  // The gradient of the input and of every parameter (per node, per declared parameter).
  struct Grads {
    TVec input;
    std::vector<std::vector<TVec>> params;
  };
  // Loss of the current input and parameters; with `grad`, backward too; with `outputs`, every
  // node's output.
  double run(Grads* grad = nullptr, std::vector<TVec>* outputs = nullptr) {
    const std::size_t count = g_.nodes.size();
    TVec x_copy;
    const T* x = values(input, x_copy);
    std::vector<std::vector<TVec>> p_copy(count);
    std::vector<std::vector<const T*>> p(count);
    for (std::size_t i = 0; i < count; ++i) {
      p_copy[i].resize(params[i].size());
      for (std::size_t k = 0; k < params[i].size(); ++k) {
        p[i].push_back(values(params[i][k], p_copy[i][k]));
      }
    }
    std::vector<TVec> act(count);
    auto activation = [&](int src) -> CBuf {
      return CBuf(src == graph::kModelInput ? x : act[static_cast<std::size_t>(src)].data(),
                  dtype_of<T>());
    };
    auto buffers_of = [&](std::size_t i) {
      std::vector<Buf> b;
      for (TVec& bv : buffers_[i]) b.push_back(Buf{bv.data(), dtype_of<T>()});
      return b;
    };
    for (std::size_t i = 0; i < count; ++i) {
      const auto& node = g_.nodes[i];
      act[i].assign(static_cast<std::size_t>(batch_ * numel(node.shape)), poison());
      ForwardArgs a{backend_, &control_, true, batch_, {}, Buf{act[i].data(), dtype_of<T>()},
                    {},       false};
      for (int src : node.inputs) a.inputs.push_back(activation(src));
      for (const T* pv : p[i]) a.params.push_back(CBuf(pv, dtype_of<T>()));
      a.buffers = buffers_of(i);
      node.layer->forward(a);
    }
    const auto out = static_cast<std::size_t>(g_.output);
    std::vector<TVec> dact(count);
    std::vector<bool> written(count, false);
    LossDesc d;
    d.kind = kind_;
    d.pred = CBuf(act[out].data(), dtype_of<T>());
    d.rows = rows_;
    d.cols = cols_;
    d.labels = labels.data();
    d.targets = targets.data();
    float loss32 = 0.0f;
    d.loss = &loss32;
    d.control = &control_;
    if (grad != nullptr) {
      dact[out].assign(act[out].size(), poison());
      d.dpred = Buf{dact[out].data(), dtype_of<T>()};
      written[out] = true;
    }
    backend_.loss(d);
    const double loss = backend_.last_loss();
    if (outputs != nullptr) *outputs = act;
    if (grad == nullptr) return loss;

    grad->input.assign(input.size(), poison());
    bool input_written = false;
    grad->params.assign(count, {});
    for (std::size_t i = count; i-- > 0;) {
      if (!written[i]) continue;  // not on a path to the output
      const auto& node = g_.nodes[i];
      BackwardArgs a{backend_,
                     &control_,
                     batch_,
                     {},
                     CBuf(act[i].data(), dtype_of<T>()),
                     CBuf(dact[i].data(), dtype_of<T>()),
                     {},
                     {},
                     {},
                     {},
                     false};
      for (int src : node.inputs) {
        a.inputs.push_back(activation(src));
        if (src == graph::kModelInput) {
          a.grad_inputs.push_back(Buf{grad->input.data(), dtype_of<T>()});
          a.accumulate_inputs.push_back(input_written);
          input_written = true;
        } else {
          const auto s = static_cast<std::size_t>(src);
          if (!written[s]) dact[s].assign(act[s].size(), poison());
          a.grad_inputs.push_back(Buf{dact[s].data(), dtype_of<T>()});
          a.accumulate_inputs.push_back(written[s]);
          written[s] = true;
        }
      }
      for (std::size_t k = 0; k < params[i].size(); ++k) {
        a.params.push_back(CBuf(p[i][k], dtype_of<T>()));
        grad->params[i].emplace_back(params[i][k].size(), poison());
        a.grad_params.push_back(Buf{grad->params[i].back().data(), dtype_of<T>()});
      }
      a.buffers = buffers_of(i);
      node.layer->backward(a);
    }
    return loss;
  }

  const graph::Graph& graph() const { return g_; }

  Vec input;
  std::vector<std::vector<Vec>> params;  // per node, per declared parameter
  std::vector<std::int32_t> labels;
  std::vector<float> targets;

 private:
  static T poison() { return std::numeric_limits<T>::quiet_NaN(); }
  // The values of v in T: v's own for double, else rounded into `copy`.
  static const T* values(const Vec& v, TVec& copy) {
    if constexpr (std::is_same_v<T, double>) {
      (void)copy;
      return v.data();
    } else {
      copy.assign(v.begin(), v.end());
      return copy.data();
    }
  }

  const graph::Graph& g_;
  LossKind kind_;
  Draw draw_;
  std::int64_t batch_ = 0, rows_ = 0, cols_ = 0;
  std::vector<std::vector<TVec>> buffers_;  // per node, per declared buffer
  cpu::CpuBackend backend_;
  StepControl control_{};
};

inline void check_graph(const Model& model, LossKind kind = LossKind::SparseCrossEntropy,
                        std::uint64_t seed = 5) {
  GraphRun<double> run(model, kind, seed);
  GraphRun<double>::Grads analytic;
  const double l0 = run.run(&analytic);
  auto fd_of = [&](Vec& tensor) {
    Vec fd(tensor.size());
    for (std::size_t j = 0; j < tensor.size(); ++j) {
      fd[j] = gradcheck::central_difference([&](double d) {
        const double keep = tensor[j];
        tensor[j] = keep + d;
        const double l = run.run();
        tensor[j] = keep;
        return l - l0;
      });
    }
    return fd;
  };
  gradcheck::expect_gradient_near("d input", analytic.input, fd_of(run.input));
  const graph::Graph& g = run.graph();
  for (std::size_t i = 0; i < run.params.size(); ++i) {
    for (std::size_t k = 0; k < run.params[i].size(); ++k) {
      gradcheck::expect_gradient_near(g.nodes[i].layer->name() + " d " + g.nodes[i].params[k].name,
                                      analytic.params[i][k], fd_of(run.params[i][k]));
    }
  }
}

}  // namespace mixtrain::gradcheck
