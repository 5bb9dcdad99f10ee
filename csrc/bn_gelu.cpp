// BatchNorm2d (training mode) followed by GELU as one autograd op on the CPU, for fp32 tensors and for the bf16
// tensors that convolutions return under bf16 autocast (computed in float, stored in bf16), called from
// src/model/blocks.rs.
//
// Why: in the UNet every convolution is followed by BatchNorm and GELU, and ATen runs them as four memory-bound
// passes forward (two for the batch statistics, one to normalise, one for GELU) and five backward, storing the
// normalised tensor for GELU's backward. About a fifth of a CPU training step went there. Fused:
// - forward: two passes for the statistics, one that normalises and applies GELU (no normalised tensor stored);
// - backward: one pass computes dz = dy * GELU'(z) with the per-channel sums BatchNorm's gradient needs, one more
//   turns dz into dx in place.
// The math is BatchNorm's (biased variance for normalising, unbiased for the running variance, the running
// statistics updated with `momentum`) and exact GELU, z * Phi(z). The preceding convolution's bias may be left out
// of x and passed here instead: BatchNorm subtracts the batch mean, so a per-channel constant cancels from its output
// (its gradient is zero in exact arithmetic) and shows only in the running mean, where it is added. That spares the
// convolution's bias gradient (oneDNN computes it for transposed convolutions with a slow reference loop). In fp32
// the results match ATen's two ops to float rounding; in bf16 the output is rounded to bf16 once (ATen also rounds
// the normalised tensor between its two ops) and dx twice, as dz and as dx, as in ATen's path. They do not depend on
// the thread count (per-block sums reduced in block order).
#include "bn_gelu_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <string>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The loops built for the instruction set ATen dispatches its own kernels to (ATEN_CPU_CAPABILITY lowers both), for
// x's element type (float or bf16).
const BnGeluKernels &kernels(const at::Tensor &x) {
    using Table = const BnGeluKernels *(*)(int);
    static const Table chosen = [] {
#if defined(__x86_64__)
        const std::string isa = at::get_cpu_capability();
        if (isa == "AVX512") return &diffuse_bn_gelu_avx512;
        if (isa == "AVX2") return &diffuse_bn_gelu_avx2;
#endif
        return &diffuse_bn_gelu_scalar;
    }();
    return *chosen(x.scalar_type() == at::kBFloat16 ? 1 : 0);
}

// Rows per block in channels-last: 128 rows of 64 channels are 32 KiB, which stays in L1/L2 across the passes over
// a block's channel groups.
constexpr int64_t kBlockRows = 128;

bool is_channels_last(const at::Tensor &x) {
    return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

Geometry geometry(const at::Tensor &x) {
    Geometry g{};
    g.channels_last = is_channels_last(x);
    g.channels = x.size(1);
    g.plane = x.size(2) * x.size(3);
    g.rows = x.size(0) * g.plane;
    g.block_rows = kBlockRows;
    g.blocks = g.channels_last ? (g.rows + kBlockRows - 1) / kBlockRows : x.size(0);
    return g;
}

// Runs f(b0, b1) over the blocks on libtorch's intra-op threads.
template <typename F>
void over_blocks(const Geometry &g, const F &f) {
    at::parallel_for(0, g.blocks, 1, [&](int64_t b0, int64_t b1) { f(b0, b1); });
}

// Adds up per-block partial sums [blocks, C] in block order.
std::vector<double> reduce(const Geometry &g, const std::vector<double> &partial) {
    std::vector<double> total(g.channels, 0.0);
    for (int64_t b = 0; b < g.blocks; ++b) {
        for (int64_t c = 0; c < g.channels; ++c) {
            total[c] += partial[b * g.channels + c];
        }
    }
    return total;
}

at::Tensor floats(const std::vector<double> &values) {
    at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::kFloat);
    float *p = t.data_ptr<float>();
    for (size_t i = 0; i < values.size(); ++i) {
        p[i] = static_cast<float>(values[i]);
    }
    return t;
}

std::vector<double> doubles(const at::Tensor &t) {
    const at::Tensor c = t.contiguous();
    const float *p = c.data_ptr<float>();
    return std::vector<double>(p, p + c.numel());
}

