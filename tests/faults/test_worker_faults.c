/* test_worker_faults.c - workers dying, freezing, stopping and joining while
 * jobs flow: SIGKILL at several moments, a SIGSTOPped zombie that comes back
 * after its partitions moved, SIGTERM under load, and scaling the group up
 * and down.  Each case ends with fx_check: every job exactly one result,
 * usage exact (see faults.h). */
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

#define WAIT_MS 120000 /* generous: a slow CI machine must not make this flaky */

/* Waits until the worker's log shows it received an assignment, or until it
 * wrote a result, whichever comes first. */
static void wait_assigned(fx_t *fx, int slot, const char *name)
{
        long long deadline = kt_now_ms() + WAIT_MS;
        while (!fx_log_count(fx, slot, "assigned") &&
               fx_count_by_worker(fx, atomic_load(&fx->produced), name) <= 0) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s never got partitions", name);
                }
                fx_sleep_ms(20);
        }
}

/* Waits until the workers keep up with the stream (results trail the
 * produced jobs by at most `lag`). */
static void wait_caught_up(fx_t *fx, int lag)
{
        long long deadline = kt_now_ms() + WAIT_MS;
        for (;;) {
                int produced = fx_produced(fx);
                if (fx_count_results(fx, produced) >= produced - lag)
                        return;
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("the workers never caught up with the stream");
                }
                fx_sleep_ms(50);
        }
}

/* A worker SIGKILLed four times at different moments while jobs keep
 * arriving (right after its first results; right after it got its
 * partitions, with a backlog waiting; deep in the backlog; in steady state,
 * caught up with the stream), then a fresh worker: every job gets one
 * result, and re-reading jobs whose offsets were never committed (the
 * offsets are committed every 5 s) charges nobody twice. */
static void test_sigkill_repeatedly(void **state)
{
        fx_t *fx = *state;
        const char *small[] = {"--batch-max-jobs", "8", NULL};
        long long at;
        int w, last;

        fx_setup(fx, "kill", 1, 4, 8, NULL);
        fx_add_good(fx, 20000); /* the stream stops when the faults are over */
        fx_stream_start(fx, 0, fx->n_jobs, 120);

        w = fx_worker(fx, "kill-w1", small);
        fx_wait_results(fx, fx->n_jobs, 1, WAIT_MS);
        assert_int_equal(kt_stack_kill(&fx->stack, w, SIGKILL, 5000), 128 + SIGKILL);
        at = fx_count_results(fx, fx_produced(fx));
        print_message("kill 1: after its first results (%lld written, %d produced)\n", at,
                      fx_produced(fx));

        w = fx_worker(fx, "kill-w2", small);
        wait_assigned(fx, w, "kill-w2");
        assert_int_equal(kt_stack_kill(&fx->stack, w, SIGKILL, 5000), 128 + SIGKILL);
        at = fx_count_results(fx, fx_produced(fx));
        print_message("kill 2: right after its assignment (%lld written, %d produced)\n", at,
                      fx_produced(fx));

        w = fx_worker(fx, "kill-w3", small);
        fx_wait_results(fx, fx->n_jobs, at + 300, WAIT_MS);
        assert_int_equal(kt_stack_kill(&fx->stack, w, SIGKILL, 5000), 128 + SIGKILL);
        at = fx_count_results(fx, fx_produced(fx));
        print_message("kill 3: in its backlog, 300 results later (%lld written, %d produced)\n", at,
                      fx_produced(fx));

        w = fx_worker(fx, "kill-w4", NULL);
        wait_caught_up(fx, 40);
        fx_wait_results(fx, fx->n_jobs, fx_count_results(fx, fx_produced(fx)) + 100, WAIT_MS);
        assert_int_equal(kt_stack_kill(&fx->stack, w, SIGKILL, 5000), 128 + SIGKILL);
        at = fx_count_results(fx, fx_produced(fx));
        print_message("kill 4: caught up with the stream (%lld written, %d produced)\n", at,
                      fx_produced(fx));

        last = fx_worker(fx, "kill-w5", NULL);
        fx_wait_results(fx, fx->n_jobs, fx_count_results(fx, fx_produced(fx)) + 300, WAIT_MS);
        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, &last, 1);
        print_message("kill-w5 found %lld results already written (redelivered jobs)\n",
                      fx_log_stat(fx, last, "duplicates"));
}

