// libFuzzer target: model spec JSON (ModelSpec::parse, the text path of ModelSpec::load) and
// compile(): validation and shape inference, with graph fusion as configured (on by default).
// A spec that compiles is written back to JSON, which must parse and compile to the same
// parameter count.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <nlohmann/json.hpp>  // to_json()'s value: model.hpp declares it only

#include "mixtrain/error.hpp"
#include "mixtrain/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const mixtrain::ModelSpec spec = mixtrain::ModelSpec::parse(text, "fuzz.json");
    const mixtrain::Model model = mixtrain::compile(spec);
    (void)model.summary();
    (void)model.output_shape();
    const mixtrain::ModelSpec again = mixtrain::ModelSpec::parse(spec.to_json().dump(), "again");
    if (mixtrain::compile(again).parameter_count() != model.parameter_count()) std::abort();
  } catch (const mixtrain::Error&) {
    // ConfigError / ShapeError naming the field or the layer: the expected outcome.
  }
  return 0;
}
