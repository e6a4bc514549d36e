/* Reads a tests/vectors/NAME.hex file with the generated microtrain_protocol.h only, and prints
 * one line per vector: "<name> <verdict> <crc32 as 8 hex digits or -> <fields...>", the
 * fields read through the generated packed structs: a message's opcode and request id, a
 * frame's seq.
 *
 *   vectors message FILE   each vector is a bare message (link payload)
 *   vectors frame FILE     each vector is a wire frame (COBS bytes + 0x00 delimiter)
 *   vectors session FILE   each vector is a wire frame checked by a receiver in the session
 *                          and authentication state its comment line names
 *                          ("session=SENDER:RECEIVER" epochs in hex or "-", "auth=0|1");
 *                          prints "<name> <verdict> <crc32> <seq> <counter> <trailer offset>
 *                          <tag hex>", the last three "-" unless the frame has FLAG_AUTH
 *
 * The CRC is computed with mt_crc32 over the bytes a receiver checks (the whole message, or
 * the frame's header + payload); tests/test_c_vectors.py compares it with zlib.crc32 and the
 * verdict with the error the vector names. Verdicts are this program's own checks, made from
 * the header's layouts and tables only (it does not parse every body field). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "microtrain_protocol.h"

#define MAX_BYTES 65536

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* hex text (no separators) -> bytes; returns the byte count or (size_t)-1 */
static size_t parse_hex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (s[0] && s[0] != '\n' && s[0] != '\r') {
        int hi = hexval((unsigned char)s[0]);
        int lo = s[1] ? hexval((unsigned char)s[1]) : -1;
        if (hi < 0 || lo < 0 || n >= cap)
            return (size_t)-1;
        out[n++] = (uint8_t)(hi << 4 | lo);
        s += 2;
    }
    return n;
}

/* Checks of a message: header, opcode, fixed body sizes, and TENSOR_DATA's length field. */
static const char *check_message(const uint8_t *p, size_t n)
{
    struct mt_msg_header h;
    if (n < MT_MSG_HEADER_SIZE)
        return "BAD_REQUEST";
    memcpy(&h, p, sizeof h);
    if (!mt_request_opcode_known(h.opcode) && !mt_response_opcode_known(h.opcode))
        return "UNKNOWN_OPCODE";
    long fixed = mt_body_fixed_size(h.opcode);
    if (fixed >= 0)
        return (long)(n - MT_MSG_HEADER_SIZE) == fixed ? "size_ok" : "BAD_REQUEST";
    if (h.opcode == MT_OP_TENSOR_DATA) {
        /* the packed head (id, offset, data_len), then data_len bytes */
        struct mt_req_tensor_data_head head;
        if (n < MT_MSG_HEADER_SIZE + sizeof head)
            return "BAD_REQUEST";
        memcpy(&head, p + MT_MSG_HEADER_SIZE, sizeof head);
        return head.data_len == n - MT_MSG_HEADER_SIZE - sizeof head ? "size_ok" : "BAD_REQUEST";
    }
    return "unchecked";
}

#ifdef MT_LINK_HEADER_SIZE
/* A wire frame: strip the delimiters, run mt_frame_check; for a valid DATA frame, check the
 * message inside. The CRC printed is the one a receiver computes over header + payload. */
static void check_frame(const char *name, const uint8_t *wire, size_t n)
{
    static uint8_t raw[MAX_BYTES];
    struct mt_link_header hdr;
    size_t raw_len, crc_len;
    char crc[16] = "-";
    const uint8_t *body = wire;
    if (n > 0 && body[0] == 0) { /* leading delimiter */
        body++;
        n--;
    }
    if (n > 0 && body[n - 1] == 0) /* trailing delimiter */
        n--;
    crc_len = mt_cobs_decode(body, n, raw, sizeof raw);
    if (crc_len != (size_t)-1 && crc_len >= MT_LINK_CRC_SIZE)
        snprintf(crc, sizeof crc, "%08x",
                 (unsigned)mt_crc32(0, raw, crc_len - MT_LINK_CRC_SIZE));
    int v = mt_frame_check(body, n, MT_LINK_MAX_PAYLOAD, raw, sizeof raw, &raw_len, &hdr);
    const char *verdict = mt_frame_check_name(v);
    char seq[16] = "-";
    if (v == MT_FRAME_CHECK_OK) {
        /* the packed struct must read the same fields as the byte-wise loads */
        struct mt_link_header packed;
        memcpy(&packed, raw, sizeof packed);
        if (packed.version != hdr.version || packed.flags != hdr.flags ||
            packed.type != hdr.type || packed.channel != hdr.channel || packed.seq != hdr.seq ||
            packed.ack != hdr.ack || packed.length != hdr.length || packed.credits != hdr.credits)
            verdict = "layout_mismatch";
        snprintf(seq, sizeof seq, "%u", (unsigned)packed.seq);
    }
    if (v == MT_FRAME_CHECK_OK && hdr.type == MT_FRAME_DATA) {
        verdict = check_message(raw + MT_LINK_HEADER_SIZE, hdr.length);
        if (strcmp(verdict, "size_ok") == 0 || strcmp(verdict, "unchecked") == 0)
            verdict = "ok";
    }
    printf("%s %s %s %s\n", name, verdict, crc, seq);
}
#endif

