/* test_limits.c - a job's output and forward-pass scratch are bounded before
 * anything is allocated (--max-output-elements, --max-scratch-elements): a
 * small input against a wide model gets a too_large result naming the
 * limit, and the worker goes on serving.  Real redis-server, dev broker,
 * worker, and the kinfer CLI. */
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

/* A model 2 -> dims[1] (-> dims[2]), all weights 0.5, identity. */
static void write_model(const char *dir, const char *name, int n_layers, const int *dims)
{
        const char *acts[] = {"identity", "identity"};
        float *W[2] = {NULL, NULL}, *b[2] = {NULL, NULL};
        char path[400];
        for (int l = 0; l < n_layers; l++) {
                size_t nw = (size_t)dims[l] * (size_t)dims[l + 1];
                W[l] = malloc(nw * sizeof(float));
                b[l] = calloc((size_t)dims[l + 1], sizeof(float));
                for (size_t i = 0; i < nw; i++)
                        W[l][i] = 0.5f;
        }
        snprintf(path, sizeof(path), "%s/%s.kmodel", dir, name);
        assert_int_equal(kt_write_model(path, name, n_layers, dims, acts, (const float *const *)W,
                                        (const float *const *)b),
                         0);
        for (int l = 0; l < n_layers; l++) {
                free(W[l]);
                free(b[l]);
        }
}

static char *submit(kt_stack_t *s, const char *model, const char *output, int want_rc,
                    const char *row1, const char *row2)
{
        const char *argv[16] = {"kinfer", "submit", "--model",  model, "--user",
                                "lim",    "--wait", "--output", output};
        int n = 9;
        char *out = NULL;
        argv[n++] = row1;
        if (row2)
                argv[n++] = row2;
        argv[n] = NULL;
        assert_int_equal(kt_stack_run(s, argv, NULL, &out, 90000), want_rc);
        return out;
}

static void test_output_and_scratch_bounded(void **state)
{
        kt_stack_t s;
        char models[300], *out;
        const int wide[] = {2, 1000}, tall[] = {2, 4000, 2};
        (void)state;

        assert_int_equal(kt_stack_init(&s), 0);
        assert_int_equal(kt_stack_start_redis(&s, NULL), 0);
        assert_int_equal(kt_stack_start_broker(&s, 1, 2), 0);
        assert_int_equal(kt_stack_models_dir(&s, models, sizeof(models)), 0);
        write_model(models, "wide", 1, wide);
        write_model(models, "tall", 2, tall);
        {
                const char *argv[] = {
                    "kinfer-worker",          "--models", models, "--max-output-elements", "1500",
                    "--max-scratch-elements", "3000",     NULL};
                assert_true(kt_stack_spawn(&s, "lim-w1", argv, NULL) >= 0);
        }
        /* within both limits */
        out = submit(&s, "wide", "raw", 0, "1,1", NULL);
        assert_non_null(strstr(out, "\"shape\":[1,1000]"));
        free(out);
        /* the output is over */
        out = submit(&s, "wide", "raw", 1, "1,1", "2,2");
        assert_non_null(strstr(out, "\"error\":\"too_large\""));
        assert_non_null(strstr(out, "the output would be 2 x 1000 = 2000 values, limit "
                                    "max_output_elements is 1500"));
        free(out);
        /* the same rows reduced by argmax fit */
        out = submit(&s, "wide", "argmax", 0, "1,1", "2,2");
        assert_non_null(strstr(out, "\"shape\":[2,1]"));
        free(out);
        /* a narrow output through a wide hidden layer: the scratch is over */
        out = submit(&s, "tall", "raw", 1, "1,1", NULL);
        assert_non_null(strstr(out, "\"error\":\"too_large\""));
        assert_non_null(strstr(out, "needs 4000 scratch values, limit max_scratch_elements is "
                                    "3000"));
        free(out);
        /* and the worker still serves */
        out = submit(&s, "wide", "raw", 0, "3,3", NULL);
        assert_non_null(strstr(out, "\"status\":\"ok\""));
        free(out);
        kt_stack_stop(&s);
}

int main(void)
{
        const struct CMUnitTest tests[] = {cmocka_unit_test(test_output_and_scratch_bounded)};
        return cmocka_run_group_tests(tests, NULL, NULL);
}
