/* test_mp_bound.c - unit tests for mp_bound_check(): every msgpack format,
 * every truncation, hostile declared lengths, depth, and agreement with msgpack-c. */
/* cmocka.h needs these first, in this order. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_bound.h"

#define S(lit) (lit), (sizeof(lit) - 1)

typedef struct sample_s {
        const char *name;
        const char *bytes;
        size_t len;
} sample_t;

/* One well-formed object of every format, written out by hand so the walker
 * is not checked against a packer's idea of the format. */
static const sample_t samples[] = {
    {"positive fixint", S("\x05")},
    {"positive fixint max", S("\x7f")},
    {"negative fixint", S("\xe0")},
    {"negative fixint -1", S("\xff")},
    {"nil", S("\xc0")},
    {"false", S("\xc2")},
    {"true", S("\xc3")},
    {"float32", S("\xca\x3f\x80\x00\x00")},
    {"float64", S("\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00")},
    {"uint8", S("\xcc\xff")},
    {"uint16", S("\xcd\xff\xff")},
    {"uint32", S("\xce\xff\xff\xff\xff")},
    {"uint64", S("\xcf\xff\xff\xff\xff\xff\xff\xff\xff")},
    {"int8", S("\xd0\x80")},
    {"int16", S("\xd1\x80\x00")},
    {"int32", S("\xd2\x80\x00\x00\x00")},
    {"int64", S("\xd3\x80\x00\x00\x00\x00\x00\x00\x00")},
    {"fixstr", S("\xa3"
                 "abc")},
    {"empty fixstr", S("\xa0")},
    {"str8", S("\xd9\x03"
               "abc")},
    {"str16", S("\xda\x00\x03"
                "abc")},
    {"str32", S("\xdb\x00\x00\x00\x03"
                "abc")},
    {"bin8", S("\xc4\x02\x00\x01")},
    {"bin16", S("\xc5\x00\x02\x00\x01")},
    {"bin32", S("\xc6\x00\x00\x00\x02\x00\x01")},
    {"empty bin8", S("\xc4\x00")},
    {"fixext1", S("\xd4\x01\xaa")},
    {"fixext2", S("\xd5\x01\xaa\xbb")},
    {"fixext4", S("\xd6\x01\xaa\xbb\xcc\xdd")},
    {"fixext8", S("\xd7\x01"
                  "12345678")},
    {"fixext16", S("\xd8\x01"
                   "1234567890abcdef")},
    {"ext8", S("\xc7\x03\x01"
               "abc")},
    {"ext16", S("\xc8\x00\x03\x01"
                "abc")},
    {"ext32", S("\xc9\x00\x00\x00\x03\x01"
                "abc")},
    {"empty ext8", S("\xc7\x00\x01")},
    {"fixarray", S("\x93\x01\x02\x03")},
    {"empty fixarray", S("\x90")},
    {"array16", S("\xdc\x00\x02\x01\xc0")},
    {"array32", S("\xdd\x00\x00\x00\x02\x01\xc0")},
    {"fixmap", S("\x82\xa1"
                 "a\x01\xa1"
                 "b\x92\x01\x02")},
    {"empty fixmap", S("\x80")},
    {"map16", S("\xde\x00\x01\xa1"
                "a\xc3")},
    {"map32", S("\xdf\x00\x00\x00\x01\xa1"
                "a\xc3")},
    {"nested", S("\x92\x91\x81\x01\x92\xa0\xc4\x00\x80")},
};
#define NSAMPLES (sizeof(samples) / sizeof(samples[0]))

static void assert_has(const char *msg, const char *sub)
{
        if (!strstr(msg, sub))
                fail_msg("message \"%s\" lacks \"%s\"", msg, sub);
}

/* Checks on a heap copy of exactly len bytes, so that reading one byte past
 * the end shows up under valgrind and ASan. */
