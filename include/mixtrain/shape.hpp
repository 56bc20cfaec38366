// Tensor shapes: dimension sizes, outermost first. The first dimension of an activation is the
// batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mixtrain {

using Shape = std::vector<std::int64_t>;

// Number of elements (1 for a scalar shape {}). Throws ShapeError when the product overflows
// a 64-bit integer.
std::int64_t numel(const Shape& shape);
// "[64, 784]"
std::string shape_str(const Shape& shape);

}  // namespace mixtrain
