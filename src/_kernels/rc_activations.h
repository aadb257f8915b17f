/* rc_activations.h -- rnncore's vectorizable activations and the SIMD dispatch.
 *
 * Scalar libm tanhf costs ~26 ns per element on the machines we target; the
 * loops of every rc_*.h header are written so GCC/Clang auto-vectorize them at
 * -O3 (no calls, no branches: both sides of a select are computed, then
 * blended), and `target_clones` (RC_CLONES) builds an AVX-512, an AVX2+FMA and
 * a baseline SSE2 copy of every array function, picked once at load time by
 * the CPU (an ifunc). The shipped build therefore runs on any x86-64 CPU and
 * never uses -march=native.
 *
 * float32 activations are Cephes-style approximations (range reduction plus
 * minimax polynomials) accurate to a couple of float32 ulps over the whole
 * range, with +-0, +-inf and NaN handled like np.tanh (NaN in -> NaN out);
 * tests/test_activations.py proves it against np.tanh. float64 uses libm's
 * exact tanh/exp (gradient checks and references want the exact function).
 *
 * The cells' fused passes built on these live beside their kernels
 * (rc_rnn.h, rc_gru.h, rc_lstm.h); the own GEMMs in rc_gemm.h.
 */
#ifndef RC_ACTIVATIONS_H
#define RC_ACTIVATIONS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(RNNCORE_NO_CLONES)
#define RC_X86_DISPATCH 1   /* __builtin_cpu_supports("x86-64-v3"/"-v4") is available */
#else
#define RC_X86_DISPATCH 0
#endif

/* RC_FORCE_SIMD (CMake: -Ccmake.define.RNNCORE_SIMD=x86-64-v4 | x86-64-v3 |
 * baseline; a test build, never the wheel): every array function is compiled
 * for that one level instead of cloned, so CI runs the AVX2 and the baseline
 * code on an AVX-512 machine (the clone a CPU picks is the only one the
 * default build ever runs there). The package refuses to import a forced
 * build on a CPU without the level (rc_simd_supported; every kernel module
 * calls _cpu.pxd's require_simd when it is imported). */
#if defined(RC_FORCE_SIMD) && RC_X86_DISPATCH
#if RC_FORCE_SIMD == 4
#define RC_CLONES __attribute__((target("arch=x86-64-v4")))
#elif RC_FORCE_SIMD == 3
#define RC_CLONES __attribute__((target("arch=x86-64-v3")))
#elif RC_FORCE_SIMD == 1
#define RC_CLONES
#else
#error "RC_FORCE_SIMD must be 4 (x86-64-v4), 3 (x86-64-v3) or 1 (baseline)"
#endif
#define RC_HAVE_CLONES 1
#elif defined(RC_FORCE_SIMD)
#error "RNNCORE_SIMD needs GCC on x86-64 Linux (the target attribute and CPU checks)"
#elif RC_X86_DISPATCH
#define RC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RC_HAVE_CLONES 1
#else
#define RC_CLONES
#define RC_HAVE_CLONES 0
#endif

/* This CPU's level, whatever the build (the same scale as rc_simd_tier; 0:
 * no dispatch on this platform/compiler). */
static inline int rc_cpu_tier(void)
{
#if RC_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
    return 1;
#else
    return 0;
#endif
}

/* Whether the kernels' rules take the choices measured on Intel's server cores
 * (rc_threads.h: rc_unit_rows; rc_gemm_packed.h: rc_fuse_input): the CPU's vendor,
 * read on every evaluation of a rule (GCC's cpu model, set at load; AMD's family
 * read once, below), or the test hook's value (rc_set_rule_set: RC_RULES_INTEL
 * 1, RC_RULES_GENERAL 0, RC_RULES_ZEN5 2, -1 the CPU's). The
 * rules are measured per vendor: a 2-core Intel Xeon (Emerald Rapids: 2 MiB L2 per
 * core, a mesh L3) and AMD EPYC Zen 3/4/5 (0.5-1 MiB L2, an L3 per CCX) differed in
 * what a weight streamed from L3 every step costs. Other Intel cores get the
 * Emerald Rapids choices by extrapolation. Checked back on a Zen 4 VM (session 21,
 * bench/rules_ab.py, general / Intel time, 0.98-1.05 between two timings of the
 * same code): of the 14 rows where the sets choose apart, the general rules won 9,
 * 6 of them by 6-14 % (inference LSTM (50, 16, 512, 512) 0.91, GRU (50, 16, 512,
 * 512) 0.92, RNN (50, 8, 1024, 1024) 0.86; fb LSTM (50, 64, 512, 1024) 0.90, one
 * 6-block timing of a row whose time moves most on that VM), 3 were within 1 %,
 * and Intel's won 2 (LSTM (50, 32, 512, 1024) inference 1.04, RNN (50, 8, 1024,
 * 1024) fb 1.09): AMD keeps the general rules (Zen 5 with one change:
 * RC_RULES_ZEN5 below). Without GCC on x86 (no packed layout there either) the
 * general rules. */
