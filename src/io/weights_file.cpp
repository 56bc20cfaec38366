#include "io/weights_file.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixtrain/error.hpp"

namespace mixtrain {

namespace {

constexpr std::string_view kMagicV1 = "MXTWEI01";
constexpr std::string_view kMagicV2 = "MXTWEI02";
constexpr std::string_view kMagicStem = "MXTWEI";
constexpr std::size_t kPrefixSize = 16;  // the magic, then a uint64
constexpr std::string_view kFormat = "mixtrain.weights";
// The most values a file may describe: their byte count must fit a size_t.
constexpr std::uint64_t kMaxValues = std::numeric_limits<std::size_t>::max() / 4;

std::uint64_t read_le64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void append_le64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void append_floats_le(std::string& out, const std::vector<float>& values) {
  const std::size_t start = out.size();
  out.resize(start + values.size() * 4);
  if (values.empty()) return;  // memcpy's pointers must not be null, even for 0 bytes
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out.data() + start, values.data(), values.size() * 4);
  } else {
    for (std::size_t i = 0; i < values.size(); ++i) {
      const auto bits = std::bit_cast<std::uint32_t>(values[i]);
      for (std::size_t b = 0; b < 4; ++b) {
        out[start + 4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
      }
    }
  }
}

std::vector<float> read_floats_le(std::string_view bytes) {
  std::vector<float> out(bytes.size() / 4);
  if (out.empty()) return out;  // memcpy's pointers must not be null, even for 0 bytes
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out.data(), bytes.data(), out.size() * 4);
  } else {
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::uint32_t bits = 0;
      for (std::size_t b = 0; b < 4; ++b) {
        bits |= std::uint32_t{static_cast<unsigned char>(bytes[4 * i + b])} << (8 * b);
      }
      out[i] = std::bit_cast<float>(bits);
    }
  }
  return out;
}

// Elements of one tensor; nullopt when a dimension is negative or the product exceeds max.
std::optional<std::uint64_t> checked_numel(const Shape& shape, std::uint64_t max) {
  std::uint64_t n = 1;
  for (const std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    const auto u = static_cast<std::uint64_t>(d);
    if (u != 0 && n > max / u) return std::nullopt;
    n *= u;
  }
  return n;
}

// ---- the JSON header ------------------------------------------------------------------------

class HeaderReader {
 public:
  explicit HeaderReader(const std::string& file) : file_(file) {}

