/* The chip's number formats in C (docs/numerics.md), bit-identical to protocol/numerics.py.
 *
 * Every input is a float32 word taken apart with integer operations: a finite non-zero
 * magnitude is sig * 2^e2 with sig < 2^24, and its binade exponent is ea = floor(log2 |x|).
 * Rounding to a grid whose step is 2^q is then a shift of sig: the kept bits are the integer
 * part, the dropped bits (rem, k of them) the fraction, so nearest, truncate and stochastic
 * rounding (F = floor(frac * 2^32), up iff r < F) are all exact integer decisions. No
 * floating-point arithmetic is used while encoding; decoding multiplies by powers of two only
 * (exact) or assembles float32 words directly.
 */
#include "numerics_api.h"

#include <stdlib.h>
#include <string.h>

#define GOLDEN 0x9E3779B97F4A7C15ULL
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* The hot loops are written as plain C the compiler vectorises; on x86-64 with GCC and glibc
 * (ifunc) they are also compiled for AVX2 and AVX-512 and picked at load time (results are
 * identical: integer arithmetic only; mt_numerics_set_portable forces the baseline loops). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif
#define F32_QNAN 0x7FC00000u

/* ---------------------------------------------------------------- SR generator */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t sr_key(uint64_t seed, uint64_t stream)
{
    return mix64(seed ^ mix64(stream + GOLDEN));
}

static inline uint32_t sr_at(uint64_t key, uint64_t i)
{
    return (uint32_t)(mix64(key + i * GOLDEN) >> 32);
}

/* Random value of element j of a call (offset = flat index of element 0). */
static inline uint32_t rand_of(const uint32_t *rbits, uint64_t key, uint64_t offset, size_t j)
{
    return rbits ? rbits[j] : sr_at(key, offset + (uint64_t)j);
}

/* out[j] = r[first + j] for j < n (AVX-512 when the CPU has it; defined below). */
static void sr_fill(uint32_t *out, size_t n, uint64_t key, uint64_t first);

void mt_sr_bits(uint32_t *out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset)
{
    sr_fill(out, n, sr_key(seed, stream), offset);
}

/* ---------------------------------------------------------------- threads */

static int g_threads = 2;
static int g_portable = 0;

void mt_numerics_set_threads(int n) { g_threads = n < 2 ? 1 : 2; }

void mt_numerics_set_portable(int portable) { g_portable = portable != 0; }

/* Arrays at least this long are split across two threads. */
#define SPLIT_MIN ((size_t)1 << 18)

typedef void (*range_fn)(const void *ctx, size_t lo, size_t hi);

/* The parked-thread pool of gemm.c (fn(ctx, t, nt) for t = 0..nt-1). */
void mt_run_parallel(void (*fn)(void *ctx, int tid, int nt), void *ctx, int nt);

typedef struct {
    range_fn fn;
    const void *ctx;
    size_t mid, n;
} split_job;

static void split_half(void *p, int tid, int nt)
{
    const split_job *job = p;
    (void)nt;
    if (tid == 0)
        job->fn(job->ctx, 0, job->mid);
    else
        job->fn(job->ctx, job->mid, job->n);
}

/* Run fn over [0, n), in two halves on two threads (the caller and a pool worker) when n is
 * large. Each element's result depends only on the element and its index, so the split
 * cannot change any result. */
static void run_split(range_fn fn, const void *ctx, size_t n)
{
    if (g_threads < 2 || n < SPLIT_MIN) {
        fn(ctx, 0, n);
        return;
    }
    split_job job = {fn, ctx, (n / 2) & ~(size_t)63, n};
    mt_run_parallel(split_half, &job, 2);
}

/* ---------------------------------------------------------------- float32 words */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Finite non-zero magnitude a (float32 bits without sign) as sig * 2^e2; *ea = floor(log2). */
static inline uint32_t split_mag(uint32_t a, int *e2, int *ea)
{
    uint32_t ex = a >> 23;
    if (ex) {
        *e2 = (int)ex - 150;
        *ea = (int)ex - 127;
        return (a & 0x7FFFFFu) | 0x800000u;
    }
    *e2 = -149;
    *ea = -149 + (31 - __builtin_clz(a));
    return a;
}

/* float32 bits of sig * 2^ex, which must be representable (normal or subnormal), sig > 0. */
static inline uint32_t f32_assemble(uint32_t sig, int ex)
{
    int top = 31 - __builtin_clz(sig);
    int e = ex + top;
    if (e >= -126)
        return ((uint32_t)(e + 127) << 23) | ((sig << (23 - top)) & 0x7FFFFFu);
    return sig << (ex + 149);
}

/* Sign of sig * 2^sh - m, exactly, for sig < 2^24 and m < 2^24. */
static inline int cmp_scaled(uint64_t sig, int sh, uint64_t m)
{
    if (sh >= 0) {
        if (sh > 40)
            return sig ? 1 : (m ? -1 : 0);
        uint64_t v = sig << sh;
        return (v > m) - (v < m);
    }
    if (-sh > 40)
        return m ? -1 : (sig > 0);
    uint64_t w = m << -sh;
    return (sig > w) - (sig < w);
}

/* Rounding increment (0 or 1) of the magnitude kept + rem / 2^k, for 0 <= k <= 63 and
 * rem < 2^k (a k clamped to 63 changes no decision: the magnitudes are below 2^24).
 * nearest: half-even (kept's parity is the code's); truncate: 0; stochastic: up iff r < F =
 * floor(frac * 2^32). neg = 1 selects fixed point's stochastic rule for a negative value y,
 * which rounds y itself: floor(y) + (r < 2^32 - G), G = ceil(frac * 2^32), i.e. the magnitude
 * goes up iff ~r < G (G is F plus one when bits below 2^-32 are set, only when k > 32).
 * Branch-free for a constant rounding mode, so the loops around it vectorise. */
