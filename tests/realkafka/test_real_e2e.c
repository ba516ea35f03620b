/* test_real_e2e.c - kinfer on a genuine Apache Kafka 4.x broker (single node,
 * KRaft; kt_stack_start_kafka), not on the dev broker's mock cluster: jobs
 * through the `kinfer` CLI to two workers, and poison messages dead-lettered
 * and read back from the broker with their headers.  Each case ends with the
 * fault fixture's check (tests/faults/faults.h): every job exactly one
 * result, equal to a double-precision reference, usage exact. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../faults/faults.h"

#define WAIT_MS 120000

/* Waits until a log line of the worker in `slot` holds both needles. */
static void wait_log(fx_t *fx, int slot, const char *a, const char *b)
{
        long long deadline = kt_now_ms() + WAIT_MS;
        char line[4096];
        for (;;) {
                FILE *fp = fopen(fx->stack.procs[slot].log, "r");
                int found = 0;
                while (fp && !found && fgets(line, sizeof(line), fp))
                        found = strstr(line, a) && strstr(line, b);
                if (fp)
                        fclose(fp);
                if (found)
                        return;
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s: no log line with '%s' and '%s' within %d ms",
                                 fx->stack.procs[slot].name, a, b, WAIT_MS);
                }
                fx_sleep_ms(100);
        }
}

/* 1,000 jobs of 10 users submitted with `kinfer submit` (idempotent
 * producer, acks=all, on the real broker) to two workers in one group:
 * every result correct and present once, usage exact, both workers took
 * part (the group really split the partitions), both leave cleanly. */
static void test_cli_two_workers(void **state)
{
        fx_t *fx = *state;
        int w[2];

        fx_setup_kafka(fx, "rke2e", 4, 10, NULL);
        w[0] = fx_worker(fx, "rke2e-w1", NULL);
        w[1] = fx_worker(fx, "rke2e-w2", NULL);
        /* Both in the group before any job: else the first to join may
         * drain all 1,000 before the rebalance gives the other its half. */
        wait_log(fx, w[0], "INFO  assigned 2 partitions", "assigned");
        wait_log(fx, w[1], "INFO  assigned 2 partitions", "assigned");
        fx_add_good(fx, 1000);
        fx_submit_cli(fx, 0, fx->n_jobs);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        {
                long long n1 = fx_count_by_worker(fx, fx->n_jobs, "rke2e-w1");
                long long n2 = fx_count_by_worker(fx, fx->n_jobs, "rke2e-w2");
                print_message("results by rke2e-w1 %lld, rke2e-w2 %lld\n", n1, n2);
                assert_int_equal(n1 + n2, fx->n_jobs);
                if (n1 == 0 || n2 == 0)
                        fail_msg("one worker wrote every result: the group did not share the "
                                 "partitions");
        }
        fx_finish(fx, w, 2);
}

static void kv_str(fx_msg_t *m, const char *k, const char *v)
{
        fx_msg_str(m, k);
        fx_msg_str(m, v);
}

/* Messages without an address, between good jobs and jobs that get error
 * results: each address-less one must be on the real broker's dead-letter
 * topic with its key, value and kinfer.* headers (the 0.11 record format),
 * copied by the workers' idempotent producer, and counted once. */
static void test_poison_to_dlq(void **state)
{
        fx_t *fx = *state;
        static const unsigned char never_used[] = {0xc1};
        static const char json[] = "{\"v\":2,\"id\":\"json-is-not-msgpack\"}";
        const char *const names[] = {"rkdlq-w1", "rkdlq-w2"};
        float row[FX_IN] = {1, 2, 3, 4, 5, 6, 7, 8};
        fx_job_t *job;
        fx_msg_t m;
        int w[2], k = 0, n_dlq = 0;

        fx_setup_kafka(fx, "rkdlq", 4, 4, NULL);
        fx_add_good(fx, 100);
        fx_add_dlq(fx, &k, "bad_request", never_used, sizeof(never_used))->want_message =
            "^not valid msgpack";
        fx_add_dlq(fx, &k, "bad_request", json, strlen(json))->want_message = "^not valid msgpack";
        n_dlq += 2;
        fx_add_good(fx, 100);

        /* An id but no user. */
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 4);
        fx_msg_str(&m, "v");
        msgpack_pack_uint32(&m.pk, 2);
        kv_str(&m, "id", "rkdlq-userless");
        kv_str(&m, "model", "mlp");
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, 1);
        msgpack_pack_array(&m.pk, FX_IN);
        for (int i = 0; i < FX_IN; i++)
                msgpack_pack_float(&m.pk, row[i]);
        job = fx_add_dlq(fx, &k, "bad_request", m.sb.data, m.sb.size);
        job->want_message = "missing required field 'user'";
        msgpack_sbuffer_destroy(&m.sb);
        n_dlq++;

        /* No value at all (a tombstone). */
        job = fx_add_raw(fx);
        job->dlq = 1;
        job->null_value = 1;
        job->want_error = "bad_request";
        job->want_message = "^not valid msgpack";
        snprintf(job->key, sizeof(job->key), "%s-dlq-key-%d", fx->tag, k++);
        n_dlq++;

        /* An address and an unknown model: an error result, not a dead letter. */
        job = fx_add_raw(fx);
        snprintf(job->id, sizeof(job->id), "%s-nomodel", fx->tag);
        job->user = 1;
        job->model = "no-such-model";
        job->want_error = "unknown_model";
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 5);
        fx_msg_str(&m, "v");
        msgpack_pack_uint32(&m.pk, 2);
        kv_str(&m, "id", job->id);
        kv_str(&m, "user", fx_user(fx, 1));
        kv_str(&m, "model", "no-such-model");
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, 1);
        msgpack_pack_array(&m.pk, FX_IN);
        for (int i = 0; i < FX_IN; i++)
                msgpack_pack_float(&m.pk, row[i]);
        fx_msg_take(&m, job);
        fx_add_good(fx, 100);

        w[0] = fx_worker(fx, names[0], NULL);
        w[1] = fx_worker(fx, names[1], NULL);
        fx_produce(fx, 0, fx->n_jobs);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_check_dlq(fx, n_dlq, names, 2, 0);
        fx_finish(fx, w, 2);
}

