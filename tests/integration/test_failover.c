/* test_failover.c - the worker follows a Redis failover: two real
 * redis-servers, a master and its replica, behind a forwarder standing for
 * the virtual IP or DNS name clients use.  Jobs flow; the replica is
 * promoted (FAILOVER: the old master pauses writers, waits for the replica
 * to catch up, and becomes its replica) and the address moves.  The worker's
 * open connections still reach the old master, which now answers READONLY:
 * the worker must drop them and connect again, and every job gets its
 * result on the new master, charged once. */
/* cmocka.h needs these first, in this order. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <arpa/inet.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../harness/kt_job.h"
#include "../harness/kt_proxy.h"
#include "../harness/stack.h"

#define N_JOBS 300 /* per phase */

static redisContext *connect_port(int port)
{
        redisContext *c = redisConnect("127.0.0.1", port);
        assert_non_null(c);
        assert_int_equal(c->err, 0);
        return c;
}

/* 1 if INFO replication has the line `want` (e.g. "role:master"). */
static int info_has(redisContext *c, const char *want)
{
        redisReply *r = redisCommand(c, "INFO replication");
        int has = r && r->type == REDIS_REPLY_STRING && strstr(r->str, want) != NULL;
        freeReplyObject(r);
        return has;
}

static void wait_for(redisContext *c, const char *want, int timeout_ms)
{
        long long until = kt_now_ms() + timeout_ms;
        while (!info_has(c, want)) {
                if (kt_now_ms() > until)
                        fail_msg("redis never reported %s", want);
                kt_sleep_ms(50);
        }
}

static void produce_phase(kt_stack_t *s, int first)
{
        kt_msg_t *msgs = calloc(N_JOBS, sizeof(*msgs));
        msgpack_sbuffer *bufs = calloc(N_JOBS, sizeof(*bufs));
        for (int i = 0; i < N_JOBS; i++) {
                char id[32];
                float x[2] = {(float)(first + i), 1};
                snprintf(id, sizeof(id), "fo-%d", first + i);
                msgpack_sbuffer_init(&bufs[i]);
                kt_job_pack(&bufs[i], id, "fo", "lin", x, 1, 2, NULL, 0);
                msgs[i] = (kt_msg_t){"fo", bufs[i].data, bufs[i].size, -1};
        }
        assert_int_equal(kt_produce(s->brokers, "kinfer.jobs", msgs, N_JOBS), 0);
        for (int i = 0; i < N_JOBS; i++)
                msgpack_sbuffer_destroy(&bufs[i]);
        free(bufs);
        free(msgs);
}

/* Waits until jobs 0..n-1 all have results on c; checks each output. */
static void wait_results(kt_stack_t *s, redisContext *c, int n, int timeout_ms)
{
        long long until = kt_now_ms() + timeout_ms;
        for (int i = 0; i < n; i++) {
                kf_result_t r;
                char id[32];
                int rc;
                snprintf(id, sizeof(id), "fo-%d", i);
                while ((rc = kt_result_get(c, "fo", id, &r)) == 0) {
                        if (kt_now_ms() > until) {
                                kt_stack_fail(s);
                                fail_msg("job %s: no result on the master after %d ms", id,
                                         timeout_ms);
                        }
                        kt_sleep_ms(50);
                }
                assert_int_equal(rc, 1);
                assert_true(r.ok);
                assert_true(r.output[0] == 2.0f * (float)i + 1.0f);
                kf_result_clear(&r);
        }
}

static void test_follows_failover(void **state)
{
        kt_stack_t s;
        kt_proxy_t *px;
        redisContext *a, *b;
        char models[300], url[64], port_b[16], port_a[16];
        int pb = kt_free_port();
        (void)state;
        assert_true(pb > 0);

        assert_int_equal(kt_stack_init(&s), 0);
        assert_int_equal(kt_stack_start_redis(&s, NULL), 0);
        assert_int_equal(kt_stack_start_broker(&s, 1, 2), 0);
        assert_int_equal(kt_stack_models_dir(&s, models, sizeof(models)), 0);
        assert_int_equal(kt_write_lin_model(models), 0); /* y = (2 x0 + 1, 3 x1 + 1) */

        snprintf(port_a, sizeof(port_a), "%d", s.redis_port);
        snprintf(port_b, sizeof(port_b), "%d", pb);
        {
                const char *argv[] = {"/usr/bin/redis-server",
                                      "--port",
                                      port_b,
                                      "--bind",
                                      "127.0.0.1",
                                      "--save",
                                      "",
                                      "--appendonly",
                                      "no",
                                      "--dir",
                                      s.dir,
                                      "--dbfilename",
                                      "replica.rdb",
                                      "--replicaof",
                                      "127.0.0.1",
                                      port_a,
                                      NULL};
                assert_true(kt_stack_spawn(&s, "redis-replica", argv, NULL) >= 0);
        }
        kt_sleep_ms(300);
        a = connect_port(s.redis_port);
        b = connect_port(pb);
        wait_for(b, "master_link_status:up", 20000);

        px = kt_proxy_start(s.redis_port);
        assert_non_null(px);
        snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", kt_proxy_port(px));
        {
                const char *argv[] = {"kinfer-worker", "--models", models, "--redis", url,
                                      "--worker-id",   "fo-w1",    NULL};
                assert_true(kt_stack_spawn(&s, "fo-w1", argv, NULL) >= 0);
        }
        produce_phase(&s, 0);
        wait_results(&s, a, N_JOBS, 60000);

        /* the address moves to the replica, which is promoted */
        kt_proxy_retarget(px, pb);
        {
                redisReply *r = redisCommand(a, "FAILOVER TO 127.0.0.1 %d TIMEOUT 10000", pb);
                assert_non_null(r);
                if (r->type == REDIS_REPLY_ERROR)
                        fail_msg("FAILOVER: %s", r->str);
                freeReplyObject(r);
        }
        wait_for(b, "role:master", 20000);
        wait_for(a, "role:slave", 20000);

        produce_phase(&s, N_JOBS);
        wait_results(&s, b, 2 * N_JOBS, 60000);
        assert_int_equal(kt_usage(b, "fo", NULL, "jobs"), 2 * N_JOBS);
        assert_int_equal(kt_usage(b, "fo", NULL, "errors"), 0);

        redisFree(a);
        redisFree(b);
        kt_stack_stop(&s);
        kt_proxy_stop(px);
}

int main(void)
{
        const struct CMUnitTest tests[] = {cmocka_unit_test(test_follows_failover)};
        return cmocka_run_group_tests(tests, NULL, NULL);
}
