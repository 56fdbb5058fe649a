// oneDNN 2-D convolutions as XLA FFI handlers: forward (plain, or with bias and ReLU applied by the
// kernel), backward data, backward weights, and the packing of weights into oneDNN's layouts; and
// the Winograd F(2x2, 3x3) convolution (forward and input gradient) on oneDNN matrix products, with
// its kernel transform.
//
// XLA:CPU's own convolution is an Eigen contraction; oneDNN's brgemm kernels (what PyTorch calls on
// x86) run VGG's 3x3 layers 1.1-1.3x faster on the same cores. jaxface/kernels/onednn.py builds
// this file, registers the handlers and wraps them in a custom_vjp; see that file for the policy.
//
// Layouts are JAX's: activations N,H,W,C and weights KH,KW,I,O, row-major. The weights may instead
// arrive "packed" in the blocked layout the primitive wants (see BlockOf, PackWeights), so that a
// caller who reuses the same weights for many steps (feature inversion) reorders them once, not at
// every call.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;


namespace {

// kForwardBiasRelu: relu(conv + bias), both applied by oneDNN as the kernel writes its output.
enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2, kForwardBiasRelu = 3 };

// kind, n, h, w, c, kh, kw, o, oh, ow, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right
using Key = std::array<int64_t, 16>;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Plan {
  dnnl::primitive primitive;
  dnnl::memory::desc activations_in, activations_out;  // N,H,W,C as oneDNN nhwc
  dnnl::memory::desc weights;                          // the layout the primitive chose
  dnnl::memory::desc user_weights;                     // KH,KW,I,O
  bool reorder = false;                                // weights != user_weights
  dnnl::reorder weights_reorder;  // user -> primitive (forward, backward data); back (weights)
  // Scratchpads are the caller's (scratchpad_mode::user), one per XLA thread (ThreadScratchpad): oneDNN's own ("library")
  // scratchpad is shared by all primitives unless it was built for concurrent execution, and XLA runs
  // independent calls (a layer's data and weight gradients) on two threads at once. Sharing it crashed
  // VGG-Face's gradient at 32 px.
  dnnl::memory::desc scratchpad, reorder_scratchpad;
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A scratchpad of `desc`'s size in a buffer owned by the calling thread and reused by its later calls
// (a fresh allocation per call cost 15% of a training step in page faults). An XLA thread runs one
// call at a time; `slot` keeps a weight reorder's scratchpad apart from its convolution's.
dnnl::memory ThreadScratchpad(const dnnl::memory::desc& desc, int slot) {
  constexpr size_t kAlign = 64;
  thread_local std::vector<char> buffers[2];
  std::vector<char>& buffer = buffers[slot];
  const size_t bytes = desc.get_size() + kAlign;
  if (buffer.size() < bytes) buffer.resize(bytes);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  void* aligned = reinterpret_cast<void*>((address + kAlign - 1) / kAlign * kAlign);
  return dnnl::memory(desc, Engine(), aligned);
}

std::shared_ptr<Plan> MakePlan(const Key& k) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const int64_t n = k[1], h = k[2], w = k[3], c = k[4], kh = k[5], kw = k[6], o = k[7],
                oh = k[8], ow = k[9];
  const dnnl::memory::dims strides = {k[10], k[11]}, pad_l = {k[12], k[14]},
                           pad_r = {k[13], k[15]};
  const dnnl::memory::desc src({n, c, h, w}, dt::f32, tag::nhwc);
  const dnnl::memory::desc dst({n, o, oh, ow}, dt::f32, tag::nhwc);
  const dnnl::memory::desc any_weights({o, c, kh, kw}, dt::f32, tag::any);
  auto plan = std::make_shared<Plan>();
  plan->activations_in = src;
  plan->activations_out = dst;
  plan->user_weights = dnnl::memory::desc({o, c, kh, kw}, dt::f32, tag::hwio);
  const auto algorithm = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc forward(Engine(), dnnl::prop_kind::forward_training,
                                                    algorithm, src, any_weights, dst, strides,
                                                    pad_l, pad_r, UserScratchpad());
  if (k[0] == kForward) {
    plan->primitive = dnnl::convolution_forward(forward);
    plan->weights = forward.weights_desc();
    plan->scratchpad = forward.scratchpad_desc();
  } else if (k[0] == kForwardBiasRelu) {
    dnnl::post_ops relu;
    relu.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr attr = UserScratchpad();
    attr.set_post_ops(relu);
    dnnl::convolution_forward::primitive_desc fused(
        Engine(), dnnl::prop_kind::forward_training, algorithm, src, any_weights,
        dnnl::memory::desc({o}, dt::f32, tag::a), dst, strides, pad_l, pad_r, attr);
    plan->primitive = dnnl::convolution_forward(fused);
    plan->weights = fused.weights_desc();
    plan->scratchpad = fused.scratchpad_desc();
  } else if (k[0] == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc backward(
        Engine(), algorithm, src, any_weights, dst, strides, pad_l, pad_r, forward, UserScratchpad());
    plan->primitive = dnnl::convolution_backward_data(backward);
    plan->weights = backward.weights_desc();
    plan->scratchpad = backward.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc backward(
        Engine(), algorithm, src, any_weights, dst, strides, pad_l, pad_r, forward, UserScratchpad());
    plan->primitive = dnnl::convolution_backward_weights(backward);
    plan->weights = backward.diff_weights_desc();
    plan->scratchpad = backward.scratchpad_desc();
  }
  plan->reorder = plan->weights != plan->user_weights;
  if (plan->reorder) {
    const bool to_user = k[0] == kBackwardWeights;
    dnnl::reorder::primitive_desc reorder(Engine(), to_user ? plan->weights : plan->user_weights, Engine(),
                                          to_user ? plan->user_weights : plan->weights, UserScratchpad());
    plan->weights_reorder = dnnl::reorder(reorder);
    plan->reorder_scratchpad = reorder.scratchpad_desc();
  }
  return plan;
}

