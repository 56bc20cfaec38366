#include "layers/spatial.hpp"

#include <algorithm>

#include "layers/attrs.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

namespace {

[[noreturn]] void bad(const std::string& layer, const char* key, const nlohmann::json& v,
                      const char* want) {
  throw ConfigError("layer '" + layer + "': attribute '" + key + "' must be " + want + ", got " +
                    v.dump());
}

}  // namespace

Hw read_hw(const std::string& layer, const nlohmann::json& v, const char* key, Hw fallback) {
  if (v.is_null()) return fallback;
  if (v.is_number_integer()) {
    const std::int64_t both = integer_attribute(layer, key, v);
    return {both, both};
  }
  if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer()) {
    return {integer_attribute(layer, key, v[0]), integer_attribute(layer, key, v[1])};
  }
  bad(layer, key, v, "an integer or [height, width]");
}

PaddingAttr read_padding(const std::string& layer, const nlohmann::json& v) {
  PaddingAttr p;
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "same") {
      p.same = true;
      return p;
    }
    if (s == "valid") return p;
    bad(layer, "padding", v, "\"same\", \"valid\", an integer or [height, width]");
  }
  if (v.is_null()) return p;
  if (v.is_number_integer() || v.is_array()) {
    p.size = read_hw(layer, v, "padding", {0, 0});
    return p;
  }
  bad(layer, "padding", v, "\"same\", \"valid\", an integer or [height, width]");
}

Extent spatial_extent(std::int64_t in, std::int64_t window, std::int64_t stride, bool same,
                      std::int64_t pad) {
  Extent e;
  if (same) {
    e.out = (in + stride - 1) / stride;
    const std::int64_t total = std::max<std::int64_t>(0, (e.out - 1) * stride + window - in);
    e.pad_before = total / 2;
    e.padded_in = in + total;
    return e;
  }
  e.pad_before = pad;
  e.padded_in = in + 2 * pad;
  e.out = e.padded_in >= window ? (e.padded_in - window) / stride + 1 : 0;
  return e;
}

std::string hw_str(Hw v) {
  return std::to_string(v.h) + "x" + std::to_string(v.w);
}

}  // namespace mixtrain