  WeightsArchitecture read(std::string_view text) const {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::exception& e) {
      throw IoError(fmt::format("{}: the weights header is not valid JSON: {}", file_, e.what()));
    }
    if (!j.is_object()) throw bad("header", "expected a JSON object");
    if (text_of(member(j, "format", "header"), "header.format") != kFormat) {
      throw bad("header.format", fmt::format("expected \"{}\"", kFormat));
    }
    const nlohmann::json& version = member(j, "version", "header");
    if (!version.is_number_integer() || version.get<std::int64_t>() != 2) {
      throw bad("header.version", "expected 2 (the version of the magic MXTWEI02)");
    }
    const nlohmann::json& layers = array_of(member(j, "layers", "header"), "header.layers");
    WeightsArchitecture out;
    out.reserve(layers.size());
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const std::string where = fmt::format("header.layers[{}]", i);
      const nlohmann::json& l = layers[i];
      if (!l.is_object()) throw bad(where, "expected an object");
      WeightsLayer layer;
      layer.name = text_of(member(l, "name", where), where + ".name");
      layer.type = text_of(member(l, "type", where), where + ".type");
      layer.params = tensors(member(l, "params", where), where + ".params");
      layer.state = tensors(member(l, "state", where), where + ".state");
      out.push_back(std::move(layer));
    }
    return out;
  }

 private:
  IoError bad(const std::string& where, const std::string& what) const {
    return IoError(fmt::format("{}: malformed weights header: {}: {}", file_, where, what));
  }

  const nlohmann::json& member(const nlohmann::json& object, const char* key,
                               const std::string& where) const {
    const auto it = object.find(key);
    if (it == object.end()) throw bad(where, fmt::format("missing field '{}'", key));
    return *it;
  }

  std::string text_of(const nlohmann::json& j, const std::string& where) const {
    if (!j.is_string()) throw bad(where, fmt::format("expected a string, found {}", j.type_name()));
    return j.get<std::string>();
  }

  const nlohmann::json& array_of(const nlohmann::json& j, const std::string& where) const {
    if (!j.is_array()) throw bad(where, fmt::format("expected an array, found {}", j.type_name()));
    return j;
  }

  std::vector<WeightsTensor> tensors(const nlohmann::json& j, const std::string& where) const {
    array_of(j, where);
    std::vector<WeightsTensor> out;
    out.reserve(j.size());
    for (std::size_t k = 0; k < j.size(); ++k) {
      const std::string at = fmt::format("{}[{}]", where, k);
      const nlohmann::json& t = j[k];
      if (!t.is_object()) throw bad(at, "expected an object");
      WeightsTensor tensor;
      tensor.name = text_of(member(t, "name", at), at + ".name");
      const nlohmann::json& shape = array_of(member(t, "shape", at), at + ".shape");
      tensor.shape.reserve(shape.size());
      for (std::size_t d = 0; d < shape.size(); ++d) {
        const nlohmann::json& dim = shape[d];
        const bool ok =
            dim.is_number_unsigned()
                ? dim.get<std::uint64_t>() <=
                      static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
                : dim.is_number_integer() && dim.get<std::int64_t>() >= 0;
        if (!ok) {
          throw bad(fmt::format("{}.shape[{}]", at, d),
                    fmt::format("expected a non-negative 64-bit integer, found {}",
                                dim.is_number() ? dim.dump() : std::string(dim.type_name())));
        }
        tensor.shape.push_back(dim.get<std::int64_t>());
      }
      out.push_back(std::move(tensor));
    }
    return out;
  }

  const std::string& file_;
};

nlohmann::json header_json(const WeightsArchitecture& architecture) {
  nlohmann::json layers = nlohmann::json::array();
  const auto tensors = [](const std::vector<WeightsTensor>& ts) {
    nlohmann::json out = nlohmann::json::array();
    for (const WeightsTensor& t : ts) out.push_back({{"name", t.name}, {"shape", t.shape}});
    return out;
  };
  for (const WeightsLayer& l : architecture) {
    layers.push_back({{"name", l.name},
                      {"type", l.type},
                      {"params", tensors(l.params)},
                      {"state", tensors(l.state)}});
  }
  return {{"format", kFormat}, {"version", 2}, {"layers", layers}};
}

// ---- checks against the model ---------------------------------------------------------------

std::string describe(const WeightsLayer& l) {
  return fmt::format("'{}' ({})", l.name, l.type);
}

void compare_tensors(const WeightsLayer& model, const std::vector<WeightsTensor>& expected,
                     const std::vector<WeightsTensor>& found, const char* kind,
                     const std::string& prefix) {
  for (std::size_t k = 0; k < std::max(expected.size(), found.size()); ++k) {
    if (k >= found.size()) {
      throw ShapeError(fmt::format("{}layer {} has {} '{}' {} in the model but not in the file",
                                   prefix, describe(model), kind, expected[k].name,
                                   shape_str(expected[k].shape)));
    }
    if (k >= expected.size()) {
      throw ShapeError(fmt::format("{}layer {} has {} '{}' {} in the file but not in the model",
                                   prefix, describe(model), kind, found[k].name,
                                   shape_str(found[k].shape)));
    }
    if (expected[k].name != found[k].name) {
      throw ShapeError(fmt::format("{}layer {}: {} {} is '{}' in the model but '{}' in the file",
                                   prefix, describe(model), kind, k + 1, expected[k].name,
                                   found[k].name));
    }
    if (expected[k].shape != found[k].shape) {
      throw ShapeError(fmt::format("{}layer {} {} '{}': the model's shape is {}, the file's {}",
                                   prefix, describe(model), kind, expected[k].name,
                                   shape_str(expected[k].shape), shape_str(found[k].shape)));
    }
  }
}