ALWAYS_INLINE uint64_t round_inc(uint64_t kept, uint64_t rem, int k, uint64_t neg, int rounding,
                                 uint32_t r)
{
    if (rounding == MT_ROUND_NEAREST) {
        const uint64_t half = (1ULL << k) >> 1;
        return (uint64_t)(rem > half) | ((uint64_t)(rem == half) & (uint64_t)(k > 0) & kept & 1);
    }
    if (rounding == MT_ROUND_STOCHASTIC) {
        const int s2 = k > 32 ? k - 32 : 0;
        const uint64_t F = (rem << (32 - k + s2)) >> s2;
        const uint64_t sticky = (rem & ((1ULL << s2) - 1)) != 0;
        const uint64_t rr = (uint64_t)(r ^ (0u - (uint32_t)neg));
        return rr < F + (neg & sticky);
    }
    return 0;
}

/* ---------------------------------------------------------------- float formats */

typedef struct {
    int M, emin, emax, scale;
    int adj;           /* added to the magnitude code of a normal value (DLFloat: -2^M) */
    uint32_t maxcode;  /* magnitude code of the largest finite value */
    uint32_t nan;      /* canonical NaN magnitude code */
    uint32_t ovf;      /* overflow magnitude code (inf, or NaN when there is no inf) */
    uint32_t signbit;
} fcfg;

static fcfg float_cfg(const mt_float_fmt *f)
{
    fcfg c;
    int E = f->ebits, M = f->mbits;
    uint32_t top = (1u << E) - 1; /* all-ones exponent field */
    c.M = M;
    c.scale = f->scale_exp;
    c.signbit = 1u << (E + M);
    c.adj = 0;
    if (f->family == MT_FLOAT_IEEE) {
        c.emin = 1 - f->bias;
        c.emax = (int)top - 1 - f->bias;
        c.ovf = top << M;
        c.maxcode = c.ovf - 1;
        c.nan = c.ovf | (1u << (M - 1));
    } else if (f->family == MT_FLOAT_FN) {
        c.emin = 1 - f->bias;
        c.emax = (int)top - f->bias;
        c.nan = c.ovf = c.signbit - 1;
        c.maxcode = c.nan - 1;
    } else {
        c.emin = -f->bias;
        c.emax = (int)top - f->bias;
        c.nan = c.ovf = c.signbit - 1;
        c.maxcode = c.nan - 1;
        c.adj = -(1 << M);
    }
    return c;
}

/* DLFloat below its smallest positive value minpos = 2^emin * (1 + 2^-M): the neighbours are
 * 0 (code 0) and minpos (code 1), and frac = a / minpos is not dyadic. With a = sig * 2^e2 and
 * minpos = (2^M + 1) * 2^(emin - M), every decision is an exact integer comparison. */
static inline uint32_t dl_underflow(const fcfg *c, uint64_t sig, int e2, int rounding, uint32_t r)
{
    uint64_t d = (1ULL << c->M) + 1; /* minpos in units of 2^(emin - M) */
    int rel = e2 - (c->emin - c->M);  /* a = sig * 2^rel units */
    if (rounding == MT_ROUND_NEAREST) /* up iff 2a > minpos (a tie goes to the even code 0) */
        return cmp_scaled(sig, rel + 1, d) > 0;
    if (rounding == MT_ROUND_STOCHASTIC) { /* F = floor(a / minpos * 2^32) */
        int sh = rel + 32;
        uint64_t num;
        if (sh >= 0)
            num = sig << sh; /* < d * 2^32 since a < minpos */
        else
            num = -sh > 63 ? 0 : sig >> -sh;
        uint32_t F = (uint32_t)(num / d);
        return r < F;
    }
    return 0;
}

/* Code of x (float32 bits u), sign included. The magnitude a = sig * 2^e2 (scaled by
 * 2^-scale for fp8-seb) lies in the binade ea = floor(log2 a); the grid step there is
 * 2^(eb - M) with eb = max(ea, emin), so kept = floor(a / step) and the dropped bits decide
 * the rounding. Magnitude codes are consecutive along the grid (the overflow point is the
 * code after the largest finite), so the code is the binade's first code plus kept plus the
 * rounding increment, and a carry into the next binade or past maxcode is automatic.
 * family, rounding and saturate are constants in every caller; only DLFloat's underflow
 * region takes a branch. */
ALWAYS_INLINE uint32_t encode_float1(const fcfg *c, const int family, uint32_t u,
                                     const int rounding, const int saturate, uint32_t r)
{
    const uint32_t a = u & 0x7FFFFFFFu;
    const uint32_t sign = (u >> 31) ? c->signbit : 0;
    const uint32_t ex = a >> 23;
    const uint64_t sig = ex ? (uint64_t)((a & 0x7FFFFFu) | 0x800000u) : (uint64_t)a;
    const int e2 = (ex ? (int)ex : 1) - 150 - c->scale;
    /* floor(log2 a) for a normal a. For a float32 subnormal the true value is below -126,
     * and -127 - scale (scale <= 64) is below every format's emin just as well: such an a
     * is always in the format's lowest binade (eb = emin) or DLFloat's underflow region. */
    const int ea = (int)ex - 127 - c->scale;
    const int eb = ea > c->emin ? ea : c->emin;
    int k = eb - c->M - e2;
    const int ls = k < 0 ? -k : 0;
    k = k < 0 ? 0 : (k > 63 ? 63 : k);
    const uint64_t kept = (sig >> k) << ls;
    const uint64_t rem = sig & ((1ULL << k) - 1);
    const uint64_t code = ((uint64_t)(eb - c->emin) << c->M) + (uint64_t)(int64_t)c->adj + kept +
                          round_inc(kept, rem, k, 0, rounding, r);
    /* past the largest finite: +-max when saturating (truncate never leaves the finite range) */
    const uint32_t big = (saturate || rounding == MT_ROUND_TRUNCATE) ? c->maxcode : c->ovf;
    uint32_t mag = ((ea > c->emax) | (code > c->maxcode)) ? big : (uint32_t)code;
    if (family == MT_FLOAT_DL && ea <= c->emin &&
        (ea < c->emin || cmp_scaled(sig, e2 - (c->emin - c->M), (1ULL << c->M) + 1) < 0))
        mag = dl_underflow(c, sig, e2, rounding, r);
    mag = a == 0x7F800000u ? (saturate ? c->maxcode : c->ovf) : mag;
    mag = a > 0x7F800000u ? c->nan : mag;
    return mag | sign;
}

