// Mixed-precision switch for libtorch's autocast, which tch 0.24 only exposes for CUDA fp16.
// Called from src/precision.rs. Enabling sets the autocast dtype and turns it on for the given device type;
// disabling turns it off and drops autocast's cache of down-cast weights (they go stale after an optimizer step).
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

}