/* The rule sets (rc_rule_set): RC_RULES_GENERAL, RC_RULES_INTEL (above), and
 * RC_RULES_ZEN5: AMD cores from family 26 (Zen 5: two full 512-bit FMA units, where
 * Zen 4 double-pumps 256-bit ones) take the general rules but for the forward's
 * in-step input product, which below RC_FUSE_ZEN5_ROWS rows fuses only up to N x
 * 160 KiB stacked, as with Intel's (rc_gemm_packed.h: rc_fuse_input, the figures
 * there). Later AMD families get it by extrapolation. */
enum { RC_RULES_GENERAL = 0, RC_RULES_INTEL = 1, RC_RULES_ZEN5 = 2 };
static int rc_rule_set_forced = -1;   /* the hook's set, or -1: the CPU's */
/* The CPU's AMD family (base + extended: Zen 4 25, Zen 5 26), 0 elsewhere. */
static inline int rc_amd_family(void)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_is("amd")) return 0;
    unsigned int eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
    unsigned int family = (eax >> 8) & 0xf;
    if (family == 0xf) family += (eax >> 20) & 0xff;
    return (int)family;
#else
    return 0;
#endif
}
static inline int rc_rule_set(void)
{
    if (rc_rule_set_forced >= 0) return rc_rule_set_forced;
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_is("intel")) return RC_RULES_INTEL;
    static int family = -1;   /* read once: cpuid is slow in a VM (a trap) */
    int f = __atomic_load_n(&family, __ATOMIC_RELAXED);
    if (f < 0) {   /* (two first callers store the same value) */
        f = rc_amd_family();
        __atomic_store_n(&family, f, __ATOMIC_RELAXED);
    }
    return f >= 26 ? RC_RULES_ZEN5 : RC_RULES_GENERAL;
#else
    return RC_RULES_GENERAL;
#endif
}
static inline int rc_intel_rules(void) { return rc_rule_set() == RC_RULES_INTEL; }
/* mode: RC_RULES_* (the test hook), anything else the CPU's */
static void rc_set_rule_set(int mode)
{
    rc_rule_set_forced = mode >= RC_RULES_GENERAL && mode <= RC_RULES_ZEN5 ? mode : -1;
}

/* The level the array functions run at: 4 (x86-64-v4: AVX-512), 3 (x86-64-v3:
 * AVX2+FMA), 1 (x86-64 baseline: SSE2), 0 (portable C: no dispatch on this
 * platform/compiler). The clones' ifunc picks by the same priority. */
static inline int rc_simd_tier(void)
{
#if defined(RC_FORCE_SIMD)
    return RC_FORCE_SIMD;
#else
    return rc_cpu_tier();   /* the clones' ifunc picks by the same priority */
#endif
}

/* Whether this CPU can run the build's code: always, except a forced build
 * (RC_FORCE_SIMD) for a level the CPU lacks. */
static inline int rc_simd_supported(void)
{
#if defined(RC_FORCE_SIMD)
    return rc_cpu_tier() >= RC_FORCE_SIMD;
#else
    return 1;
#endif
}

#ifndef RC_IDX_DEFINED
#define RC_IDX_DEFINED
typedef ptrdiff_t rc_idx; /* 64-bit element counts and strides throughout */
#endif

/* ---------------------------------------------------------------- float32 */

