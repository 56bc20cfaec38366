// Progress reports on stderr: a bar redrawn in place on a terminal, plain lines otherwise.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "common.hpp"

namespace mixtrain::cli {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto total = static_cast<long long>(std::llround(seconds));
  const long long h = total / 3600, m = total / 60 % 60, s = total % 60;
  return h > 0 ? fmt::format("{}:{:02}:{:02}", h, m, s) : fmt::format("{}:{:02}", m, s);
}

ProgressDisplay::ProgressDisplay(bool enabled)
    : enabled_(enabled), terminal_(::isatty(STDERR_FILENO) == 1) {}

ProgressDisplay::~ProgressDisplay() {
  clear();
}

std::size_t ProgressDisplay::interval(std::size_t requested) const {
  if (requested > 0) return requested;
  return terminal_ ? 10 : 100;
}

void ProgressDisplay::update(const ProgressReport& p) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (terminal_ && drawn_ && p.batch < p.batches &&
      now - last_draw_ < std::chrono::milliseconds(100)) {
    return;  // redraw a terminal bar at most ten times a second
  }
  last_draw_ = now;
  const std::string numbers = fmt::format(
      "loss {:.4f}  scale {:g}  overflows {}  {:.0f} samples/s  ETA {}", p.loss, p.stats.loss_scale,
      p.stats.skipped_steps, p.samples_per_second, format_duration(p.eta_seconds));
  if (terminal_) {
    constexpr std::size_t kWidth = 24;
    const std::size_t filled =
        p.batches > 0 ? std::min(kWidth, p.batch * kWidth / p.batches) : kWidth;
    const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
    std::fprintf(stderr, "\r\033[Kepoch %d/%d [%s] %zu/%zu  %s", p.epoch, p.epochs, bar.c_str(),
                 p.batch, p.batches, numbers.c_str());
    drawn_ = true;
  } else {
    std::fprintf(stderr, "epoch %d/%d  batch %zu/%zu  %s\n", p.epoch, p.epochs, p.batch, p.batches,
                 numbers.c_str());
  }
  std::fflush(stderr);
}

void ProgressDisplay::clear() {
  if (!drawn_) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace mixtrain::cli
