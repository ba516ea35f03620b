/* test_nonfinite.c - a forward pass that overflows is never shown as good
 * numbers: the result counts its non-finite values (`nonfinite`), and
 * kinfer renders them as null and exits 1.  Real redis-server, dev broker,
 * worker and CLI. */
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

#include "../harness/kt_job.h"
#include "../harness/stack.h"

static void test_overflow_is_visible(void **state)
{
        /* y0 = 1e30 * x0 (overflows float32 for x0 >= 1e9), y1 = x1 */
        static const float W[] = {1e30f, 0, 0, 1}, b[] = {0, 0};
        const float *Ws[] = {W}, *bs[] = {b};
        const int dims[] = {2, 2};
        const char *acts[] = {"identity"};
        kt_stack_t s;
        char models[300], cmd[400], *out = NULL;
        redisContext *c;
        kf_result_t r;
        (void)state;

        assert_int_equal(kt_stack_init(&s), 0);
        assert_int_equal(kt_stack_start_redis(&s, NULL), 0);
        assert_int_equal(kt_stack_start_broker(&s, 1, 2), 0);
        assert_int_equal(kt_stack_models_dir(&s, models, sizeof(models)), 0);
        snprintf(cmd, sizeof(cmd), "%s/big.kmodel", models);
        assert_int_equal(kt_write_model(cmd, "big", 1, dims, acts, Ws, bs), 0);
        {
                const char *argv[] = {"kinfer-worker", "--models", models, NULL};
                assert_true(kt_stack_spawn(&s, "nf-w1", argv, NULL) >= 0);
        }
        {
                const char *argv[] = {"kinfer", "submit", "--model", "big",    "--user", "nf",
                                      "--id",   "nf-1",   "--wait",  "1e10,2", "1,3",    NULL};
                assert_int_equal(kt_stack_run(&s, argv, NULL, &out, 90000), 1);
                assert_non_null(strstr(out, "\"status\":\"ok\""));
                if (!strstr(out, "\"output\":[[null,2.0],[1.00000002e30,3.0]]"))
                        fail_msg("got %s", out);
                assert_non_null(strstr(out, "\"nonfinite\":1"));
                free(out);
        }
        /* the stored result says it too */
        c = kt_stack_redis(&s);
        assert_int_equal(kt_result_get(c, "nf", "nf-1", &r), 1);
        assert_true(r.ok);
        assert_int_equal(r.nonfinite, 1);
        kf_result_clear(&r);
        {
                /* a finite result has no such field and exits 0 */
                const char *argv[] = {"kinfer", "submit", "--model", "big", "--user",
                                      "nf",     "--wait", "0,1",     NULL};
                assert_int_equal(kt_stack_run(&s, argv, NULL, &out, 90000), 0);
                assert_null(strstr(out, "nonfinite"));
                free(out);
        }
        redisFree(c);
        kt_stack_stop(&s);
}

int main(void)
{
        const struct CMUnitTest tests[] = {cmocka_unit_test(test_overflow_is_visible)};
        return cmocka_run_group_tests(tests, NULL, NULL);
}