static int check(const char *bytes, size_t len, int depth, char *err, size_t errsize)
{
        char *copy = malloc(len ? len : 1);
        int rc;

        assert_non_null(copy);
        memcpy(copy, bytes, len);
        rc = mp_bound_check(copy, len, depth, err, errsize);
        free(copy);
        return rc;
}

static void test_every_format_accepted(void **state)
{
        char err[256];
        (void)state;
        for (size_t i = 0; i < NSAMPLES; i++) {
                err[0] = '\0';
                if (check(samples[i].bytes, samples[i].len, 8, err, sizeof(err)) != 0)
                        fail_msg("%s rejected: %s", samples[i].name, err);
        }
}

static void test_every_prefix_rejected(void **state)
{
        char err[256];
        (void)state;
        for (size_t i = 0; i < NSAMPLES; i++) {
                for (size_t n = 0; n < samples[i].len; n++) {
                        err[0] = '\0';
                        if (check(samples[i].bytes, n, 8, err, sizeof(err)) == 0)
                                fail_msg("%s cut to %zu bytes accepted", samples[i].name, n);
                        if (err[0] == '\0')
                                fail_msg("%s cut to %zu bytes: no message", samples[i].name, n);
                }
        }
}

static void test_trailing_byte_rejected(void **state)
{
        char buf[64], err[256];
        (void)state;
        for (size_t i = 0; i < NSAMPLES; i++) {
                memcpy(buf, samples[i].bytes, samples[i].len);
                buf[samples[i].len] = '\x01';
                if (check(buf, samples[i].len + 1, 8, err, sizeof(err)) == 0)
                        fail_msg("%s plus one byte accepted", samples[i].name);
                assert_has(err, "trailing");
        }
        assert_int_equal(check(S("\x01\x02\x03"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 1: 2 trailing bytes");
}

static void test_invalid_type_byte(void **state)
{
        char err[256];
        (void)state;
        assert_int_equal(check(S("\xc1"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 0: invalid type byte 0xc1");
        assert_int_equal(check(S("\x92\x01\xc1"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 2: invalid type byte 0xc1");
}

static void test_empty_and_null(void **state)
{
        char err[256];
        (void)state;
        assert_int_equal(mp_bound_check("", 0, 8, err, sizeof(err)), -1);
        assert_has(err, "empty");
        assert_int_equal(mp_bound_check(NULL, 0, 8, err, sizeof(err)), -1);
        assert_int_equal(mp_bound_check(NULL, 5, 8, err, sizeof(err)), -1);
        /* errstr is optional */
        assert_int_equal(mp_bound_check("\xc1", 1, 8, NULL, 0), -1);
        assert_int_equal(mp_bound_check("\x01", 1, 8, NULL, 0), 0);
}

/* A 5-byte header declaring 4G elements: the case that makes msgpack-c
 * reserve gigabytes.  Must fail on the header, naming the count. */
static void test_huge_declared_lengths(void **state)
{
        char err[256];
        (void)state;
        assert_int_equal(check(S("\xdd\xff\xff\xff\xff\x01\x02\x03"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 0: array declares 4294967295 elements but only 3 bytes remain");
        assert_int_equal(check(S("\xdf\xff\xff\xff\xff\x01\x02"), 8, err, sizeof(err)), -1);
        assert_has(err, "map declares 4294967295 entries");
        assert_int_equal(check(S("\xdb\xff\xff\xff\xff"
                                 "abc"),
                               8, err, sizeof(err)),
                         -1);
        assert_has(err, "str declares 4294967295 bytes");
        assert_int_equal(check(S("\xc6\xff\xff\xff\xff"
                                 "abc"),
                               8, err, sizeof(err)),
                         -1);
        assert_has(err, "bin declares 4294967295 bytes");
        assert_int_equal(check(S("\xc9\xff\xff\xff\xff\x01"
                                 "abc"),
                               8, err, sizeof(err)),
                         -1);
        assert_has(err, "ext declares 4294967295 bytes");
        assert_int_equal(check(S("\xdc\xff\xff\x01"), 8, err, sizeof(err)), -1);
        assert_has(err, "array declares 65535 elements");
        /* inside a container, the offset is the inner header's */
        assert_int_equal(check(S("\x92\x01\xdd\xff\xff\xff\xff\x00"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 2: array declares 4294967295");
}

/* Each map entry needs 2 bytes: a fixmap of 2 with 3 bytes left fails on the
 * header, not after reading. */
static void test_map_needs_two_bytes_per_entry(void **state)
{
        char err[256];
        (void)state;
        assert_int_equal(check(S("\x82\x01\x02\x03"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 0: map declares 2 entries but only 3 bytes remain");
        assert_int_equal(check(S("\x82\x01\x02\x03\x04"), 8, err, sizeof(err)), 0);
        /* an array of 3 with 3 bytes left passes the header and then the data */
        assert_int_equal(check(S("\x93\x01\x02\x03"), 8, err, sizeof(err)), 0);
        assert_int_equal(check(S("\x94\x01\x02\x03"), 8, err, sizeof(err)), -1);
        assert_has(err, "array declares 4 elements but only 3 bytes remain");
}

static void nest(char *buf, int levels)
{
        for (int i = 0; i < levels; i++)
                buf[i] = '\x91'; /* [ ... ] of one element */
        buf[levels] = '\x01';
}

static void test_depth(void **state)
{
        char buf[256], err[256];
        (void)state;
        nest(buf, 8);
        assert_int_equal(check(buf, 9, 8, err, sizeof(err)), 0);
        nest(buf, 9);
        assert_int_equal(check(buf, 10, 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 8: array nested deeper than 8 levels");
        /* depth 0: only scalars; an empty container also counts */
        assert_int_equal(check(S("\x01"), 0, err, sizeof(err)), 0);
        assert_int_equal(check(S("\x90"), 0, err, sizeof(err)), -1);
        assert_int_equal(check(S("\x80"), -5, err, sizeof(err)), -1);
        /* a wide but shallow object is fine: depth is nesting, not count */
        assert_int_equal(check(S("\x93\x91\x01\x91\x02\x91\x03"), 2, err, sizeof(err)), 0);
        /* a huge max_depth is clamped to the walker's fixed stack (64) */
        nest(buf, 64);
        assert_int_equal(check(buf, 65, 1000, err, sizeof(err)), 0);
        nest(buf, 65);
        assert_int_equal(check(buf, 66, 1000, err, sizeof(err)), -1);
        assert_has(err, "deeper than 64");
}

static void test_containers_close_correctly(void **state)
{
        char err[256];
        (void)state;
        /* [[1], 2] is one object; [[1, 2] is short by one */
        assert_int_equal(check(S("\x92\x91\x01\x02"), 8, err, sizeof(err)), 0);
        assert_int_equal(check(S("\x92\x92\x01\x02"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 4: data ends");
        /* {a: []} then a stray byte */
        assert_int_equal(check(S("\x81\xa1"
                                 "a\x90\xc0"),
                               8, err, sizeof(err)),
                         -1);
        assert_has(err, "at byte 4: 1 trailing bytes");
}

static void test_truncated_messages_name_offset(void **state)
{
        char err[256];
        (void)state;
        assert_int_equal(check(S("\x91\xcd\x01"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 1: truncated uint (needs 2 more bytes, 1 remain)");
        assert_int_equal(check(S("\x91\xdb\x00\x00"), 8, err, sizeof(err)), -1);
        assert_has(err, "at byte 1: truncated str header");
        assert_int_equal(check(S("\xa5"
                                 "abc"),
                               8, err, sizeof(err)),
                         -1);
        assert_has(err, "at byte 0: str declares 5 bytes but only 3 bytes remain");
        /* ext needs its type byte on top of the declared data */
        assert_int_equal(check(S("\xc7\x03\x01"
                                 "ab"),
                               8, err, sizeof(err)),
                         -1);
        assert_has(err, "at byte 0: ext declares 3 bytes");
        assert_int_equal(check(S("\x92\xc7\x02\x01"
                                 "a"),
                               8, err, sizeof(err)),
                         -1);
        assert_has(err, "at byte 1: ext declares 2 bytes");
}

/* Tiny deterministic PRNG so failures reproduce. */
static uint32_t rng_state = 12345;
static uint32_t rng(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        return rng_state;
}

static void pack_random(msgpack_packer *pk, int depth)
{
        static const char txt[] =
            "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789"
            "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz012345";
        uint32_t k = rng() % (depth > 0 ? 12 : 9);
        uint32_t n;

        switch (k) {
        case 0:
                msgpack_pack_nil(pk);
                break;
        case 1:
                msgpack_pack_true(pk);
                break;
        case 2:
                msgpack_pack_uint64(pk, (uint64_t)rng() << (rng() % 33));
                break;
        case 3:
                msgpack_pack_int64(pk, -(int64_t)(rng() >> (rng() % 32)));
                break;
        case 4:
                msgpack_pack_float(pk, (float)rng());
                break;
        case 5:
                msgpack_pack_double(pk, (double)rng());
                break;
        case 6:
                n = rng() % 300;
                msgpack_pack_str_with_body(pk, txt, n % sizeof(txt));
                break;
        case 7:
                n = rng() % 300;
                msgpack_pack_bin_with_body(pk, txt, n % sizeof(txt));
                break;
        case 8:
                n = rng() % 20;
                msgpack_pack_ext_with_body(pk, txt, n, 3);
                break;
        case 9:
        case 10:
                n = rng() % 20;
                msgpack_pack_array(pk, n);
                for (uint32_t i = 0; i < n; i++)
                        pack_random(pk, depth - 1);
                break;
        default:
                n = rng() % 10;
                msgpack_pack_map(pk, n);
                for (uint32_t i = 0; i < 2 * n; i++)
                        pack_random(pk, depth - 1);
                break;
        }
}

/* Packer output is always accepted, and whatever the walker accepts
 * msgpack-c unpacks completely: the two agree on the format. */
static void test_agrees_with_msgpack_c(void **state)
{
        char err[256];
        (void)state;
        for (int i = 0; i < 300; i++) {
                msgpack_sbuffer sb;
                msgpack_packer pk;
                msgpack_sbuffer_init(&sb);
                msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
                pack_random(&pk, 4);
                if (check(sb.data, sb.size, 4, err, sizeof(err)) != 0)
                        fail_msg("packed object %d rejected: %s", i, err);
                /* flip bytes: any accepted mutant must unpack exactly */
                for (int m = 0; m < 20; m++) {
                        msgpack_unpacked up;
                        size_t off = 0, at = rng() % sb.size;
                        char saved = sb.data[at];
                        sb.data[at] = (char)rng();
                        if (mp_bound_check(sb.data, sb.size, 4, err, sizeof(err)) == 0) {
                                msgpack_unpacked_init(&up);
                                assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off),
                                                 MSGPACK_UNPACK_SUCCESS);
                                assert_int_equal(off, sb.size);
                                msgpack_unpacked_destroy(&up);
                        }
                        sb.data[at] = saved;
                }
                msgpack_sbuffer_destroy(&sb);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_every_format_accepted),
            cmocka_unit_test(test_every_prefix_rejected),
            cmocka_unit_test(test_trailing_byte_rejected),
            cmocka_unit_test(test_invalid_type_byte),
            cmocka_unit_test(test_empty_and_null),
            cmocka_unit_test(test_huge_declared_lengths),
            cmocka_unit_test(test_map_needs_two_bytes_per_entry),
            cmocka_unit_test(test_depth),
            cmocka_unit_test(test_containers_close_correctly),
            cmocka_unit_test(test_truncated_messages_name_offset),
            cmocka_unit_test(test_agrees_with_msgpack_c),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
