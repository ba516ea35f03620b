/* test_real_faults.c - crashes on a genuine Apache Kafka 4.x broker (single
 * node, KRaft; kt_stack_start_kafka): workers SIGKILLed, restarted, added and
 * removed while a 20,000-job backlog drains through a real group coordinator,
 * and the broker itself SIGKILLed and restarted on its data directory while
 * jobs flow.  Each case ends with the fault fixture's check
 * (tests/faults/faults.h): every job exactly one result, equal to the
 * reference, usage exact: nothing lost, nobody charged twice. */
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

#include "../faults/faults.h"

#define WAIT_MS 120000

/* Small batches, one compute thread: slow enough that the faults below land
 * while the backlog is still draining, on any machine. */
static const char *const slow[] = {"--batch-max-jobs", "8", "--compute-threads", "1", NULL};

/* Asserts that the drain is still going: a fault that lands after the last
 * result would prove nothing. */
static void assert_midrun(fx_t *fx, const char *what)
{
        long long done = fx_count_results(fx, fx->n_jobs);
        print_message("%s with %lld of %d results written\n", what, done, fx->n_jobs);
        if (done >= fx->n_jobs) {
                kt_stack_fail(&fx->stack);
                fail_msg("the backlog had drained before: %s (the workers are faster than "
                         "this test assumes; slow them down)",
                         what);
        }
}

/* Waits until the worker in `slot` has logged more than `before`
 * assignments ("assigned N partitions"), i.e. it joined the group; fails at
 * once if the backlog drained first.  (Not "until it writes a result": the
 * partitions it gets may be ones already drained.) */
#define ASSIGNED "INFO  assigned "
static void wait_assigned(fx_t *fx, int slot, int before)
{
        long long deadline = kt_now_ms() + WAIT_MS;
        const char *name = fx->stack.procs[slot].name;
        while (fx_log_count(fx, slot, ASSIGNED) <= before) {
                if (fx_count_results(fx, fx->n_jobs) >= fx->n_jobs) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("the backlog drained before %s got partitions", name);
                }
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s got no partitions in %d ms", name, WAIT_MS);
                }
                fx_sleep_ms(50);
        }
}

/* A 20,000-job backlog on 6 partitions, drained by two workers; one is
 * SIGKILLed mid-run and restarted under its name while a third joins, then
 * one of the first two leaves (SIGTERM), each while the drain goes on.  The
 * killed worker's uncommitted jobs are redone by whoever gets its
 * partitions: every job must still have one result and one charge. */
static void test_backlog_kill_restart_scale(void **state)
{
        fx_t *fx = *state;
        long long t0, t_end, dups = 0;
        int w1, w2, w3, last[2], before;

        fx_setup_kafka(fx, "rkscale", 6, 12, NULL);
        fx_add_good(fx, 20000);
        t0 = kt_now_ms();
        fx_produce(fx, 0, fx->n_jobs);
        print_message("20000 jobs produced to the real broker in %lld ms\n", kt_now_ms() - t0);

        t0 = kt_now_ms();
        w1 = fx_worker(fx, "rkscale-w1", slow);
        w2 = fx_worker(fx, "rkscale-w2", slow);
        fx_wait_results(fx, fx->n_jobs, 1000, WAIT_MS);
        assert_int_equal(kt_stack_kill(&fx->stack, w1, SIGKILL, 5000), 128 + SIGKILL);
        assert_midrun(fx, "rkscale-w1 SIGKILLed");

        /* Its restart and a third worker join together: the group waits for
         * the dead member's session (6 s) to end, then splits 6 partitions
         * three ways. */
        before = fx_log_count(fx, w1, ASSIGNED); /* the restart appends to its log */
        w1 = fx_worker(fx, "rkscale-w1", slow);
        w3 = fx_worker(fx, "rkscale-w3", slow);
        wait_assigned(fx, w1, before);
        wait_assigned(fx, w3, 0);
        assert_midrun(fx, "rkscale-w1 restarted and rkscale-w3 joined, both assigned");

        assert_int_equal(kt_stack_kill(&fx->stack, w2, SIGTERM, 30000), 0);
        assert_midrun(fx, "rkscale-w2 left (SIGTERM, exit 0)");

        fx_wait_all(fx, WAIT_MS);
        t_end = kt_now_ms();
        fx_check(fx);
        print_message("drained in %lld ms; results by w1 %lld, w2 %lld, w3 %lld\n", t_end - t0,
                      fx_count_by_worker(fx, fx->n_jobs, "rkscale-w1"),
                      fx_count_by_worker(fx, fx->n_jobs, "rkscale-w2"),
                      fx_count_by_worker(fx, fx->n_jobs, "rkscale-w3"));
        last[0] = w1;
        last[1] = w3;
        fx_finish(fx, last, 2);
        for (int i = 0; i < 2; i++)
                dups += fx_log_stat(fx, last[i], "duplicates") > 0
                            ? fx_log_stat(fx, last[i], "duplicates")
                            : 0;
        print_message("jobs redelivered and found already done (not charged again): %lld\n", dups);
}