static inline uint32_t decode_float1(const fcfg *c, int family, uint32_t code)
{
    uint32_t sign = (code & c->signbit) ? 0x80000000u : 0;
    uint32_t mag = code & (c->signbit - 1);
    uint32_t e = mag >> c->M, m = mag & ((1u << c->M) - 1);
    uint32_t sig;
    int ex;
    if (family == MT_FLOAT_IEEE) {
        if (mag >= c->ovf)
            return sign | (mag == c->ovf ? 0x7F800000u : F32_QNAN);
    } else if (mag == c->nan) {
        return sign | F32_QNAN;
    }
    if (family == MT_FLOAT_DL) {
        if (mag == 0)
            return sign;
        sig = m | (1u << c->M);
        ex = c->emin + (int)e - c->M;
    } else if (e == 0) {
        if (m == 0)
            return sign;
        sig = m;
        ex = c->emin - c->M;
    } else {
        sig = m | (1u << c->M);
        ex = c->emin + (int)e - 1 - c->M;
    }
    return sign | f32_assemble(sig, ex + c->scale);
}

typedef struct {
    const float *x;
    void *codes;
    fcfg c;
    int family, bytes, rounding, saturate;
    uint64_t key, offset;
    const uint32_t *rbits;
} float_enc_ctx;

/* Elements are processed in blocks: the block's random values, the codes, then the store. */
#define BLOCK 512

/* The block's random values: injected ones or the generator's (a loop that vectorises). */
static inline const uint32_t *block_rbits(uint32_t *rb, const uint32_t *rbits, uint64_t key,
                                          uint64_t first, size_t b, size_t m)
{
    if (rbits)
        return rbits + b;
    sr_fill(rb, m, key, first);
    return rb;
}

ALWAYS_INLINE void float_enc_blocks(const float_enc_ctx *t, size_t lo, size_t hi,
                                    const int family, const int rounding, const int sat)
{
    uint32_t rb[BLOCK], cb[BLOCK];
    const fcfg c = t->c;
    for (size_t b = lo; b < hi; b += BLOCK) {
        const size_t m = hi - b < BLOCK ? hi - b : BLOCK;
        const uint32_t *r = rb;
        if (rounding == MT_ROUND_STOCHASTIC)
            r = block_rbits(rb, t->rbits, t->key, t->offset + b, b, m);
        const float *x = t->x + b;
        for (size_t j = 0; j < m; j++)
            cb[j] = encode_float1(&c, family, f32_bits(x[j]), rounding, sat,
                                  rounding == MT_ROUND_STOCHASTIC ? r[j] : 0);
        if (t->bytes == 1) {
            uint8_t *o = (uint8_t *)t->codes + b;
            for (size_t j = 0; j < m; j++)
                o[j] = (uint8_t)cb[j];
        } else if (t->bytes == 2) {
            uint16_t *o = (uint16_t *)t->codes + b;
            for (size_t j = 0; j < m; j++)
                o[j] = (uint16_t)cb[j];
        } else {
            memcpy((uint32_t *)t->codes + b, cb, m * sizeof *cb);
        }
    }
}

#define FLOAT_CASE(fam, rnd, sat) \
    case ((fam) * 3 + (rnd)) * 2 + (sat): float_enc_blocks(t, lo, hi, fam, rnd, sat); break
#define FLOAT_CASES(fam) \
    FLOAT_CASE(fam, MT_ROUND_NEAREST, 0); FLOAT_CASE(fam, MT_ROUND_NEAREST, 1); \
    FLOAT_CASE(fam, MT_ROUND_STOCHASTIC, 0); FLOAT_CASE(fam, MT_ROUND_STOCHASTIC, 1); \
    FLOAT_CASE(fam, MT_ROUND_TRUNCATE, 0); FLOAT_CASE(fam, MT_ROUND_TRUNCATE, 1)

ALWAYS_INLINE void float_enc_dispatch(const void *p, size_t lo, size_t hi)
{
    const float_enc_ctx *t = p;
    switch ((t->family * 3 + t->rounding) * 2 + t->saturate) {
        FLOAT_CASES(MT_FLOAT_IEEE);
        FLOAT_CASES(MT_FLOAT_FN);
        FLOAT_CASES(MT_FLOAT_DL);
    default: break;
    }
}

VECTOR_CLONES static void float_enc_range(const void *p, size_t lo, size_t hi)
{
    float_enc_dispatch(p, lo, hi);
}

static void float_enc_range_portable(const void *p, size_t lo, size_t hi)
{
    float_enc_dispatch(p, lo, hi);
}

