/* rc_layernorm_body.h -- included twice by rc_layernorm.h (float, double) with
 * RC_LN_T the element type and RC_LN(name) the suffixed name. No include guard. */

/* μ of one group of H values (*mu) and 1/σ (returned) */
static inline RC_LN_T RC_LN(rc_ln_stats)(const RC_LN_T *restrict x, rc_idx H, RC_LN_T eps,
                                         RC_LN_T *restrict mu_out)
{
    RC_LN_T s = 0, v = 0;
#pragma omp simd reduction(+:s)
    for (rc_idx j = 0; j < H; j++) s += x[j];
    const RC_LN_T mu = s / (RC_LN_T)H;
#pragma omp simd reduction(+:v)
    for (rc_idx j = 0; j < H; j++) { RC_LN_T d = x[j] - mu; v += d * d; }
    *mu_out = mu;
    return (RC_LN_T)1 / RC_LN_SQRT(v / (RC_LN_T)H + eps);
}

/* x̂ of one group of H values: writes xh (may be x itself: no restrict) and returns 1/σ.
 * x̂_j = (x_j - μ) * (1/σ), the expression the inference passes evaluate inline. */
static inline RC_LN_T RC_LN(rc_ln_group)(const RC_LN_T *x, RC_LN_T *xh,
                                         rc_idx H, RC_LN_T eps)
{
    RC_LN_T mu;
    const RC_LN_T rs = RC_LN(rc_ln_stats)(x, H, eps, &mu);
#pragma GCC ivdep
    for (rc_idx j = 0; j < H; j++) xh[j] = (x[j] - mu) * rs;
    return rs;
}

/* The LN backward of one group, dx = (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)) / σ with
 * dx̂ = dy ⊙ γ; dx may be dy itself. */
static inline void RC_LN(rc_ln_group_bwd)(const RC_LN_T *dy, const RC_LN_T *restrict xh,
                                          const RC_LN_T *restrict gamma, RC_LN_T rs,
                                          RC_LN_T *dx, rc_idx H)
{
    RC_LN_T m1 = 0, m2 = 0;
#pragma omp simd reduction(+:m1, m2)
    for (rc_idx j = 0; j < H; j++) {
        RC_LN_T d = dy[j] * gamma[j];
        m1 += d;
        m2 += d * xh[j];
    }
    m1 /= (RC_LN_T)H;
    m2 /= (RC_LN_T)H;
#pragma GCC ivdep
    for (rc_idx j = 0; j < H; j++) dx[j] = (dy[j] * gamma[j] - m1 - xh[j] * m2) * rs;
}

/* The input side, all T*N rows at once (before the time loop): per row q and
 * gate group k of a (rows, G*H),
 *   xh = x̂ of the group,  rs[q, k] = 1/σ,  a = γ ⊙ x̂ + beta
 * (beta: β_ih + β_hh + b_ih + b_hh, the time loop then adds only γ_hh ⊙ x̂_hh).
 * Inference (nothing saved; xh = rs = NULL): a = γ ⊙ x̂ + beta in one pass with x̂
 * evaluated inline (the same expression: a bitwise what the saving call writes). */
RC_CLONES static void RC_LN(rc_ln_rows)(RC_LN_T *a, rc_idx lda, RC_LN_T *xh, rc_idx ldxh,
                                        RC_LN_T *rs, rc_idx ldrs, rc_idx rows, rc_idx G,
                                        rc_idx H, const RC_LN_T *gamma, const RC_LN_T *beta,
                                        RC_LN_T eps)
{
    for (rc_idx q = 0; q < rows; q++)
        for (rc_idx k = 0; k < G; k++) {
            RC_LN_T *aq = a + q * lda + k * H;
            const RC_LN_T *gk = gamma + k * H, *bk = beta + k * H;
            if (!xh) {
                RC_LN_T mu;
                const RC_LN_T r = RC_LN(rc_ln_stats)(aq, H, eps, &mu);
#pragma GCC ivdep
                for (rc_idx j = 0; j < H; j++) aq[j] = gk[j] * ((aq[j] - mu) * r) + bk[j];
                continue;
            }
            RC_LN_T *xq = xh + q * ldxh + k * H;
            rs[q * ldrs + k] = RC_LN(rc_ln_group)(aq, xq, H, eps);
#pragma GCC ivdep
            for (rc_idx j = 0; j < H; j++) aq[j] = gk[j] * xq[j] + bk[j];
        }
}

