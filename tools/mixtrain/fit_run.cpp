// A fit() with progress on stderr and one line per epoch on stdout.
#include <fmt/format.h>

#include <cstdio>

#include "common.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cli {

FitRun fit_with_display(Trainer& trainer, const LoadedData& data, int epochs,
                        std::size_t batch_size, const FitDisplay& display) {
  if (data.train.size() == 0) throw DataError("the training split is empty");
  ProgressDisplay progress(display.progress);
  FitOptions options;
  options.epochs = epochs;
  options.batch_size = batch_size;
  options.validation = data.test.size() > 0 ? &data.test : nullptr;
  options.progress_interval = progress.interval(display.progress_every);
  if (display.progress) {
    options.on_progress = [&progress](const ProgressReport& p) { progress.update(p); };
  }
  options.on_epoch_end = [&](const EpochReport& r) {
    progress.clear();
    if (display.epoch_lines) {
      std::string line = fmt::format("{}epoch {}/{}: train loss {:.4f}", display.prefix, r.epoch,
                                     r.epochs, r.train_loss);
      if (r.has_validation) {
        line += fmt::format(", test loss {:.4f}", r.validation.loss);
        if (r.validation.has_accuracy) {
          line += fmt::format(", test accuracy {}", percent(r.validation.accuracy));
        }
      }
      line +=
          fmt::format(", {:.1f} s, {:.0f} samples/s, loss scale {:g}, skipped steps {}", r.seconds,
                      r.samples_per_second, r.stats.loss_scale, r.stats.skipped_steps);
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
    return true;
  };
  FitRun run;
  try {
    run.history = trainer.fit(data.train, options);
  } catch (...) {
    progress.clear();
    throw;
  }
  progress.clear();
  std::size_t samples = 0;
  for (const EpochReport& r : run.history.epochs) {
    run.train_seconds += r.seconds;
    samples += data.train.size();
  }
  run.samples_per_second =
      run.train_seconds > 0 ? static_cast<double>(samples) / run.train_seconds : 0.0;
  run.stats = trainer.stats();
  return run;
}

}  // namespace mixtrain::cli
