// Dense + activation fusion (graph/fuse.hpp) and the fused GEMM epilogues of the CPU backend (the
// numerical oracle): which graphs fuse, how names resolve afterwards, fused == unfused bit for
// bit in FP32 (and FP16 for ReLU), and float64 finite differences of the fused layers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_backend.hpp"
#include "core/half.hpp"
#include "grad_check.hpp"
#include "graph/fuse.hpp"
#include "graph/graph.hpp"
#include "layers/batch_norm.hpp"
#include "layers/dense.hpp"
#include "mixtrain/mixtrain.hpp"
#include "ops/activation_math.hpp"

namespace mixtrain {
namespace {

using gradcheck::Draw;
using gradcheck::Vec;

// ---- compiling with fusion on or off -----------------------------------------------------------

// Sets MIXTRAIN_FUSION for one compile() and restores what the environment had.
Model compile_fused(const ModelSpec& spec, bool fused) {
  const char* before = std::getenv("MIXTRAIN_FUSION");
  const std::optional<std::string> saved =
      before != nullptr ? std::optional<std::string>(before) : std::nullopt;
  if (fused) {
    unsetenv("MIXTRAIN_FUSION");
  } else {
    setenv("MIXTRAIN_FUSION", "0", 1);
  }
  Model m;
  try {
    m = compile(spec);
  } catch (...) {
    saved ? setenv("MIXTRAIN_FUSION", saved->c_str(), 1) : unsetenv("MIXTRAIN_FUSION");
    throw;
  }
  saved ? setenv("MIXTRAIN_FUSION", saved->c_str(), 1) : unsetenv("MIXTRAIN_FUSION");
  return m;
}

std::vector<std::string> node_names(const Model& m) {
  std::vector<std::string> names;
  for (const auto& n : m.graph().nodes) names.push_back(n.layer->name());
  return names;
}

LayerSpec layer(std::string name, std::string type, std::vector<std::string> inputs,
                nlohmann::json attrs = nlohmann::json::object()) {
  LayerSpec l;
  l.name = std::move(name);
  l.type = std::move(type);
  l.inputs = std::move(inputs);
  l.attrs = std::move(attrs);
  return l;
}

// small_mlp's shape, smaller: dense + relu, dropout, dense + tanh-gelu, dense.
ModelSpec mlp_spec(std::int64_t batch = 6) {
  return ModelBuilder({batch, 12})
      .dense(16)
      .relu()
      .dropout(0.25f)
      .dense(8)
      .gelu(true)
      .dense(4)
      .spec();
}

// ---- which graphs fuse -------------------------------------------------------------------------

TEST(FusionGraph, DenseReluAndDenseTanhGeluFuse) {
  const Model fused = compile_fused(mlp_spec(), true);
  const Model plain = compile_fused(mlp_spec(), false);
  EXPECT_EQ(node_names(plain), (std::vector<std::string>{"dense_1", "relu_1", "dropout_1",
                                                         "dense_2", "gelu_1", "dense_3"}));
  EXPECT_EQ(node_names(fused),
            (std::vector<std::string>{"dense_1+relu_1", "dropout_1", "dense_2+gelu_1", "dense_3"}));
  const auto& g = fused.graph();
  const auto* d1 = dynamic_cast<const Dense*>(g.nodes[0].layer.get());
  const auto* d2 = dynamic_cast<const Dense*>(g.nodes[2].layer.get());
  ASSERT_NE(d1, nullptr);
  ASSERT_NE(d2, nullptr);
  EXPECT_EQ(d1->activation(), Activation::ReLU);
  EXPECT_EQ(d2->activation(), Activation::GELUTanh);
  EXPECT_EQ(g.nodes[1].inputs, std::vector<int>{0});  // dropout reads the fused node
  EXPECT_EQ(g.nodes[2].inputs, std::vector<int>{1});
  EXPECT_EQ(g.nodes[3].inputs, std::vector<int>{2});
  EXPECT_EQ(g.output, 3);
  // Same parameters in the same order, the same salts (initial weights), one scratch buffer per
  // fused layer.
  EXPECT_EQ(fused.parameter_count(), plain.parameter_count());
  EXPECT_EQ(g.nodes[0].layer->salt(), plain.graph().nodes[0].layer->salt());
  EXPECT_EQ(g.nodes[2].layer->salt(), plain.graph().nodes[3].layer->salt());
  EXPECT_EQ(g.nodes[0].buffers.size(), 1u);
  EXPECT_EQ(g.nodes[3].buffers.size(), 0u);
  EXPECT_EQ(fused.output_shape(), plain.output_shape());
  EXPECT_NE(fused.summary().find("dense_1+relu_1"), std::string::npos) << fused.summary();
  EXPECT_TRUE(graph::fusion_enabled());
}

TEST(FusionGraph, CasesThatDoNotFuse) {
  // Exact GELU, leaky ReLU, a dense read twice, a dense that is the model output, an activation
  // of the model input.
  ModelSpec spec;
  spec.input_shape = {4, 6};
  spec.layers = {layer("r0", "relu", {"input"}),
                 layer("d1", "dense", {"r0"}, {{"units", 5}}),
                 layer("g1", "gelu", {"d1"}),  // exact erf GELU
                 layer("d2", "dense", {"g1"}, {{"units", 5}}),
                 layer("l2", "leaky_relu", {"d2"}),
                 layer("d3", "dense", {"l2"}, {{"units", 5}}),
                 layer("r3", "relu", {"d3"}),
                 layer("a3", "add", {"d3", "r3"}),  // d3 has two readers
                 layer("d4", "dense", {"a3"}, {{"units", 3}}),
                 layer("r4", "relu", {"d4"})};
  spec.output = "d4";  // d4 is the output and r4 (not an ancestor of it) also reads it
  const Model m = compile_fused(spec, true);
  EXPECT_EQ(node_names(m),
            (std::vector<std::string>{"r0", "d1", "g1", "d2", "l2", "d3", "r3", "a3", "d4", "r4"}));
}

TEST(FusionGraph, ReadersOfTheRemovedActivationResolveToTheFusedNode) {
  // gpt-style: the activation's name is read by later layers (a residual add and a projection)
  // and is the model output of a second branch.
  ModelSpec spec;
  spec.input_shape = {5, 8};
  spec.layers = {layer("fc", "dense", {"input"}, {{"units", 8}}),
                 layer("act", "gelu", {"fc"}, {{"approximate", true}}),
                 layer("proj", "dense", {"act"}, {{"units", 8}}),
                 layer("res", "add", {"act", "proj"}),
                 layer("head", "dense", {"res"}, {{"units", 4}}),
                 layer("head_relu", "relu", {"head"})};
  spec.output = "head_relu";
  const Model m = compile_fused(spec, true);
  EXPECT_EQ(node_names(m), (std::vector<std::string>{"fc+act", "proj", "res", "head+head_relu"}));
  const auto& g = m.graph();
  EXPECT_EQ(g.nodes[1].inputs, std::vector<int>{0});
  EXPECT_EQ(g.nodes[2].inputs, (std::vector<int>{0, 1}));
  EXPECT_EQ(g.nodes[3].inputs, std::vector<int>{2});
  EXPECT_EQ(g.output, 3);
  EXPECT_EQ(g.name_of(g.output), "head+head_relu");

  // The same predictions as the unfused graph, bit for bit (FP32, CPU).
  const Model plain = compile_fused(spec, false);
  TrainerConfig c;
  c.device = Device::CPU;
  c.loss = Loss::MeanSquaredError;
  c.seed = 3;
  Trainer tf(m, c), tp(plain, c);
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(40), t(20);
  for (float& v : x) v = u(rng);
  for (float& v : t) v = u(rng);
  EXPECT_EQ(tf.predict(x.data(), {5, 8}), tp.predict(x.data(), {5, 8}));
  for (int s = 0; s < 3; ++s) {
    tf.train_batch(x.data(), {5, 8}, t.data(), {5, 4});
    tp.train_batch(x.data(), {5, 8}, t.data(), {5, 4});
  }
  EXPECT_EQ(tf.weights(), tp.weights());
}

TEST(FusionGraph, EnvironmentSwitchesItOff) {
  const Model m = compile_fused(mlp_spec(), false);
  EXPECT_EQ(m.graph().nodes.size(), 6u);
  EXPECT_EQ(node_names(m)[0], "dense_1");
}

// The parameter gradients of a GraphRun, flat in node order: the same list for a fused graph and
// its unfused twin (fusion keeps every parameter and their order).
std::vector<std::vector<float>> flat(const std::vector<std::vector<std::vector<float>>>& per_node) {
  std::vector<std::vector<float>> all;
  for (const auto& node : per_node) all.insert(all.end(), node.begin(), node.end());
  return all;
}

// |a - b| within n units in the last place of the larger magnitude (0: bit for bit, NaN == NaN).
::testing::AssertionResult within_ulps(const std::vector<float>& a, const std::vector<float>& b,
                                       int n) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    const float big = std::max(std::fabs(a[i]), std::fabs(b[i]));
    const float ulp = std::nextafter(big, std::numeric_limits<float>::infinity()) - big;
    if (!(std::fabs(a[i] - b[i]) <= static_cast<float>(n) * ulp)) {
      return ::testing::AssertionFailure() << "[" << i << "] " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(FusionNumerics, FusedEqualsUnfusedInFp32) {
  const ModelSpec spec = mlp_spec();
  const Model fused = compile_fused(spec, true), plain = compile_fused(spec, false);
  ASSERT_EQ(fused.graph().nodes.size() + 2, plain.graph().nodes.size());
  gradcheck::GraphRun<float> rf(fused, LossKind::SparseCrossEntropy, 11);
  gradcheck::GraphRun<float> rp(plain, LossKind::SparseCrossEntropy, 11);
  gradcheck::GraphRun<float>::Grads gf, gp;
  std::vector<std::vector<float>> of, op;
  const double lf = rf.run(&gf, &of), lp = rp.run(&gp, &op);
  // Forward: bit for bit (the same sgemm, bias and activation arithmetic).
  EXPECT_EQ(of[static_cast<std::size_t>(fused.graph().output)],
            op[static_cast<std::size_t>(plain.graph().output)]);
  EXPECT_EQ(lf, lp);
  // Gradients: within 1 ulp (in fact the same bits: the same products and sums in the same order).
  EXPECT_TRUE(within_ulps(gf.input, gp.input, 1));
  const auto pf = flat(gf.params), pp = flat(gp.params);
  ASSERT_EQ(pf.size(), pp.size());
  for (std::size_t j = 0; j < pf.size(); ++j) {
    EXPECT_TRUE(within_ulps(pf[j], pp[j], 1)) << "parameter " << j;
  }
}

TEST(FusionNumerics, TrainerFusedEqualsUnfused) {
  // Whole steps through the trainer (its plan's buffers included): FP32 with ReLU and tanh-GELU,
  // and FP16 with ReLU, where relu(round(z)) == round(relu(z)) keeps the two bit-identical too.
  struct Case {
    Precision precision;
    bool gelu;
  };
  for (const Case& cs :
       {Case{Precision::FP32, true}, Case{Precision::FP16, false}, Case{Precision::BF16, false}}) {
    SCOPED_TRACE(std::string(precision_name(cs.precision)));
    ModelBuilder b({16, 10});
    b.dense(24).relu().dropout(0.2f).dense(12);
    if (cs.gelu) {
      b.gelu(true);
    } else {
      b.relu();
    }
    const ModelSpec spec = b.dense(3).spec();
    const Model fused = compile_fused(spec, true), plain = compile_fused(spec, false);
    ASSERT_EQ(fused.graph().nodes.size() + 2, plain.graph().nodes.size());
    TrainerConfig c;
    c.device = Device::CPU;
    c.precision = cs.precision;
    c.seed = 9;
    Trainer tf(fused, c), tp(plain, c);
    EXPECT_EQ(tf.weights(), tp.weights());
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> x(160);
    std::vector<std::int32_t> y(16);
    for (int s = 0; s < 4; ++s) {
      for (float& v : x) v = u(rng);
      for (std::int32_t& v : y) v = static_cast<std::int32_t>(rng() % 3);
      const float lf = tf.train_batch(x.data(), {16, 10}, y.data(), {16}).loss();
      const float lp = tp.train_batch(x.data(), {16, 10}, y.data(), {16}).loss();
      EXPECT_EQ(lf, lp) << "step " << s;
    }
    EXPECT_EQ(tf.weights(), tp.weights());
    EXPECT_EQ(tf.predict(x.data(), {16, 10}), tp.predict(x.data(), {16, 10}));
  }
}

TEST(FusionGraph, BatchNormReluFuses) {
  const ModelSpec spec = ModelBuilder({4, 6, 6, 3})
                             .conv2d(4, 3, {.name = "conv", .padding = "same", .bias = false})
                             .batch_norm({.name = "bn"})
                             .relu({.name = "act"})
                             .batch_norm({.name = "bn_out"})  // followed by no relu: stays
                             .global_avg_pool({.name = "gap"})
                             .dense(2, {.name = "logits"})
                             .spec();
  const Model fused = compile_fused(spec, true), plain = compile_fused(spec, false);
  EXPECT_EQ(node_names(fused),
            (std::vector<std::string>{"conv", "bn+act", "bn_out", "gap", "logits"}));
  const auto* bn = dynamic_cast<const BatchNorm*>(fused.graph().nodes[1].layer.get());
  ASSERT_NE(bn, nullptr);
  EXPECT_TRUE(bn->fused_relu());
  EXPECT_EQ(fused.graph().nodes[1].buffers.size(), plain.graph().nodes[1].buffers.size());
  EXPECT_EQ(fused.parameter_count(), plain.parameter_count());
}

TEST(FusionNumerics, TrainerBatchNormReluFusedEqualsUnfused) {
  // relu(round(bn)) == round(relu(bn)) and dy * [y > 0] is what ReLU's backward stores: the
  // fused passes give the unfused bits in every precision (losses, weights and running
  // statistics, inference outputs).
  const ModelSpec spec = ModelBuilder({6, 5, 5, 2})
                             .conv2d(4, 3, {.padding = 1})
                             .batch_norm()
                             .relu()
                             .residual([](ModelBuilder& r) {
                               r.conv2d(4, 3, {.padding = 1, .bias = false}).batch_norm().relu();
                             })
                             .global_avg_pool()
                             .dense(3)
                             .spec();
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    const Model fused = compile_fused(spec, true), plain = compile_fused(spec, false);
    ASSERT_EQ(fused.graph().nodes.size() + 2, plain.graph().nodes.size());
    TrainerConfig c;
    c.device = Device::CPU;
    c.precision = p;
    c.seed = 3;
    Trainer tf(fused, c), tp(plain, c);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(6 * 5 * 5 * 2);
    std::vector<std::int32_t> y(6);
    for (int s = 0; s < 4; ++s) {
      for (float& v : x) v = nd(rng);
      for (std::int32_t& v : y) v = static_cast<std::int32_t>(rng() % 3);
      const float lf = tf.train_batch(x.data(), {6, 5, 5, 2}, y.data(), {6}).loss();
      const float lp = tp.train_batch(x.data(), {6, 5, 5, 2}, y.data(), {6}).loss();
      EXPECT_EQ(lf, lp) << "step " << s;
    }
    EXPECT_EQ(tf.weights(), tp.weights());
    EXPECT_EQ(tf.predict(x.data(), {6, 5, 5, 2}), tp.predict(x.data(), {6, 5, 5, 2}));
  }
}

// ---- float64 finite differences of the fused layers
// ----------------------------------------------

void check_fused_gradients(Activation act) {
  ModelBuilder b({3, 4});
  b.dense(5);
  if (act == Activation::ReLU) {
    b.relu();
  } else {
    b.gelu(true);
  }
  const ModelSpec spec = b.dense(3).spec();
  const Model fused = compile_fused(spec, true), plain = compile_fused(spec, false);
  ASSERT_EQ(fused.graph().nodes.size(), 2u);
  const auto* d = dynamic_cast<const Dense*>(fused.graph().nodes[0].layer.get());
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->activation(), act);

