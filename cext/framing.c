/* COBS for the frame layer (see framing_api.h). memchr finds the zeros and memcpy moves the
 * runs between them, so a block costs two library calls, not a loop step per byte. */
#include "framing_api.h"

#include <string.h>

int mt_framing_version(void) { return 1; }

/* Encoder state: out[code_pos] is the code byte of the open block, which holds code - 1
 * data bytes so far; o is the next free byte of out. */
typedef struct {
    uint8_t *out;
    size_t o;
    size_t code_pos;
    size_t code;
} cobs_enc;

static void enc_piece(cobs_enc *e, const uint8_t *p, size_t n) {
    uint8_t *out = e->out;
    size_t o = e->o, code_pos = e->code_pos, code = e->code;
    size_t i = 0;
    while (i < n) {
        size_t room = 255 - code; /* data bytes the open block still takes (1..254) */
        size_t span = n - i < room ? n - i : room;
        const uint8_t *z = memchr(p + i, 0, span);
        if (z != NULL) {
            size_t k = (size_t)(z - (p + i));
            memcpy(out + o, p + i, k);
            o += k;
            out[code_pos] = (uint8_t)(code + k); /* the block ends with this zero */
            code_pos = o++;
            code = 1;
            i += k + 1;
        } else {
            memcpy(out + o, p + i, span);
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

size_t mt_cobs_frame(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, const uint8_t *c,
                     size_t nc, int delimit, uint8_t *out) {
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

ptrdiff_t mt_cobs_decode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        size_t code = in[i];
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
