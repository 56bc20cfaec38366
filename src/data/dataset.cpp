// Dataset bookkeeping (size, validation, slicing) and Normalizer.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixtrain/data.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

std::size_t Dataset::feature_size() const {
  std::size_t n = 1;
  for (std::int64_t d : sample_shape) n *= d > 0 ? static_cast<std::size_t>(d) : 0;
  return n;
}

std::size_t Dataset::size() const {
  if (!labels.empty()) return labels.size();
  if (target_size > 0) return targets.size() / target_size;
  const std::size_t fs = feature_size();
  return fs == 0 ? 0 : features.size() / fs;
}

namespace {

std::string shape_string(const std::vector<std::int64_t>& shape) {
  return fmt::format("{{{}}}", fmt::join(shape, ", "));
}

void validate_layout(const Dataset& d) {
  if (d.sample_shape.empty()) throw DataError("dataset: sample_shape is empty");
  for (std::int64_t dim : d.sample_shape) {
    if (dim <= 0) {
      throw DataError(fmt::format("dataset: sample_shape {} has a non-positive dimension",
                                  shape_string(d.sample_shape)));
    }
  }
  const bool has_labels = d.num_classes > 0 || !d.labels.empty();
  const bool has_targets = d.target_size > 0 || !d.targets.empty();
  if (has_labels == has_targets) {
    throw DataError(has_labels
                        ? "dataset: has both class labels and float targets; exactly one is allowed"
                        : "dataset: has neither class labels (num_classes > 0) nor float targets "
                          "(target_size > 0)");
  }
  if (has_labels && d.num_classes <= 0) {
    throw DataError(fmt::format("dataset: has {} labels but num_classes is {}", d.labels.size(),
                                d.num_classes));
  }
  if (has_targets && (d.target_size == 0 || d.targets.size() % d.target_size != 0)) {
    throw DataError(fmt::format("dataset: {} targets is not a multiple of target_size {}",
                                d.targets.size(), d.target_size));
  }
  const std::size_t n = d.size();
  const std::size_t fs = d.feature_size();
  if (d.features.size() != n * fs) {
    throw DataError(fmt::format("dataset: {} samples of shape {} need {} features but there are {}",
                                n, shape_string(d.sample_shape), n * fs, d.features.size()));
  }
}

void validate_values(const Dataset& d) {
  const std::size_t fs = d.feature_size();
  for (std::size_t i = 0; i < d.features.size(); ++i) {
    if (!std::isfinite(d.features[i])) {
      throw DataError(
          fmt::format("dataset: sample {} feature {} is {}", i / fs, i % fs, d.features[i]));
    }
  }
  for (std::size_t i = 0; i < d.labels.size(); ++i) {
    if (d.labels[i] < 0 || d.labels[i] >= d.num_classes) {
      throw DataError(fmt::format("dataset: sample {} has label {}, outside [0, {})", i,
                                  d.labels[i], d.num_classes));
    }
  }
  for (std::size_t i = 0; i < d.targets.size(); ++i) {
    if (!std::isfinite(d.targets[i])) {
      throw DataError(fmt::format("dataset: sample {} target {} is {}", i / d.target_size,
                                  i % d.target_size, d.targets[i]));
    }
  }
}

template <typename T>
std::vector<T> rows(const std::vector<T>& v, std::size_t begin, std::size_t end,
                    std::size_t width) {
  if (v.empty()) return {};
  return std::vector<T>(v.begin() + static_cast<std::ptrdiff_t>(begin * width),
                        v.begin() + static_cast<std::ptrdiff_t>(end * width));
}

}  // namespace

void Dataset::validate() const {
  validate_layout(*this);
  validate_values(*this);
}

Dataset Dataset::slice(std::size_t begin, std::size_t end) const {
  if (begin > end || end > size()) {
    throw ConfigError(
        fmt::format("dataset slice [{}, {}) is not within [0, {})", begin, end, size()));
  }
  Dataset out;
  out.features = rows(features, begin, end, feature_size());
  out.sample_shape = sample_shape;
  out.labels = rows(labels, begin, end, 1);
  out.num_classes = num_classes;
  out.targets = rows(targets, begin, end, target_size);
  out.target_size = target_size;
  return out;
}

Normalizer Normalizer::fit(const Dataset& data, bool per_feature) {
  validate_layout(data);
  const std::size_t n = data.size();
  if (n == 0) throw DataError("normalizer: cannot fit on an empty dataset");
  const std::size_t fs = data.feature_size();
  if (fs == 0) throw DataError("normalizer: samples have no features");
  const std::size_t groups = per_feature ? fs : 1;
  std::vector<double> sum(groups, 0.0);
  std::vector<double> sum_sq(groups, 0.0);
  // Shifting by the first sample keeps the one-pass variance accurate when |mean| >> stddev.
  std::vector<double> shift(groups);
  for (std::size_t g = 0; g < groups; ++g) shift[g] = data.features[g];
  for (std::size_t i = 0; i < data.features.size(); ++i) {
    const std::size_t g = per_feature ? i % fs : 0;
    const double x = data.features[i] - shift[g];
    sum[g] += x;
    sum_sq[g] += x * x;
  }
  const double count = static_cast<double>(per_feature ? n : n * fs);
  Normalizer norm;
  norm.mean.resize(groups);
  norm.stddev.resize(groups);
  for (std::size_t g = 0; g < groups; ++g) {
    const double m = sum[g] / count;
    const double var = std::max(0.0, sum_sq[g] / count - m * m);
    norm.mean[g] = static_cast<float>(shift[g] + m);
    // A constant feature (e.g. an always-black border pixel) maps to 0 instead of dividing by 0.
    const double sd = std::sqrt(var);
    norm.stddev[g] = sd > 1e-12 ? static_cast<float>(sd) : 1.0f;
  }
  return norm;
}

void Normalizer::apply(Dataset& data) const {
  if (mean.empty() || mean.size() != stddev.size()) {
    throw ConfigError(fmt::format("normalizer: {} means and {} stddevs (not fitted?)", mean.size(),
                                  stddev.size()));
  }
  const std::size_t fs = data.feature_size();
  if (mean.size() != 1 && mean.size() != fs) {
    throw ShapeError(
        fmt::format("normalizer: fitted on {} features, applied to {} features", mean.size(), fs));
  }
  const bool per_feature = mean.size() != 1;
  if (per_feature && fs == 0) return;  // no features: nothing to scale
  for (std::size_t i = 0; i < data.features.size(); ++i) {
    const std::size_t g = per_feature ? i % fs : 0;
    data.features[i] = (data.features[i] - mean[g]) / stddev[g];
  }
}

}  // namespace mixtrain