  // ReLU has a kink at 0: pick a seed whose pre-activations (the unfused dense output) all keep
  // clear of it by far more than the largest perturbation (2h * |x| < 0.002).
  std::uint64_t seed = 1;
  for (; seed < 200; ++seed) {
    gradcheck::GraphRun<double> probe(plain, LossKind::SparseCrossEntropy, seed);
    std::vector<gradcheck::Vec> outputs;
    probe.run(nullptr, &outputs);
    double closest = 1e9;
    for (double z : outputs[0]) closest = std::min(closest, std::fabs(z));
    if (act != Activation::ReLU || closest > 0.02) break;
  }
  ASSERT_LT(seed, 200u);
  gradcheck::check_graph(fused, LossKind::SparseCrossEntropy, seed);
}

TEST(FusionGradient, DenseReluMatchesFloat64FiniteDifferences) {
  check_fused_gradients(Activation::ReLU);
}

TEST(FusionGradient, DenseTanhGeluMatchesFloat64FiniteDifferences) {
  check_fused_gradients(Activation::GELUTanh);
}

// ---- the CPU backend's fused GEMM epilogues
// -------------------------------------------------------

std::vector<float> random_values(std::mt19937& rng, std::size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

template <typename T>
std::vector<T> stored(const std::vector<float>& v) {
  std::vector<T> out;
  for (float x : v) out.push_back(store<T>(x));
  return out;
}

// The Dense forward shape, y = act(x W^T + b): C = act(z) and aux = z, each rounded once from the
// fp32 z; z is what the same GEMM gives without an epilogue into fp32.
template <typename T>
void check_forward_epilogue(Activation act, bool with_aux) {
  cpu::CpuBackend be;
  std::mt19937 rng(17);
  const std::int64_t m = 9, n = 13, k = 21;
  const std::vector<T> x = stored<T>(random_values(rng, m * k, -1, 1));
  const std::vector<T> w = stored<T>(random_values(rng, n * k, -1, 1));
  const std::vector<T> bias = stored<T>(random_values(rng, n, -1, 1));
  constexpr DType kT = std::is_same_v<T, float> ? DType::F32
                       : std::is_same_v<T, f16> ? DType::F16
                                                : DType::BF16;
  GemmDesc g;
  g.trans_b = true;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = CBuf(x.data(), kT);
  g.lda = k;
  g.b = CBuf(w.data(), kT);
  g.ldb = k;
  g.ldc = n;
  g.bias = CBuf(bias.data(), kT);
  // z in fp32: for an fp32 C the bias-seeded product, else the product into fp32 plus the bias.
  std::vector<float> z(static_cast<std::size_t>(m * n));
  GemmDesc gz = g;
  gz.c = Buf{z.data(), DType::F32};
  if (kT != DType::F32) gz.bias = CBuf();
  be.gemm(gz);
  if (kT != DType::F32) {
    for (std::int64_t r = 0; r < m; ++r) {
      for (std::int64_t c = 0; c < n; ++c)
        z[static_cast<std::size_t>(r * n + c)] += load(bias[static_cast<std::size_t>(c)]);
    }
  }
  std::vector<T> y(static_cast<std::size_t>(m * n)), aux(static_cast<std::size_t>(m * n));
  g.c = Buf{y.data(), kT};
  g.epilogue = act;
  if (with_aux) g.aux = Buf{aux.data(), kT};
  be.gemm(g);
  for (std::size_t i = 0; i < z.size(); ++i) {
    EXPECT_EQ(load(y[i]), load(store<T>(activation_value(act, 0.0f, z[i])))) << i;
    if (with_aux) {
      EXPECT_EQ(load(aux[i]), load(store<T>(z[i]))) << i;
    }
  }
}

TEST(FusionGemmCpu, ActivationEpilogueRoundsOnceFromFp32) {
  for (Activation act : {Activation::ReLU, Activation::GELUTanh}) {
    for (bool aux : {false, true}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(act)) + (aux ? " aux" : ""));
      check_forward_epilogue<float>(act, aux);
      check_forward_epilogue<f16>(act, aux);
      check_forward_epilogue<bf16>(act, aux);
    }
  }
}