void mt_encode_float(const float *x, void *codes, size_t n, const mt_float_fmt *fmt,
                     int rounding, int saturate, uint64_t seed, uint64_t stream,
                     uint64_t offset, const uint32_t *rbits)
{
    float_enc_ctx t = {x,        codes,         float_cfg(fmt),       fmt->family,
                       fmt->code_bytes, rounding, saturate != 0, sr_key(seed, stream),
                       offset,   rbits};
    run_split(g_portable ? float_enc_range_portable : float_enc_range, &t, n);
}

/* Decoding: a table of every code's float32 word when the array is much longer than the
 * table (8- and 16-bit codes), else code by code. */
void mt_decode_float(const void *codes, float *out, size_t n, const mt_float_fmt *fmt)
{
    fcfg c = float_cfg(fmt);
    const int fam = fmt->family;
    uint32_t mask = (c.signbit << 1) - 1;
    uint32_t *o = (uint32_t *)out;
    if (fmt->code_bytes == 1) {
        uint32_t lut[256];
        for (uint32_t v = 0; v < 256; v++)
            lut[v] = decode_float1(&c, fam, v & mask);
        const uint8_t *cs = codes;
        for (size_t j = 0; j < n; j++)
            o[j] = lut[cs[j]];
        return;
    }
    uint32_t *lut = NULL;
    if (fmt->code_bytes == 2 && n >= ((size_t)1 << 20))
        lut = malloc(sizeof *lut << 16);
    if (lut) {
        for (uint32_t v = 0; v < (1u << 16); v++)
            lut[v] = decode_float1(&c, fam, v & mask);
        const uint16_t *cs = codes;
        for (size_t j = 0; j < n; j++)
            o[j] = lut[cs[j]];
        free(lut);
        return;
    }
    for (size_t j = 0; j < n; j++) {
        uint32_t code = fmt->code_bytes == 2 ? ((const uint16_t *)codes)[j]
                                             : ((const uint32_t *)codes)[j];
        o[j] = decode_float1(&c, fam, code & mask);
    }
}

/* ---------------------------------------------------------------- fixed point */

/* Code of x (float32 bits u) in nbits-bit two's complement with frac_bits fractional bits.
 * Branch-free so that the loops around it vectorise: |y| = |x| * 2^frac_bits = sig * 2^sh is
 * split into kept = floor(|y|) and the k dropped bits rem; specials are selected at the end.
 * Left shifts stop at 39: |y| >= 2^31 is beyond every code range (saturation), and
 * sig << 39 has the same low 16 bits (all zero) as the true integer (wrap-around). */
ALWAYS_INLINE int32_t encode_fixed1(uint32_t u, int nbits, int frac_bits, int rounding,
                                    int saturate, uint32_t r)
{
    const int64_t hi = ((int64_t)1 << (nbits - 1)) - 1, lo = -hi - 1;
    const uint64_t neg = u >> 31;
    const uint32_t a = u & 0x7FFFFFFFu;
    const uint32_t ex = a >> 23;
    const uint64_t sig = ex ? (uint64_t)((a & 0x7FFFFFu) | 0x800000u) : (uint64_t)a;
    const int sh = (ex ? (int)ex : 1) - 150 + frac_bits;
    const int ls = sh < 0 ? 0 : (sh > 39 ? 39 : sh);
    const int k = sh > 0 ? 0 : (sh < -63 ? 63 : -sh); /* k > 63 changes no decision */
    const uint64_t kept = (sig >> k) << ls;
    const uint64_t rem = sig & ((1ULL << k) - 1);
    const uint64_t up = round_inc(kept, rem, k, neg, rounding, r);
    const uint64_t mag = kept + up;
    int64_t v = (int64_t)((mag ^ (0 - neg)) + neg);
    if (saturate) {
        v = v > hi ? hi : (v < lo ? lo : v);
    } else { /* wrap modulo 2^nbits */
        const uint64_t sb = (uint64_t)1 << (nbits - 1);
        v = (int64_t)((((uint64_t)v & ((sb << 1) - 1)) ^ sb) - sb);
    }
    v = a > 0x7F800000u ? 0 : v;                 /* NaN encodes as 0 */
    v = a == 0x7F800000u ? (neg ? lo : hi) : v;  /* +-inf always saturates */
    return (int32_t)v;
}

/* 2^e as a float (|e| <= 126). */
static inline float pow2f(int e) { return f32_from_bits((uint32_t)(e + 127) << 23); }

typedef struct {
    const float *x;
    void *codes; /* int8/int16 codes, or NULL */
    float *out;  /* quantized values, or NULL */
    int nbits, frac_bits, rounding, saturate;
    uint64_t key, offset;
    const uint32_t *rbits;
} fixed_ctx;

ALWAYS_INLINE void fixed_blocks(const fixed_ctx *t, size_t lo, size_t hi, const int rounding,
                                const int sat)
{
    const int nbits = t->nbits, f = t->frac_bits;
    const float scale = pow2f(-f);
    uint32_t rb[BLOCK];
    int32_t cb[BLOCK];
    for (size_t b = lo; b < hi; b += BLOCK) {
        const size_t m = hi - b < BLOCK ? hi - b : BLOCK;
        const uint32_t *r = rb;
        if (rounding == MT_ROUND_STOCHASTIC)
            r = block_rbits(rb, t->rbits, t->key, t->offset + b, b, m);
        const float *x = t->x + b;
#define FIXED_AT(j) \
    encode_fixed1(f32_bits(x[j]), nbits, f, rounding, sat, \
                  rounding == MT_ROUND_STOCHASTIC ? r[j] : 0)
        if (t->out) { /* codes of the block, then their values (two simple loops) */
            float *o = t->out + b;
            for (size_t j = 0; j < m; j++)
                cb[j] = FIXED_AT(j);
            for (size_t j = 0; j < m; j++)
                o[j] = (float)cb[j] * scale;
            if (t->codes && nbits <= 8)
                for (size_t j = 0; j < m; j++)
                    ((int8_t *)t->codes + b)[j] = (int8_t)cb[j];
            else if (t->codes)
                for (size_t j = 0; j < m; j++)
                    ((int16_t *)t->codes + b)[j] = (int16_t)cb[j];
        } else if (nbits <= 8) {
            int8_t *o = (int8_t *)t->codes + b;
            for (size_t j = 0; j < m; j++)
                o[j] = (int8_t)FIXED_AT(j);
        } else {
            int16_t *o = (int16_t *)t->codes + b;
            for (size_t j = 0; j < m; j++)
                o[j] = (int16_t)FIXED_AT(j);
        }
#undef FIXED_AT
    }
}

