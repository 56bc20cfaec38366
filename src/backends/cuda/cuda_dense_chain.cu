// The whole training step of a small dense chain (ops/backend.hpp: DenseChainStep) as one
// cooperative launch: forward, loss, backward, gradient check, optimizer and finish run as phases
// of one kernel separated by grid-wide barriers, in the manner of tiny-cuda-nn's fully fused
// MLPs. A step of small_mlp op by op is ~16 launches of 2-6 us, each mostly launch latency and
// ramp; here it is one launch and 2 h + 1 barriers for h hidden layers (5 for small_mlp).
//
// Products run on tensor cores through WMMA (16x16x16 tiles of FP16/BF16 operands, fp32
// accumulators), which is why only FP16 and BF16 chains are fused. Each phase splits its work
// into jobs the blocks take in turn:
// - an output tile of x W^T (forward) or dz W (input gradient): 16 x 16 values, the reduction
//   split among the block's eight warps and summed in warp order in shared memory, then the
//   element-wise tail (bias and ReLU and dropout; or dropout's and ReLU's backward);
// - a weight-gradient block dz^T x: 16 rows of dW by eight 16-column tiles, one per warp (the
//   reduction runs over the batch, at most 128 rows); the block of the first column group also
//   sums the 16 bias gradients.
// The head (at most 32 classes) runs scalar: a block per row for the logits, the cross-entropy
// and the row of the input gradient below it, a block per class for its weight gradient (rows
// dealt to the warps). The gradient check needs no pass of its
// own: every thread adds the squares of the gradients it stores, blocks store their partials,
// and after the last barrier every block adds them in block order (the same value everywhere).
// The optimizer update is optimizer_range of cuda_optimizer.cuh and the finish runs in the last
// block to count in, as in the op-by-op pass.
#include <cooperative_groups.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"
#include "backends/cuda/cuda_optimizer.cuh"
#include "ops/activation_math.hpp"
#include "ops/counter_rng.hpp"
#include "train/scaler_math.hpp"