TEST(FusionGemmCpu, BiasGradientIsTheColumnSumOfTheStoredOperand) {
  cpu::CpuBackend be;
  std::mt19937 rng(23);
  const std::int64_t rows = 300, units = 70, in = 33;  // dW [units, in] = dy^T x
  const std::vector<f16> dy = stored<f16>(random_values(rng, rows * units, -1, 1));
  const std::vector<f16> x = stored<f16>(random_values(rng, rows * in, -1, 1));
  std::vector<float> dw(static_cast<std::size_t>(units * in)), dw_plain(dw.size());
  std::vector<float> db(static_cast<std::size_t>(units), NAN), db_plain(db.size(), NAN);
  GemmDesc g;
  g.trans_a = true;
  g.m = units;
  g.n = in;
  g.k = rows;
  g.a = CBuf(dy.data(), DType::F16);
  g.lda = units;
  g.b = CBuf(x.data(), DType::F16);
  g.ldb = in;
  g.c = Buf{dw_plain.data(), DType::F32};
  g.ldc = in;
  be.gemm(g);
  be.bias_grad(CBuf(dy.data(), DType::F16), Buf{db_plain.data(), DType::F32}, rows, units, false);
  g.c = Buf{dw.data(), DType::F32};
  g.bias_grad = Buf{db.data(), DType::F32};
  be.gemm(g);
  EXPECT_EQ(dw, dw_plain);
  EXPECT_EQ(db, db_plain);
  // Operand B: the column sums of B [k, n].
  GemmDesc gb;
  gb.m = units;
  gb.n = in;
  gb.k = rows;
  std::vector<f16> a2 = stored<f16>(random_values(rng, units * rows, -1, 1));
  gb.a = CBuf(a2.data(), DType::F16);
  gb.lda = rows;
  gb.b = CBuf(x.data(), DType::F16);
  gb.ldb = in;
  gb.c = Buf{dw.data(), DType::F32};
  gb.ldc = in;
  std::vector<float> dbb(static_cast<std::size_t>(in), NAN), dbb_plain(dbb.size(), NAN);
  gb.bias_grad = Buf{dbb.data(), DType::F32};
  gb.bias_grad_operand = GemmOperand::B;
  be.gemm(gb);
  be.bias_grad(CBuf(x.data(), DType::F16), Buf{dbb_plain.data(), DType::F32}, rows, in, false);
  EXPECT_EQ(dbb, dbb_plain);
}

