// The interface between csrc/bn_gelu.cpp (libtorch, autograd, threads) and the loops of csrc/bn_gelu_kernels.cpp
// (one build per instruction set). Plain C types only: see bn_gelu_kernels.cpp for why.
#pragma once

#include <cstdint>

// How a float tensor [N, C, H, W] lies in memory, and how it is cut into blocks.
struct Geometry {
    bool channels_last;   // NHWC rows of `channels`, else NCHW planes
    int64_t channels;     // C
    int64_t rows;         // channels-last: N * H * W
    int64_t block_rows;   // channels-last: rows per block
    int64_t plane;        // contiguous: H * W (a block is one sample)
    int64_t blocks;
};

// Every function works on blocks [b0, b1); sums go to partial[block * C + c].
struct BnGeluKernels {
    // sum of x
    void (*sum_x)(const Geometry *g, const float *x, int64_t b0, int64_t b1, double *partial);
    // sum of (x - mean)^2
    void (*sum_squared_deviation)(const Geometry *g, const float *x, const float *mean, int64_t b0, int64_t b1,
                                  double *partial);
    // y = GELU(x * scale + shift)
    void (*norm_gelu)(const Geometry *g, const float *x, const float *scale, const float *shift, float *y,
                      int64_t b0, int64_t b1);
    // dz = dy * GELU'(x * scale + shift); sums of dz and of dz * (x - mean)
    void (*gelu_grad_sums)(const Geometry *g, const float *x, const float *dy, const float *scale,
                           const float *shift, const float *mean, float *dz, int64_t b0, int64_t b1,
                           double *partial_dz, double *partial_dz_dev);
    // out = k * a + p * (x - m) + r (out may alias a)
    void (*affine2)(const Geometry *g, const float *a, const float *x, const float *m, const float *k,
                    const float *p, const float *r, float *out, int64_t b0, int64_t b1);
};

extern "C" const BnGeluKernels *diffuse_bn_gelu_avx512();
extern "C" const BnGeluKernels *diffuse_bn_gelu_avx2();
extern "C" const BnGeluKernels *diffuse_bn_gelu_scalar();