// Primitives are immutable and thread-safe to execute, so one per problem serves every caller:
// make(key) runs once per key, for each of the caches (one per PlanT).
template <typename PlanT, typename KeyT>
std::shared_ptr<PlanT> Cached(const KeyT& key, std::shared_ptr<PlanT> (*make)(const KeyT&)) {
  static std::mutex mu;
  static std::map<KeyT, std::shared_ptr<PlanT>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto plan = make(key);
  cache.emplace(key, plan);
  return plan;
}

std::shared_ptr<Plan> GetPlan(const Key& k) { return Cached(k, MakePlan); }

// The block size B when the primitive's weights are a layout a caller builds with pad + transpose:
// forward Acdb{B}a = [O/B][KH][KW][I][B], backward data Bcda{B}b = [I/B][KH][KW][O][B]; else 0.
int64_t BlockOf(const Plan& plan, int64_t kind) {
  using tag = dnnl::memory::format_tag;
  if (kind == kBackwardWeights) return 0;
  const auto dims = plan.user_weights.get_dims();
  for (int64_t b : {16, 32, 64}) {
    tag t;
    if (kind == kForward || kind == kForwardBiasRelu)
      t = b == 16 ? tag::Acdb16a : b == 32 ? tag::Acdb32a : tag::Acdb64a;
    else
      t = b == 16 ? tag::Bcda16b : b == 32 ? tag::Bcda32b : tag::Bcda64b;
    if (dnnl::memory::desc(dims, dnnl::memory::data_type::f32, t) == plan.weights) return b;
  }
  return 0;
}