TEST(FusionGemmCpu, RejectsEpiloguesOutsideTheRules) {
  cpu::CpuBackend be;
  std::vector<float> a(16, 1.0f), b(16, 1.0f), c(16), aux(16), db(4);
  GemmDesc g;
  g.m = g.n = g.k = 4;
  g.a = CBuf(a.data(), DType::F32);
  g.b = CBuf(b.data(), DType::F32);
  g.c = Buf{c.data(), DType::F32};
  g.lda = g.ldb = g.ldc = 4;
  GemmDesc bad = g;
  bad.epilogue = Activation::Sigmoid;
  EXPECT_THROW(be.gemm(bad), Error);
  bad = g;
  bad.epilogue = Activation::ReLU;
  bad.beta = 1.0f;
  EXPECT_THROW(be.gemm(bad), Error);
  bad = g;
  bad.aux = Buf{aux.data(), DType::F32};  // aux without an activation
  EXPECT_THROW(be.gemm(bad), Error);
  bad = g;
  bad.bias_grad = Buf{db.data(), DType::F32};  // A not stored [k, m]
  EXPECT_THROW(be.gemm(bad), Error);
  bad.trans_a = true;
  EXPECT_NO_THROW(be.gemm(bad));
  EXPECT_EQ(db, std::vector<float>(4, 4.0f));
}

}  // namespace
}  // namespace mixtrain
