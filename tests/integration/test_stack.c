/* test_stack.c - proves the test harness and kinfer-devbroker are real: a live redis,
 * a Kafka round trip through the mock cluster, fault commands, process control. */
/* cmocka.h needs these first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include "../harness/stack.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_MSGS       100
#define JOBS_TOPIC   "kinfer.jobs"
#define RET_TOPIC    "kt.retention"
#define RET_MSG_SIZE (10 * 1024)
#define RET_MSGS     800 /* 8 MB into one partition, well past the mock's 5 MiB */

typedef struct dr_count_s {
        int ok, failed;
} dr_count_t;

static int setup(void **state)
{
        kt_stack_t *s = calloc(1, sizeof(*s));
        if (!s || kt_stack_init(s)) {
                free(s);
                return -1;
        }
        /* Failed until the test reaches its end: an assert jumps straight to the
         * teardown, which then keeps the directory and prints the logs. */
        s->failed = 1;
        *state = s;
        return 0;
}

static int teardown(void **state)
{
        kt_stack_t *s = *state;
        kt_stack_stop(s);
        free(s);
        return 0;
}

static void passed(kt_stack_t *s)
{
        s->failed = 0;
}

static int redis_ping(kt_stack_t *s)
{
        redisContext *c = kt_stack_redis(s);
        redisReply *r = c ? redisCommand(c, "PING") : NULL;
        int ok = r && r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "PONG");
        if (r)
                freeReplyObject(r);
        if (c)
                redisFree(c);
        return ok;
}

/* A whole small file as a string, or NULL. Caller frees. */
static char *read_file(const char *path)
{
        FILE *fp = fopen(path, "r");
        char *buf = NULL;
        size_t n;
        if (!fp)
                return NULL;
        if ((buf = calloc(1, 4096))) {
                n = fread(buf, 1, 4095, fp);
                buf[n] = '\0';
        }
        fclose(fp);
        return buf;
}

static void test_run(void **state)
{
        kt_stack_t *s = *state;
        const char *echo[] = {"/bin/echo", "hi", NULL};
        const char *exit3[] = {"/bin/sh", "-c", "exit 3", NULL};
        const char *slow[] = {"/bin/sleep", "10", NULL};
        const char *term[] = {"/bin/sh", "-c", "kill -TERM $$", NULL};
        const char *cat[] = {"/bin/cat", NULL};
        const char *nope[] = {"kinfer-no-such-program", NULL};
        char path[600];
        char *out = NULL;
        long long t0;
        FILE *fp;

        assert_int_equal(kt_stack_run(s, echo, NULL, &out, 5000), 0);
        assert_non_null(out);
        assert_string_equal(out, "hi\n");
        free(out);

        assert_int_equal(kt_stack_run(s, exit3, NULL, NULL, 5000), 3);
        assert_int_equal(kt_stack_run(s, term, NULL, NULL, 5000), 128 + SIGTERM);

        t0 = kt_now_ms();
        assert_int_equal(kt_stack_run(s, slow, NULL, &out, 300), -1);
        assert_null(out);
        assert_true(kt_now_ms() - t0 < 3000);

        snprintf(path, sizeof(path), "%s/stdin.txt", s->dir);
        assert_non_null(fp = fopen(path, "w"));
        fputs("line one\nline two\n", fp);
        fclose(fp);
        assert_int_equal(kt_stack_run(s, cat, path, &out, 5000), 0);
        assert_string_equal(out, "line one\nline two\n");
        free(out);

        /* A bare name is looked up in KINFER_BIN: missing means "could not run". */
        assert_int_equal(kt_stack_run(s, nope, NULL, NULL, 5000), -1);
        passed(s);
}