#ifdef MT_LINK_AUTH_SIZE
/* A wire frame for a receiver in the state the comment line names: mt_frame_check_session
 * with mt_session_crc of the epochs, then mt_frame_auth_locate. The CRC printed is the one
 * this receiver computes (continued from its session value) over everything before the CRC,
 * "-" if the body is not COBS. */
static int check_session_frame(const char *name, const char *comment, const uint8_t *wire,
                               size_t n)
{
    static uint8_t raw[MAX_BYTES];
    struct mt_link_header hdr;
    struct mt_frame_auth a;
    size_t raw_len;
    uint32_t session = 0;
    int auth;
    char crc[16] = "-", seq[16] = "-", counter[24] = "-", offset[16] = "-";
    char tag[2 * MT_LINK_AUTH_TAG_SIZE + 1] = "-";
    const char *s = strstr(comment, " session=");
    const char *t = strstr(comment, " auth=");
    if (!s || !t)
        return -1;
    s += 9;
    if (*s != '-') {
        char *end;
        unsigned long sender = strtoul(s, &end, 16);
        if (*end != ':')
            return -1;
        unsigned long receiver = strtoul(end + 1, NULL, 16);
        session = mt_session_crc((uint32_t)sender, (uint32_t)receiver);
    }
    auth = t[6] == '1';
    if (n > 0 && wire[0] == 0) {
        wire++;
        n--;
    }
    if (n > 0 && wire[n - 1] == 0)
        n--;
    /* the CRC even of a frame the check rejects before decoding it (too long) */
    raw_len = mt_cobs_decode(wire, n, raw, sizeof raw);
    if (raw_len != (size_t)-1 && raw_len >= MT_LINK_CRC_SIZE)
        snprintf(crc, sizeof crc, "%08x",
                 (unsigned)mt_crc32(session, raw, raw_len - MT_LINK_CRC_SIZE));
    int v = mt_frame_check_session(wire, n, MT_LINK_MAX_PAYLOAD, session, auth, raw, sizeof raw,
                                   &raw_len, &hdr);
    if (v == MT_FRAME_CHECK_OK) {
        snprintf(seq, sizeof seq, "%u", (unsigned)hdr.seq);
        if (mt_frame_auth_locate(raw, &hdr, &a) == 0) {
            snprintf(counter, sizeof counter, "%llu", (unsigned long long)a.counter);
            snprintf(offset, sizeof offset, "%lu", (unsigned long)(a.counter_le - raw));
            for (size_t i = 0; i < MT_LINK_AUTH_TAG_SIZE; i++)
                snprintf(tag + 2 * i, 3, "%02x", (unsigned)a.tag[i]);
        }
    }
    printf("%s %s %s %s %s %s %s\n", name, mt_frame_check_name(v), crc, seq, counter, offset,
           tag);
    return 0;
}
#endif

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "message") != 0 && strcmp(argv[1], "frame") != 0 &&
                      strcmp(argv[1], "session") != 0)) {
        fprintf(stderr, "usage: %s message|frame|session FILE\n", argv[0]);
        return 2;
    }
    int frames = strcmp(argv[1], "frame") == 0;
    int sessions = strcmp(argv[1], "session") == 0;
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    static char line[2 * MAX_BYTES + 16];
    static uint8_t bytes[MAX_BYTES];
    static char comment[512];
    char name[128] = "";
    int count = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "# name=", 7) == 0) {
            size_t k = 0;
            strncpy(comment, line, sizeof comment - 1); /* comment lines are short */
            comment[sizeof comment - 1] = '\0';
            for (const char *s = line + 7; *s && *s != ' ' && k + 1 < sizeof name; s++)
                name[k++] = *s;
            name[k] = '\0';
            continue;
        }
        if (line[0] == '#' || line[0] == '\n')
            continue;
        size_t n = parse_hex(line, bytes, sizeof bytes);
        if (n == (size_t)-1 || name[0] == '\0') {
            fprintf(stderr, "bad vector line after '%s'\n", name);
            return 2;
        }
        if (sessions) {
#ifdef MT_LINK_AUTH_SIZE
            if (check_session_frame(name, comment, bytes, n) != 0) {
                fprintf(stderr, "vector %s: no session= and auth= in its comment line\n", name);
                return 2;
            }
#else
            fprintf(stderr, "this header has no session frames\n");
            return 2;
#endif
        } else if (frames) {
#ifdef MT_LINK_HEADER_SIZE
            check_frame(name, bytes, n);
#else
            fprintf(stderr, "this header has no link layout\n");
            return 2;
#endif
        } else {
            struct mt_msg_header h;
            char head[32] = "- -";
            if (n >= sizeof h) {
                memcpy(&h, bytes, sizeof h);
                snprintf(head, sizeof head, "%02x %lu", (unsigned)h.opcode,
                         (unsigned long)h.request_id);
            }
            printf("%s %s %08x %s\n", name, check_message(bytes, n),
                   (unsigned)mt_crc32(0, bytes, n), head);
        }
        name[0] = '\0';
        count++;
    }
    fclose(f);
    return count > 0 ? 0 : 1;
}
