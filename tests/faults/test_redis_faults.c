/* test_redis_faults.c - Redis misbehaving under the workers while jobs flow:
 * killed and restarted (with an append-only file, so what it acknowledged
 * survives), frozen past the workers' command timeout, its script cache
 * flushed, and out of memory.  Each case ends with fx_check: every job
 * exactly one result, announced on its inbox, usage exact (see faults.h). */
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

#include "../harness/kt_job.h"

#define WAIT_MS 120000

/* Starts two workers on a running stream and waits for `n` results. */
static void two_workers(fx_t *fx, int *w, long long n)
{
        w[0] = fx_worker(fx, "w1", NULL);
        w[1] = fx_worker(fx, "w2", NULL);
        fx_wait_results(fx, fx->n_jobs, n, WAIT_MS);
}

/* How many replies with this error prefix Redis sent (INFO errorstats), or
 * -1. */
static long long errorstat(fx_t *fx, const char *code)
{
        redisReply *r = fx_redis(fx, "INFO errorstats");
        char want[64];
        const char *p;
        long long v = 0;
        if (!r)
                return -1;
        snprintf(want, sizeof(want), "errorstat_%s:count=", code);
        if (r->type == REDIS_REPLY_STRING && (p = strstr(r->str, want)))
                v = atoll(p + strlen(want));
        freeReplyObject(r);
        return v;
}

/* Fails unless both workers are still running. */
static void workers_alive(fx_t *fx, const int *w)
{
        for (int i = 0; i < 2; i++)
                if (kt_stack_wait(&fx->stack, w[i], 0) != -1) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s exited during the Redis fault", fx->stack.procs[w[i]].name);
                }
}

/* redis-server SIGKILLed, left down for 20 s while jobs keep arriving, then
 * started again on the same port.  It runs with appendonly yes and
 * appendfsync always, so every step it acknowledged is on disk; the workers
 * wait the outage out, reconnect, reload the step script (a new server has
 * an empty script cache) and write everything exactly once. */
static void test_redis_killed_and_restarted(void **state)
{
        fx_t *fx = *state;
        const char *aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
        long long before, after;
        int w[2];

        fx_setup(fx, "rkill", 1, 4, 8, aof);
        fx_add_good(fx, 20000);
        fx_stream_start(fx, 0, fx->n_jobs, 150);
        two_workers(fx, w, 300);

        before = fx_count_results(fx, fx_produced(fx));
        assert_int_equal(kt_stack_signal_redis(&fx->stack, SIGKILL), 128 + SIGKILL);
        print_message("redis killed with %lld results written, %d jobs produced\n", before,
                      fx_produced(fx));
        fx_sleep_ms(20000); /* the outage itself */
        workers_alive(fx, w);
        assert_int_equal(kt_stack_restart_redis(&fx->stack), 0);
        /* It answers (LOADING) before its AOF is read back. */
        {
                long long deadline = kt_now_ms() + WAIT_MS;
                while (fx_redis_info(fx, "persistence", "loading") != 0) {
                        if (kt_now_ms() > deadline)
                                fail_msg("redis did not finish loading its AOF");
                        fx_sleep_ms(20);
                }
        }
        after = fx_count_results(fx, fx_produced(fx));
        print_message("redis restarted from its AOF with %lld results, %d jobs produced\n", after,
                      fx_produced(fx));
        /* Nothing acknowledged was lost with the process. */
        assert_true(after >= before);

        fx_wait_results(fx, fx->n_jobs, after + 300, WAIT_MS);
        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, w, 2);
}

/* redis-server frozen (SIGSTOP) for 5 s, five times the workers'
 * --redis-timeout-ms: their pipelined steps time out and the connection is
 * dropped, but the frozen server still holds those commands and runs them
 * when it is continued, while the workers resend the batch on a new
 * connection.  The step must make the resent copy a no-op. */
static void test_redis_paused(void **state)
{
        fx_t *fx = *state;
        long long before;
        int w[2];

        fx_setup(fx, "rpause", 1, 4, 8, NULL);
        fx_add_good(fx, 20000);
        fx_stream_start(fx, 0, fx->n_jobs, 150);
        two_workers(fx, w, 300);

        before = fx_count_results(fx, fx_produced(fx));
        assert_int_equal(kt_stack_signal_redis(&fx->stack, SIGSTOP), 0);
        fx_sleep_ms(5000); /* the freeze itself; nothing may talk to Redis */
        assert_int_equal(kt_stack_signal_redis(&fx->stack, SIGCONT), 0);
        workers_alive(fx, w);
        print_message("redis frozen for 5 s at %lld results\n", before);

        fx_wait_results(fx, fx->n_jobs, fx_count_results(fx, fx_produced(fx)) + 300, WAIT_MS);
        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, w, 2);
        print_message("worker warnings during the freeze: w1 %d, w2 %d\n",
                      fx_log_count(fx, w[0], "WARN"), fx_log_count(fx, w[1], "WARN"));
}

