// The loops of the fused BatchNorm + GELU training op (csrc/bn_gelu.cpp), compiled once per instruction set:
// build.rs builds this file three times, with DIFFUSE_ISA_AVX512 (-mavx512f ...), DIFFUSE_ISA_AVX2 (-mavx2 -mfma)
// and with neither (scalar), and csrc/bn_gelu.cpp picks the table that matches the kernels ATen itself dispatches
// to (so ATEN_CPU_CAPABILITY lowers both alike).
//
// This file includes no libtorch and no C++ library templates on purpose: everything here is compiled with the
// instruction set's flags, and an inline function shared with other files could otherwise be linked in its
// AVX-512 form and run on a CPU without it. Everything but the one exported table has internal linkage.
//
// The tensor x is seen in one of two shapes (Geometry):
// - channels-last: rows of C channels, `rows` = N*H*W of them; a block is `block_rows` consecutive rows;
// - contiguous: N samples of C planes of `plane` = H*W values; a block is one sample.
// Per-channel sums are computed per block (float lanes, then double) and written to partial[block * C + c], so
// the caller's reduction over blocks, done in block order, does not depend on how blocks were shared among threads.
// Every loop is built twice, for float tensors and for bf16 tensors (T = uint16_t, the bf16 bits): a bf16 value is
// read as the float with those upper 16 bits, everything is computed in float, and stores round to the nearest bf16
// (ties to even, NaN kept NaN), as c10::BFloat16 does. Integer operations only, so the AVX-512 build needs no
// AVX512-BF16 and bf16 tensors also work where bf16 is emulated.
#include "bn_gelu_kernels.h"

#include <cmath>
#include <cstdint>

#if defined(DIFFUSE_ISA_AVX512) || defined(DIFFUSE_ISA_AVX2)
#include <immintrin.h>
#endif

// The loops below call small vector helpers per element; forced inlining keeps their vectors in registers.
#define DIFFUSE_INLINE inline __attribute__((always_inline))

