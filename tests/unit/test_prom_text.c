/* test_prom_text.c - the Prometheus text parser of `kinfer top`
 * (producer-tool/prom_text.c): an exposition that Prometheus' own promtool
 * accepts is read sample by sample with the values written in it; each kind
 * of damage stops the parse with an error naming its line. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../producer-tool/prom_text.h"

/* What a worker serves, in short, plus what the format allows that a worker
 * does not write: escapes in label values, NaN and infinities, timestamps,
 * blanks around labels, a last line without its newline. */
static const char exposition[] =
    "# HELP kinfer_jobs_total Results written, by model, version and code.\n"
    "# TYPE kinfer_jobs_total counter\n"
    "kinfer_jobs_total{model=\"lin\",version=\"1\",code=\"ok\"} 600\n"
    "kinfer_jobs_total{model=\"lin\",version=\"1\",code=\"shape_mismatch\"} 100\n"
    "kinfer_jobs_total{model=\"\",version=\"\",code=\"unknown_model\"} 50\n"
    "# HELP kinfer_consumer_lag Messages not yet committed.\n"
    "# TYPE kinfer_consumer_lag gauge\n"
    "kinfer_consumer_lag{topic=\"kinfer.jobs\",partition=\"0\"} 12\n"
    "kinfer_consumer_lag{topic=\"a\\\\b\\\"c\\nd\",partition=\"1\"} 3 1700000000000\n"
    "\n"
    "# HELP kinfer_work_remaining_flops Work.\n"
    "# TYPE kinfer_work_remaining_flops gauge\n"
    "kinfer_work_remaining_flops 1.5e+09\n"
    "# HELP kinfer_batch_jobs Jobs per batch.\n"
    "# TYPE kinfer_batch_jobs histogram\n"
    "kinfer_batch_jobs_bucket{le=\"1\"} 3\n"
    "kinfer_batch_jobs_bucket{le=\"+Inf\"} 7\n"
    "kinfer_batch_jobs_sum 19\n"
    "kinfer_batch_jobs_count 7\n"
    "# HELP odd_values A gauge with odd values.\n"
    "# TYPE odd_values gauge\n"
    "odd_values{kind=\"nan\"} NaN\n"
    "odd_values{kind=\"neg\"} -Inf\n"
    "odd_values { kind = \"pos\" , } +Inf";

typedef struct {
        int n;
        char name[32][KP_NAME_MAX + 1];
        double value[32];
        int n_labels[32], has_ts[32], line[32];
        int64_t ts[32];
        char lag_topic[KP_LVALUE_MAX + 1];
        int stop_at; /* return 7 at this sample (1-based), 0 = never */
} seen_t;

static int collect(const kp_sample_t *s, void *opaque)
{
        seen_t *seen = opaque;
        int i = seen->n++;
        assert_true(i < 32);
        strcpy(seen->name[i], s->name);
        seen->value[i] = s->value;
        seen->n_labels[i] = s->n_labels;
        seen->has_ts[i] = s->has_ts;
        seen->ts[i] = s->ts_ms;
        seen->line[i] = s->line;
        if (!strcmp(s->name, "kinfer_consumer_lag") && s->has_ts)
                strcpy(seen->lag_topic, kp_label(s, "topic"));
        return seen->stop_at == seen->n ? 7 : 0;
}

/* promtool (Debian's prometheus) must accept the text these tests trust. */
static void test_promtool_accepts_it(void **state)
{
        char path[] = "/tmp/kinfer-prom-XXXXXX", cmd[256];
        int fd = mkstemp(path);
        FILE *fp;
        int rc;
        (void)state;
        assert_true(fd >= 0);
        assert_non_null(fp = fdopen(fd, "w"));
        /* promtool wants the last line ended */
        fprintf(fp, "%s\n", exposition);
        fclose(fp);
        snprintf(cmd, sizeof(cmd), "promtool check metrics < %s > %s.out 2>&1", path, path);
        rc = system(cmd);
        if (rc != 0) {
                snprintf(cmd, sizeof(cmd), "cat %s.out >&2", path);
                assert_int_equal(system(cmd), 0);
        }
        snprintf(cmd, sizeof(cmd), "%s.out", path);
        unlink(cmd);
        unlink(path);
        assert_int_equal(rc, 0);
}

