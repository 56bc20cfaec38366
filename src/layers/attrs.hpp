// Typed access to a layer spec's attributes with errors that name the layer and the attribute.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "mixtrain/error.hpp"

namespace mixtrain {

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
    try {
      return j_.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      throw ConfigError("layer '" + layer_ + "': attribute '" + key + "' has the wrong type (" +
                        j_.at(key).dump() + ")");
    }
  }
  const std::string& layer_;
  const nlohmann::json& j_;
};

}  // namespace mixtrain