static void test_spawn(void **state)
{
        kt_stack_t *s = *state;
        const char *sh[] = {"/bin/sh", "-c",
                            "echo \"redis=$KINFER_REDIS extra=$KT_EXTRA\"; exec sleep 30", NULL};
        const char *quick[] = {"/bin/sh", "-c", "exit 7", NULL};
        const char *env[] = {"KT_EXTRA=yes", NULL};
        char *log = NULL;
        int slot, quick_slot;
        long long t0;

        setenv("KINFER_REDIS", "redis://must-not-leak:1/0", 1);
        slot = kt_stack_spawn(s, "sleeper", sh, env);
        unsetenv("KINFER_REDIS");
        assert_true(slot >= 0);
        quick_slot = kt_stack_spawn(s, "quick", quick, NULL);
        assert_true(quick_slot >= 0);
        assert_int_equal(kt_stack_wait(s, quick_slot, 5000), 7);

        /* Still running: a wait times out and leaves it alone. */
        assert_int_equal(kt_stack_wait(s, slot, 100), -1);
        t0 = kt_now_ms();
        while (kt_now_ms() - t0 < 5000 && (!log || !strchr(log, '\n'))) {
                free(log);
                log = read_file(s->procs[slot].log);
                usleep(20 * 1000);
        }
        assert_non_null(log);
        /* No redis in this stack: the inherited value must be gone, not passed on. */
        assert_string_equal(log, "redis= extra=yes\n");
        free(log);
        assert_int_equal(kt_stack_kill(s, slot, SIGTERM, 5000), 128 + SIGTERM);
        assert_int_equal(s->procs[slot].pid, 0);
        passed(s);
}

static void test_redis(void **state)
{
        kt_stack_t *s = *state;
        const char *echo[] = {"/bin/sh", "-c", "echo $KINFER_REDIS", NULL};
        redisContext *c;
        redisReply *r;
        char want[160];
        char *out = NULL;
        int port;

        assert_int_equal(kt_stack_start_redis(s, NULL), 0);
        assert_true(s->redis_port > 0);
        port = s->redis_port;

        assert_non_null(c = kt_stack_redis(s));
        assert_non_null(r = redisCommand(c, "SET kt:key hello"));
        assert_int_equal(r->type, REDIS_REPLY_STATUS);
        freeReplyObject(r);
        assert_non_null(r = redisCommand(c, "GET kt:key"));
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_string_equal(r->str, "hello");
        freeReplyObject(r);
        redisFree(c);

        assert_int_equal(kt_stack_run(s, echo, NULL, &out, 5000), 0);
        snprintf(want, sizeof(want), "%s\n", s->redis_url);
        assert_string_equal(out, want);
        free(out);

        /* Stopped: the kernel may still accept, but nothing answers. */
        assert_int_equal(kt_stack_signal_redis(s, SIGSTOP), 0);
        assert_false(redis_ping(s));
        assert_int_equal(kt_stack_signal_redis(s, SIGCONT), 0);
        assert_true(redis_ping(s));

        assert_int_equal(kt_stack_signal_redis(s, SIGKILL), 128 + SIGKILL);
        assert_int_equal(s->redis.pid, 0);
        assert_false(redis_ping(s));
        assert_int_equal(kt_stack_restart_redis(s), 0);
        assert_int_equal(s->redis_port, port);
        assert_true(redis_ping(s));

        /* No persistence by default: the restart starts empty. */
        assert_non_null(c = kt_stack_redis(s));
        assert_non_null(r = redisCommand(c, "EXISTS kt:key"));
        assert_int_equal(r->integer, 0);
        freeReplyObject(r);
        redisFree(c);
        passed(s);
}

/* extra_args reach redis-server, and a restart keeps them: with an AOF the data
 * survives, which is what durability tests build on. */
static void test_redis_persistent(void **state)
{
        kt_stack_t *s = *state;
        const char *aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
        redisContext *c;
        redisReply *r;

        assert_int_equal(kt_stack_start_redis(s, aof), 0);
        assert_non_null(c = kt_stack_redis(s));
        assert_non_null(r = redisCommand(c, "SET kt:durable 42"));
        freeReplyObject(r);
        redisFree(c);

        assert_int_equal(kt_stack_signal_redis(s, SIGKILL), 128 + SIGKILL);
        assert_int_equal(kt_stack_restart_redis(s), 0);
        assert_non_null(c = kt_stack_redis(s));
        assert_non_null(r = redisCommand(c, "GET kt:durable"));
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_string_equal(r->str, "42");
        freeReplyObject(r);
        redisFree(c);
        passed(s);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        dr_count_t *dr = opaque;
        (void)rk;
        if (rkm->err) {
                fprintf(stderr, "delivery failed: %s\n", rd_kafka_err2str(rkm->err));
                dr->failed++;
        } else {
                dr->ok++;
        }
}