// in: N,H,W,C (x, or dx for backward data)   out: N,OH,OW,O (y, or dy)   weights: see above.
ffi::Error Run(Kind kind, float* in, float* weights, float* out, float* bias, ffi::Span<const int64_t> in_dims,
               ffi::Span<const int64_t> weight_dims, ffi::Span<const int64_t> out_dims,
               int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
               int64_t pl, int64_t pr, int64_t packed) {
  if (in_dims.size() != 4 || out_dims.size() != 4 || in_dims[0] != out_dims[0])
    return ffi::Error::InvalidArgument("jaxface oneDNN conv: activations must be N,H,W,C");
  if (!packed && (weight_dims.size() != 4 || weight_dims[0] != kh || weight_dims[1] != kw ||
                  weight_dims[2] != in_dims[3] || weight_dims[3] != out_dims[3]))
    return ffi::Error::InvalidArgument("jaxface oneDNN conv: weights must be KH,KW,I,O");
  if (packed && kind == kBackwardWeights)
    return ffi::Error::InvalidArgument("jaxface oneDNN conv: weight gradients are KH,KW,I,O");
  const Key key = {kind,        in_dims[0],  in_dims[1], in_dims[2], in_dims[3], kh,
                   kw,          out_dims[3], out_dims[1], out_dims[2], sh,       sw,
                   pt,          pb,          pl,          pr};
  try {
    const auto plan = GetPlan(key);
    if (packed && BlockOf(*plan, kind) != packed)
      return ffi::Error::InvalidArgument("jaxface oneDNN conv: weights packed for another layout");
    dnnl::stream stream(Engine());
    dnnl::memory in_memory(plan->activations_in, Engine(), in);
    dnnl::memory out_memory(plan->activations_out, Engine(), out);
    const bool reorder = plan->reorder && !packed;
    dnnl::memory given(packed ? plan->weights : plan->user_weights, Engine(), weights);
    dnnl::memory used = reorder ? dnnl::memory(plan->weights, Engine()) : given;
    dnnl::memory scratchpad = ThreadScratchpad(plan->scratchpad, 0);  // this call's own (see Plan)
    auto reorder_weights = [&](dnnl::memory& from, dnnl::memory& to) {
      dnnl::memory reorder_scratchpad = ThreadScratchpad(plan->reorder_scratchpad, 1);
      plan->weights_reorder.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                             {DNNL_ARG_SCRATCHPAD, reorder_scratchpad}});
    };
    if (reorder && kind != kBackwardWeights) reorder_weights(given, used);
    if (kind == kForward) {
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, in_memory},
                                       {DNNL_ARG_WEIGHTS, used},
                                       {DNNL_ARG_DST, out_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (kind == kForwardBiasRelu) {
      dnnl::memory bias_memory({{key[7]}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::a},
                               Engine(), bias);
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, in_memory},
                                       {DNNL_ARG_WEIGHTS, used},
                                       {DNNL_ARG_BIAS, bias_memory},
                                       {DNNL_ARG_DST, out_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (kind == kBackwardData) {
      plan->primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, in_memory},
                                       {DNNL_ARG_WEIGHTS, used},
                                       {DNNL_ARG_DIFF_DST, out_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, in_memory},
                                       {DNNL_ARG_DIFF_WEIGHTS, used},
                                       {DNNL_ARG_DIFF_DST, out_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (reorder) reorder_weights(used, given);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jaxface oneDNN conv: ") + e.what());
  }
  return ffi::Error::Success();
}

#define GEOMETRY_PARAMS                                                                     \
  int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,      \
      int64_t pr, int64_t packed
#define GEOMETRY_ARGS kh, kw, sh, sw, pt, pb, pl, pr, packed

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::ResultBuffer<ffi::F32> y,
                   GEOMETRY_PARAMS) {
  return Run(kForward, x.typed_data(), static_cast<float*>(w.untyped_data()), y->typed_data(),
             nullptr, x.dimensions(), w.dimensions(), y->dimensions(), GEOMETRY_ARGS);
}

ffi::Error ForwardBiasRelu(ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::Buffer<ffi::F32> bias,
                           ffi::ResultBuffer<ffi::F32> y, GEOMETRY_PARAMS) {
  if (bias.dimensions().size() != 1 || bias.dimensions()[0] != y->dimensions()[3])
    return ffi::Error::InvalidArgument("jaxface oneDNN conv: bias must have one value per output channel");
  return Run(kForwardBiasRelu, x.typed_data(), static_cast<float*>(w.untyped_data()),
             y->typed_data(), bias.typed_data(), x.dimensions(), w.dimensions(), y->dimensions(),
             GEOMETRY_ARGS);
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::AnyBuffer w,
                        ffi::ResultBuffer<ffi::F32> dx, GEOMETRY_PARAMS) {
  return Run(kBackwardData, dx->typed_data(), static_cast<float*>(w.untyped_data()),
             dy.typed_data(), nullptr, dx->dimensions(), w.dimensions(), dy.dimensions(), GEOMETRY_ARGS);
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dw, GEOMETRY_PARAMS) {
  return Run(kBackwardWeights, x.typed_data(), dw->typed_data(), dy.typed_data(), nullptr,
             x.dimensions(), dw->dimensions(), dy.dimensions(), GEOMETRY_ARGS);
}