namespace mixtrain::cuda {

namespace {

namespace cg = cooperative_groups;
namespace wmma = nvcuda::wmma;

constexpr int kWarps = kThreads / kWarp;  // 8
constexpr int kTile = 16;                 // WMMA's m = n = k
constexpr int kTileElems = kTile * kTile;
constexpr int kMaxLayers = 8;
constexpr int kMaxRows = kWarps * kTile;  // a weight-gradient tile's reduction: 8 chunks at most
constexpr int kMaxHeadOut = kWarp;        // one class per lane
// Packs each thread of the optimizer phase loads before it updates any (cuda_optimizer.cuh).
constexpr int kOptimizerUnroll = 2;

template <typename T>
struct ChainLayer {
  int in, out;
  int relu;
  const T* w;
  const T* b;
  T* gw;
  float* gb;
  T* y;
  T* dropped;  // null without dropout
  float rate;
  float keep_scale;
  std::uint64_t salt;
  T* dz;
};

template <typename T>
struct ChainArgs {
  int rows;
  int layers;
  const T* x;
  const std::int32_t* labels;
  ChainLayer<T> l[kMaxLayers];
  double* row_loss;      // [rows]
  double* norm_partial;  // [gridDim.x]
  int* bad_partial;      // [gridDim.x]
  OptimizerArgs opt;
  T* working;
  StepControl* control;
  ScalerParams scaler;
  StepRecord* history;
  unsigned int* counter;
};

// The values a layer reads: the model input, or the previous layer's output after its dropout.
template <typename T>
__device__ __forceinline__ const T* layer_input(const ChainArgs<T>& a, int l) {
  if (l == 0) return a.x;
  const ChainLayer<T>& p = a.l[l - 1];
  return p.dropped != nullptr ? p.dropped : p.y;
}

// The gradient check of what a thread stores: as unscale_pack, the unscaled value's finiteness
// and its square.
struct NormAcc {
  double sum = 0.0;
  bool bad = false;
  __device__ __forceinline__ void add(float stored, float inv) {
    const float g = stored * inv;
    bad |= !isfinite(g);
    sum += static_cast<double>(g * g);
  }
};

// Dropout's decision for element i, as DropoutOp draws it.
__device__ __forceinline__ bool keeps(std::uint64_t key, float rate, std::int64_t i) {
  return counter_uniform_keyed(key, static_cast<std::uint64_t>(i)) >= rate;
}

// red[w] = warp w's share of the 16 x 16 product tile A[r0.., :] B[:, n0..]: A row-major with
// leading dimension lda (pointer at row r0), B as Layout with leading dimension ldb (pointer at
// column n0), the k chunks of 16 dealt to the warps in turn.
template <typename T, typename LayoutB>
__device__ __forceinline__ void tile_product(const T* A, int lda, const T* B, int ldb, int chunks,
                                             float* red) {
  const int w = static_cast<int>(threadIdx.x) / kWarp;
  wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, LayoutB> fb;
#pragma unroll 4
  for (int kc = w; kc < chunks; kc += kWarps) {
    wmma::load_matrix_sync(fa, A + kc * kTile, static_cast<unsigned>(lda));
    const T* bt = std::is_same_v<LayoutB, wmma::row_major>
                      ? B + static_cast<std::int64_t>(kc) * kTile * ldb
                      : B + kc * kTile;
    wmma::load_matrix_sync(fb, bt, static_cast<unsigned>(ldb));
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(red + w * kTileElems, acc, kTile, wmma::mem_row_major);
}

// Thread t's element of the tile: the warps' shares added in warp order.
__device__ __forceinline__ float tile_sum(const float* red) {
  float v = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) v += red[w * kTileElems + threadIdx.x];
  return v;
}

// Forward job: tile (rt, ct) of layer l's output, then its bias, ReLU and dropout.
template <typename T>
__device__ void forward_tile(const ChainArgs<T>& a, int l, int rt, int ct, std::uint64_t key,
                             float* red) {
  const ChainLayer<T>& L = a.l[l];
  const T* in = layer_input(a, l);
  const int r0 = rt * kTile, n0 = ct * kTile;
  const int r = r0 + static_cast<int>(threadIdx.x) / kTile;
  const int c = n0 + static_cast<int>(threadIdx.x) % kTile;
  const float bias = L.b != nullptr ? Dev<T>::load(L.b[c]) : 0.0f;  // loaded while the product runs
  tile_product<T, wmma::col_major>(in + static_cast<std::int64_t>(r0) * L.in, L.in,
                                   L.w + static_cast<std::int64_t>(n0) * L.in, L.in, L.in / kTile,
                                   red);
  __syncthreads();
  float z = tile_sum(red);
  if (L.b != nullptr) z += bias;
  const float v = L.relu ? activation_value(Activation::ReLU, 0.0f, z) : z;
  const std::int64_t i = static_cast<std::int64_t>(r) * L.out + c;
  const T y = Dev<T>::store(v);
  L.y[i] = y;
  if (L.dropped != nullptr) {
    L.dropped[i] = Dev<T>::store(keeps(key, L.rate, i) ? Dev<T>::load(y) * L.keep_scale : 0.0f);
  }
  __syncthreads();  // red is reused by the next job
}

// The head's forward pass, the loss and the start of the backward pass of row r, by one block:
// logits (rounded as the GEMM stores them; every thread takes a share of the products, the
// warps' sums added in warp order), the cross-entropy of cuda_loss.cu's kernel in warp 0,
// d(loss * scale) / d logits, and the row of the previous layer's pre-activation gradient
// (row-local products, so no phase of their own), through that layer's dropout and ReLU
// backward, rounded where the op-by-op step stores. One warp per row ran ~3x longer: a few
// hundred dependent instructions per warp, on 8 SMs.
template <typename T>
__device__ void head_row(const ChainArgs<T>& a, int r, std::uint64_t prev_key, float* red) {
  const int h = a.layers - 1;
  const ChainLayer<T>& L = a.l[h];
  const ChainLayer<T>& P = a.l[h - 1];
  const T* x = layer_input(a, h) + static_cast<std::int64_t>(r) * L.in;
  const int t = static_cast<int>(threadIdx.x);
  const int w = t / kWarp, lane = t % kWarp;
  float part[kMaxHeadOut];
#pragma unroll
  for (int c = 0; c < kMaxHeadOut; ++c) part[c] = 0.0f;
  for (int k = t; k < L.in; k += kThreads) {
    const float xv = Dev<T>::load(x[k]);
#pragma unroll
    for (int c = 0; c < kMaxHeadOut; ++c) {
      if (c < L.out) {
        part[c] = fmaf(xv, Dev<T>::load(L.w[static_cast<std::int64_t>(c) * L.in + k]), part[c]);
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kMaxHeadOut; ++c) {
    if (c < L.out) {
      const float s = warp_sum(part[c]);
      if (lane == 0) red[w * kMaxHeadOut + c] = s;
    }
  }
  __syncthreads();
  float* dlogits = red + kWarps * kMaxHeadOut;
  if (w == 0) {
    const bool mine = lane < L.out;
    const std::int32_t label = a.labels[r];
    const float gscale = a.control->loss_scale / static_cast<float>(a.rows);
    float logit = -INFINITY;
    if (mine) {
      float z = L.b != nullptr ? Dev<T>::load(L.b[lane]) : 0.0f;
      float sum = 0.0f;
      for (int v = 0; v < kWarps; ++v) sum += red[v * kMaxHeadOut + lane];
      z += sum;
      const T stored = Dev<T>::store(z);
      L.y[static_cast<std::int64_t>(r) * L.out + lane] = stored;
      logit = Dev<T>::load(stored);
    }
    const float mx = warp_max(mine ? logit : -INFINITY);
    const double e = mine ? exp(static_cast<double>(logit - mx)) : 0.0;
    const float lse = mx + static_cast<float>(log(warp_sum(e)));
    const double term = lane == label ? static_cast<double>(lse - logit) : 0.0;
    const double row_loss = warp_sum(term);
    if (mine) {
      const float p = expf(logit - lse);
      const float tc = lane == label ? 1.0f : 0.0f;
      const T stored = Dev<T>::store((p - tc) * gscale);
      L.dz[static_cast<std::int64_t>(r) * L.out + lane] = stored;
      dlogits[lane] = Dev<T>::load(stored);
    }
    if (lane == 0) a.row_loss[r] = row_loss;
  }
  __syncthreads();
  for (int c = t; c < P.out; c += kThreads) {
    const std::int64_t i = static_cast<std::int64_t>(r) * P.out + c;
    float acc = 0.0f;
    for (int j = 0; j < L.out; ++j) {
      acc = fmaf(dlogits[j], Dev<T>::load(L.w[static_cast<std::int64_t>(j) * L.in + c]), acc);
    }
    float g = Dev<T>::load(Dev<T>::store(acc));
    if (P.dropped != nullptr) {
      g = keeps(prev_key, P.rate, i) ? Dev<T>::load(Dev<T>::store(g * P.keep_scale)) : 0.0f;
    }
    if (P.relu) {
      const float y = Dev<T>::load(P.y[i]);
      g = g * activation_derivative(Activation::ReLU, 0.0f, y, y);
    }
    P.dz[i] = Dev<T>::store(g);
  }
  __syncthreads();  // red is reused by the next row
}

// The input gradient of layer l + 1 at tile (rt, ct) of layer l's output, through layer l's
// dropout and ReLU backward, rounded where the op-by-op step stores: dy = dz_{l+1} W_{l+1}, then
// dropout's dy * keep_scale, then ReLU's dy * relu'(y): layer l's dz.
template <typename T>
__device__ void input_grad_tile(const ChainArgs<T>& a, int l, int rt, int ct, std::uint64_t key,
                                float* red) {
  const ChainLayer<T>& L = a.l[l];
  const ChainLayer<T>& N = a.l[l + 1];
  const int r0 = rt * kTile, n0 = ct * kTile;
  const int r = r0 + static_cast<int>(threadIdx.x) / kTile;
  const int c = n0 + static_cast<int>(threadIdx.x) % kTile;
  const std::int64_t i = static_cast<std::int64_t>(r) * L.out + c;
  const float y = L.relu ? Dev<T>::load(L.y[i]) : 0.0f;  // loaded while the product runs
  tile_product<T, wmma::row_major>(N.dz + static_cast<std::int64_t>(r0) * N.out, N.out, N.w + n0,
                                   N.in, N.out / kTile, red);
  __syncthreads();
  const float acc = tile_sum(red);
  float g = Dev<T>::load(Dev<T>::store(acc));
  if (L.dropped != nullptr) {
    g = keeps(key, L.rate, i) ? Dev<T>::load(Dev<T>::store(g * L.keep_scale)) : 0.0f;
  }
  if (L.relu) g = g * activation_derivative(Activation::ReLU, 0.0f, y, y);
  L.dz[i] = Dev<T>::store(g);
  __syncthreads();  // red is reused by the next job
}

// Bias gradients: out[c0 + c] = the sum over rows of m[r, c0 + c] (m [rows, ld] row-major) for
// c < cols <= kCols, every thread of the block taking part (kThreads / kCols row groups, their
// partials added in group order). Block-uniform: it synchronises.
template <int kCols, typename T>
__device__ void column_sums(const T* m, int ld, int rows, int c0, int cols, float* out, float* part,
                            float inv, NormAcc& norm) {
  constexpr int kGroups = kThreads / kCols;
  const int c = static_cast<int>(threadIdx.x) % kCols;
  const int g = static_cast<int>(threadIdx.x) / kCols;
  float s = 0.0f;
  if (c < cols) {
    for (int r = g; r < rows; r += kGroups)
      s += Dev<T>::load(m[static_cast<std::int64_t>(r) * ld + c0 + c]);
  }
  part[threadIdx.x] = s;
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < cols) {
    float total = 0.0f;
    for (int k = 0; k < kGroups; ++k) total += part[k * kCols + threadIdx.x];
    out[c0 + threadIdx.x] = total;
    norm.add(total, inv);
  }
  __syncthreads();
}

// Weight-gradient job of a hidden-size layer: rows m0.. m0 + 15 of dW = dz^T x, column tiles
// 8 g .. 8 g + 7 (one per warp), and with g == 0 the bias gradients of those 16 units.
template <typename T>
__device__ void weight_grad_block(const ChainArgs<T>& a, int l, int mt, int g, float* red,
                                  float* part, float inv, NormAcc& norm) {
  const ChainLayer<T>& L = a.l[l];
  const T* x = layer_input(a, l);
  const int w = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int m0 = mt * kTile;
  const int nt = g * kWarps + w;
  if (nt < L.in / kTile) {
    const int n0 = nt * kTile;
    wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::col_major> fa;
    wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, wmma::row_major> fb;
#pragma unroll
    for (int kc = 0; kc < kMaxRows / kTile; ++kc) {
      if (kc >= a.rows / kTile) break;
      const std::int64_t row = static_cast<std::int64_t>(kc) * kTile;
      wmma::load_matrix_sync(fa, L.dz + row * L.out + m0, static_cast<unsigned>(L.out));
      wmma::load_matrix_sync(fb, x + row * L.in + n0, static_cast<unsigned>(L.in));
      wmma::mma_sync(acc, fa, fb, acc);
    }
    float* mine = red + w * kTileElems;
    wmma::store_matrix_sync(mine, acc, kTile, wmma::mem_row_major);
    __syncwarp();
    const int row = lane / 2, col = (lane % 2) * 8;
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      v[j] = Dev<T>::load(Dev<T>::store(mine[row * kTile + col + j]));
      norm.add(v[j], inv);
    }
    store_pack<8>(L.gw + static_cast<std::int64_t>(m0 + row) * L.in + n0 + col, v);
    __syncwarp();
  }
  if (g == 0 && L.gb != nullptr)
    column_sums<kTile>(L.dz, L.out, a.rows, m0, kTile, L.gb, part, inv, norm);
}

// The head's weight gradient, a job per class j: dW[j, k] = sum over rows of dz[r, j] x[r, k], the
// rows dealt to the warps (lanes over k, eight columns each), the warps' partials added in warp
// order; and, in job 0, the head's bias gradients.
template <typename T>
__device__ void head_weight_grad(const ChainArgs<T>& a, int j, float* red, float* part, float inv,
                                 NormAcc& norm) {
  const ChainLayer<T>& L = a.l[a.layers - 1];
  const T* x = layer_input(a, a.layers - 1);
  const int w = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  constexpr int kSpan = kWarp * 8;  // columns of one pass
  for (int k0 = 0; k0 < L.in; k0 += kSpan) {
    const int k = k0 + lane * 8;
    float acc[8] = {};
    if (k < L.in) {
      for (int r = w; r < a.rows; r += kWarps) {
        const float d = Dev<T>::load(L.dz[static_cast<std::int64_t>(r) * L.out + j]);
        float xv[8];
        load_pack<8>(x + static_cast<std::int64_t>(r) * L.in + k, xv);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] = fmaf(d, xv[e], acc[e]);
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) red[w * kSpan + lane * 8 + e] = acc[e];
    __syncthreads();
    const int kk = k0 + static_cast<int>(threadIdx.x);
    if (kk < L.in) {
      float s = 0.0f;
#pragma unroll
      for (int v = 0; v < kWarps; ++v) s += red[v * kSpan + threadIdx.x];
      const T stored = Dev<T>::store(s);
      L.gw[static_cast<std::int64_t>(j) * L.in + kk] = stored;
      norm.add(Dev<T>::load(stored), inv);
    }
    __syncthreads();
  }
  if (j == 0 && L.gb != nullptr) {
    column_sums<kWarp>(L.dz, L.out, a.rows, 0, L.out, L.gb, part, inv, norm);
  }
}

template <int kKind, typename T>
__global__ void __launch_bounds__(kThreads) dense_chain_kernel(ChainArgs<T> a) {
  __shared__ __align__(32) float red[kWarps * kTileElems];
  __shared__ float part[kThreads];
  __shared__ double shared[kWarps];
  cg::grid_group grid = cg::this_grid();
  const int blocks = static_cast<int>(gridDim.x);
  const int block = static_cast<int>(blockIdx.x);
  const StepControl& control = *a.control;
  const float inv = control.inv_scale;
  const int row_tiles = a.rows / kTile;
  std::uint64_t keys[kMaxLayers];
  for (int l = 0; l < a.layers; ++l)
    keys[l] = counter_key(control.seed, control.iteration, a.l[l].salt);

  // Forward through the hidden layers, then the head and the loss.
  for (int l = 0; l + 1 < a.layers; ++l) {
    const int col_tiles = a.l[l].out / kTile;
    for (int job = block; job < row_tiles * col_tiles; job += blocks) {
      forward_tile(a, l, job % row_tiles, job / row_tiles, keys[l], red);
    }
    grid.sync();
  }
  for (int r = block; r < a.rows; r += blocks) head_row(a, r, keys[a.layers - 2], red);
  grid.sync();

  // Backward, a phase per hidden layer l: its weight gradient and the input gradient of layer
  // l - 1 (and, in the first, the head's weight gradient; the head's input gradient ran with the
  // loss).
  NormAcc norm;
  const int h = a.layers - 1;
  for (int l = h - 1; l >= 0; --l) {
    const ChainLayer<T>& L = a.l[l];
    const int head_jobs = l == h - 1 ? a.l[h].out : 0;
    const int groups = (L.in / kTile + kWarps - 1) / kWarps;
    const int dw_jobs = (L.out / kTile) * groups;
    const int dx_jobs = l > 0 ? row_tiles * (a.l[l - 1].out / kTile) : 0;
    for (int job = block; job < dx_jobs + head_jobs + dw_jobs; job += blocks) {
      if (job < dx_jobs) {  // the input gradients first: their products are the longer ones
        input_grad_tile(a, l - 1, job % row_tiles, job / row_tiles, keys[l - 1], red);
      } else if (job < dx_jobs + head_jobs) {
        head_weight_grad(a, job - dx_jobs, red, part, inv, norm);
      } else {
        const int j = job - dx_jobs - head_jobs;
        weight_grad_block(a, l, j / groups, j % groups, red, part, inv, norm);
        __syncthreads();
      }
    }
    if (l > 0) grid.sync();
  }

  // The optimizer's first packs: master weights and state are loaded before the barrier (the
  // step does not write them before its update), gradients after it, and both while the blocks
  // add the gradient-check partials, on which only the update depends. The fp32 range's first
  // packs go to the grid's last threads.
  constexpr int kSlots = fixed_slots(kKind);
  const std::int64_t tid = static_cast<std::int64_t>(block) * kThreads + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(blocks) * kThreads;
  const std::int64_t tid32 = stride - 1 - tid;
  const std::int64_t lowp_packs = a.opt.lowp_count / 4;
  const std::int64_t f32_packs = (a.opt.count - a.opt.lowp_count) / 4;
  const T* lowp = static_cast<const T*>(a.opt.lowp);
  PackBatch<kSlots, T, 4, kOptimizerUnroll> first;
  PackBatch<kSlots, float, 4, 1> first32;
  first.load_params(a.opt, 0, lowp_packs, tid, stride);
  first32.load_params(a.opt, a.opt.lowp_count, f32_packs, tid32, stride);

  // The blocks' gradient-check partials; after the barrier every block adds them in block order:
  // the same norm and flag in each.
  store_check_partial(norm.sum, norm.bad, a.norm_partial, a.bad_partial, block, shared);
  grid.sync();
  first.load_grads(lowp, lowp_packs, tid, stride);
  first32.load_grads(a.opt.f32, f32_packs, tid32, stride);
  __shared__ float step_norm_sq;
  __shared__ int step_bad;
  {
    const CheckTotal total = check_total(a.norm_partial, a.bad_partial, blocks, shared);
    if (threadIdx.x == 0) {
      step_bad = total.found;
      step_norm_sq = total.norm_sq;
    }
    __syncthreads();
  }
  if (step_bad == 0) {
    StepControl c = control;
    c.grad_norm_sq = step_norm_sq;
    const OptimizerStepScalars sc = step_scalars(a.opt.hyper, a.opt.max_grad_norm, c);
    const Optimizer kind = kKind != kAnyKind ? static_cast<Optimizer>(kKind) : a.opt.hyper.kind;
    first.update(a.opt, kind, sc, a.working, 0, lowp_packs, tid, stride);
    first32.update(a.opt, kind, sc, a.working, a.opt.lowp_count, f32_packs, tid32, stride);
    // The rest (a model larger than the first packs cover) and the fp32 range's tail.
    optimizer_range<kSlots, T, T, 4, kOptimizerUnroll>(a.opt, kind, sc, a.working, lowp, 0,
                                                       a.opt.lowp_count, kOptimizerUnroll * stride);
    optimizer_range<kSlots, T, float, 4, kOptimizerUnroll>(a.opt, kind, sc, a.working, a.opt.f32,
                                                           a.opt.lowp_count, a.opt.count, stride);
  }
  if (last_block_done(a.counter) && threadIdx.x == 0) {
    double loss = 0.0;
    for (int r = 0; r < a.rows; ++r) loss += __ldcg(a.row_loss + r);
    StepControl& c = *a.control;
    c.loss = static_cast<float>(loss / static_cast<double>(a.rows));
    c.found_inf = step_bad != 0 ? 1.0f : 0.0f;
    c.grad_norm_sq = step_norm_sq;
    finish_step_math(c, a.scaler, a.opt.hyper, a.history);
  }
}

// Two blocks an SM where they fit: small_mlp's phases have up to ~200 jobs, which then run in one
// round, and the optimizer phase's loop is half as long; a grid-wide barrier costs about 1 us
// either way (measured on the H200 with 132 blocks).
constexpr int kBlocksPerSm = 2;

// The kernel for the optimizer kind: Adam, AdamW and SGD specialised, the others generic.
template <typename T>
const void* chain_kernel(Optimizer kind) {
  switch (kind) {
    case Optimizer::Adam:
      return reinterpret_cast<const void*>(
          dense_chain_kernel<static_cast<int>(Optimizer::Adam), T>);
    case Optimizer::AdamW:
      return reinterpret_cast<const void*>(
          dense_chain_kernel<static_cast<int>(Optimizer::AdamW), T>);
    case Optimizer::SGD:
      return reinterpret_cast<const void*>(dense_chain_kernel<static_cast<int>(Optimizer::SGD), T>);
    default:
      return reinterpret_cast<const void*>(dense_chain_kernel<kAnyKind, T>);
  }
}

template <typename T>
void launch_chain(const void* kernel, ChainArgs<T> a, int blocks, cudaStream_t stream) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  void* args[] = {&a};
  MIXTRAIN_CUDA_CHECK(cudaLaunchKernelExC(&config, kernel, args));
}

// The kernel's arguments: the step's buffers as T, the row losses and the check's partials of
// `blocks` blocks in `doubles` (the backend's scratch), the finish's completion counter.
template <typename T>
ChainArgs<T> chain_args(const DenseChainStep& s, const OptimizerArgs& opt, double* doubles,
                        int blocks, unsigned int* counter) {
  ChainArgs<T> a{};
  a.rows = static_cast<int>(s.rows);
  a.layers = static_cast<int>(s.layers.size());
  a.x = static_cast<const T*>(s.input.ptr);
  a.labels = s.labels;
  for (int l = 0; l < a.layers; ++l) {
    const DenseChainLayer& L = s.layers[static_cast<std::size_t>(l)];
    ChainLayer<T>& d = a.l[l];
    d.in = static_cast<int>(L.in);
    d.out = static_cast<int>(L.out);
    d.relu = L.act == Activation::ReLU ? 1 : 0;
    d.w = static_cast<const T*>(L.weight.ptr);
    d.b = static_cast<const T*>(L.bias.ptr);
    d.gw = static_cast<T*>(L.grad_weight.ptr);
    d.gb = L.bias ? L.grad_bias : nullptr;
    d.y = static_cast<T*>(L.output.ptr);
    d.dropped = L.dropout > 0.0f ? static_cast<T*>(L.dropped.ptr) : nullptr;
    d.rate = L.dropout;
    d.keep_scale = 1.0f / (1.0f - L.dropout);
    d.salt = L.dropout_salt;
    d.dz = static_cast<T*>(L.grad_pre.ptr);
  }
  a.row_loss = doubles;
  a.norm_partial = doubles + kMaxRows;
  a.bad_partial = reinterpret_cast<int*>(a.norm_partial + blocks);
  a.opt = opt;
  a.working = static_cast<T*>(s.optimizer.working.ptr);
  a.control = s.control;
  a.scaler = s.scaler;
  a.history = s.history;
  a.counter = counter;
  return a;
}

// Why a chain cannot take the fused path (null: it can). Device pointers must allow WMMA's
// 32-byte fragment loads and the optimizer's 16-byte packs.
const char* chain_unsupported(const DenseChainStep& s) {
  const DType t = s.input.dtype;
  if (t != DType::F16 && t != DType::BF16) return "not FP16/BF16";
  if (s.rows < kTile || s.rows > kMaxRows || s.rows % kTile != 0) return "batch rows";
  const auto count = static_cast<int>(s.layers.size());
  if (count < 2 || count > kMaxLayers) return "layer count";
  if (s.labels == nullptr || !aligned_to(s.input.ptr, 32)) return "input";
  for (int l = 0; l < count; ++l) {
    const DenseChainLayer& L = s.layers[static_cast<std::size_t>(l)];
    const bool head = l == count - 1;
    if (L.in <= 0 || L.in % kTile != 0 || L.in > (std::int64_t{1} << 20)) return "layer inputs";
    if (l > 0 && L.in != s.layers[static_cast<std::size_t>(l) - 1].out) return "chain shapes";
    if (head ? (L.out < 1 || L.out > kMaxHeadOut) : (L.out <= 0 || L.out % kTile != 0)) {
      return "layer outputs";
    }
    if (L.act != Activation::Identity && (L.act != Activation::ReLU || head)) return "activation";
    if (head && L.dropout != 0.0f) return "dropout after the head";
    if (L.dropout < 0.0f || L.dropout >= 1.0f) return "dropout rate";
    if (L.dropout > 0.0f && !L.dropped) return "dropout output";
    if (L.weight.dtype != t || L.grad_weight.dtype != t || L.output.dtype != t ||
        L.grad_pre.dtype != t || (L.bias && L.bias.dtype != t) ||
        (L.dropped && L.dropped.dtype != t)) {
      return "dtypes";
    }
    if (L.bias && L.grad_bias == nullptr) return "bias gradient";
    if (!L.weight || !L.grad_weight || !L.output || !L.grad_pre) return "missing buffer";
    const void* tensors[] = {L.weight.ptr, L.grad_weight.ptr, L.output.ptr, L.grad_pre.ptr,
                             L.dropped.ptr};
    for (const void* p : tensors) {
      if (!aligned_to(p, 32)) return "alignment";  // a null dropout output counts as aligned
    }
  }
  const OptimizerDesc& o = s.optimizer;
  if (!o.working || o.working.dtype != t) return "working copy";
  if (!aligned_to(o.working.ptr, 16)) return "working copy alignment";  // the rest: packs_aligned
  return nullptr;
}

}  // namespace