void check_architecture(const WeightsArchitecture& expected, const WeightsArchitecture& found,
                        const std::string& file) {
  const std::string prefix =
      fmt::format("{}: the weights are for another architecture than the model: ", file);
  for (std::size_t i = 0; i < std::max(expected.size(), found.size()); ++i) {
    if (i >= found.size()) {
      throw ShapeError(fmt::format(
          "{}the model's layer {} has parameters or state, but the file describes only {} such "
          "layers",
          prefix, describe(expected[i]), found.size()));
    }
    if (i >= expected.size()) {
      throw ShapeError(fmt::format(
          "{}the file's layer {} has parameters or state, but the model has only {} such layers",
          prefix, describe(found[i]), expected.size()));
    }
    if (expected[i].name != found[i].name || expected[i].type != found[i].type) {
      throw ShapeError(
          fmt::format("{}layer {} with parameters or state is {} in the model but {} in the file",
                      prefix, i + 1, describe(expected[i]), describe(found[i])));
    }
    compare_tensors(expected[i], expected[i].params, found[i].params, "parameter", prefix);
    compare_tensors(expected[i], expected[i].state, found[i].state, "state", prefix);
  }
}

// Where flat value `index` lies in `layout`: "layer 'dense1' parameter 'weight' element 17".
std::string locate(const WeightsArchitecture& layout, std::size_t index) {
  for (const bool params : {true, false}) {
    for (const WeightsLayer& l : layout) {
      for (const WeightsTensor& t : params ? l.params : l.state) {
        const std::uint64_t n = checked_numel(t.shape, kMaxValues).value_or(0);
        if (index < n) {
          return fmt::format("layer '{}' {} '{}' element {}", l.name,
                             params ? "parameter" : "state", t.name, index);
        }
        index -= static_cast<std::size_t>(n);
      }
    }
  }
  return fmt::format("value {}", index);  // not reached when the layout holds every value
}

void check_finite(const std::vector<float>& values, const WeightsArchitecture* layout,
                  const std::string& file, const char* layout_note) {
  const auto it =
      std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
  if (it == values.end()) return;
  const auto index = static_cast<std::size_t>(it - values.begin());
  const char* what = std::isnan(*it) ? "NaN" : (*it > 0 ? "+infinity" : "-infinity");
  const std::string where =
      layout != nullptr ? locate(*layout, index) : fmt::format("value {}", index);
  throw DataError(fmt::format("{}: {} is {}{}: a weights file must hold finite values", file, where,
                              what, layout_note));
}

WeightsFile parse_v1(std::string_view bytes, const std::string& file,
                     const WeightsArchitecture* expected) {
  const std::uint64_t count = read_le64(bytes.data() + 8);
  const std::size_t payload = bytes.size() - kPrefixSize;
  if (payload % 4 != 0 || payload / 4 != count) {
    throw IoError(fmt::format(
        "{}: truncated or oversized: the version-1 header says {} weights ({} bytes expected "
        "after the 16-byte header), the file holds {} bytes after it",
        file, count, count <= kMaxValues ? fmt::format("{}", count * 4) : std::string("too many"),
        payload));
  }
  if (expected != nullptr) {
    const std::size_t want = weights_value_count(*expected, file);
    if (count != want) {
      throw ShapeError(fmt::format(
          "{}: a version-1 weights file of {} values, but the model has {} (parameters and layer "
          "state); version-1 files record no architecture, only the count is checked",
          file, count, want));
    }
  }
  WeightsFile out;
  out.version = 1;
  out.values = read_floats_le(bytes.substr(kPrefixSize));
  check_finite(out.values, expected, file,
               expected != nullptr ? " (located by the model's layout: a version-1 file records "
                                     "no architecture)"
                                   : "");
  return out;
}

