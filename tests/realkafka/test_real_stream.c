/* test_real_stream.c - the result topic on a genuine Apache Kafka 4.x
 * (kt_stack_start_kafka): the dev broker's mock neither filters
 * read_committed fetches nor stores transactional offsets, so exactly-once
 * can only be shown here.
 *
 *   - 10,000 jobs through two workers in exactly-once mode, one SIGKILLed
 *     twice mid-drain and restarted under its transactional.id: a
 *     read_committed consumer of kinfer.results sees every job id exactly
 *     once, each value byte for byte the Redis result; Redis passes the
 *     fault fixture's full check (one result, one charge, numbers right).
 *   - A zombie: a worker SIGSTOPped past its session timeout while its
 *     partitions go to the other, then resumed with transactions in flight:
 *     still each job once.
 *   - A two-stage pipeline (the fixture's 8 -> 16 -> 4 model, then a 4 -> 5
 *     -> 3 classifier on its result topic, --chain-model): `kinfer tail`
 *     prints the second stage's results as JSON lines, which an independent
 *     numpy reference (tests/realkafka/chain_ref.py, Debian's python3)
 *     checks against both models computed directly; jobs sent with
 *     `results: "stream"` have no first-stage Redis result but reach the
 *     second stage. */
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
#include "../harness/kt_job.h"
#include "../harness/kt_metrics.h"

#define WAIT_MS      120000
#define RESULTS      "kinfer.results"
#define RESULTS2     "kinfer.results2"
#define CLS_HID      5
#define CLS_OUT      3
#define N_STREAMONLY 20

/* Waits until at least n results are in Redis (a kill must land mid-run). */
static void wait_count(fx_t *fx, long long n)
{
        long long deadline = kt_now_ms() + WAIT_MS;
        while (fx_count_results(fx, fx->n_jobs) < n) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("fewer than %lld results after %d ms", n, WAIT_MS);
                }
                fx_sleep_ms(20);
        }
}

static void assert_midrun(fx_t *fx, const char *what)
{
        long long done = fx_count_results(fx, fx->n_jobs);
        print_message("%s with %lld of %d results written\n", what, done, fx->n_jobs);
        if (done >= fx->n_jobs) {
                kt_stack_fail(&fx->stack);
                fail_msg("the backlog had drained before: %s", what);
        }
}

/* A worker's kinfer_results_* (its /metrics, --http). */
typedef struct rtm_s {
        long long produced, delivered, failed, unacked, committed, aborted, txn_count;
} rtm_t;

static rtm_t rt_metrics(fx_t *fx, int port)
{
        rtm_t m;
        const struct {
                const char *name;
                long long *v;
        } f[] = {{"kinfer_results_produced_total", &m.produced},
                 {"kinfer_results_delivered_total", &m.delivered},
                 {"kinfer_results_failed_total", &m.failed},
                 {"kinfer_results_unacknowledged", &m.unacked},
                 {"kinfer_results_transactions_committed_total", &m.committed},
                 {"kinfer_results_transactions_aborted_total", &m.aborted},
                 {"kinfer_results_transaction_seconds_count", &m.txn_count}};
        for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
                if ((*f[i].v = kt_scrape(port, f[i].name, NULL)) < 0) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("no %s on 127.0.0.1:%d", f[i].name, port);
                }
        print_message("port %d: produced %lld, delivered %lld, failed %lld, unacknowledged %lld, "
                      "transactions committed %lld (timed %lld), aborted %lld\n",
                      port, m.produced, m.delivered, m.failed, m.unacked, m.committed, m.txn_count,
                      m.aborted);
        return m;
}

/* What holds whatever happened, once a worker is idle: every message
 * produced ended delivered or failed, every committed transaction was
 * timed, and each abort is one the log reports ("aborting it"). */
static void assert_rt_settled(fx_t *fx, int slot, const rtm_t *m)
{
        int logged = fx_log_count(fx, slot, "aborting it and sending them again");
        if (m->unacked != 0 || m->produced != m->delivered + m->failed ||
            m->txn_count != m->committed || m->aborted != logged) {
                kt_stack_fail(&fx->stack);
                fail_msg("%s: result metrics inconsistent (unacknowledged %lld, produced %lld != "
                         "delivered %lld + failed %lld, %lld timed of %lld committed, %lld "
                         "aborted, the log reports %d)",
                         fx->stack.procs[slot].name, m->unacked, m->produced, m->delivered,
                         m->failed, m->txn_count, m->committed, m->aborted, logged);
        }
}

