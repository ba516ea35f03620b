/* test_secrets.c - the real kinfer-worker and kinfer, given a Redis URL with
 * a password or a secret -X property that is wrong, refused or unreachable,
 * never print the secret (errors, logs, librdkafka's own lines, --help),
 * and their messages still name what is wrong: host:port, the property. */
/* cmocka.h needs these first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include "../harness/stack.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Every secret in this file contains SECRET; none may appear in any output. */
#define SECRET "S3cretPw-h11"

static int setup(void **state)
{
        kt_stack_t *s = calloc(1, sizeof(*s));
        if (!s || kt_stack_init(s)) {
                free(s);
                return -1;
        }
        s->failed = 1; /* until the test reaches its end: keep the logs */
        *state = s;
        return 0;
}

static int teardown(void **state)
{
        kt_stack_t *s = *state;
        kt_stack_stop(s);
        free(s);
        return 0;
}

/* A loopback port nobody listens on (bound, then released). */
static int closed_port(void)
{
        struct sockaddr_in a = {.sin_family = AF_INET};
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM, 0), port;
        assert_true(fd >= 0);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
        port = ntohs(a.sin_port);
        close(fd);
        return port;
}

/* A whole file as a string (caller frees). */
static char *slurp(const char *path)
{
        FILE *fp = fopen(path, "r");
        char *buf;
        long n;
        if (!fp)
                fail_msg("cannot open %s", path);
        fseek(fp, 0, SEEK_END);
        n = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        buf = calloc(1, (size_t)n + 1);
        assert_non_null(buf);
        if (n > 0 && fread(buf, 1, (size_t)n, fp) != (size_t)n)
                fail_msg("cannot read %s", path);
        fclose(fp);
        return buf;
}

/* Cases that failed in the current test: each is reported when it runs,
 * and the test fails at its end, so one run shows every leak at once. */
static int n_bad;

/* Runs argv (stdout and stderr into <dir>/<name>.log) until it exits or
 * timeout_ms pass (then SIGTERM: some cases start and keep running), and
 * checks its output: SECRET nowhere, each of want (NULL-terminated)
 * somewhere.  want_exit < 0: any status. */
static void run_check(kt_stack_t *s, const char *name, const char *const *argv,
                      const char *const *env, int timeout_ms, int want_exit,
                      const char *const *want)
{
        int slot = kt_stack_spawn(s, name, argv, env), st;
        char *out;

        assert_true(slot >= 0);
        st = kt_stack_wait(s, slot, timeout_ms);
        if (st == -1)
                st = kt_stack_kill(s, slot, SIGTERM, 10000);
        out = slurp(s->procs[slot].log);
        if (strstr(out, SECRET)) {
                print_error("%s: the secret is in its output:\n%s\n", name, out);
                n_bad++;
        }
        for (int i = 0; want && want[i]; i++)
                if (!strstr(out, want[i])) {
                        print_error("%s: output does not name '%s':\n%s\n", name, want[i], out);
                        n_bad++;
                }
        if (want_exit >= 0 && st != want_exit) {
                print_error("%s: exit status %d, expected %d:\n%s\n", name, st, want_exit, out);
                n_bad++;
        }
        free(out);
}

/* Ends a test: fails it if any case did. */
static void all_passed(kt_stack_t *s)
{
        int bad = n_bad;
        n_bad = 0;
        if (bad)
                fail_msg("%d check(s) failed (above)", bad);
        s->failed = 0;
}

/* Redis URLs with a password that are malformed, refused or unreachable:
 * the worker and the CLI say which host:port and what is wrong, without
 * the password. */
static void test_redis_url_secrets(void **state)
{
        kt_stack_t *s = *state;
        char hp[64], url[8][160], bad_port[64], name[64];
        int port = closed_port(), n = 0;

        snprintf(hp, sizeof(hp), "127.0.0.1:%d", port);
        snprintf(bad_port, sizeof(bad_port), "127.0.0.1:99999");
        /* refused (nobody listens), with user, without, '/' in the password */
        snprintf(url[n++], sizeof(url[0]), "redis://kinfer:" SECRET "@%s/0", hp);
        snprintf(url[n++], sizeof(url[0]), "redis://" SECRET "@%s", hp);
        snprintf(url[n++], sizeof(url[0]), "redis://kinfer:pa/" SECRET "@%s/0", hp);
        snprintf(url[n++], sizeof(url[0]), "redis://kinfer:%%2F" SECRET "@%s/0", hp);
        /* malformed: scheme, database, no scheme at all */
        snprintf(url[n++], sizeof(url[0]), "rediss://kinfer:" SECRET "@%s/0", hp);
        snprintf(url[n++], sizeof(url[0]), "redis://:" SECRET "@%s/zero", hp);
        snprintf(url[n++], sizeof(url[0]), "kinfer:" SECRET "@%s", hp);

        for (int i = 0; i < n; i++) {
                const char *const worker[] = {"kinfer-worker", "--redis", url[i], NULL};
                const char *const get[] = {"kinfer",  "get",  "--user",  "u",
                                           "--redis", url[i], "some-id", NULL};
                const char *const want[] = {hp, NULL};
                snprintf(name, sizeof(name), "worker-url%d", i);
                run_check(s, name, worker, NULL, 20000, 1, want);
                snprintf(name, sizeof(name), "get-url%d", i);
                run_check(s, name, get, NULL, 20000, -1, want);
        }
        /* a port out of range: the message names it */
        snprintf(url[0], sizeof(url[0]), "redis://kinfer:" SECRET "@%s/0", bad_port);
        {
                const char *const worker[] = {"kinfer-worker", "--redis", url[0], NULL};
                const char *const usage[] = {"kinfer", "usage", "--redis", url[0], "alice", NULL};
                const char *const want[] = {"99999", NULL};
                run_check(s, "worker-port", worker, NULL, 20000, 1, want);
                run_check(s, "usage-port", usage, NULL, 20000, 2, want);
        }
        /* --help, with the URL in the environment */
        snprintf(url[0], sizeof(url[0]), "KINFER_REDIS=redis://kinfer:" SECRET "@%s/0", hp);
        {
                const char *const env[] = {url[0], NULL};
                const char *const worker[] = {"kinfer-worker", "--help", NULL};
                const char *const submit[] = {"kinfer", "submit", "--help", NULL};
                const char *const want[] = {"--redis", NULL};
                run_check(s, "worker-help", worker, env, 20000, 0, want);
                run_check(s, "submit-help", submit, env, 20000, 0, want);
        }
        all_passed(s);
}