WeightsFile parse_v2(std::string_view bytes, const std::string& file,
                     const WeightsArchitecture* expected) {
  const std::uint64_t header_size = read_le64(bytes.data() + 8);
  const std::size_t available = bytes.size() - kPrefixSize;
  if (header_size > available) {
    throw IoError(fmt::format(
        "{}: truncated or corrupt: the header is said to be {} bytes long, but only {} bytes "
        "follow the 16-byte prefix",
        file, header_size, available));
  }
  const auto n = static_cast<std::size_t>(header_size);
  WeightsFile out;
  out.version = 2;
  out.architecture = HeaderReader(file).read(bytes.substr(kPrefixSize, n));
  if (expected != nullptr) check_architecture(*expected, out.architecture, file);
  const std::size_t count = weights_value_count(out.architecture, file);
  const std::size_t payload = available - n;
  if (payload % 4 != 0 || payload / 4 != count) {
    throw IoError(fmt::format(
        "{}: truncated or oversized: the header describes {} values ({} bytes), but {} bytes "
        "follow it",
        file, count, count * 4, payload));
  }
  out.values = read_floats_le(bytes.substr(kPrefixSize + n));
  check_finite(out.values, &out.architecture, file, "");
  return out;
}

}  // namespace

std::size_t weights_value_count(const WeightsArchitecture& architecture, const std::string& file) {
  std::uint64_t total = 0;
  for (const WeightsLayer& l : architecture) {
    for (const bool params : {true, false}) {
      for (const WeightsTensor& t : params ? l.params : l.state) {
        const std::optional<std::uint64_t> n = checked_numel(t.shape, kMaxValues);
        if (!n || *n > kMaxValues - total) {
          throw IoError(fmt::format(
              "{}: layer '{}' {} '{}' of shape {} takes the value count past {}: not a real "
              "model",
              file, l.name, params ? "parameter" : "state", t.name, shape_str(t.shape),
              kMaxValues));
        }
        total += *n;
      }
    }
  }
  return static_cast<std::size_t>(total);
}

std::string serialize_weights_file(const WeightsArchitecture& architecture,
                                   const std::vector<float>& values) {
  const std::size_t count = weights_value_count(architecture, "weights");
  if (values.size() != count) {
    throw ShapeError(
        fmt::format("weights file: {} values for an architecture of {}", values.size(), count));
  }
  std::string header;
  try {
    header = header_json(architecture).dump();
  } catch (const nlohmann::json::exception& e) {  // a layer name that is not valid UTF-8
    throw ConfigError(fmt::format("cannot describe the model in a weights file: {}", e.what()));
  }
  std::string out(kMagicV2);
  append_le64(out, header.size());
  out += header;
  append_floats_le(out, values);
  return out;
}

WeightsFile parse_weights_file(std::string_view bytes, const std::string& name_for_errors,
                               const WeightsArchitecture* expected) {
  const std::string& file = name_for_errors;
  if (!bytes.starts_with(kMagicStem)) throw IoError(file + ": not a mixtrain weights file");
  if (bytes.size() < kPrefixSize) {
    throw IoError(fmt::format(
        "{}: not a mixtrain weights file: truncated to {} bytes, before the end of the 16-byte "
        "prefix",
        file, bytes.size()));
  }
  const std::string_view magic = bytes.substr(0, kMagicV1.size());
  if (magic == kMagicV1) return parse_v1(bytes, file, expected);
  if (magic == kMagicV2) return parse_v2(bytes, file, expected);
  std::string shown;
  for (const char c : magic) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
  throw IoError(fmt::format(
      "{}: a mixtrain weights file of an unknown version (magic '{}'; this build reads MXTWEI01 "
      "and MXTWEI02)",
      file, shown));
}

}  // namespace mixtrain
