/* mp_bound.c - walks untrusted msgpack bytes and checks every declared length
 * against the bytes present, so the unpacker never reserves for data that is not there. */
#include "mp_bound.h"

#include <stdint.h>

#include "kf_util.h"

/* The walker keeps one counter per open container in a fixed array, so it
 * needs no allocation and no recursion; a larger max_depth is clamped to this.
 * msgpack-c itself cannot unpack more than 32 levels (MSGPACK_EMBED_STACK_SIZE). */
#define MP_BOUND_DEPTH_CAP 64

static uint64_t rd_be(const unsigned char *p, size_t n)
{
        uint64_t v = 0;
        for (size_t i = 0; i < n; i++)
                v = (v << 8) | p[i];
        return v;
}

/* What one type byte announces.  A header of hdr bytes (type byte included)
 * is followed by body bytes of payload (str/bin/ext data, fixed-width values)
 * or, for containers, by items objects. */
typedef struct mp_head_s {
        const char *what; /* for error messages */
        size_t hdr;       /* header bytes including the type byte */
        size_t lenbytes;  /* bytes of big-endian length/count after the type byte */
        size_t extra;     /* fixed payload bytes (numbers, fixext, ext type byte) */
        uint64_t count;   /* fixed count for fix{array,map,str}; else read from lenbytes */
        int kind;         /* MP_SCALAR, MP_BYTES, MP_ARRAY, MP_MAP */
} mp_head_t;

enum { MP_SCALAR, MP_BYTES, MP_ARRAY, MP_MAP, MP_INVALID };

static mp_head_t mp_head(unsigned char b)
{
        mp_head_t h = {"", 1, 0, 0, 0, MP_SCALAR};

        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
                h.what = "scalar";
                return h;
        }
        if (b >= 0x80 && b <= 0x8f) {
                h.what = "map";
                h.kind = MP_MAP;
                h.count = b & 0x0f;
                return h;
        }
        if (b >= 0x90 && b <= 0x9f) {
                h.what = "array";
                h.kind = MP_ARRAY;
                h.count = b & 0x0f;
                return h;
        }
        if (b >= 0xa0 && b <= 0xbf) {
                h.what = "str";
                h.kind = MP_BYTES;
                h.count = b & 0x1f;
                return h;
        }
        switch (b) {
        case 0xc4:
        case 0xc5:
        case 0xc6: /* bin8/16/32 */
                h.what = "bin";
                h.kind = MP_BYTES;
                h.lenbytes = (size_t)1 << (b - 0xc4);
                break;
        case 0xc7:
        case 0xc8:
        case 0xc9: /* ext8/16/32: length, then a type byte */
                h.what = "ext";
                h.kind = MP_BYTES;
                h.lenbytes = (size_t)1 << (b - 0xc7);
                h.extra = 1;
                break;
        case 0xca:
                h.what = "float32";
                h.extra = 4;
                break;
        case 0xcb:
                h.what = "float64";
                h.extra = 8;
                break;
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
                h.what = "uint";
                h.extra = (size_t)1 << (b - 0xcc);
                break;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3:
                h.what = "int";
                h.extra = (size_t)1 << (b - 0xd0);
                break;
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8: /* fixext1..16 */
                h.what = "fixext";
                h.extra = 1 + ((size_t)1 << (b - 0xd4));
                break;
        case 0xd9:
        case 0xda:
        case 0xdb: /* str8/16/32 */
                h.what = "str";
                h.kind = MP_BYTES;
                h.lenbytes = (size_t)1 << (b - 0xd9);
                break;
        case 0xdc:
        case 0xdd:
                h.what = "array";
                h.kind = MP_ARRAY;
                h.lenbytes = (size_t)2 << (b - 0xdc);
                break;
        case 0xde:
        case 0xdf:
                h.what = "map";
                h.kind = MP_MAP;
                h.lenbytes = (size_t)2 << (b - 0xde);
                break;
        default: /* 0xc1 is never used */
                h.what = "invalid";
                h.kind = MP_INVALID;
                break;
        }
        h.hdr = 1 + h.lenbytes;
        return h;
}

int mp_bound_check(const void *buf, size_t len, int max_depth, char *errstr, size_t errstr_size)
{
        const unsigned char *p = buf;
        /* Objects still owed to each open container (a map owes 2 per entry). */
        uint64_t owed[MP_BOUND_DEPTH_CAP];
        int depth = 0;
        size_t pos = 0;

        if (max_depth < 0)
                max_depth = 0;
        if (max_depth > MP_BOUND_DEPTH_CAP)
                max_depth = MP_BOUND_DEPTH_CAP;
        if (!p || len == 0)
                return kf_errf(errstr, errstr_size, "empty buffer");

        for (;;) {
                mp_head_t h;
                size_t rem;
                uint64_t n;

                if (pos >= len)
                        return kf_errf(errstr, errstr_size,
                                       "at byte %zu: data ends where %s expected", pos,
                                       depth ? "a container element is" : "an object is");
                h = mp_head(p[pos]);
                if (h.kind == MP_INVALID)
                        return kf_errf(errstr, errstr_size, "at byte %zu: invalid type byte 0x%02x",
                                       pos, p[pos]);
                rem = len - pos;
                if (h.hdr > rem)
                        return kf_errf(errstr, errstr_size,
                                       "at byte %zu: truncated %s header (needs %zu bytes, %zu "
                                       "remain)",
                                       pos, h.what, h.hdr, rem);
                n = h.lenbytes ? rd_be(p + pos + 1, h.lenbytes) : h.count;
                rem -= h.hdr;

                switch (h.kind) {
                case MP_SCALAR:
                        if (h.extra > rem)
                                return kf_errf(errstr, errstr_size,
                                               "at byte %zu: truncated %s (needs %zu more bytes, "
                                               "%zu remain)",
                                               pos, h.what, h.extra, rem);
                        pos += h.hdr + h.extra;
                        break;
                case MP_BYTES:
                        /* n fits in 32 bits and extra is 0 or 1: no overflow. */
                        if (n + h.extra > rem)
                                return kf_errf(errstr, errstr_size,
                                               "at byte %zu: %s declares %llu bytes but only %zu "
                                               "bytes remain",
                                               pos, h.what, (unsigned long long)n, rem);
                        pos += h.hdr + h.extra + (size_t)n;
                        break;
                default: /* MP_ARRAY, MP_MAP: every element or key/value needs >= 1 byte */
                        if (h.kind == MP_MAP)
                                n *= 2;
                        if (n > rem)
                                return kf_errf(errstr, errstr_size,
                                               "at byte %zu: %s declares %llu %s but only %zu "
                                               "bytes remain",
                                               pos, h.what,
                                               (unsigned long long)(h.kind == MP_MAP ? n / 2 : n),
                                               h.kind == MP_MAP ? "entries" : "elements", rem);
                        if (depth >= max_depth)
                                return kf_errf(errstr, errstr_size,
                                               "at byte %zu: %s nested deeper than %d levels", pos,
                                               h.what, max_depth);
                        pos += h.hdr;
                        if (n > 0) {
                                owed[depth++] = n;
                                continue; /* its first element comes next */
                        }
                        break;
                }

                /* One object is complete: settle it with its container, and
                 * every container it completes with theirs. */
                while (depth > 0 && --owed[depth - 1] == 0)
                        depth--;
                if (depth == 0)
                        break;
        }

        if (pos != len)
                return kf_errf(errstr, errstr_size,
                               "at byte %zu: %zu trailing bytes after the top-level object", pos,
                               len - pos);
        return 0;
}
