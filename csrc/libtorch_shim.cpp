// What tch 0.24 does not expose, called from src/runtime/precision.rs, src/runtime/layout.rs, src/runtime/tuning.rs
// and src/train/optim.rs:
// - libtorch's autocast, which tch only offers for CUDA fp16. Enabling sets the autocast dtype and turns it on for
//   the device type; disabling turns it off and drops autocast's cache of down-cast weights (stale after an
//   optimizer step).
// - the channels-last memory format, which makes oneDNN convolutions markedly faster on CPU, bf16 above all.
// - the engine's version and the CPU kernels ATen dispatches to, which key the cached tuning measurement.
#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <ATen/autocast_mode.h>
#include <torch/headeronly/version.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

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

}
