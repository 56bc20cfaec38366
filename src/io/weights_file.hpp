// The weights file format of Trainer::save_weights / load_weights, as pure functions over bytes
// (no Trainer, no file system: the fuzzer calls them directly).
//
// Version 2 (what save_weights writes):
//   bytes 0..7    magic "MXTWEI02"
//   bytes 8..15   n, the length of the header in bytes (uint64, little-endian)
//   n bytes       the header, JSON:
//                   {"format": "mixtrain.weights", "version": 2, "layers": [
//                     {"name": "dense1", "type": "dense",
//                      "params": [{"name": "weight", "shape": [512, 784]},
//                                 {"name": "bias", "shape": [512]}],
//                      "state": []}, ...]}
//                 one entry per layer with parameters or persistent state (batch-norm's running
//                 statistics), in the model's order, named and typed as in the model spec
//   the rest      the values, float32 little-endian: every layer's parameters in header order,
//                 then every layer's state in header order (the order of Trainer::weights())
// Version 1 (read only): magic "MXTWEI01", a uint64 little-endian value count, the float32
// values. It records no architecture: only the value count can be checked against a model.
//
// parse_weights_file checks, in this order, and throws naming the file:
//   IoError     not a weights file (magic), a header length past the end of the file, a header
//               that is not the JSON above (message names the field), shapes whose element count
//               overflows, and a value section whose size is not exactly what the header (v2) or
//               the count (v1) announces (every size computed without overflow);
//   ShapeError  (only with `expected`) another architecture: the first layer or parameter that
//               differs (name, type, expected and found shape), or for v1 another value count;
//   DataError   a value that is NaN or infinite, naming the layer, the parameter or state and the
//               element index (v1: by the layout of `expected`, or the flat index without it).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "mixtrain/shape.hpp"

namespace mixtrain {

struct WeightsTensor {
  std::string name;  // "weight", "bias", "running_mean"
  Shape shape;
  bool operator==(const WeightsTensor&) const = default;
};

struct WeightsLayer {
  std::string name;  // the layer's name in the model spec
  std::string type;  // its type in the model spec ("dense", "conv2d", "batch_norm")
  std::vector<WeightsTensor> params;
  std::vector<WeightsTensor> state;  // persistent layer state, saved with the weights
  bool operator==(const WeightsLayer&) const = default;
};

// The layers with parameters or persistent state, in the model's order.
using WeightsArchitecture = std::vector<WeightsLayer>;

struct WeightsFile {
  int version = 2;
  WeightsArchitecture architecture;  // empty for version 1
  std::vector<float> values;         // parameters, then state (see above)
};

// Number of values the architecture holds (parameters and state). Throws IoError naming
// `name_for_errors` when a dimension is negative or the count overflows.
std::size_t weights_value_count(const WeightsArchitecture& architecture,
                                const std::string& name_for_errors);

// A version-2 file. Throws ShapeError when values.size() is not the architecture's value count.
std::string serialize_weights_file(const WeightsArchitecture& architecture,
                                   const std::vector<float>& values);

// Parses and checks a version-1 or version-2 file (see the top of this header). With `expected`
// (the model the weights are loaded into), the file must describe that architecture (v2) or
// hold its number of values (v1).
WeightsFile parse_weights_file(std::string_view bytes, const std::string& name_for_errors,
                               const WeightsArchitecture* expected = nullptr);

}  // namespace mixtrain