/* ---------------------------------------------------------------- AVX-512 fixed point
 *
 * encode_fixed1 on 16 elements at once, in 32-bit lanes (the scalar code uses 64-bit
 * intermediates; everything fits in 32 bits here): with |y| = sig * 2^sh, sig < 2^24,
 *  - sh > 0: no dropped bits; kept = sig << sh. Saturating, the shift stops at 8 (a normal
 *    sig << 8 >= 2^31 is beyond every code range, and sig << 8 < 2^32 cannot wrap); wrapping,
 *    vpsllvd gives sig << sh mod 2^32 (0 for sh >= 32), whose low 16 bits are the scalar
 *    code's.
 *  - sh <= 0: k = -sh dropped bits, clamped to 63 like the scalar code, and to 32 for
 *    nearest rounding (k >= 25 keeps nothing and rounds down either way). kept = sig >> k
 *    and rem = sig & (2^k - 1) come from vpsrlvd/vpsllvd, which give 0 for counts >= 32.
 *  - stochastic: F = rem << (32 - k) (k <= 32) or rem >> (k - 32) with the sticky bits
 *    below (k > 32); the scalar rule rr < F + sticky (64-bit) is rr <= F when sticky, else
 *    rr < F.
 * The random values: z = key + i * GOLDEN advances by 16 * GOLDEN per 16 elements (mod
 * 2^64), mixed by mix64 in two vectors of eight 64-bit lanes; the high halves are r[i].
 * Same bits as the scalar loops (tests/test_numerics_c.py compares both with the numpy
 * reference, and with each other). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX512_FIXED 1
#define AVX512_FIXED_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))

AVX512_FIXED_TARGET static inline __m512i mix64_v(__m512i z)
{
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)),
                           _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ULL));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)),
                           _mm512_set1_epi64((long long)0x94D049BB133111EBULL));
    return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}

/* r of 16 consecutive indices from z0 (lanes 0..7) and z1 (lanes 8..15). */
AVX512_FIXED_TARGET static inline __m512i rand16(__m512i z0, __m512i z1)
{
    __m256i lo = _mm512_cvtepi64_epi32(_mm512_srli_epi64(mix64_v(z0), 32));
    __m256i hi = _mm512_cvtepi64_epi32(_mm512_srli_epi64(mix64_v(z1), 32));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

AVX512_FIXED_TARGET static inline __m512i encode_fixed16(__m512i u, __m512i r, int nbits, int f,
                                                         int rounding, int sat)
{
    const __m512i one = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
    const __mmask16 neg = _mm512_test_epi32_mask(u, _mm512_set1_epi32((int)0x80000000u));
    const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
    const __m512i ex = _mm512_srli_epi32(a, 23);
    const __mmask16 normal = _mm512_test_epi32_mask(ex, ex);
    const __m512i sig = _mm512_mask_or_epi32(a, normal, _mm512_and_si512(a, _mm512_set1_epi32(0x7FFFFF)),
                                             _mm512_set1_epi32(0x800000));
    const __m512i sh = _mm512_add_epi32(_mm512_max_epi32(ex, one), _mm512_set1_epi32(f - 150));
    const __mmask16 left = _mm512_cmpgt_epi32_mask(sh, zero);
    /* sh > 0 */
    __m512i lsh = sat ? _mm512_min_epi32(sh, _mm512_set1_epi32(8)) : sh;
    __m512i kept_l = _mm512_sllv_epi32(sig, _mm512_max_epi32(lsh, zero));
    /* sh <= 0 */
    __m512i k = _mm512_min_epi32(_mm512_sub_epi32(zero, sh),
                                 _mm512_set1_epi32(rounding == MT_ROUND_NEAREST ? 32 : 63));
    k = _mm512_max_epi32(k, zero);
    __m512i kept_r = _mm512_srlv_epi32(sig, k);
    __m512i rem = _mm512_and_si512(sig, _mm512_sub_epi32(_mm512_sllv_epi32(one, k), one));
    __mmask16 up = 0;
    if (rounding == MT_ROUND_NEAREST) {
        __m512i half = _mm512_srli_epi32(_mm512_sllv_epi32(one, _mm512_sub_epi32(k, one)), 0);
        half = _mm512_maskz_mov_epi32(_mm512_cmpgt_epi32_mask(k, zero), half);
        __mmask16 gt = _mm512_cmpgt_epu32_mask(rem, half);
        __mmask16 eq = _mm512_cmpeq_epi32_mask(rem, half) & _mm512_cmpgt_epi32_mask(k, zero) &
                       _mm512_test_epi32_mask(kept_r, one);
        up = gt | eq;
    } else if (rounding == MT_ROUND_STOCHASTIC) {
        const __m512i c32 = _mm512_set1_epi32(32);
        __mmask16 big = _mm512_cmpgt_epi32_mask(k, c32);
        __m512i s2 = _mm512_maskz_sub_epi32(big, k, c32);
        __m512i fl = _mm512_sllv_epi32(rem, _mm512_sub_epi32(c32, k));
        __m512i F = _mm512_mask_mov_epi32(fl, big, _mm512_srlv_epi32(rem, s2));
        __m512i smask = _mm512_sub_epi32(_mm512_sllv_epi32(one, s2), one);
        __mmask16 sticky = _mm512_test_epi32_mask(rem, smask) & neg;
        __m512i rr = _mm512_mask_xor_epi32(r, neg, r, _mm512_set1_epi32(-1));
        up = (_mm512_cmplt_epu32_mask(rr, F) & ~sticky) | (_mm512_cmple_epu32_mask(rr, F) & sticky);
    }
    up &= (__mmask16)~left;
    __m512i mag = _mm512_mask_mov_epi32(kept_r, left, kept_l);
    mag = _mm512_mask_add_epi32(mag, up, mag, one);
    const int32_t hi = (int32_t)((1u << (nbits - 1)) - 1), lo = -hi - 1;
    __m512i v = _mm512_mask_sub_epi32(mag, neg, zero, mag);
    if (sat) {
        /* compare magnitudes (unsigned: a shifted one may reach 2^32 - 256) */
        __mmask16 pos_big = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(hi)) & ~neg;
        __mmask16 neg_big = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32((int)(1u << (nbits - 1)))) & neg;
        v = _mm512_mask_mov_epi32(v, pos_big, _mm512_set1_epi32(hi));
        v = _mm512_mask_mov_epi32(v, neg_big, _mm512_set1_epi32(lo));
    } else {
        const __m512i sb = _mm512_set1_epi32((int)(1u << (nbits - 1)));
        const __m512i msk = _mm512_set1_epi32((int)((2u << (nbits - 1)) - 1));
        v = _mm512_sub_epi32(_mm512_xor_si512(_mm512_and_si512(v, msk), sb), sb);
    }
    const __m512i inf = _mm512_set1_epi32(0x7F800000);
    v = _mm512_mask_mov_epi32(v, _mm512_cmpgt_epi32_mask(a, inf), zero);
    __mmask16 isinf = _mm512_cmpeq_epi32_mask(a, inf);
    v = _mm512_mask_mov_epi32(v, isinf & ~neg, _mm512_set1_epi32(hi));
    v = _mm512_mask_mov_epi32(v, isinf & neg, _mm512_set1_epi32(lo));
    return v;
}

