// Layer types by name: the one place that maps a spec's "type" to a layer class.
#include <functional>
#include <map>

#include "layers/attrs.hpp"
#include "layers/batch_norm.hpp"
#include "layers/conv2d.hpp"
#include "layers/dense.hpp"
#include "layers/layer.hpp"
#include "layers/pooling.hpp"
#include "layers/simple_layers.hpp"
#include "layers/spatial.hpp"

namespace mixtrain {

namespace {

using Factory =
    std::function<std::unique_ptr<Layer>(const std::string&, const Attrs&, std::uint64_t)>;

Factory activation(const char* type, Activation act, const char* alpha_key, float alpha) {
  return [=](const std::string& name, const Attrs& at, std::uint64_t salt) {
    const float a = alpha_key != nullptr ? at.get<float>(alpha_key, alpha) : alpha;
    return std::make_unique<ActivationLayer>(name, salt, type, act, a);
  };
}

nlohmann::json raw(const Attrs& at, const char* key) {
  return at.get<nlohmann::json>(key, nlohmann::json());
}

Factory pool2d(Pool2d::Kind kind) {
  return [=](const std::string& name, const Attrs& at, std::uint64_t salt) {
    const nlohmann::json kernel = raw(at, "kernel");
    if (kernel.is_null()) throw ConfigError("layer '" + name + "': missing attribute 'kernel'");
    return std::make_unique<Pool2d>(name, salt, kind, read_hw(name, kernel, "kernel", {}),
                                    read_hw(name, raw(at, "stride"), "stride", {0, 0}),
                                    read_padding(name, raw(at, "padding")));
  };
}

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> table = {
      {"dense",
       [](const std::string& name, const Attrs& at, std::uint64_t salt) {
         return std::make_unique<Dense>(name, salt, at.require<std::int64_t>("units"),
                                        at.get<bool>("bias", true));
       }},
      {"relu", activation("relu", Activation::ReLU, nullptr, 0.0f)},
      {"leaky_relu", activation("leaky_relu", Activation::LeakyReLU, "negative_slope", 0.01f)},
      {"elu", activation("elu", Activation::ELU, "alpha", 1.0f)},
      {"sigmoid", activation("sigmoid", Activation::Sigmoid, nullptr, 0.0f)},
      {"tanh", activation("tanh", Activation::Tanh, nullptr, 0.0f)},
      {"swish", activation("swish", Activation::Swish, nullptr, 0.0f)},
      {"gelu",
       [](const std::string& name, const Attrs& at, std::uint64_t salt) {
         const bool approximate = at.get<bool>("approximate", false);
         return std::make_unique<ActivationLayer>(
             name, salt, "gelu", approximate ? Activation::GELUTanh : Activation::GELU, 0.0f);
       }},
      {"softmax", [](const std::string& name, const Attrs&,
                     std::uint64_t salt) { return std::make_unique<Softmax>(name, salt); }},
      {"dropout",
       [](const std::string& name, const Attrs& at, std::uint64_t salt) {
         return std::make_unique<Dropout>(name, salt, at.require<float>("rate"));
       }},
      {"flatten",
       [](const std::string& name, const Attrs&, std::uint64_t salt) {
         return std::make_unique<Reshape>(name, salt, "flatten", Shape{});
       }},
      {"reshape",
       [](const std::string& name, const Attrs& at, std::uint64_t salt) {
         return std::make_unique<Reshape>(name, salt, "reshape", at.require<Shape>("shape"));
       }},
      {"add", [](const std::string& name, const Attrs&,
                 std::uint64_t salt) { return std::make_unique<Add>(name, salt); }},
      {"conv2d",
       [](const std::string& name, const Attrs& at, std::uint64_t salt) {
         Conv2dConfig c;
         c.filters = at.require<std::int64_t>("filters");
         const nlohmann::json kernel = raw(at, "kernel");
         if (kernel.is_null())
           throw ConfigError("layer '" + name + "': missing attribute 'kernel'");
         c.kernel = read_hw(name, kernel, "kernel", {});
         c.stride = read_hw(name, raw(at, "stride"), "stride", {1, 1});
         c.padding = read_padding(name, raw(at, "padding"));
         c.dilation = read_hw(name, raw(at, "dilation"), "dilation", {1, 1});
         c.groups = at.get<std::int64_t>("groups", 1);
         c.bias = at.get<bool>("bias", true);
         return std::make_unique<Conv2d>(name, salt, c);
       }},
      {"batch_norm",
       [](const std::string& name, const Attrs& at, std::uint64_t salt) {
         return std::make_unique<BatchNorm>(name, salt, at.get<float>("momentum", 0.1f),
                                            at.get<float>("epsilon", 1e-5f));
       }},
      {"max_pool2d", pool2d(Pool2d::Kind::Max)},
      {"avg_pool2d", pool2d(Pool2d::Kind::Average)},
      {"global_avg_pool",
       [](const std::string& name, const Attrs&, std::uint64_t salt) {
         return std::make_unique<GlobalAvgPool>(name, salt);
       }},
  };
  return table;
}

}  // namespace

std::unique_ptr<Layer> make_layer(const std::string& name, const std::string& type,
                                  const nlohmann::json& attrs, std::uint64_t salt) {
  const auto& table = factories();
  const auto it = table.find(type);
  if (it == table.end()) {
    std::string known;
    for (const auto& [k, v] : table) known += (known.empty() ? "" : ", ") + k;
    throw ConfigError("layer '" + name + "': unknown type '" + type + "' (known: " + known + ")");
  }
  return it->second(name, Attrs(name, attrs), salt);
}

}  // namespace mixtrain
