/* test_redact.c - secrets never reach a message: the redaction helpers
 * (kf_redact.h), and the errors of the modules that handle secrets (Redis
 * URLs, -X librdkafka properties) for inputs that are wrong. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_config.h"
#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_redact.h"
#include "kf_redis.h"

#define SECRET "S3cretPw-u11"

/* errstr names want and does not contain the secret. */
static void check_msg(const char *what, const char *errstr, const char *want)
{
        if (strstr(errstr, SECRET))
                fail_msg("%s: the secret is in the message: %s", what, errstr);
        if (want && !strstr(errstr, want))
                fail_msg("%s: the message does not name '%s': %s", what, want, errstr);
}

/* ---- the helpers ---- */

static void test_redact_url(void **state)
{
        static const struct {
                const char *in, *out;
        } cases[] = {
            {"redis://kinfer:pw@db:6379/0", "redis://kinfer:***@db:6379/0"},
            {"redis://pw@db", "redis://***@db"},
            {"redis://:pw@db:6379", "redis://:***@db:6379"},
            {"redis://db:6379/0", "redis://db:6379/0"},
            {"redis://kinfer:p@ss/w:rd@db:1/2", "redis://kinfer:***@db:1/2"},
            {"rediss://kinfer:%2Fpw@db", "rediss://kinfer:***@db"},
            {"kinfer:pw@db:6379", "kinfer:***@db:6379"},
            {"pw@db", "***@db"},
            {"", ""},
        };
        char buf[128];
        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                assert_string_equal(kf_redact_url(cases[i].in, buf, sizeof(buf)), cases[i].out);
        /* cut short, still terminated, still without the password */
        assert_string_equal(kf_redact_url("redis://kinfer:" SECRET "@db", buf, 17),
                            "redis://kinfer:*");
        assert_string_equal(kf_redact_url("redis://" SECRET "@db", buf, 4), "red");
}

static void test_prop_is_secret(void **state)
{
        static const char *const secret[] = {"sasl.password",
                                             "SASL.Password",
                                             "ssl.key.password",
                                             "ssl.keystore.password",
                                             "ssl.key.pem",
                                             "ssl_key",
                                             "sasl.oauthbearer.client.secret",
                                             "sasl.oauthbearer.config",
                                             "sasl.oauthbearer.token.endpoint.url",
                                             "sasl.kerberos.keytab",
                                             "x.passwd",
                                             "some.credentials",
                                             NULL};
        static const char *const plain[] = {"bootstrap.servers",
                                            "sasl.username",
                                            "sasl.mechanism",
                                            "security.protocol",
                                            "acks",
                                            "debug",
                                            "sasl.oauthbearer.method",
                                            NULL};
        (void)state;
        for (int i = 0; secret[i]; i++)
                if (!kf_prop_is_secret(secret[i]))
                        fail_msg("%s is not taken for a secret", secret[i]);
        for (int i = 0; plain[i]; i++)
                if (kf_prop_is_secret(plain[i]))
                        fail_msg("%s is taken for a secret", plain[i]);
        assert_false(kf_prop_is_secret(NULL));
}

static void test_redact_value(void **state)
{
        char buf[128];
        (void)state;
        assert_string_equal(
            kf_redact_value(buf, sizeof(buf), "Invalid value \"hunter2\" for x", "hunter2"),
            "Invalid value \"***\" for x");
        assert_string_equal(kf_redact_value(buf, sizeof(buf), "ab ab aab", "ab"), "*** *** a***");
        assert_string_equal(kf_redact_value(buf, sizeof(buf), "as is", ""), "as is");
        assert_string_equal(kf_redact_value(buf, sizeof(buf), "as is", NULL), "as is");
        assert_string_equal(kf_redact_value(buf, 6, "ab hunter2", "hunter2"), "ab **");
        assert_string_equal(kf_redact_value(buf, 4, "hunter2", "hunter2"), "***");
        assert_string_equal(kf_redact_value(buf, 1, "hunter2", "hunter2"), "");
}

/* Registered secrets are scrubbed in place, wherever they are. */
static void test_secret_registry(void **state)
{
        char line[128];
        (void)state;
        assert_int_equal(kf_secret_add("abc"), -1); /* shorter than KF_SECRET_MIN */
        assert_int_equal(kf_secret_add(NULL), -1);
        assert_int_equal(kf_secret_add("Reg1-" SECRET), 0);
        assert_int_equal(kf_secret_add("Reg1-" SECRET), 0); /* again: no new slot */
        snprintf(line, sizeof(line), "a Reg1-%s b Reg1-%sReg1-%s", SECRET, SECRET, SECRET);
        kf_redact_secrets(line);
        assert_string_equal(line, "a *** b ******");
        snprintf(line, sizeof(line), "abc");
        kf_redact_secrets(line);
        assert_string_equal(line, "abc");
}

/* Parsing a URL or a secret -X property registers the secret. */
static void test_parse_registers(void **state)
{
        kf_props_t props = {0};
        kf_redis_url_t u;
        char line[128], err[256];
        (void)state;
        assert_int_equal(kf_redis_url_parse("redis://k:Url%40Pw-123@db", &u, err, sizeof(err)), 0);
        assert_int_equal(kf_props_add(&props, "sasl.password=XPw-456", err, sizeof(err)), 0);
        assert_int_equal(kf_props_add(&props, "client.id=Plain-789", err, sizeof(err)), 0);
        snprintf(line, sizeof(line), "Url@Pw-123 XPw-456 Plain-789");
        kf_redact_secrets(line);
        assert_string_equal(line, "*** *** Plain-789");
        kf_props_free(&props);
}