AVX512_FIXED_TARGET static void fixed_avx512(const fixed_ctx *t, size_t lo, size_t hi,
                                             const int rounding, const int sat)
{
    const int nbits = t->nbits, f = t->frac_bits;
    const __m512 scale = _mm512_set1_ps(pow2f(-f));
    const uint64_t i0 = t->offset + lo;
    const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i g = _mm512_set1_epi64((long long)GOLDEN);
    /* z = key + i * GOLDEN for i = i0 + lane and i0 + 8 + lane; step 16 * GOLDEN */
    __m512i z0 = _mm512_add_epi64(_mm512_set1_epi64((long long)(t->key + i0 * GOLDEN)),
                                  _mm512_mullo_epi64(lane, g));
    __m512i z1 = _mm512_add_epi64(z0, _mm512_set1_epi64((long long)(8 * GOLDEN)));
    const __m512i step = _mm512_set1_epi64((long long)(16 * GOLDEN));
    for (size_t j = lo; j < hi; j += 16) {
        const size_t m = hi - j < 16 ? hi - j : 16;
        const __mmask16 km = (__mmask16)(m == 16 ? 0xFFFFu : ((1u << m) - 1));
        __m512i u = _mm512_maskz_loadu_epi32(km, t->x + j);
        __m512i r = _mm512_setzero_si512();
        if (rounding == MT_ROUND_STOCHASTIC) {
            if (t->rbits)
                r = _mm512_maskz_loadu_epi32(km, t->rbits + j);
            else
                r = rand16(z0, z1);
            z0 = _mm512_add_epi64(z0, step);
            z1 = _mm512_add_epi64(z1, step);
        }
        __m512i v = encode_fixed16(u, r, nbits, f, rounding, sat);
        /* full vectors take plain stores (masked stores are slow on some CPUs) */
        if (t->out) {
            __m512 q = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale);
            if (m == 16)
                _mm512_storeu_ps(t->out + j, q);
            else
                _mm512_mask_storeu_ps(t->out + j, km, q);
        }
        if (t->codes && nbits <= 8) {
            __m128i c = _mm512_cvtepi32_epi8(v);
            if (m == 16)
                _mm_storeu_si128((__m128i *)((int8_t *)t->codes + j), c);
            else
                _mm_mask_storeu_epi8((int8_t *)t->codes + j, km, c);
        } else if (t->codes) {
            __m256i c = _mm512_cvtepi32_epi16(v);
            if (m == 16)
                _mm256_storeu_si256((__m256i *)((int16_t *)t->codes + j), c);
            else
                _mm256_mask_storeu_epi16((int16_t *)t->codes + j, km, c);
        }
    }
}

static void fixed_range_avx512(const void *p, size_t lo, size_t hi)
{
    const fixed_ctx *t = p;
    switch (t->rounding * 2 + t->saturate) {
    case MT_ROUND_NEAREST * 2 + 0: fixed_avx512(t, lo, hi, MT_ROUND_NEAREST, 0); break;
    case MT_ROUND_NEAREST * 2 + 1: fixed_avx512(t, lo, hi, MT_ROUND_NEAREST, 1); break;
    case MT_ROUND_STOCHASTIC * 2 + 0: fixed_avx512(t, lo, hi, MT_ROUND_STOCHASTIC, 0); break;
    case MT_ROUND_STOCHASTIC * 2 + 1: fixed_avx512(t, lo, hi, MT_ROUND_STOCHASTIC, 1); break;
    case MT_ROUND_TRUNCATE * 2 + 0: fixed_avx512(t, lo, hi, MT_ROUND_TRUNCATE, 0); break;
    default: fixed_avx512(t, lo, hi, MT_ROUND_TRUNCATE, 1); break;
    }
}

