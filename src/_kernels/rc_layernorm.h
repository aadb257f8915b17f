/* rc_layernorm.h -- the layer-normalised LSTM's elementwise passes (lnlstm.pyx).
 *
 * Layer normalisation (Ba, Kiros & Hinton 2016) of each group of H features of a
 * row: x̂ = (x - μ) / σ with μ, σ² = mean, biased variance (+ eps) of the group,
 * y = γ ⊙ x̂ + β. The passes are written once in rc_layernorm_body.h and built
 * for float (suffix _f) and double (_d) by including it twice; each is an
 * RC_CLONES function (AVX-512 / AVX2+FMA / baseline copies picked at load time,
 * see rc_activations.h). The group sums carry `omp simd reduction` pragmas
 * (built with -fopenmp-simd, no OpenMP runtime): without -ffast-math GCC will
 * not reorder a floating-point sum by itself. The order of the sums depends on
 * H only, never on the thread count or the row split. */
#ifndef RC_LAYERNORM_H
#define RC_LAYERNORM_H

#include <math.h>
#include "rc_activations.h"

enum { RC_LN_GATES = 4 };

#define RC_LN_T float
#define RC_LN(name) name##_f
#define RC_LN_SIG rc_sigmoidf
#define RC_LN_TANH rc_tanhf
#define RC_LN_SQRT sqrtf
#include "rc_layernorm_body.h"
#undef RC_LN_T
#undef RC_LN
#undef RC_LN_SIG
#undef RC_LN_TANH
#undef RC_LN_SQRT

#define RC_LN_T double
#define RC_LN(name) name##_d
#define RC_LN_SIG rc_sigmoidd
#define RC_LN_TANH rc_tanhd
#define RC_LN_SQRT sqrt
#include "rc_layernorm_body.h"
#undef RC_LN_T
#undef RC_LN
#undef RC_LN_SIG
#undef RC_LN_TANH
#undef RC_LN_SQRT

#endif /* RC_LAYERNORM_H */