static rd_kafka_t *new_producer(kt_stack_t *s, dr_count_t *dr)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        char errstr[256];
        rd_kafka_t *rk;

        if (rd_kafka_conf_set(conf, "bootstrap.servers", s->brokers, errstr, sizeof(errstr)) ||
            rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr)) ||
            rd_kafka_conf_set(conf, "acks", "all", errstr, sizeof(errstr))) {
                fprintf(stderr, "producer conf: %s\n", errstr);
                rd_kafka_conf_destroy(conf);
                return NULL;
        }
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
        rd_kafka_conf_set_opaque(conf, dr);
        if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr)))) {
                fprintf(stderr, "producer: %s\n", errstr);
                rd_kafka_conf_destroy(conf);
        }
        return rk;
}

static void produce_jobs(kt_stack_t *s)
{
        dr_count_t dr = {0};
        rd_kafka_t *rk;

        assert_non_null(rk = new_producer(s, &dr));
        for (int i = 0; i < N_MSGS; i++) {
                char payload[32];
                int n = snprintf(payload, sizeof(payload), "kt-job-%03d", i);
                assert_int_equal(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(JOBS_TOPIC),
                                                   RD_KAFKA_V_KEY(payload, (size_t)n),
                                                   RD_KAFKA_V_VALUE(payload, (size_t)n),
                                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                                   RD_KAFKA_V_END),
                                 RD_KAFKA_RESP_ERR_NO_ERROR);
        }
        assert_int_equal(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
        rd_kafka_destroy(rk);
        assert_int_equal(dr.failed, 0);
        assert_int_equal(dr.ok, N_MSGS);
}

static void consume_jobs(kt_stack_t *s)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_topic_partition_list_t *topics;
        int seen[N_MSGS] = {0};
        int received = 0, strays = 0;
        long long deadline, quiet_until = 0;
        char errstr[256];
        rd_kafka_t *rk;

        assert_int_equal(
            rd_kafka_conf_set(conf, "bootstrap.servers", s->brokers, errstr, sizeof(errstr)),
            RD_KAFKA_CONF_OK);
        assert_int_equal(rd_kafka_conf_set(conf, "group.id", "kt-smoke", errstr, sizeof(errstr)),
                         RD_KAFKA_CONF_OK);
        assert_int_equal(
            rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, sizeof(errstr)),
            RD_KAFKA_CONF_OK);
        assert_non_null(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr)));
        rd_kafka_poll_set_consumer(rk);
        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, JOBS_TOPIC, RD_KAFKA_PARTITION_UA);
        assert_int_equal(rd_kafka_subscribe(rk, topics), RD_KAFKA_RESP_ERR_NO_ERROR);
        rd_kafka_topic_partition_list_destroy(topics);

        /* The mock delays a new group's first join by 3 s, like a real broker's
         * group.initial.rebalance.delay.ms; then keep polling a moment after the
         * last message so that a duplicate would show up. */
        deadline = kt_now_ms() + 20000;
        while (kt_now_ms() < deadline && (!quiet_until || kt_now_ms() < quiet_until)) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, 100);
                int idx;
                if (!rkm)
                        continue;
                if (rkm->err) {
                        fprintf(stderr, "consumer: %s\n", rd_kafka_message_errstr(rkm));
                } else if (rkm->len == 10 &&
                           sscanf((const char *)rkm->payload, "kt-job-%3d", &idx) == 1 &&
                           idx >= 0 && idx < N_MSGS) {
                        seen[idx]++;
                        if (++received == N_MSGS)
                                quiet_until = kt_now_ms() + 1000;
                } else {
                        strays++;
                }
                rd_kafka_message_destroy(rkm);
        }
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);

        assert_int_equal(strays, 0);
        for (int i = 0; i < N_MSGS; i++) {
                if (seen[i] != 1)
                        fprintf(stderr, "kt-job-%03d arrived %d times\n", i, seen[i]);
                assert_int_equal(seen[i], 1);
        }
}

/* Topic layout as clients see it over the protocol. */
static int topic_partitions(kt_stack_t *s, const char *topic)
{
        dr_count_t dr = {0};
        const struct rd_kafka_metadata *md;
        rd_kafka_t *rk = new_producer(s, &dr);
        int n = -1;

        if (!rk)
                return -1;
        if (!rd_kafka_metadata(rk, 1, NULL, &md, 5000)) {
                for (int i = 0; i < md->topic_cnt; i++)
                        if (!strcmp(md->topics[i].topic, topic) && !md->topics[i].err)
                                n = md->topics[i].partition_cnt;
                rd_kafka_metadata_destroy(md);
        }
        rd_kafka_destroy(rk);
        return n;
}