/* SCRIPT FLUSH ten times while jobs flow: each time the workers get
 * NOSCRIPT for the steps in flight, reload the script and resend. */
static void test_script_flush(void **state)
{
        fx_t *fx = *state;
        long long noscript;
        int w[2];

        fx_setup(fx, "flush", 1, 4, 8, NULL);
        fx_add_good(fx, 20000);
        fx_stream_start(fx, 0, fx->n_jobs, 200);
        two_workers(fx, w, 200);

        for (int i = 0; i < 10; i++) {
                redisReply *r = fx_redis(fx, "SCRIPT FLUSH");
                assert_non_null(r);
                assert_int_equal(r->type, REDIS_REPLY_STATUS);
                freeReplyObject(r);
                /* Progress after each flush: the script was reloaded. */
                fx_wait_results(fx, fx->n_jobs, fx_count_results(fx, fx_produced(fx)) + 40,
                                WAIT_MS);
        }
        noscript = errorstat(fx, "NOSCRIPT");
        print_message("10 flushes, %lld NOSCRIPT replies\n", noscript);
        if (noscript <= 0) /* the fault must really hit the workers' steps */
                fail_msg("no NOSCRIPT reply after 10 flushes: the flushes never hit a step "
                         "(does the worker still run the step with EVALSHA?)");
        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, w, 2);
}

/* Reads every user's lifetime usage and every produced job's result value
 * in one read-only script, an atomic snapshot that Redis serves even when it
 * is out of memory (MULTI would not be: it refuses to queue then), and checks
 * that the usage equals what the present ok results (decoded here with
 * kf_result_decode) add up to: no step charged without writing its result,
 * or wrote without charging. */
static void check_no_partial_charge(fx_t *fx)
{
        static const char snapshot_lua[] =
            "#!lua flags=no-writes\n"
            "local out = {}\n"
            "for i = 1, tonumber(ARGV[1]) do\n"
            "  local h = redis.call('HMGET', KEYS[i], 'jobs', 'rows', 'flops', 'errors')\n"
            "  for k = 1, 4 do out[#out + 1] = h[k] or '0' end\n"
            "end\n"
            "for i = tonumber(ARGV[1]) + 1, #KEYS do\n"
            "  out[#out + 1] = redis.call('GET', KEYS[i]) or ''\n"
            "end\n"
            "return out\n";
        long long jobs[FX_MAX_USERS] = {0}, rows[FX_MAX_USERS] = {0};
        int n = fx_produced(fx), nkeys = fx->n_users + n, argc = 0;
        const char **argv = calloc((size_t)nkeys + 8, sizeof(*argv));
        char(*keys)[200] = calloc((size_t)nkeys, sizeof(*keys));
        char numkeys[16], nusers[16];
        redisReply *res;

        assert_true(argv && keys);
        snprintf(numkeys, sizeof(numkeys), "%d", nkeys);
        snprintf(nusers, sizeof(nusers), "%d", fx->n_users);
        argv[argc++] = "EVAL";
        argv[argc++] = snapshot_lua;
        argv[argc++] = numkeys;
        for (int u = 0; u < fx->n_users; u++) {
                snprintf(keys[u], sizeof(keys[u]), "kinfer:{%s}:usage", fx_user(fx, u));
                argv[argc++] = keys[u];
        }
        for (int i = 0; i < n; i++) {
                snprintf(keys[fx->n_users + i], sizeof(keys[0]), "kinfer:{%s}:result:%s",
                         fx_user(fx, fx->jobs[i].user), fx->jobs[i].id);
                argv[argc++] = keys[fx->n_users + i];
        }
        argv[argc++] = nusers;
        if (!fx->rc)
                fx->rc = kt_stack_redis(&fx->stack);
        assert_non_null(fx->rc);
        res = redisCommandArgv(fx->rc, argc, argv, NULL);
        assert_non_null(res);
        if (res->type != REDIS_REPLY_ARRAY)
                fail_msg("snapshot script: %s", res->type == REDIS_REPLY_ERROR ? res->str : "?");
        assert_int_equal(res->elements, (size_t)(4 * fx->n_users + n));
        for (int i = 0; i < n; i++) {
                const redisReply *v = res->element[4 * fx->n_users + i];
                kf_result_t r;
                char err[256];
                if (v->type != REDIS_REPLY_STRING || v->len == 0)
                        continue; /* no result yet */
                if (kf_result_decode(v->str, v->len, &r, err, sizeof(err))) {
                        kf_result_clear(&r);
                        kt_stack_fail(&fx->stack);
                        fail_msg("during OOM, the result of %s cannot be decoded: %s",
                                 fx->jobs[i].id, err);
                }
                if (!r.ok) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("during OOM, job %s got an error result: %s: %s", fx->jobs[i].id,
                                 r.error, r.message);
                }
                jobs[fx->jobs[i].user]++;
                rows[fx->jobs[i].user] += fx->jobs[i].rows;
                kf_result_clear(&r);
        }
        for (int u = 0; u < fx->n_users; u++) {
                long long j = atoll(res->element[4 * u]->str);
                long long rw = atoll(res->element[4 * u + 1]->str);
                long long fl = atoll(res->element[4 * u + 2]->str);
                long long er = atoll(res->element[4 * u + 3]->str);
                if (j != jobs[u] || rw != rows[u] || fl != rows[u] * FX_FLOPS_PER_ROW || er != 0) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("during OOM, %s is charged jobs %lld rows %lld flops %lld "
                                 "errors %lld but its results add up to %lld %lld %lld 0",
                                 fx_user(fx, u), j, rw, fl, er, jobs[u], rows[u],
                                 rows[u] * FX_FLOPS_PER_ROW);
                }
        }
        freeReplyObject(res);
        free(argv);
        free(keys);
}