static void count_msg(fx_t *fx, const rd_kafka_message_t *rkm, void *opaque)
{
        (void)fx;
        (void)rkm;
        (void)opaque;
}

/* Reads `topic` from the beginning with read_committed until `want`
 * messages arrived and then idle_ms passed without one (a late duplicate
 * would show), or timeout_ms.  Calls cb for each. */
typedef void(msg_cb)(fx_t *fx, const rd_kafka_message_t *rkm, void *opaque);
static int read_topic(fx_t *fx, const char *topic, int want, int timeout_ms, int idle_ms,
                      msg_cb *cb, void *opaque)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_topic_partition_list_t *tl;
        rd_kafka_t *rk;
        char err[512], group[64];
        long long deadline = kt_now_ms() + timeout_ms, last = 0;
        int n = 0;

        snprintf(group, sizeof(group), "stream-check-%lld", kt_now_ms());
        assert_int_equal(
            rd_kafka_conf_set(conf, "bootstrap.servers", fx->stack.brokers, err, sizeof(err)),
            RD_KAFKA_CONF_OK);
        assert_int_equal(rd_kafka_conf_set(conf, "group.id", group, err, sizeof(err)), 0);
        assert_int_equal(rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof(err)),
                         0);
        assert_int_equal(
            rd_kafka_conf_set(conf, "isolation.level", "read_committed", err, sizeof(err)), 0);
        assert_int_equal(rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err)),
                         0);
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
        assert_non_null(rk);
        rd_kafka_poll_set_consumer(rk);
        tl = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(tl, topic, RD_KAFKA_PARTITION_UA);
        assert_int_equal(rd_kafka_subscribe(rk, tl), 0);
        rd_kafka_topic_partition_list_destroy(tl);
        while (kt_now_ms() < deadline && (n < want || kt_now_ms() - last < idle_ms)) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, 100);
                if (!rkm)
                        continue;
                if (!rkm->err) {
                        cb(fx, rkm, opaque);
                        n++;
                        last = kt_now_ms();
                }
                rd_kafka_message_destroy(rkm);
        }
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        return n;
}

/* The job index of an id "<tag>-NNNNN", or -1. */
static int job_index(fx_t *fx, const char *id, size_t len)
{
        size_t tl = strlen(fx->tag);
        char num[16];
        if (len <= tl + 1 || len - tl - 1 >= sizeof(num) || strncmp(id, fx->tag, tl) ||
            id[tl] != '-')
                return -1;
        memcpy(num, id + tl + 1, len - tl - 1);
        num[len - tl - 1] = '\0';
        return atoi(num) < fx->n_jobs ? atoi(num) : -1;
}

typedef struct seen_s {
        int *count;
        int mismatched, foreign, unkeyed;
} seen_t;

/* A result message: keyed by its job id, value equal to the Redis result. */
static void check_result_msg(fx_t *fx, const rd_kafka_message_t *rkm, void *opaque)
{
        seen_t *s = opaque;
        int i = job_index(fx, rkm->key, rkm->key_len);
        fx_job_t *job;
        redisReply *r;
        if (!rkm->key || i < 0) {
                s->foreign++;
                return;
        }
        job = &fx->jobs[i];
        if (s->count[i]++)
                return; /* counted; a duplicate fails below */
        r = fx_redis(fx, "GET kinfer:{%s}:result:%s", fx_user(fx, job->user), job->id);
        if (!r || r->type != REDIS_REPLY_STRING || r->len != rkm->len ||
            memcmp(r->str, rkm->payload, rkm->len)) {
                if (s->mismatched++ < 5)
                        print_message("result message of %s differs from its Redis result\n",
                                      job->id);
        }
        if (r)
                freeReplyObject(r);
}