#define GEOMETRY_ATTRS                       \
  Attr<int64_t>("kernel_h")                  \
      .Attr<int64_t>("kernel_w")             \
      .Attr<int64_t>("stride_h")             \
      .Attr<int64_t>("stride_w")             \
      .Attr<int64_t>("pad_top")              \
      .Attr<int64_t>("pad_bottom")           \
      .Attr<int64_t>("pad_left")             \
      .Attr<int64_t>("pad_right")            \
      .Attr<int64_t>("packed")

#define CONV_BINDING(Second)                 \
  ffi::Ffi::Bind()                           \
      .Arg<ffi::Buffer<ffi::F32>>()          \
      .Arg<Second>()                         \
      .Ret<ffi::Buffer<ffi::F32>>()          \
      .GEOMETRY_ATTRS

// weights (KH,KW,I,O) -> the blocked layout BlockOf describes for the problem `key` (XLA's own
// transposes into these 5-D layouts ran 4x slower).
ffi::Error PackWeights(ffi::Buffer<ffi::F32> weights, ffi::ResultBuffer<ffi::F32> packed,
                       ffi::Span<const int64_t> key, int64_t block) {
  if (key.size() != 16 || key[0] == kBackwardWeights || key[0] < 0 || key[0] > kForwardBiasRelu)
    return ffi::Error::InvalidArgument("jaxface oneDNN conv: bad packing key");
  Key k;
  for (int i = 0; i < 16; ++i) k[i] = key[i];
  const auto dims = weights.dimensions();
  if (dims.size() != 4 || dims[0] != k[5] || dims[1] != k[6] || dims[2] != k[4] || dims[3] != k[7])
    return ffi::Error::InvalidArgument("jaxface oneDNN conv: weights must be KH,KW,I,O");
  try {
    const auto plan = GetPlan(k);
    if (BlockOf(*plan, k[0]) != block || !plan->reorder ||
        packed->size_bytes() != plan->weights.get_size())
      return ffi::Error::InvalidArgument("jaxface oneDNN conv: weights packed for another layout");
    // A plain loop, not oneDNN's reorder: XLA runs the independent packings of a program side by
    // side on its threads, where the reorder's OpenMP teams oversubscribed the cores and ran 3x
    // slower than these copies.
    const int64_t kh = k[5], kw = k[6], ci = k[4], co = k[7], b = block;
    const float* in = weights.typed_data();
    float* out = packed->typed_data();
    if (k[0] != kBackwardData) {  // out[O/B][KH][KW][I][B] = in[KH][KW][I][O]
      const int64_t blocks = (co + b - 1) / b;
      for (int64_t ob = 0; ob < blocks; ++ob) {
        const int64_t width = std::min(b, co - ob * b);
        for (int64_t hwi = 0; hwi < kh * kw * ci; ++hwi) {
          float* dst = out + (ob * kh * kw * ci + hwi) * b;
          std::memcpy(dst, in + hwi * co + ob * b, width * sizeof(float));
          std::fill(dst + width, dst + b, 0.0f);
        }
      }
    } else {  // out[I/B][KH][KW][O][B] = in[KH][KW][I][O]
      const int64_t blocks = (ci + b - 1) / b;
      for (int64_t ib = 0; ib < blocks; ++ib) {
        const int64_t width = std::min(b, ci - ib * b);
        for (int64_t hw = 0; hw < kh * kw; ++hw) {
          float* dst = out + (ib * kh * kw + hw) * co * b;
          const float* src = in + (hw * ci + ib * b) * co;
          for (int64_t o = 0; o < co; ++o) {
            for (int64_t j = 0; j < width; ++j) dst[o * b + j] = src[j * co + o];
            for (int64_t j = width; j < b; ++j) dst[o * b + j] = 0.0f;
          }
        }
      }
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jaxface oneDNN conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------------
// Winograd F(2x2, 3x3) (Lavin & Gray, 2016): a 3x3, stride-1, pad-1 convolution computes each 2x2
// block of outputs from a 4x4 tile d of the input as A^T [U * (B^T d B)] A, U = G g G^T the
// transformed kernel. Summed over input channels the elementwise product becomes 16 matrix
// products, one per tile position, with 2.25x fewer multiply-adds than the direct convolution:
//
//   tiles V[16][P][C] = B^T d B of every tile (P = N * ceil(H/2) * ceil(W/2) tiles)
//   products M[16][P][O] = V[k] @ U[k] for the 16 positions k (one batched oneDNN matmul)
//   y = A^T M A (+ bias, then ReLU), cropped to H x W
//
// The input gradient is the convolution of dy with the kernel rotated by 180 degrees and its
// channels swapped. Rotating g rotates G g G^T by the permutation pi = (3 1 2 0) of rows and columns
// (G with its columns reversed is G with rows 0 and 3 swapped), so it reuses the forward's U: tile
// position k is stored at slot pi(k) and read back from there, and the product contracts U's
// output-channel axis. U is computed once per program (WinogradKernel), not per call.
constexpr int kPermuted[16] = {15, 13, 14, 12, 7, 5, 6, 4, 11, 9, 10, 8, 3, 1, 2, 0};
constexpr int kIdentity[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Floats between the matrices of consecutive tile positions in the tiles (P x C) and products
// (P x O) buffers: padded by a cache line and a half, because at the usual sizes P * C is a multiple
// of 4 KiB, which maps the 16 streams the transforms read or write together to the same cache sets.
int64_t TilePositionStride(int64_t p, int64_t c) { return p * c + 24; }

// Tiles per slab: a layer's tiles are transformed, multiplied and transformed back in slabs of at
// most this many, so that the scratch (16 x slab x (C + O) floats) stays within 64 MiB however
// large the batch. VGG's layers at 64-112 px and batch 4-8 fit in one slab.
int64_t SlabTiles(int64_t c, int64_t o) {
  return std::max<int64_t>(256, (int64_t{64} << 20) / (16 * 4 * (c + o)));
}

struct MatmulPlan {
  dnnl::matmul primitive;
  dnnl::memory::desc tiles, kernel, products, scratchpad;  // scratchpad: the caller's, see Plan
};

// key = {P, C, O, input_gradient}: (16, P, C) @ (16, C, O), or with input_gradient
// (16, P, C) @ (16, O, C)^T.
using MatmulKey = std::array<int64_t, 4>;

std::shared_ptr<MatmulPlan> MakeMatmulPlan(const MatmulKey& key) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const int64_t p = key[0], c = key[1], o = key[2];
  const bool input_gradient = key[3] != 0;
  auto plan = std::make_shared<MatmulPlan>();
  plan->tiles = dnnl::memory::desc({16, p, c}, dt::f32, {TilePositionStride(p, c), c, 1});
  plan->kernel = dnnl::memory::desc({16, c, o}, dt::f32, input_gradient ? tag::acb : tag::abc);
  plan->products = dnnl::memory::desc({16, p, o}, dt::f32, {TilePositionStride(p, o), o, 1});
  dnnl::matmul::primitive_desc desc(Engine(), plan->tiles, plan->kernel, plan->products, UserScratchpad());
  plan->primitive = dnnl::matmul(desc);
  plan->scratchpad = desc.scratchpad_desc();
  return plan;
}

std::shared_ptr<MatmulPlan> GetMatmulPlan(int64_t p, int64_t c, int64_t o, bool input_gradient) {
  return Cached(MatmulKey{p, c, o, input_gradient ? 1 : 0}, MakeMatmulPlan);
}

// Where the tiles are: P = N * TH * TW tiles of 4x4 inputs (2x2 outputs), tile p at image p / (TH*TW),
// tile row p / TW % TH, tile column p % TW.
struct TileGrid {
  int64_t n, h, w, th, tw;
  int64_t count() const { return n * th * tw; }
};

// tiles[slot[k] * stride + c] = (B^T d B)[k] of tile p, d its 4x4 inputs (zero outside the image).
// Pointers outside the image point at `zeros` (C zeros), so the channel loop has no branches and
// vectorises.
void InputTile(const TileGrid& g, int64_t p, const float* x, int64_t c, const float* zeros,
               const int* slot, float* __restrict tiles, int64_t stride) {
  const int64_t b = p / (g.th * g.tw), ty = p / g.tw % g.th, tx = p % g.tw;
  const float* d[16];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t r = 2 * ty - 1 + i, s = 2 * tx - 1 + j;
      const bool inside = r >= 0 && r < g.h && s >= 0 && s < g.w;
      const int64_t offset = ((b * g.h + r) * g.w + s) * c;
      d[4 * i + j] = inside ? x + offset : zeros;
    }
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    float v[16];
    for (int e = 0; e < 16; ++e) v[e] = d[e][k];
    float t[16];
    for (int j = 0; j < 4; ++j) {  // B^T d: along rows
      t[j] = v[j] - v[8 + j];
      t[4 + j] = v[4 + j] + v[8 + j];
      t[8 + j] = v[8 + j] - v[4 + j];
      t[12 + j] = v[4 + j] - v[12 + j];
    }
    for (int a = 0; a < 4; ++a) {  // (B^T d) B: along columns
      tiles[slot[4 * a] * stride + k] = t[4 * a] - t[4 * a + 2];
      tiles[slot[4 * a + 1] * stride + k] = t[4 * a + 1] + t[4 * a + 2];
      tiles[slot[4 * a + 2] * stride + k] = t[4 * a + 2] - t[4 * a + 1];
      tiles[slot[4 * a + 3] * stride + k] = t[4 * a + 1] - t[4 * a + 3];
    }
  }
}

// The 2x2 outputs of tile p: A^T M A of its products M[k] = products[slot[k] * stride + o], plus
// bias, then ReLU when kRelu. Outputs outside the image (odd sizes) go to `discard` (O floats).
template <bool kRelu>
void OutputTile(const TileGrid& g, int64_t p, const float* __restrict products, int64_t stride,
                const int* slot, int64_t o, const float* __restrict bias, float* y, float* discard) {
  const int64_t b = p / (g.th * g.tw), ty = p / g.tw % g.th, tx = p % g.tw;
  float* out[4];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      const int64_t r = 2 * ty + i, s = 2 * tx + j;
      out[2 * i + j] = r < g.h && s < g.w ? y + ((b * g.h + r) * g.w + s) * o : discard;
    }
  float* __restrict y00 = out[0];
  float* __restrict y01 = out[1];
  float* __restrict y10 = out[2];
  float* __restrict y11 = out[3];
#pragma omp simd
  for (int64_t k = 0; k < o; ++k) {
    float mv[16], r[8];
    for (int e = 0; e < 16; ++e) mv[e] = products[slot[e] * stride + k];
    for (int e = 0; e < 4; ++e) {  // A^T M: along rows
      r[e] = mv[e] + mv[4 + e] + mv[8 + e];
      r[4 + e] = mv[4 + e] - mv[8 + e] - mv[12 + e];
    }
    float v[4];
    for (int i = 0; i < 2; ++i) {  // (A^T M) A: along columns
      v[2 * i] = r[4 * i] + r[4 * i + 1] + r[4 * i + 2] + bias[k];
      v[2 * i + 1] = r[4 * i + 1] - r[4 * i + 2] - r[4 * i + 3] + bias[k];
    }
    if (kRelu)
      for (int e = 0; e < 4; ++e) v[e] = std::max(v[e], 0.0f);
    y00[k] = v[0];
    y01[k] = v[1];
    y10[k] = v[2];
    y11[k] = v[3];
  }
}