/* The broker SIGKILLed while two workers consume a stream (with some
 * address-less messages for the dead-letter producer) and restarted on the
 * same data directory after a while: every acknowledged job still gets its
 * one result and one charge, the same two worker processes carry on without
 * a restart, dead letters are on the DLQ, and the group's committed offsets
 * reach the end of every partition. */
static void test_broker_sigkill_restart(void **state)
{
        fx_t *fx = *state;
        const char *const names[] = {"rkbrk-w1", "rkbrk-w2"};
        const int n = 6000;
        int64_t end[4] = {0, 0, 0, 0}, committed[4];
        long long at_kill, at_restart, t_down;
        int w[2], k = 0, n_dlq = 0, produced_at_kill;

        fx_setup_kafka(fx, "rkbrk", 4, 8, NULL);
        for (int i = 0; i < n; i++) {
                if (i % 500 == 250) {
                        char bad[64];
                        int len = snprintf(bad, sizeof(bad), "not msgpack %d", i);
                        fx_add_dlq(fx, &k, "bad_request", bad, (size_t)len)->want_message =
                            "^not valid msgpack";
                        n_dlq++;
                } else {
                        fx_add_good(fx, 1);
                }
        }
        /* A revoke around the broker's restart may hand a partition over
         * before its stored offsets were committed: a dead letter can then
         * be copied (and counted) twice, never lost. */
        fx->redelivered_dlq = 1;
        w[0] = fx_worker(fx, names[0], NULL);
        w[1] = fx_worker(fx, names[1], NULL);
        fx_stream_start(fx, 0, fx->n_jobs, 400);
        fx_wait_results(fx, fx->n_jobs, 1000, WAIT_MS);
        /* Crash the broker only once the group has committed offsets (the
         * workers commit every 5 s): they must survive the crash. */
        {
                long long deadline = kt_now_ms() + WAIT_MS;
                int n_committed;
                do {
                        if (kt_now_ms() > deadline) {
                                kt_stack_fail(&fx->stack);
                                fail_msg("the workers committed no offset in %d ms", WAIT_MS);
                        }
                        fx_sleep_ms(100);
                        n_committed = 0;
                        for (int p = 0; p < 4; p++)
                                n_committed += (committed[p] = fx_committed(fx, p)) > 0;
                } while (n_committed == 0);
                print_message("offsets committed on %d of 4 partitions before the crash\n",
                              n_committed);
        }

        assert_int_equal(kt_stack_kill_kafka(&fx->stack, SIGKILL), 128 + SIGKILL);
        t_down = kt_now_ms();
        at_kill = fx_count_results(fx, fx->n_jobs);
        produced_at_kill = fx_produced(fx);
        print_message("broker SIGKILLed: %lld results, %d jobs handed to the producer\n", at_kill,
                      produced_at_kill);
        /* Pacing, not synchronisation: the broker stays down for 3 s while the
         * stream goes on into the producer's queue and the workers retry. */
        fx_sleep_ms(3000);
        assert_int_equal(kt_stack_restart_kafka(&fx->stack), 0);
        at_restart = fx_count_results(fx, fx->n_jobs);
        print_message("broker back after %lld ms (%lld results)\n", kt_now_ms() - t_down,
                      at_restart);
        /* The offsets committed before the crash are still there: a group
         * whose offsets were lost would start over (auto.offset.reset is
         * earliest) and redo every job. */
        for (int p = 0; p < 4; p++) {
                /* -2: the restarted broker's group coordinator is still
                 * loading (seconds on a busy machine): ask again */
                long long until = kt_now_ms() + WAIT_MS;
                int64_t now;
                while ((now = fx_committed(fx, p)) == -2 && kt_now_ms() < until)
                        fx_sleep_ms(250);
                if (now < committed[p]) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("kinfer.jobs/%d: committed offset %lld after the broker's "
                                 "restart, %lld before its crash",
                                 p, (long long)now, (long long)committed[p]);
                }
        }

        fx_stream_join(fx);
        fx_wait_all(fx, WAIT_MS);
        /* The workers were not restarted: the same processes are still up. */
        for (int i = 0; i < 2; i++)
                if (kt_stack_wait(&fx->stack, w[i], 0) != -1) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s exited during the broker's outage", names[i]);
                }
        assert_true(fx_count_results(fx, fx->n_jobs) > at_restart);
        fx_check(fx);
        fx_check_dlq(fx, n_dlq, names, 2, 1);

        /* Offsets: the group commits after the restart too. */
        for (int i = 0; i < fx->n_jobs; i++)
                if (fx->jobs[i].partition >= 0 && fx->jobs[i].partition < 4 &&
                    fx->jobs[i].offset + 1 > end[fx->jobs[i].partition])
                        end[fx->jobs[i].partition] = fx->jobs[i].offset + 1;
        for (int p = 0; p < 4; p++)
                if (end[p] > 0)
                        fx_wait_committed(fx, p, end[p], 30000);
        print_message("committed offsets reached the end of every partition\n");
        fx_finish(fx, w, 2);
}

