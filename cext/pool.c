/* Max pooling over tiling windows (see pool_api.h). */
#include "pool_api.h"

#include <stdint.h>
#include <string.h>

static int bad_geometry(int64_t planes, int64_t h, int64_t w, int kh, int kw, int64_t ho,
                        int64_t wo)
{
    return planes < 0 || h < 0 || w < 0 || kh < 1 || kw < 1 || ho < 0 || wo < 0 ||
           ho * kh > h || wo * kw > w;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define POOL_AVX512 1
#define TARGET_POOL __attribute__((target("avx512f")))

static int pool_avx512(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f");
    }
    return known;
}

/* Windows that tile the input exactly (h = ho*kh, w = wo*kw) with wo dividing 16: window q
 * (over all planes, rows, columns) starts at (q / wo) * kh * w + (q % wo) * kw, and window
 * q + 16 sixteen windows' worth of rows later. 16 windows at a time: each offset t = i*kw + j
 * in order is gathered for the 16 and taken where np.argmax would take it (!(v <= best)
 * while best is not NaN: NLE_UQ and ORD). Returns the number of windows done (a multiple of
 * 16); the caller finishes the rest. */
TARGET_POOL static int64_t pool16(const float *x, int64_t nwin, int64_t w, int kh, int kw,
                                  int64_t wo, float *y, int64_t *arg)
{
    int32_t base[16];
    for (int q = 0; q < 16; q++)
        base[q] = (int32_t)((q / wo) * kh * w + (q % wo) * kw);
    const __m512i idx0 = _mm512_loadu_si512((const void *)base);
    const int64_t step = 16 / wo * kh * w; /* input elements per 16 windows */
    int64_t q0 = 0;
    for (; q0 + 16 <= nwin; q0 += 16) {
        const float *xb = x + q0 / 16 * step;
        __m512 best = _mm512_i32gather_ps(idx0, xb, 4);
        __m512i at = _mm512_setzero_si512();
        for (int i = 0; i < kh; i++)
            for (int j = (i == 0); j < kw; j++) {
                __m512 v = _mm512_i32gather_ps(idx0, xb + i * w + j, 4);
                __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_NLE_UQ) &
                                 _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q);
                best = _mm512_mask_mov_ps(best, take, v);
                at = _mm512_mask_mov_epi32(at, take, _mm512_set1_epi32(i * kw + j));
            }
        _mm512_storeu_ps(y + q0, best);
        _mm512_storeu_si512((void *)(arg + q0), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(at)));
        _mm512_storeu_si512((void *)(arg + q0 + 8),
                            _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(at, 1)));
    }
    return q0;
}
#endif

int mt_maxpool_tiled_f32(const float *x, int64_t planes, int64_t h, int64_t w, int kh, int kw,
                         int64_t ho, int64_t wo, float *y, int64_t *arg)
{
    if (bad_geometry(planes, h, w, kh, kw, ho, wo))
        return -1;
    int64_t p0 = 0;
#if POOL_AVX512
    if (h == ho * kh && w == wo * kw && wo > 0 && 16 % wo == 0 && planes * h * w < INT32_MAX &&
        pool_avx512()) {
        int64_t nwin = planes * ho * wo;
        int64_t done = pool16(x, nwin, w, kh, kw, wo, y, arg);
        p0 = done / (ho * wo); /* whole planes done; the rest below, by the same rule */
    }
#endif
    for (int64_t p = p0; p < planes; p++) {
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
