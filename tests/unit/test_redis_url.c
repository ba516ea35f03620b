/* test_redis_url.c - the grammar of KINFER_REDIS (kf_redis_url_parse):
 * redis://[[user]:password@]host[:port][/db], defaults, bounds, escapes.
 * (test_redact covers what the errors show of a password.) */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdio.h>
#include <string.h>

#include "kf_redis.h"

static void test_accepted(void **state)
{
        static const struct {
                const char *url, *user, *pass, *host;
                int port, db;
        } good[] = {
            {"redis://127.0.0.1", "", "", "127.0.0.1", 6379, 0},
            {"redis://localhost:6390", "", "", "localhost", 6390, 0},
            {"redis://localhost:6390/0", "", "", "localhost", 6390, 0},
            {"redis://localhost/7", "", "", "localhost", 6379, 7},
            {"redis://localhost:1/", "", "", "localhost", 1, 0},
            {"redis://h:65535/1048576", "", "", "h", 65535, 1048576},
            {"redis://pw@db.example", "", "pw", "db.example", 6379, 0},
            {"redis://:pw@db.example:7000/2", "", "pw", "db.example", 7000, 2},
            {"redis://kinfer:pw@db.example:7000/2", "kinfer", "pw", "db.example", 7000, 2},
            {"redis://u%3Ax:p%2F%40%25@h", "u:x", "p/@%", "h", 6379, 0},
            {"redis://u:p:q@h", "u", "p:q", "h", 6379, 0},
        };
        char err[512];
        kf_redis_url_t u;
        (void)state;
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                err[0] = '\0';
                if (kf_redis_url_parse(good[i].url, &u, err, sizeof(err)))
                        fail_msg("%s refused: %s", good[i].url, err);
                assert_string_equal(u.user, good[i].user);
                assert_string_equal(u.pass, good[i].pass);
                assert_string_equal(u.host, good[i].host);
                assert_int_equal(u.port, good[i].port);
                assert_int_equal(u.db, good[i].db);
        }
}

static void test_refused(void **state)
{
        static const struct {
                const char *url, *want; /* want: a part of the error message */
        } bad[] = {
            {"", "must start with redis://"},
            {"localhost:6379", "must start with redis://"},
            {"http://localhost", "must start with redis://"},
            {"redis://", "host"},
            {"redis://:6379", "host"},
            {"redis:///0", "host"},
            {"redis://h:0", "not in 1..65535"},
            {"redis://h:65536", "not in 1..65535"},
            {"redis://h:-1", "not in 1..65535"},
            {"redis://h:63x9", "not in 1..65535"},
            {"redis://h:", "bad port"},
            {"redis://h:12345678901234567890", "bad port"},
            {"redis://h/x", "not a number"},
            {"redis://h/-1", "not a number"},
            {"redis://h/1048577", "not a number"},
            {"redis://u:p%4@h", "escaped"},
            {"redis://u:p%g0@h", "escaped"},
        };
        char err[512], longhost[300];
        kf_redis_url_t u;
        (void)state;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = '\0';
                if (kf_redis_url_parse(bad[i].url, &u, err, sizeof(err)) == 0)
                        fail_msg("%s was accepted", bad[i].url);
                if (!strstr(err, bad[i].want))
                        fail_msg("%s: error '%s' does not say '%s'", bad[i].url, err, bad[i].want);
        }
        /* a host longer than the field is refused, not cut */
        snprintf(longhost, sizeof(longhost), "redis://%0256d", 0);
        assert_int_equal(kf_redis_url_parse(longhost, &u, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "too long host"));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_accepted),
            cmocka_unit_test(test_refused),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
