/* The frame codec (see framing_api.h): CRC-32 and COBS. memchr finds the zeros and memcpy moves
 * the runs between them, so a COBS block costs two library calls, not a loop step per byte. */
#include "framing_api.h"

#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MT_CLMUL 1
#include <cpuid.h>
#include <emmintrin.h>
#include <immintrin.h>
#include <wmmintrin.h>
#endif

int mt_codec_version(void) { return 3; }

/* ---------------------------------------------------------------------------- CRC-32 */

/* The byte table of the reflected polynomial 0xEDB88320: entry i is the register after byte i
 * from a zero register (written out by a script; tests check mt_codec_crc32 against zlib.crc32). */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

/* The CRC register (no pre- or post-inversion) after p[0..n). */
static uint32_t crc_bytes(uint32_t c, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c;
}

#ifdef MT_CLMUL
/* Folding (Gopal et al., "Fast CRC computation for generic polynomials using PCLMULQDQ",
 * Intel 2009): four 128-bit lanes each stand for the message so far modulo P at their place;
 * moving a lane 512 (or 128) bits on is two 64x33-bit carry-less products with constants
 * x^(D+32) and x^(D-32) mod P (bit-reflected), whose sum is congruent and fits 128 bits. The
 * last lane, stored as 16 bytes, has the CRC register of the data it stands for, so the byte
 * table finishes the job from a zero register (no Barrett step needed). */
