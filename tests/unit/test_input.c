/* test_input.c - the kinfer CLI's input reader (producer-tool/input.c): the
 * CSV header rule, numbers that underflow float32, numbers that overflow it,
 * in CSV files, JSON lines and command-line rows. */
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

#include "../../producer-tool/kinfer.h"

#define MAX_JOBS 8
#define MAX_VALS 16

/* What kc_read_jobs handed its callback: a copy of each job. */
typedef struct {
        int n;
        uint32_t rows[MAX_JOBS], cols[MAX_JOBS];
        float vals[MAX_JOBS][MAX_VALS];
} jobs_t;

static int collect(const kc_matrix_t *m, void *opaque)
{
        jobs_t *j = opaque;
        size_t cnt = (size_t)m->rows * m->cols;

        if (j->n == MAX_JOBS || cnt > MAX_VALS)
                return 1; /* the test's own limit: it then fails on "stopped" */
        j->rows[j->n] = m->rows;
        j->cols[j->n] = m->cols;
        memcpy(j->vals[j->n], m->data, cnt * sizeof(float));
        j->n++;
        return 0;
}

/* The last read_text()'s file name and error message. */
static char path[256], err[512];

/* Writes text to a fresh temporary file and reads it as format, one job per
 * line, into jobs; path and err are the file's name (for the messages) and
 * the error.  The file is removed before returning. */
static int read_text(const char *text, const char *format, jobs_t *jobs)
{
        const char *dir = getenv("TMPDIR");
        FILE *fp;
        int fd, rc;

        snprintf(path, sizeof(path), "%s/kinfer-test-input-XXXXXX", dir && *dir ? dir : "/tmp");
        fd = mkstemp(path);
        assert_true(fd >= 0);
        fp = fdopen(fd, "w");
        assert_non_null(fp);
        assert_int_equal(fputs(text, fp) >= 0, 1);
        assert_int_equal(fclose(fp), 0);
        memset(jobs, 0, sizeof(*jobs));
        err[0] = '\0';
        rc = kc_read_jobs(path, format, 1, collect, jobs, err, sizeof(err));
        unlink(path);
        return rc;
}

/* read_text() that must succeed, or fail the test with the error. */
static void expect_read_ok(const char *text, const char *format, jobs_t *jobs)
{
        if (read_text(text, format, jobs) != 0)
                fail_msg("refused \"%s\": %s", text, err);
}

/* read_text() that must fail, or fail the test saying what was read. */
static void expect_read_refused(const char *text, const char *format, jobs_t *jobs)
{
        if (read_text(text, format, jobs) == 0)
                fail_msg("accepted \"%s\" as %d job(s)", text, jobs->n);
}

/* err must be "<path>:<line>: " followed by a message containing each of
 * the NULL-terminated parts. */
static void assert_error_at(int line, ...)
{
        char want[512];
        const char *part;
        va_list ap;

        snprintf(want, sizeof(want), "%s:%d: ", path, line);
        if (strncmp(err, want, strlen(want)) != 0)
                fail_msg("error '%s' does not start with '%s'", err, want);
        va_start(ap, line);
        while ((part = va_arg(ap, const char *)) != NULL) {
                if (!strstr(err, part)) {
                        va_end(ap);
                        fail_msg("error '%s' does not contain '%s'", err, part);
                }
        }
        va_end(ap);
}

static void assert_same_bits(float got, float want)
{
        if (memcmp(&got, &want, sizeof(float)) != 0)
                fail_msg("got %a, want %a", (double)got, (double)want);
}

/* ---- the CSV header rule ----------------------------------------------- */

