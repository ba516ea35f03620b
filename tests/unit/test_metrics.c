/* test_metrics.c - the worker's metrics and its HTTP endpoint, in-process:
 * counts from many threads are exact, label values are escaped, the number
 * of series is bounded whatever jobs name, the exposition passes Prometheus'
 * own checker (promtool, Debian's prometheus package), and the endpoint
 * answers over real TCP with the right statuses. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../worker/http.h"
#include "../../worker/metrics.h"

static char *render(kw_metrics_t *m)
{
        char *buf = NULL;
        size_t len = 0;
        FILE *fp = open_memstream(&buf, &len);
        assert_non_null(fp);
        assert_int_equal(kw_metrics_render(m, fp), 0);
        assert_int_equal(fclose(fp), 0);
        return buf;
}

/* The value of the sample line that starts with `series` followed by a
 * space; fails if there is none. */
static double sample(const char *text, const char *series)
{
        size_t n = strlen(series);
        for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
                if (!strncmp(p, series, n) && p[n] == ' ')
                        return strtod(p + n + 1, NULL);
        fail_msg("no sample %s in:\n%s", series, text);
        return 0;
}

/* promtool check metrics reads the exposition on stdin and exits non-zero
 * on format errors (and prints lint problems, which must be none either). */
static void promtool_check(const char *text)
{
        char path[] = "/tmp/kinfer-metrics-XXXXXX", cmd[256], out[4096] = "";
        int fd = mkstemp(path);
        size_t len = strlen(text), got;
        FILE *p;
        int rc;

        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, len), (ssize_t)len);
        close(fd);
        snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
        p = popen(cmd, "r");
        assert_non_null(p);
        got = fread(out, 1, sizeof(out) - 1, p);
        out[got] = '\0';
        rc = pclose(p);
        unlink(path);
        if (rc != 0 || got)
                fail_msg("promtool check metrics (exit %d): %s\n--- exposition:\n%s", rc, out,
                         text);
}

#define THREADS 4
#define PER     50000

static void *hammer(void *arg)
{
        kw_metrics_t *m = arg;
        for (int i = 0; i < PER; i++) {
                kw_metrics_add(m, KW_C_CONSUMED, 1);
                kw_metrics_jobs(m, "mnist", 3, i % 10 ? KF_OK : KF_ERR_SHAPE_MISMATCH, 1);
                kw_metrics_observe(m, KW_H_COMPUTE, (i % 4) * 0.001); /* 0, 1, 2, 3 ms */
        }
        return NULL;
}

static void test_counts_exact_from_threads(void **state)
{
        kw_metrics_t *m = kw_metrics_new();
        pthread_t t[THREADS];
        char *text;
        (void)state;
        assert_non_null(m);
        for (int i = 0; i < THREADS; i++)
                assert_int_equal(pthread_create(&t[i], NULL, hammer, m), 0);
        for (int i = 0; i < THREADS; i++)
                pthread_join(t[i], NULL);
        kw_metrics_jobs(m, "", 7, KF_ERR_UNKNOWN_MODEL, 5); /* no model resolved: no version */
        kw_metrics_set(m, KW_G_INFLIGHT_BATCHES, 3);
        kw_metrics_observe(m, KW_H_BATCH_JOBS, 300);
        text = render(m);
        assert_true(sample(text, "kinfer_messages_consumed_total") == THREADS * PER);
        assert_true(sample(text, "kinfer_jobs_total{model=\"mnist\",version=\"3\",code=\"ok\"}") ==
                    THREADS * PER * 9 / 10);
        assert_true(sample(text, "kinfer_jobs_total{model=\"mnist\",version=\"3\","
                                 "code=\"shape_mismatch\"}") == THREADS * PER / 10);
        assert_true(sample(text, "kinfer_jobs_total{model=\"\",version=\"\","
                                 "code=\"unknown_model\"}") == 5);
        assert_true(sample(text, "kinfer_inflight_batches") == 3);
        /* 0 and 1 ms are <= 0.001; 2 ms <= 0.0025; 3 ms <= 0.005 */
        assert_true(sample(text, "kinfer_compute_seconds_bucket{le=\"0.0005\"}") ==
                    THREADS * PER / 4);
        assert_true(sample(text, "kinfer_compute_seconds_bucket{le=\"0.001\"}") ==
                    THREADS * PER / 2);
        assert_true(sample(text, "kinfer_compute_seconds_bucket{le=\"0.0025\"}") ==
                    THREADS * PER * 3 / 4);
        assert_true(sample(text, "kinfer_compute_seconds_bucket{le=\"+Inf\"}") == THREADS * PER);
        assert_true(sample(text, "kinfer_compute_seconds_count") == THREADS * PER);
        {
                double sum = sample(text, "kinfer_compute_seconds_sum");
                double want = THREADS * (PER / 4) * (0.001 + 0.002 + 0.003);
                if (sum < want * 0.999999 || sum > want * 1.000001)
                        fail_msg("sum %.9f, want %.9f", sum, want);
        }
        assert_true(sample(text, "kinfer_batch_jobs_bucket{le=\"256\"}") == 0);
        assert_true(sample(text, "kinfer_batch_jobs_bucket{le=\"512\"}") == 1);
        assert_true(sample(text, "process_resident_memory_bytes") > 0);
        promtool_check(text);
        free(text);
        kw_metrics_destroy(m);
}

