#include "layers/layer.hpp"

#include "mixtrain/error.hpp"

namespace mixtrain {

void Layer::shape_error(const std::string& what) const {
  throw ShapeError("layer '" + name_ + "' (" + type() + "): " + what);
}

void Layer::config_error(const std::string& what) const {
  throw ConfigError("layer '" + name_ + "' (" + type() + "): " + what);
}

}  // namespace mixtrain