/* A worker frozen (SIGSTOP) past the session timeout while it holds a
 * batch: the group gives its partitions to the other worker, which redoes
 * the uncommitted jobs.  Then the zombie is continued and writes its stale
 * batch: those writes must be no-ops (the first result stands, nobody is
 * charged twice), and it must rejoin the group and work again. */
static void test_zombie_sigstop(void **state)
{
        fx_t *fx = *state;
        /* The zombie collects each batch for a whole second, so the freeze
         * almost surely lands while it holds fetched, unwritten jobs. */
        const char *holding[] = {"--batch-wait-us", "1000000", NULL};
        fx_snapshot_t snap;
        int w[2], upto;
        long long mine, late;

        fx_setup(fx, "zomb", 1, 4, 8, NULL);
        fx_add_good(fx, 20000);
        fx_stream_start(fx, 0, fx->n_jobs, 150);
        w[0] = fx_worker(fx, "zomb-w1", holding);
        w[1] = fx_worker(fx, "zomb-w2", NULL);
        /* Both in the group and working. */
        {
                long long deadline = kt_now_ms() + WAIT_MS;
                while (fx_count_by_worker(fx, fx_produced(fx), "zomb-w1") < 20 ||
                       fx_count_by_worker(fx, fx_produced(fx), "zomb-w2") < 20) {
                        if (kt_now_ms() > deadline)
                                fail_msg("the two workers did not both start working");
                        fx_sleep_ms(50);
                }
        }
        assert_int_equal(kt_stack_kill(&fx->stack, w[0], SIGSTOP, 0), 0);
        upto = fx_produced(fx);
        print_message("zomb-w1 stopped with %d jobs produced\n", upto);

        /* zomb-w2 takes over: every job produced so far gets its result,
         * including the ones the zombie holds. */
        fx_wait_results(fx, upto, upto, WAIT_MS);
        mine = fx_count_by_worker(fx, upto, "zomb-w1");
        fx_snapshot_take(fx, &snap);
        print_message("zomb-w2 completed the first %d jobs (%lld by zomb-w1 before the stop)\n",
                      upto, mine);

        assert_int_equal(kt_stack_kill(&fx->stack, w[0], SIGCONT, 0), 0);
        /* Back in the group: it writes results for new jobs again. */
        {
                long long deadline = kt_now_ms() + WAIT_MS;
                while (fx_count_by_worker(fx, fx_produced(fx), "zomb-w1") - mine < 50) {
                        if (kt_now_ms() > deadline) {
                                kt_stack_fail(&fx->stack);
                                fail_msg("zomb-w1 did not work again after SIGCONT");
                        }
                        fx_sleep_ms(50);
                }
        }
        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_snapshot_check(fx, &snap);
        fx_snapshot_free(&snap);
        /* The zombie replaced none of the results of the jobs done meanwhile. */
        assert_int_equal(fx_count_by_worker(fx, upto, "zomb-w1"), mine);
        fx_check(fx);
        fx_finish(fx, w, 2);
        late = fx_log_stat(fx, w[0], "duplicates");
        print_message("zomb-w1: %lld stale writes were no-ops; zomb-w2 redid %lld jobs\n", late,
                      fx_log_stat(fx, w[1], "duplicates"));
        if (late == 0)
                print_message("note: zomb-w1 held no batch when it was stopped this time\n");
}

/* SIGTERM while jobs flow: the worker finishes its batch, commits, leaves
 * the group and exits 0; a worker started afterwards finishes the stream
 * without redoing what the first one wrote (its offsets were committed). */
static void test_sigterm_under_load(void **state)
{
        fx_t *fx = *state;
        const int n = 2000;
        long long at, dups;
        int w1, w2;

        fx_setup(fx, "term", 1, 4, 8, NULL);
        fx_add_good(fx, n);
        fx_stream_start(fx, 0, n, 250);
        w1 = fx_worker(fx, "term-w1", NULL);
        fx_wait_results(fx, n, 300, WAIT_MS);
        assert_int_equal(kt_stack_kill(&fx->stack, w1, SIGTERM, 30000), 0);
        at = fx_count_results(fx, n);
        print_message("term-w1 exited 0 with %lld results written, %d jobs produced\n", at,
                      atomic_load(&fx->produced));
        assert_true(at < n);

        w2 = fx_worker(fx, "term-w2", NULL);
        fx_stream_join(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, &w2, 1);
        dups = fx_log_stat(fx, w2, "duplicates");
        print_message("term-w2 re-read %lld jobs term-w1 had written\n", dups);
        if (dups > 0)
                fail_msg("term-w2 redid %lld jobs: term-w1's shutdown did not commit the "
                         "offsets of everything it wrote",
                         dups);
}

