// The interface between csrc/bn_gelu.cpp (libtorch, autograd, threads) and the loops of csrc/bn_gelu_kernels.cpp
// (one build per instruction set). Plain C types only: see bn_gelu_kernels.cpp for why.
#pragma once

#include <cstdint>

// How a tensor [N, C, H, W] lies in memory, and how it is cut into blocks.
struct Geometry {
    bool channels_last;   // NHWC rows of `channels`, else NCHW planes
    int64_t channels;     // C
    int64_t rows;         // channels-last: N * H * W
    int64_t block_rows;   // channels-last: rows per block
    int64_t plane;        // contiguous: H * W (a block is one sample)
    int64_t blocks;
};

// Every function works on blocks [b0, b1); sums go to partial[block * C + c]. The tensors (x, dy, y, dz, a, out)
// hold the table's element type: float, or bf16 (its 16 bits; read as float, computed in float and rounded to
// nearest even when stored). Per-channel parameters and sums are float and double in both.
struct BnGeluKernels {
    // sum of x
    void (*sum_x)(const Geometry *g, const void *x, int64_t b0, int64_t b1, double *partial);
    // sum of (x - mean)^2
    void (*sum_squared_deviation)(const Geometry *g, const void *x, const float *mean, int64_t b0, int64_t b1,
                                  double *partial);
    // y = GELU(x * scale + shift)
    void (*norm_gelu)(const Geometry *g, const void *x, const float *scale, const float *shift, void *y, int64_t b0,
                      int64_t b1);
    // dz = dy * GELU'(x * scale + shift); sums of dz and of dz * (x - mean)
    void (*gelu_grad_sums)(const Geometry *g, const void *x, const void *dy, const float *scale, const float *shift,
                           const float *mean, void *dz, int64_t b0, int64_t b1, double *partial_dz,
                           double *partial_dz_dev);
    // out = k * a + p * (x - m) + r (out may alias a)
    void (*affine2)(const Geometry *g, const void *a, const void *x, const float *m, const float *k, const float *p,
                    const float *r, void *out, int64_t b0, int64_t b1);
};

// The loops for float tensors (bf16 == 0) or bf16 tensors (bf16 != 0).
extern "C" const BnGeluKernels *diffuse_bn_gelu_avx512(int bf16);
extern "C" const BnGeluKernels *diffuse_bn_gelu_avx2(int bf16);
extern "C" const BnGeluKernels *diffuse_bn_gelu_scalar(int bf16);
