// What tch 0.24 does not expose, called from src/precision.rs:
// - libtorch's autocast, which tch only offers for CUDA fp16. Enabling sets the autocast dtype and turns it on for
//   the device type; disabling turns it off and drops autocast's cache of down-cast weights (stale after an
//   optimizer step).
// - the channels-last memory format, which makes oneDNN convolutions markedly faster on CPU, bf16 above all.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

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

}
