// Case-insensitive parsing of enum names with an error that lists the valid spellings.
#pragma once

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mixtrain/error.hpp"

namespace mixtrain {

template <typename E>
E parse_name(std::string_view what, std::string_view text,
             const std::vector<std::pair<std::string_view, E>>& names) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::string valid;
  for (const auto& [name, value] : names) {
    if (lower == name) return value;
    valid += (valid.empty() ? "" : ", ") + std::string(name);
  }
  throw ConfigError("unknown " + std::string(what) + " '" + std::string(text) +
                    "' (valid: " + valid + ")");
}

}  // namespace mixtrain
