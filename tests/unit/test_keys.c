/* test_keys.c - unit tests for the v2 Redis key names (kf_keys.c), the
 * quota grammar (kf_quota.c) and the result decoder (kf_result.c): hostile
 * names, exact key strings from the protocol document, hand-written result
 * bytes. */
/* cmocka.h needs these first, in this order. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_quota.h"
#include "kf_result.h"

/* The examples of docs/protocol.md, "Redis keys", spelled out. */
static void test_user_keys_exact(void **state)
{
        char k[KF_KEY_MAX];
        (void)state;
        assert_int_equal(kf_user_key(k, "kinfer:", "alice", KF_K_RESULT, "j1"), 24);
        assert_string_equal(k, "kinfer:{alice}:result:j1");
        kf_user_key(k, "kinfer:", "alice", KF_K_USAGE, NULL);
        assert_string_equal(k, "kinfer:{alice}:usage");
        kf_user_key(k, "kinfer:", "alice", KF_K_WINDOW, "1795849200");
        assert_string_equal(k, "kinfer:{alice}:usage:window:1795849200");
        kf_user_key(k, "kinfer:", "alice", KF_K_MODELS, NULL);
        assert_string_equal(k, "kinfer:{alice}:usage:models");
        kf_user_key(k, "kinfer:", "alice", KF_K_QUOTA, NULL);
        assert_string_equal(k, "kinfer:{alice}:quota");
        kf_user_key(k, "kinfer:", "a:b", KF_K_INBOX, "x");
        assert_string_equal(k, "kinfer:{a:b}:inbox:x");
        kf_user_key(k, "kinfer:", "alice", KF_K_CHARGED, "1795849200");
        assert_string_equal(k, "kinfer:{alice}:charged:1795849200");
        assert_int_equal(kf_user_base(k, "kinfer:", "a:b"), 13);
        assert_string_equal(k, "kinfer:{a:b}:");
        assert_int_equal(kf_user_base(k, "kinfer:", "a}b"), -1);
}

/* Names chosen to collide in v1 ("{prefix}usage:{user}:window:..."): in v2
 * no user name builds another user's key, and the hash tag is the user. */
static void test_hostile_names(void **state)
{
        static const char *const users[] = {
            "a", "a:b", "a:usage", "a:usage:window", "b", "kinfer:", "usage", "a.b", "-", ":"};
        static const kf_kind_t kinds[] = {KF_K_RESULT, KF_K_INBOX,  KF_K_CHARGED, KF_K_USAGE,
                                          KF_K_WINDOW, KF_K_MODELS, KF_K_QUOTA};
        static const char *const names[] = {NULL, "1", "usage", "a:b", "window:1", ":"};
        enum { NU = 10, NK = 7, NN = 6 };
        static char keys[NU * NK * NN][KF_KEY_MAX];
        int n = 0;
        (void)state;
        for (int u = 0; u < NU; u++)
                for (int kd = 0; kd < NK; kd++)
                        for (int nm = 0; nm < NN; nm++) {
                                char *k = keys[n];
                                const char *open, *close;
                                int named = kinds[kd] <= KF_K_WINDOW;
                                if (named != (names[nm] != NULL)) {
                                        /* a kind takes a name or never does */
                                        assert_int_equal(kf_user_key(k, "kinfer:", users[u],
                                                                     kinds[kd], names[nm]),
                                                         -1);
                                        continue;
                                }
                                n++;
                                assert_true(
                                    kf_user_key(k, "kinfer:", users[u], kinds[kd], names[nm]) > 0);
                                /* the hash tag is exactly the user */
                                open = strchr(k, '{');
                                close = strchr(open, '}');
                                assert_int_equal(open - k, 7);
                                assert_int_equal((size_t)(close - open - 1), strlen(users[u]));
                                assert_memory_equal(open + 1, users[u], strlen(users[u]));
                        }
        /* all distinct: no two (user, kind, name) share a key */
        for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++)
                        if (!strcmp(keys[i], keys[j]))
                                fail_msg("collision: %s", keys[i]);
        /* and none of them is a pool-wide key (no brace after the prefix) */
        assert_int_equal(kf_key(keys[0], "kinfer:", "stats", NULL), 12);
        assert_null(strchr(keys[0], '{'));
}