/* Its backward, in place, all rows: per group da := LN-backward(da) (γ = gamma). */
RC_CLONES static void RC_LN(rc_ln_rows_bwd)(RC_LN_T *da, rc_idx ldda, const RC_LN_T *xh,
                                            rc_idx ldxh, const RC_LN_T *rs, rc_idx ldrs,
                                            rc_idx rows, rc_idx G, rc_idx H,
                                            const RC_LN_T *gamma)
{
    for (rc_idx q = 0; q < rows; q++)
        for (rc_idx k = 0; k < G; k++)
            RC_LN(rc_ln_group_bwd)(da + q * ldda + k * H, xh + q * ldxh + k * H,
                                   gamma + k * H, rs[q * ldrs + k], da + q * ldda + k * H, H);
}

/* dgamma (F,) += Σ_q dy[q] ⊙ xh[q];  dbeta (F,) += Σ_q dy[q] (rows of two arrays) */
RC_CLONES static void RC_LN(rc_ln_param_grads)(const RC_LN_T *dy, rc_idx lddy,
                                               const RC_LN_T *xh, rc_idx ldxh, rc_idx rows,
                                               rc_idx F, RC_LN_T *dgamma, RC_LN_T *dbeta)
{
    for (rc_idx q = 0; q < rows; q++) {
        const RC_LN_T *d = dy + q * lddy, *x = xh + q * ldxh;
#pragma GCC ivdep
        for (rc_idx j = 0; j < F; j++) {
            dgamma[j] += d[j] * x[j];
            dbeta[j] += d[j];
        }
    }
}

/* One step of the LN-LSTM, rows [0, rows), fused. In: s = h_prev Wh (rows, 4H),
 * a = the normalised input side plus every bias (rows, 4H), cp = c_prev. Per row:
 *   xh = x̂ of each gate group of s, rh = their 1/σ       (saved)
 *   a  = a + γ_hh ⊙ xh;  i, f, g, o = σ, σ, tanh, σ        (a := the activations)
 *   c  = f ⊙ c_prev + i ⊙ g                                (saved, carried)
 *   ch = x̂ of c, rc = its 1/σ                              (saved)
 *   h  = o ⊙ tanh(γ_c ⊙ ch + β_c)
 * Inference (nothing saved; xh = ch = rh = rc = NULL): x̂_hh and ĉ are evaluated
 * inline from μ, 1/σ (the same expression, so h, c are bitwise those of the saving
 * call) and never stored. */