/* Every kf_log line is scrubbed, whatever it quotes. */
static void test_log_scrubs(void **state)
{
        char path[] = "/tmp/test_redact-XXXXXX", buf[4096] = "";
        int fd = mkstemp(path), saved = dup(STDERR_FILENO);
        FILE *fp;
        (void)state;
        assert_true(fd >= 0 && saved >= 0);
        assert_int_equal(kf_secret_add("Log-" SECRET), 0);
        fflush(stderr);
        dup2(fd, STDERR_FILENO);
        kf_log_write(KF_LOG_ERROR, "server said: bad password 'Log-%s' (%d)", SECRET, 7);
        fflush(stderr);
        dup2(saved, STDERR_FILENO);
        close(saved);
        assert_non_null(fp = fdopen(fd, "r"));
        rewind(fp);
        assert_true(fread(buf, 1, sizeof(buf) - 1, fp) > 0);
        fclose(fp);
        unlink(path);
        check_msg("log line", buf, "server said: bad password '***' (7)\n");
}

/* ---- the modules that handle secrets ---- */

/* Every way kf_redis_url_parse refuses a URL that holds a password. */
static void test_url_parse_errors(void **state)
{
        static const struct {
                const char *url, *want;
        } bad[] = {
            {"rediss://kinfer:" SECRET "@db.example:6380/0", "db.example:6380"},
            {"kinfer:" SECRET "@db.example:6380", "db.example:6380"},
            {"redis://kinfer:" SECRET "@db.example:99999/0", "99999"},
            {"redis://kinfer:" SECRET "@db.example:/0", "bad port"},
            {"redis://:" SECRET "@db.example:6380/zero", "zero"},
            {"redis://" SECRET "@:6380/0", "host"},
            {"redis://kinfer:" SECRET "%zz@db.example:6380/0", "escaped"},
        };
        char err[512];
        kf_redis_url_t u;
        (void)state;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = '\0';
                if (kf_redis_url_parse(bad[i].url, &u, err, sizeof(err)) == 0)
                        fail_msg("%s was accepted", bad[i].url);
                check_msg(bad[i].url, err, bad[i].want);
        }
}

/* The password is everything between the scheme and the last '@' (host,
 * port and database never hold one), so an unescaped '/' or '@' in it is
 * part of the password, not the start of the database. */
static void test_url_parse_password_chars(void **state)
{
        char err[512] = "";
        kf_redis_url_t u;
        (void)state;
        if (kf_redis_url_parse("redis://kinfer:pa/" SECRET "@db.example:6380/3", &u, err,
                               sizeof(err)))
                fail_msg("refused: %s", err);
        check_msg("parse", err, NULL);
        assert_string_equal(u.user, "kinfer");
        assert_string_equal(u.pass, "pa/" SECRET);
        assert_string_equal(u.host, "db.example");
        assert_int_equal(u.port, 6380);
        assert_int_equal(u.db, 3);
        assert_int_equal(kf_redis_url_parse("redis://:a@b@db.example", &u, err, sizeof(err)), 0);
        assert_string_equal(u.pass, "a@b");
        assert_string_equal(u.host, "db.example");
        assert_int_equal(u.port, 6379);
}

/* librdkafka refuses these; the message names the property, not its value. */
static void test_kafka_conf_errors(void **state)
{
        static const char *const kv[] = {
            "sasl.passwrod=" SECRET,                  /* unknown: a typo of a secret */
            "ssl_key=" SECRET,                        /* known, never settable */
            "sasl.oauthbearer.client.secret=" SECRET, /* refused without libcurl */
        };
        static const char *const names[] = {"sasl.passwrod", "ssl_key",
                                            "sasl.oauthbearer.client.secret"};
        char err[512];
        (void)state;
        for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
                kf_props_t props = {0};
                rd_kafka_conf_t *conf;
                assert_int_equal(kf_props_add(&props, kv[i], err, sizeof(err)), 0);
                err[0] = '\0';
                conf = kf_kafka_conf_new("127.0.0.1:9092", NULL, &props, err, sizeof(err));
                if (conf) { /* a librdkafka built with libcurl takes the last one */
                        rd_kafka_conf_destroy(conf);
                        assert_int_equal(i, 2);
                } else {
                        check_msg(kv[i], err, names[i]);
                }
                kf_props_free(&props);
        }
}

/* -X without '=': the argument may be "name:value" or "name value". */
static void test_props_add_errors(void **state)
{
        kf_props_t props = {0};
        char err[512] = "";
        (void)state;
        assert_int_equal(kf_props_add(&props, "sasl.password:" SECRET, err, sizeof(err)), -1);
        check_msg("props_add", err, "sasl.password");
        assert_int_equal(props.cnt, 0);
        kf_props_free(&props);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_redact_url),
            cmocka_unit_test(test_prop_is_secret),
            cmocka_unit_test(test_redact_value),
            cmocka_unit_test(test_secret_registry),
            cmocka_unit_test(test_parse_registers),
            cmocka_unit_test(test_log_scrubs),
            cmocka_unit_test(test_url_parse_errors),
            cmocka_unit_test(test_url_parse_password_chars),
            cmocka_unit_test(test_kafka_conf_errors),
            cmocka_unit_test(test_props_add_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