// kernel (3, 3, C, O) -> U (16, C, O), U[4a+b] = (G g G^T)[a][b] for every channel pair. One
// thread: XLA runs the independent transforms of a program side by side on its threads, where
// OpenMP teams (and XLA's own dot) oversubscribed the cores and ran 5-10x slower.
ffi::Error WinogradKernel(ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> transformed) {
  const auto kd = kernel.dimensions(), td = transformed->dimensions();
  if (kd.size() != 4 || kd[0] != 3 || kd[1] != 3 || td.size() != 3 || td[0] != 16 ||
      td[1] != kd[2] || td[2] != kd[3])
    return ffi::Error::InvalidArgument("jaxface Winograd conv: kernel (3, 3, C, O) -> (16, C, O)");
  const int64_t size = kd[2] * kd[3];
  const float* __restrict in = kernel.typed_data();
  float* __restrict out = transformed->typed_data();
  // Blocks of kSpan elements: the 25 streams lie exactly C*O floats apart, so element-at-a-time
  // access maps them all to the same cache sets.
  constexpr int64_t kSpan = 256;
  for (int64_t e0 = 0; e0 < size; e0 += kSpan) {
    const int64_t span = std::min(kSpan, size - e0);
    float g[9][kSpan], t[12][kSpan];
    for (int tap = 0; tap < 9; ++tap) {
      const float* __restrict src = in + tap * size + e0;
      for (int64_t e = 0; e < span; ++e) g[tap][e] = src[e];
    }
    for (int j = 0; j < 3; ++j)  // G g: along rows
#pragma omp simd
      for (int64_t e = 0; e < span; ++e) {
        t[j][e] = g[j][e];
        t[3 + j][e] = 0.5f * (g[j][e] + g[3 + j][e] + g[6 + j][e]);
        t[6 + j][e] = 0.5f * (g[j][e] - g[3 + j][e] + g[6 + j][e]);
        t[9 + j][e] = g[6 + j][e];
      }
    for (int a = 0; a < 4; ++a) {  // (G g) G^T: along columns
      float* __restrict dst = out + 4 * a * size + e0;
      const float* t0 = t[3 * a];
      const float* t1 = t[3 * a + 1];
      const float* t2 = t[3 * a + 2];
      for (int64_t e = 0; e < span; ++e) {
        dst[e] = t0[e];
        dst[size + e] = 0.5f * (t0[e] + t1[e] + t2[e]);
        dst[2 * size + e] = 0.5f * (t0[e] - t1[e] + t2[e]);
        dst[3 * size + e] = t2[e];
      }
    }
  }
  return ffi::Error::Success();
}

