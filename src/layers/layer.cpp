#include "layers/layer.hpp"

#include "mixtrain/error.hpp"

namespace mixtrain {

void Layer::shape_error(const std::string& what) const {
  throw ShapeError("layer '" + name_ + "' (" + type() + "): " + what);
}

}  // namespace mixtrain