static void test_csv_header_only_when_no_field_is_a_number(void **state)
{
        jobs_t jobs;
        (void)state;

        /* a real header: every field a name (empty and quoted ones too) */
        expect_read_ok("x, y,\"z\",\n1,2,3,4\n", "csv", &jobs);
        assert_int_equal(jobs.n, 1);
        assert_int_equal(jobs.cols[0], 4);
        assert_true(jobs.vals[0][0] == 1.0f && jobs.vals[0][3] == 4.0f);

        /* a data line with a typo is not a header: the error names the file,
         * the line, the column and the value, and no job is sent */
        expect_read_refused("1,2x,3\n4,5,6\n", "csv", &jobs);
        assert_error_at(1, "column 2", "'2x'", NULL);
        assert_int_equal(jobs.n, 0);

        expect_read_refused("0.5,,1\n", "csv", &jobs);
        assert_error_at(1, "column 2", "''", NULL);

        expect_read_refused("one,2\n3,4\n", "csv", &jobs);
        assert_error_at(1, "column 1", "'one'", NULL);
        assert_int_equal(jobs.n, 0);

        /* every field a number, one out of range: that value's error, not a
         * header */
        expect_read_refused("1,1e39\n3,4\n", "csv", &jobs);
        assert_error_at(1, "value 2", "'1e39'", "float32", NULL);
        assert_int_equal(jobs.n, 0);

        /* only line 1 can be a header: a name later is an error (as before) */
        expect_read_refused("1,2\na,b\n", "csv", &jobs);
        assert_error_at(2, "'a'", NULL);
}

/* ---- underflow: rounds to a float32 subnormal or zero, which is finite --- */

static void test_underflow_is_accepted(void **state)
{
        char a0[] = "1e-320,-1e-400,1e-40,-1e-46";
        char *argv[] = {a0};
        kc_matrix_t m;
        jobs_t jobs;
        (void)state;

        /* 1e-320 is a float64 subnormal (strtod says ERANGE), 1e-400 is 0 in
         * float64, 1e-40 a float32 subnormal, 1e-46 below float32's least */
        expect_read_ok("1,2,3,4\n1e-320,-1e-400,1e-40,-1e-46\n", "csv", &jobs);
        assert_int_equal(jobs.n, 2);
        assert_int_equal(jobs.cols[1], 4);
        assert_same_bits(jobs.vals[1][0], 0.0f);
        assert_same_bits(jobs.vals[1][1], -0.0f);
        assert_same_bits(jobs.vals[1][2], (float)1e-40);
        assert_true(fpclassify(jobs.vals[1][2]) == FP_SUBNORMAL);
        assert_same_bits(jobs.vals[1][3], -0.0f);
        /* and on line 1, where it was once taken for a header and dropped */
        expect_read_ok("1e-320,2\n", "csv", &jobs);
        assert_int_equal(jobs.n, 1);
        assert_same_bits(jobs.vals[0][0], 0.0f);

        assert_int_equal(kc_rows_from_args(1, argv, &m, err, sizeof(err)), 0);
        assert_int_equal(m.rows, 1);
        assert_int_equal(m.cols, 4);
        assert_same_bits(m.data[0], 0.0f);
        assert_same_bits(m.data[2], (float)1e-40);
        free(m.data);

        expect_read_ok("[1e-320, 2]\n", "jsonl", &jobs);
        assert_int_equal(jobs.n, 1);
        assert_same_bits(jobs.vals[0][0], 0.0f);
}

/* ---- overflow: still refused, and said so ------------------------------ */

static void test_overflow_is_refused_clearly(void **state)
{
        char a0[] = "1,2", a1[] = "3,-1e39";
        char *argv[] = {a0, a1};
        kc_matrix_t m;
        jobs_t jobs;
        (void)state;

        expect_read_refused("1,2\n1e39,3\n", "csv", &jobs);
        assert_error_at(2, "value 1 ('1e39') is out of float32 range", NULL);
        assert_int_equal(jobs.n, 1); /* line 1 was a job of its own */

        /* beyond float64 too (strtod: HUGE_VAL and ERANGE) */
        expect_read_refused("1,2\n1,-1e400\n", "csv", &jobs);
        assert_error_at(2, "value 2 ('-1e400') is out of float32 range", NULL);

        /* NaN and infinities are numbers to strtod, never to a job */
        expect_read_refused("1,2\nnan,inf\n", "csv", &jobs);
        assert_error_at(2, "value 1 ('nan') is not finite", NULL);

        assert_int_equal(kc_rows_from_args(2, argv, &m, err, sizeof(err)), -1);
        assert_string_equal(err, "row 2 '3,-1e39': value 2 ('-1e39') is out of float32 range "
                                 "(largest 3.40282e+38)");

        expect_read_refused("[1e39]\n", "jsonl", &jobs);
        assert_error_at(1, "value 1 (1e+39) is out of float32 range (largest 3.40282e+38)", NULL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_csv_header_only_when_no_field_is_a_number),
            cmocka_unit_test(test_underflow_is_accepted),
            cmocka_unit_test(test_overflow_is_refused_clearly),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