// y = conv(x) with x: N,H,W,C, kernel U: (16, C, O), bias: (O,) or empty, y: N,H,W,O; or, with
// input_gradient, y = the input gradient N,H,W,C' of a convolution whose U is (16, C', C), given its
// output gradient x (N,H,W,C), only where mask > 0 when a mask (shaped like x) is given.
ffi::Error Winograd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> kernel,
                    ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, bool relu,
                    bool input_gradient) {
  const auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || kd.size() != 3 || kd[0] != 16 || xd[0] != yd[0] ||
      xd[1] != yd[1] || xd[2] != yd[2])
    return ffi::Error::InvalidArgument("jaxface Winograd conv: x N,H,W,C -> y N,H,W,O with a (16, C, O) kernel");
  const int64_t c = xd[3], o = yd[3];
  if (kd[input_gradient ? 2 : 1] != c || kd[input_gradient ? 1 : 2] != o)
    return ffi::Error::InvalidArgument("jaxface Winograd conv: kernel channels do not match x and y");
  const bool masked = mask.element_count() != 0, biased = bias.element_count() != 0;
  if ((masked && mask.element_count() != x.element_count()) || (biased && bias.element_count() != o))
    return ffi::Error::InvalidArgument("jaxface Winograd conv: mask must be shaped like x, bias (O,)");
  const TileGrid grid = {xd[0], xd[1], xd[2], (xd[1] + 1) / 2, (xd[2] + 1) / 2};
  const int64_t p = grid.count(), slab = std::min(p, SlabTiles(c, o));
  const float* in = x.typed_data();
  const float* keep = masked ? mask.typed_data() : nullptr;
  const float* shift = biased ? bias.typed_data() : nullptr;
  float* out = y->typed_data();
  // Scratch per calling thread, reused across calls (XLA may run two convolutions side by side).
  // Only its pointers enter the parallel regions: there each thread would see its own instance.
  thread_local std::vector<float> tiles_buffer, products_buffer, zeros_buffer, discard_buffer,
      masked_buffer;
  try {
    const int* slot = input_gradient ? kPermuted : kIdentity;
    const int64_t tiles_stride = TilePositionStride(slab, c), products_stride = TilePositionStride(slab, o);
    tiles_buffer.resize(16 * tiles_stride);
    products_buffer.resize(16 * products_stride);
    zeros_buffer.assign(std::max(c, o), 0.0f);
    discard_buffer.resize(o);
    float* tiles = tiles_buffer.data();
    float* products = products_buffer.data();
    const float* zeros = zeros_buffer.data();
    float* discard = discard_buffer.data();
    if (shift == nullptr) shift = zeros;
    if (keep != nullptr) {  // once, rather than at each of the 4 tiles that read a pixel
      const int64_t size = x.element_count();
      masked_buffer.resize(size);
      float* __restrict masked_in = masked_buffer.data();
#pragma omp parallel for simd schedule(static)
      for (int64_t i = 0; i < size; ++i) masked_in[i] = keep[i] > 0.0f ? in[i] : 0.0f;
      in = masked_in;
    }
    dnnl::stream stream(Engine());
    dnnl::memory kernel_memory(GetMatmulPlan(slab, c, o, input_gradient)->kernel, Engine(),
                               kernel.typed_data());
    for (int64_t first = 0; first < p; first += slab) {
      const int64_t count = std::min(slab, p - first);
      const auto plan = GetMatmulPlan(count, c, o, input_gradient);
      const int64_t tiles_step = TilePositionStride(count, c), products_step = TilePositionStride(count, o);
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < count; ++t)
        InputTile(grid, first + t, in, c, zeros, slot, tiles + t * c, tiles_step);
      dnnl::memory tiles_memory(plan->tiles, Engine(), tiles);
      dnnl::memory products_memory(plan->products, Engine(), products);
      dnnl::memory scratchpad = ThreadScratchpad(plan->scratchpad, 0);
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, tiles_memory},
                                       {DNNL_ARG_WEIGHTS, kernel_memory},
                                       {DNNL_ARG_DST, products_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
      stream.wait();
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < count; ++t) {
        if (relu)
          OutputTile<true>(grid, first + t, products + t * o, products_step, slot, o, shift, out, discard);
        else
          OutputTile<false>(grid, first + t, products + t * o, products_step, slot, o, shift, out, discard);
      }
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jaxface Winograd conv: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxfaceConvPackWeights, PackWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("key")
                                  .Attr<int64_t>("block"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxfaceConvForward, Forward, CONV_BINDING(ffi::AnyBuffer));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxfaceConvBiasReluForward, ForwardBiasRelu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxfaceConvBackwardData, BackwardData,
                              CONV_BINDING(ffi::AnyBuffer));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxfaceConvBackwardWeights, BackwardWeights,
                              CONV_BINDING(ffi::Buffer<ffi::F32>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxfaceConvWinogradKernel, WinogradKernel,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxfaceConvWinograd, Winograd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("relu")
                                  .Attr<bool>("input_gradient"));

// The packed block size for a problem (Key order above), for callers that pack weights once:
// 0 when its layout is not one BlockOf describes (pass plain weights), -1 when oneDNN rejects it.
extern "C" int64_t JaxfaceConvWeightsBlock(const int64_t* key) {
  Key k;
  for (int i = 0; i < 16; ++i) k[i] = key[i];
  try {
    return BlockOf(*GetPlan(k), k[0]);
  } catch (const dnnl::error&) {
    return -1;
  }
}

extern "C" int64_t JaxfaceOneDnnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
