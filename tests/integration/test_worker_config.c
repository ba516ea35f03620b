/* test_worker_config.c - kinfer-worker's configuration from outside: a config
 * file, the environment and flags in that order of precedence; bad values
 * and unknown keys stop it at start naming the key; --print-config shows
 * the effective configuration and never a secret, whichever way the secret
 * came in.  The printed JSON is read back with jansson, not compared as
 * text with the program's own output. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/stack.h"

static kt_stack_t stack;

static int setup(void **state)
{
        (void)state;
        return kt_stack_init(&stack);
}

static int teardown(void **state)
{
        (void)state;
        kt_stack_stop(&stack);
        return 0;
}

static void write_file(const char *path, const char *text)
{
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        assert_true(fputs(text, fp) >= 0);
        assert_int_equal(fclose(fp), 0);
}

/* Runs kinfer-worker with args through sh (so stderr is captured too) with
 * extra environment assignments env ("" for none); returns the exit status
 * and the output in *out. */
static int worker(const char *env, const char *args, char **out)
{
        char cmd[4096];
        const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
        snprintf(cmd, sizeof(cmd),
                 "env -u KINFER_BATCH_MAX_JOBS -u KINFER_REDIS %s %s/kinfer-worker %s 2>&1", env,
                 stack.bindir, args);
        return kt_stack_run(&stack, argv, NULL, out, 10000);
}

static json_t *printed(const char *env, const char *args)
{
        char full[2048], *out = NULL;
        json_error_t jerr;
        json_t *j;
        snprintf(full, sizeof(full), "%s --print-config", args);
        if (worker(env, full, &out) != 0)
                fail_msg("kinfer-worker %s: %s", full, out ? out : "");
        if (!(j = json_loads(out, 0, &jerr)))
                fail_msg("--print-config is not JSON (%s): %s", jerr.text, out);
        free(out);
        return j;
}

static long long int_of(json_t *j, const char *key)
{
        json_t *v = json_object_get(j, key);
        if (!json_is_integer(v))
                fail_msg("\"%s\" is not a whole number in the printed configuration", key);
        return json_integer_value(v);
}

/* The default, then the file, the environment and the flag, each
 * overriding the one before. */
static void test_precedence(void **state)
{
        char path[512], args[1024];
        json_t *j;
        (void)state;
        snprintf(path, sizeof(path), "%s/w.json", stack.dir);
        write_file(path, "{\"batch-max-jobs\": 77, \"grace-ms\": 1234, \"topic\": \"from-file\","
                         " \"kafka\": {\"fetch.wait.max.ms\": \"7\"}}\n");

        j = printed("", "");
        assert_int_equal(int_of(j, "batch-max-jobs"), 512);
        json_decref(j);

        snprintf(args, sizeof(args), "--config %s", path);
        j = printed("", args);
        assert_int_equal(int_of(j, "batch-max-jobs"), 77);
        assert_int_equal(int_of(j, "grace-ms"), 1234);
        assert_string_equal(json_string_value(json_object_get(j, "topic")), "from-file");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(j, "kafka"), "fetch.wait.max.ms")),
            "7");
        json_decref(j);

        j = printed("KINFER_BATCH_MAX_JOBS=88", args);
        assert_int_equal(int_of(j, "batch-max-jobs"), 88);
        assert_int_equal(int_of(j, "grace-ms"), 1234); /* still the file's */
        json_decref(j);

        snprintf(args, sizeof(args), "--config=%s --batch-max-jobs 99", path);
        j = printed("KINFER_BATCH_MAX_JOBS=88", args);
        assert_int_equal(int_of(j, "batch-max-jobs"), 99);
        json_decref(j);

        /* KINFER_CONFIG names the file too */
        snprintf(args, sizeof(args), "KINFER_CONFIG=%s", path);
        j = printed(args, "");
        assert_int_equal(int_of(j, "batch-max-jobs"), 77);
        json_decref(j);
}

/* Each bad file stops the worker before it connects anywhere, exit 2, with
 * a message naming the file and the key. */