static void test_broker(void **state)
{
        kt_stack_t *s = *state;

        assert_int_equal(kt_stack_start_broker(s, 2, 3), 0);
        /* Two brokers: two loopback addresses. */
        assert_non_null(strchr(s->brokers, ','));
        assert_int_equal(topic_partitions(s, JOBS_TOPIC), 3);
        assert_int_equal(topic_partitions(s, "kinfer.dlq"), 3);

        produce_jobs(s);
        consume_jobs(s);

        assert_int_equal(kt_stack_broker_cmd(s, "ping"), 0);
        assert_int_equal(kt_stack_broker_cmd(s, "broker-down 1"), 0);
        assert_int_equal(kt_stack_broker_cmd(s, "broker-up 1"), 0);
        assert_int_equal(kt_stack_broker_cmd(s, "leader kinfer.jobs 0 2"), 0);
        assert_int_equal(kt_stack_broker_cmd(s, "coordinator group kt-smoke 1"), 0);
        assert_int_equal(kt_stack_broker_cmd(s, "request-errors Produce NOT_LEADER_FOR_PARTITION"),
                         0);
        assert_int_equal(kt_stack_broker_cmd(s, "clear-errors 0"), 0);
        assert_int_equal(kt_stack_broker_cmd(s, "rtt -1 0"), 0);
        /* Errors are answered, and the channel stays in step afterwards. */
        assert_int_equal(kt_stack_broker_cmd(s, "no-such-command"), -1);
        assert_int_equal(kt_stack_broker_cmd(s, "broker-down 3"), -1);
        assert_int_equal(kt_stack_broker_cmd(s, "leader no.such.topic 0 1"), -1);
        assert_int_equal(kt_stack_broker_cmd(s, "ping"), 0);
        passed(s);
}

/* The mock keeps about 5 MiB per partition (librdkafka rdkafka_mock.c,
 * mpart->max_size) and drops the oldest batches past that, like retention.
 * docs/devbroker.md promises this; if librdkafka changes it, this fails. */
static void test_retention(void **state)
{
        kt_stack_t *s = *state;
        dr_count_t dr = {0};
        char *payload;
        int64_t lo = -1, hi = -1;
        double kept_mib;
        rd_kafka_t *rk;

        assert_int_equal(kt_stack_start_broker(s, 1, 1), 0);
        assert_int_equal(kt_stack_broker_cmd(s, "create-topic " RET_TOPIC " 1"), 0);
        assert_non_null(rk = new_producer(s, &dr));
        assert_non_null(payload = malloc(RET_MSG_SIZE));
        memset(payload, 'x', RET_MSG_SIZE);
        for (int i = 0; i < RET_MSGS; i++) {
                rd_kafka_resp_err_t err;
                while ((err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(RET_TOPIC),
                                                RD_KAFKA_V_PARTITION(0),
                                                RD_KAFKA_V_VALUE(payload, RET_MSG_SIZE),
                                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                                RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        rd_kafka_poll(rk, 10);
                assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
        }
        free(payload);
        assert_int_equal(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
        assert_int_equal(dr.ok, RET_MSGS);
        assert_int_equal(rd_kafka_query_watermark_offsets(rk, RET_TOPIC, 0, &lo, &hi, 5000),
                         RD_KAFKA_RESP_ERR_NO_ERROR);
        rd_kafka_destroy(rk);

        kept_mib = (double)(hi - lo) * RET_MSG_SIZE / (1024.0 * 1024.0);
        fprintf(stderr,
                "retention: wrote %d x %d B = %.1f MiB, kept offsets %lld..%lld = %.2f MiB\n",
                RET_MSGS, RET_MSG_SIZE, RET_MSGS * (double)RET_MSG_SIZE / (1024.0 * 1024.0),
                (long long)lo, (long long)hi, kept_mib);
        assert_int_equal(hi, RET_MSGS);
        assert_true(lo > 0);
        /* Whole batches (up to ~1 MB each) are dropped, so anywhere in 4..5 MiB. */
        assert_true(kept_mib <= 5.0);
        assert_true(kept_mib >= 3.5);
        passed(s);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_run, setup, teardown),
            cmocka_unit_test_setup_teardown(test_spawn, setup, teardown),
            cmocka_unit_test_setup_teardown(test_redis, setup, teardown),
            cmocka_unit_test_setup_teardown(test_redis_persistent, setup, teardown),
            cmocka_unit_test_setup_teardown(test_broker, setup, teardown),
            cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
