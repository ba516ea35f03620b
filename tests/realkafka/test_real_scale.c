/* test_real_scale.c - scaling out and rolling upgrades on a genuine Apache
 * Kafka 4.x broker (single node, KRaft; kt_stack_start_kafka), the two
 * operations docs/deploy.md promises are one-line changes: a 60,000-job
 * backlog on 12 partitions drained by one worker, then three, then one again
 * (one stopped with SIGTERM, one SIGKILLed), each worker's share read from
 * its own /metrics; and every worker of a pool replaced one by one under a
 * steady stream, as a Deployment's rolling update does, with dynamic and
 * with static membership (--instance-id from the pod name).  Each case ends with
 * the fault fixture's check (tests/faults/faults.h): every job exactly one
 * result, equal to the reference, usage counters exact (nobody charged
 * twice). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../faults/faults.h"
#include "../harness/kt_metrics.h"
#include "kf_result.h"

#define WAIT_MS  120000
#define ASSIGNED "INFO  assigned "

/* Results a worker reports it wrote, ok ones: kinfer_jobs_total{code="ok"}.
 * Retries while its endpoint is not up yet. */
static long long ok_written(fx_t *fx, int port)
{
        long long deadline = kt_now_ms() + 10000, n;
        while ((n = kt_scrape(port, "kinfer_jobs_total", "code=\"ok\"")) < 0) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("no /metrics on 127.0.0.1:%d", port);
                }
                fx_sleep_ms(50);
        }
        return n;
}

static void assert_midrun(fx_t *fx, const char *what)
{
        long long done = fx_count_results(fx, fx->n_jobs);
        print_message("%s with %lld of %d results written\n", what, done, fx->n_jobs);
        if (done >= fx->n_jobs) {
                kt_stack_fail(&fx->stack);
                fail_msg("the backlog had drained before: %s (slow the workers down)", what);
        }
}

/* Waits until the worker in `slot` logged more than `before` assignments. */
static void wait_assigned(fx_t *fx, int slot, int before)
{
        long long deadline = kt_now_ms() + WAIT_MS;
        while (fx_log_count(fx, slot, ASSIGNED) <= before) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s got no partitions in %d ms", fx->stack.procs[slot].name,
                                 WAIT_MS);
                }
                fx_sleep_ms(50);
        }
}

/* Waits until the worker on `port` reports at least n ok results. */
static long long wait_share(fx_t *fx, int port, const char *name, long long n)
{
        long long deadline = kt_now_ms() + WAIT_MS, got;
        while ((got = ok_written(fx, port)) < n) {
                if (fx_count_results(fx, fx->n_jobs) >= fx->n_jobs) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("all %d jobs had results before %s wrote %lld ok ones", fx->n_jobs,
                                 name, n);
                }
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s wrote %lld of %lld results in %d ms", name, got, n, WAIT_MS);
                }
                fx_sleep_ms(50);
        }
        return got;
}

/* Appends n good jobs keyed by their ids, not their users: 16 users' keys
 * would leave some of 12 partitions empty, and a worker holding only empty
 * ones would show no share. */
static void add_spread(fx_t *fx, int n)
{
        int first = fx_add_good(fx, n);
        for (int i = first; i < first + n; i++)
                snprintf(fx->jobs[i].key, sizeof(fx->jobs[i].key), "%.79s", fx->jobs[i].id);
}

/* One to three workers and back to one, on 12 partitions.  The small batches
 * keep the backlog draining long enough for every step to land mid-run.
 * What each worker says on /metrics it wrote must be what Redis holds under
 * its name: the survivor's count exactly, the stopped ones' at least what
 * they said just before they went. */