RC_CLONES static void RC_LN(rc_lnlstm_fwd)(
    rc_idx rows, rc_idx H, RC_LN_T eps, const RC_LN_T *s, rc_idx lds, RC_LN_T *a, rc_idx lda,
    RC_LN_T *xh, rc_idx ldxh, RC_LN_T *rh, rc_idx ldrh, const RC_LN_T *cp, rc_idx ldcp,
    RC_LN_T *c, rc_idx ldc, RC_LN_T *ch, rc_idx ldch, RC_LN_T *rc, rc_idx ldrc, RC_LN_T *h,
    rc_idx ldh, const RC_LN_T *g_hh, const RC_LN_T *g_c, const RC_LN_T *b_c)
{
    for (rc_idx q = 0; q < rows; q++) {
        const RC_LN_T *sq = s + q * lds;
        const RC_LN_T *cpq = cp + q * ldcp;
        RC_LN_T *hq = h + q * ldh, *aq = a + q * lda, *cq = c + q * ldc;
        RC_LN_T *ai = aq, *af = aq + H, *ag = aq + 2 * H, *ao = aq + 3 * H;
        const RC_LN_T *gi = g_hh, *gf = g_hh + H, *gg = g_hh + 2 * H, *go = g_hh + 3 * H;
        if (!xh) {
            RC_LN_T m[RC_LN_GATES], r[RC_LN_GATES], mc;
            for (rc_idx k = 0; k < RC_LN_GATES; k++)
                r[k] = RC_LN(rc_ln_stats)(sq + k * H, H, eps, &m[k]);
            const RC_LN_T *si = sq, *sf = sq + H, *sg = sq + 2 * H, *so = sq + 3 * H;
#pragma GCC ivdep
            for (rc_idx j = 0; j < H; j++) {
                RC_LN_T i = RC_LN_SIG(ai[j] + gi[j] * ((si[j] - m[0]) * r[0]));
                RC_LN_T f = RC_LN_SIG(af[j] + gf[j] * ((sf[j] - m[1]) * r[1]));
                RC_LN_T g = RC_LN_TANH(ag[j] + gg[j] * ((sg[j] - m[2]) * r[2]));
                RC_LN_T o = RC_LN_SIG(ao[j] + go[j] * ((so[j] - m[3]) * r[3]));
                cq[j] = f * cpq[j] + i * g;
                ao[j] = o;
            }
            const RC_LN_T rcq = RC_LN(rc_ln_stats)(cq, H, eps, &mc);
#pragma GCC ivdep
            for (rc_idx j = 0; j < H; j++)
                hq[j] = ao[j] * RC_LN_TANH(g_c[j] * ((cq[j] - mc) * rcq) + b_c[j]);
            continue;
        }
        RC_LN_T *xq = xh + q * ldxh, *chq = ch + q * ldch;
        for (rc_idx k = 0; k < RC_LN_GATES; k++)
            rh[q * ldrh + k] = RC_LN(rc_ln_group)(sq + k * H, xq + k * H, H, eps);
        const RC_LN_T *xi = xq, *xf = xq + H, *xg = xq + 2 * H, *xo = xq + 3 * H;
#pragma GCC ivdep
        for (rc_idx j = 0; j < H; j++) {
            RC_LN_T i = RC_LN_SIG(ai[j] + gi[j] * xi[j]), f = RC_LN_SIG(af[j] + gf[j] * xf[j]);
            RC_LN_T g = RC_LN_TANH(ag[j] + gg[j] * xg[j]), o = RC_LN_SIG(ao[j] + go[j] * xo[j]);
            cq[j] = f * cpq[j] + i * g;
            ai[j] = i; af[j] = f; ag[j] = g; ao[j] = o;
        }
        rc[q * ldrc] = RC_LN(rc_ln_group)(cq, chq, H, eps);
#pragma GCC ivdep
        for (rc_idx j = 0; j < H; j++) hq[j] = ao[j] * RC_LN_TANH(g_c[j] * chq[j] + b_c[j]);
    }
}

/* Its backward, rows [0, rows), fused. With d = dh + carry_h:
 *   tc = tanh(γ_c ⊙ ch + β_c);  dyc = d ⊙ o ⊙ (1 - tc²)                (saved: dγ_c, dβ_c)
 *   dc = carry_c + LN-backward(dyc; ch, rc, γ_c)
 *   da = [dc g i(1-i) | dc c_prev f(1-f) | dc i (1-g²) | d tc o(1-o)]  (saved: the biases')
 *   dz = LN_G-backward(da; xh, rh, γ_hh)   (the caller: carry_h = dz Wh^T, dWh)
 *   carry_c = dc ⊙ f
 * (dz[:H] holds LN-backward(dyc) until the last loop overwrites it.) */
