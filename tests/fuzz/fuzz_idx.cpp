// libFuzzer target: the IDX reader (raw and gzip) through its in-memory entry point. The input
// is one IDX file (a seed is a real file): read as the images file with a valid one-label file,
// and as the labels file with a valid one-image file, so both magic numbers are exercised.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "data/readers.hpp"
#include "mixtrain/error.hpp"

namespace {

// One 2x2 image, and one label (class 3).
const std::string kOneImage(
    "\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02"
    "\x00\x40\x80\xff",
    20);
const std::string kOneLabel("\x00\x00\x08\x01\x00\x00\x00\x01\x03", 9);

void read(std::string_view images, std::string_view labels, bool image_layout) {
  try {
    const mixtrain::Dataset d =
        mixtrain::detail::idx_from_bytes(images, "images", labels, "labels", image_layout);
    d.validate();  // a dataset the reader returns is consistent
  } catch (const mixtrain::Error&) {
    // A typed error naming the file is the expected outcome for malformed input.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const bool image_layout = size % 2 == 1;
  read(input, kOneLabel, image_layout);
  read(kOneImage, input, image_layout);
  return 0;
}
