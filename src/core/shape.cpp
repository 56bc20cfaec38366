#include "mixtrain/shape.hpp"

#include "mixtrain/error.hpp"

namespace mixtrain {

std::int64_t numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      throw ShapeError("shape " + shape_str(shape) + " has more elements than 64 bits can count");
    }
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

}  // namespace mixtrain
