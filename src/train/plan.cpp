#include "train/plan.hpp"

#include <algorithm>
#include <cstdint>

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

// One activation gradient: its bytes and the backward steps it lives through.
struct GradientLife {
  std::size_t bytes = 0;
  std::int64_t first = 0, last = 0;  // inclusive, in backward order (-1: the loss, before all)
  std::size_t offset = 0;
};

// Node i's activation gradient is written first by the backward of its last reader (or by the
// loss, for the model output and the node the loss may read instead: the output's input) and
// read last by node i's own backward. Backward visits nodes from the last to the first, so node
// k runs at backward step count - 1 - k. Gradients whose lifetimes do not overlap share memory:
// the largest are placed first, each at the lowest offset clear of every placed gradient it
// overlaps in time (first fit). Returns the bytes of the shared region.
std::size_t place_gradients(const graph::Graph& g, std::size_t batch, std::size_t elem,
                            std::vector<GradientLife>& lives) {
  const auto count = static_cast<std::int64_t>(g.nodes.size());
  lives.assign(g.nodes.size(), {});
  for (std::int64_t i = 0; i < count; ++i) {
    GradientLife& life = lives[static_cast<std::size_t>(i)];
    const std::size_t bytes =
        batch * static_cast<std::size_t>(numel(g.nodes[static_cast<std::size_t>(i)].shape)) * elem;
    life.bytes = (bytes + 255) / 256 * 256;
    life.last = count - 1 - i;
    life.first = life.last;
  }
  for (std::int64_t j = 0; j < count; ++j) {
    for (int src : g.nodes[static_cast<std::size_t>(j)].inputs) {
      if (src == graph::kModelInput) continue;
      GradientLife& life = lives[static_cast<std::size_t>(src)];
      life.first = std::min(life.first, count - 1 - j);
    }
  }
  const auto output = static_cast<std::size_t>(g.output);
  lives[output].first = -1;
  for (int src : g.nodes[output].inputs) {
    if (src != graph::kModelInput) lives[static_cast<std::size_t>(src)].first = -1;
  }

  std::vector<std::size_t> order(lives.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return lives[a].bytes > lives[b].bytes; });
  std::vector<std::size_t> placed;
  std::size_t total = 0;
  for (std::size_t i : order) {
    GradientLife& life = lives[i];
    // Placed gradients alive at the same time, by offset.
    std::vector<std::size_t> clash;
    for (std::size_t k : placed) {
      if (lives[k].first <= life.last && life.first <= lives[k].last) clash.push_back(k);
    }
    std::sort(clash.begin(), clash.end(),
              [&](std::size_t a, std::size_t b) { return lives[a].offset < lives[b].offset; });
    std::size_t offset = 0;
    for (std::size_t k : clash) {
      if (offset + life.bytes <= lives[k].offset) break;
      offset = std::max(offset, lives[k].offset + lives[k].bytes);
    }
    life.offset = offset;
    total = std::max(total, offset + life.bytes);
    placed.push_back(i);
  }
  return total;
}

}  // namespace

Plan::Plan(const graph::Graph& g, Backend& be, const PlanOptions& o)
    : graph(g), backend(be), options(o) {
  const DType ct = o.policy.compute;
  const std::size_t csize = dtype_size(ct);
  const auto b = static_cast<std::size_t>(g.max_batch);

  // Parameters whose gradient is kept in the compute dtype come first, padded to a multiple of
  // kLowpAlign elements, then the others: the same order in every precision, so the arena (and the
  // optimizer's view of it) does not depend on it. weights() restores the declaration order.
  std::vector<std::vector<std::int64_t>> offsets(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) offsets[i].resize(g.nodes[i].params.size());
  for (const bool lowp : {true, false}) {
    for (std::size_t i = 0; i < g.nodes.size(); ++i) {
      for (std::size_t k = 0; k < g.nodes[i].params.size(); ++k) {
        const ParamDecl& p = g.nodes[i].params[k];
        if (p.grad_in_compute_dtype != lowp) continue;
        offsets[i][k] = param_count;
        if (p.keep_fp32) fp32_params_.push_back(param_count);
        param_count += numel(p.shape);
      }
    }
    if (lowp) {
      lowp_count = (param_count + kLowpAlign - 1) / kLowpAlign * kLowpAlign;
      param_count = lowp_count;
    }
  }
  std::sort(fp32_params_.begin(), fp32_params_.end());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    for (std::size_t k = 0; k < g.nodes[i].params.size(); ++k) {
      param_spans.emplace_back(offsets[i][k], numel(g.nodes[i].params[k].shape));
    }
  }
  const auto pc = static_cast<std::size_t>(param_count);
  // The compute dtype is f32 outside mixed precision: the low-precision range is then fp32 too.
  const auto lowp_bytes = static_cast<std::size_t>(lowp_count) * csize;

  Layout l;
  const std::size_t off_master = l.take(pc * 4);
  const std::size_t off_grads_lowp = l.take(lowp_bytes);
  const std::size_t off_grads = l.take((pc - static_cast<std::size_t>(lowp_count)) * 4);
  const std::size_t off_working = o.policy.mixed() ? l.take(pc * csize) : 0;
  std::size_t off_state[kMaxOptimizerSlots] = {};
  for (int s = 0; s < o.optimizer_slots; ++s) off_state[s] = l.take(pc * 4);
  std::vector<std::size_t> off_act(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    off_act[i] = l.take(b * static_cast<std::size_t>(numel(g.nodes[i].shape)) * csize);
  }
  std::vector<GradientLife> lives;
  const std::size_t off_grads_region = l.take(place_gradients(g, b, csize, lives));
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
  grads_lowp = Buf{base + off_grads_lowp, ct};
  grads_f32 = reinterpret_cast<float*>(base + off_grads);
  if (o.policy.mixed()) working = Buf{base + off_working, ct};
  for (int s = 0; s < o.optimizer_slots; ++s)
    state[s] = reinterpret_cast<float*>(base + off_state[s]);
  nodes.resize(g.nodes.size());
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    nodes[i].activation = Buf{base + off_act[i], ct};
    nodes[i].gradient = Buf{base + off_grads_region + lives[i].offset, ct};
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

Buf Plan::grad_of(std::int64_t offset) const {
  if (offset < lowp_count) {
    return Buf{static_cast<char*>(grads_lowp.ptr) + offset * dtype_size(grads_lowp.dtype),
               grads_lowp.dtype};
  }
  return Buf{grads_f32 + (offset - lowp_count), DType::F32};
}

Buf Plan::activation_of(int index) const {
  return index == graph::kModelInput ? input : nodes[static_cast<std::size_t>(index)].activation;
}

}  // namespace mixtrain
