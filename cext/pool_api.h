#ifndef MICROTRAIN_POOL_API_H
#define MICROTRAIN_POOL_API_H
/* Max pooling over windows that tile the input (stride = kernel, no padding), float32: the
 * engine's pool forward and backward (docs/engine.md) in one pass each, bit for bit what its
 * numpy form gives.
 */
#include <stdint.h>

/* x: planes x h x w (C order). For each plane p and window (oy, ox), 0 <= oy < ho,
 * 0 <= ox < wo, ho * kh <= h, wo * kw <= w, the window's kh * kw elements in (i, j) order
 * x[p][oy*kh + i][ox*kw + j], offset t = i*kw + j: arg[p][oy][ox] = the offset np.argmax
 * returns (the first maximum; the first NaN if there is one; -0 and +0 equal) and
 * y[p][oy][ox] = the element there (its bits). Returns 0, or -1 on a bad argument. */
int mt_maxpool_tiled_f32(const float *x, int64_t planes, int64_t h, int64_t w, int kh, int kw,
                         int64_t ho, int64_t wo, float *y, int64_t *arg);

/* The adjoint of mt_maxpool_tiled_f32: dx (planes x h x w) = 0 everywhere except at each
 * window's arg offset, which gets 0.0f + dy[p][oy][ox] (+0 for a -0 error). arg offsets
 * outside 0..kh*kw-1 are a bad argument. Returns 0, or -1 on a bad argument. */
int mt_maxpool_tiled_bwd_f32(const float *dy, const int64_t *arg, int64_t planes, int64_t h,
                             int64_t w, int kh, int kw, int64_t ho, int64_t wo, float *dx);
#endif
