// What tch 0.24 does not expose, called from src/runtime/precision.rs, src/runtime/layout.rs, src/runtime/tuning.rs
// and src/train/optim.rs:
// - libtorch's autocast, which tch only offers for CUDA fp16. Enabling sets the autocast dtype and turns it on for
//   the device type; disabling turns it off and drops autocast's cache of down-cast weights (stale after an
//   optimizer step).
// - the channels-last memory format, which makes oneDNN convolutions markedly faster on CPU, bf16 above all.
// - the engine's version and the CPU kernels ATen dispatches to, which key the cached tuning measurement.
// - oneDNN's convolution with GELU as a post-op (src/runtime/conv_gelu.rs), which ATen registers for Inductor only.
#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/GradMode.h>
#include <torch/headeronly/version.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

thread_local std::string conv_gelu_error;

// One of ATen's oneDNN fusion ops, if this libtorch has it (builds without oneDNN register none).
std::optional<c10::OperatorHandle> mkldnn_op(const char *name) {
    return c10::Dispatcher::singleton().findSchema({name, ""});
}

// Whether oneDNN runs bf16 convolutions on this CPU, by ATen's own test (mkldnn::_is_mkldnn_bf16_supported): false
// where bf16 is only emulated (AVX2, or ONEDNN_MAX_CPU_ISA below AVX-512), where ATen's fusion ops refuse bf16.
bool onednn_runs_bf16() {
    static const bool supported = [] {
        const auto op = mkldnn_op("mkldnn::_is_mkldnn_bf16_supported");
        if (!op) {
            return false;
        }
        torch::jit::Stack stack;
        op->callBoxed(&stack);
        return stack.at(0).toBool();
    }();
    return supported;
}

}  // namespace

