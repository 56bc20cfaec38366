// The message of the mixtrain::Error that f throws, or "" when it throws none.
#pragma once

#include <functional>
#include <string>

#include "mixtrain/error.hpp"

namespace mixtrain {

inline std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace mixtrain