/* exp(x) for x in [-87, 88] (callers clamp): x = n ln2 + r, |r| <= ln2/2,
 * exp(r) by Cephes' degree-6 polynomial, 2^n by building the exponent bits. */
static inline float rc_expf_core(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
    float t = x * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = x - n * 0.693359375f;   /* ln2 split in two parts (Cody-Waite) */
    r = r - n * -2.12194440e-4f;
    float z = r * r;
    float y = ((((( 1.9875691500e-4f * r + 1.3981999507e-3f) * r
                 + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
                 + 1.6666665459e-1f) * r + 5.0000001201e-1f) * z + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* tanh(x): odd polynomial for |x| < 0.625, 1 - 2/(exp(2|x|) + 1) above, the
 * sign copied back. |x| is clamped at 10 (tanh rounds to 1.0f well before),
 * in a way that keeps NaN as NaN. */
static inline float rc_tanhf(float x)
{
    float ax = fabsf(x);
    float z = ax * ax;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                     - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                     - 3.33332819422e-1f) * z * ax + ax;
    float c = ax > 10.0f ? 10.0f : ax;
    float e = rc_expf_core(2.0f * c);
    float big = 1.0f - 2.0f / (e + 1.0f);
    /* copysign last: keeps tanh(-0) = -0 and NaN as NaN */
    return copysignf(ax >= 0.625f ? big : small, x);
}

/* sigmoid(x) = 1 / (1 + exp(-x)). exp's argument is clamped to [-87, 88]; for
 * x < -88 the result (< 6e-39, a float32 denormal) is flushed to exactly 0, so
 * sigmoid(-inf) = 0. NaN fails every comparison, so NaN in -> NaN out. */
static inline float rc_sigmoidf(float x)
{
    float m = -x;
    float mc = m > 88.0f ? 88.0f : m;
    mc = mc < -87.0f ? -87.0f : mc;
    float r = 1.0f / (1.0f + rc_expf_core(mc));
    return m > 88.0f ? 0.0f : r;
}

/* ---------------------------------------------------------------- float64 */

static inline double rc_tanhd(double x) { return tanh(x); }
static inline double rc_sigmoidd(double x) { return 1.0 / (1.0 + exp(-x)); }

/* relu that keeps NaN (x < 0 is false for NaN) */
#define RC_RELU(x) ((x) < 0 ? 0 : (x))

/* ------------------------------------------------------- array functions
 * Each RC_DEFINE_* macro (here and in the cells' headers) defines the float
 * (suffix f) and double (suffix d) versions from one body, so the two can
 * never drift apart. */

/* y[i] = act(x[i]) over n contiguous elements (tests and benchmarks). */
#define RC_DEFINE_MAP(NAME, T, FN)                                              \
    RC_CLONES static void NAME(const T *x, T *y, rc_idx n)                      \
    {                                                                           \
        for (rc_idx i = 0; i < n; i++) y[i] = FN(x[i]);                         \
    }
RC_DEFINE_MAP(rc_tanh_array_f, float, rc_tanhf)
RC_DEFINE_MAP(rc_tanh_array_d, double, rc_tanhd)
RC_DEFINE_MAP(rc_sigmoid_array_f, float, rc_sigmoidf)
RC_DEFINE_MAP(rc_sigmoid_array_d, double, rc_sigmoidd)

/* The SIMD level the array functions run at (rc_simd_tier), for show_config
 * and the benchmarks; "forced" names a test build (RC_FORCE_SIMD). */
static const char *rc_simd_level(void)
{
#if defined(RC_FORCE_SIMD)
#define RC_FORCED_NOTE ", forced at build"
#else
#define RC_FORCED_NOTE ""
#endif
    switch (rc_simd_tier()) {
    case 4: return "AVX-512 (x86-64-v4)" RC_FORCED_NOTE;
    case 3: return "AVX2+FMA (x86-64-v3)" RC_FORCED_NOTE;
    case 1: return "SSE2 (x86-64 baseline)" RC_FORCED_NOTE;
    default: return "portable C (no run-time dispatch on this platform/compiler)";
    }
#undef RC_FORCED_NOTE
}

#endif /* RC_ACTIVATIONS_H */
