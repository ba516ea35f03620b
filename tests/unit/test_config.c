/* test_config.c - the option table (kf_config.c) with kinfer-worker's own
 * table (worker/options.c): defaults, the precedence default < environment
 * < flag, bounds and types refused with the flag's or variable's name, -X
 * properties, and the table's own consistency. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdlib.h>
#include <string.h>

#include "../../worker/worker.h"
#include "kf_log.h"

/* No KINFER_* variable of the caller's environment leaks into a test. */
static int setup(void **state)
{
        (void)state;
        for (const kf_opt_t *o = kw_options; o->name; o++)
                if (o->env)
                        unsetenv(o->env);
        return 0;
}

static int parse(kw_config_t *c, int argc, char **argv, char *err, size_t errsize)
{
        memset(c, 0, sizeof(*c));
        return kf_config_parse(kw_options, c, &c->props, argc, argv, NULL, err, errsize);
}

static void test_defaults(void **state)
{
        char *argv[] = {"kinfer-worker", NULL};
        char err[512] = "";
        kw_config_t c;
        (void)state;
        if (parse(&c, 1, argv, err, sizeof(err)) != KF_CONFIG_OK)
                fail_msg("defaults refused: %s", err);
        assert_string_equal(c.brokers, "localhost:9092");
        assert_string_equal(c.redis_url, "redis://127.0.0.1:6379/0");
        assert_null(c.models_dir);
        assert_null(c.worker_id);
        assert_string_equal(c.topic, "kinfer.jobs");
        assert_string_equal(c.prefix, "kinfer:");
        assert_int_equal(c.batch_max_jobs, 512);
        assert_int_equal(c.batch_max_rows, 256);
        assert_int_equal(c.writer_threads, 2);
        assert_int_equal(c.compute_threads, 0);
        assert_int_equal(c.max_message_bytes, 8388608);
        assert_int_equal(c.quota_jobs, -1);
        assert_int_equal(c.quota_rows, -1);
        assert_int_equal(c.quota_window, 3600);
        assert_int_equal(c.log_level, KF_LOG_INFO);
        assert_int_equal(c.props.cnt, 0);
        kf_config_free(kw_options, &c, &c.props);
}

static void test_precedence(void **state)
{
        char *argv_none[] = {"kinfer-worker", NULL};
        char *argv_flag[] = {"kinfer-worker", "--writer-threads", "5", "-t", "flagged", NULL};
        char *argv_eq[] = {"kinfer-worker", "--writer-threads=6", NULL};
        char err[512] = "";
        kw_config_t c;
        (void)state;
        setenv("KINFER_WRITER_THREADS", "4", 1);
        setenv("KINFER_TOPIC", "from-env", 1);
        assert_int_equal(parse(&c, 1, argv_none, err, sizeof(err)), KF_CONFIG_OK);
        assert_int_equal(c.writer_threads, 4);
        assert_string_equal(c.topic, "from-env");
        kf_config_free(kw_options, &c, &c.props);
        assert_int_equal(parse(&c, 5, argv_flag, err, sizeof(err)), KF_CONFIG_OK);
        assert_int_equal(c.writer_threads, 5);
        assert_string_equal(c.topic, "flagged");
        kf_config_free(kw_options, &c, &c.props);
        assert_int_equal(parse(&c, 2, argv_eq, err, sizeof(err)), KF_CONFIG_OK);
        assert_int_equal(c.writer_threads, 6);
        kf_config_free(kw_options, &c, &c.props);
}

static void test_refused(void **state)
{
        static const struct {
                const char *flag, *value, *want;
        } bad[] = {
            {"--writer-threads", "0", "writer-threads"},  /* below 1 */
            {"--writer-threads", "17", "writer-threads"}, /* above 16 */
            {"--writer-threads", "2x", "writer-threads"}, {"--quota-jobs", "-2", "quota-jobs"},
            {"--log-level", "loud", "log-level"},         {"--no-such-flag", "1", "no-such-flag"},
        };
        char err[512];
        kw_config_t c;
        (void)state;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char *argv[] = {"kinfer-worker", (char *)bad[i].flag, (char *)bad[i].value, NULL};
                err[0] = '\0';
                if (parse(&c, 3, argv, err, sizeof(err)) != KF_CONFIG_ERR)
                        fail_msg("%s %s was accepted", bad[i].flag, bad[i].value);
                if (!strstr(err, bad[i].want))
                        fail_msg("%s %s: error '%s' does not name it", bad[i].flag, bad[i].value,
                                 err);
                kf_config_free(kw_options, &c, &c.props);
        }
        /* a bad variable is refused the same way, by its name */
        {
                char *argv[] = {"kinfer-worker", NULL};
                setenv("KINFER_BATCH_MAX_ROWS", "0", 1);
                assert_int_equal(parse(&c, 1, argv, err, sizeof(err)), KF_CONFIG_ERR);
                assert_non_null(strstr(err, "KINFER_BATCH_MAX_ROWS"));
                kf_config_free(kw_options, &c, &c.props);
        }
}

static void test_props_and_help(void **state)
{
        char *argv[] = {"kinfer-worker", "-X", "fetch.wait.max.ms=10", "-X", "dlq.acks=all", NULL};
        char *help[] = {"kinfer-worker", "--help", NULL};
        char *noeq[] = {"kinfer-worker", "-X", "novalue", NULL};
        char err[512] = "";
        kw_config_t c;
        (void)state;
        assert_int_equal(parse(&c, 5, argv, err, sizeof(err)), KF_CONFIG_OK);
        assert_int_equal(c.props.cnt, 2);
        assert_string_equal(c.props.keys[0], "fetch.wait.max.ms");
        assert_string_equal(c.props.vals[0], "10");
        assert_string_equal(c.props.keys[1], "dlq.acks");
        kf_config_free(kw_options, &c, &c.props);
        assert_int_equal(parse(&c, 2, help, err, sizeof(err)), KF_CONFIG_HELP);
        kf_config_free(kw_options, &c, &c.props);
        assert_int_equal(parse(&c, 3, noeq, err, sizeof(err)), KF_CONFIG_ERR);
        kf_config_free(kw_options, &c, &c.props);
}

/* The table itself: unique flags and variables, every variable KINFER_*,
 * every field inside kw_config_t, bounds in order, a help line each. */
static void test_table(void **state)
{
        (void)state;
        for (const kf_opt_t *o = kw_options; o->name; o++) {
                assert_true(o->offset < sizeof(kw_config_t));
                assert_non_null(o->help);
                if (o->type == KF_OPT_INT)
                        assert_true(o->min <= o->max);
                if (o->env)
                        assert_int_equal(strncmp(o->env, "KINFER_", 7), 0);
                for (const kf_opt_t *p = kw_options; p != o; p++) {
                        if (!strcmp(p->name, o->name))
                                fail_msg("--%s twice", o->name);
                        if (o->short_flag && p->short_flag == o->short_flag)
                                fail_msg("-%c twice", o->short_flag);
                        if (o->env && p->env && !strcmp(p->env, o->env))
                                fail_msg("%s twice", o->env);
                        if (p->offset == o->offset)
                                fail_msg("--%s and --%s set the same field", p->name, o->name);
                }
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup(test_defaults, setup),
            cmocka_unit_test_setup(test_precedence, setup),
            cmocka_unit_test_setup(test_refused, setup),
            cmocka_unit_test_setup(test_props_and_help, setup),
            cmocka_unit_test_setup(test_table, setup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