/* The result topic's metrics: none rendered until a result topic is shown
 * (no idle kinfer_results_* series on a worker without one), then every
 * one, the unacknowledged gauge counted up and down from many threads. */
static void *ack_hammer(void *arg)
{
        kw_metrics_t *m = arg;
        for (int i = 0; i < PER; i++) {
                kw_metrics_add(m, KW_C_RT_PRODUCED, 1);
                kw_metrics_gauge_add(m, KW_G_RT_UNACKED, 1);
                if (i % 5) { /* one in five not reported yet */
                        kw_metrics_gauge_add(m, KW_G_RT_UNACKED, -1);
                        kw_metrics_add(m, KW_C_RT_DELIVERED, 1);
                }
        }
        return NULL;
}

static void test_results_section(void **state)
{
        kw_metrics_t *m = kw_metrics_new();
        pthread_t t[THREADS];
        char *text;
        (void)state;
        assert_non_null(m);
        for (int i = 0; i < THREADS; i++)
                assert_int_equal(pthread_create(&t[i], NULL, ack_hammer, m), 0);
        for (int i = 0; i < THREADS; i++)
                pthread_join(t[i], NULL);
        kw_metrics_observe(m, KW_H_RT_TXN, 0.02);
        kw_metrics_add(m, KW_C_RT_TXN_COMMITTED, 1);
        text = render(m);
        if (strstr(text, "kinfer_results_"))
                fail_msg("result-topic metrics shown without a result topic:\n%s", text);
        free(text);
        kw_metrics_show(m, KW_SHOW_RESULTS);
        text = render(m);
        assert_true(sample(text, "kinfer_results_produced_total") == THREADS * PER);
        assert_true(sample(text, "kinfer_results_delivered_total") == THREADS * PER * 4 / 5);
        assert_true(sample(text, "kinfer_results_unacknowledged") == THREADS * PER / 5);
        assert_true(sample(text, "kinfer_results_failed_total") == 0);
        assert_true(sample(text, "kinfer_results_transactions_committed_total") == 1);
        assert_true(sample(text, "kinfer_results_transactions_aborted_total") == 0);
        assert_true(sample(text, "kinfer_results_too_large_total") == 0);
        assert_true(sample(text, "kinfer_results_transaction_seconds_bucket{le=\"0.01\"}") == 0);
        assert_true(sample(text, "kinfer_results_transaction_seconds_bucket{le=\"0.025\"}") == 1);
        assert_true(sample(text, "kinfer_results_transaction_seconds_count") == 1);
        promtool_check(text);
        free(text);
        kw_metrics_destroy(m);
}

/* Model names are validated upstream, but the format must hold whatever
 * a label is: quotes, backslashes and newlines escaped. */
static void test_labels_escaped(void **state)
{
        kw_metrics_t *m = kw_metrics_new();
        char *text;
        (void)state;
        kw_metrics_jobs(m, "a\"b\\c\nd", 1, KF_OK, 2);
        text = render(m);
        assert_true(sample(text, "kinfer_jobs_total{model=\"a\\\"b\\\\c\\nd\",version=\"1\","
                                 "code=\"ok\"}") == 2);
        promtool_check(text);
        free(text);
        kw_metrics_destroy(m);
}

/* Jobs naming ever new (existing) models cannot grow a scrape: past the
 * bound, counts go to model="(other)", and none is lost. */
