#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>

#include "io/atomic_file.hpp"
#include "mixtrain/error.hpp"
#include "mixtrain/report.hpp"

namespace mixtrain {

std::string history_csv(const std::vector<StepStats>& history) {
  std::string out = "step,loss,loss_scale,grad_norm,skipped\n";
  for (std::size_t i = 0; i < history.size(); ++i) {
    const StepStats& s = history[i];
    out += fmt::format("{},{},{},{},{}\n", i, s.loss, s.loss_scale, s.grad_norm, s.skipped ? 1 : 0);
  }
  return out;
}

namespace {

constexpr double kWidth = 900, kPanel = 200, kGap = 50, kLeft = 80, kRight = 20, kTop = 60;

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else if (c == '&') {
      out += "&amp;";
    } else {
      out += c;
    }
  }
  return out;
}

// One panel: a polyline of the finite values of f(step), with min/max labels.
std::string panel(const std::vector<StepStats>& h, int index, const std::string& label,
                  const std::function<std::optional<double>(const StepStats&)>& f,
                  const std::string& color) {
  const double top = kTop + index * (kPanel + kGap);
  const double plot_w = kWidth - kLeft - kRight;
  double lo = INFINITY, hi = -INFINITY;
  for (const StepStats& s : h) {
    if (auto v = f(s)) {
      lo = std::min(lo, *v);
      hi = std::max(hi, *v);
    }
  }
  std::string out = fmt::format(
      "<rect x='{}' y='{}' width='{}' height='{}' fill='none' stroke='#999'/>\n"
      "<text x='{}' y='{}' font-size='13' font-family='sans-serif'>{}</text>\n",
      kLeft, top, plot_w, kPanel, kLeft, top - 8, escape(label));
  if (!(lo <= hi))
    return out + fmt::format("<text x='{}' y='{}' font-size='12'>no finite values</text>\n",
                             kLeft + 10, top + 20);
  if (hi == lo) {
    hi += 0.5;
    lo -= 0.5;
  }
  const double n = std::max<double>(1.0, static_cast<double>(h.size() - 1));
  auto x = [&](std::size_t i) { return kLeft + plot_w * static_cast<double>(i) / n; };
  auto y = [&](double v) { return top + kPanel * (1.0 - (v - lo) / (hi - lo)); };
  std::string points;
  for (std::size_t i = 0; i < h.size(); ++i) {
    if (auto v = f(h[i])) points += fmt::format("{:.1f},{:.1f} ", x(i), y(*v));
  }
  out += fmt::format("<polyline fill='none' stroke='{}' stroke-width='1.2' points='{}'/>\n", color,
                     points);
  for (std::size_t i = 0; i < h.size(); ++i) {
    if (h[i].skipped) {
      out += fmt::format(
          "<line x1='{0:.1f}' x2='{0:.1f}' y1='{1}' y2='{2}' stroke='#d62728' "
          "stroke-opacity='0.5'/>\n",
          x(i), top, top + kPanel);
    }
  }
  out += fmt::format(
      "<text x='{}' y='{}' font-size='11' text-anchor='end'>{:.4g}</text>\n"
      "<text x='{}' y='{}' font-size='11' text-anchor='end'>{:.4g}</text>\n",
      kLeft - 4, top + 10, hi, kLeft - 4, top + kPanel, lo);
  return out;
}

}  // namespace

std::string history_svg(const std::vector<StepStats>& h, const std::string& title) {
  const double height = kTop + 3 * (kPanel + kGap);
  std::size_t skipped = 0;
  for (const StepStats& s : h) skipped += s.skipped ? 1 : 0;
  std::string out = fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' viewBox='0 0 {} {}'>\n"
      "<rect width='100%' height='100%' fill='white'/>\n"
      "<text x='{}' y='20' font-size='15' font-family='sans-serif'>{} ({} steps, {} skipped "
      "for overflow, marked red)</text>\n",
      kWidth, height, kWidth, height, kLeft, escape(title), h.size(), skipped);
  auto finite = [](double v) -> std::optional<double> {
    return std::isfinite(v) ? std::optional<double>(v) : std::nullopt;
  };
  out += panel(
      h, 0, "loss", [&](const StepStats& s) { return finite(s.loss); }, "#1f77b4");
  out += panel(
      h, 1, "loss scale (log2)",
      [&](const StepStats& s) { return finite(std::log2(s.loss_scale)); }, "#2ca02c");
  out += panel(
      h, 2, "gradient norm, unscaled (log10)",
      [&](const StepStats& s) {
        return s.grad_norm > 0 ? finite(std::log10(s.grad_norm)) : std::nullopt;
      },
      "#ff7f0e");
  const double axis_y = kTop + 3 * (kPanel + kGap) - kGap + 16;
  out += fmt::format(
      "<text x='{}' y='{}' font-size='11'>step 0</text>\n"
      "<text x='{}' y='{}' font-size='11' text-anchor='end'>step {}</text>\n</svg>\n",
      kLeft, axis_y, kWidth - kRight, axis_y, h.empty() ? 0 : h.size() - 1);
  return out;
}

void save_history(const std::vector<StepStats>& history, const std::filesystem::path& path,
                  const std::string& title) {
  const std::string ext = path.extension().string();
  if (ext == ".csv") {
    write_file_atomic(path, history_csv(history));
  } else if (ext == ".svg") {
    write_file_atomic(path, history_svg(history, title));
  } else {
    throw ConfigError("history file '" + path.string() + "': use a .csv or .svg extension");
  }
}

}  // namespace mixtrain