/* Secret -X properties that librdkafka refuses: unknown (a typo of a
 * secret's name), internal, or not in this build.  The message names the
 * property, never its value. */
static void test_kafka_property_secrets(void **state)
{
        kt_stack_t *s = *state;
        static const char *const props[] = {
            "sasl.passwrod=" SECRET,                  /* unknown: a typo */
            "ssl_key=" SECRET,                        /* known, never settable */
            "sasl.oauthbearer.client.secret=" SECRET, /* needs libcurl in librdkafka */
            NULL};
        static const char *const names[] = {"sasl.passwrod", "ssl_key",
                                            "sasl.oauthbearer.client.secret"};
        char name[64];

        /* The worker connects to Redis before it configures Kafka. */
        assert_int_equal(kt_stack_start_redis(s, NULL), 0);
        for (int i = 0; props[i]; i++) {
                const char *const worker[] = {"kinfer-worker", "-X", props[i], NULL};
                const char *const submit[] = {"kinfer", "submit", "--model", "m",   "--user",
                                              "u",      "-X",     props[i],  "1,2", NULL};
                const char *const want[] = {names[i], NULL};
                snprintf(name, sizeof(name), "worker-prop%d", i);
                run_check(s, name, worker, NULL, 20000, -1, want);
                snprintf(name, sizeof(name), "submit-prop%d", i);
                run_check(s, name, submit, NULL, 20000, -1, want);
        }
        /* -X without '=': the argument may be "name:value" */
        {
                const char *const worker[] = {"kinfer-worker", "-X", "sasl.password:" SECRET, NULL};
                const char *const want[] = {"sasl.password", "key=value", NULL};
                run_check(s, "worker-noeq", worker, NULL, 20000, 2, want);
        }
        all_passed(s);
}

/* A property librdkafka accepts but then quotes in its own log lines: an
 * unparsable sasl.oauthbearer.config ("Unrecognized sasl.oauthbearer.config
 * beginning at: <value>").  The line must still be there, without it. */
static void test_kafka_log_secrets(void **state)
{
        kt_stack_t *s = *state;
        const char *const worker[] = {"kinfer-worker",
                                      "-X",
                                      "security.protocol=sasl_plaintext",
                                      "-X",
                                      "sasl.mechanism=OAUTHBEARER",
                                      "-X",
                                      "enable.sasl.oauthbearer.unsecure.jwt=true",
                                      "-X",
                                      "sasl.oauthbearer.config=" SECRET,
                                      NULL};
        const char *const submit[] = {"kinfer",  "submit",
                                      "--model", "m",
                                      "--user",  "u",
                                      "-X",      "security.protocol=sasl_plaintext",
                                      "-X",      "sasl.mechanism=OAUTHBEARER",
                                      "-X",      "enable.sasl.oauthbearer.unsecure.jwt=true",
                                      "-X",      "message.timeout.ms=1000",
                                      "-X",      "sasl.oauthbearer.config=" SECRET,
                                      "1,2",     NULL};
        const char *const want[] = {"sasl.oauthbearer.config", NULL};

        assert_int_equal(kt_stack_start_redis(s, NULL), 0);
        assert_int_equal(kt_stack_start_broker(s, 1, 1), 0);
        /* The worker keeps running: its log is read after 2 s and SIGTERM. */
        run_check(s, "worker-oauth", worker, NULL, 2000, -1, want);
        run_check(s, "submit-oauth", submit, NULL, 20000, -1, want);
        all_passed(s);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_redis_url_secrets, setup, teardown),
            cmocka_unit_test_setup_teardown(test_kafka_property_secrets, setup, teardown),
            cmocka_unit_test_setup_teardown(test_kafka_log_secrets, setup, teardown),
        };
        if (getenv("KT_TEST")) /* e.g. KT_TEST='test_kafka*' runs only those */
                cmocka_set_test_filter(getenv("KT_TEST"));
        return cmocka_run_group_tests(tests, NULL, NULL);
}