static void test_bad_files_refused(void **state)
{
        static const struct {
                const char *json, *want;
        } bad[] = {
            {"{\"bach-max-jobs\": 3}", "key \"bach-max-jobs\": unknown key"},
            {"{\"batch-max-jobs\": \"x\"}", "key \"batch-max-jobs\": 'x' is not a whole number"},
            {"{\"batch-max-jobs\": 0}", "key \"batch-max-jobs\": '0' is not a whole number in [1"},
            {"{\"batch-max-jobs\": 1.5}", "key \"batch-max-jobs\": expected a string, a whole"},
            {"{\"batch-max-jobs\": 3, \"batch-max-jobs\": 4}", "duplicate object key"},
            {"{\"batch-max-jobs\": 3,", "line 1"},
            {"[1, 2]", "expected a JSON object"},
            {"{\"print-config\": true}", "key \"print-config\": unknown key"},
            {"{\"kafka\": {\"fetch.wait.max.ms\": 7}}",
             "property \"fetch.wait.max.ms\": expected a string"},
            {"{\"kafka\": {\"no.such.property\": \"1\"}}", "no.such.property"},
            {"{\"log-level\": \"loud\"}", "key \"log-level\": 'loud' is not a log level"},
        };
        char path[512], args[1024], *out = NULL;
        (void)state;
        snprintf(path, sizeof(path), "%s/bad.json", stack.dir);
        snprintf(args, sizeof(args), "--config %s", path);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int rc;
                write_file(path, bad[i].json);
                rc = worker("", args, &out);
                /* a librdkafka property is checked by librdkafka, after the
                 * file was read: its message names the property only */
                if (rc != 2 || !strstr(out, bad[i].want) ||
                    (!strstr(bad[i].want, "no.such") && !strstr(out, path)))
                        fail_msg("config %s: exit %d, output \"%s\"; want exit 2 naming the file "
                                 "and \"%s\"",
                                 bad[i].json, rc, out, bad[i].want);
                free(out);
                out = NULL;
        }
        snprintf(args, sizeof(args), "--config %s/missing.json", stack.dir);
        assert_int_equal(worker("", args, &out), 2);
        assert_non_null(strstr(out, "missing.json"));
        free(out);
}

/* A chained stage cannot require signatures: its jobs are made by the
 * worker from result messages, signed by nobody.  Refused at start, with
 * the reason, before any connection. */
static void test_chain_with_signatures_refused(void **state)
{
        char *out = NULL;
        int rc;
        (void)state;
        rc = worker("", "--chain-model next --require-signatures --redis redis://127.0.0.1:1/0",
                    &out);
        if (rc != 1 || !strstr(out, "--chain-model with --require-signatures") ||
            !strstr(out, "Kafka ACLs"))
                fail_msg("exit %d, output \"%s\"; want exit 1 naming both flags", rc, out);
        free(out);
}

/* Secrets given by flag, environment or file never show, not even
 * partly, and the output still says where a secret is. */
static void test_print_config_hides_secrets(void **state)
{
        static const char *const secrets[] = {"flagPW4711", "envPW4712", "filePW4713",
                                              "saslPW4714", "sslPW4715", NULL};
        char path[512], args[2048], *out = NULL;
        (void)state;
        snprintf(path, sizeof(path), "%s/s.json", stack.dir);
        write_file(path, "{\"kafka\": {\"sasl.password\": \"filePW4713\"}}");

        snprintf(args, sizeof(args),
                 "--config %s --redis redis://app:flagPW4711@127.0.0.1:1/0 "
                 "-X sasl.username=u -X ssl.key.password=sslPW4715 --print-config",
                 path);
        assert_int_equal(worker("", args, &out), 0);
        for (int i = 0; secrets[i]; i++)
                if (strstr(out, secrets[i]))
                        fail_msg("--print-config shows the secret %s:\n%s", secrets[i], out);
        assert_non_null(strstr(out, "redis://app:***@127.0.0.1:1/0"));
        assert_non_null(strstr(out, "\"ssl.key.password\": \"***\""));
        assert_non_null(strstr(out, "\"sasl.password\": \"***\""));
        assert_non_null(strstr(out, "\"sasl.username\": \"u\""));
        free(out);

        assert_int_equal(
            worker("KINFER_REDIS=redis://:envPW4712@127.0.0.1:1/0", "--print-config", &out), 0);
        if (strstr(out, "envPW4712"))
                fail_msg("--print-config shows KINFER_REDIS' password:\n%s", out);
        assert_non_null(strstr(out, "***@127.0.0.1:1/0"));
        free(out);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_precedence),
            cmocka_unit_test(test_bad_files_refused),
            cmocka_unit_test(test_chain_with_signatures_refused),
            cmocka_unit_test(test_print_config_hides_secrets),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