static void test_reads_every_sample(void **state)
{
        seen_t seen = {0};
        char err[256] = "";
        (void)state;
        assert_int_equal(kp_parse(exposition, strlen(exposition), collect, &seen, err, sizeof(err)),
                         0);
        assert_int_equal(seen.n, 13);
        assert_string_equal(seen.name[0], "kinfer_jobs_total");
        assert_true(seen.value[0] == 600 && seen.value[1] == 100 && seen.value[2] == 50);
        assert_int_equal(seen.n_labels[0], 3);
        assert_int_equal(seen.line[0], 3);
        assert_true(seen.value[3] == 12 && !seen.has_ts[3]);
        assert_true(seen.value[4] == 3 && seen.has_ts[4] && seen.ts[4] == 1700000000000LL);
        assert_string_equal(seen.lag_topic, "a\\b\"c\nd");
        assert_string_equal(seen.name[5], "kinfer_work_remaining_flops");
        assert_true(seen.value[5] == 1.5e9);
        assert_string_equal(seen.name[7], "kinfer_batch_jobs_bucket");
        assert_true(seen.value[7] == 7);
        assert_true(seen.value[8] == 19 && seen.value[9] == 7);
        assert_true(isnan(seen.value[10]));
        assert_true(isinf(seen.value[11]) && seen.value[11] < 0);
        assert_true(isinf(seen.value[12]) && seen.value[12] > 0);
        assert_int_equal(seen.n_labels[12], 1);
        assert_int_equal(seen.line[12], 24);
}

static void test_callback_stops_it(void **state)
{
        seen_t seen = {.stop_at = 2};
        (void)state;
        assert_int_equal(kp_parse(exposition, strlen(exposition), collect, &seen, NULL, 0), 7);
        assert_int_equal(seen.n, 2);
}

/* One bad text: -1, the samples before it delivered, the error names the
 * line and contains want. */
static void bad(const char *text, size_t len, int good_before, int line, const char *want)
{
        seen_t seen = {0};
        char err[256] = "", at[32];
        int rc = kp_parse(text, len, collect, &seen, err, sizeof(err));
        if (rc != -1 || seen.n != good_before || !strstr(err, want))
                fail_msg("text %.60s: rc %d, %d samples, error '%s' (want '%s')", text, rc, seen.n,
                         err, want);
        snprintf(at, sizeof(at), "line %d: ", line);
        assert_memory_equal(err, at, strlen(at));
}

static void test_damage_is_an_error(void **state)
{
        char longname[KP_NAME_MAX + 8], text[4 * KP_LVALUE_MAX];
        (void)state;
        bad("a 1\nb{x=\"1} 2\n", 12, 1, 2, "not terminated");
        bad("a{x=\"\\t\"} 1\n", 12, 0, 1, "unknown escape");
        bad("a{x=\"1\",x=\"2\"} 1\n", 17, 0, 1, "given twice");
        bad("a{1x=\"1\"} 1\n", 12, 0, 1, "label name");
        bad("a{x:y=\"1\"} 1\n", 13, 0, 1, "expected '='");
        bad("a{x=1} 1\n", 9, 0, 1, "expected '\"'");
        bad("a{x=\"1\" y=\"2\"} 1\n", 17, 0, 1, "expected ',' or '}'");
        bad("a 1\n# ok\na one\n", 15, 1, 3, "not a number");
        bad("a 1 2 3\n", 8, 0, 1, "after the timestamp");
        bad("a 1 1.5\n", 8, 0, 1, "timestamp");
        bad("a 1 99999999999999999999\n", 25, 0, 1, "timestamp");
        bad("a\n", 2, 0, 1, "expected a value");
        bad("a{x=\"1\"}\n", 9, 0, 1, "expected a value");
        bad("9a 1\n", 5, 0, 1, "metric name");
        bad("a 1\nb 2\0\n", 8, 1, 2, "NUL");
        bad("a 1\r\n", 5, 0, 1, "not a number");
        memset(longname, 'n', sizeof(longname));
        memcpy(longname + KP_NAME_MAX + 1, " 1\n", 4);
        bad(longname, strlen(longname), 0, 1, "longer than");
        snprintf(text, sizeof(text), "a{x=\"");
        memset(text + 5, 'v', KP_LVALUE_MAX + 1);
        memcpy(text + 5 + KP_LVALUE_MAX + 1, "\"} 1\n", 6);
        bad(text, strlen(text), 0, 1, "longer than");
        snprintf(text, sizeof(text), "a{");
        for (int i = 0; i <= KP_LABELS_MAX; i++)
                sprintf(text + strlen(text), "l%d=\"\",", i); /* 17 labels: ~130 bytes */
        strcat(text, "} 1\n");
        bad(text, strlen(text), 0, 1, "more than");
}

static void test_edges(void **state)
{
        seen_t seen = {0};
        (void)state;
        /* empty, comments only, blank lines with blanks */
        assert_int_equal(kp_parse("", 0, collect, &seen, NULL, 0), 0);
        assert_int_equal(kp_parse("# x\n  \n\t\n#\n", 11, collect, &seen, NULL, 0), 0);
        assert_int_equal(seen.n, 0);
        /* len is the end, not a NUL: "a 12" cut after "a 1" */
        assert_int_equal(kp_parse("a 12\n", 3, collect, &seen, NULL, 0), 0);
        assert_true(seen.n == 1 && seen.value[0] == 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_promtool_accepts_it),
            cmocka_unit_test(test_reads_every_sample),
            cmocka_unit_test(test_callback_stops_it),
            cmocka_unit_test(test_damage_is_an_error),
            cmocka_unit_test(test_edges),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
