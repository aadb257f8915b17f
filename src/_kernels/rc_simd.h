/* rc_simd.h -- rnncore's vectorizable activations and fused elementwise passes.
 *
 * Scalar libm tanhf costs ~26 ns per element on the machines we target; the
 * loops below are written so GCC/Clang auto-vectorize them at -O3 (no calls,
 * no branches: both sides of a select are computed, then blended), and
 * `target_clones` builds an AVX-512, an AVX2+FMA and a baseline SSE2 copy of
 * every array function, picked once at load time by the CPU (an ifunc). The
 * shipped build therefore runs on any x86-64 CPU and never uses -march=native.
 *
 * float32 activations are Cephes-style approximations (range reduction plus
 * minimax polynomials) accurate to a couple of float32 ulps over the whole
 * range, with +-0, +-inf and NaN handled like np.tanh (NaN in -> NaN out);
 * tests/test_activations.py proves it against np.tanh. float64 uses libm's
 * exact tanh/exp (gradient checks and references want the exact function).
 *
 * Design rule for every fused pass: one read and one write of each element,
 * bias add + activation + store in the same loop.
 */
#ifndef RC_SIMD_H
#define RC_SIMD_H

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(RNNCORE_NO_CLONES)
#define RC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RC_HAVE_CLONES 1
#else
#define RC_CLONES
#define RC_HAVE_CLONES 0
#endif

typedef ptrdiff_t rc_idx; /* 64-bit element counts and strides throughout */

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
 * Each RC_DEFINE_* macro defines the float (suffix f) and double (suffix d)
 * versions from one body, so the two can never drift apart. */

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

/* Vanilla RNN forward, fused: z[r, :] = act(z[r, :] + b) in place for rows
 * r < rows (z rows ldz apart); act = tanh (relu == 0) or relu (relu != 0). */
