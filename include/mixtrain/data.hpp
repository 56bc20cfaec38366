// Datasets on the host: readers for IDX (MNIST / Fashion-MNIST, raw or gzip) and CSV files, and
// a DataLoader that shuffles (seeded) and batches them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace mixtrain {

// An in-memory dataset. Sample i's features are features[i*feature_size .. (i+1)*feature_size).
// Exactly one kind of target is present: integer class labels (labels, with num_classes > 0) or
// float targets (targets, target_size floats per sample) for regression and multi-label losses.
struct Dataset {
  std::vector<float> features;             // [size(), feature_size] row-major
  std::vector<std::int64_t> sample_shape;  // shape of one sample, e.g. {784} or {28, 28, 1}
  std::vector<std::int32_t> labels;        // [size()] in [0, num_classes), or empty
  int num_classes = 0;
  std::vector<float> targets;  // [size(), target_size], or empty
  std::size_t target_size = 0;

  std::size_t feature_size() const;  // product of sample_shape
  std::size_t size() const;          // number of samples
  // Throws DataError naming the inconsistency (sizes that do not match, label out of range).
  void validate() const;
  // Samples [begin, end) as a new dataset (for validation splits).
  Dataset slice(std::size_t begin, std::size_t end) const;
};

// Reads an IDX images file (magic 0x00000803, unsigned bytes) and an IDX labels file (0x00000801)
// into a Dataset with features scaled to [0, 1] and sample_shape {rows*cols} (flat) or
// {rows, cols, 1} (channels-last, as conv2d takes images) when image_layout is true. Files may
// be gzip-compressed (detected by content).
// Errors (DataError) name the file and what is wrong: bad magic, truncated data, count mismatch.
Dataset read_idx(const std::filesystem::path& images, const std::filesystem::path& labels,
                 bool image_layout = false);

// Fashion-MNIST from a directory holding the four standard files (.gz or raw):
// train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz],
// t10k-labels-idx1-ubyte[.gz]. split is "train" or "test".
Dataset load_fashion_mnist(const std::filesystem::path& dir, const std::string& split,
                           bool image_layout = false);

// Where Debian's dataset-fashion-mnist package installs the files.
std::filesystem::path default_fashion_mnist_dir();

struct CsvOptions {
  // Whether the first non-blank line is a header (skipped; its cells name the columns).
  // nullopt detects it: a header when none of its cells is a number (empty cells are not
  // numbers), data when all are; a first line mixing numbers and other cells (a data row with a
  // typo, or a header with a numeric name) is a DataError naming the file, the line and the first
  // cell that is not a number. true / false decide without looking.
  std::optional<bool> has_header;
  char delimiter = ',';
  // Column holding the label: index (negative counts from the end) or, with a header, a name.
  int label_column = -1;
  std::string label_name;  // overrides label_column when non-empty
  // true: labels are integer class ids (num_classes = max + 1); false: the label is a float target.
  bool classification = true;
};

// Reads numeric CSV. Errors (DataError) name the file, line and column of the bad field.
Dataset read_csv(const std::filesystem::path& path, const CsvOptions& options = {});

// Per-feature or global normalisation computed on one dataset and applied to others.
struct Normalizer {
  std::vector<float> mean;    // one per feature, or a single value for global
  std::vector<float> stddev;  // same length as mean
  static Normalizer fit(const Dataset& data, bool per_feature);
  void apply(Dataset& data) const;
};

// Iterates over a dataset in batches. With shuffle, each epoch draws a new permutation from a
// generator seeded by (seed, epoch): the same seed gives the same batches on every machine.
class DataLoader {
 public:
  struct Batch {
    const float* features;       // [count, feature_size] contiguous
    const std::int32_t* labels;  // [count] or nullptr when the dataset has float targets
    const float* targets;        // [count, target_size] or nullptr
    std::size_t count;           // samples in this batch (the last one may be smaller)
  };

  // Keeps a reference to data, which must outlive the loader.
  DataLoader(const Dataset& data, std::size_t batch_size, bool shuffle, std::uint64_t seed,
             bool drop_last = false);
  DataLoader(Dataset&& data, std::size_t, bool, std::uint64_t, bool = false) = delete;
  // Starts epoch `epoch` (0-based): reshuffles when shuffling.
  void start_epoch(std::size_t epoch);
  // Fills the next batch; returns false at the end of the epoch.
  bool next(Batch& batch);
  std::size_t batches_per_epoch() const;
  std::size_t batch_size() const { return batch_size_; }
  const Dataset& dataset() const { return data_; }

 private:
  const Dataset& data_;
  std::size_t batch_size_;
  bool shuffle_;
  std::uint64_t seed_;
  bool drop_last_;
  std::vector<std::size_t> order_;
  std::size_t cursor_ = 0;
  std::vector<float> feature_buf_;
  std::vector<std::int32_t> label_buf_;
  std::vector<float> target_buf_;
};

}  // namespace mixtrain