struct BnGelu : public torch::autograd::Function<BnGelu> {
    // x [N, C, H, W] -> GELU(BatchNorm(x)) [N, C, H, W], same layout.
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &gamma,
                              const at::Tensor &beta, const at::Tensor &running_mean,
                              const at::Tensor &running_var, const at::Tensor &conv_bias, double momentum,
                              double eps) {
        const Geometry g = geometry(x);
        const BnGeluKernels &k = kernels(x);
        const void *xp = x.const_data_ptr();
        const int64_t c_count = g.channels;
        const double count = static_cast<double>(g.rows);

        // 1. mean_c = sum x / M; var_c = sum (x - mean_c)^2 / M (two passes: no cancellation).
        std::vector<double> partial(g.blocks * c_count);
        over_blocks(g, [&](int64_t b0, int64_t b1) { k.sum_x(&g, xp, b0, b1, partial.data()); });
        std::vector<double> mean = reduce(g, partial);
        for (double &m : mean) m /= count;
        const at::Tensor mean_f = floats(mean);
        over_blocks(g, [&](int64_t b0, int64_t b1) {
            k.sum_squared_deviation(&g, xp, mean_f.data_ptr<float>(), b0, b1, partial.data());
        });
        std::vector<double> var = reduce(g, partial);
        for (double &v : var) v /= count;

        // 2. z = x * scale + shift with scale = gamma / sqrt(var + eps), shift = beta - mean * scale; y = GELU(z).
        const std::vector<double> gamma_d = doubles(gamma), beta_d = doubles(beta);
        std::vector<double> invstd(c_count), scale(c_count), shift(c_count);
        for (int64_t c = 0; c < c_count; ++c) {
            invstd[c] = 1.0 / std::sqrt(var[c] + eps);
            scale[c] = gamma_d[c] * invstd[c];
            shift[c] = beta_d[c] - mean[c] * scale[c];
        }
        const at::Tensor scale_f = floats(scale), shift_f = floats(shift);
        at::Tensor y = at::empty_like(x);
        over_blocks(g, [&](int64_t b0, int64_t b1) {
            k.norm_gelu(&g, xp, scale_f.data_ptr<float>(), shift_f.data_ptr<float>(), y.data_ptr(), b0, b1);
        });

        // 3. running = (1 - momentum) * running + momentum * batch, with the unbiased variance; the batch mean of
        //    the convolution's output includes its bias.
        float *rm = running_mean.data_ptr<float>();
        float *rv = running_var.data_ptr<float>();
        const double unbias = count > 1.0 ? count / (count - 1.0) : 1.0;
        const std::vector<double> bias = doubles(conv_bias);
        for (int64_t c = 0; c < c_count; ++c) {
            rm[c] = static_cast<float>((1.0 - momentum) * rm[c] + momentum * (mean[c] + bias[c]));
            rv[c] = static_cast<float>((1.0 - momentum) * rv[c] + momentum * var[c] * unbias);
        }

        ctx->save_for_backward({x, gamma});
        ctx->saved_data["mean"] = mean_f;
        ctx->saved_data["invstd"] = floats(invstd);
        ctx->saved_data["scale"] = scale_f;
        ctx->saved_data["shift"] = shift_f;
        return y;
    }

    // dy [N, C, H, W] -> (dx, dgamma [C], dbeta [C]).
    static tensor_list backward(AutogradContext *ctx, tensor_list grad_outputs) {
        const auto saved = ctx->get_saved_variables();
        const at::Tensor &x = saved[0];
        const std::vector<double> gamma = doubles(saved[1]);
        const at::Tensor mean_f = ctx->saved_data["mean"].toTensor();
        const at::Tensor scale_f = ctx->saved_data["scale"].toTensor();
        const at::Tensor shift_f = ctx->saved_data["shift"].toTensor();
        const std::vector<double> invstd = doubles(ctx->saved_data["invstd"].toTensor());
        const Geometry g = geometry(x);
        const BnGeluKernels &k = kernels(x);
        const int64_t c_count = g.channels;
        const double count = static_cast<double>(g.rows);
        // The incoming gradient in x's type and layout (it may arrive in another layout, e.g. from a
        // concatenation's backward).
        const at::Tensor dy = grad_outputs[0]
                                  .to(x.scalar_type())
                                  .contiguous(g.channels_last ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous);

        // 1. dz = dy * GELU'(z) into dx's buffer, with sum dz and sum dz * (x - mean) per channel.
        at::Tensor dx = at::empty_like(x);
        std::vector<double> partial_dz(g.blocks * c_count), partial_dz_dev(g.blocks * c_count);
        over_blocks(g, [&](int64_t b0, int64_t b1) {
            k.gelu_grad_sums(&g, x.const_data_ptr(), dy.const_data_ptr(), scale_f.data_ptr<float>(),
                             shift_f.data_ptr<float>(), mean_f.data_ptr<float>(), dx.data_ptr(), b0, b1,
                             partial_dz.data(), partial_dz_dev.data());
        });
        const std::vector<double> sum_dz = reduce(g, partial_dz), sum_dz_dev = reduce(g, partial_dz_dev);

        // 2. With x_hat = (x - mean) * invstd: dgamma = sum dz * x_hat, dbeta = sum dz, and
        //    dx = gamma * invstd * (dz - mean(dz) - x_hat * mean(dz * x_hat))
        //       = k * dz + p * (x - mean) + r, k = gamma * invstd, p = -k * invstd^2 * mean(dz * (x - mean)),
        //       r = -k * mean(dz).
        std::vector<double> dgamma(c_count), kk(c_count), pp(c_count), rr(c_count);
        for (int64_t c = 0; c < c_count; ++c) {
            dgamma[c] = sum_dz_dev[c] * invstd[c];
            kk[c] = gamma[c] * invstd[c];
            pp[c] = -kk[c] * invstd[c] * invstd[c] * sum_dz_dev[c] / count;
            rr[c] = -kk[c] * sum_dz[c] / count;
        }
        const at::Tensor k_f = floats(kk), p_f = floats(pp), r_f = floats(rr);
        over_blocks(g, [&](int64_t b0, int64_t b1) {
            k.affine2(&g, dx.const_data_ptr(), x.const_data_ptr(), mean_f.data_ptr<float>(), k_f.data_ptr<float>(),
                      p_f.data_ptr<float>(), r_f.data_ptr<float>(), dx.data_ptr(), b0, b1);
        });
        return {dx,           floats(dgamma), floats(sum_dz), at::Tensor(),
                at::Tensor(), at::Tensor(),     at::Tensor(),   at::Tensor()};
    }
};