#define RC_DEFINE_RNN_ACT(NAME, T, TANH)                                        \
    RC_CLONES static void NAME(T *z, rc_idx ldz, const T *b, rc_idx rows,       \
                               rc_idx H, int relu)                              \
    {                                                                           \
        for (rc_idx r = 0; r < rows; r++) {                                     \
            T *zr = z + r * ldz;                                                \
            if (relu) {                                                         \
                for (rc_idx j = 0; j < H; j++) { T v = zr[j] + b[j]; zr[j] = RC_RELU(v); } \
            } else {                                                            \
                for (rc_idx j = 0; j < H; j++) zr[j] = TANH(zr[j] + b[j]);      \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_RNN_ACT(rc_rnn_act_f, float, rc_tanhf)
RC_DEFINE_RNN_ACT(rc_rnn_act_d, double, rc_tanhd)

/* Vanilla RNN backward, fused: dz = (dh + carry) * act'(h) for rows < rows,
 * act'(h) = 1 - h^2 (tanh) or [h > 0] (relu), from the stored output h. */
#define RC_DEFINE_RNN_DZ(NAME, T)                                               \
    RC_CLONES static void NAME(T *dz, rc_idx lddz, const T *dh, rc_idx lddh,    \
                               const T *carry, rc_idx ldc, const T *h,          \
                               rc_idx ldh, rc_idx rows, rc_idx H, int relu)     \
    {                                                                           \
        for (rc_idx r = 0; r < rows; r++) {                                     \
            T *o = dz + r * lddz;                                               \
            const T *g = dh + r * lddh, *c = carry + r * ldc, *y = h + r * ldh; \
            if (relu) {                                                         \
                for (rc_idx j = 0; j < H; j++) o[j] = y[j] > 0 ? g[j] + c[j] : (T)0; \
            } else {                                                            \
                for (rc_idx j = 0; j < H; j++) o[j] = (g[j] + c[j]) * ((T)1 - y[j] * y[j]); \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_RNN_DZ(rc_rnn_dz_f, float)
RC_DEFINE_RNN_DZ(rc_rnn_dz_d, double)

/* ================================================================ GRU
 * Gates r, z, n along the 3H axis (PyTorch order); rc_gru_* are the fused
 * per-step passes of src/_kernels/gru.pyx (one read and one write of every
 * element, rows r < rows, each array rows ld* elements apart). Every pointer
 * names a distinct array (or disjoint steps of one), hence `restrict`, which
 * lets GCC vectorize without run-time alias checks. */
enum { RC_GRU_R = 0, RC_GRU_Z = 1, RC_GRU_N = 2, RC_GRU_G = 3 };

/* GRU forward, fused: from g = x Wx (the input projection, overwritten with
 * the activations) and s = h_prev Wh (all three gates, scratch):
 *   r  = σ(g_r + bx_r + s_r + bh_r)          z = σ(g_z + bx_z + s_z + bh_z)
 *   hn = s_n + bh_n                          n = tanh(g_n + bx_n + r ⊙ hn)
 *   h  = (1 - z) ⊙ n + z ⊙ h_prev
 * stores g = [r | z | n], hn and h. */
#define RC_DEFINE_GRU_FWD(NAME, T, SIG, TANH)                                   \
    RC_CLONES static void NAME(T *restrict g, rc_idx ldg,                       \
                               const T *restrict s, rc_idx lds,                 \
                               const T *restrict bx, const T *restrict bh,      \
                               const T *restrict hp, rc_idx ldhp,               \
                               T *restrict hn, rc_idx ldhn,                     \
                               T *restrict h, rc_idx ldh, rc_idx rows, rc_idx H) \
    {                                                                           \
        const T *bxr = bx + RC_GRU_R * H, *bxz = bx + RC_GRU_Z * H, *bxn = bx + RC_GRU_N * H; \
        const T *bhr = bh + RC_GRU_R * H, *bhz = bh + RC_GRU_Z * H, *bhn = bh + RC_GRU_N * H; \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            T *gr = g + q * ldg + RC_GRU_R * H, *gz = g + q * ldg + RC_GRU_Z * H; \
            T *gn = g + q * ldg + RC_GRU_N * H;                                 \
            const T *sr = s + q * lds + RC_GRU_R * H, *sz = s + q * lds + RC_GRU_Z * H; \
            const T *sn = s + q * lds + RC_GRU_N * H, *hpq = hp + q * ldhp;     \
            T *hnq = hn + q * ldhn, *hq = h + q * ldh;                          \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T r = SIG(gr[j] + bxr[j] + (sr[j] + bhr[j]));                   \
                T z = SIG(gz[j] + bxz[j] + (sz[j] + bhz[j]));                   \
                T a = sn[j] + bhn[j];                                           \
                T n = TANH(gn[j] + bxn[j] + r * a);                             \
                hq[j] = ((T)1 - z) * n + z * hpq[j];                            \
                gr[j] = r; gz[j] = z; gn[j] = n; hnq[j] = a;                    \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_GRU_FWD(rc_gru_fwd_f, float, rc_sigmoidf, rc_tanhf)
RC_DEFINE_GRU_FWD(rc_gru_fwd_d, double, rc_sigmoidd, rc_tanhd)

/* GRU backward, fused: with dh' = dh + carry and the stored r, z, n, hn:
 *   da_n = dh' ⊙ (1 - z) ⊙ (1 - n²)
 *   da_r = da_n ⊙ hn ⊙ r (1 - r)             da_z = dh' ⊙ (h_prev - n) ⊙ z (1 - z)
 * writes the HIDDEN-side gradient dg = [da_r | da_z | da_n ⊙ r] (what
 * h_prev Wh + bh sees), the input-side n block dan = da_n (x Wx + bx sees
 * [da_r | da_z | da_n]), and carry = dh' ⊙ z (the direct path; the caller
 * then adds dg Wh^T with one GEMM). */
/* GRU_BODY(DG, LDDG, DAN, LDDAN, G, LDG, HN, LDHN): the elementwise pass over
 * `rows` rows; the in-place variant (rc_gru_bwd_ip_*: dG over the saved gates,
 * dA_n over hidden_n, for callers that back-propagate once) passes the same
 * pointer twice: every element is read before it is overwritten. */
#define RC_GRU_BWD_BODY(T, DG, LDDG, DAN, LDDAN, G, LDG, HN, LDHN)              \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            const T *gr = G + q * LDG + RC_GRU_R * H, *gz = G + q * LDG + RC_GRU_Z * H; \
            const T *gn = G + q * LDG + RC_GRU_N * H;                           \
            T *dr = DG + q * LDDG + RC_GRU_R * H, *dz = DG + q * LDDG + RC_GRU_Z * H; \
            T *dn = DG + q * LDDG + RC_GRU_N * H, *danq = DAN + q * LDDAN;      \
            const T *dhq = dh + q * lddh, *hnq = HN + q * LDHN, *hpq = hp + q * ldhp; \
            T *cq = carry + q * ldc;                                            \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T d = dhq[j] + cq[j];                                           \
                T r = gr[j], z = gz[j], n = gn[j], hnj = hnq[j];                \
                T a_n = d * ((T)1 - z) * ((T)1 - n * n);                        \
                dr[j] = a_n * hnj * (r * ((T)1 - r));                           \
                dz[j] = d * (hpq[j] - n) * (z * ((T)1 - z));                    \
                dn[j] = a_n * r;                                                \
                danq[j] = a_n;                                                  \
                cq[j] = d * z;                                                  \
            }                                                                   \
        }
#define RC_DEFINE_GRU_BWD(NAME, NAME_IP, T)                                     \
    RC_CLONES static void NAME(T *restrict dg, rc_idx lddg,                     \
                               T *restrict dan, rc_idx lddan,                   \
                               const T *restrict dh, rc_idx lddh,               \
                               T *restrict carry, rc_idx ldc,                   \
                               const T *restrict g, rc_idx ldg,                 \
                               const T *restrict hn, rc_idx ldhn,               \
                               const T *restrict hp, rc_idx ldhp,               \
                               rc_idx rows, rc_idx H)                           \
    { RC_GRU_BWD_BODY(T, dg, lddg, dan, lddan, g, ldg, hn, ldhn) }              \
    RC_CLONES static void NAME_IP(T *restrict gd, rc_idx ldgd,                  \
                                  T *restrict hnd, rc_idx ldhnd,                \
                                  const T *restrict dh, rc_idx lddh,            \
                                  T *restrict carry, rc_idx ldc,                \
                                  const T *restrict hp, rc_idx ldhp,            \
                                  rc_idx rows, rc_idx H)                        \
    { RC_GRU_BWD_BODY(T, gd, ldgd, hnd, ldhnd, gd, ldgd, hnd, ldhnd) }
RC_DEFINE_GRU_BWD(rc_gru_bwd_f, rc_gru_bwd_ip_f, float)
RC_DEFINE_GRU_BWD(rc_gru_bwd_d, rc_gru_bwd_ip_d, double)

/* ================================================================ LSTM
 * Gates i, f, g, o along the 4H axis (PyTorch order); rc_lstm_* are the
 * fused per-step passes of src/_kernels/lstm.pyx. */
enum { RC_LSTM_I = 0, RC_LSTM_F = 1, RC_LSTM_G = 2, RC_LSTM_O = 3, RC_LSTM_GATES = 4 };

/* LSTM forward, fused: a = x Wx + h_prev Wh (in g) + b;
 *   i, f, g, o = σ, σ, tanh, σ of the blocks of a
 *   c = f ⊙ c_prev + i ⊙ g,   h = o ⊙ tanh(c)
 * stores g = [i | f | g | o] (activations), c and h. */
#define RC_DEFINE_LSTM_FWD(NAME, T, SIG, TANH)                                  \
    RC_CLONES static void NAME(T *restrict a, rc_idx lda, const T *restrict b,  \
                               const T *restrict cp, rc_idx ldcp,               \
                               T *restrict c, rc_idx ldc,                       \
                               T *restrict h, rc_idx ldh, rc_idx rows, rc_idx H) \
    {                                                                           \
        const T *bi = b + RC_LSTM_I * H, *bf = b + RC_LSTM_F * H;               \
        const T *bg = b + RC_LSTM_G * H, *bo = b + RC_LSTM_O * H;               \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            T *ai = a + q * lda + RC_LSTM_I * H, *af = a + q * lda + RC_LSTM_F * H; \
            T *ag = a + q * lda + RC_LSTM_G * H, *ao = a + q * lda + RC_LSTM_O * H; \
            const T *cpq = cp + q * ldcp;                                       \
            T *cq = c + q * ldc, *hq = h + q * ldh;                             \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T i = SIG(ai[j] + bi[j]), f = SIG(af[j] + bf[j]);               \
                T g = TANH(ag[j] + bg[j]), o = SIG(ao[j] + bo[j]);              \
                T cn = f * cpq[j] + i * g;                                      \
                cq[j] = cn;                                                     \
                hq[j] = o * TANH(cn);                                           \
                ai[j] = i; af[j] = f; ag[j] = g; ao[j] = o;                     \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_LSTM_FWD(rc_lstm_fwd_f, float, rc_sigmoidf, rc_tanhf)
RC_DEFINE_LSTM_FWD(rc_lstm_fwd_d, double, rc_sigmoidd, rc_tanhd)

/* LSTM backward, fused: with dh' = dh + carry_h, the stored gates and c:
 *   tc = tanh(c),  do = dh' ⊙ tc,  dc = carry_c + dh' ⊙ o ⊙ (1 - tc²)
 *   dg = [dc ⊙ g ⊙ i(1-i) | dc ⊙ c_prev ⊙ f(1-f) | dc ⊙ i ⊙ (1-g²) | do ⊙ o(1-o)]
 *   carry_c = dc ⊙ f
 * (carry_h is only read: the caller overwrites it with dg Wh^T). */
/* The in-place variant (rc_lstm_bwd_ip_*) writes dA over the saved gates
 * (same pointer twice; each element is read before it is overwritten). */
#define RC_LSTM_BWD_BODY(T, TANH, DG, LDDG, G, LDG)                             \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            const T *gi = G + q * LDG + RC_LSTM_I * H, *gf = G + q * LDG + RC_LSTM_F * H; \
            const T *gg = G + q * LDG + RC_LSTM_G * H, *go = G + q * LDG + RC_LSTM_O * H; \
            T *di = DG + q * LDDG + RC_LSTM_I * H, *df = DG + q * LDDG + RC_LSTM_F * H; \
            T *dgg = DG + q * LDDG + RC_LSTM_G * H, *dout = DG + q * LDDG + RC_LSTM_O * H; \
            const T *dhq = dh + q * lddh, *chq = ch + q * ldch;                 \
            const T *cq = c + q * ldc, *cpq = cp + q * ldcp;                    \
            T *ccq = cc + q * ldcc;                                             \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T d = dhq[j] + chq[j];                                          \
                T i = gi[j], f = gf[j], gv = gg[j], o = go[j];                  \
                T tc = TANH(cq[j]);                                             \
                T dc = ccq[j] + d * o * ((T)1 - tc * tc);                       \
                di[j] = dc * gv * (i * ((T)1 - i));                             \
                df[j] = dc * cpq[j] * (f * ((T)1 - f));                         \
                dgg[j] = dc * i * ((T)1 - gv * gv);                             \
                dout[j] = d * tc * (o * ((T)1 - o));                            \
                ccq[j] = dc * f;                                                \
            }                                                                   \
        }
#define RC_DEFINE_LSTM_BWD(NAME, NAME_IP, T, TANH)                              \
    RC_CLONES static void NAME(T *restrict dg, rc_idx lddg,                     \
                               const T *restrict dh, rc_idx lddh,               \
                               const T *restrict ch, rc_idx ldch,               \
                               T *restrict cc, rc_idx ldcc,                     \
                               const T *restrict g, rc_idx ldg,                 \
                               const T *restrict c, rc_idx ldc,                 \
                               const T *restrict cp, rc_idx ldcp,               \
                               rc_idx rows, rc_idx H)                           \
    { RC_LSTM_BWD_BODY(T, TANH, dg, lddg, g, ldg) }                             \
    RC_CLONES static void NAME_IP(T *restrict gd, rc_idx ldgd,                  \
                                  const T *restrict dh, rc_idx lddh,            \
                                  const T *restrict ch, rc_idx ldch,            \
                                  T *restrict cc, rc_idx ldcc,                  \
                                  const T *restrict c, rc_idx ldc,              \
                                  const T *restrict cp, rc_idx ldcp,            \
                                  rc_idx rows, rc_idx H)                        \
    { RC_LSTM_BWD_BODY(T, TANH, gd, ldgd, gd, ldgd) }
RC_DEFINE_LSTM_BWD(rc_lstm_bwd_f, rc_lstm_bwd_ip_f, float, rc_tanhf)
RC_DEFINE_LSTM_BWD(rc_lstm_bwd_d, rc_lstm_bwd_ip_d, double, rc_tanhd)

/* Small-M GEMM, row-major: C (m, n) := alpha A (m, k) op(B) + beta C, for the
 * per-step products at tiny batch sizes (m = N <= RC_SMALL_M). There BLAS is a
 * poor fit: OpenBLAS forwards m = 1 to a threaded gemv whose thread hand-off
 * costs more than the arithmetic. B is either row-major (k, n) (bt == 0: each
 * row of B is streamed once and applied to all m rows of C, a vectorized axpy)
 * or the transpose of a row-major (n, k) array (bt != 0: dot products, four
 * outputs at a time in 64-byte vector lanes reduced by a shuffle tree; those
 * shorter than RC_SMALL_VK summed in order, as BLAS does).
 * beta == 0 writes C without reading it (BLAS semantics). */
#define RC_SMALL_M 4
typedef float rc_vf64b __attribute__((vector_size(64)));   /* 64-byte vectors (GCC/Clang) */
typedef double rc_vd64b __attribute__((vector_size(64)));
#define RC_DEFINE_SMALL_GEMM(NAME, T, VT, HSUM)                                 \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k, T alpha,           \
                               const T *a, rc_idx lda, const T *b, rc_idx ldb,  \
                               int bt, T beta, T *c, rc_idx ldc)                \
    {                                                                           \
        for (rc_idx i = 0; i < m; i++) {                                        \
            T *ci = c + i * ldc;                                                \
            if (beta == 0) { for (rc_idx j = 0; j < n; j++) ci[j] = 0; }        \
            else if (beta != 1) { for (rc_idx j = 0; j < n; j++) ci[j] *= beta; } \
        }                                                                       \
        if (!bt) {                                                              \
            for (rc_idx p = 0; p < k; p++) {                                    \
                const T *bp = b + p * ldb;                                      \
                for (rc_idx i = 0; i < m; i++) {                                \
                    T s = alpha * a[i * lda + p];                               \
                    T *ci = c + i * ldc;                                        \
                    for (rc_idx j = 0; j < n; j++) ci[j] += s * bp[j];          \
                }                                                               \
            }                                                                   \
        } else if (k < RC_SMALL_VK) {                                            \
            /* short dot products: in order (as BLAS sums them) */              \
            for (rc_idx j = 0; j < n; j++) {                                    \
                const T *bj = b + j * ldb;                                      \
                for (rc_idx i = 0; i < m; i++) {                                \
                    const T *ai = a + i * lda;                                  \
                    T acc = 0;                                                  \
                    for (rc_idx p = 0; p < k; p++) acc += ai[p] * bj[p];        \
                    c[i * ldc + j] += alpha * acc;                              \
                }                                                               \
            }                                                                   \
        } else {                                                                \
            /* dot products in 64-byte vector lanes, four outputs at a time    \
             * (four independent chains), each reduced by a shuffle tree */    \
            const rc_idx V = (rc_idx)(sizeof(VT) / sizeof(T));                  \
            const rc_idx kv = k - k % V;                                        \
            for (rc_idx j = 0; j < n; j += 4) {                                 \
                const int nj = n - j < 4 ? (int)(n - j) : 4;                    \
                const T *bj[4];                                                 \
                for (int u = 0; u < 4; u++) bj[u] = b + (j + (u < nj ? u : 0)) * ldb; \
                for (rc_idx i = 0; i < m; i++) {                                \
                    const T *ai = a + i * lda;                                  \
                    VT s[4] = {{0}, {0}, {0}, {0}};                             \
                    for (rc_idx p = 0; p < kv; p += V) {                        \
                        VT av;                                                  \
                        __builtin_memcpy(&av, ai + p, sizeof(VT));              \
                        for (int u = 0; u < 4; u++) {                           \
                            VT bv;                                              \
                            __builtin_memcpy(&bv, bj[u] + p, sizeof(VT));       \
                            s[u] += av * bv;                                    \
                        }                                                       \
                    }                                                           \
                    for (int u = 0; u < nj; u++) {                              \
                        T acc = HSUM(s[u]);                                     \
                        for (rc_idx p = kv; p < k; p++) acc += ai[p] * bj[u][p]; \
                        c[i * ldc + j + u] += alpha * acc;                      \
                    }                                                           \
                }                                                               \
            }                                                                   \
        }                                                                       \
    }
/* horizontal sums of 64-byte vectors: a shuffle tree (halving) */
typedef int rc_vi64b __attribute__((vector_size(64)));
typedef long long rc_vl64b __attribute__((vector_size(64)));
static inline float rc_hsum_f(rc_vf64b v)
{
    v += __builtin_shuffle(v, (rc_vi64b){8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15});
    v += __builtin_shuffle(v, (rc_vi64b){4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (rc_vi64b){2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3});
    v += __builtin_shuffle(v, (rc_vi64b){1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
    return v[0];
}
static inline double rc_hsum_d(rc_vd64b v)
{
    v += __builtin_shuffle(v, (rc_vl64b){4, 5, 6, 7, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (rc_vl64b){2, 3, 2, 3, 2, 3, 2, 3});
    v += __builtin_shuffle(v, (rc_vl64b){1, 1, 1, 1, 1, 1, 1, 1});
    return v[0];
}
#define RC_SMALL_VK 16   /* dot products shorter than this are summed in order */
RC_DEFINE_SMALL_GEMM(rc_gemm_small_f, float, rc_vf64b, rc_hsum_f)
RC_DEFINE_SMALL_GEMM(rc_gemm_small_d, double, rc_vd64b, rc_hsum_d)

/* Per-step recurrent GEMM without packing: C (m, n) := beta C + A (m, k) B (k, n),
 * A and B row-major (B not transposed), for moderate m (the batch). BLAS packs
 * the (k, n) weight matrix on every call, i.e. on every time step; measured on
 * a Zen 4 core, a (32 x 256)(256 x 256) sgemm ran at 59 GFLOP/s against 87-102
 * for large ones, the difference being mostly the packing. Here B is read in
 * place, a panel of RC_PNR(T) columns and RC_PANEL_KC rows at a time (16 KB:
 * L1 resident, reused by every block of 8 rows of A), and each 8 x RC_PNR(T)
 * block of C accumulates in 16 vector registers over the pass. Measured on
 * one core, (32 x 256)(256 x 1024) float32: 94-101 GFLOP/s (4 x 32 blocks
 * over all of k: 62-65). Columns past the last whole panel go through a
 * plain loop. Vector types are GCC/Clang
 * extensions (64-byte vectors; split into halves/quarters on AVX2/SSE2). */
#define RC_PNR(T) ((rc_idx)(128 / sizeof(T)))   /* panel width: two 64-byte vectors */
#define RC_PANEL_MR 8     /* rows of A per register block */
#define RC_PANEL_KC 128   /* k per pass: a k x 128-byte panel of B stays in L1 */
#define RC_DEFINE_PANEL_GEMM(NAME, T, VT)                                       \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k,                    \
                               const T *a, rc_idx lda, const T *b, rc_idx ldb,  \
                               T beta, T *c, rc_idx ldc)                        \
    {                                                                           \
        const rc_idx V = RC_PNR(T) / 2;                                         \
        rc_idx j0 = 0;                                                          \
        for (rc_idx k0 = 0; k0 < k; k0 += RC_PANEL_KC) {                        \
            const rc_idx kc = k - k0 < RC_PANEL_KC ? k - k0 : RC_PANEL_KC;      \
            const T bk = k0 == 0 ? beta : (T)1;  /* later passes accumulate */  \
            for (j0 = 0; j0 + 2 * V <= n; j0 += 2 * V) {                        \
                for (rc_idx i0 = 0; i0 < m; i0 += RC_PANEL_MR) {                \
                    const rc_idx mr = m - i0 < RC_PANEL_MR ? m - i0 : RC_PANEL_MR; \
                    /* rows past m re-read row i0 (valid memory); not stored */ \
                    const T *ap[RC_PANEL_MR];                                   \
                    for (int r = 0; r < RC_PANEL_MR; r++)                       \
                        ap[r] = a + (i0 + (r < mr ? r : 0)) * lda + k0;         \
                    VT acc[2 * RC_PANEL_MR];                                    \
                    for (int r = 0; r < 2 * RC_PANEL_MR; r++) acc[r] = (VT){0}; \
                    const T *bp = b + k0 * ldb + j0;                            \
                    for (rc_idx p = 0; p < kc; p++, bp += ldb) {                \
                        VT b0, b1;                                              \
                        __builtin_memcpy(&b0, bp, sizeof(VT));                  \
                        __builtin_memcpy(&b1, bp + V, sizeof(VT));              \
                        /* vector * scalar: GCC broadcasts the scalar */        \
                        for (int r = 0; r < RC_PANEL_MR; r++) {                 \
                            const T x = ap[r][p];                               \
                            acc[2 * r] += b0 * x;                               \
                            acc[2 * r + 1] += b1 * x;                           \
                        }                                                       \
                    }                                                           \
                    for (rc_idx r = 0; r < mr; r++) {                           \
                        T *cr = c + (i0 + r) * ldc + j0;                        \
                        for (int h = 0; h < 2; h++) {                           \
                            VT v = acc[2 * r + h];                              \
                            if (bk != 0) {                                      \
                                VT old;                                         \
                                __builtin_memcpy(&old, cr + h * V, sizeof(VT)); \
                                v += old * bk;                                  \
                            }                                                   \
                            __builtin_memcpy(cr + h * V, &v, sizeof(VT));       \
                        }                                                       \
                    }                                                           \
                }                                                               \
            }                                                                   \
        }                                                                       \
        if (j0 < n) {                                                           \
            for (rc_idx i = 0; i < m; i++) {                                    \
                T *ci = c + i * ldc;                                            \
                for (rc_idx j = j0; j < n; j++)                                 \
                    ci[j] = beta == 0 ? (T)0 : beta * ci[j];                    \
                for (rc_idx p = 0; p < k; p++) {                                \
                    const T s = a[i * lda + p];                                 \
                    const T *bp = b + p * ldb;                                  \
                    for (rc_idx j = j0; j < n; j++) ci[j] += s * bp[j];         \
                }                                                               \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_f, float, rc_vf64b)
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_d, double, rc_vd64b)

/* BLAS thread policy: "single-thread sections".
 *
 * The per-step GEMMs are small: below a few million multiply-adds, handing
 * them to BLAS's thread pool costs more than it saves, and on a busy machine
 * spin-waiting BLAS threads can make a step 5-10x slower. The all-steps GEMMs
 * before and after the loop are large and keep BLAS's threads. So a time loop
 * whose per-step work is below rc_loop_parallel_min runs inside a
 * single-thread section; rnncore's Python layer opens one too while the two
 * directions of a bidirectional layer run concurrently.
 *
 * BLAS's thread count is process-wide, so the sections are reference-counted
 * in ONE state shared by every kernel module and the Python layer (allocated
 * by rnncore._threads and passed in with the hooks): the first section to
 * open saves the count and sets 1, the last to close restores it, under a
 * spin lock. The hooks are the BLAS's own openblas_{set,get}_num_threads,
 * found by rnncore._threads at import (NULL: no policy). */
typedef void (*rc_set_threads_fn)(int);
typedef int (*rc_get_threads_fn)(void);
typedef struct { int lock; int depth; int saved; int pad; } rc_thread_state;
static rc_set_threads_fn rc_blas_set_threads = NULL;
static rc_get_threads_fn rc_blas_get_threads = NULL;
static rc_thread_state *rc_tstate = NULL;
static long long rc_loop_parallel_min = 4000000LL;
static int rc_row_split = 0;   /* may time loops split the batch rows over threads */

static void rc_blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work,
                                 size_t state, int row_split)
{
    rc_row_split = row_split;
    rc_blas_set_threads = (rc_set_threads_fn)set_fn;
    rc_blas_get_threads = (rc_get_threads_fn)get_fn;
    rc_tstate = (rc_thread_state *)state;
    rc_loop_parallel_min = min_work;
}

/* Open a single-thread section; returns 1 if opened (pass it to the close). */
static int rc_single_open(void)
{
    if (rc_blas_set_threads == NULL || rc_blas_get_threads == NULL || rc_tstate == NULL)
        return 0;
    while (__atomic_exchange_n(&rc_tstate->lock, 1, __ATOMIC_ACQUIRE)) { }
    if (rc_tstate->depth++ == 0) {
        rc_tstate->saved = rc_blas_get_threads();
        if (rc_tstate->saved > 1) rc_blas_set_threads(1);
    }
    __atomic_store_n(&rc_tstate->lock, 0, __ATOMIC_RELEASE);
    return 1;
}

static void rc_single_close(int opened)
{
    if (!opened) return;
    while (__atomic_exchange_n(&rc_tstate->lock, 1, __ATOMIC_ACQUIRE)) { }
    if (--rc_tstate->depth == 0 && rc_tstate->saved > 1) rc_blas_set_threads(rc_tstate->saved);
    __atomic_store_n(&rc_tstate->lock, 0, __ATOMIC_RELEASE);
}

/* Around a time loop whose per-step GEMM does `work` multiply-adds. */
static int rc_loop_threads_begin(long long work)
{
    return work < rc_loop_parallel_min ? rc_single_open() : 0;
}

static void rc_loop_threads_end(int opened) { rc_single_close(opened); }

/* Whether a time loop's per-step product C (m, n) = A (m, k) B (k, n) goes to
 * rc_gemm_panel_* instead of BLAS: more rows than the small-M kernel takes,
 * at most RC_PANEL_MAX_M (beyond, BLAS's packing is amortized over enough
 * rows), B below RC_PANEL_MAX_KN elements, a whole panel of columns, and a loop that runs single-threaded
 * anyway (below the BLAS thread policy's threshold, or BLAS limited to one
 * thread): the panel kernel has no threads of its own. */
#define RC_PANEL_MAX_M 32
#define RC_PANEL_MAX_KN (1024 * 1024)  /* elements of B: 4 MB in float32 */
static int rc_panel_shape(rc_idx m, rc_idx n, rc_idx k)
{
    return m > RC_SMALL_M && m <= RC_PANEL_MAX_M && n >= 32 && k > 0
        && (long long)k * n < RC_PANEL_MAX_KN;
}

static int rc_use_panel(rc_idx m, rc_idx n, rc_idx k)
{
    if (!rc_panel_shape(m, n, k)) return 0;
    if ((long long)m * n * k < rc_loop_parallel_min) return 1;
    return rc_blas_get_threads != NULL && rc_blas_get_threads() <= 1;
}

/* Row-split time loops.
 *
 * The rows of a batch are independent sequences, so a time loop can run on P
 * threads, thread k taking rows k, k+P, k+2P, ... (interleaved: with a sorted
 * variable-length batch every thread gets long and short rows) through all T
 * steps with no synchronisation; the all-steps GEMMs before and after the
 * loop stay whole and keep BLAS's threads. Each thread's per-step products go
 * to the panel kernel (or BLAS inside a single-thread section opened by the
 * caller). P = min(BLAS threads, 8, N / 4) when rnncore._threads allowed it
 * (rc_row_split: only when SciPy's OpenBLAS was loaded with a short thread
 * timeout -- spinning BLAS workers would compete with the loop's threads),
 * the per-step product is below RC_SPLIT_MAX_WORK multiply-adds (above it the
 * per-step GEMM itself scales on BLAS's threads) and the loop does at least
 * RC_SPLIT_MIN_TOTAL of them (thread start-up is ~50 us). */
#define RC_SPLIT_MAX_WORK 33554432LL     /* 32 M multiply-adds per step */
#define RC_SPLIT_MIN_TOTAL 2000000LL
static int rc_row_threads(rc_idx N, long long work, rc_idx T)
{
    if (!rc_row_split || rc_blas_get_threads == NULL) return 1;
    if (work > RC_SPLIT_MAX_WORK || work * (long long)T < RC_SPLIT_MIN_TOTAL) return 1;
    int P = rc_blas_get_threads();
    if (P > 8) P = 8;
    if (P > N / 4) P = (int)(N / 4);
    return P < 2 ? 1 : P;
}

/* Rows of thread k of P among the first B rows (k, k+P, ... < B). */
static rc_idx rc_share(rc_idx B, int k, int P)
{
    return B > k ? (B - k + P - 1) / P : 0;
}

typedef void (*rc_task_fn)(void *);
typedef struct { rc_task_fn fn; void *arg; } rc_task;
static void *rc_task_main(void *p) { rc_task *t = (rc_task *)p; t->fn(t->arg); return NULL; }

/* Run fn(args + k * size) for k = 0..P-1, task 0 on the calling thread, the
 * others on new threads; joins them all. If a thread cannot be created its
 * task runs on the calling thread (same result). */
static void rc_run_tasks(rc_task_fn fn, void *args, size_t size, int P)
{
    pthread_t th[8];
    rc_task tk[8];
    int started[8] = {0};
    if (P > 8) P = 8;
    for (int k = 1; k < P; k++) {
        tk[k].fn = fn;
        tk[k].arg = (char *)args + k * size;
        started[k] = pthread_create(&th[k], NULL, rc_task_main, &tk[k]) == 0;
    }
    fn(args);
    for (int k = 1; k < P; k++) {
        if (started[k]) pthread_join(th[k], NULL);
        else fn((char *)args + k * size);
    }
}

/* The SIMD level the ifunc resolver picks for the clones above (the same
 * priority order as the target_clones list). */
static const char *rc_simd_level(void)
{
#if RC_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "AVX-512 (x86-64-v4)";
    if (__builtin_cpu_supports("x86-64-v3")) return "AVX2+FMA (x86-64-v3)";
    return "SSE2 (x86-64 baseline)";
#else
    return "portable C (no run-time dispatch on this platform/compiler)";
#endif
}

#endif /* RC_SIMD_H */
