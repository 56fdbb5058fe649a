// oneDNN 2-D convolutions as XLA FFI handlers: forward (plain, or with bias and ReLU applied by the
// kernel), backward data, backward weights, and the packing of weights into oneDNN's layouts.
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
};

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
                                                    pad_l, pad_r);
  if (k[0] == kForward) {
    plan->primitive = dnnl::convolution_forward(forward);
    plan->weights = forward.weights_desc();
  } else if (k[0] == kForwardBiasRelu) {
    dnnl::post_ops relu;
    relu.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(relu);
    dnnl::convolution_forward::primitive_desc fused(
        Engine(), dnnl::prop_kind::forward_training, algorithm, src, any_weights,
        dnnl::memory::desc({o}, dt::f32, tag::a), dst, strides, pad_l, pad_r, attr);
    plan->primitive = dnnl::convolution_forward(fused);
    plan->weights = fused.weights_desc();
  } else if (k[0] == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc backward(
        Engine(), algorithm, src, any_weights, dst, strides, pad_l, pad_r, forward);
    plan->primitive = dnnl::convolution_backward_data(backward);
    plan->weights = backward.weights_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc backward(
        Engine(), algorithm, src, any_weights, dst, strides, pad_l, pad_r, forward);
    plan->primitive = dnnl::convolution_backward_weights(backward);
    plan->weights = backward.diff_weights_desc();
  }
  plan->reorder = plan->weights != plan->user_weights;
  if (plan->reorder) {
    const bool to_user = k[0] == kBackwardWeights;
    plan->weights_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
        Engine(), to_user ? plan->weights : plan->user_weights, Engine(),
        to_user ? plan->user_weights : plan->weights));
  }
  return plan;
}

// Primitives are immutable and thread-safe to execute, so one per problem serves every caller.
std::shared_ptr<Plan> GetPlan(const Key& k) {
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<Plan>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  auto plan = MakePlan(k);
  cache.emplace(k, plan);
  return plan;
}

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
    if (reorder && kind != kBackwardWeights) plan->weights_reorder.execute(stream, given, used);
    if (kind == kForward) {
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, in_memory},
                                       {DNNL_ARG_WEIGHTS, used},
                                       {DNNL_ARG_DST, out_memory}});
    } else if (kind == kForwardBiasRelu) {
      dnnl::memory bias_memory({{key[7]}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::a},
                               Engine(), bias);
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, in_memory},
                                       {DNNL_ARG_WEIGHTS, used},
                                       {DNNL_ARG_BIAS, bias_memory},
                                       {DNNL_ARG_DST, out_memory}});
    } else if (kind == kBackwardData) {
      plan->primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, in_memory},
                                       {DNNL_ARG_WEIGHTS, used},
                                       {DNNL_ARG_DIFF_DST, out_memory}});
    } else {
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, in_memory},
                                       {DNNL_ARG_DIFF_WEIGHTS, used},
                                       {DNNL_ARG_DIFF_DST, out_memory}});
      if (reorder) plan->weights_reorder.execute(stream, used, given);
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
