// DataLoader: seeded, platform-independent shuffling and batching.
//
// The permutation comes from our own generator (xoshiro256** seeded through splitmix64) and an
// unbiased bounded draw, not from std::shuffle / std::uniform_int_distribution, whose output
// differs between standard libraries.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "mixtrain/data.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

class Xoshiro256 {
 public:
  explicit Xoshiro256(std::uint64_t seed) {
    for (std::uint64_t& word : s_) word = splitmix64(seed);
  }

  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, bound), bound > 0: rejects the 2^64 mod bound lowest values so that every
  // residue is equally likely.
  std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t threshold = (0 - bound) % bound;
    for (;;) {
      const std::uint64_t x = next();
      if (x >= threshold) return x % bound;
    }
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

// One generator seed per (seed, epoch) pair; mixing both keeps nearby pairs unrelated.
std::uint64_t epoch_seed(std::uint64_t seed, std::uint64_t epoch) {
  std::uint64_t a = seed;
  std::uint64_t b = epoch ^ 0x6A09E667F3BCC909ULL;
  return splitmix64(a) ^ (splitmix64(b) * 0xD1B54A32D192ED03ULL);
}

}  // namespace

DataLoader::DataLoader(const Dataset& data, std::size_t batch_size, bool shuffle,
                       std::uint64_t seed, bool drop_last)
    : data_(data), batch_size_(batch_size), shuffle_(shuffle), seed_(seed), drop_last_(drop_last) {
  if (batch_size == 0) throw ConfigError("DataLoader: batch_size must be at least 1, got 0");
  data.validate();
  start_epoch(0);
}

void DataLoader::start_epoch(std::size_t epoch) {
  order_.resize(data_.size());
  std::iota(order_.begin(), order_.end(), std::size_t{0});
  cursor_ = 0;
  // Sized here rather than once so that a dataset that grew since construction stays safe.
  const std::size_t max_count = std::min(batch_size_, data_.size());
  feature_buf_.resize(max_count * data_.feature_size());
  label_buf_.resize(data_.labels.empty() ? 0 : max_count);
  target_buf_.resize(max_count * data_.target_size);
  if (!shuffle_) return;
  Xoshiro256 rng(epoch_seed(seed_, epoch));
  for (std::size_t i = order_.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(rng.below(i));
    std::swap(order_[i - 1], order_[j]);
  }
}

bool DataLoader::next(Batch& batch) {
  const std::size_t remaining = order_.size() - cursor_;
  const std::size_t count = std::min(batch_size_, remaining);
  if (count == 0 || (drop_last_ && count < batch_size_)) return false;
  const std::size_t fs = data_.feature_size();
  const std::size_t ts = data_.target_size;
  const bool has_labels = !data_.labels.empty();
  for (std::size_t k = 0; k < count; ++k) {
    const std::size_t i = order_[cursor_ + k];
    std::copy_n(data_.features.begin() + static_cast<std::ptrdiff_t>(i * fs), fs,
                feature_buf_.begin() + static_cast<std::ptrdiff_t>(k * fs));
    if (has_labels) label_buf_[k] = data_.labels[i];
    if (ts > 0) {
      std::copy_n(data_.targets.begin() + static_cast<std::ptrdiff_t>(i * ts), ts,
                  target_buf_.begin() + static_cast<std::ptrdiff_t>(k * ts));
    }
  }
  cursor_ += count;
  batch.features = feature_buf_.data();
  batch.labels = has_labels ? label_buf_.data() : nullptr;
  batch.targets = ts > 0 ? target_buf_.data() : nullptr;
  batch.count = count;
  return true;
}

std::size_t DataLoader::batches_per_epoch() const {
  const std::size_t n = data_.size();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

}  // namespace mixtrain