/* maxmemory set just above what Redis uses, noeviction, while jobs flow:
 * the steps start failing with OOM.  The step makes no write before its
 * first write is refused, so nothing may be charged without its result (an
 * atomic snapshot proves it mid-outage); once maxmemory is lifted every job
 * completes exactly once. */
static void test_maxmemory_oom(void **state)
{
        fx_t *fx = *state;
        long long used, oom, at;
        long long deadline;
        redisReply *r;
        int w[2];

        fx_setup(fx, "oom", 1, 4, 8, NULL);
        fx_add_good(fx, 20000);
        fx_stream_start(fx, 0, fx->n_jobs, 150);
        two_workers(fx, w, 300);

        r = fx_redis(fx, "CONFIG SET maxmemory-policy noeviction");
        assert_non_null(r);
        freeReplyObject(r);
        used = fx_redis_info(fx, "memory", "used_memory");
        assert_true(used > 0);
        r = fx_redis(fx, "CONFIG SET maxmemory %lld", used + 256 * 1024);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_STATUS);
        freeReplyObject(r);
        print_message("maxmemory %lld (used_memory %lld + 256 KiB)\n", used + 256 * 1024, used);

        deadline = kt_now_ms() + WAIT_MS;
        while ((oom = errorstat(fx, "OOM")) <= 0) {
                if (kt_now_ms() > deadline)
                        fail_msg("Redis never refused a step with OOM");
                fx_sleep_ms(50);
        }
        /* Let the workers retry against the full Redis for a while. */
        deadline = kt_now_ms() + 3000;
        while (kt_now_ms() < deadline) {
                check_no_partial_charge(fx);
                fx_sleep_ms(500);
        }
        at = fx_count_results(fx, fx_produced(fx));
        print_message("%lld OOM replies so far; %lld results, %d jobs produced\n",
                      errorstat(fx, "OOM"), at, fx_produced(fx));
        assert_true(at < fx_produced(fx)); /* the outage really held jobs back */

        r = fx_redis(fx, "CONFIG SET maxmemory 0");
        assert_non_null(r);
        freeReplyObject(r);
        fx_wait_results(fx, fx->n_jobs, at + 300, WAIT_MS);
        fx_stream_stop(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_finish(fx, w, 2);
}

/* A worker that loads models from the registry meets its first job while
 * redis-server is frozen: it cannot load the model.  That is the registry's
 * outage, not the job's fault: the jobs must wait for Redis like their
 * writes do, and all get ok results when it is back, none `internal`. */
static void test_registry_first_use_while_redis_paused(void **state)
{
        fx_t *fx = *state;
        long long deadline;
        int w;

        fx_setup(fx, "rfirst", 1, 4, 8, NULL);
        fx_push_model(fx);
        fx_add_good(fx, 400);
        w = fx_worker(fx, "w1", NULL);
        deadline = kt_now_ms() + WAIT_MS;
        while (fx_log_count(fx, w, "assigned") == 0) { /* in the group, no job yet */
                if (kt_now_ms() > deadline)
                        fail_msg("the worker was never assigned partitions");
                fx_sleep_ms(50);
        }

        assert_int_equal(kt_stack_signal_redis(&fx->stack, SIGSTOP), 0);
        fx_produce(fx, 0, fx->n_jobs);
        fx_sleep_ms(4000); /* four times --redis-timeout-ms; nothing may talk to Redis */
        assert_int_equal(kt_stack_signal_redis(&fx->stack, SIGCONT), 0);
        assert_int_equal(kt_stack_wait(&fx->stack, w, 0), -1); /* still running */

        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        /* The outage was really met at first use (else this proves nothing). */
        assert_true(fx_log_count(fx, w, "model registry unreachable") >= 1);
        fx_finish(fx, &w, 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_redis_killed_and_restarted, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_redis_paused, fx_state_setup, fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_script_flush, fx_state_setup, fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_maxmemory_oom, fx_state_setup, fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_registry_first_use_while_redis_paused,
                                            fx_state_setup, fx_state_teardown),
        };
        return fx_run(tests);
}