static void test_series_bounded(void **state)
{
        kw_metrics_t *m = kw_metrics_new();
        const int n = KW_METRICS_MAX_SERIES + 500;
        char name[32], *text;
        int series = 0;
        (void)state;
        for (int i = 0; i < n; i++) {
                snprintf(name, sizeof(name), "m%d", i);
                kw_metrics_jobs(m, name, 1, KF_OK, 1);
        }
        text = render(m);
        for (const char *p = text; (p = strstr(p, "\nkinfer_jobs_total{")); p++)
                series++;
        if (series != KW_METRICS_MAX_SERIES + 1)
                fail_msg("%d kinfer_jobs_total series for %d models; want %d + (other)", series, n,
                         KW_METRICS_MAX_SERIES);
        assert_true(sample(text, "kinfer_jobs_total{model=\"(other)\",version=\"\",code=\"ok\"}") ==
                    500);
        promtool_check(text);
        free(text);
        kw_metrics_destroy(m);
}

/* ---- the HTTP endpoint ---- */

static int route_metrics(void *ctx, FILE *body)
{
        return kw_metrics_render(ctx, body) == 0 ? 200 : 500;
}

static int route_busy(void *ctx, FILE *body)
{
        (void)ctx;
        fputs("not ready: redis down\n", body);
        return 503;
}

static const kw_http_route_t routes[] = {
    {"/metrics", "text/plain; version=0.0.4; charset=utf-8", route_metrics},
    {"/readyz", "text/plain; charset=utf-8", route_busy},
};

/* One HTTP/1.0 request over a fresh TCP connection; returns the whole
 * response (malloc'd). */
static char *http(int port, const char *request)
{
        struct sockaddr_in sa = {0};
        char *buf = NULL;
        size_t len = 0, cap = 0;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        ssize_t n;

        assert_true(fd >= 0);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
        do {
                if (len + 4096 + 1 > cap) {
                        cap = (cap + 4096) * 2;
                        assert_non_null(buf = realloc(buf, cap));
                }
                n = read(fd, buf + len, cap - len - 1);
                if (n > 0)
                        len += (size_t)n;
        } while (n > 0);
        close(fd);
        assert_non_null(buf);
        buf[len] = '\0';
        return buf;
}

static void test_http_routes(void **state)
{
        kw_metrics_t *m = kw_metrics_new();
        char err[256], *r;
        kw_http_t *h;
        (void)state;

        kw_metrics_add(m, KW_C_CONSUMED, 42);
        h = kw_http_start("127.0.0.1:0", routes, 2, m, err, sizeof(err));
        if (!h)
                fail_msg("kw_http_start: %s", err);
        assert_true(kw_http_port(h) > 0);

        r = http(kw_http_port(h), "GET /metrics HTTP/1.0\r\n\r\n");
        assert_non_null(strstr(r, "HTTP/1.0 200") ? r : strstr(r, "HTTP/1.1 200"));
        assert_non_null(strstr(r, "Content-Type: text/plain; version=0.0.4"));
        assert_non_null(strstr(r, "\nkinfer_messages_consumed_total 42\n"));
        promtool_check(strstr(r, "\r\n\r\n") + 4);
        free(r);
        r = http(kw_http_port(h), "GET /readyz HTTP/1.0\r\n\r\n");
        assert_non_null(strstr(r, " 503 "));
        assert_non_null(strstr(r, "not ready: redis down"));
        free(r);
        r = http(kw_http_port(h), "GET /nope HTTP/1.0\r\n\r\n");
        assert_non_null(strstr(r, " 404 "));
        free(r);
        r = http(kw_http_port(h), "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
        assert_non_null(strstr(r, " 405 "));
        free(r);
        kw_http_stop(h);
        kw_metrics_destroy(m);
}

static void test_http_bad_addresses(void **state)
{
        static const char *const bad[] = {"9464",    "127.0.0.1",        "127.0.0.1:99999",
                                          "host:80", "example.com:9464", "[::1:9464",
                                          NULL};
        char err[256];
        (void)state;
        for (int i = 0; bad[i]; i++) {
                err[0] = '\0';
                if (kw_http_start(bad[i], routes, 2, NULL, err, sizeof(err)))
                        fail_msg("--http %s was accepted", bad[i]);
                if (!strstr(err, bad[i]))
                        fail_msg("--http %s: the error does not name it: %s", bad[i], err);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_counts_exact_from_threads),
            cmocka_unit_test(test_labels_escaped),
            cmocka_unit_test(test_results_section),
            cmocka_unit_test(test_series_bounded),
            cmocka_unit_test(test_http_routes),
            cmocka_unit_test(test_http_bad_addresses),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