/* 10,000 jobs, two exactly-once workers, one SIGKILLed twice mid-drain. */
static void test_exactly_once_kills(void **state)
{
        fx_t *fx = *state;
        const char *w1args[] = {"--results-topic",
                                RESULTS,
                                "--exactly-once",
                                "--transactional-id",
                                "rkeos-w1",
                                "--batch-max-jobs",
                                "64",
                                "--compute-threads",
                                "1",
                                NULL};
        const char *w2args[] = {"--results-topic",
                                RESULTS,
                                "--exactly-once",
                                "--transactional-id",
                                "rkeos-w2",
                                "--batch-max-jobs",
                                "64",
                                "--compute-threads",
                                "1",
                                NULL};
        seen_t seen = {0};
        int w1, w2, last[2], n, dups = 0, missing = 0, port2;
        long long t0;
        rtm_t m2;

        fx_setup_kafka(fx, "rkeos", 4, 10, NULL);
        fx_add_good(fx, 10000);
        fx_produce(fx, 0, fx->n_jobs);
        t0 = kt_now_ms();
        w1 = fx_worker(fx, "rkeos-w1", w1args);
        w2 = fx_http_worker(fx, "rkeos-w2", &port2, w2args);
        wait_count(fx, 2500);
        assert_midrun(fx, "first SIGKILL of rkeos-w1");
        assert_int_equal(kt_stack_kill(&fx->stack, w1, SIGKILL, 5000), 128 + SIGKILL);
        w1 = fx_worker(fx, "rkeos-w1", w1args);
        wait_count(fx, 6000);
        assert_midrun(fx, "second SIGKILL of rkeos-w1");
        assert_int_equal(kt_stack_kill(&fx->stack, w1, SIGKILL, 5000), 128 + SIGKILL);
        w1 = fx_worker(fx, "rkeos-w1", w1args);
        fx_wait_all(fx, WAIT_MS);
        print_message("10000 jobs drained in %lld ms\n", kt_now_ms() - t0);
        fx_check(fx);

        seen.count = calloc((size_t)fx->n_jobs, sizeof(int));
        assert_non_null(seen.count);
        n = read_topic(fx, RESULTS, fx->n_jobs, WAIT_MS, 3000, check_result_msg, &seen);
        for (int i = 0; i < fx->n_jobs; i++) {
                if (seen.count[i] == 0 && missing++ < 5)
                        print_message("no result message for %s\n", fx->jobs[i].id);
                if (seen.count[i] > 1 && dups++ < 5)
                        print_message("%d result messages for %s\n", seen.count[i], fx->jobs[i].id);
        }
        print_message("read_committed: %d messages, %d ids missing, %d duplicated, %d differing "
                      "from Redis, %d foreign\n",
                      n, missing, dups, seen.mismatched, seen.foreign);
        free(seen.count);
        if (missing || dups || seen.mismatched || seen.foreign || n != fx->n_jobs) {
                kt_stack_fail(&fx->stack);
                fail_msg("exactly once broken: %d messages for %d jobs", n, fx->n_jobs);
        }
        /* The worker never killed: transactions committed, its metrics
         * settled (it may have aborted some when w1 came and went) */
        m2 = rt_metrics(fx, port2);
        assert_rt_settled(fx, w2, &m2);
        if (m2.committed <= 0 || m2.delivered <= 0 || m2.delivered > fx->n_jobs) {
                kt_stack_fail(&fx->stack);
                fail_msg("rkeos-w2: %lld transactions committed, %lld results delivered",
                         m2.committed, m2.delivered);
        }
        last[0] = w1;
        last[1] = w2;
        fx_finish(fx, last, 2);
}

/* A zombie: a worker frozen (SIGSTOP) mid-drain past its session timeout,
 * its partitions given to the other, then thawed with batches in flight.
 * Its transactions must not commit results or offsets for partitions it
 * lost (the group generation sent with the offsets fences it): the result
 * topic still holds each job once. */