bool CudaBackend::dense_chain_step(const DenseChainStep& s) {
  if (!fused_chains_ || chain_unsupported(s) != nullptr || !cooperative_launch_) return false;
  if (s.control == nullptr || s.optimizer.control != s.control) {
    throw Error("internal: dense_chain_step needs the optimizer's own control block");
  }
  const auto max_blocks = static_cast<std::size_t>(kBlocksPerSm * sm_count_);
  const std::size_t partial_bytes = sizeof(double) * (kMaxRows + 2 * max_blocks);
  if (partial_bytes > scratch_bytes_) return false;
  // Validates the optimizer's arguments like the op-by-op pass (the gradients' dtype included).
  const OptimizerArgs opt = optimizer_args(s.optimizer);
  if (!packs_aligned(opt)) return false;
  const auto run = [&](auto t) {
    using T = decltype(t);
    const void* kernel = chain_kernel<T>(s.optimizer.hyper.kind);
    const int blocks = sm_count_ * std::min(resident_blocks(kernel, kThreads), kBlocksPerSm);
    if (blocks < 1) return false;  // the kernel does not fit on an SM (not on an H200)
    if (planning()) return true;
    launch_chain(kernel,
                 chain_args<T>(s, opt, static_cast<double*>(scratch_), blocks,
                               step_counters_ + kCounterChain),
                 blocks, stream_);
    return true;
  };
  return s.input.dtype == DType::F16 ? run(__half{}) : run(__nv_bfloat16{});
}

}  // namespace mixtrain::cuda