RC_CLONES static void RC_LN(rc_lnlstm_bwd)(
    rc_idx rows, rc_idx H, const RC_LN_T *dh, rc_idx lddh, const RC_LN_T *ch_, rc_idx ldcy,
    RC_LN_T *cc, rc_idx ldcc, const RC_LN_T *gt, rc_idx ldg, const RC_LN_T *cp, rc_idx ldcp,
    const RC_LN_T *chat, rc_idx ldch, const RC_LN_T *rc, rc_idx ldrc, const RC_LN_T *xh,
    rc_idx ldxh, const RC_LN_T *rh, rc_idx ldrh, RC_LN_T *da, rc_idx ldda, RC_LN_T *dz,
    rc_idx lddz, RC_LN_T *dyc, rc_idx lddyc, const RC_LN_T *g_hh, const RC_LN_T *g_c,
    const RC_LN_T *b_c)
{
    for (rc_idx q = 0; q < rows; q++) {
        const RC_LN_T *dhq = dh + q * lddh, *cyq = ch_ + q * ldcy, *gq = gt + q * ldg;
        const RC_LN_T *cpq = cp + q * ldcp, *chq = chat + q * ldch;
        RC_LN_T *ccq = cc + q * ldcc, *daq = da + q * ldda, *dzq = dz + q * lddz;
        RC_LN_T *dyq = dyc + q * lddyc;
        const RC_LN_T *o = gq + 3 * H;
        /* dyc, and the o block of da (needs d, tc); the dc of the LN goes into dz[:H] */
#pragma GCC ivdep
        for (rc_idx j = 0; j < H; j++) {
            RC_LN_T d = dhq[j] + cyq[j];
            RC_LN_T tc = RC_LN_TANH(g_c[j] * chq[j] + b_c[j]);
            dyq[j] = d * o[j] * ((RC_LN_T)1 - tc * tc);
            daq[3 * H + j] = d * tc * (o[j] * ((RC_LN_T)1 - o[j]));
        }
        RC_LN(rc_ln_group_bwd)(dyq, chq, g_c, rc[q * ldrc], dzq, H);
        const RC_LN_T *i = gq, *f = gq + H, *g = gq + 2 * H;
#pragma GCC ivdep
        for (rc_idx j = 0; j < H; j++) {
            RC_LN_T dc = ccq[j] + dzq[j];
            daq[j] = dc * g[j] * (i[j] * ((RC_LN_T)1 - i[j]));
            daq[H + j] = dc * cpq[j] * (f[j] * ((RC_LN_T)1 - f[j]));
            daq[2 * H + j] = dc * i[j] * ((RC_LN_T)1 - g[j] * g[j]);
            ccq[j] = dc * f[j];
        }
        const RC_LN_T *rq = rh + q * ldrh, *xq = xh + q * ldxh;
        for (rc_idx k = 0; k < RC_LN_GATES; k++)
            RC_LN(rc_ln_group_bwd)(daq + k * H, xq + k * H, g_hh + k * H, rq[k], dzq + k * H, H);
    }
}

/* One step of the LN-GRU (PyTorch's candidate, reset_after=True), rows [0, rows),
 * fused. In: s = h_prev Wh (rows, 3H), a = the normalised input side plus bias_ih
 * and the recurrent r, z biases (rows, 3H), hp = h_prev; bhn = β_hh,n + b_hh,n (H,).
 * Per row:
 *   xh = x̂ of each gate group of s, rh = their 1/σ                 (saved)
 *   r = σ(a_r + γ_r x̂_r),  z = σ(a_z + γ_z x̂_z)
 *   hn = γ_n x̂_n + bhn (saved),  n = tanh(a_n + r hn)              (a := [r | z | n])
 *   h = (1 - z) n + z h_prev
 * Inference (nothing saved; xh = rh = hn = NULL): x̂_hh evaluated inline from μ, 1/σ
 * (the same expression: h bitwise that of the saving call), S_n not stored. */
