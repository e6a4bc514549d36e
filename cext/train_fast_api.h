#ifndef MICROTRAIN_TRAIN_FAST_API_H
#define MICROTRAIN_TRAIN_FAST_API_H
/* Fused element-wise passes of the engine (docs/engine.md), bit for bit what the separate
 * passes give: the ReLU in one pass each way (its numpy form np.where(x > 0, x, 0)), and the
 * SGD update that also counts the zeros of the new weights.
 */
#include <stdint.h>

/* pos[i] = x[i] > 0 (0 or 1; false for NaN and both zeros); y[i] = pos[i] ? x[i] : +0.
 * Returns 0, or -1 on a bad argument. */
int mt_relu_f32(const float *x, float *y, uint8_t *pos, int64_t n);

/* out[i] = pos[i] ? e[i] : +0 (pos 0/1 bytes; e's bits kept where pos). out may be e.
 * Returns 0, or -1 on a bad argument. */
int mt_relu_bwd_f32(const float *e, const uint8_t *pos, float *out, int64_t n);

/* mt_sgd_update of w (rows x cols, C order) without masks (every element updated and
 * kept), then mt_zero_counts of the updated w: per_row[r], per_col[c] = the +0/-0 elements
 * of row r, column c. threads as mt_sgd_update (rows split between two threads). Returns 0,
 * or -1 on a bad argument (nothing done). */
int mt_sgd_update_zc(float *w, float *m, const float *g, int64_t rows, int64_t cols, float lr,
                     float mu, float wd, int threads, int64_t *per_row, int64_t *per_col);

/* im2col of x (n, c, h, w), C order, elements of esize bytes (1, 2, 4 or 8): out rows (n, ho,
 * wo), columns (c, i, j), out[row][(ci * kh + i) * kw + j] = x[n][ci][oh * sh + i - ph]
 * [ow * sw + j - pw], all-zero bytes where that falls in the padding (a copy of the entries:
 * any element type). Returns 0, -1 on a bad argument, -2 when the scratch for one sample's
 * zero-padded planes cannot be allocated. */
int mt_im2col(const void *x, int esize, int64_t n, int64_t c, int64_t h, int64_t w, int kh,
              int kw, int sh, int sw, int ph, int pw, int64_t ho, int64_t wo, void *out);

/* The conv output moved to NCHW with its bias: dst[(b * o + c) * hw + p] = src[b * sb + p * sp
 * + c * sc] + bias[c] (one float32 addition, as numpy's), or the plain copy when bias is
 * NULL; b < n, c < o, p < hw. Returns 0, or -1 on a bad argument. */
int mt_to_nchw_bias_f32(const float *src, int64_t n, int64_t o, int64_t hw, int64_t sb,
                        int64_t sp, int64_t sc, const float *bias, float *dst);
#endif