static int has_avx512_fixed(void)
{
    static int cached = -1;
    if (cached < 0)
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    return cached;
}

AVX512_FIXED_TARGET static void sr_fill_avx512(uint32_t *out, size_t n, uint64_t key,
                                               uint64_t first)
{
    const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    __m512i z0 = _mm512_add_epi64(_mm512_set1_epi64((long long)(key + first * GOLDEN)),
                                  _mm512_mullo_epi64(lane, _mm512_set1_epi64((long long)GOLDEN)));
    __m512i z1 = _mm512_add_epi64(z0, _mm512_set1_epi64((long long)(8 * GOLDEN)));
    const __m512i step = _mm512_set1_epi64((long long)(16 * GOLDEN));
    for (size_t j = 0; j < n; j += 16) {
        const size_t m = n - j < 16 ? n - j : 16;
        const __mmask16 km = (__mmask16)(m == 16 ? 0xFFFFu : ((1u << m) - 1));
        if (m == 16)
            _mm512_storeu_si512(out + j, rand16(z0, z1));
        else
            _mm512_mask_storeu_epi32(out + j, km, rand16(z0, z1));
        z0 = _mm512_add_epi64(z0, step);
        z1 = _mm512_add_epi64(z1, step);
    }
}
#else
#define HAVE_AVX512_FIXED 0
#endif

static void sr_fill(uint32_t *out, size_t n, uint64_t key, uint64_t first)
{
#if HAVE_AVX512_FIXED
    if (!g_portable && has_avx512_fixed()) {
        sr_fill_avx512(out, n, key, first);
        return;
    }
#endif
    for (size_t j = 0; j < n; j++)
        out[j] = sr_at(key, first + j);
}

ALWAYS_INLINE void fixed_dispatch(const void *p, size_t lo, size_t hi)
{
    const fixed_ctx *t = p;
    switch (t->rounding * 2 + t->saturate) {
    case MT_ROUND_NEAREST * 2 + 0: fixed_blocks(t, lo, hi, MT_ROUND_NEAREST, 0); break;
    case MT_ROUND_NEAREST * 2 + 1: fixed_blocks(t, lo, hi, MT_ROUND_NEAREST, 1); break;
    case MT_ROUND_STOCHASTIC * 2 + 0: fixed_blocks(t, lo, hi, MT_ROUND_STOCHASTIC, 0); break;
    case MT_ROUND_STOCHASTIC * 2 + 1: fixed_blocks(t, lo, hi, MT_ROUND_STOCHASTIC, 1); break;
    case MT_ROUND_TRUNCATE * 2 + 0: fixed_blocks(t, lo, hi, MT_ROUND_TRUNCATE, 0); break;
    default: fixed_blocks(t, lo, hi, MT_ROUND_TRUNCATE, 1); break;
    }
}

VECTOR_CLONES static void fixed_range(const void *p, size_t lo, size_t hi)
{
    fixed_dispatch(p, lo, hi);
}

static void fixed_range_portable(const void *p, size_t lo, size_t hi)
{
    fixed_dispatch(p, lo, hi);
}

/* The fixed-point loop to run: the AVX-512 one when the CPU has it (and the caller did not
 * ask for the portable loops), else the compiler-vectorised clones or the baseline loops. */
static range_fn fixed_kernel(const fixed_ctx *t)
{
    if (g_portable)
        return fixed_range_portable;
#if HAVE_AVX512_FIXED
    if (has_avx512_fixed())
        return fixed_range_avx512;
#endif
    (void)t;
    return fixed_range;
}

void mt_encode_fixed(const float *x, void *codes, size_t n, int nbits, int frac_bits,
                     int rounding, int saturate, uint64_t seed, uint64_t stream,
                     uint64_t offset, const uint32_t *rbits)
{
    fixed_ctx t = {x,        codes,  NULL, nbits, frac_bits, rounding, saturate != 0,
                   sr_key(seed, stream), offset, rbits};
    run_split(fixed_kernel(&t), &t, n);
}

void mt_quantize_fixed(const float *x, float *out, size_t n, int nbits, int frac_bits,
                       int rounding, int saturate, uint64_t seed, uint64_t stream,
                       uint64_t offset, const uint32_t *rbits)
{
    fixed_ctx t = {x,        NULL,   out, nbits, frac_bits, rounding, saturate != 0,
                   sr_key(seed, stream), offset, rbits};
    run_split(fixed_kernel(&t), &t, n);
}

void mt_encode_fixed_values(const float *x, void *codes, float *out, size_t n, int nbits,
                            int frac_bits, int rounding, int saturate, uint64_t seed,
                            uint64_t stream, uint64_t offset, const uint32_t *rbits)
{
    fixed_ctx t = {x,        codes,  out, nbits, frac_bits, rounding, saturate != 0,
                   sr_key(seed, stream), offset, rbits};
    run_split(fixed_kernel(&t), &t, n);
}

void mt_decode_fixed(const void *codes, float *out, size_t n, int nbits, int frac_bits)
{
    const float scale = pow2f(-frac_bits);
    if (nbits <= 8) {
        const int8_t *c = codes;
        for (size_t j = 0; j < n; j++)
            out[j] = (float)c[j] * scale;
    } else {
        const int16_t *c = codes;
        for (size_t j = 0; j < n; j++)
            out[j] = (float)c[j] * scale;
    }
}

