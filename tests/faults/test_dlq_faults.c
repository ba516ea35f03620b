/* test_dlq_faults.c - a dead-letter copy that cannot be made must not hold
 * back anyone else's results, and a Kafka client that died must not leave a
 * worker running that does nothing.
 *
 * Every case uses one partition, so the poison message and the jobs of four
 * users share a partition and arrive in the same batches.  A message without
 * an address (no readable id or user) is copied to the DLQ, and its offset (with every later one
 * of its partition) may be committed only after the broker acknowledged the
 * copy; the other jobs' results must not wait for that.  The fatal-error
 * cases check that a worker whose consumer or dead-letter producer died
 * exits non-zero by itself, so that a supervisor restarts it. */
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

#include "faults.h"

#define WAIT_MS   120000
#define PROMPT_MS 45000 /* "promptly": the first join alone takes 3 s */
/* Over librdkafka's 1 MB message.max.bytes default, under the worker's
 * 8 MiB --max-message-bytes. */
#define BIG_BYTES (1536 * 1024)

static const unsigned char never_used[] = {0xc1}; /* not msgpack: no id to read */

/* An address-less message of BIG_BYTES: a byte that is not msgpack, then filler. */
static fx_job_t *add_big_poison(fx_t *fx, int *k)
{
        unsigned char *big = malloc(BIG_BYTES);
        fx_job_t *job;
        assert_non_null(big);
        memset(big, 'p', BIG_BYTES);
        big[0] = never_used[0];
        job = fx_add_dlq(fx, k, "bad_request", big, BIG_BYTES);
        free(big);
        return job;
}

static void broker_cmd(fx_t *fx, const char *cmd)
{
        if (kt_stack_broker_cmd(&fx->stack, cmd)) {
                kt_stack_fail(&fx->stack);
                fail_msg("dev broker refused '%s'", cmd);
        }
}

/* The next 62 Produce requests (the command's most; only the workers'
 * dead-letter producers produce from here on) fail with `code`. */
static void refuse_copies(fx_t *fx, const char *code)
{
        char cmd[2048];
        int n = snprintf(cmd, sizeof(cmd), "request-errors Produce");
        for (int i = 0; i < 62; i++)
                n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " %s", code);
        broker_cmd(fx, cmd);
}

/* Waits until a worker's log has a line holding both needles. */
static void wait_log(fx_t *fx, int slot, const char *a, const char *b, int timeout_ms)
{
        long long deadline = kt_now_ms() + timeout_ms;
        char line[4096];
        for (;;) {
                FILE *fp = fopen(fx->stack.procs[slot].log, "r");
                int found = 0;
                while (fp && !found && fgets(line, sizeof(line), fp))
                        found = strstr(line, a) && (!b || strstr(line, b));
                if (fp)
                        fclose(fp);
                if (found)
                        return;
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s: no log line with '%s'%s%s%s within %d ms",
                                 fx->stack.procs[slot].name, a, b ? " and '" : "", b ? b : "",
                                 b ? "'" : "", timeout_ms);
                }
                fx_sleep_ms(100);
        }
}

/* "kinfer.jobs/P/O", the kinfer.source of a message, as the logs name it. */
static const char *source_of(const fx_job_t *job, char *buf, size_t size)
{
        snprintf(buf, size, "%s/%d/%lld", FX_TOPIC, (int)job->partition, (long long)job->offset);
        return buf;
}

/* Waits for every result like fx_wait_all, without failing: 1 if all came. */
static int results_within(fx_t *fx, int timeout_ms)
{
        long long deadline = kt_now_ms() + timeout_ms, want = 0;
        for (int i = 0; i < fx->n_jobs; i++)
                want += !fx->jobs[i].dlq && fx->jobs[i].id[0];
        while (fx_count_results(fx, fx->n_jobs) < want) {
                if (kt_now_ms() > deadline)
                        return 0;
                fx_sleep_ms(100);
        }
        return 1;
}

/* A 1.5 MB address-less message among the jobs of four users: the DLQ producer
 * must take what the worker accepts (the copy is on the DLQ, intact), the
 * other jobs get their results promptly, and the offset moves past it. */
static void test_dlq_copy_over_1mb(void **state)
{
        fx_t *fx = *state;
        const char *const names[] = {"big-w1"};
        int w, k = 0;

        fx_setup(fx, "dlqbig", 1, 1, 4, NULL);
        fx_add_good(fx, 40);
        add_big_poison(fx, &k);
        fx_add_good(fx, 40);
        fx_produce(fx, 0, fx->n_jobs);

        w = fx_worker(fx, names[0], NULL);
        fx_wait_all(fx, PROMPT_MS);
        fx_wait_committed(fx, 0, fx->jobs[fx->n_jobs - 1].offset + 1, PROMPT_MS);
        fx_check(fx);
        fx_check_dlq(fx, 1, names, 1, 0);
        fx_finish(fx, &w, 1);
}

