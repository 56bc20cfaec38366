#include "train/plan.hpp"

#include <algorithm>

namespace mixtrain {

namespace {

struct Layout {
  std::size_t bytes = 0;
  std::size_t take(std::size_t n) {
    const std::size_t offset = bytes;
    bytes += (n + 255) / 256 * 256;
    return offset;
  }
};

}  // namespace

Plan::Plan(const graph::Graph& g, Backend& be, const PlanOptions& o)
    : graph(g), backend(be), options(o) {
  const DType ct = o.policy.compute;
  const std::size_t csize = dtype_size(ct);
  const auto b = static_cast<std::size_t>(g.max_batch);

  std::vector<std::vector<std::int64_t>> offsets(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    for (const ParamDecl& p : g.nodes[i].params) {
      offsets[i].push_back(param_count);
      if (p.keep_fp32) fp32_params_.push_back(param_count);
      param_count += numel(p.shape);
    }
  }
  const auto pc = static_cast<std::size_t>(param_count);

  Layout l;
  const std::size_t off_master = l.take(pc * 4);
  const std::size_t off_grads = l.take(pc * 4);
  const std::size_t off_working = o.policy.mixed() ? l.take(pc * csize) : 0;
  std::size_t off_state[kMaxOptimizerSlots] = {};
  for (int s = 0; s < o.optimizer_slots; ++s) off_state[s] = l.take(pc * 4);
  std::vector<std::size_t> off_act(g.nodes.size()), off_grad(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    const std::size_t n = b * static_cast<std::size_t>(numel(g.nodes[i].shape)) * csize;
    off_act[i] = l.take(n);
    off_grad[i] = l.take(n);
  }
  const std::size_t sample = static_cast<std::size_t>(numel(g.sample_shape));
  const std::size_t off_input = l.take(b * sample * csize);
  const std::size_t off_staging = l.take(b * sample * 4);
  const std::size_t off_output = l.take(
      b * static_cast<std::size_t>(numel(g.nodes[static_cast<std::size_t>(g.output)].shape)) * 4);
  const std::size_t off_labels = l.take(b * static_cast<std::size_t>(o.label_count) * 4 + 4);
  const std::size_t off_targets = l.take(b * static_cast<std::size_t>(o.target_count) * 4 + 4);
  const std::size_t off_control = l.take(sizeof(StepControl));
  const std::size_t off_history =
      l.take(sizeof(StepRecord) * static_cast<std::size_t>(o.history_size));
  const std::size_t off_eval = l.take(4);
  // Layer buffers: persistent ones (fp32) contiguously, then the per-step scratch.
  for (const auto& node : g.nodes) {
    for (const BufferDecl& d : node.buffers) {
      if (d.persistent) persistent_count += numel(d.shape);
    }
  }
  const std::size_t off_persistent = l.take(static_cast<std::size_t>(persistent_count) * 4);
  std::vector<std::vector<std::size_t>> off_buffers(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    for (const BufferDecl& d : g.nodes[i].buffers) {
      off_buffers[i].push_back(
          d.persistent ? 0
                       : l.take(static_cast<std::size_t>(numel(d.shape)) * dtype_size(d.dtype)));
    }
  }

  arena_bytes = l.bytes;
  arena_ = backend.alloc(arena_bytes);
  char* base = static_cast<char*>(arena_);
  master = reinterpret_cast<float*>(base + off_master);
  grads = reinterpret_cast<float*>(base + off_grads);
  if (o.policy.mixed()) working = Buf{base + off_working, ct};
  for (int s = 0; s < o.optimizer_slots; ++s)
    state[s] = reinterpret_cast<float*>(base + off_state[s]);
  nodes.resize(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    nodes[i].activation = Buf{base + off_act[i], ct};
    nodes[i].gradient = Buf{base + off_grad[i], ct};
    nodes[i].param_offsets = offsets[i];
  }
  input = Buf{base + off_input, ct};
  input_staging = reinterpret_cast<float*>(base + off_staging);
  output_staging = reinterpret_cast<float*>(base + off_output);
  labels = reinterpret_cast<std::int32_t*>(base + off_labels);
  targets = reinterpret_cast<float*>(base + off_targets);
  control = reinterpret_cast<StepControl*>(base + off_control);
  history = reinterpret_cast<StepRecord*>(base + off_history);
  eval_loss = reinterpret_cast<float*>(base + off_eval);
  persistent = reinterpret_cast<float*>(base + off_persistent);
  std::int64_t next_persistent = 0;
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    const auto& decls = g.nodes[i].buffers;
    for (std::size_t k = 0; k < decls.size(); ++k) {
      if (decls[k].persistent) {
        nodes[i].buffers.push_back(Buf{persistent + next_persistent, DType::F32});
        next_persistent += numel(decls[k].shape);
      } else {
        nodes[i].buffers.push_back(Buf{base + off_buffers[i][k], decls[k].dtype});
      }
    }
  }
}

Plan::~Plan() {
  backend.free(arena_);
}

CBuf Plan::param(std::int64_t offset) const {
  if (working && !std::binary_search(fp32_params_.begin(), fp32_params_.end(), offset)) {
    return CBuf(static_cast<const char*>(working.ptr) + offset * dtype_size(working.dtype),
                working.dtype);
  }
  return CBuf(master + offset, DType::F32);
}

Buf Plan::activation_of(int index) const {
  return index == graph::kModelInput ? input : nodes[static_cast<std::size_t>(index)].activation;
}

}  // namespace mixtrain