/* ---------------------------------------------------------------- FGMP */

static const mt_float_fmt FGMP_LOW = {4, 3, 7, MT_FLOAT_FN, 1, 0};
static const mt_float_fmt FGMP_HIGH = {5, 10, 15, MT_FLOAT_IEEE, 2, 0};
#define FGMP_OUTLIER 0x10000u

typedef struct {
    const float *x;
    uint32_t *codes;
    fcfg low, high;
    double threshold;
    int rounding, saturate;
    uint64_t key, offset;
    const uint32_t *rbits;
} fgmp_ctx;

static void fgmp_range(const void *p, size_t lo, size_t hi)
{
    const fgmp_ctx *t = p;
    for (size_t j = lo; j < hi; j++) {
        uint32_t r = t->rounding == MT_ROUND_STOCHASTIC ? rand_of(t->rbits, t->key, t->offset, j)
                                                         : 0;
        uint32_t u = f32_bits(t->x[j]);
        uint32_t a = u & 0x7FFFFFFFu;
        /* outlier: NaN, inf, or |x| > threshold (compared exactly in double) */
        if (a >= 0x7F800000u || (double)f32_from_bits(a) > t->threshold)
            t->codes[j] = FGMP_OUTLIER |
                          encode_float1(&t->high, MT_FLOAT_IEEE, u, t->rounding, t->saturate, r);
        else
            t->codes[j] = encode_float1(&t->low, MT_FLOAT_FN, u, t->rounding, t->saturate, r);
    }
}

void mt_encode_fgmp(const float *x, uint32_t *codes, size_t n, double threshold,
                    int rounding, int saturate, uint64_t seed, uint64_t stream,
                    uint64_t offset, const uint32_t *rbits)
{
    fgmp_ctx t = {x,         codes,    float_cfg(&FGMP_LOW),  float_cfg(&FGMP_HIGH),
                  threshold, rounding, saturate != 0,         sr_key(seed, stream),
                  offset,    rbits};
    run_split(fgmp_range, &t, n);
}

void mt_decode_fgmp(const uint32_t *codes, float *out, size_t n)
{
    fcfg low = float_cfg(&FGMP_LOW), high = float_cfg(&FGMP_HIGH);
    for (size_t j = 0; j < n; j++) {
        uint32_t c = codes[j];
        out[j] = f32_from_bits((c & FGMP_OUTLIER) ? decode_float1(&high, MT_FLOAT_IEEE, c & 0xFFFFu)
                                                  : decode_float1(&low, MT_FLOAT_FN, c & 0xFFu));
    }
}

size_t mt_count_outliers(const uint32_t *codes, size_t n)
{
    size_t k = 0;
    for (size_t j = 0; j < n; j++)
        k += (codes[j] & FGMP_OUTLIER) != 0;
    return k;
}

/* ---------------------------------------------------------------- per-tensor scaling */

/* Finite magnitudes order like their bit patterns (as int32: below 2^31); inf and NaN are
 * skipped. Signed compares, so the baseline clone vectorises too. */
VECTOR_CLONES static int32_t amax_range(const float *x, size_t lo, size_t hi)
{
    int32_t m = 0;
    for (size_t j = lo; j < hi; j++) {
        int32_t a = (int32_t)(f32_bits(x[j]) & 0x7FFFFFFFu);
        a = a < 0x7F800000 ? a : 0;
        m = a > m ? a : m;
    }
    return m;
}

typedef struct {
    const float *x;
    int32_t part[2]; /* the maximum of each half */
    size_t mid;
} amax_ctx;

static void amax_part(const void *p, size_t lo, size_t hi)
{
    amax_ctx *t = (amax_ctx *)p; /* each call writes only its own slot */
    t->part[lo >= t->mid && t->mid > 0] = amax_range(t->x, lo, hi);
}

uint32_t mt_amax_bits(const float *x, size_t n)
{
    amax_ctx t = {x, {0, 0}, (n / 2) & ~(size_t)63};
    if (g_threads < 2 || n < SPLIT_MIN)
        return (uint32_t)amax_range(x, 0, n);
    run_split(amax_part, &t, n);
    return (uint32_t)(t.part[0] > t.part[1] ? t.part[0] : t.part[1]);
}

static inline int clamp64(int v) { return v < -64 ? -64 : (v > 64 ? 64 : v); }

int mt_scale_dfxp(uint32_t amax_bits, int nbits)
{
    if (amax_bits == 0)
        return 0;
    int e2, ea;
    uint32_t sig = split_mag(amax_bits, &e2, &ea);
    uint64_t lim = (1ULL << (nbits - 1)) - 1;
    int f = nbits - 2 - ea; /* amax * 2^f in [2^(N-2), 2^(N-1)) */
    if (cmp_scaled(sig, e2 + f, lim) > 0)
        f -= 1;
    return clamp64(f);
}

/* Smallest s with amax <= lim * 2^s, for lim in [2^(t-1), 2^t); 0 when amax is 0. */
static int scale_smallest(uint32_t amax_bits, uint64_t lim, int t)
{
    if (amax_bits == 0)
        return 0;
    int e2, ea;
    uint32_t sig = split_mag(amax_bits, &e2, &ea);
    int s = ea - (t - 1); /* amax * 2^-s in [2^(t-1), 2^t); s - 1 is too small */
    if (cmp_scaled(sig, e2 - s, lim) > 0)
        s += 1;
    return clamp64(s);
}

int mt_scale_flex16(uint32_t amax_bits) { return scale_smallest(amax_bits, 32767, 15); }

int mt_scale_seb(uint32_t amax_bits) { return scale_smallest(amax_bits, 448, 9); }
