/* test_real_rtsize.c - a result too large for the result topic, on a genuine
 * Apache Kafka 4.x in exactly-once mode: the broker refuses it (the topic's
 * max.message.bytes lowered to 20,000 with kt_stack_kafka_topic_config,
 * below what the producer allows), the transaction fails, and the worker
 * must neither loop on it nor hold the partition.
 *
 * One partition, so every job and every result share it: small jobs of two
 * fixture users, interleaved with jobs of a third user of 1,000 to 3,000
 * rows (16 bytes of output a row: the 1,000-row result fits alone, the
 * others do not).  A read_committed consumer must see exactly one message
 * per job: the small ones and the 1,000-row one byte for byte the Redis
 * result, each oversize one a too_large error result with its id and user,
 * naming the Redis result's size and the brokers' limit; Redis holds every
 * result (fx_check for the fixture's, ok and the right shape for the big
 * ones, charged once); the metrics count 4 too_large results.
 *
 * Against the code before the fix it fails in its bounded wait: the
 * transaction is aborted and redone forever, nothing after the first
 * oversize job is committed. */
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
#include "../harness/kt_metrics.h"
#include "kf_result.h"

#define RESULTS   "kinfer.results"
#define TOPIC_MAX "20000"
#define WIDE_USER "rkbig-wide"
#define N_SMALL   40
#define N_BIG     5

static const int big_rows[N_BIG] = {1500, 1000, 2000, 3000, 1500};

typedef struct seen_s {
        int small[N_SMALL];
        int big[N_BIG];
        char *big_val[N_BIG]; /* the first message of each, malloc'd */
        size_t big_len[N_BIG];
        int mismatched, foreign;
} seen_t;

/* Produces a job of WIDE_USER with `rows` rows of the fixture's model. */
static void produce_big(fx_t *fx, int k, int rows)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        char id[64];
        float *x = malloc(sizeof(float) * (size_t)rows * FX_IN);
        assert_non_null(x);
        for (int i = 0; i < rows * FX_IN; i++)
                x[i] = (float)((i * 7919 % 2001) - 1000) / 1000.0f;
        snprintf(id, sizeof(id), "%s-%d", WIDE_USER, k);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 5);
        msgpack_pack_str_with_body(&pk, "v", 1);
        msgpack_pack_uint32(&pk, 2);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_str_with_body(&pk, id, strlen(id));
        msgpack_pack_str_with_body(&pk, "user", 4);
        msgpack_pack_str_with_body(&pk, WIDE_USER, strlen(WIDE_USER));
        msgpack_pack_str_with_body(&pk, "model", 5);
        msgpack_pack_str_with_body(&pk, "mlp", 3);
        msgpack_pack_str_with_body(&pk, "input", 5);
        msgpack_pack_map(&pk, 3);
        msgpack_pack_str_with_body(&pk, "dtype", 5);
        msgpack_pack_str_with_body(&pk, "f32", 3);
        msgpack_pack_str_with_body(&pk, "shape", 5);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint32(&pk, (uint32_t)rows);
        msgpack_pack_uint32(&pk, FX_IN);
        msgpack_pack_str_with_body(&pk, "data", 4);
        msgpack_pack_bin_with_body(&pk, x, sizeof(float) * (size_t)rows * FX_IN); /* LE host */
        assert_int_equal(rd_kafka_producev(fx->producer, RD_KAFKA_V_TOPIC(FX_TOPIC),
                                           RD_KAFKA_V_KEY(WIDE_USER, strlen(WIDE_USER)),
                                           RD_KAFKA_V_VALUE(sb.data, sb.size),
                                           RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                           RD_KAFKA_V_END),
                         0);
        assert_int_equal(rd_kafka_flush(fx->producer, 30000), 0);
        msgpack_sbuffer_destroy(&sb);
        free(x);
}

static int small_index(fx_t *fx, const char *key, size_t len)
{
        for (int i = 0; i < fx->n_jobs; i++)
                if (strlen(fx->jobs[i].id) == len && !memcmp(fx->jobs[i].id, key, len))
                        return i;
        return -1;
}