/* SIGTERM with every broker gone: the worker must still exit within its
 * grace period plus the 2 s it may take to leave the group (librdkafka's
 * consumer close alone waited the whole 45 s session timeout), exit 0 since
 * everything it took was written, and lose nothing. */
static void test_sigterm_brokers_down(void **state)
{
        static const char *const extra[] = {"--grace-ms", "3000", "-X", "session.timeout.ms=45000",
                                            NULL};
        fx_t *fx = *state;
        const int n = 200;
        long long t0, took;
        int w, st;

        fx_setup(fx, "down", 1, 2, 4, NULL);
        fx_add_good(fx, n);
        fx_produce(fx, 0, n);
        w = fx_worker(fx, "down-w1", extra);
        fx_wait_results(fx, n, n, WAIT_MS);
        assert_int_equal(kt_stack_broker_cmd(&fx->stack, "broker-down -1"), 0);
        kt_sleep_ms(1000);
        t0 = kt_now_ms();
        st = kt_stack_kill(&fx->stack, w, SIGTERM, 30000);
        took = kt_now_ms() - t0;
        print_message("down-w1: exit status %d %lld ms after SIGTERM, the brokers down\n", st,
                      took);
        if (st != 0 || took > 3000 + 2000 + 2500)
                fail_msg("down-w1 took %lld ms to exit (status %d) with --grace-ms 3000 and the "
                         "brokers down; the bound is 5000 ms (+ 2500 ms for a slow machine)",
                         took, st);
        assert_int_equal(kt_stack_broker_cmd(&fx->stack, "broker-up -1"), 0);
        fx_check(fx);
        fx_check_logs(fx);
        fx->passed = 1;
}

/* The group grows from one worker to three and shrinks again (one SIGTERM,
 * one SIGKILL) while jobs flow; the survivor finishes. */
static void test_scale_up_and_down(void **state)
{
        fx_t *fx = *state;
        const int n = 4000;
        int w1, w2, w3;
        long long at;

        fx_setup(fx, "scale", 1, 6, 12, NULL);
        fx_add_good(fx, n);
        fx_stream_start(fx, 0, n, 250);
        w1 = fx_worker(fx, "scale-w1", NULL);
        fx_wait_results(fx, n, 200, WAIT_MS);
        w2 = fx_worker(fx, "scale-w2", NULL);
        w3 = fx_worker(fx, "scale-w3", NULL);
        {
                long long deadline = kt_now_ms() + WAIT_MS;
                while (fx_count_by_worker(fx, atomic_load(&fx->produced), "scale-w2") < 1 ||
                       fx_count_by_worker(fx, atomic_load(&fx->produced), "scale-w3") < 1) {
                        if (kt_now_ms() > deadline)
                                fail_msg("scale-w2 and scale-w3 did not both start working");
                        fx_sleep_ms(50);
                }
        }
        at = fx_count_results(fx, n);
        print_message("three workers working (%lld results)\n", at);
        assert_int_equal(kt_stack_kill(&fx->stack, w2, SIGTERM, 30000), 0);
        fx_wait_results(fx, n, at + 200, WAIT_MS);
        assert_int_equal(kt_stack_kill(&fx->stack, w3, SIGKILL, 5000), 128 + SIGKILL);
        print_message("scale-w2 left (SIGTERM), scale-w3 killed; %lld results\n",
                      fx_count_results(fx, n));
        fx_stream_join(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        print_message("results by scale-w1 %lld, w2 %lld, w3 %lld\n",
                      fx_count_by_worker(fx, n, "scale-w1"), fx_count_by_worker(fx, n, "scale-w2"),
                      fx_count_by_worker(fx, n, "scale-w3"));
        fx_finish(fx, &w1, 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_sigkill_repeatedly, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_zombie_sigstop, fx_state_setup, fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_sigterm_under_load, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_sigterm_brokers_down, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_scale_up_and_down, fx_state_setup,
                                            fx_state_teardown),
        };
        return fx_run(tests);
}
