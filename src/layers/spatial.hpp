// Attributes and geometry shared by the 2-D layers (conv2d, the pools): (height, width) pairs
// written as an integer or [h, w], padding as an integer, [h, w], "same" or "valid", and the
// output extent they give. Activations are channels-last: [H, W, C] per sample.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace mixtrain {

struct Hw {
  std::int64_t h = 1, w = 1;
};

struct PaddingAttr {
  bool same = false;  // "same": output = ceil(input / stride), the extra row/column at the end
  Hw size{0, 0};      // explicit zeros before and after ("valid" is 0)
};

// Reads attribute `key` (an integer or [h, w]); `fallback` when absent. Throws ConfigError
// naming the layer for anything else.
Hw read_hw(const std::string& layer, const nlohmann::json& value, const char* key, Hw fallback);
PaddingAttr read_padding(const std::string& layer, const nlohmann::json& value);

// One spatial dimension: an input extent, a window (dilated extent), a stride and padding give
// the output extent and the padding before the first element (the rest goes after).
struct Extent {
  std::int64_t out = 0;
  std::int64_t pad_before = 0;
  std::int64_t padded_in = 0;  // input plus all padding
};
Extent spatial_extent(std::int64_t in, std::int64_t window, std::int64_t stride, bool same,
                      std::int64_t pad);

// "3x3"
std::string hw_str(Hw v);

}  // namespace mixtrain
