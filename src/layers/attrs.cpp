#include "layers/attrs.hpp"

#include <limits>

namespace mixtrain {

std::int64_t integer_attribute(const std::string& layer, const char* key, const nlohmann::json& v) {
  const auto bad = [&](const char* what) {
    return ConfigError("layer '" + layer + "': attribute '" + key + "' " + what + ", got " +
                       v.dump());
  };
  std::int64_t value = 0;
  if (v.is_number_unsigned()) {
    if (v.get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxIntegerAttribute)) {
      throw bad("is out of range (at most 2^31 - 1)");
    }
    value = v.get<std::int64_t>();
  } else if (v.is_number_integer()) {
    value = v.get<std::int64_t>();
  } else if (v.is_number_float()) {
    // 64.0 is 64; 2.5 and numbers beyond the range are errors, not truncated or wrapped.
    const double d = v.get<double>();
    if (d != std::floor(d) || std::fabs(d) > static_cast<double>(kMaxIntegerAttribute)) {
      throw bad("must be an integer of magnitude at most 2^31 - 1");
    }
    value = static_cast<std::int64_t>(d);
  } else {
    throw bad("must be an integer");
  }
  if (value > kMaxIntegerAttribute || value < -kMaxIntegerAttribute) {
    throw bad("is out of range (magnitude at most 2^31 - 1)");
  }
  return value;
}

}  // namespace mixtrain
