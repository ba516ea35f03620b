/* test_kafka_faults.c - the dev broker misbehaving under the workers while
 * jobs flow (docs/devbroker.md): a broker down and up again, partition
 * leaders and the group coordinator moving, a broker lost with its
 * partitions moved away (a failover done by hand: the mock keeps one copy of
 * the data and does not fail over by itself), and bursts of request errors.
 * Each case ends with fx_check: every job exactly one result, usage exact. */
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

#define WAIT_MS    120000
#define PARTITIONS 6

static void broker_cmd(fx_t *fx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void broker_cmd(fx_t *fx, const char *fmt, ...)
{
        char cmd[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        if (kt_stack_broker_cmd(&fx->stack, cmd)) {
                kt_stack_fail(&fx->stack);
                fail_msg("devbroker refused '%s'", cmd);
        }
}

/* Waits for `more` results beyond the current count: the pool is working. */
static void progress(fx_t *fx, long long more, const char *what)
{
        long long now = fx_count_results(fx, fx_produced(fx));
        fx_wait_results(fx, fx->n_jobs, now + more, WAIT_MS);
        print_message("%s: %lld results, %d jobs produced\n", what,
                      fx_count_results(fx, fx_produced(fx)), fx_produced(fx));
}

/* Three brokers; broker 1 (leader of some partitions, maybe the group's
 * coordinator) goes down for 8 s, longer than the workers' session timeout,
 * while jobs keep arriving, then comes back on the same port.  Then broker
 * 2 goes down too but its partitions are moved to broker 3 first, as a
 * controller would after a failure. */
static void test_broker_down_and_up(void **state)
{
        fx_t *fx = *state;
        int w[2];

        fx_setup(fx, "bdown", 3, PARTITIONS, 8, NULL);
        fx_add_good(fx, 20000);
        fx_stream_start(fx, 0, fx->n_jobs, 150);
        w[0] = fx_worker(fx, "bdown-w1", NULL);
        w[1] = fx_worker(fx, "bdown-w2", NULL);
        progress(fx, 300, "both workers up");

        broker_cmd(fx, "broker-down 1");
        fx_sleep_ms(8000); /* the outage itself */
        broker_cmd(fx, "broker-up 1");
        progress(fx, 300, "broker 1 was down for 8 s");

        for (int p = 0; p < PARTITIONS; p++)
                broker_cmd(fx, "leader %s %d 3", FX_TOPIC, p);
        broker_cmd(fx, "coordinator group %s 3", FX_GROUP);
        broker_cmd(fx, "broker-down 2");
        progress(fx, 300, "broker 2 down after its partitions moved to broker 3");
        broker_cmd(fx, "broker-up 2");

        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, w, 2);
}

/* Partition leaders and the group coordinator move around the cluster while
 * jobs flow, then each kind of request the pool makes fails a few times in
 * a row (fetch, offset commit, heartbeat, produce: the DLQ producer and the
 * test's own). */
static void test_leaders_coordinator_and_request_errors(void **state)
{
        fx_t *fx = *state;
        int w[2];

        fx_setup(fx, "moves", 3, PARTITIONS, 8, NULL);
        fx_add_good(fx, 20000);
        fx_stream_start(fx, 0, fx->n_jobs, 150);
        w[0] = fx_worker(fx, "moves-w1", NULL);
        w[1] = fx_worker(fx, "moves-w2", NULL);
        progress(fx, 300, "both workers up");

        for (int round = 0; round < 3; round++) {
                for (int p = 0; p < PARTITIONS; p++)
                        broker_cmd(fx, "leader %s %d %d", FX_TOPIC, p, (p + round) % 3 + 1);
                progress(fx, 150, "leaders moved");
                broker_cmd(fx, "coordinator group %s %d", FX_GROUP, round % 3 + 1);
                progress(fx, 150, "coordinator moved");
        }

        broker_cmd(fx, "request-errors Fetch NOT_LEADER_FOR_PARTITION REQUEST_TIMED_OUT "
                       "NOT_LEADER_FOR_PARTITION UNKNOWN_TOPIC_OR_PART");
        broker_cmd(fx, "request-errors OffsetCommit REQUEST_TIMED_OUT NOT_COORDINATOR "
                       "COORDINATOR_LOAD_IN_PROGRESS");
        broker_cmd(fx, "request-errors Heartbeat NOT_COORDINATOR REQUEST_TIMED_OUT");
        broker_cmd(fx, "request-errors Produce NOT_LEADER_FOR_PARTITION REQUEST_TIMED_OUT");
        progress(fx, 300, "request errors");

        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, w, 2);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_broker_down_and_up, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_leaders_coordinator_and_request_errors,
                                            fx_state_setup, fx_state_teardown),
        };
        return fx_run(tests);
}