static void on_msg(fx_t *fx, seen_t *s, const rd_kafka_message_t *rkm)
{
        size_t pl = strlen(WIDE_USER "-");
        int i;
        if (rkm->key && rkm->key_len > pl && !memcmp(rkm->key, WIDE_USER "-", pl)) {
                int k = atoi((const char *)rkm->key + pl);
                if (k < 0 || k >= N_BIG) {
                        s->foreign++;
                        return;
                }
                if (!s->big[k]++) {
                        s->big_val[k] = malloc(rkm->len);
                        assert_non_null(s->big_val[k]);
                        memcpy(s->big_val[k], rkm->payload, rkm->len);
                        s->big_len[k] = rkm->len;
                }
                return;
        }
        if (!rkm->key || (i = small_index(fx, rkm->key, rkm->key_len)) < 0) {
                s->foreign++;
                return;
        }
        if (!s->small[i]++) {
                fx_job_t *job = &fx->jobs[i];
                redisReply *r =
                    fx_redis(fx, "GET kinfer:{%s}:result:%s", fx_user(fx, job->user), job->id);
                if (!r || r->type != REDIS_REPLY_STRING || r->len != rkm->len ||
                    memcmp(r->str, rkm->payload, rkm->len))
                        s->mismatched++;
                if (r)
                        freeReplyObject(r);
        }
}

/* Reads RESULTS read_committed from the beginning until want messages came
 * and then idle_ms passed without one, or timeout_ms.  Returns how many. */
static int read_results(fx_t *fx, seen_t *s, int want, int timeout_ms, int idle_ms)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_topic_partition_list_t *tl;
        rd_kafka_t *rk;
        char err[512];
        long long deadline = kt_now_ms() + timeout_ms, last = 0;
        int n = 0;

        assert_int_equal(
            rd_kafka_conf_set(conf, "bootstrap.servers", fx->stack.brokers, err, sizeof(err)), 0);
        assert_int_equal(rd_kafka_conf_set(conf, "group.id", "rtsize-check", err, sizeof(err)), 0);
        assert_int_equal(
            rd_kafka_conf_set(conf, "isolation.level", "read_committed", err, sizeof(err)), 0);
        assert_int_equal(rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err)),
                         0);
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
        assert_non_null(rk);
        tl = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(tl, RESULTS, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
        assert_int_equal(rd_kafka_assign(rk, tl), 0);
        rd_kafka_topic_partition_list_destroy(tl);
        while (kt_now_ms() < deadline && (n < want || kt_now_ms() - last < idle_ms)) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, 100);
                if (!rkm)
                        continue;
                if (!rkm->err) {
                        on_msg(fx, s, rkm);
                        n++;
                        last = kt_now_ms();
                }
                rd_kafka_message_destroy(rkm);
        }
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        return n;
}

#define FAILF(...)                                                                                 \
        do {                                                                                       \
                kt_stack_fail(&fx->stack);                                                         \
                fail_msg(__VA_ARGS__);                                                             \
        } while (0)

static void check_big(fx_t *fx, seen_t *s, int k)
{
        kf_result_t stored, msg;
        char err[256], key[128], want[64];
        redisReply *r;
        int over = big_rows[k] * FX_OUT * 4 > 20000;

        snprintf(key, sizeof(key), "kinfer:{%s}:result:%s-%d", WIDE_USER, WIDE_USER, k);
        r = fx_redis(fx, "GET %s", key);
        if (!r || r->type != REDIS_REPLY_STRING)
                FAILF("%s: no Redis result", key);
        memset(&stored, 0, sizeof(stored));
        memset(&msg, 0, sizeof(msg));
        if (kf_result_decode(r->str, r->len, &stored, err, sizeof(err)) || !stored.ok ||
            stored.rows != (uint32_t)big_rows[k] || stored.cols != FX_OUT)
                FAILF("%s: Redis result not an ok %d x %d one (%s)", key, big_rows[k], FX_OUT, err);
        if (s->big[k] != 1)
                FAILF("%s-%d: %d result messages", WIDE_USER, k, s->big[k]);
        if (!over) {
                if (s->big_len[k] != r->len || memcmp(s->big_val[k], r->str, r->len))
                        FAILF("%s-%d (fits): result message differs from Redis", WIDE_USER, k);
        } else {
                if (kf_result_decode(s->big_val[k], s->big_len[k], &msg, err, sizeof(err)) ||
                    msg.ok || strcmp(msg.error, "too_large") || strcmp(msg.id, stored.id) ||
                    strcmp(msg.user, WIDE_USER) || strcmp(msg.source, stored.source) ||
                    msg.done != stored.done)
                        FAILF("%s-%d: not the too_large result of its Redis result: %s %s (%s)",
                              WIDE_USER, k, msg.error, msg.message, err);
                snprintf(want, sizeof(want), "value %zu bytes", (size_t)r->len);
                if (!strstr(msg.message, want) || !strstr(msg.message, "the brokers' limit") ||
                    !strstr(msg.message, "in Redis"))
                        FAILF("%s-%d: message does not say '%s', the limit, Redis: %s", WIDE_USER,
                              k, want, msg.message);
                print_message("%s-%d: %s\n", WIDE_USER, k, msg.message);
        }
        kf_result_clear(&stored);
        kf_result_clear(&msg);
        freeReplyObject(r);
}

