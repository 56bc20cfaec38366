// mixtrain bench: BENCHMARKS.md's workloads in each precision, steady state and end to end.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "bench.hpp"
#include "common.hpp"
#include "io/atomic_file.hpp"
#include "io/presets.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cli {

namespace {

// BENCHMARKS.md's workloads and batch sizes. A workload runs once a preset of its name exists.
struct Workload {
  const char* name;
  std::int64_t batch;
  const char* needs;  // what the library lacks while no preset exists
  bool images;        // inputs normal(0, 1) (BENCHMARKS.md), else uniform [0, 1); no GEMM baseline
};
constexpr Workload kWorkloads[] = {
    {"small_mlp", 64, "", false},
    {"large_mlp", 512, "", false},
    {"resnet18_cifar", 256, "", true},
    {"gpt_small", 32, "embedding, attention and layer-norm layers", false},
};
constexpr int kRotatingBatches = 4;

const Workload& find_workload(const std::string& name) {
  for (const Workload& w : kWorkloads) {
    if (name != w.name) continue;
    if (!is_preset(name)) {
      throw ConfigError(
          fmt::format("workload '{}' needs {}, which mixtrain does not have yet", name, w.needs));
    }
    return w;
  }
  std::vector<std::string> names;
  for (const Workload& w : kWorkloads) names.emplace_back(w.name);
  throw ConfigError(
      fmt::format("unknown workload '{}' (workloads: {})", name, fmt::join(names, ", ")));
}

struct BenchOptions {
  std::string device = "auto";
  std::vector<std::string> workloads = {"small_mlp", "large_mlp"};
  std::vector<std::string> precisions = {"fp32", "fp16", "bf16"};
  int steps = 50;
  int warmup = 10;
  int windows = 5;
  std::string optimizer = "adam";
  std::string json;
  bool gemm_only = false;
};

struct Row {
  std::string workload;
  std::string precision;
  std::string optimizer;  // the trainer's, as it ran
  std::int64_t batch = 0;
  Timing steady;
  Timing end_to_end;
  std::size_t peak_memory = 0;
  std::int64_t skipped = 0;
  std::int64_t steps = 0;        // training steps the trainer ran (warm-up and e2e included)
  std::int64_t fused_steps = 0;  // ... run as one fused kernel (TrainerStats::fused_steps)
  float loss_scale = 1;
  std::optional<double> speedup;
  std::optional<double> e2e_speedup;
};

struct GemmRow {
  std::string workload;
  std::int64_t batch = 0;
  Timing timing;
  std::optional<double> fp32_ratio;  // fp32 steady step time / GEMM time
};

// Random inputs generated once: features uniform in [0, 1) (standard normal for image
// workloads), labels uniform over the classes.
struct Inputs {
  std::vector<std::vector<float>> features;
  std::vector<std::vector<std::int32_t>> labels;
  Shape input_shape;
  Shape label_shape;
};

Inputs make_inputs(const Model& model, bool normal) {
  Inputs in;
  in.input_shape = model.input_shape();
  const std::int64_t batch = in.input_shape[0];
  in.label_shape = {batch};
  const std::int64_t per_sample = numel(in.input_shape) / batch;
  const auto classes = static_cast<std::int32_t>(model.output_shape().back());
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::uniform_int_distribution<std::int32_t> label(0, classes - 1);
  for (int b = 0; b < kRotatingBatches; ++b) {
    std::vector<float> f(static_cast<std::size_t>(batch * per_sample));
    for (float& x : f) x = normal ? gauss(rng) : uniform(rng);
    std::vector<std::int32_t> l(static_cast<std::size_t>(batch));
    for (std::int32_t& y : l) y = label(rng);
    in.features.push_back(std::move(f));
    in.labels.push_back(std::move(l));
  }
  return in;
}

int steps_per_window(const BenchOptions& o) {
  return std::max(1, o.steps / o.windows);
}

Row bench_one(const Model& model, const Inputs& in, const std::string& workload,
              Precision precision, Device device, const BenchOptions& o) {
  TrainerConfig config;
  config.optimizer = parse_optimizer(o.optimizer);
  config.learning_rate = 1e-3f;
  config.precision = precision;
  config.device = device;
  config.loss_scale.initial = 65536.0f;
  config.seed = 1;
  config.validate_inputs = false;  // measure training, not the host-side input checks
  Trainer trainer(model, config);
  // Steady state: the batches live on the device (BENCHMARKS.md: "random inputs generated once
  // and kept on the device, rotating among 4 batches"), so a step is the training work alone.
  std::vector<DeviceBatch> resident;
  for (int b = 0; b < kRotatingBatches; ++b) {
    const auto i = static_cast<std::size_t>(b);
    resident.push_back(trainer.upload_batch(in.features[i].data(), in.input_shape,
                                            in.labels[i].data(), in.label_shape));
  }
  int next = 0;
  auto device_step = [&] {
    return trainer.train_batch(resident[static_cast<std::size_t>(next++ % kRotatingBatches)]);
  };
  // End to end: what a user loop calls, the batch from host memory every step.
  auto host_step = [&] {
    const auto b = static_cast<std::size_t>(next++ % kRotatingBatches);
    return trainer.train_batch(in.features[b].data(), in.input_shape, in.labels[b].data(),
                               in.label_shape);
  };
  for (int i = 0; i < o.warmup; ++i) device_step();
  for (int i = 0; i < std::min(o.warmup, kRotatingBatches); ++i) host_step();
  trainer.stats();
  Row r;
  r.workload = workload;
  r.precision = std::string(precision_name(precision));
  r.optimizer = std::string(optimizer_name(trainer.config().optimizer));
  r.batch = in.input_shape[0];
  const int steps = steps_per_window(o);
  r.steady = time_windows(
      o.windows, steps, r.batch, [&] { device_step(); }, [&] { trainer.stats(); });
  r.end_to_end = time_windows(
      o.windows, steps, r.batch, [&] { (void)host_step().loss(); }, [] {});
  const TrainerStats s = trainer.stats();
  r.peak_memory = s.peak_memory_bytes;
  r.skipped = s.skipped_steps;
  r.steps = s.steps;
  r.fused_steps = s.fused_steps;
  r.loss_scale = s.loss_scale;
  return r;
}

// How the measurement's steps ran: "fused" (all as one kernel: a CUDA dense chain in FP16/BF16),
// "op-by-op", or "mixed" (some of each).
std::string step_kind(const Row& r) {
  if (r.fused_steps == 0) return "op-by-op";
  return r.fused_steps == r.steps ? "fused" : "mixed";
}

nlohmann::ordered_json timing_json(const Timing& t) {
  return {{"step_ms", t.step_ms},
          {"samples_per_s", t.samples_per_second},
          {"window_step_ms", t.window_ms}};
}

nlohmann::ordered_json optional_json(const std::optional<double>& v) {
  return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string speedup_str(const std::optional<double>& v) {
  return v ? fmt::format("{:.2f}x", *v) : "-";
}

int run_bench(const BenchOptions& o) {
  if (o.steps < 1 || o.warmup < 0 || o.windows < 1) {
    throw ConfigError("--steps and --windows must be >= 1, --warmup >= 0");
  }
  const Device device_flag = parse_device(o.device);
  std::vector<Precision> precisions;
  for (const std::string& p : o.precisions) precisions.push_back(parse_precision(p));
  std::vector<const Workload*> workloads;
  for (const std::string& w : o.workloads) workloads.push_back(&find_workload(w));
  const Device device = device_flag != Device::Auto ? device_flag
                        : cuda_available()          ? Device::CUDA
                                                    : Device::CPU;
  const bool cpu = device == Device::CPU;
  if (o.gemm_only && !cpu)
    throw ConfigError("--gemm-only times OpenBLAS: use it with --device cpu");
  const bool gemm_rows = cpu && gemm_baseline_available();
  const int steps = steps_per_window(o);
  std::printf(
      "device: %s; optimizer %s; %d warm-up steps, then %d windows of %d steps (median "
      "reported)\n",
      std::string(device_name(device)).c_str(),
      std::string(optimizer_name(parse_optimizer(o.optimizer))).c_str(), o.warmup, o.windows,
      steps);
  std::printf(
      "steady: %d train_batch calls on %d device-resident batches (rotating), then one sync; "
      "end-to-end: batches from host memory, loss read every step\n",
      steps, kRotatingBatches);
  std::fflush(stdout);

  std::vector<Row> rows;
  std::vector<GemmRow> gemm;
  for (const Workload* w : workloads) {
    const Model model = compile(preset_model(w->name, w->batch));
    if (!o.gemm_only) {
      const Inputs in = make_inputs(model, w->images);
      const std::size_t first = rows.size();
      for (Precision p : precisions) {
        std::fflush(stdout);
        std::fprintf(stderr, "running %s %s...\n", w->name, std::string(precision_name(p)).c_str());
        rows.push_back(bench_one(model, in, w->name, p, device, o));
      }
      std::optional<Timing> fp32_steady, fp32_e2e;
      for (std::size_t i = first; i < rows.size(); ++i) {
        if (rows[i].precision == "fp32")
          fp32_steady = rows[i].steady, fp32_e2e = rows[i].end_to_end;
      }
      for (std::size_t i = first; fp32_steady && i < rows.size(); ++i) {
        rows[i].speedup = fp32_steady->step_ms / rows[i].steady.step_ms;
        rows[i].e2e_speedup = fp32_e2e->step_ms / rows[i].end_to_end.step_ms;
      }
    }
    if (gemm_rows && !w->images) {  // the GEMM baseline knows dense layers only
      std::fflush(stdout);
      std::fprintf(stderr, "running %s gemm-only...\n", w->name);
      GemmRow g;
      g.workload = w->name;
      g.batch = w->batch;
      g.timing =
          time_gemm_baseline(dense_layers(model.spec()), w->batch, o.warmup, o.windows, steps);
      for (const Row& r : rows) {
        if (r.workload == g.workload && r.precision == "fp32") {
          g.fp32_ratio = r.steady.step_ms / g.timing.step_ms;
        }
      }
      gemm.push_back(g);
    }
  }

  std::vector<std::vector<std::string>> table;
  table.reserve(rows.size());
  for (const Row& r : rows) {
    table.push_back({r.workload, r.precision, fmt::format("{}", r.batch),
                     fmt::format("{:.3f}", r.steady.step_ms),
                     fmt::format("{:.0f}", r.steady.samples_per_second),
                     fmt::format("{:.3f}", r.end_to_end.step_ms),
                     fmt::format("{:.0f}", r.end_to_end.samples_per_second),
                     fmt::format("{:.1f}", static_cast<double>(r.peak_memory) / (1 << 20)),
                     fmt::format("{}", r.skipped), step_kind(r), speedup_str(r.speedup),
                     speedup_str(r.e2e_speedup)});
  }
  for (const GemmRow& g : gemm) {
    table.push_back({g.workload, "gemm-only", fmt::format("{}", g.batch),
                     fmt::format("{:.3f}", g.timing.step_ms),
                     fmt::format("{:.0f}", g.timing.samples_per_second), "-", "-", "-", "-", "-",
                     "-", "-"});
  }
  std::printf("\n%s", format_table({"workload", "precision", "batch", "step ms", "samples/s",
                                    "e2e step ms", "e2e samples/s", "peak MiB", "skipped", "step",
                                    "speedup vs fp32", "e2e speedup"},
                                   table)
                          .c_str());
  for (const GemmRow& g : gemm) {
    if (g.fp32_ratio) {
      std::printf("%s: fp32 step / OpenBLAS GEMMs alone = %.2fx (CPU target: <= 1.5x)\n",
                  g.workload.c_str(), *g.fp32_ratio);
    }
  }
  if (cpu && !gemm_baseline_available()) {
    std::printf("(no gemm-only rows: this build has no cblas.h)\n");
  }

  if (!o.json.empty()) {
    nlohmann::ordered_json j;
    j["date"] = utc_now();
    j["device"] = device_name(device);
    j["optimizer"] = optimizer_name(parse_optimizer(o.optimizer));
    j["warmup_steps"] = o.warmup;
    j["windows"] = o.windows;
    j["steps_per_window"] = steps;
    j["results"] = nlohmann::ordered_json::array();
    for (const Row& r : rows) {
      j["results"].push_back({{"workload", r.workload},
                              {"precision", r.precision},
                              {"optimizer", r.optimizer},
                              {"batch", r.batch},
                              {"steady", timing_json(r.steady)},
                              {"end_to_end", timing_json(r.end_to_end)},
                              {"peak_memory_bytes", r.peak_memory},
                              {"skipped_steps", r.skipped},
                              {"steps", r.steps},
                              {"fused_steps", r.fused_steps},
                              {"step", step_kind(r)},
                              {"final_loss_scale", r.loss_scale},
                              {"speedup_vs_fp32", optional_json(r.speedup)},
                              {"end_to_end_speedup_vs_fp32", optional_json(r.e2e_speedup)}});
    }
    j["gemm_only"] = nlohmann::ordered_json::array();
    for (const GemmRow& g : gemm) {
      j["gemm_only"].push_back({{"workload", g.workload},
                                {"batch", g.batch},
                                {"timing", timing_json(g.timing)},
                                {"fp32_step_over_gemm", optional_json(g.fp32_ratio)}});
    }
    write_file_atomic(o.json, j.dump(2) + "\n");
    std::printf("wrote %s\n", o.json.c_str());
  }
  return 0;
}

}  // namespace

Command add_bench_command(CLI::App& parent) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* app = parent.add_subcommand(
      "bench",
      "Benchmark BENCHMARKS.md's workloads (preset model at the listed batch size, Adam (or "
      "--optimizer) lr 1e-3, "
      "random inputs rotating among 4 batches, FP16 initial loss scale 65536) in each precision: "
      "steady-state step time (batches kept on the device, steps without a sync, one sync per "
      "window), end-to-end step time (batches from host memory, loss read every step), "
      "samples/s, peak memory and speedup over fp32. On the CPU it adds a gemm-only row: the "
      "same GEMMs timed with OpenBLAS alone.");
  app->add_option("--device", o->device, "auto, cpu or cuda")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_device(s); }, "auto|cpu|cuda"));
  app->add_option("--workloads", o->workloads,
                  "comma-separated workloads: small_mlp (batch 64), large_mlp (batch 512), "
                  "resnet18_cifar (batch 256, 32x32x3 images)")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--precisions", o->precisions, "comma-separated precisions")
      ->delimiter(',')
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_precision(s); }, "fp32|tf32|fp16|bf16"));
  app->add_option("--steps", o->steps,
                  "timed steps per measurement, split evenly into --windows windows")
      ->capture_default_str()
      ->check(positive_integer());
  app->add_option("--warmup", o->warmup, "untimed steps before timing")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app->add_option("--windows", o->windows, "timed windows; the median window is reported")
      ->capture_default_str()
      ->check(positive_integer());
  app->add_option("--optimizer", o->optimizer,
                  "optimizer at its default hyper-parameters (BENCHMARKS.md's workloads use adam)")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_optimizer(s); },
                        "sgd|adam|adamw|rmsprop|adagrad|adadelta|nadam"));
  app->add_option("--json", o->json, "also write every figure to this JSON file");
  app->add_flag("--gemm-only", o->gemm_only,
                "CPU: time only the OpenBLAS GEMM baseline rows, no training");
  app->footer(
      "Example:\n"
      "  mixtrain bench --device cpu --workloads small_mlp --steps 50\n"
      "  mixtrain bench --device cuda --workloads small_mlp,large_mlp --steps 500 --json b.json");
  return {app, [o] { return run_bench(*o); }};
}

}  // namespace mixtrain::cli