__attribute__((target("pclmul,sse2"))) static __m128i fold(__m128i x, __m128i k) {
    return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

__attribute__((target("pclmul,sse2"))) static uint32_t crc_clmul(uint32_t c, const uint8_t *p,
                                                                   size_t n) {
    const __m128i k512 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL); /* hi, lo */
    const __m128i k128 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
    __m128i x0 = _mm_loadu_si128((const __m128i *)p);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)c));
    p += 64;
    n -= 64;
    while (n >= 64) {
        x0 = _mm_xor_si128(fold(x0, k512), _mm_loadu_si128((const __m128i *)p));
        x1 = _mm_xor_si128(fold(x1, k512), _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = _mm_xor_si128(fold(x2, k512), _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = _mm_xor_si128(fold(x3, k512), _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        n -= 64;
    }
    x1 = _mm_xor_si128(fold(x0, k128), x1);
    x2 = _mm_xor_si128(fold(x1, k128), x2);
    x3 = _mm_xor_si128(fold(x2, k128), x3);
    while (n >= 16) {
        x3 = _mm_xor_si128(fold(x3, k128), _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
    uint8_t lane[16];
    _mm_storeu_si128((__m128i *)lane, x3);
    return crc_bytes(crc_bytes(0, lane, 16), p, n);
}

/* The same folding four 512-bit registers (sixteen 128-bit lanes, 256 bytes) a step with
 * VPCLMULQDQ, for n >= 256: each lane moves 2048 bits on (constants x^(2048+32), x^(2048-32)
 * mod P, bit-reflected, from the same formula as the ones above, which it reproduces for 512
 * and 128 bits); the four registers then fold into one by 512 bits a lane, 64 bytes a step
 * after that, and its four lanes, which stand for 64 consecutive bytes, finish as above. About
 * 3x the 128-bit code on data in cache (a 60 KiB frame). */
__attribute__((target("avx512f,vpclmulqdq"))) static __m512i fold4(__m512i x, __m512i k) {
    return _mm512_xor_si512(_mm512_clmulepi64_epi128(x, k, 0x00),
                            _mm512_clmulepi64_epi128(x, k, 0x11));
}

__attribute__((target("avx512f,vpclmulqdq,pclmul,sse2"))) static uint32_t crc_vclmul(
    uint32_t c, const uint8_t *p, size_t n) {
    const __m512i k2048 = _mm512_set_epi64(0x1322d1430LL, 0x11542778aLL, 0x1322d1430LL,
                                           0x11542778aLL, 0x1322d1430LL, 0x11542778aLL,
                                           0x1322d1430LL, 0x11542778aLL); /* hi, lo per lane */
    const __m512i k512 = _mm512_set_epi64(0x1c6e41596LL, 0x154442bd4LL, 0x1c6e41596LL,
                                          0x154442bd4LL, 0x1c6e41596LL, 0x154442bd4LL,
                                          0x1c6e41596LL, 0x154442bd4LL);
    const __m128i k128 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
    __m512i x0 = _mm512_loadu_si512((const void *)p);
    __m512i x1 = _mm512_loadu_si512((const void *)(p + 64));
    __m512i x2 = _mm512_loadu_si512((const void *)(p + 128));
    __m512i x3 = _mm512_loadu_si512((const void *)(p + 192));
    x0 = _mm512_xor_si512(x0, _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                               (int)c));
    p += 256;
    n -= 256;
    while (n >= 256) {
        x0 = _mm512_xor_si512(fold4(x0, k2048), _mm512_loadu_si512((const void *)p));
        x1 = _mm512_xor_si512(fold4(x1, k2048), _mm512_loadu_si512((const void *)(p + 64)));
        x2 = _mm512_xor_si512(fold4(x2, k2048), _mm512_loadu_si512((const void *)(p + 128)));
        x3 = _mm512_xor_si512(fold4(x3, k2048), _mm512_loadu_si512((const void *)(p + 192)));
        p += 256;
        n -= 256;
    }
    x1 = _mm512_xor_si512(fold4(x0, k512), x1);
    x2 = _mm512_xor_si512(fold4(x1, k512), x2);
    x3 = _mm512_xor_si512(fold4(x2, k512), x3);
    while (n >= 64) {
        x3 = _mm512_xor_si512(fold4(x3, k512), _mm512_loadu_si512((const void *)p));
        p += 64;
        n -= 64;
    }
    __m128i a0 = _mm512_extracti32x4_epi32(x3, 0);
    __m128i a1 = _mm512_extracti32x4_epi32(x3, 1);
    __m128i a2 = _mm512_extracti32x4_epi32(x3, 2);
    __m128i a3 = _mm512_extracti32x4_epi32(x3, 3);
    a1 = _mm_xor_si128(fold(a0, k128), a1);
    a2 = _mm_xor_si128(fold(a1, k128), a2);
    a3 = _mm_xor_si128(fold(a2, k128), a3);
    while (n >= 16) {
        a3 = _mm_xor_si128(fold(a3, k128), _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
    uint8_t lane[16];
    _mm_storeu_si128((__m128i *)lane, a3);
    return crc_bytes(crc_bytes(0, lane, 16), p, n);
}

static int vclmul_state = -1; /* -1: not asked yet */

static int crc32_vclmul(void) {
    if (vclmul_state < 0) {
        __builtin_cpu_init();
        vclmul_state =
            __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq");
    }
    return vclmul_state;
}

static int clmul_state = -1; /* -1: not asked yet */

int mt_codec_crc32_simd(void) {
    if (clmul_state < 0) {
        unsigned a, b, cx, d;
        clmul_state = __get_cpuid(1, &a, &b, &cx, &d) && (cx & bit_PCLMUL) && (d & bit_SSE2);
    }
    return clmul_state;
}
#else
int mt_codec_crc32_simd(void) { return 0; }
#endif

uint32_t mt_codec_crc32(uint32_t value, const uint8_t *p, size_t n) {
    uint32_t c = ~value;
#ifdef MT_CLMUL
    if (n >= 256 && mt_codec_crc32_simd() && crc32_vclmul()) return ~crc_vclmul(c, p, n);
    if (n >= 64 && mt_codec_crc32_simd()) return ~crc_clmul(c, p, n);
#endif
    return ~crc_bytes(c, p, n);
}

/* Encoder state: out[code_pos] is the code byte of the open block, which holds code - 1
 * data bytes so far; o is the next free byte of out. */
typedef struct {
    uint8_t *out;
    size_t o;
    size_t code_pos;
    size_t code;
} cobs_enc;

/* Length of the run of bytes equal to `byte` (0x00 or 0x01) at p[0..n), 8 bytes a step. */
static size_t run_of(const uint8_t *p, size_t n, uint8_t byte) {
    const uint64_t word = byte ? 0x0101010101010101ull : 0;
    size_t r = 0;
    while (n - r >= 8) {
        uint64_t w;
        memcpy(&w, p + r, 8);
        if (w != word) break;
        r += 8;
    }
    while (r < n && p[r] == byte) r++;
    return r;
}

#ifdef MT_CLMUL
/* Copy src[0..span) to dst up to the first zero byte; return its index (span if none). 64 bytes
 * a step with AVX-512BW masked loads and stores (never a byte past span read or written): a
 * COBS block is at most 254 bytes, where memchr and memcpy cost more in calls than in work. */
__attribute__((target("avx512f,avx512bw"))) static size_t copy_until_zero(const uint8_t *src,
                                                                          size_t span,
                                                                          uint8_t *dst) {
    const __m512i zero = _mm512_setzero_si512();
    size_t k = 0;
    while (k < span) {
        size_t left = span - k;
        __mmask64 lm = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        __m512i v = _mm512_maskz_loadu_epi8(lm, src + k);
        __mmask64 z = _mm512_mask_cmpeq_epi8_mask(lm, v, zero);
        if (z) {
            _mm512_mask_storeu_epi8(dst + k, (z & (0 - z)) - 1, v); /* the bytes before it */
            return k + (size_t)__builtin_ctzll(z);
        }
        _mm512_mask_storeu_epi8(dst + k, lm, v);
        k += left >= 64 ? 64 : left;
    }
    return span;
}

static int bw_state = -1; /* -1: not asked yet */

static int have_avx512bw(void) {
    if (bw_state < 0) {
        __builtin_cpu_init();
        bw_state = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    }
    return bw_state;
}
#endif

static void enc_piece(cobs_enc *e, const uint8_t *p, size_t n) {
    uint8_t *out = e->out;
    size_t o = e->o, code_pos = e->code_pos, code = e->code;
    size_t i = 0;
    while (i < n) {
        if (p[i] == 0) {
            /* a run of r zeros: the first ends the open block, each other one an empty
             * block (code 0x01); a new block is open after the run */
            size_t r = run_of(p + i, n - i, 0);
            out[code_pos] = (uint8_t)code;
            memset(out + o, 1, r - 1);
            code_pos = o + r - 1;
            o += r;
            code = 1;
            i += r;
            continue;
        }
        size_t room = 255 - code; /* data bytes the open block still takes (1..254) */
        size_t span = n - i < room ? n - i : room;
        size_t k;
#ifdef MT_CLMUL
        if (have_avx512bw()) {
            k = copy_until_zero(p + i, span, out + o); /* copies the bytes before the zero */
        } else
#endif
        {
            const uint8_t *z = memchr(p + i, 0, span);
            k = z != NULL ? (size_t)(z - (p + i)) : span;
            memcpy(out + o, p + i, k);
        }
        if (k < span) {
            o += k;
            out[code_pos] = (uint8_t)(code + k); /* the block ends with this zero */
            code_pos = o++;
            code = 1;
            i += k + 1;
        } else {
            o += span;
            code += span;
            i += span;
            if (code == 255) { /* a full block: ends without a zero */
                out[code_pos] = 0xFF;
                code_pos = o++;
                code = 1;
            }
        }
    }
    e->o = o;
    e->code_pos = code_pos;
    e->code = code;
}

size_t mt_codec_cobs_encode(const uint8_t *a, size_t na, const uint8_t *b, size_t nb,
                            const uint8_t *c, size_t nc, int delimit, uint8_t *out) {
    cobs_enc e;
    size_t start = delimit ? 1 : 0;
    if (delimit) out[0] = 0;
    e.out = out;
    e.code_pos = start;
    e.o = start + 1;
    e.code = 1;
    if (na) enc_piece(&e, a, na);
    if (nb) enc_piece(&e, b, nb);
    if (nc) enc_piece(&e, c, nc);
    out[e.code_pos] = (uint8_t)e.code; /* the last block, always written */
    if (delimit) out[e.o++] = 0;
    return e.o;
}

size_t mt_codec_frame_encode(const uint8_t *a, size_t na, const uint8_t *b, size_t nb,
                             uint32_t value, uint8_t *out) {
    uint32_t crc = mt_codec_crc32(mt_codec_crc32(value, a, na), b, nb);
    uint8_t tail[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16),
                       (uint8_t)(crc >> 24)};
    return mt_codec_cobs_encode(a, na, b, nb, tail, 4, 1, out);
}

ptrdiff_t mt_codec_cobs_decode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        size_t code = in[i];
        if (code == 1) {
            /* a run of r empty blocks: a zero each, but none after the last block */
            size_t r = run_of(in + i, n - i, 1);
            i += r;
            if (i == n) r--;
            memset(out + o, 0, r);
            o += r;
            continue;
        }
        if (code == 0 || code > n - i) return -(ptrdiff_t)(i + 1);
        memcpy(out + o, in + i + 1, code - 1);
        o += code - 1;
        i += code;
        /* the next code byte stands for the zero that ended this block, unless the block
         * was a full one (0xFF) or the last one */
        if (i < n && code != 0xFF) out[o++] = 0;
    }
    return (ptrdiff_t)o;
}

size_t mt_codec_zeros(const uint8_t *p, size_t n, size_t *pos, size_t cap) {
    size_t k = 0, i = 0;
    while (k < cap && i < n) {
        const uint8_t *z = memchr(p + i, 0, n - i);
        if (z == NULL) break;
        pos[k++] = (size_t)(z - p);
        i = (size_t)(z - p) + 1;
    }
    return k;
}