static void test_oversize_exactly_once(void **state)
{
        fx_t *fx = *state;
        const char *args[] = {"--results-topic",
                              RESULTS,
                              "--exactly-once",
                              "--transactional-id",
                              "rkbig-w1",
                              "--batch-max-jobs",
                              "16",
                              NULL};
        seen_t seen = {0};
        int w, port, n, over = 0, logged;
        long long t0, too_large, aborted, produced, delivered, failed;

        fx_setup_kafka(fx, "rkbig", 1, 2, NULL);
        assert_int_equal(
            kt_stack_kafka_topic_config(&fx->stack, RESULTS, "max.message.bytes", TOPIC_MAX), 0);
        fx_add_good(fx, N_SMALL);
        fx_produce(fx, 0, 10);
        produce_big(fx, 0, big_rows[0]);
        produce_big(fx, 1, big_rows[1]);
        fx_produce(fx, 10, 25);
        produce_big(fx, 2, big_rows[2]);
        produce_big(fx, 3, big_rows[3]);
        fx_produce(fx, 25, 35);
        produce_big(fx, 4, big_rows[4]);
        fx_produce(fx, 35, N_SMALL);
        t0 = kt_now_ms();
        w = fx_http_worker(fx, "rkbig-w1", &port, args);
        n = read_results(fx, &seen, N_SMALL + N_BIG, 20000, 2000);
        print_message("read_committed: %d messages in %lld ms\n", n, kt_now_ms() - t0);
        for (int i = 0; i < N_SMALL; i++)
                if (seen.small[i] != 1)
                        FAILF("%s: %d result messages (of %d read: a stalled partition?)",
                              fx->jobs[i].id, seen.small[i], n);
        if (seen.mismatched || seen.foreign || n != N_SMALL + N_BIG)
                FAILF("%d messages for %d jobs, %d differing from Redis, %d foreign", n,
                      N_SMALL + N_BIG, seen.mismatched, seen.foreign);
        for (int k = 0; k < N_BIG; k++) {
                over += big_rows[k] * FX_OUT * 4 > 20000;
                check_big(fx, &seen, k);
                free(seen.big_val[k]);
        }
        fx_check(fx);
        {
                redisReply *r = fx_redis(fx, "HGET kinfer:{%s}:usage jobs", WIDE_USER);
                if (!r || r->type != REDIS_REPLY_STRING || atoi(r->str) != N_BIG)
                        FAILF("%s charged %s jobs, want %d", WIDE_USER, r ? r->str : "?", N_BIG);
                freeReplyObject(r);
        }
        too_large = kt_scrape(port, "kinfer_results_too_large_total", NULL);
        aborted = kt_scrape(port, "kinfer_results_transactions_aborted_total", NULL);
        produced = kt_scrape(port, "kinfer_results_produced_total", NULL);
        delivered = kt_scrape(port, "kinfer_results_delivered_total", NULL);
        failed = kt_scrape(port, "kinfer_results_failed_total", NULL);
        /* every abort is logged: as a failed transaction, or as the
         * replacement of the result whose refusal failed it */
        logged = fx_log_count(fx, w, "aborting it and sending them again") +
                 fx_log_count(fx, w, "a too_large error result is sent in its place");
        print_message("too_large %lld, aborted %lld (logged %d), produced %lld, delivered %lld, "
                      "failed %lld\n",
                      too_large, aborted, logged, produced, delivered, failed);
        if (too_large != over || delivered != N_SMALL + N_BIG || produced != delivered + failed ||
            aborted != logged || aborted < over)
                FAILF("metrics: too_large %lld (want %d), delivered %lld (want %d), produced %lld, "
                      "failed %lld, aborted %lld, logged %d",
                      too_large, over, delivered, N_SMALL + N_BIG, produced, failed, aborted,
                      logged);
        if (fx_log_count(fx, w, "a too_large error result is sent in its place") != over)
                FAILF("not one log line per too_large result");
        fx_finish(fx, &w, 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_oversize_exactly_once, fx_state_setup,
                                            fx_state_teardown),
        };
        return fx_run(tests);
}