static void test_zombie_fenced(void **state)
{
        fx_t *fx = *state;
        const char *args[2][14] = {
            {"--results-topic", RESULTS, "--exactly-once", "--transactional-id", "rkzomb-w1",
             "--batch-max-jobs", "16", "--compute-threads", "1", "--grace-ms", "2000", NULL},
            {"--results-topic", RESULTS, "--exactly-once", "--transactional-id", "rkzomb-w2",
             "--batch-max-jobs", "16", "--compute-threads", "1", "--grace-ms", "2000", NULL}};
        seen_t seen = {0};
        int w[2], n, dups = 0, missing = 0, port0;
        rtm_t m0;

        fx_setup_kafka(fx, "rkzomb", 4, 8, NULL);
        fx_add_good(fx, 4000);
        fx_produce(fx, 0, fx->n_jobs);
        w[0] = fx_http_worker(fx, "rkzomb-w1", &port0, args[0]);
        w[1] = fx_worker(fx, "rkzomb-w2", args[1]);
        wait_count(fx, 800);
        assert_midrun(fx, "SIGSTOP of rkzomb-w1");
        assert_int_equal(kill(fx->stack.procs[w[0]].pid, SIGSTOP), 0);
        fx_sleep_ms(9000); /* the 6 s session timeout, and the rebalance */
        assert_midrun(fx, "SIGCONT of rkzomb-w1");
        assert_int_equal(kill(fx->stack.procs[w[0]].pid, SIGCONT), 0);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        seen.count = calloc((size_t)fx->n_jobs, sizeof(int));
        assert_non_null(seen.count);
        n = read_topic(fx, RESULTS, fx->n_jobs, WAIT_MS, 3000, check_result_msg, &seen);
        for (int i = 0; i < fx->n_jobs; i++) {
                missing += seen.count[i] == 0;
                dups += seen.count[i] > 1;
        }
        print_message("read_committed: %d messages, %d ids missing, %d duplicated, %d differing "
                      "from Redis; the zombie logged %d fenced or aborted transactions\n",
                      n, missing, dups, seen.mismatched,
                      fx_log_count(fx, w[0], "aborting it") +
                          fx_log_count(fx, w[0], "transaction was given up"));
        free(seen.count);
        if (missing || dups || seen.mismatched || seen.foreign || n != fx->n_jobs) {
                kt_stack_fail(&fx->stack);
                fail_msg("exactly once broken by a zombie: %d messages for %d jobs", n, fx->n_jobs);
        }
        /* The zombie's transactions with the offsets of partitions it lost
         * are refused: counted aborted, as many as its log reports */
        m0 = rt_metrics(fx, port0);
        assert_rt_settled(fx, w[0], &m0);
        if (m0.aborted <= 0 || m0.failed <= 0) {
                kt_stack_fail(&fx->stack);
                fail_msg("the zombie counts %lld transactions aborted, %lld messages failed",
                         m0.aborted, m0.failed);
        }
        fx_finish(fx, w, 2);
}

/* Writes the classifier (4 -> 5 relu -> 3 identity) and the reference's
 * input file: both models' weights and every job's rows, as JSON. */