/* Static membership (--instance-id, group.instance.id), which the dev
 * broker's mock ignores: a worker SIGKILLed and restarted under the same
 * instance id within the session timeout gets its partitions back without a
 * rebalance (the other worker is never revoked or assigned again), redoes
 * the jobs whose offsets it had not committed, and charges none twice. */
static void test_static_member_restart(void **state)
{
        fx_t *fx = *state;
        const char *id1[] = {"--instance-id", "rkstatic-1", NULL};
        const char *id2[] = {"--instance-id", "rkstatic-2", NULL};
        int w1, w2, last[2], before, w2_assigned, w2_revoked;
        long long at;

        fx_setup_kafka(fx, "rkstatic", 4, 8, NULL);
        fx_add_good(fx, 6000);
        w1 = fx_worker(fx, "rkstatic-w1", id1);
        w2 = fx_worker(fx, "rkstatic-w2", id2);
        fx_stream_start(fx, 0, fx->n_jobs, 500);
        /* Both members in the group, each with its share. */
        {
                long long deadline = kt_now_ms() + WAIT_MS;
                while (fx_count_by_worker(fx, fx_produced(fx), "rkstatic-w1") < 100 ||
                       fx_count_by_worker(fx, fx_produced(fx), "rkstatic-w2") < 100) {
                        if (kt_now_ms() > deadline) {
                                kt_stack_fail(&fx->stack);
                                fail_msg("the two static members did not both start working");
                        }
                        fx_sleep_ms(50);
                }
        }
        /* The group is stable with both: how often w2 was assigned and
         * revoked so far (the two may have joined in one rebalance or two). */
        w2_assigned = fx_log_count(fx, w2, ASSIGNED);
        w2_revoked = fx_log_count(fx, w2, "INFO  revoking");
        assert_int_equal(kt_stack_kill(&fx->stack, w1, SIGKILL, 5000), 128 + SIGKILL);
        at = fx_count_by_worker(fx, fx_produced(fx), "rkstatic-w1");
        before = fx_log_count(fx, w1, ASSIGNED);
        w1 = fx_worker(fx, "rkstatic-w1", id1);
        wait_assigned(fx, w1, before);
        /* Working again on its own partitions: new results of its own. */
        {
                long long deadline = kt_now_ms() + WAIT_MS;
                while (fx_count_by_worker(fx, fx_produced(fx), "rkstatic-w1") < at + 100) {
                        if (kt_now_ms() > deadline) {
                                kt_stack_fail(&fx->stack);
                                fail_msg("the restarted static member wrote no new results");
                        }
                        fx_sleep_ms(50);
                }
        }
        fx_stream_join(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        /* No rebalance: rkstatic-w2 kept its assignment throughout. */
        if (fx_log_count(fx, w2, ASSIGNED) != w2_assigned ||
            fx_log_count(fx, w2, "INFO  revoking") != w2_revoked) {
                kt_stack_fail(&fx->stack);
                fail_msg("rkstatic-w2 was assigned %d more times and revoked %d more times "
                         "after rkstatic-w1's kill: the static member's restart caused a "
                         "rebalance",
                         fx_log_count(fx, w2, ASSIGNED) - w2_assigned,
                         fx_log_count(fx, w2, "INFO  revoking") - w2_revoked);
        }
        last[0] = w1;
        last[1] = w2;
        fx_finish(fx, last, 2);
        print_message("rkstatic-w1 restarted without a rebalance; it redid %lld jobs\n",
                      fx_log_stat(fx, w1, "duplicates"));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_backlog_kill_restart_scale, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_broker_sigkill_restart, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_static_member_restart, fx_state_setup,
                                            fx_state_teardown),
        };
        return fx_run(tests);
}