RC_CLONES static void RC_LN(rc_lngru_fwd)(
    rc_idx rows, rc_idx H, RC_LN_T eps, const RC_LN_T *s, rc_idx lds, RC_LN_T *a, rc_idx lda,
    RC_LN_T *xh, rc_idx ldxh, RC_LN_T *rh, rc_idx ldrh, const RC_LN_T *hp, rc_idx ldhp,
    RC_LN_T *hn, rc_idx ldhn, RC_LN_T *h, rc_idx ldh, const RC_LN_T *g_hh, const RC_LN_T *bhn)
{
    for (rc_idx q = 0; q < rows; q++) {
        const RC_LN_T *sq = s + q * lds;
        const RC_LN_T *hpq = hp + q * ldhp;
        RC_LN_T *aq = a + q * lda, *hq = h + q * ldh;
        RC_LN_T *ar = aq, *az = aq + H, *an = aq + 2 * H;
        const RC_LN_T *gr = g_hh, *gz = g_hh + H, *gn = g_hh + 2 * H;
        if (!xh) {
            RC_LN_T m[3], rs[3];
            for (rc_idx k = 0; k < 3; k++)
                rs[k] = RC_LN(rc_ln_stats)(sq + k * H, H, eps, &m[k]);
            const RC_LN_T *sr = sq, *sz = sq + H, *sn = sq + 2 * H;
#pragma GCC ivdep
            for (rc_idx j = 0; j < H; j++) {
                RC_LN_T r = RC_LN_SIG(ar[j] + gr[j] * ((sr[j] - m[0]) * rs[0]));
                RC_LN_T z = RC_LN_SIG(az[j] + gz[j] * ((sz[j] - m[1]) * rs[1]));
                RC_LN_T v = gn[j] * ((sn[j] - m[2]) * rs[2]) + bhn[j];
                RC_LN_T n = RC_LN_TANH(an[j] + r * v);
                hq[j] = ((RC_LN_T)1 - z) * n + z * hpq[j];
            }
            continue;
        }
        RC_LN_T *xq = xh + q * ldxh, *hnq = hn + q * ldhn;
        for (rc_idx k = 0; k < 3; k++)
            rh[q * ldrh + k] = RC_LN(rc_ln_group)(sq + k * H, xq + k * H, H, eps);
        const RC_LN_T *xr = xq, *xz = xq + H, *xn = xq + 2 * H;
#pragma GCC ivdep
        for (rc_idx j = 0; j < H; j++) {
            RC_LN_T r = RC_LN_SIG(ar[j] + gr[j] * xr[j]), z = RC_LN_SIG(az[j] + gz[j] * xz[j]);
            RC_LN_T v = gn[j] * xn[j] + bhn[j];
            RC_LN_T n = RC_LN_TANH(an[j] + r * v);
            hnq[j] = v;
            hq[j] = ((RC_LN_T)1 - z) * n + z * hpq[j];
            ar[j] = r; az[j] = z; an[j] = n;
        }
    }
}

/* Its backward, rows [0, rows), fused. With d = dh + carry:
 *   dA = [dn (1-n²) hn r(1-r) | d (h_prev - n) z(1-z) | d (1-z)(1-n²)]   (input side)
 *   dS = dA with its n block times r                                      (recurrent side)
 *   dz = LN_G-backward(dS; xh, rh, γ_hh);  carry = d z  (the caller adds dz Wh^T) */
RC_CLONES static void RC_LN(rc_lngru_bwd)(
    rc_idx rows, rc_idx H, const RC_LN_T *dh, rc_idx lddh, RC_LN_T *cy, rc_idx ldcy,
    const RC_LN_T *gt, rc_idx ldg, const RC_LN_T *hn, rc_idx ldhn, const RC_LN_T *hp,
    rc_idx ldhp, const RC_LN_T *xh, rc_idx ldxh, const RC_LN_T *rh, rc_idx ldrh, RC_LN_T *da,
    rc_idx ldda, RC_LN_T *ds, rc_idx ldds, RC_LN_T *dz, rc_idx lddz, const RC_LN_T *g_hh)
{
    for (rc_idx q = 0; q < rows; q++) {
        const RC_LN_T *dhq = dh + q * lddh, *gq = gt + q * ldg, *hnq = hn + q * ldhn;
        const RC_LN_T *hpq = hp + q * ldhp;
        RC_LN_T *cq = cy + q * ldcy, *daq = da + q * ldda, *dsq = ds + q * ldds;
        RC_LN_T *dzq = dz + q * lddz;
        const RC_LN_T *r = gq, *z = gq + H, *n = gq + 2 * H;
#pragma GCC ivdep
        for (rc_idx j = 0; j < H; j++) {
            RC_LN_T d = dhq[j] + cq[j];
            RC_LN_T dan = d * ((RC_LN_T)1 - z[j]) * ((RC_LN_T)1 - n[j] * n[j]);
            RC_LN_T dar = dan * hnq[j] * (r[j] * ((RC_LN_T)1 - r[j]));
            RC_LN_T daz = d * (hpq[j] - n[j]) * (z[j] * ((RC_LN_T)1 - z[j]));
            daq[j] = dar; daq[H + j] = daz; daq[2 * H + j] = dan;
            dsq[j] = dar; dsq[H + j] = daz; dsq[2 * H + j] = dan * r[j];
            cq[j] = d * z[j];
        }
        const RC_LN_T *rq = rh + q * ldrh, *xq = xh + q * ldxh;
        for (rc_idx k = 0; k < 3; k++)
            RC_LN(rc_ln_group_bwd)(dsq + k * H, xq + k * H, g_hh + k * H, rq[k], dzq + k * H, H);
    }
}
