/* test_util.c - kf_util's shared helpers: splitmix64 against its published
 * reference values (and the two formulas it replaced), the capped backoff,
 * timespec deadlines, interruptible sleeps and the whole-file reader. */
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

#include "kf_util.h"

/* The reference sequence for seed 1234567 (Vigna's splitmix64.c). */
static void test_splitmix64_reference(void **state)
{
        static const uint64_t want[] = {6457827717110365317ULL, 3203168211198807973ULL,
                                        9817491932198370423ULL, 4593380528125082431ULL,
                                        16408922859458223821ULL};
        uint64_t s = 1234567;
        (void)state;
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
                assert_true(kf_splitmix64(&s) == want[i]);
}

/* The same seed must keep giving the same random models (`kinfer model
 * init`) and bench inputs as the formulas kf_splitmix64_pm1 replaced. */
static void test_splitmix64_pm1_same_as_before(void **state)
{
        uint64_t a = 42, b = 42, c = 42;
        (void)state;
        for (int i = 0; i < 100000; i++) {
                double x = kf_splitmix64_pm1(&a);
                uint64_t u = kf_splitmix64(&b);
                assert_true(x >= -1.0 && x < 1.0);
                /* cmd_model.c's rng_uniform, with a = 1 */
                assert_true((float)x ==
                            (float)((double)(u >> 11) / 9007199254740992.0 * 2.0 - 1.0));
                /* bench_compute.c's kc_bench_random */
                u = kf_splitmix64(&c);
                assert_true((float)x == (float)((double)(u >> 11) / 4503599627370496.0 - 1.0));
        }
}

static void test_backoff(void **state)
{
        (void)state;
        assert_int_equal(kf_backoff_next(0, 100, 2000), 100); /* not waiting yet */
        assert_int_equal(kf_backoff_next(-5, 100, 2000), 100);
        assert_int_equal(kf_backoff_next(100, 100, 2000), 200);
        assert_int_equal(kf_backoff_next(800, 100, 2000), 1600);
        assert_int_equal(kf_backoff_next(1600, 100, 2000), 2000); /* capped */
        assert_int_equal(kf_backoff_next(2000, 100, 2000), 2000);
        assert_int_equal(kf_backoff_next(1000, 100, 2000), 2000); /* exactly the cap */
        assert_int_equal(kf_backoff_next(1001, 100, 2001), 2001);
        assert_int_equal(kf_backoff_next(1000, 100, 2001), 2000);
        /* No overflow near INT_MAX. */
        assert_int_equal(kf_backoff_next(2000000000, 1, 2100000000), 2100000000);
}

static int64_t ts_ms(struct timespec ts)
{
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_timespec_after(void **state)
{
        (void)state;
        for (int64_t ms = 0; ms < 3000; ms += 7) {
                struct timespec now, t = kf_timespec_after(CLOCK_MONOTONIC, ms);
                clock_gettime(CLOCK_MONOTONIC, &now);
                assert_true(t.tv_nsec >= 0 && t.tv_nsec < 1000000000L);
                /* t was taken just before now: at most a few ms in between. */
                assert_true(ts_ms(t) - ts_ms(now) <= ms);
                assert_true(ts_ms(t) - ts_ms(now) >= ms - 50);
        }
        {
                struct timespec now, t = kf_timespec_after(CLOCK_REALTIME, -10);
                clock_gettime(CLOCK_REALTIME, &now);
                assert_true(ts_ms(now) - ts_ms(t) >= 0 && ts_ms(now) - ts_ms(t) < 50);
        }
        assert_true(llabs((long long)(kf_now_us() / 1000 - kf_now_ms())) <= 1);
}

static void test_sleep(void **state)
{
        volatile sig_atomic_t stop = 0;
        int64_t t0 = kf_mono_us();
        (void)state;
        kf_sleep_us(30000, &stop);
        assert_true(kf_mono_us() - t0 >= 30000);
        t0 = kf_mono_us();
        kf_sleep_us(0, NULL);
        kf_sleep_us(-1000000, NULL);
        assert_true(kf_mono_us() - t0 < 100000);
}

static void write_file(const char *path, const char *data, size_t len)
{
        FILE *fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_true(fwrite(data, 1, len, fp) == len);
        assert_int_equal(fclose(fp), 0);
}

static void test_file_read(void **state)
{
        char dir[] = "/tmp/kf_util_test.XXXXXX", path[256], err[256], *buf = NULL, *big;
        size_t len = 99;
        (void)state;

        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/f", dir);

        /* A file larger than the first read of a pipe (64 KiB), exactly. */
        big = malloc(200000);
        assert_non_null(big);
        for (size_t i = 0; i < 200000; i++)
                big[i] = (char)(i * 7);
        write_file(path, big, 200000);
        assert_int_equal(kf_file_read(path, 200000, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(len, 200000);
        assert_memory_equal(buf, big, 200000);
        free(buf);

        /* One byte over the limit. */
        assert_int_equal(kf_file_read(path, 199999, &buf, &len, err, sizeof(err)), -1);
        assert_null(buf);
        assert_int_equal(len, 0);
        assert_non_null(strstr(err, "200000 bytes, more than the 199999 bytes limit"));
        assert_int_equal(kf_file_read(path, (size_t)4 << 30, &buf, &len, err, sizeof(err)), 0);
        free(buf);

        /* Empty. */
        write_file(path, "", 0);
        assert_int_equal(kf_file_read(path, 10, &buf, &len, err, sizeof(err)), 0);
        assert_non_null(buf);
        assert_int_equal(len, 0);
        free(buf);

        /* Through a pipe (no size known up front): the limit still holds. */
        assert_int_equal(kf_file_read("/dev/zero", (size_t)1 << 20, &buf, &len, err, sizeof(err)),
                         -1);
        assert_non_null(strstr(err, "/dev/zero: more than the 1 MiB limit"));

        assert_int_equal(kf_file_read(dir, 10, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, ": is a directory"));
        snprintf(path, sizeof(path), "%s/missing", dir);
        assert_int_equal(kf_file_read(path, 10, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "missing: cannot open: "));

        snprintf(path, sizeof(path), "%s/f", dir);
        unlink(path);
        rmdir(dir);
        free(big);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_splitmix64_reference),
            cmocka_unit_test(test_splitmix64_pm1_same_as_before),
            cmocka_unit_test(test_backoff),
            cmocka_unit_test(test_timespec_after),
            cmocka_unit_test(test_sleep),
            cmocka_unit_test(test_file_read),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