/* The DLQ refuses every copy (the worker may not write the topic): the
 * other jobs, before and after the poison in its partition, still get their
 * results promptly; the refusal is logged with the message's source; the
 * committed offset stops exactly at the poison until the copy is taken,
 * then moves to the end. */
static void test_dlq_copy_refused(void **state)
{
        fx_t *fx = *state;
        const char *const names[] = {"refused-w1"};
        char src[128];
        fx_job_t *poison;
        int64_t poison_off;
        int w, k = 0;

        fx_setup(fx, "dlqrefused", 1, 1, 4, NULL);
        fx_add_good(fx, 40);
        fx_add_dlq(fx, &k, "bad_request", never_used, sizeof(never_used));
        fx_add_good(fx, 40);
        fx_produce(fx, 0, fx->n_jobs);
        poison = &fx->jobs[40];
        poison_off = poison->offset;
        refuse_copies(fx, "TOPIC_AUTHORIZATION_FAILED");

        w = fx_worker(fx, names[0], NULL);
        fx_wait_results(fx, fx->n_jobs, fx->n_jobs - 1, PROMPT_MS);
        wait_log(fx, w, source_of(poison, src, sizeof(src)), "uthoriz", PROMPT_MS);
        fx_wait_committed(fx, 0, poison_off, PROMPT_MS);
        fx_sleep_ms(6000); /* the fault lasts past an auto-commit (every 5 s) */
        if (fx_committed(fx, 0) != poison_off) {
                kt_stack_fail(&fx->stack);
                fail_msg("committed offset %lld while the copy of %s is refused, want %lld",
                         (long long)fx_committed(fx, 0), src, (long long)poison_off);
        }
        print_message("%d results written, offset held at %lld while the DLQ refuses\n",
                      fx->n_jobs - 1, (long long)poison_off);

        broker_cmd(fx, "clear-errors Produce");
        fx_wait_committed(fx, 0, fx->jobs[fx->n_jobs - 1].offset + 1, PROMPT_MS);
        fx_check(fx);
        fx_check_dlq(fx, 1, names, 1, 0);
        fx_finish(fx, &w, 1);
}

/* Copies outstanding when their jobs are given up: at shutdown after the
 * grace period, and on a revoke.  Their delivery reports arrive after the
 * batch is gone and must land in memory that is still the worker's (run it
 * under ASan: make asan-faults).
 *   A: a small and a 1.5 MB address-less message side by side, in one batch
 *      (the big one comes in a fetch of its own: --batch-wait-us lets the
 *      batch wait for it), the DLQ healthy, SIGTERM with --grace-ms 1000.
 *   B: the DLQ partition has no leader, so copies wait inside the producer
 *      until its message.timeout.ms (4 s here, -X dlq.message.timeout.ms)
 *      and are tried again; a second worker joins (revoke) and, a few
 *      seconds later (reports of given-up copies arrive meanwhile), both
 *      get SIGTERM with copies outstanding.
 * Then the DLQ has a leader again and a fresh worker finishes the job. */
