// libFuzzer target: the weights file parser (src/io/weights_file.hpp), versions 1 and 2, alone
// and against the architecture of the seeds' model. A file that parses must serialize back (as
// version 2) to a file that parses to the same architecture and the same bits.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "io/weights_file.hpp"
#include "mixtrain/error.hpp"

namespace {

// The model of the seed corpus: dense 4 -> 3 (tests/fuzz/corpus/README.md).
const mixtrain::WeightsArchitecture kSeedModel = {
    {"dense_1", "dense", {{"weight", {3, 4}}, {"bias", {3}}}, {}}};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    (void)mixtrain::parse_weights_file(bytes, "fuzz.bin", &kSeedModel);
  } catch (const mixtrain::Error&) {
  }
  try {
    const mixtrain::WeightsFile f = mixtrain::parse_weights_file(bytes, "fuzz.bin");
    if (f.version != 2) return 0;
    const std::string again = mixtrain::serialize_weights_file(f.architecture, f.values);
    const mixtrain::WeightsFile g = mixtrain::parse_weights_file(again, "again");
    if (!(g.architecture == f.architecture) || g.values.size() != f.values.size() ||
        (!f.values.empty() &&
         std::memcmp(g.values.data(), f.values.data(), f.values.size() * sizeof(float)) != 0)) {
      std::abort();
    }
  } catch (const mixtrain::Error&) {
  }
  return 0;
}
