// Training reports a person can look at: the per-step history as CSV and as an SVG chart.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "mixtrain/trainer.hpp"

namespace mixtrain {

// "step,loss,loss_scale,grad_norm,skipped" and one row per step.
std::string history_csv(const std::vector<StepStats>& history);

// A self-contained SVG with three stacked panels sharing the step axis: the loss (finite values),
// the loss scale (log2 axis) and the gradient norm (log10 axis), with skipped steps marked in red.
std::string history_svg(const std::vector<StepStats>& history, const std::string& title);

// Atomic writes of the above (the format follows the extension: .csv or .svg).
void save_history(const std::vector<StepStats>& history, const std::filesystem::path& path,
                  const std::string& title = "mixtrain");

}  // namespace mixtrain