static void test_dlq_copies_abandoned(void **state)
{
        fx_t *fx = *state;
        const char *const names[] = {"abandon-w1", "abandon-w2", "abandon-w3", "abandon-w4"};
        const char *grace[] = {"--grace-ms", "1000", "-X", "dlq.message.timeout.ms=4000", NULL};
        const char *grace_wait[] = {"--grace-ms", "1000", "--batch-wait-us", "500000", NULL};
        char src[128];
        int w1, w2, w3, w4, st1, st2, st3, complete, k = 0, b_first;

        fx_setup(fx, "dlqabandon", 1, 1, 4, NULL);
        fx_add_good(fx, 20);
        fx_add_dlq(fx, &k, "bad_request", never_used, sizeof(never_used));
        add_big_poison(fx, &k);
        fx_add_good(fx, 20);
        fx_produce(fx, 0, fx->n_jobs);

        w1 = fx_worker(fx, names[0], grace_wait);
        complete = results_within(fx, PROMPT_MS);
        st1 = kt_stack_kill(&fx->stack, w1, SIGTERM, 30000);
        fx_check_logs(fx); /* a delivery report into a freed batch shows here */
        if (!complete || st1 != 0) {
                kt_stack_fail(&fx->stack);
                fail_msg("A: results %s, exit status %d after SIGTERM (want all, 0)",
                         complete ? "all written" : "missing", st1);
        }

        b_first = fx->n_jobs;
        fx_add_good(fx, 20);
        fx_add_dlq(fx, &k, "bad_request", never_used, sizeof(never_used));
        fx_add_good(fx, 20);
        fx_produce(fx, b_first, fx->n_jobs);
        broker_cmd(fx, "leader " FX_DLQ_TOPIC " 0 -1");
        w2 = fx_worker(fx, names[1], grace);
        fx_wait_results(fx, fx->n_jobs, fx->n_jobs - 3, PROMPT_MS);
        wait_log(fx, w2, source_of(&fx->jobs[b_first + 20], src, sizeof(src)), "timed out",
                 PROMPT_MS);
        w3 = fx_worker(fx, names[2], grace); /* a rebalance: w2 revokes, copy pending */
        wait_log(fx, w2, "giving up the dead-letter copy", NULL, PROMPT_MS);
        wait_log(fx, w3, "assigned", NULL, PROMPT_MS);
        fx_sleep_ms(5000); /* the DLQ stays leaderless past a message timeout */
        st2 = kt_stack_kill(&fx->stack, w2, SIGTERM, 30000);
        st3 = kt_stack_kill(&fx->stack, w3, SIGTERM, 30000);
        fx_check_logs(fx);
        /* 1: it had to give up a pending copy (redelivered), else 0. */
        if ((st2 != 0 && st2 != 1) || (st3 != 0 && st3 != 1)) {
                kt_stack_fail(&fx->stack);
                fail_msg("B: exit statuses %d and %d after SIGTERM, want 0 or 1", st2, st3);
        }

        broker_cmd(fx, "leader " FX_DLQ_TOPIC " 0 1");
        w4 = fx_worker(fx, names[3], NULL);
        fx_wait_committed(fx, 0, fx->jobs[fx->n_jobs - 1].offset + 1, WAIT_MS);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_check_dlq(fx, 3, names, 4, 0);
        fx_finish(fx, &w4, 1);
}

/* The brokers do not offer idempotent produce (InitProducerId missing, as
 * before Kafka 0.11): the idempotent dead-letter producer gets a fatal
 * error.  The worker must say so and exit 1 by itself; once the brokers
 * offer it again, a restarted worker does every job. */
static void test_dlq_producer_fatal(void **state)
{
        fx_t *fx = *state;
        int w, st;

        fx_setup(fx, "dlqfatal", 1, 1, 4, NULL);
        fx_add_good(fx, 40);
        fx_produce(fx, 0, fx->n_jobs);
        broker_cmd(fx, "api-version InitProducerId -1 -1");

        w = fx_worker(fx, "fatal-w1", NULL);
        st = kt_stack_wait(&fx->stack, w, 60000);
        if (st != 1) {
                kt_stack_fail(&fx->stack);
                fail_msg("worker with a dead dead-letter producer: exit status %d, want 1%s", st,
                         st == -1 ? " (still running after 60 s)" : "");
        }
        wait_log(fx, w, "dead-letter producer", "0.11", 1000);

        broker_cmd(fx, "api-version InitProducerId 0 4"); /* librdkafka 2.0.2's mock default */
        w = fx_worker(fx, "fatal-w2", NULL);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, &w, 1);
}

/* The group coordinator fences the worker's static instance id: a fatal
 * consumer error.  The worker must exit 1 (not 0, which says "stopped as
 * asked"), after writing what it had. */
static void test_consumer_fatal(void **state)
{
        fx_t *fx = *state;
        int w, st;

        fx_setup(fx, "consfatal", 1, 1, 4, NULL);
        fx_add_good(fx, 40);
        fx_produce(fx, 0, fx->n_jobs);

        w = fx_worker(fx, "fenced-w1", (const char *[]){"--instance-id", "fenced-1", NULL});
        fx_wait_all(fx, PROMPT_MS);
        broker_cmd(fx, "request-errors Heartbeat FENCED_INSTANCE_ID FENCED_INSTANCE_ID");
        st = kt_stack_wait(&fx->stack, w, 60000);
        if (st != 1) {
                kt_stack_fail(&fx->stack);
                fail_msg("fenced worker: exit status %d, want 1%s", st,
                         st == -1 ? " (still running after 60 s)" : "");
        }
        wait_log(fx, w, "fatal consumer error", NULL, 1000);
        fx_check(fx);
        fx_finish(fx, NULL, 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_dlq_copy_over_1mb, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_dlq_copy_refused, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_dlq_copies_abandoned, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_dlq_producer_fatal, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_consumer_fatal, fx_state_setup, fx_state_teardown),
        };
        return fx_run(tests);
}