static void write_chain_inputs(fx_t *fx, const char *json_path, float *cW1, float *cb1, float *cW2,
                               float *cb2)
{
        const int dims[] = {FX_OUT, CLS_HID, CLS_OUT};
        const char *const acts[] = {"relu", "identity"};
        const float *W[] = {cW1, cW2}, *b[] = {cb1, cb2};
        char path[600];
        FILE *fp;

        for (int i = 0; i < FX_OUT * CLS_HID; i++)
                cW1[i] = (float)((i * 37 % 11) - 5) / 4.0f;
        for (int i = 0; i < CLS_HID; i++)
                cb1[i] = (float)(i - 2) / 8.0f;
        for (int i = 0; i < CLS_HID * CLS_OUT; i++)
                cW2[i] = (float)((i * 13 % 7) - 3) / 3.0f;
        for (int i = 0; i < CLS_OUT; i++)
                cb2[i] = (float)i / 10.0f;
        snprintf(path, sizeof(path), "%s/cls.kmodel", fx->models_dir);
        assert_int_equal(kt_write_model(path, "cls", 2, dims, acts, W, b), 0);

        fp = fopen(json_path, "w");
        assert_non_null(fp);
#define ARR(name, a, n)                                                                            \
        do {                                                                                       \
                fprintf(fp, "\"%s\":[", name);                                                     \
                for (int q = 0; q < (n); q++)                                                      \
                        fprintf(fp, "%s%.9g", q ? "," : "", (double)(a)[q]);                       \
                fprintf(fp, "],");                                                                 \
        } while (0)
        fprintf(fp, "{");
        ARR("W1", fx->W1, FX_IN * FX_HID);
        ARR("b1", fx->b1, FX_HID);
        ARR("W2", fx->W2, FX_HID * FX_OUT);
        ARR("b2", fx->b2, FX_OUT);
        ARR("cW1", cW1, FX_OUT * CLS_HID);
        ARR("cb1", cb1, CLS_HID);
        ARR("cW2", cW2, CLS_HID * CLS_OUT);
        ARR("cb2", cb2, CLS_OUT);
        fprintf(fp, "\"dims\":[%d,%d,%d,%d,%d],\"jobs\":{", FX_IN, FX_HID, FX_OUT, CLS_HID,
                CLS_OUT);
        for (int i = 0; i < fx->n_jobs; i++) {
                fx_job_t *job = &fx->jobs[i];
                fprintf(fp, "%s\"%s\":{\"user\":\"%s\",\"x\":[", i ? "," : "", job->id,
                        fx_user(fx, job->user));
                for (int v = 0; v < job->rows * FX_IN; v++)
                        fprintf(fp, "%s%.9g", v ? "," : "", (double)job->x[v]);
                fprintf(fp, "]}");
        }
        fprintf(fp, "}}\n");
#undef ARR
        fclose(fp);
}

/* Two stages: mlp (8 -> 16 -> 4) on kinfer.jobs, results to kinfer.results;
 * cls (4 -> 5 -> 3) chained on kinfer.results, results to kinfer.results2;
 * `kinfer tail` prints those, numpy checks them. */
