// mixtrain: train, compare, evaluate and benchmark models in mixed precision.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common.hpp"
#include "mixtrain/error.hpp"

namespace {

int run(int argc, char** argv) {
  using namespace mixtrain::cli;
  CLI::App app(
      "mixtrain: mixed-precision (FP16/BF16) neural-network training.\n"
      "Run `mixtrain SUBCOMMAND --help` for the flags of each subcommand.",
      "mixtrain");
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  mixtrain train --dataset fashion-mnist --model mlp --precision fp16 --epochs 5\n"
      "  mixtrain compare --model mlp --epochs 1 --precisions fp32,fp16,bf16\n"
      "  mixtrain eval --model spec.json --weights mlp.bin --dataset fashion-mnist\n"
      "  mixtrain bench --device cpu --workloads small_mlp --steps 50");
  const std::vector<Command> commands = {add_train_command(app), add_compare_command(app),
                                         add_eval_command(app), add_bench_command(app)};
  const auto known = [&](const char* name) {
    for (const Command& c : commands) {
      if (c.app->get_name() == name) return true;
    }
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !known(argv[1])) {
    std::fprintf(stderr,
                 "error: unknown subcommand '%s' (subcommands: train, compare, eval, bench)\n",
                 argv[1]);
    std::fprintf(stderr, "Run with --help for usage.\n");
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fprintf(stderr, "Run with --help for usage.\n");
    return kExitUsage;
  }
  try {
    for (const Command& c : commands) {
      if (c.app->parsed()) return c.run();
    }
    return kExitUsage;  // unreachable: require_subcommand(1)
  } catch (const mixtrain::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: internal: %s\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // run() reports every error of a command itself; this catches what escapes while the command
  // line is being set up (an allocation failure, say).
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: internal: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "error: internal: unknown exception\n");
  }
  return 1;
}