static void test_scale_out_and_in(void **state)
{
        fx_t *fx = *state;
        static const char *const slow[] = {"--batch-max-jobs", "8", "--compute-threads", "1", NULL};
        const char *names[3] = {"rkhs-w1", "rkhs-w2", "rkhs-w3"};
        long long t0, said[3], by[3], total = 0, redone;
        int w[3], port[3], before;

        fx_setup_kafka(fx, "rkhs", 12, 16, NULL);
        add_spread(fx, 60000);
        t0 = kt_now_ms();
        fx_produce(fx, 0, fx->n_jobs);
        print_message("60000 jobs produced to 12 partitions in %lld ms\n", kt_now_ms() - t0);

        t0 = kt_now_ms();
        w[0] = fx_http_worker(fx, names[0], &port[0], slow);
        fx_wait_results(fx, fx->n_jobs, 2000, WAIT_MS);
        assert_midrun(fx, "rkhs-w1 alone");
        w[1] = fx_http_worker(fx, names[1], &port[1], slow);
        w[2] = fx_http_worker(fx, names[2], &port[2], slow);
        wait_assigned(fx, w[1], 0);
        wait_assigned(fx, w[2], 0);
        wait_share(fx, port[1], names[1], 500);
        wait_share(fx, port[2], names[2], 500);
        assert_midrun(fx, "three workers in the group, each with results");

        said[1] = ok_written(fx, port[1]);
        before = fx_log_count(fx, w[2], ASSIGNED);
        assert_int_equal(kt_stack_kill(&fx->stack, w[1], SIGTERM, 30000), 0);
        assert_midrun(fx, "rkhs-w2 left (SIGTERM, exit 0)");
        /* Kill rkhs-w3 while it works on what the rebalance after rkhs-w2's
         * exit gave it: that rebalance's revoke committed its offsets, so
         * wait for its new assignment and 300 results more, which its
         * commit every 5 s has not covered yet. */
        wait_assigned(fx, w[2], before);
        said[2] = wait_share(fx, port[2], names[2], ok_written(fx, port[2]) + 300);
        assert_int_equal(kt_stack_kill(&fx->stack, w[2], SIGKILL, 5000), 128 + SIGKILL);
        assert_midrun(fx, "rkhs-w3 SIGKILLed");

        fx_wait_all(fx, WAIT_MS);
        print_message("drained in %lld ms\n", kt_now_ms() - t0);
        fx_check(fx);
        /* The survivor's counter moves just after Redis answers its step, so
         * its last results can be readable a moment before it counts them. */
        for (long long until = kt_now_ms() + 10000;; fx_sleep_ms(100)) {
                said[0] = ok_written(fx, port[0]);
                if (said[0] == fx_count_by_worker(fx, fx->n_jobs, names[0]) || kt_now_ms() > until)
                        break;
        }
        for (int i = 0; i < 3; i++) {
                by[i] = fx_count_by_worker(fx, fx->n_jobs, names[i]);
                total += by[i];
                print_message("%s: %lld results in Redis, %lld on its /metrics%s\n", names[i],
                              by[i], said[i], i ? " before it stopped" : "");
        }
        /* Every result names one of the three: nobody else wrote. */
        assert_int_equal(total, fx->n_jobs);
        if (said[0] != by[0])
                fail_msg("%s counts %lld ok results on /metrics, Redis holds %lld", names[0],
                         said[0], by[0]);
        for (int i = 1; i < 3; i++)
                if (said[i] < 500 || said[i] > by[i])
                        fail_msg("%s counted %lld ok results on /metrics, Redis holds %lld",
                                 names[i], said[i], by[i]);
        fx_finish(fx, &w[0], 1);
        redone = fx_log_stat(fx, w[0], "duplicates");
        print_message("redone by rkhs-w1 and found done (not charged again): %lld\n", redone);
        if (redone <= 0) /* then nothing was redelivered, and the check above proved less */
                fail_msg("the SIGKILL of %s found nothing uncommitted (%s redid %lld jobs)",
                         names[2], names[0], redone);
}

static int cmp_ll(const void *a, const void *b)
{
        long long x = *(const long long *)a, y = *(const long long *)b;
        return (x > y) - (x < y);
}

/* Each job's latency, its result's `done` less its Kafka timestamp
 * (`enqueued`), over all results; prints p50, p99 and the maximum. */