static void test_two_stage_chain(void **state)
{
        fx_t *fx = *state;
        float cW1[FX_OUT * CLS_HID], cb1[CLS_HID], cW2[CLS_HID * CLS_OUT], cb2[CLS_OUT];
        const char *s1[] = {"--results-topic", RESULTS, NULL};
        /* stage 2 exactly once: a clean run's transaction counts */
        const char *s2[] = {"--topic",         RESULTS,
                            "--group",         "kinfer-stage2",
                            "--chain-model",   "cls",
                            "--results-topic", RESULTS2,
                            "--exactly-once",  "--transactional-id",
                            "rkchain-s2",      NULL};
        char json[600], tail_out[600], cmd[2048];
        kt_msg_t msgs[N_STREAMONLY];
        msgpack_sbuffer sb[N_STREAMONLY];
        char ids[N_STREAMONLY][160];
        int w[3], n_stage1, total, port2, n2;
        rtm_t m2;

        fx_setup_kafka(fx, "rkchain", 4, 4, NULL);
        n_stage1 = fx_add_good(fx, 300) + 300;
        snprintf(json, sizeof(json), "%s/chain.json", fx->stack.dir);
        snprintf(tail_out, sizeof(tail_out), "%s/tail.jsonl", fx->stack.dir);
        /* stream-only jobs: in the fixture's job list for the reference, but
         * produced here (fx_wait_all would wait for their Redis results) */
        for (int k = 0; k < N_STREAMONLY; k++) {
                fx_job_t *job = &fx->jobs[fx_add_good(fx, 1)];
                float x[FX_MAXROWS * FX_IN];
                memcpy(x, job->x, sizeof(x));
                snprintf(ids[k], sizeof(ids[k]), "%s", job->id);
                msgpack_sbuffer_init(&sb[k]);
                {
                        /* kt_job_pack's map plus one key: packed by hand */
                        msgpack_packer pk;
                        msgpack_packer_init(&pk, &sb[k], msgpack_sbuffer_write);
                        msgpack_pack_map(&pk, 6);
#define S(str) (msgpack_pack_str(&pk, strlen(str)), msgpack_pack_str_body(&pk, str, strlen(str)))
                        S("v");
                        msgpack_pack_uint32(&pk, 2);
                        S("id");
                        S(job->id);
                        S("user");
                        S(fx_user(fx, job->user));
                        S("model");
                        S("mlp");
                        S("results");
                        S("stream");
                        S("input");
                        msgpack_pack_array(&pk, (size_t)job->rows);
                        for (int r = 0; r < job->rows; r++) {
                                msgpack_pack_array(&pk, FX_IN);
                                for (int c = 0; c < FX_IN; c++)
                                        msgpack_pack_float(&pk, x[r * FX_IN + c]);
                        }
#undef S
                }
                msgs[k] = (kt_msg_t){fx_user(fx, job->user), sb[k].data, sb[k].size, -1};
        }
        total = fx->n_jobs;
        write_chain_inputs(fx, json, cW1, cb1, cW2, cb2);

        w[0] = fx_worker(fx, "rkchain-s1a", s1);
        w[1] = fx_worker(fx, "rkchain-s1b", s1);
        w[2] = fx_http_worker(fx, "rkchain-s2", &port2, s2);
        fx->n_jobs = n_stage1; /* fx_produce and fx_wait_all: the normal jobs */
        fx_produce(fx, 0, n_stage1);
        assert_int_equal(kt_produce(fx->stack.brokers, FX_TOPIC, msgs, N_STREAMONLY), 0);
        for (int k = 0; k < N_STREAMONLY; k++)
                msgpack_sbuffer_destroy(&sb[k]);
        fx_wait_all(fx, WAIT_MS);
        fx->n_jobs = total;

        /* kinfer tail: every second-stage result, as JSON lines */
        snprintf(cmd, sizeof(cmd),
                 "%s/kinfer tail --brokers %s --topic %s --from-beginning --max %d --timeout 60 "
                 "> %s",
                 getenv("KINFER_BIN") ? getenv("KINFER_BIN") : "build", fx->stack.brokers, RESULTS2,
                 total, tail_out);
        assert_int_equal(system(cmd), 0);
        snprintf(cmd, sizeof(cmd), "/usr/bin/python3 tests/realkafka/chain_ref.py %s %s %d", json,
                 tail_out, total);
        if (system(cmd) != 0) {
                kt_stack_fail(&fx->stack);
                fail_msg("the second stage's results differ from the numpy reference (see above)");
        }
        /* A clean exactly-once run: every message a read_committed reader
         * finds is one the stage-2 worker counts delivered, none failed,
         * no transaction aborted */
        n2 = read_topic(fx, RESULTS2, total, WAIT_MS, 2000, count_msg, NULL);
        m2 = rt_metrics(fx, port2);
        assert_rt_settled(fx, w[2], &m2);
        if (n2 != total || m2.delivered != n2 || m2.produced != n2 || m2.failed != 0 ||
            m2.aborted != 0 || m2.committed <= 0) {
                kt_stack_fail(&fx->stack);
                fail_msg("stage 2: %d result messages read, its metrics: %lld produced, %lld "
                         "delivered, %lld failed, %lld transactions committed, %lld aborted",
                         n2, m2.produced, m2.delivered, m2.failed, m2.committed, m2.aborted);
        }
        /* stream only: no first-stage Redis result, a second-stage one */
        for (int k = 0; k < N_STREAMONLY; k++) {
                fx_job_t *job = &fx->jobs[n_stage1 + k];
                redisReply *r =
                    fx_redis(fx, "EXISTS kinfer:{%s}:result:%s", fx_user(fx, job->user), ids[k]);
                assert_non_null(r);
                if (r->integer != 0)
                        fail_msg("stream-only job %s has a Redis result", ids[k]);
                freeReplyObject(r);
                r = fx_redis(fx, "EXISTS kinfer:{%s}:result:%s:cls", fx_user(fx, job->user),
                             ids[k]);
                assert_non_null(r);
                if (r->integer != 1)
                        fail_msg("stream-only job %s: its chained job %s:cls has no result", ids[k],
                                 ids[k]);
                freeReplyObject(r);
        }
        fx->n_jobs = n_stage1; /* fx_finish's teardown */
        fx_finish(fx, w, 3);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_exactly_once_kills, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_zombie_fenced, fx_state_setup, fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_two_stage_chain, fx_state_setup,
                                            fx_state_teardown),
        };
        return fx_run(tests);
}
