/* test_stats.c - the nearest-rank percentiles and the sort behind kinfer
 * bench's latency report, on samples whose answers are known by hand. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include "kf_stats.h"

/* 1..100 in order: the p-th percentile is p itself for every integer p. */
static void test_one_to_hundred(void **state)
{
        double v[100];
        (void)state;
        for (int i = 0; i < 100; i++)
                v[i] = i + 1;
        for (int p = 1; p <= 100; p++)
                assert_true(kf_stats_percentile(v, 100, p) == p);
        assert_true(kf_stats_percentile(v, 100, 0) == 1);
        assert_true(kf_stats_percentile(v, 100, 99.9) == 100);
        assert_true(kf_stats_percentile(v, 100, 50.5) == 51);
}

/* Few samples: nearest rank never interpolates, it picks a sample. */
static void test_small(void **state)
{
        double four[] = {1, 2, 3, 4}, ten[10], one[] = {7.5};
        (void)state;
        assert_true(kf_stats_percentile(four, 4, 50) == 2);
        assert_true(kf_stats_percentile(four, 4, 51) == 3);
        assert_true(kf_stats_percentile(four, 4, 75) == 3);
        assert_true(kf_stats_percentile(four, 4, 99) == 4);
        for (int i = 0; i < 10; i++)
                ten[i] = 10 * (i + 1);
        assert_true(kf_stats_percentile(ten, 10, 90) == 90);
        assert_true(kf_stats_percentile(ten, 10, 90.01) == 100);
        assert_true(kf_stats_percentile(ten, 10, 10) == 10);
        assert_true(kf_stats_percentile(one, 1, 0) == 7.5);
        assert_true(kf_stats_percentile(one, 1, 50) == 7.5);
        assert_true(kf_stats_percentile(one, 1, 100) == 7.5);
}

/* Out-of-range p is clamped; no samples give 0. */
static void test_edges(void **state)
{
        double v[] = {3, 5, 8};
        (void)state;
        assert_true(kf_stats_percentile(v, 3, -5) == 3);
        assert_true(kf_stats_percentile(v, 3, 250) == 8);
        assert_true(kf_stats_percentile(NULL, 0, 50) == 0.0);
}

/* Sorting: reversed, duplicated and negative values; n = 0 and 1. */
static void test_sort(void **state)
{
        double v[] = {5, -1, 3, 3, 100, 0, -7.25, 2};
        double want[] = {-7.25, -1, 0, 2, 3, 3, 5, 100};
        double single[] = {42};
        (void)state;
        kf_stats_sort(v, 8);
        for (int i = 0; i < 8; i++)
                assert_true(v[i] == want[i]);
        kf_stats_sort(single, 1);
        assert_true(single[0] == 42);
        kf_stats_sort(NULL, 0);
        assert_true(kf_stats_percentile(v, 8, 50) == 2);
        assert_true(kf_stats_percentile(v, 8, 100) == 100);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_one_to_hundred),
            cmocka_unit_test(test_small),
            cmocka_unit_test(test_edges),
            cmocka_unit_test(test_sort),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
