// Tests for the `mixtrain` command line, run as a separate process on a synthetic CSV dataset:
// exit codes, the lines users and scripts read, and the files it writes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mixtrain/model.hpp"

namespace mixtrain {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code = -1;
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           ("mixtrain_cli_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    write_dataset();
    // A small classifier for the 4-feature, 3-class data; its batch dimension is replaced by
    // --batch-size.
    ModelBuilder({8, 4}).dense(16).relu().dense(3).spec().save(path("spec.json"));
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // 200 rows of 4 features in [0, 1), label = argmax of three fixed linear scores: separable.
  void write_dataset() {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::ofstream csv(path("data.csv"));
    csv << "f0,f1,f2,f3,label\n";
    for (int i = 0; i < 200; ++i) {
      float f[4];
      for (float& x : f) x = u(rng);
      const float s0 = f[0] - f[1], s1 = f[1] - f[2] + 0.1f, s2 = f[2] + f[3] - 1.0f;
      const int label = s0 >= s1 && s0 >= s2 ? 0 : (s1 >= s2 ? 1 : 2);
      csv << f[0] << ',' << f[1] << ',' << f[2] << ',' << f[3] << ',' << label << '\n';
    }
  }

  CliRun run(const std::string& args) const {
    const std::string out = path("stdout.txt"), err = path("stderr.txt");
    const std::string cmd =
        std::string("'") + MIXTRAIN_CLI_PATH + "' " + args + " >'" + out + "' 2>'" + err + "'";
    const int status = std::system(cmd.c_str());
    CliRun r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  std::string csv_train(const std::string& extra) const {
    return "train --dataset csv:'" + path("data.csv") + "' --model '" + path("spec.json") +
           "' --device cpu --batch-size 16 --lr 0.01 " + extra;
  }

  fs::path dir_;
};

// The final line of a successful train/eval, and its value.
const std::regex kAccuracyLine(R"(test accuracy: (\d+\.\d\d)%)");

std::string final_accuracy(const std::string& out) {
  const auto lines = lines_of(out);
  std::smatch m;
  if (lines.empty() || !std::regex_match(lines.back(), m, kAccuracyLine)) return "";
  return m[1];
}

TEST_F(Cli, TrainOnCsvPrintsAccuracyAndWritesItsFiles) {
  const CliRun r =
      run(csv_train("--epochs 20 --seed 3 --history '" + path("h.csv") + "' --save-weights '" +
                    path("w.bin") + "' --save-spec '" + path("saved.json") + "'"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string acc = final_accuracy(r.out);
  ASSERT_FALSE(acc.empty()) << r.out;
  EXPECT_GT(std::stod(acc), 80.0) << "a separable 3-class problem should be learned: " << r.out;
  EXPECT_NE(r.out.find("total parameters: 131"), std::string::npos) << r.out;  // the summary
  EXPECT_NE(r.out.find("config: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("epoch 20/20: train loss"), std::string::npos) << r.out;

  // Per-step history: 160 training rows in batches of 16 for 20 epochs.
  const auto rows = lines_of(slurp(path("h.csv")));
  ASSERT_EQ(rows.size(), 1u + 10u * 20u);
  EXPECT_EQ(rows[0], "step,loss,loss_scale,grad_norm,skipped");
  EXPECT_TRUE(std::regex_match(rows[1], std::regex(R"(0,[0-9.e+-]+,1,[0-9.e+-]+,0)"))) << rows[1];
  EXPECT_EQ(rows.back().substr(0, 4), "199,");

  const ModelSpec saved = ModelSpec::load(path("saved.json"));
  EXPECT_EQ(saved.input_shape, (Shape{16, 4}));
  EXPECT_TRUE(fs::exists(path("w.bin")));
  for (const auto& e : fs::directory_iterator(dir_)) {  // atomic writes leave no temporaries
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  }
}

TEST_F(Cli, EvalOfSavedWeightsReproducesTheTrainAccuracy) {
  const CliRun t = run(csv_train("--epochs 5 --quiet --save-weights '" + path("w.bin") +
                                 "' --save-spec '" + path("saved.json") + "'"));
  ASSERT_EQ(t.code, 0) << t.err;
  const CliRun e = run("eval --dataset csv:'" + path("data.csv") + "' --model '" +
                       path("saved.json") + "' --weights '" + path("w.bin") + "' --device cpu");
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NE(e.out.find("samples: 40\n"), std::string::npos) << e.out;  // the held-out 20%
  ASSERT_FALSE(final_accuracy(t.out).empty()) << t.out;
  EXPECT_EQ(final_accuracy(e.out), final_accuracy(t.out)) << t.out << e.out;
}

TEST_F(Cli, QuietPrintsOnlyTheResultLine) {
  const CliRun r = run(csv_train("--epochs 1 --quiet"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 1u) << r.out;
  EXPECT_FALSE(final_accuracy(r.out).empty()) << r.out;
  EXPECT_EQ(r.err, "");
}

TEST_F(Cli, ProgressGoesToStderrAsPlainLinesWhenNotATerminal) {
  const CliRun r = run(csv_train("--epochs 2 --progress-every 5 --precision fp16"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(std::regex_search(
      r.err, std::regex(R"(epoch 2/2  batch 10/10  loss [0-9.]+  scale 65536  overflows 0  )"
                        R"([0-9]+ samples/s  ETA 0:00\n)")))
      << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos);
  EXPECT_NE(r.out.find("precision=fp16 loss-scale=dynamic(initial 65536"), std::string::npos)
      << r.out;
}

TEST_F(Cli, SameSeedGivesTheSameHistory) {
  ASSERT_EQ(run(csv_train("--epochs 2 --quiet --seed 5 --history '" + path("a.csv") + "'")).code,
            0);
  ASSERT_EQ(run(csv_train("--epochs 2 --quiet --seed 5 --history '" + path("b.csv") + "'")).code,
            0);
  ASSERT_EQ(run(csv_train("--epochs 2 --quiet --seed 6 --history '" + path("c.csv") + "'")).code,
            0);
  EXPECT_EQ(slurp(path("a.csv")), slurp(path("b.csv")));
  EXPECT_NE(slurp(path("a.csv")), slurp(path("c.csv")));
}

TEST_F(Cli, BadInputExitsWithCode2AndAnErrorLine) {
  struct Case {
    std::string args;
    std::string message;  // part of the error message
  };
  const std::vector<Case> cases = {
      {"train --no-such-flag", "--no-such-flag"},
      {"", "subcommand"},
      {"frobnicate", "frobnicate"},
      {csv_train("--precision fp8"), "fp8"},
      {csv_train("--optimizer lion"), "lion"},
      {csv_train("--loss-scale sometimes"), "sometimes"},
      {csv_train("--epochs 0"), "--epochs: must be a positive integer, got '0'"},
      {csv_train("--batch-size -3"), "positive integer"},
      {csv_train("--epochs many"), "many"},
      {csv_train("--initial-scale 1000"), "power of two"},
      {csv_train("--history '" + path("h.txt") + "'"), ".csv or .svg"},
      {"train --dataset imagenet", "imagenet"},
      {"train --dataset csv:'" + path("missing.csv") + "'", "missing.csv"},
      {"train --dataset fashion-mnist --data-dir '" + path("nowhere") + "'", "nowhere"},
      {"train --dataset csv:'" + path("data.csv") + "' --model resnet50", "mlp"},
      {"train --dataset csv:'" + path("data.csv") + "' --model mlp --device cpu", "784"},
      {"eval --model mlp", "--weights"},
      {"bench --workloads no_such_workload", "small_mlp"},
      {"bench --device cpu --workloads gpt_small", "attention"},
      {"bench --device cpu --optimizer lion", "lion"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const CliRun r = run(c.args);
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_LT(r.err.size(), 400u) << r.err;  // a message, not a dump (no 309-digit bounds)
  }
}

TEST_F(Cli, CorruptWeightsAreAnErrorNotACrash) {
  std::ofstream(path("w.bin")) << "not weights";
  const CliRun r = run("eval --dataset csv:'" + path("data.csv") + "' --model '" +
                       path("spec.json") + "' --weights '" + path("w.bin") + "' --device cpu");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not a mixtrain weights file"), std::string::npos) << r.err;
}

// Weights of another architecture: an error that names the weights file and the first layer
// that differs, whether or not the parameter count happens to match (4 -> 3 -> 29 has the 131
// parameters of spec.json's 4 -> 16 -> 3).
TEST_F(Cli, EvalWithWeightsOfAnotherArchitectureNamesTheFile) {
  ASSERT_EQ(run(csv_train("--epochs 1 --quiet --save-weights '" + path("w.bin") + "'")).code, 0);
  ModelBuilder({8, 4}).dense(3).relu().dense(29).spec().save(path("same_count.json"));
  ModelBuilder({8, 4}).dense(8).relu().dense(3).spec().save(path("other_count.json"));
  for (const char* spec : {"same_count.json", "other_count.json"}) {
    SCOPED_TRACE(spec);
    const CliRun r = run("eval --dataset csv:'" + path("data.csv") + "' --model '" + path(spec) +
                         "' --weights '" + path("w.bin") + "' --device cpu");
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(path("w.bin") + ": the weights are for another architecture"),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("layer 'dense_1' (dense) parameter 'weight'"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("the file's [16, 4]"), std::string::npos) << r.err;
  }
}

// A first data row with a typo is an error naming the file, line and column (not a header that
// is dropped); --header decides when the first row is ambiguous.
TEST_F(Cli, CsvFirstRowTypoIsAnErrorAndHeaderFlagDecides) {
  std::ofstream(path("typo.csv")) << "0.5,0.25,O.5,0.125,1\n0.1,0.2,0.3,0.4,2\n";
  const CliRun r = run("train --dataset csv:'" + path("typo.csv") + "' --model '" +
                       path("spec.json") + "' --device cpu --epochs 1 --quiet");
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("typo.csv:1:3: 'O.5' is not a number"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--header"), std::string::npos) << r.err;

  // A header with a numeric column name is ambiguous too; --header yes reads the file.
  std::string text = slurp(path("data.csv"));
  text.replace(0, text.find('\n'), "f0,2020,f2,f3,label");
  std::ofstream(path("numeric_header.csv")) << text;
  const std::string train = "train --dataset csv:'" + path("numeric_header.csv") + "' --model '" +
                            path("spec.json") + "' --device cpu --epochs 1 --quiet";
  EXPECT_EQ(run(train).code, 2);
  const CliRun ok = run(train + " --header yes");
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(run(train + " --header no").err.find("numeric_header.csv:1:1: 'f0' is not a number"),
            std::string::npos);
  EXPECT_EQ(run(train + " --header maybe").code, 2);
}

TEST_F(Cli, CompareTabulatesEveryPrecision) {
  const CliRun r =
      run("compare --dataset csv:'" + path("data.csv") + "' --model '" + path("spec.json") +
          "' --device cpu --epochs 1 --batch-size 16 --seed 2 --quiet "
          "--precisions fp32,fp16,bf16");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = lines_of(r.out);
  std::vector<std::string> rows;
  bool header = false;
  for (const std::string& l : lines) {
    header = header || (l.rfind("precision", 0) == 0 && l.find("speedup vs fp32") != l.npos &&
                        l.find("skipped steps") != l.npos && l.find("final loss scale") != l.npos);
    for (const char* p : {"fp32 ", "fp16 ", "bf16 "}) {
      if (l.rfind(p, 0) == 0) rows.push_back(l);
    }
  }
  EXPECT_TRUE(header) << r.out;
  ASSERT_EQ(rows.size(), 3u) << r.out;
  EXPECT_NE(rows[0].find("1.00x"), std::string::npos) << rows[0];
  EXPECT_NE(rows[1].find("65536"), std::string::npos) << rows[1];  // fp16: dynamic scaling
  EXPECT_TRUE(std::regex_search(rows[2], std::regex(R"(\d+\.\d\d%)"))) << rows[2];
}

TEST_F(Cli, BenchWritesEveryFigureToJson) {
  const CliRun r =
      run("bench --device cpu --workloads small_mlp --precisions fp32,fp16 --steps 4 "
          "--windows 2 --warmup 1 --json '" +
          path("bench.json") + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("gemm-only"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(slurp(path("bench.json")));
  EXPECT_EQ(j.at("device"), "cpu");
  EXPECT_EQ(j.at("optimizer"), "adam");
  ASSERT_EQ(j.at("results").size(), 2u);
  for (const auto& row : j.at("results")) {
    EXPECT_EQ(row.at("workload"), "small_mlp");
    EXPECT_EQ(row.at("batch"), 64);
    EXPECT_GT(row.at("steady").at("step_ms").get<double>(), 0.0);
    EXPECT_EQ(row.at("steady").at("window_step_ms").size(), 2u);
    EXPECT_GT(row.at("end_to_end").at("samples_per_s").get<double>(), 0.0);
    EXPECT_GT(row.at("peak_memory_bytes").get<double>(), 0.0);
  }
  EXPECT_EQ(j["results"][0].at("precision"), "fp32");
  EXPECT_DOUBLE_EQ(j["results"][0].at("speedup_vs_fp32").get<double>(), 1.0);
  EXPECT_EQ(j["results"][1].at("precision"), "fp16");
  EXPECT_EQ(j["results"][1].at("final_loss_scale"), 65536.0);
  ASSERT_EQ(j.at("gemm_only").size(), 1u);
  EXPECT_GT(j["gemm_only"][0].at("fp32_step_over_gemm").get<double>(), 0.0);
}

TEST_F(Cli, BenchTakesAnotherOptimizer) {
  const CliRun r =
      run("bench --device cpu --workloads small_mlp --precisions fp16 --steps 2 "
          "--windows 1 --warmup 0 --optimizer rmsprop --json '" +
          path("bench.json") + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("optimizer rmsprop"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(slurp(path("bench.json")));
  EXPECT_EQ(j.at("optimizer"), "rmsprop");
  ASSERT_EQ(j.at("results").size(), 1u);
  EXPECT_EQ(j["results"][0].at("optimizer"), "rmsprop");  // what the trainer ran
  EXPECT_GT(j["results"][0].at("steady").at("step_ms").get<double>(), 0.0);
}

// The description of `flag` in CLI11's help: the option column is 30 characters wide, and the
// description follows on the same line, or on the next when the option text is longer.
std::string description_of(const std::string& help, const std::string& flag) {
  constexpr std::size_t kColumn = 30;
  const auto lines = lines_of(help);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string& l = lines[i];
    const std::size_t at = l.find(flag);
    const bool named =
        (at == 2 || (at == 5 && l[4] == ',')) && l.rfind("  ", 0) == 0 &&
        (l.size() == at + flag.size() || l[at + flag.size()] == ' ' || l[at + flag.size()] == '=');
    if (!named) continue;
    if (l.size() > kColumn && l[kColumn - 1] == ' ') return l.substr(kColumn);
    if (i + 1 < lines.size() && lines[i + 1].rfind(std::string(kColumn, ' '), 0) == 0) {
      return lines[i + 1].substr(kColumn);
    }
    return "";
  }
  return "";
}

TEST_F(Cli, EverySubcommandExplainsItsFlags) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> expected = {
      {"train", {"--dataset",        "--data-dir",
                 "--label-column",   "--header",
                 "--test-fraction",  "--normalize",
                 "--model",          "--precision",
                 "--optimizer",      "--lr",
                 "--weight-decay",   "--epochs",
                 "--batch-size",     "--seed",
                 "--device",         "--loss-scale",
                 "--initial-scale",  "--growth-interval",
                 "--clip-grad-norm", "--save-weights",
                 "--save-spec",      "--history",
                 "--progress-every", "--quiet"}},
      {"compare",
       {"--dataset", "--model", "--epochs", "--seed", "--precisions", "--batch-size", "--lr",
        "--device", "--quiet"}},
      {"eval", {"--model", "--weights", "--dataset", "--batch-size", "--precision", "--device"}},
      {"bench",
       {"--device", "--workloads", "--precisions", "--steps", "--warmup", "--windows", "--json",
        "--gemm-only"}},
  };
  for (const auto& [command, flags] : expected) {
    const CliRun r = run(command + " --help");
    EXPECT_EQ(r.code, 0) << command;
    for (const std::string& f : flags) {
      EXPECT_GT(description_of(r.out, f).size(), 10u) << command << " --help lacks " << f;
    }
  }
  // Defaults are shown.
  const std::string train = run("train --help").out;
  for (const char* d : {"--initial-scale FLOAT=65536", "--growth-interval INT=2000",
                        "--precision TEXT:fp32|tf32|fp16|bf16=fp32", "--epochs INT:POSITIVE=5"}) {
    EXPECT_NE(train.find(d), std::string::npos) << d;
  }
  EXPECT_NE(run("compare --help").out.find("=[fp32,fp16,bf16]"), std::string::npos);
  EXPECT_NE(run("eval --help").out.find("REQUIRED"), std::string::npos);
  const CliRun top = run("--help");
  EXPECT_EQ(top.code, 0);
  for (const char* c : {"train", "compare", "eval", "bench"}) {
    EXPECT_TRUE(std::regex_search(top.out, std::regex(std::string("\\n  ") + c + " +\\S")))
        << c << top.out;
  }
}

}  // namespace
}  // namespace mixtrain
