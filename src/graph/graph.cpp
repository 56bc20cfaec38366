#include "graph/graph.hpp"

#include <map>
#include <set>

#include "graph/fuse.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::graph {

namespace {

std::uint64_t name_salt(const std::string& name) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a: stable across runs and platforms
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

// A ShapeError's message, prefixed with the layer unless it already names it (numel's overflow
// errors do not know the layer).
std::string in_layer(const ShapeError& e, const LayerSpec& ls) {
  const std::string prefix = "layer '" + ls.name + "'";
  const std::string what = e.what();
  return what.starts_with(prefix) ? what : prefix + " (" + ls.type + "): " + what;
}

// Throws ShapeError unless batch * numel(shape) is at most kMaxTensorElements.
void check_tensor_size(const std::string& what, const Shape& shape, std::int64_t batch) {
  std::int64_t n = 0;
  try {
    n = numel(shape);
  } catch (const ShapeError&) {
    throw ShapeError(what + " " + shape_str(shape) + " has more elements than 64 bits can count");
  }
  if (n > kMaxTensorElements / batch) {
    throw ShapeError(what + " " + shape_str(shape) +
                     (batch > 1 ? " for a batch of " + std::to_string(batch) : std::string()) +
                     " holds more than 2^40 elements, the most a model tensor may hold");
  }
}

}  // namespace

std::shared_ptr<Graph> build(const ModelSpec& spec) {
  auto g = std::make_shared<Graph>();
  g->spec = spec;
  if (spec.input_shape.size() < 2) {
    throw ShapeError("model input shape " + shape_str(spec.input_shape) +
                     " needs a batch dimension and at least one feature dimension");
  }
  for (auto d : spec.input_shape) {
    if (d <= 0) {
      throw ShapeError("model input shape " + shape_str(spec.input_shape) +
                       " has a non-positive dimension");
    }
  }
  check_tensor_size("model input shape", spec.input_shape, 1);
  if (spec.layers.empty()) throw ConfigError("the model has no layers");
  g->max_batch = spec.input_shape[0];
  g->sample_shape.assign(spec.input_shape.begin() + 1, spec.input_shape.end());

  std::map<std::string, int> index;
  for (const LayerSpec& ls : spec.layers) {
    if (ls.name.empty()) throw ConfigError("a layer of type '" + ls.type + "' has no name");
    if (ls.name == "input" || index.count(ls.name)) {
      throw ConfigError("layer name '" + ls.name + "' is used twice (or is the reserved 'input')");
    }
    Node node;
    node.layer = make_layer(ls.name, ls.type, ls.attrs.json(), name_salt(ls.name));
    if (ls.inputs.size() != node.layer->input_count()) {
      throw ConfigError("layer '" + ls.name + "' (" + ls.type + ") takes " +
                        std::to_string(node.layer->input_count()) + " input(s), got " +
                        std::to_string(ls.inputs.size()));
    }
    std::vector<Shape> in_shapes;
    for (const std::string& in : ls.inputs) {
      int src = kModelInput;
      if (in != "input") {
        const auto it = index.find(in);
        if (it == index.end()) {
          throw ConfigError("layer '" + ls.name + "' reads '" + in +
                            "', which is not an earlier layer");
        }
        src = it->second;
      }
      node.inputs.push_back(src);
      in_shapes.push_back(g->shape_of(src));
    }
    try {
      node.shape = node.layer->output_shape(in_shapes);
      check_tensor_size("output", node.shape, g->max_batch);
    } catch (const ShapeError& e) {
      if (ls.inputs.size() < 2) throw ShapeError(in_layer(e, ls));
      std::string paths;
      for (std::size_t i = 0; i < ls.inputs.size(); ++i) {
        paths += (i ? ", " : "") + ("'" + ls.inputs[i] + "' " + shape_str(in_shapes[i]));
      }
      throw ShapeError(in_layer(e, ls) + " (inputs: " + paths + ")");
    }
    try {
      node.params = node.layer->params(in_shapes);
      node.buffers = node.layer->buffers(in_shapes, g->max_batch);
      for (const ParamDecl& p : node.params) {
        check_tensor_size("parameter '" + p.name + "'", p.shape, 1);
        g->parameter_count += numel(p.shape);  // each, and the sum so far, at most 2^40
        if (g->parameter_count > kMaxTensorElements) {
          throw ShapeError("the model has more than 2^40 parameters");
        }
      }
      for (const BufferDecl& b : node.buffers) {
        check_tensor_size("buffer '" + b.name + "'", b.shape, 1);
      }
    } catch (const ShapeError& e) {
      throw ShapeError(in_layer(e, ls));
    }
    node.layer->bind_shapes(std::move(in_shapes), node.shape);
    node.spec_layer = g->nodes.size();  // one node per spec layer until fusion
    index[ls.name] = static_cast<int>(g->nodes.size());
    g->nodes.push_back(std::move(node));
  }
  const std::string out = spec.output.empty() ? spec.layers.back().name : spec.output;
  const auto it = index.find(out);
  if (it == index.end()) throw ConfigError("model output '" + out + "' is not a layer");
  g->output = it->second;
  if (fusion_enabled()) fuse(*g);
  return g;
}

}  // namespace mixtrain::graph