extern "C" {

void diffuse_autocast_set(int cuda, int enabled, int bf16) {
    const at::DeviceType device = cuda ? at::kCUDA : at::kCPU;
    if (enabled) {
        at::autocast::set_autocast_dtype(device, bf16 ? at::kBFloat16 : at::kHalf);
        at::autocast::set_autocast_enabled(device, true);
    } else {
        at::autocast::set_autocast_enabled(device, false);
        at::autocast::clear_cache();
    }
}

// The engine that runs the kernels, e.g. "libtorch 2.11.0, ATen CPU kernels AVX512": the version this was built
// against and the instruction set ATen dispatches to at run time (ATEN_CPU_CAPABILITY can lower it). Writes at most
// `capacity` bytes including the terminating NUL; returns the full length.
int diffuse_engine(char *out, int capacity) {
    const std::string text =
        std::string("libtorch ") + TORCH_VERSION + ", ATen CPU kernels " + at::get_cpu_capability();
    if (capacity > 0) {
        const size_t n = std::min(text.size(), static_cast<size_t>(capacity - 1));
        std::memcpy(out, text.data(), n);
        out[n] = '\0';
    }
    return static_cast<int>(text.size());
}

int diffuse_autocast_is_enabled(int cuda) {
    return at::autocast::is_autocast_enabled(cuda ? at::kCUDA : at::kCPU) ? 1 : 0;
}

// A new tensor handle with the same values in channels-last layout (4-D tensors only; others are copied as is).
void *diffuse_channels_last(void *tensor) {
    const at::Tensor &t = *static_cast<at::Tensor *>(tensor);
    if (t.dim() != 4) {
        return new at::Tensor(t);
    }
    return new at::Tensor(t.contiguous(at::MemoryFormat::ChannelsLast));
}

// Re-lays a 4-D variable (e.g. a conv weight) out in channels-last memory, in place: the same variable, with the
// same autograd identity, now backed by channels-last storage.
void diffuse_make_channels_last(void *tensor) {
    at::Tensor &t = *static_cast<at::Tensor *>(tensor);
    if (t.dim() == 4) {
        t.set_data(t.detach().contiguous(at::MemoryFormat::ChannelsLast));
    }
}

int diffuse_is_channels_last(void *tensor) {
    const at::Tensor &t = *static_cast<at::Tensor *>(tensor);
    return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
}

// ATen's own reading of a tensor's layout (suggest_memory_format), which a convolution uses to pick its output's
// layout: unlike is_contiguous, it tells the two apart for shapes where both hold (one channel, 1x1 images).
int diffuse_suggests_channels_last(void *tensor) {
    const at::Tensor &t = *static_cast<at::Tensor *>(tensor);
    return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? 1 : 0;
}

// One Adam update of every parameter with ATen's fused kernel (a single multi-tensor launch on CUDA, one
// vectorised pass on CPU) instead of several elementwise ops per parameter. `steps` are float scalar tensors holding
// the completed step count; like torch.optim.Adam, they are incremented here before the kernel reads them. Runs
// under no-grad: parameters are autograd leaves.
void diffuse_fused_adam(void **params, void **grads, void **exp_avgs, void **exp_avg_sqs, void **steps, int n,
                        double lr, double beta1, double beta2, double eps) {
    at::NoGradGuard no_grad;
    auto list = [n](void **handles) {
        std::vector<at::Tensor> out;
        out.reserve(n);
        for (int i = 0; i < n; ++i) {
            out.push_back(*static_cast<at::Tensor *>(handles[i]));
        }
        return out;
    };
    std::vector<at::Tensor> p = list(params), g = list(grads), m = list(exp_avgs), v = list(exp_avg_sqs),
                            s = list(steps);
    at::_foreach_add_(s, 1);
    at::_fused_adam_(p, g, m, v, {}, s, lr, beta1, beta2, /*weight_decay=*/0.0, eps, /*amsgrad=*/false,
                     /*maximize=*/false);
}

// GELU(conv(x, weight) + bias), or of the transposed convolution (weight [in, out, k, k]), with stride and padding
// the same along both axes, and GELU (exact, erf) applied by oneDNN inside the convolution as a post-op instead of
// a separate pass over the output. Inference only: ATen registers no gradient for these ops. Under CPU bf16 autocast
// it does what autocast does for a convolution (x, weight and bias cast to bf16, a bf16 result; the op has no autocast
// kernel of its own), with GELU applied before the result is rounded to bf16. Returns 1 and a new tensor handle in
// *out; 0 where it does not apply (not a 4-D CPU fp32 input, or a bf16 one under bf16 autocast; autograd recording;
// another autocast type; bf16 where oneDNN does not run it; a libtorch without the op), and the caller runs ATen's
// convolution and GELU; -1 on an error, described by diffuse_conv_gelu_error().
int diffuse_conv_gelu(void *x_handle, void *weight_handle, void *bias_handle, int64_t stride, int64_t padding,
                      int transposed, void **out) {
    try {
        const at::Tensor &x_in = *static_cast<at::Tensor *>(x_handle);
        const at::Tensor &weight_in = *static_cast<at::Tensor *>(weight_handle);
        const std::optional<at::Tensor> bias_in =
            bias_handle ? std::optional<at::Tensor>(*static_cast<at::Tensor *>(bias_handle)) : std::nullopt;
        const bool recording = c10::GradMode::is_enabled() && (x_in.requires_grad() || weight_in.requires_grad() ||
                                                               (bias_in && bias_in->requires_grad()));
        const bool bf16 = at::autocast::is_autocast_enabled(at::kCPU);
        if (bf16 && (at::autocast::get_autocast_dtype(at::kCPU) != at::kBFloat16 || !onednn_runs_bf16())) {
            return 0;
        }
        const at::ScalarType type = bf16 ? at::kBFloat16 : at::kFloat;
        if (!x_in.defined() || !x_in.device().is_cpu() || x_in.dim() != 4 || weight_in.scalar_type() != at::kFloat ||
            !(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == type) || recording) {
            return 0;
        }
        const at::Tensor x = x_in.to(type), weight = weight_in.to(type);
        const std::optional<at::Tensor> bias = bias_in ? std::optional<at::Tensor>(bias_in->to(type)) : std::nullopt;
        static const auto convolution = mkldnn_op("mkldnn::_convolution_pointwise");
        static const auto transposed_convolution = mkldnn_op("mkldnn::_convolution_transpose_pointwise");
        const auto &op = transposed ? transposed_convolution : convolution;
        if (!op) {
            return 0;
        }
        const std::vector<int64_t> strides{stride, stride}, paddings{padding, padding}, ones{1, 1}, zeros{0, 0};
        const c10::List<std::optional<at::Scalar>> no_scalars;
        // The ops' schemas: (X, W, B, padding, [output_padding,] stride, dilation, groups, attr, scalars, algorithm).
        torch::jit::Stack stack{x, weight, bias, paddings};
        if (transposed) {
            stack.emplace_back(zeros);
        }
        for (c10::IValue v : {c10::IValue(strides), c10::IValue(ones), c10::IValue(int64_t{1}),
                              c10::IValue(std::string("gelu")), c10::IValue(no_scalars),
                              c10::IValue(std::string("none"))}) {
            stack.push_back(std::move(v));
        }
        op->callBoxed(&stack);
        *out = new at::Tensor(stack.at(0).toTensor());
        return 1;
    } catch (const std::exception &e) {
        conv_gelu_error = e.what();
        return -1;
    }
}

const char *diffuse_conv_gelu_error() { return conv_gelu_error.c_str(); }

// 1 when diffuse_conv_gelu applies under bf16 autocast on this CPU (oneDNN runs bf16 here), else 0.
int diffuse_conv_gelu_bf16() { return onednn_runs_bf16() ? 1 : 0; }

}
