#include <nlohmann/json.hpp>

#include "mixtrain/error.hpp"
#include "mixtrain/model.hpp"

namespace mixtrain {

ModelBuilder::ModelBuilder(Shape input_shape) {
  spec_.input_shape = std::move(input_shape);
}

std::string ModelBuilder::unique_name(const std::string& type) {
  std::size_t count = 1;
  for (const LayerSpec& l : spec_.layers) count += l.type == type ? 1 : 0;
  std::string name = type + "_" + std::to_string(count);
  auto taken = [&](const std::string& n) {
    for (const LayerSpec& l : spec_.layers) {
      if (l.name == n) return true;
    }
    return false;
  };
  while (taken(name)) name = type + "_" + std::to_string(++count);
  return name;
}

ModelBuilder& ModelBuilder::append(std::string type, std::string name, nlohmann::json attrs) {
  LayerSpec l;
  l.name = name.empty() ? unique_name(type) : std::move(name);
  l.type = std::move(type);
  l.inputs = {tip_};
  if (!attrs.is_null()) l.attrs = std::move(attrs);
  tip_ = l.name;
  spec_.layers.push_back(std::move(l));
  spec_.output = tip_;
  return *this;
}

ModelBuilder& ModelBuilder::layer(LayerSpec spec) {
  if (spec.name.empty()) spec.name = unique_name(spec.type);
  if (spec.inputs.empty()) spec.inputs = {tip_};
  tip_ = spec.name;
  spec_.layers.push_back(std::move(spec));
  spec_.output = tip_;
  return *this;
}

ModelBuilder& ModelBuilder::dense(std::int64_t units, DenseOptions o) {
  return append("dense", std::move(o.name), {{"units", units}, {"bias", o.bias}});
}
ModelBuilder& ModelBuilder::relu(LayerOptions o) {
  return append("relu", std::move(o.name), {});
}
ModelBuilder& ModelBuilder::leaky_relu(float negative_slope, LayerOptions o) {
  return append("leaky_relu", std::move(o.name), {{"negative_slope", negative_slope}});
}
ModelBuilder& ModelBuilder::elu(float alpha, LayerOptions o) {
  return append("elu", std::move(o.name), {{"alpha", alpha}});
}
ModelBuilder& ModelBuilder::sigmoid(LayerOptions o) {
  return append("sigmoid", std::move(o.name), {});
}
ModelBuilder& ModelBuilder::tanh(LayerOptions o) {
  return append("tanh", std::move(o.name), {});
}
ModelBuilder& ModelBuilder::swish(LayerOptions o) {
  return append("swish", std::move(o.name), {});
}
ModelBuilder& ModelBuilder::gelu(bool approximate, LayerOptions o) {
  return append("gelu", std::move(o.name), {{"approximate", approximate}});
}
ModelBuilder& ModelBuilder::softmax(LayerOptions o) {
  return append("softmax", std::move(o.name), {});
}
ModelBuilder& ModelBuilder::dropout(float rate, DropoutOptions o) {
  return append("dropout", std::move(o.name), {{"rate", rate}});
}
ModelBuilder& ModelBuilder::flatten(LayerOptions o) {
  return append("flatten", std::move(o.name), {});
}
ModelBuilder& ModelBuilder::reshape(Shape sample_shape, LayerOptions o) {
  return append("reshape", std::move(o.name), {{"shape", sample_shape}});
}

namespace {

nlohmann::json size2_json(Size2 v) {
  return nlohmann::json::array({v.h, v.w});
}

nlohmann::json padding_json(const Padding& p) {
  if (!p.mode.empty()) return p.mode;
  return nlohmann::json::array({p.h, p.w});
}

nlohmann::json pool_json(Size2 kernel, const PoolOptions& o) {
  nlohmann::json j{{"kernel", size2_json(kernel)}, {"padding", padding_json(o.padding)}};
  if (o.stride.h != 0 || o.stride.w != 0) j["stride"] = size2_json(o.stride);  // else the kernel
  return j;
}

}  // namespace

ModelBuilder& ModelBuilder::conv2d(std::int64_t filters, Size2 kernel, Conv2dOptions o) {
  return append("conv2d", std::move(o.name),
                {{"filters", filters},
                 {"kernel", size2_json(kernel)},
                 {"stride", size2_json(o.stride)},
                 {"padding", padding_json(o.padding)},
                 {"dilation", size2_json(o.dilation)},
                 {"groups", o.groups},
                 {"bias", o.bias}});
}
ModelBuilder& ModelBuilder::batch_norm(BatchNormOptions o) {
  return append("batch_norm", std::move(o.name),
                {{"momentum", o.momentum}, {"epsilon", o.epsilon}});
}

ModelBuilder& ModelBuilder::max_pool2d(Size2 kernel, PoolOptions o) {
  return append("max_pool2d", std::move(o.name), pool_json(kernel, o));
}
ModelBuilder& ModelBuilder::avg_pool2d(Size2 kernel, PoolOptions o) {
  return append("avg_pool2d", std::move(o.name), pool_json(kernel, o));
}
ModelBuilder& ModelBuilder::global_avg_pool(LayerOptions o) {
  return append("global_avg_pool", std::move(o.name), {});
}

ModelBuilder& ModelBuilder::residual(const std::function<void(ModelBuilder&)>& body,
                                     const std::function<void(ModelBuilder&)>& shortcut,
                                     LayerOptions o) {
  const std::string start = tip_;
  if (body) body(*this);
  const std::string body_end = tip_;
  tip_ = start;
  if (shortcut) shortcut(*this);
  const std::string shortcut_end = tip_;
  LayerSpec add;
  add.name = o.name.empty() ? unique_name("add") : std::move(o.name);
  add.type = "add";
  add.inputs = {body_end, shortcut_end};
  return layer(std::move(add));
}

Model ModelBuilder::compile() const {
  return mixtrain::compile(spec_);
}

}  // namespace mixtrain