namespace {

// exp(x) = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], e^r by Cephes' expf polynomial
// (about 1 ULP); x is clamped to [-87.3, 88.7] so 2^n stays a normal float (exp(-87.3) = 1.2e-38 stands for
// anything smaller). Kept in registers: a call into SLEEF's exp (what ATen's vectorised erf does) spills every
// vector register around it and made these loops 1.5-2x slower than oneDNN's GELU.
template <typename V>
DIFFUSE_INLINE V exp_polynomial(V x) {
    x = x.max(V::splat(-87.3f)).min(V::splat(88.7f));
    const V n = (x * V::splat(1.44269504088896341f)).round();
    const V r = x - n * V::splat(0.693359375f) - n * V::splat(-2.12194440e-4f);
    V p = V::splat(1.9875691500e-4f);
    p = p * r + V::splat(1.3981999507e-3f);
    p = p * r + V::splat(8.3334519073e-3f);
    p = p * r + V::splat(4.1665795894e-2f);
    p = p * r + V::splat(1.6666665459e-1f);
    p = p * r + V::splat(5.0000001201e-1f);
    p = p * r * r + r + V::splat(1.0f);
    return p.times_pow2(n);
}

// erf(x) for |x| by Abramowitz and Stegun 7.1.26 (absolute error under 1.5e-7), the sign restored: the formula
// ATen's own vectorised erf, and so its GELU, uses. Takes e = exp(-x^2), which GELU's derivative shares.
template <typename V>
DIFFUSE_INLINE V erf_given_exp(V x, V e) {
    const V one = V::splat(1.0f);
    const V t = (V::splat(0.3275911f) * x.abs() + one).reciprocal();
    V r = V::splat(1.061405429f);
    r = r * t + V::splat(-1.453152027f);
    r = r * t + V::splat(1.421413741f);
    r = r * t + V::splat(-0.284496736f);
    r = r * t + V::splat(0.254829592f);
    return (one - r * t * e).sign_of(x);
}

template <typename V>
DIFFUSE_INLINE V erf_polynomial(V x) {
    return erf_given_exp(x, exp_polynomial(V::splat(0.0f) - x * x));
}

// One float: the tails that do not fill a vector, and the whole work of the build without vector instructions; the
// same formulas with the C library's exp and erf.
struct Scalar {
    static constexpr int64_t width = 1;
    float v;
    DIFFUSE_INLINE static Scalar load(const float *p) { return {*p}; }
    DIFFUSE_INLINE static Scalar load(const uint16_t *p) {
        const uint32_t bits = static_cast<uint32_t>(*p) << 16;
        float x;
        __builtin_memcpy(&x, &bits, sizeof x);
        return {x};
    }
    DIFFUSE_INLINE static Scalar splat(float x) { return {x}; }
    DIFFUSE_INLINE void store(float *p) const { *p = v; }
    DIFFUSE_INLINE void store(uint16_t *p) const {
        uint32_t bits;
        __builtin_memcpy(&bits, &v, sizeof bits);
        *p = v != v ? uint16_t{0x7FC0} : static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }
    DIFFUSE_INLINE Scalar operator+(Scalar o) const { return {v + o.v}; }
    DIFFUSE_INLINE Scalar operator-(Scalar o) const { return {v - o.v}; }
    DIFFUSE_INLINE Scalar operator*(Scalar o) const { return {v * o.v}; }
    DIFFUSE_INLINE Scalar abs() const { return {std::fabs(v)}; }
    DIFFUSE_INLINE Scalar sign_of(Scalar o) const { return {std::copysign(v, o.v)}; }
    DIFFUSE_INLINE Scalar reciprocal() const { return {1.0f / v}; }
    DIFFUSE_INLINE Scalar exp() const { return {std::exp(v)}; }
    DIFFUSE_INLINE Scalar erf() const { return {std::erf(v)}; }
};

#if defined(DIFFUSE_ISA_AVX512)
struct Vec {
    static constexpr int64_t width = 16;
    __m512 v;
    DIFFUSE_INLINE static Vec load(const float *p) { return {_mm512_loadu_ps(p)}; }
    DIFFUSE_INLINE static Vec load(const uint16_t *p) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
        return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
    }
    DIFFUSE_INLINE static Vec splat(float x) { return {_mm512_set1_ps(x)}; }
    DIFFUSE_INLINE void store(float *p) const { _mm512_storeu_ps(p, v); }
    DIFFUSE_INLINE void store(uint16_t *p) const {
        const __m512i bits = _mm512_castps_si512(v);
        const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        const __m512i bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF));
        __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
        rounded = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), rounded, _mm512_set1_epi32(0x7FC0));
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(p), _mm512_cvtepi32_epi16(rounded));
    }
    DIFFUSE_INLINE Vec operator+(Vec o) const { return {_mm512_add_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec operator-(Vec o) const { return {_mm512_sub_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec operator*(Vec o) const { return {_mm512_mul_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec abs() const { return {_mm512_abs_ps(v)}; }
    DIFFUSE_INLINE Vec sign_of(Vec o) const { return {_mm512_or_ps(v, _mm512_and_ps(o.v, _mm512_set1_ps(-0.0f)))}; }
    DIFFUSE_INLINE Vec max(Vec o) const { return {_mm512_max_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec min(Vec o) const { return {_mm512_min_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec round() const {
        return {_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
    }
    DIFFUSE_INLINE Vec times_pow2(Vec n) const { return {_mm512_scalef_ps(v, n.v)}; }
    // 1/v: a 14-bit estimate and one Newton step (about 2^-28 relative), cheaper than a division.
    DIFFUSE_INLINE Vec reciprocal() const {
        const __m512 r = _mm512_rcp14_ps(v);
        return {_mm512_mul_ps(r, _mm512_fnmadd_ps(v, r, _mm512_set1_ps(2.0f)))};
    }
    DIFFUSE_INLINE Vec exp() const { return exp_polynomial(*this); }
    DIFFUSE_INLINE Vec erf() const { return erf_polynomial(*this); }
};
#elif defined(DIFFUSE_ISA_AVX2)
struct Vec {
    static constexpr int64_t width = 8;
    __m256 v;
    DIFFUSE_INLINE static Vec load(const float *p) { return {_mm256_loadu_ps(p)}; }
    DIFFUSE_INLINE static Vec load(const uint16_t *p) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
        return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
    }
    DIFFUSE_INLINE static Vec splat(float x) { return {_mm256_set1_ps(x)}; }
    DIFFUSE_INLINE void store(float *p) const { _mm256_storeu_ps(p, v); }
    DIFFUSE_INLINE void store(uint16_t *p) const {
        const __m256i bits = _mm256_castps_si256(v);
        const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
        const __m256i bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
        __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
        const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
        // Each 32-bit lane holds a value below 2^16: packing with unsigned saturation keeps it as it is.
        const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(p), packed);
    }
    DIFFUSE_INLINE Vec operator+(Vec o) const { return {_mm256_add_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec operator-(Vec o) const { return {_mm256_sub_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec operator*(Vec o) const { return {_mm256_mul_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec abs() const { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v)}; }
    DIFFUSE_INLINE Vec sign_of(Vec o) const { return {_mm256_or_ps(v, _mm256_and_ps(o.v, _mm256_set1_ps(-0.0f)))}; }
    DIFFUSE_INLINE Vec max(Vec o) const { return {_mm256_max_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec min(Vec o) const { return {_mm256_min_ps(v, o.v)}; }
    DIFFUSE_INLINE Vec round() const { return {_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
    // 2^n for integral n in [-126, 127], built in the exponent field.
    DIFFUSE_INLINE Vec times_pow2(Vec n) const {
        const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
        return {_mm256_mul_ps(v, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)))};
    }
    // 1/v: a 12-bit estimate and one Newton step (about 2^-23 relative), cheaper than a division.
    DIFFUSE_INLINE Vec reciprocal() const {
        const __m256 r = _mm256_rcp_ps(v);
        return {_mm256_mul_ps(r, _mm256_fnmadd_ps(v, r, _mm256_set1_ps(2.0f)))};
    }
    DIFFUSE_INLINE Vec exp() const { return exp_polynomial(*this); }
    DIFFUSE_INLINE Vec erf() const { return erf_polynomial(*this); }
};
#else
using Vec = Scalar;
#endif

constexpr float kSqrtHalf = 0.70710678118654752440f;  // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1/sqrt(2 pi)

// GELU(z) = z * Phi(z), Phi(z) = (1 + erf(z / sqrt 2)) / 2: the exact form (PyTorch's approximate="none").
template <typename V>
DIFFUSE_INLINE V gelu(V z) {
    const V half = V::splat(0.5f), one = V::splat(1.0f);
    return z * half * (one + (z * V::splat(kSqrtHalf)).erf());
}

// GELU'(z) = Phi(z) + z * phi(z), phi(z) = exp(-z^2 / 2) / sqrt(2 pi); erf(z / sqrt 2) needs the same exponential.
template <typename V>
DIFFUSE_INLINE V gelu_derivative(V z) {
    const V half = V::splat(0.5f), one = V::splat(1.0f);
    const V x = z * V::splat(kSqrtHalf);
    const V e = (V::splat(0.0f) - x * x).exp();
    const V cdf = half * (one + erf_given_exp(x, e));
    return cdf + z * V::splat(kInvSqrt2Pi) * e;
}

// The per-element work of the sums, given a per-channel parameter (a vector over channels in channels-last, a
// splatted scalar in contiguous). Sums accumulate into float lanes `acc`.
struct SumX {
    template <typename V, typename T>
    DIFFUSE_INLINE static void step(const T *x, V, V &acc) { acc = acc + V::load(x); }
};
struct SumSquaredDeviation {  // the parameter is the mean
    template <typename V, typename T>
    DIFFUSE_INLINE static void step(const T *x, V mean, V &acc) {
        const V d = V::load(x) - mean;
        acc = acc + d * d;
    }
};

// Sums over rows [row0, row1) of a channels-last tensor, for the channels [c, c + V::width).
template <typename Op, typename V, typename T>
void column_sums(const Geometry &g, const T *x, V param, int64_t row0, int64_t row1, int64_t c, double *out) {
    V acc = V::splat(0.0f);
    for (int64_t r = row0; r < row1; ++r) {
        Op::step(x + r * g.channels + c, param, acc);
    }
    float lanes[V::width];
    acc.store(lanes);
    for (int64_t i = 0; i < V::width; ++i) {
        out[c + i] = lanes[i];
    }
}

// Walks one block of a channels-last tensor: for each group of channels, every row of the block.
template <typename Op, typename T>
void sums_channels_last(const Geometry &g, const T *x, const float *param, int64_t block, double *out) {
    const int64_t row0 = block * g.block_rows;
    const int64_t row1 = row0 + g.block_rows < g.rows ? row0 + g.block_rows : g.rows;
    int64_t c = 0;
    for (; c + Vec::width <= g.channels; c += Vec::width) {
        column_sums<Op>(g, x, param ? Vec::load(param + c) : Vec::splat(0.0f), row0, row1, c, out);
    }
    for (; c < g.channels; ++c) {
        column_sums<Op>(g, x, Scalar::splat(param ? param[c] : 0.0f), row0, row1, c, out);
    }
}

// Walks one sample of a contiguous tensor: for each channel, its plane.
template <typename Op, typename T>
void sums_contiguous(const Geometry &g, const T *x, const float *param, int64_t block, double *out) {
    for (int64_t c = 0; c < g.channels; ++c) {
        const T *plane = x + (block * g.channels + c) * g.plane;
        const float pc = param ? param[c] : 0.0f;
        Vec acc = Vec::splat(0.0f);
        int64_t s = 0;
        for (; s + Vec::width <= g.plane; s += Vec::width) {
            Op::step(plane + s, Vec::splat(pc), acc);
        }
        float lanes[Vec::width];
        acc.store(lanes);
        double sum = 0.0;
        for (int64_t i = 0; i < Vec::width; ++i) {
            sum += lanes[i];
        }
        Scalar tail{0.0f};
        for (; s < g.plane; ++s) {
            Op::step(plane + s, Scalar::splat(pc), tail);
        }
        out[c] = sum + tail.v;
    }
}

template <typename Op, typename T>
void sums(const Geometry &g, const T *x, const float *param, int64_t b0, int64_t b1, double *partial) {
    for (int64_t b = b0; b < b1; ++b) {
        if (g.channels_last) {
            sums_channels_last<Op>(g, x, param, b, partial + b * g.channels);
        } else {
            sums_contiguous<Op>(g, x, param, b, partial + b * g.channels);
        }
    }
}

template <typename T>
void sum_x(const Geometry *g, const void *x, int64_t b0, int64_t b1, double *partial) {
    sums<SumX>(*g, static_cast<const T *>(x), nullptr, b0, b1, partial);
}

template <typename T>
void sum_squared_deviation(const Geometry *g, const void *x, const float *mean, int64_t b0, int64_t b1,
                           double *partial) {
    sums<SumSquaredDeviation>(*g, static_cast<const T *>(x), mean, b0, b1, partial);
}

// Backward, first pass: dz = dy * GELU'(x * scale + shift), written to `dz`; sums of dz and of dz * (x - mean).
template <typename V, typename T>
DIFFUSE_INLINE void backward_element(const T *x, const T *dy, T *dz, V scale, V shift, V mean, V &sum_dz,
                      V &sum_dz_dev) {
    const V xv = V::load(x);
    const V d = V::load(dy) * gelu_derivative(xv * scale + shift);
    d.store(dz);
    sum_dz = sum_dz + d;
    sum_dz_dev = sum_dz_dev + d * (xv - mean);
}

template <typename T>
void gelu_grad_sums(const Geometry *gp, const void *x_, const void *dy_, const float *scale, const float *shift,
                    const float *mean, void *dz_, int64_t b0, int64_t b1, double *partial_dz,
                    double *partial_dz_dev) {
    const Geometry &g = *gp;
    const T *x = static_cast<const T *>(x_), *dy = static_cast<const T *>(dy_);
    T *dz = static_cast<T *>(dz_);
    const int64_t c_count = g.channels;
    for (int64_t b = b0; b < b1; ++b) {
        double *out0 = partial_dz + b * c_count;
        double *out1 = partial_dz_dev + b * c_count;
        if (g.channels_last) {
            const int64_t row0 = b * g.block_rows;
            const int64_t row1 = row0 + g.block_rows < g.rows ? row0 + g.block_rows : g.rows;
            int64_t c = 0;
            for (; c + Vec::width <= c_count; c += Vec::width) {
                const Vec sc = Vec::load(scale + c), sh = Vec::load(shift + c), mu = Vec::load(mean + c);
                Vec acc0 = Vec::splat(0.0f), acc1 = Vec::splat(0.0f);
                for (int64_t r = row0; r < row1; ++r) {
                    const int64_t at = r * c_count + c;
                    backward_element(x + at, dy + at, dz + at, sc, sh, mu, acc0, acc1);
                }
                float lanes0[Vec::width], lanes1[Vec::width];
                acc0.store(lanes0);
                acc1.store(lanes1);
                for (int64_t i = 0; i < Vec::width; ++i) {
                    out0[c + i] = lanes0[i];
                    out1[c + i] = lanes1[i];
                }
            }
            for (; c < c_count; ++c) {
                const Scalar sc{scale[c]}, sh{shift[c]}, mu{mean[c]};
                Scalar acc0{0.0f}, acc1{0.0f};
                for (int64_t r = row0; r < row1; ++r) {
                    const int64_t at = r * c_count + c;
                    backward_element(x + at, dy + at, dz + at, sc, sh, mu, acc0, acc1);
                }
                out0[c] = acc0.v;
                out1[c] = acc1.v;
            }
        } else {
            for (int64_t c = 0; c < c_count; ++c) {
                const int64_t base = (b * c_count + c) * g.plane;
                const Vec sc = Vec::splat(scale[c]), sh = Vec::splat(shift[c]), mu = Vec::splat(mean[c]);
                Vec acc0 = Vec::splat(0.0f), acc1 = Vec::splat(0.0f);
                int64_t s = 0;
                for (; s + Vec::width <= g.plane; s += Vec::width) {
                    backward_element(x + base + s, dy + base + s, dz + base + s, sc, sh, mu, acc0, acc1);
                }
                float lanes0[Vec::width], lanes1[Vec::width];
                acc0.store(lanes0);
                acc1.store(lanes1);
                double sum0 = 0.0, sum1 = 0.0;
                for (int64_t i = 0; i < Vec::width; ++i) {
                    sum0 += lanes0[i];
                    sum1 += lanes1[i];
                }
                Scalar tail0{0.0f}, tail1{0.0f};
                for (; s < g.plane; ++s) {
                    backward_element(x + base + s, dy + base + s, dz + base + s, Scalar{scale[c]},
                                     Scalar{shift[c]}, Scalar{mean[c]}, tail0, tail1);
                }
                out0[c] = sum0 + tail0.v;
                out1[c] = sum1 + tail1.v;
            }
        }
    }
}

// Elementwise maps over blocks [b0, b1) with per-channel parameters.
template <typename F>
void map_blocks(const Geometry &g, int64_t b0, int64_t b1, F f) {
    const int64_t c_count = g.channels;
    for (int64_t b = b0; b < b1; ++b) {
        if (g.channels_last) {
            const int64_t row0 = b * g.block_rows;
            const int64_t row1 = row0 + g.block_rows < g.rows ? row0 + g.block_rows : g.rows;
            for (int64_t r = row0; r < row1; ++r) {
                int64_t c = 0;
                for (; c + Vec::width <= c_count; c += Vec::width) {
                    f.template vector<Vec>(r * c_count + c, c);
                }
                for (; c < c_count; ++c) {
                    f.template splat<Scalar>(r * c_count + c, c);
                }
            }
        } else {
            for (int64_t c = 0; c < c_count; ++c) {
                const int64_t base = (b * c_count + c) * g.plane;
                int64_t s = 0;
                for (; s + Vec::width <= g.plane; s += Vec::width) {
                    f.template splat<Vec>(base + s, c);
                }
                for (; s < g.plane; ++s) {
                    f.template splat<Scalar>(base + s, c);
                }
            }
        }
    }
}

// y = GELU(x * scale + shift).
template <typename T>
struct NormGelu {
    const T *x;
    const float *scale, *shift;
    T *y;
    template <typename V>
    DIFFUSE_INLINE void apply(int64_t at, V sc, V sh) const {
        gelu(V::load(x + at) * sc + sh).store(y + at);
    }
    template <typename V>
    DIFFUSE_INLINE void vector(int64_t at, int64_t c) const { apply(at, V::load(scale + c), V::load(shift + c)); }
    template <typename V>
    DIFFUSE_INLINE void splat(int64_t at, int64_t c) const { apply(at, V::splat(scale[c]), V::splat(shift[c])); }
};

// out = k * a + p * (x - m) + r (out may be a).
template <typename T>
struct Affine2 {
    const T *a, *x;
    const float *m, *k, *p, *r;
    T *out;
    template <typename V>
    DIFFUSE_INLINE void apply(int64_t at, V mv, V kv, V pv, V rv) const {
        (kv * V::load(a + at) + pv * (V::load(x + at) - mv) + rv).store(out + at);
    }
    template <typename V>
    DIFFUSE_INLINE void vector(int64_t at, int64_t c) const {
        apply(at, V::load(m + c), V::load(k + c), V::load(p + c), V::load(r + c));
    }
    template <typename V>
    DIFFUSE_INLINE void splat(int64_t at, int64_t c) const {
        apply(at, V::splat(m[c]), V::splat(k[c]), V::splat(p[c]), V::splat(r[c]));
    }
};

template <typename T>
void norm_gelu(const Geometry *g, const void *x, const float *scale, const float *shift, void *y, int64_t b0,
               int64_t b1) {
    map_blocks(*g, b0, b1, NormGelu<T>{static_cast<const T *>(x), scale, shift, static_cast<T *>(y)});
}

template <typename T>
void affine2(const Geometry *g, const void *a, const void *x, const float *m, const float *k, const float *p,
             const float *r, void *out, int64_t b0, int64_t b1) {
    map_blocks(*g, b0, b1,
               Affine2<T>{static_cast<const T *>(a), static_cast<const T *>(x), m, k, p, r, static_cast<T *>(out)});
}

template <typename T>
constexpr BnGeluKernels table_for{sum_x<T>, sum_squared_deviation<T>, norm_gelu<T>, gelu_grad_sums<T>, affine2<T>};

}  // namespace

extern "C" const BnGeluKernels *DIFFUSE_BN_GELU_TABLE(int bf16) {
    return bf16 ? &table_for<uint16_t> : &table_for<float>;
}
