/* test_log_limit.c - the per-site log limit (kf_log_limit.h): the first
 * lines of a burst are written, the rest counted and summed up in one line
 * per window, from many threads at once; shown + summed == asked for. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_log.h"
#include "kf_log_limit.h"

/* stderr goes to a temporary file between capture_start and capture_end,
 * which returns what was written (to free). */
static int saved_fd = -1;
static FILE *cap;

static void capture_start(void)
{
        fflush(stderr);
        cap = tmpfile();
        assert_non_null(cap);
        saved_fd = dup(STDERR_FILENO);
        dup2(fileno(cap), STDERR_FILENO);
}

static char *capture_end(void)
{
        long n;
        char *text;

        fflush(stderr);
        dup2(saved_fd, STDERR_FILENO);
        close(saved_fd);
        n = ftell(cap);
        assert_true(n >= 0);
        text = calloc(1, (size_t)n + 1);
        assert_non_null(text);
        rewind(cap);
        assert_int_equal(fread(text, 1, (size_t)n, cap), (size_t)n);
        fclose(cap);
        return text;
}

static int count(const char *text, const char *needle)
{
        int n = 0;
        for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

/* The sum of the counts in the summary lines of site WHAT. */
static unsigned long long summed(const char *text, const char *what)
{
        char key[128];
        unsigned long long sum = 0, n;
        snprintf(key, sizeof(key), "%s: ", what);
        for (const char *p = text; (p = strstr(p, key)); p += strlen(key))
                if (sscanf(p + strlen(key), "%llu more lines like this", &n) == 1)
                        sum += n;
        return sum;
}

static void burst_site(int i)
{
        kf_warn_limited("burst", "forged job %d at offset %d", i, i);
}

#define THREADS 4
#define PER     5000

static void *burst_thread(void *arg)
{
        int base = (int)(intptr_t)arg * PER;
        for (int i = 0; i < PER; i++)
                burst_site(base + i);
        return NULL;
}

/* 20,000 lines asked for by 4 threads in one window of 5: the first 5 are
 * written, no summary until the window ends or the flush at shutdown, and
 * that one summary counts the other 19,995. */
static void test_burst_threads(void **state)
{
        pthread_t t[THREADS];
        uint64_t before = kf_log_limit_suppressed_total();
        char *text;
        (void)state;

        kf_log_limit_set(5, 3600);
        capture_start();
        for (int i = 0; i < THREADS; i++)
                assert_int_equal(pthread_create(&t[i], NULL, burst_thread, (void *)(intptr_t)i), 0);
        for (int i = 0; i < THREADS; i++)
                pthread_join(t[i], NULL);
        kf_log_limit_flush(0); /* the window has not ended: nothing */
        text = capture_end();
        assert_int_equal(count(text, "forged job "), 5);
        assert_int_equal(count(text, "\n"), 5);
        assert_int_equal(kf_log_limit_suppressed_total() - before, THREADS * PER - 5);
        free(text);

        capture_start();
        kf_log_limit_flush(1);
        kf_log_limit_flush(1); /* a second flush has nothing left to say */
        text = capture_end();
        assert_int_equal(count(text, "\n"), 1);
        assert_int_equal(count(text, " WARN "), 1); /* at the site's level */
        assert_int_equal(summed(text, "burst"), THREADS * PER - 5);
        free(text);
}

static void window_site(int i)
{
        kf_info_limited("window", "line %d", i);
}

/* A site that logs again after its window: the summary of the old window
 * comes first, then the new window's lines. */
static void test_next_window(void **state)
{
        char *text;
        (void)state;

        kf_log_limit_set(2, 1);
        capture_start();
        for (int i = 0; i < 10; i++)
                window_site(i);
        usleep(1100 * 1000);
        for (int i = 10; i < 13; i++)
                window_site(i);
        kf_log_limit_flush(1);
        text = capture_end();
        /* 2 lines, the summary of 8, 2 lines, the summary of 1 */
        assert_int_equal(count(text, "\n"), 6);
        assert_non_null(strstr(text, "line 0\n"));
        assert_non_null(strstr(text, "line 1\n"));
        assert_non_null(strstr(text, "line 10\n"));
        assert_non_null(strstr(text, "line 11\n"));
        assert_null(strstr(text, "line 2\n"));
        assert_true(strstr(text, "window: 8 more") < strstr(text, "line 10\n"));
        assert_int_equal(summed(text, "window"), 9);
        free(text);
}

static void quiet_site(void)
{
        kf_error_limited("quiet", "a flood that stopped");
}

/* A flood that stops still gets its summary from the periodic flush once
 * the window has ended, not only at the next line. */
static void test_flush_when_due(void **state)
{
        char *text;
        (void)state;

        kf_log_limit_set(1, 1);
        capture_start();
        for (int i = 0; i < 4; i++)
                quiet_site();
        kf_log_limit_flush(0);
        text = capture_end();
        assert_int_equal(count(text, "\n"), 1);
        free(text);
        usleep(1100 * 1000);
        capture_start();
        kf_log_limit_flush(0);
        text = capture_end();
        assert_int_equal(count(text, "\n"), 1);
        assert_int_equal(summed(text, "quiet"), 3);
        assert_non_null(strstr(text, " ERROR "));
        free(text);
}

static void other_site(int i)
{
        kf_warn_limited("other", "other %d", i);
}

/* Sites are limited separately: one flooded kind does not hide another. */
static void test_sites_apart(void **state)
{
        char *text;
        (void)state;

        kf_log_limit_set(3, 3600);
        capture_start();
        for (int i = 0; i < 100; i++)
                burst_site(i);
        other_site(1);
        kf_log_limit_flush(1);
        text = capture_end();
        assert_int_equal(count(text, "other 1\n"), 1);
        assert_int_equal(count(text, "forged job "), 3);
        assert_int_equal(summed(text, "burst"), 97);
        free(text);
}

static void below_site(void)
{
        kf_info_limited("below", "not at this level");
}

/* Lines below the threshold are neither written nor counted; 0 lifts the
 * limit. */
static void test_threshold_and_off(void **state)
{
        uint64_t before = kf_log_limit_suppressed_total();
        char *text;
        (void)state;

        kf_log_limit_set(1, 3600);
        kf_log_threshold = KF_LOG_WARN;
        capture_start();
        for (int i = 0; i < 50; i++)
                below_site();
        text = capture_end();
        kf_log_threshold = KF_LOG_INFO;
        assert_string_equal(text, "");
        assert_int_equal(kf_log_limit_suppressed_total(), before);
        free(text);

        kf_log_limit_set(0, 10);
        capture_start();
        for (int i = 0; i < 50; i++)
                other_site(i);
        kf_log_limit_flush(1);
        text = capture_end();
        assert_int_equal(count(text, "\n"), 50);
        assert_int_equal(kf_log_limit_suppressed_total(), before);
        free(text);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_burst_threads),     cmocka_unit_test(test_next_window),
            cmocka_unit_test(test_flush_when_due),    cmocka_unit_test(test_sites_apart),
            cmocka_unit_test(test_threshold_and_off),
        };
        kf_log_init("test_log_limit", KF_LOG_INFO);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
