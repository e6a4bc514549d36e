/* Max pooling over tiling windows (see pool_api.h). */
#include "pool_api.h"

#include <string.h>

static int bad_geometry(int64_t planes, int64_t h, int64_t w, int kh, int kw, int64_t ho,
                        int64_t wo)
{
    return planes < 0 || h < 0 || w < 0 || kh < 1 || kw < 1 || ho < 0 || wo < 0 ||
           ho * kh > h || wo * kw > w;
}

int mt_maxpool_tiled_f32(const float *x, int64_t planes, int64_t h, int64_t w, int kh, int kw,
                         int64_t ho, int64_t wo, float *y, int64_t *arg)
{
    if (bad_geometry(planes, h, w, kh, kw, ho, wo))
        return -1;
    for (int64_t p = 0; p < planes; p++) {
        const float *xp = x + p * h * w;
        for (int64_t oy = 0; oy < ho; oy++) {
            for (int64_t ox = 0; ox < wo; ox++) {
                const float *win = xp + oy * kh * w + ox * kw;
                float best = win[0];
                int64_t at = 0;
                /* np.argmax of floats: an element is taken when !(v <= best) while best is
                 * not NaN (a NaN taken, or first, stays); without branches on the data */
                for (int i = 0; i < kh; i++) {
                    for (int j = (i == 0); j < kw; j++) {
                        float v = win[i * w + j];
                        int take = !(v <= best) & (best == best);
                        best = take ? v : best;
                        at = take ? (int64_t)i * kw + j : at;
                    }
                }
                y[(p * ho + oy) * wo + ox] = best;
                arg[(p * ho + oy) * wo + ox] = at;
            }
        }
    }
    return 0;
}

int mt_maxpool_tiled_bwd_f32(const float *dy, const int64_t *arg, int64_t planes, int64_t h,
                             int64_t w, int kh, int kw, int64_t ho, int64_t wo, float *dx)
{
    if (bad_geometry(planes, h, w, kh, kw, ho, wo))
        return -1;
    int64_t k = (int64_t)kh * kw;
    for (int64_t i = 0; i < planes * ho * wo; i++)
        if (arg[i] < 0 || arg[i] >= k)
            return -1;
    memset(dx, 0, (size_t)(planes * h * w) * sizeof(float));
    for (int64_t p = 0; p < planes; p++) {
        float *dp = dx + p * h * w;
        for (int64_t oy = 0; oy < ho; oy++) {
            for (int64_t ox = 0; ox < wo; ox++) {
                int64_t o = (p * ho + oy) * wo + ox;
                int64_t t = arg[o];
                dp[(oy * kh + t / kw) * w + ox * kw + t % kw] = 0.0f + dy[o];
            }
        }
    }
    return 0;
}