bool is_float_vector(const at::Tensor &t, int64_t n) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == n &&
           t.is_contiguous();
}

thread_local std::string last_error;

}  // namespace

extern "C" {

// GELU(BatchNorm2d(x + conv_bias)) in training mode, as one autograd op; updates the running statistics in place.
// conv_bias may be null (none), and gets no gradient (it has none: see the top of this file). Returns 1 and a new
// tensor handle in *out; 0 when the fused op does not apply (not a CPU fp32 or bf16 4-D tensor in NCHW or NHWC
// memory, fewer than two values per channel, or other parameters than fp32 vectors), so the caller runs ATen's ops;
// -1 on an internal error, described by diffuse_bn_gelu_error().
int diffuse_bn_gelu_train(void *x_handle, void *gamma_handle, void *beta_handle, void *running_mean_handle,
                          void *running_var_handle, void *conv_bias_handle, double momentum, double eps, void **out) {
    try {
        const at::Tensor &x = *static_cast<at::Tensor *>(x_handle);
        const at::Tensor &gamma = *static_cast<at::Tensor *>(gamma_handle);
        const at::Tensor &beta = *static_cast<at::Tensor *>(beta_handle);
        const at::Tensor &running_mean = *static_cast<at::Tensor *>(running_mean_handle);
        const at::Tensor &running_var = *static_cast<at::Tensor *>(running_var_handle);
        // (autograd functions take no undefined tensors: no bias is a zero bias)
        const at::Tensor conv_bias = conv_bias_handle ? static_cast<at::Tensor *>(conv_bias_handle)->detach()
                                                      : at::zeros({x.dim() == 4 ? x.size(1) : 0}, at::kFloat);
        if (!x.defined() || !x.device().is_cpu() ||
            (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) || x.dim() != 4 ||
            !(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast))) {
            return 0;
        }
        const int64_t channels = x.size(1);
        if (x.size(0) * x.size(2) * x.size(3) < 2 || !is_float_vector(gamma, channels) ||
            !is_float_vector(beta, channels) || !is_float_vector(running_mean, channels) ||
            !is_float_vector(running_var, channels) || !is_float_vector(conv_bias, channels)) {
            return 0;
        }
        *out = new at::Tensor(BnGelu::apply(x, gamma, beta, running_mean, running_var, conv_bias, momentum, eps));
        return 1;
    } catch (const std::exception &e) {
        last_error = e.what();
        return -1;
    }
}

const char *diffuse_bn_gelu_error() { return last_error.c_str(); }

}