static void print_latency(fx_t *fx)
{
        long long *ms = calloc((size_t)fx->n_jobs, sizeof(*ms));
        int n = 0;
        assert_non_null(ms);
        for (int i = 0; i < fx->n_jobs; i++)
                redisAppendCommand(fx->rc, "GET kinfer:{%s}:result:%s",
                                   fx_user(fx, fx->jobs[i].user), fx->jobs[i].id);
        for (int i = 0; i < fx->n_jobs; i++) {
                redisReply *r = NULL;
                kf_result_t res;
                char err[256];
                assert_int_equal(redisGetReply(fx->rc, (void **)&r), REDIS_OK);
                memset(&res, 0, sizeof(res));
                if (r->type == REDIS_REPLY_STRING &&
                    kf_result_decode(r->str, r->len, &res, err, sizeof(err)) == 0)
                        ms[n++] = (long long)res.done - (long long)res.enqueued;
                kf_result_clear(&res);
                freeReplyObject(r);
        }
        assert_int_equal(n, fx->n_jobs);
        qsort(ms, (size_t)n, sizeof(*ms), cmp_ll);
        print_message("latency (done - enqueued) over %d jobs: p50 %lld ms, p99 %lld ms, "
                      "max %lld ms\n",
                      n, ms[n / 2], ms[(size_t)n * 99 / 100], ms[n - 1]);
        free(ms);
}

/* A worker of the rolling upgrade: `static_ids` gives it --instance-id
 * NAME, as the Kubernetes Deployment does with the pod's name. */
static int roll_worker(fx_t *fx, const char *name, int *port, int static_ids)
{
        const char *ex[] = {"--instance-id", name, NULL};
        return fx_http_worker(fx, name, port, static_ids ? ex : NULL);
}

/* Three workers replaced one by one, as a rolling update does (SIGTERM, wait
 * for the exit, start the new one, wait until it holds partitions and has
 * written results: "ready"), while a producer keeps 1,000 jobs a second
 * coming: no job lost, none failed (every result ok and equal to the
 * reference), nobody charged twice.  With static membership and new names
 * (a Deployment's new pods), a stopped member does not leave the group: its
 * partitions wait for the session timeout (6 s here), which the printed
 * latencies show. */
static void rolling_upgrade(void **state, const char *tag, int static_ids)
{
        fx_t *fx = *state;
        char old_names[3][32], new_names[3][32];
        int w[3], port[3];
        long long t0;

        fx_setup_kafka(fx, tag, 12, 16, NULL);
        add_spread(fx, 60000); /* more than the stream will send: it is stopped */
        for (int i = 0; i < 3; i++) {
                snprintf(old_names[i], sizeof(old_names[i]), "%s-old%d", tag, i + 1);
                snprintf(new_names[i], sizeof(new_names[i]), "%s-new%d", tag, i + 1);
                w[i] = roll_worker(fx, old_names[i], &port[i], static_ids);
        }
        for (int i = 0; i < 3; i++)
                wait_assigned(fx, w[i], 0);
        fx_stream_start(fx, 0, fx->n_jobs, 1000);
        fx_wait_results(fx, fx->n_jobs, 1000, WAIT_MS);
        t0 = kt_now_ms();
        for (int i = 0; i < 3; i++) {
                int before = fx_produced(fx);
                assert_int_equal(kt_stack_kill(&fx->stack, w[i], SIGTERM, 30000), 0);
                w[i] = roll_worker(fx, new_names[i], &port[i], static_ids);
                wait_assigned(fx, w[i], 0);
                wait_share(fx, port[i], new_names[i], 300);
                print_message("%s replaced by %s (%d jobs produced meanwhile)\n", old_names[i],
                              new_names[i], fx_produced(fx) - before);
        }
        /* The new pool works on: a few more seconds of load on it alone. */
        fx_wait_results(fx, fx->n_jobs, fx_produced(fx) + 1000, WAIT_MS);
        fx_stream_stop(fx);
        print_message("rolled 3 workers in %lld ms under 1000 jobs/s; %d jobs in all\n",
                      kt_now_ms() - t0, fx->n_jobs);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        for (int i = 0; i < 3; i++)
                assert_true(ok_written(fx, port[i]) > 0);
        print_latency(fx);
        fx_finish(fx, w, 3);
}

static void test_rolling_upgrade(void **state)
{
        rolling_upgrade(state, "rkroll", 0);
}

static void test_rolling_upgrade_static(void **state)
{
        rolling_upgrade(state, "rkrollst", 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_scale_out_and_in, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_rolling_upgrade, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_rolling_upgrade_static, fx_state_setup,
                                            fx_state_teardown),
        };
        return fx_run(tests);
}
