// ModelSpec (JSON), Model and compile().
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>

#include "graph/graph.hpp"
#include "io/atomic_file.hpp"
#include "mixtrain/error.hpp"
#include "mixtrain/model.hpp"

namespace mixtrain {

LayerAttrs::LayerAttrs() : json_(std::make_unique<nlohmann::json>(nlohmann::json::object())) {}
LayerAttrs::LayerAttrs(nlohmann::json attrs)
    : json_(std::make_unique<nlohmann::json>(std::move(attrs))) {}
LayerAttrs::LayerAttrs(const LayerAttrs& other)
    : json_(std::make_unique<nlohmann::json>(*other.json_)) {}
// A moved-from LayerAttrs keeps an (empty) object of its own, so json() never sees a null.
LayerAttrs::LayerAttrs(LayerAttrs&& other) noexcept
    : json_(std::make_unique<nlohmann::json>(std::move(*other.json_))) {}
LayerAttrs& LayerAttrs::operator=(const LayerAttrs& other) {
  *json_ = *other.json_;
  return *this;
}
LayerAttrs& LayerAttrs::operator=(LayerAttrs&& other) noexcept {
  *json_ = std::move(*other.json_);
  return *this;
}
LayerAttrs::~LayerAttrs() = default;
const nlohmann::json& LayerAttrs::json() const {
  return *json_;
}
nlohmann::json& LayerAttrs::json() {
  return *json_;
}

nlohmann::json ModelSpec::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerSpec& l : layers) {
    layers_json.push_back(
        {{"name", l.name}, {"type", l.type}, {"inputs", l.inputs}, {"attrs", l.attrs.json()}});
  }
  return {{"format", "mixtrain.model"},
          {"version", 1},
          {"input_shape", input_shape},
          {"output", output},
          {"layers", layers_json}};
}

namespace {

template <typename T>
T field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) throw ConfigError(where + ": missing field '" + key + "'");
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw ConfigError(where + ": field '" + key + "' has the wrong type: " + j.at(key).dump());
  }
}

// A list of integers. nlohmann's get<Shape>() would cast floats (and integers beyond int64 that
// it reads as floats) to int64, which is undefined beyond the range: only integral values are
// taken, floats only when exact (|v| <= 2^53).
Shape shape_field(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json list = field<nlohmann::json>(j, key, where);
  if (!list.is_array()) {
    throw ConfigError(where + ": field '" + key + "' must be a list of integers, got " +
                      list.dump());
  }
  Shape out;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const nlohmann::json& v = list[i];
    const bool is_int = v.is_number_integer() &&
                        (!v.is_number_unsigned() ||
                         v.get<std::uint64_t>() <=
                             static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
    const bool is_exact_float = v.is_number_float() &&
                                v.get<double>() == std::floor(v.get<double>()) &&
                                std::fabs(v.get<double>()) <= 9007199254740992.0;  // 2^53
    if (!is_int && !is_exact_float) {
      throw ConfigError(where + ": " + key + "[" + std::to_string(i) +
                        "] must be an integer in the 64-bit range, got " + v.dump());
    }
    out.push_back(is_int ? v.get<std::int64_t>() : static_cast<std::int64_t>(v.get<double>()));
  }
  return out;
}

}  // namespace

ModelSpec ModelSpec::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ConfigError("model spec: expected a JSON object");
  ModelSpec spec;
  spec.input_shape = shape_field(j, "input_shape", "model spec");
  // (j.value() would throw nlohmann's type_error for a non-string.)
  if (j.contains("output")) spec.output = field<std::string>(j, "output", "model spec");
  const auto layers = field<nlohmann::json>(j, "layers", "model spec");
  if (!layers.is_array()) throw ConfigError("model spec: 'layers' must be an array");
  std::string previous = "input";
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const nlohmann::json& l = layers[i];
    const std::string where = "model spec: layers[" + std::to_string(i) + "]";
    if (!l.is_object()) throw ConfigError(where + ": expected an object");
    LayerSpec ls;
    ls.type = field<std::string>(l, "type", where);
    ls.name = l.contains("name") ? field<std::string>(l, "name", where)
                                 : ls.type + "_" + std::to_string(i + 1);
    // A missing "inputs" chains the layer to the previous one, so hand-written specs stay short.
    ls.inputs = l.contains("inputs") ? field<std::vector<std::string>>(l, "inputs", where)
                                     : std::vector<std::string>{previous};
    if (l.contains("attrs")) {
      ls.attrs = l.at("attrs");
      if (!ls.attrs.json().is_object()) throw ConfigError(where + ": 'attrs' must be an object");
    }
    previous = ls.name;
    spec.layers.push_back(std::move(ls));
  }
  return spec;
}

void ModelSpec::save(const std::filesystem::path& path) const {
  write_file_atomic(path, to_json().dump(2) + "\n");
}

ModelSpec ModelSpec::load(const std::filesystem::path& path) {
  return parse(read_file(path), path.string());
}

ModelSpec ModelSpec::parse(std::string_view text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // parse_error; out_of_range for 1e999
    throw ConfigError(source + ": invalid JSON: " + e.what());
  }
  try {
    return from_json(j);
  } catch (const ConfigError& e) {
    throw ConfigError(source + ": " + e.what());
  }
}

const graph::Graph& Model::graph() const {
  if (!graph_) {
    throw ConfigError(
        "this Model is empty (default-constructed): build one with ModelBuilder::compile() or "
        "mixtrain::compile(spec)");
  }
  return *graph_;
}

const ModelSpec& Model::spec() const {
  return graph().spec;
}
const Shape& Model::input_shape() const {
  return graph().spec.input_shape;
}

Shape Model::output_shape() const {
  const graph::Graph& g = graph();
  Shape s{g.max_batch};
  const Shape& o = g.nodes[static_cast<std::size_t>(g.output)].shape;
  s.insert(s.end(), o.begin(), o.end());
  return s;
}

std::int64_t Model::parameter_count() const {
  return graph().parameter_count;
}

std::string Model::summary() const {
  std::string out =
      fmt::format("{:<20} {:<12} {:<20} {:>12}\n", "layer", "type", "output", "parameters");
  out += fmt::format("{:<20} {:<12} {:<20} {:>12}\n", "input", "", shape_str(input_shape()), "");
  for (const graph::Node& n : graph().nodes) {
    std::int64_t params = 0;
    for (const ParamDecl& p : n.params) params += numel(p.shape);
    Shape s{graph_->max_batch};
    s.insert(s.end(), n.shape.begin(), n.shape.end());
    out += fmt::format("{:<20} {:<12} {:<20} {:>12}\n", n.layer->name(), n.layer->type(),
                       shape_str(s), params);
  }
  out += fmt::format("total parameters: {}\n", parameter_count());
  return out;
}

Model compile(const ModelSpec& spec) {
  Model m;
  m.graph_ = graph::build(spec);
  return m;
}

}  // namespace mixtrain
