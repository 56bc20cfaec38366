// --dataset fashion-mnist | csv:PATH, and the flags that go with it.
#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "common.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cli {

namespace {

constexpr std::string_view kCsvPrefix = "csv:";

CsvOptions csv_options(const DataOptions& o) {
  CsvOptions csv;
  const std::string& col = o.label_column;
  int index = 0;
  const auto [end, ec] = std::from_chars(col.data(), col.data() + col.size(), index);
  if (ec == std::errc() && end == col.data() + col.size()) {
    csv.label_column = index;
  } else {
    csv.label_name = col;  // a header name
  }
  if (o.header == "yes") {
    csv.has_header = true;
  } else if (o.header == "no") {
    csv.has_header = false;
  }
  return csv;
}

LoadedData load_csv(const DataOptions& o, const std::string& path) {
  if (!(o.test_fraction > 0.0 && o.test_fraction <= 1.0)) {
    throw ConfigError(fmt::format("--test-fraction must be in (0, 1], got {}", o.test_fraction));
  }
  Dataset all = read_csv(path, csv_options(o));
  const std::size_t n = all.size();
  const auto test_rows =
      static_cast<std::size_t>(std::ceil(o.test_fraction * static_cast<double>(n)));
  if (test_rows == 0 || (test_rows == n && o.test_fraction < 1.0)) {
    throw DataError(fmt::format("'{}' has {} rows: too few to hold out {} for testing", path, n,
                                o.test_fraction));
  }
  LoadedData d;
  d.train = all.slice(0, n - test_rows);
  d.test = all.slice(n - test_rows, n);
  if (o.normalize) {
    const Normalizer norm = Normalizer::fit(d.train.size() > 0 ? d.train : d.test, true);
    if (d.train.size() > 0) norm.apply(d.train);
    norm.apply(d.test);
  }
  d.description = fmt::format("{} ({} train, {} test rows, {} features, {} classes)", path,
                              d.train.size(), d.test.size(), all.feature_size(), all.num_classes);
  return d;
}

}  // namespace

void add_data_options(CLI::App& app, DataOptions& o) {
  app.add_option("--dataset", o.dataset,
                 "fashion-mnist (the four IDX files in --data-dir), or csv:PATH (numeric CSV, "
                 "one sample a row, integer class label in --label-column)")
      ->capture_default_str();
  app.add_option("--data-dir", o.data_dir,
                 "directory holding Fashion-MNIST's train-/t10k- images and labels (.gz or raw)")
      ->default_str(default_fashion_mnist_dir().string());
  app.add_option("--label-column", o.label_column,
                 "CSV: column holding the class label, an index (negative counts from the end) "
                 "or a header name")
      ->capture_default_str();
  app.add_option("--header", o.header,
                 "CSV: whether the first row is a header: yes, no, or auto (a header when none "
                 "of its cells is a number, data when all are, an error when mixed)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "yes", "no"}));
  app.add_option("--test-fraction", o.test_fraction,
                 "CSV: fraction of rows, taken from the end of the file, held out as the test "
                 "split (1 in eval: the whole file)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_flag("--normalize", o.normalize,
               "CSV: standardise each feature with the training split's mean and deviation");
}

LoadedData load_data(const DataOptions& o, const ModelSpec& model) {
  if (o.dataset == "fashion-mnist") {
    const bool images = model.input_shape.size() == 4;
    const std::filesystem::path dir =
        o.data_dir.empty() ? default_fashion_mnist_dir() : std::filesystem::path(o.data_dir);
    if (!std::filesystem::is_directory(dir)) {
      throw IoError(fmt::format(
          "Fashion-MNIST directory '{}' does not exist (install the dataset-fashion-mnist "
          "package or pass --data-dir)",
          dir.string()));
    }
    LoadedData d;
    try {
      d.train = load_fashion_mnist(dir, "train", images);
      d.test = load_fashion_mnist(dir, "test", images);
    } catch (const DataError& e) {
      throw DataError(fmt::format("{} (--data-dir DIR reads it from elsewhere)", e.what()));
    }
    d.description = fmt::format("fashion-mnist ({} train, {} test images{})", d.train.size(),
                                d.test.size(), images ? ", 28x28x1" : "");
    return d;
  }
  if (o.dataset.starts_with(kCsvPrefix)) {
    const std::string path = o.dataset.substr(kCsvPrefix.size());
    if (path.empty()) throw ConfigError("--dataset csv:PATH needs a path after 'csv:'");
    return load_csv(o, path);
  }
  throw ConfigError(
      fmt::format("unknown --dataset '{}' (use fashion-mnist or csv:PATH)", o.dataset));
}

}  // namespace mixtrain::cli
