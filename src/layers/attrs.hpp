// Typed access to a layer spec's attributes with errors that name the layer and the attribute.
// Integers (and the elements of integer lists) must be integral JSON numbers of magnitude at most
// kMaxIntegerAttribute; floats must be finite in float range.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "mixtrain/error.hpp"
#include "mixtrain/shape.hpp"

namespace mixtrain {

// 2^31 - 1: far above any real layer size, and low enough that the shape arithmetic of the
// layers (window extents, strides, padding) cannot overflow 64 bits.
inline constexpr std::int64_t kMaxIntegerAttribute = (std::int64_t{1} << 31) - 1;

// An integer attribute's value, or ConfigError naming layer and attribute.
std::int64_t integer_attribute(const std::string& layer, const char* key, const nlohmann::json& v);

class Attrs {
 public:
  Attrs(const std::string& layer, const nlohmann::json& j) : layer_(layer), j_(j) {}

  template <typename T>
  T get(const char* key, T fallback) const {
    if (!j_.contains(key)) return fallback;
    return as<T>(key);
  }
  template <typename T>
  T require(const char* key) const {
    if (!j_.contains(key)) {
      throw ConfigError("layer '" + layer_ + "': missing attribute '" + key + "'");
    }
    return as<T>(key);
  }

 private:
  template <typename T>
  T as(const char* key) const {
    const nlohmann::json& v = j_.at(key);
    if constexpr (std::is_same_v<T, std::int64_t>) {
      return integer_attribute(layer_, key, v);
    } else if constexpr (std::is_same_v<T, Shape>) {
      if (!v.is_array()) wrong_type(key);
      Shape out;
      for (const nlohmann::json& e : v) out.push_back(integer_attribute(layer_, key, e));
      return out;
    } else if constexpr (std::is_same_v<T, float>) {
      if (!v.is_number()) wrong_type(key);
      const double d = v.get<double>();
      if (!std::isfinite(d) || std::fabs(d) > FLT_MAX) {
        throw ConfigError("layer '" + layer_ + "': attribute '" + key + "' (" + v.dump() +
                          ") is out of range for a float");
      }
      return static_cast<float>(d);
    } else {
      try {
        return v.get<T>();
      } catch (const nlohmann::json::exception&) {
        wrong_type(key);
      }
    }
  }
  [[noreturn]] void wrong_type(const char* key) const {
    throw ConfigError("layer '" + layer_ + "': attribute '" + key + "' has the wrong type (" +
                      j_.at(key).dump() + ")");
  }
  const std::string& layer_;
  const nlohmann::json& j_;
};

}  // namespace mixtrain