static void test_user_key_refuses(void **state)
{
        char k[KF_KEY_MAX], id[200];
        (void)state;
        assert_int_equal(kf_user_key(k, "kinfer:", "a}b", KF_K_RESULT, "x"), -1);
        assert_int_equal(kf_user_key(k, "kinfer:", "{a", KF_K_RESULT, "x"), -1);
        assert_int_equal(kf_user_key(k, "kinfer:", "", KF_K_RESULT, "x"), -1);
        assert_int_equal(kf_user_key(k, "kinfer:", "a", KF_K_RESULT, "x}:y"), -1);
        assert_int_equal(kf_user_key(k, "kinfer:", "a", KF_K_RESULT, ""), -1);
        assert_int_equal(kf_user_key(k, "kinfer:", "a b", KF_K_RESULT, "x"), -1);
        memset(id, 'i', 129);
        id[129] = '\0';
        assert_int_equal(kf_user_key(k, "kinfer:", "a", KF_K_RESULT, id), -1);
        id[128] = '\0'; /* the longest id, the longest user, the longest prefix */
        char user[65], prefix[65];
        memset(user, 'u', 64);
        user[64] = '\0';
        memset(prefix, 'p', 64);
        prefix[64] = '\0';
        assert_true(kf_user_key(k, prefix, user, KF_K_RESULT, id) > 0);
        assert_int_equal(strlen(k), 64 + 66 + 8 + 128);
}

static void test_prefix_valid(void **state)
{
        char err[256], p[80];
        (void)state;
        assert_int_equal(kf_prefix_valid("kinfer:", err, sizeof(err)), 0);
        assert_int_equal(kf_prefix_valid("prod.kinfer-2:", err, sizeof(err)), 0);
        assert_int_equal(kf_prefix_valid("", err, sizeof(err)), -1);
        assert_int_equal(kf_prefix_valid("a{b}", err, sizeof(err)), -1);
        assert_non_null(strstr(err, "no braces"));
        assert_int_equal(kf_prefix_valid("a*", err, sizeof(err)), -1);
        memset(p, 'p', 65);
        p[65] = '\0';
        assert_int_equal(kf_prefix_valid(p, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "got 65+ chars"));
        p[64] = '\0';
        assert_int_equal(kf_prefix_valid(p, err, sizeof(err)), 0);
}

static void test_quota_grammar(void **state)
{
        static const struct {
                kf_quota_field_t f;
                const char *s;
                int ok;
                int64_t v;
        } cases[] = {
            {KF_QUOTA_JOBS, "0", 1, 0},
            {KF_QUOTA_JOBS, "1000", 1, 1000},
            {KF_QUOTA_JOBS, "1000000000000000", 1, 1000000000000000LL},
            {KF_QUOTA_JOBS, "1000000000000001", 0, 0},
            {KF_QUOTA_JOBS, "0x10", 0, 0},
            {KF_QUOTA_JOBS, "1e3", 0, 0},
            {KF_QUOTA_JOBS, " 5", 0, 0},
            {KF_QUOTA_JOBS, "5 ", 0, 0},
            {KF_QUOTA_JOBS, "+5", 0, 0},
            {KF_QUOTA_JOBS, "-1", 0, 0},
            {KF_QUOTA_JOBS, "", 0, 0},
            {KF_QUOTA_ROWS, "99999999999999999999999", 0, 0},
            {KF_QUOTA_WINDOW, "0", 0, 0},
            {KF_QUOTA_WINDOW, "1", 1, 1},
            {KF_QUOTA_WINDOW, "31622400", 1, 31622400},
            {KF_QUOTA_WINDOW, "31622401", 0, 0},
        };
        char err[256];
        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                int64_t v = -7;
                int rc = kf_quota_parse(cases[i].f, cases[i].s, strlen(cases[i].s), &v, err,
                                        sizeof(err));
                if (cases[i].ok) {
                        assert_int_equal(rc, 0);
                        assert_int_equal(v, cases[i].v);
                } else {
                        assert_int_equal(rc, -1);
                        assert_int_equal(v, -7);
                        assert_non_null(strstr(err, kf_quota_field_names[cases[i].f]));
                }
        }
}