/* What only a real broker enforces: a topic's max.message.bytes.  The jobs
 * topic takes 2 MiB messages, the dead-letter topic keeps the default 1 MB,
 * so the copy of a 1.5 MB address-less message is refused (docs/operations.md,
 * Dead letters: "Message size too large").  The jobs around it still get
 * their results, the committed offset stops at it, and once an operator
 * raises the dead-letter topic's limit the copy is taken, without a restart. */
static void test_dlq_message_too_large_then_fixed(void **state)
{
        fx_t *fx = *state;
        const char *const names[] = {"rkbig-w1"};
        const size_t big_n = 1536 * 1024;
        unsigned char *big = malloc(big_n);
        char src[128];
        int64_t poison_off;
        int w, k = 0, poison;

        assert_non_null(big);
        fx_setup_kafka(fx, "rkbig", 1, 4, NULL);
        assert_int_equal(
            kt_stack_kafka_topic_config(&fx->stack, FX_TOPIC, "max.message.bytes", "2097152"), 0);
        fx_add_good(fx, 40);
        memset(big, 'p', big_n);
        big[0] = 0xc1; /* not msgpack: no id to read */
        poison = fx->n_jobs;
        fx_add_dlq(fx, &k, "bad_request", big, big_n)->want_message = "^not valid msgpack";
        free(big);
        fx_add_good(fx, 40);
        fx_produce(fx, 0, fx->n_jobs);
        poison_off = fx->jobs[poison].offset;
        snprintf(src, sizeof(src), "%s/%d/%lld", FX_TOPIC, (int)fx->jobs[poison].partition,
                 (long long)poison_off);

        w = fx_worker(fx, names[0], NULL);
        fx_wait_results(fx, fx->n_jobs, fx->n_jobs - 1, WAIT_MS);
        wait_log(fx, w, src, "Message size too large");
        fx_wait_committed(fx, 0, poison_off, WAIT_MS);
        if (fx_committed(fx, 0) != poison_off) {
                kt_stack_fail(&fx->stack);
                fail_msg("committed offset %lld while the copy of %s is refused, want %lld",
                         (long long)fx_committed(fx, 0), src, (long long)poison_off);
        }
        print_message("%d results written, offset held at %lld while %s refuses the copy\n",
                      fx->n_jobs - 1, (long long)poison_off, FX_DLQ_TOPIC);

        assert_int_equal(
            kt_stack_kafka_topic_config(&fx->stack, FX_DLQ_TOPIC, "max.message.bytes", "2097152"),
            0);
        wait_log(fx, w, src, "taken by");
        fx_wait_committed(fx, 0, fx->jobs[fx->n_jobs - 1].offset + 1, WAIT_MS);
        fx_check(fx);
        fx_check_dlq(fx, 1, names, 1, 0);
        fx_finish(fx, &w, 1);
}

/* A worker whose Kafka client believes the broker is 0.9 (no ApiVersions
 * request, broker.version.fallback 0.9.0.1: what librdkafka concludes on a
 * real 0.9 broker, the one issue 13 was first tried on) cannot have an
 * idempotent dead-letter producer: it must say so and exit 1
 * (docs/operations.md, Kafka brokers), not sit in the group computing
 * nothing. */
static void test_pre_011_protocol_exits(void **state)
{
        fx_t *fx = *state;
        const char *old[] = {"-X", "api.version.request=false", "-X",
                             "broker.version.fallback=0.9.0.1", NULL};
        int w, st;

        fx_setup_kafka(fx, "rkold", 1, 1, NULL);
        w = fx_worker(fx, "rkold-w1", old);
        st = kt_stack_wait(&fx->stack, w, 60000);
        if (st != 1) {
                kt_stack_fail(&fx->stack);
                fail_msg("a worker on a pre-0.11 protocol: exit status %d (-1: still running "
                         "after 60 s), want 1",
                         st);
        }
        if (fx_log_count(fx, w, "Idempotent producer not supported") < 1) {
                kt_stack_fail(&fx->stack);
                fail_msg("rkold-w1 exited 1 without naming the idempotent producer (its log)");
        }
        fx_check_logs(fx);
        fx->passed = 1;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_cli_two_workers, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_poison_to_dlq, fx_state_setup, fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_dlq_message_too_large_then_fixed, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_pre_011_protocol_exits, fx_state_setup,
                                            fx_state_teardown),
        };
        return fx_run(tests);
}