#define LIT(s) (s), sizeof(s) - 1

/* An ok result as docs/protocol.md's example spells it, byte by byte. */
static void test_result_decode_ok(void **state)
{
        static const char bytes[] = "\x8d"
                                    "\xa1v\x02"
                                    "\xa6status\xa2ok"
                                    "\xa2id\xa2j1"
                                    "\xa4user\xa5"
                                    "alice"
                                    "\xa5model\xa3xor"
                                    "\xa6worker\xa4w:12"
                                    "\xa6source\xa3t/0"
                                    "\xa8"
                                    "enqueued\xcf\x00\x00\x01\xa2\x00\x00\x00\x01"
                                    "\xa7started\x05"
                                    "\xa4"
                                    "done\x06"
                                    "\xa7version\x03"
                                    "\xa5shape\x92\x02\x01"
                                    "\xa6output\xc4\x08\x00\x00\x80\x3f\x00\x00\x00\xc0";
        kf_result_t r;
        char err[256];
        (void)state;
        assert_int_equal(kf_result_decode(LIT(bytes), &r, err, sizeof(err)), 0);
        assert_true(r.ok);
        assert_string_equal(r.id, "j1");
        assert_string_equal(r.user, "alice");
        assert_string_equal(r.model, "xor");
        assert_int_equal(r.enqueued, 0x1a200000001ULL);
        assert_int_equal(r.version, 3);
        assert_int_equal(r.rows, 2);
        assert_int_equal(r.cols, 1);
        assert_true(r.output[0] == 1.0f && r.output[1] == -2.0f);
        assert_false(r.has_window);
        kf_result_clear(&r);
}

static void test_result_decode_bad(void **state)
{
        static const struct {
                const char *bytes;
                size_t len;
                const char *want;
        } cases[] = {
            {LIT("\x93\x01\x02\x03"), "not a msgpack map"},
            {LIT("\x81\xa6status"), "not valid msgpack"},
            {LIT("\x83\xa6status\xa2ok\xa2id\xa1j\xa4user\xa1u"), "'shape'"},
            {LIT("\x85\xa6status\xa2ok\xa2id\xa1j\xa4user\xa1u\xa5shape\x92\x02\x02"
                 "\xa6output\xc4\x04\x00\x00\x00\x00"),
             "2 x 2 float32"},
            {LIT("\x83\xa6status\xa5"
                 "error\xa2id\xa1j\xa4user\xa1u"),
             "lacks 'error'"},
            {LIT("\x82\xa6status\xa2ok\xa2id\xa1j"), "lacks 'user'"},
            {LIT("\x83\xa6status\xa4meh!\xa2id\xa1j\xa4user\xa1u"), "ok or error"},
            {LIT("\x83\xa6status\xa2ok\xa2id\x05\xa4user\xa1u"), "'id' has the wrong type"},
            /* a shape that would overflow rows*cols*4 in 32 bits */
            {LIT("\x85\xa6status\xa2ok\xa2id\xa1j\xa4user\xa1u\xa5shape\x92\xce\x40\x00\x00\x00"
                 "\xce\x40\x00\x00\x00\xa6output\xc4\x00"),
             "float32 values"},
        };
        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                kf_result_t r;
                char err[256] = "";
                assert_int_equal(
                    kf_result_decode(cases[i].bytes, cases[i].len, &r, err, sizeof(err)), -1);
                if (!strstr(err, cases[i].want))
                        fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].want);
                kf_result_clear(&r);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_user_keys_exact),   cmocka_unit_test(test_hostile_names),
            cmocka_unit_test(test_user_key_refuses),  cmocka_unit_test(test_prefix_valid),
            cmocka_unit_test(test_quota_grammar),     cmocka_unit_test(test_result_decode_ok),
            cmocka_unit_test(test_result_decode_bad),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
