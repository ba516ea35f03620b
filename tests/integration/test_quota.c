/* test_quota.c - per-user quotas with exactly-once effects, on a real
 * redis-server and the dev broker: two workers racing on one user's quota,
 * replays of the same jobs, a SIGKILL, window rollover, bad settings. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../harness/kt_job.h"
#include "../harness/stack.h"

#define PARTS 4

typedef struct qt_s {
        kt_stack_t stack;
        char models[300];
        redisContext *c;
} qt_t;

static int setup(void **state)
{
        qt_t *t = calloc(1, sizeof(*t));

        assert_non_null(t);
        assert_int_equal(kt_stack_init(&t->stack), 0);
        assert_int_equal(kt_stack_start_redis(&t->stack, NULL), 0);
        assert_int_equal(kt_stack_start_broker(&t->stack, 1, PARTS), 0);
        assert_int_equal(kt_stack_models_dir(&t->stack, t->models, sizeof(t->models)), 0);
        /* y = (2*x0 + 1, 3*x1 + 1): easy to check by hand */
        assert_int_equal(kt_write_lin_model(t->models), 0);
        t->c = kt_stack_redis(&t->stack);
        assert_non_null(t->c);
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        qt_t *t = *state;
        redisFree(t->c);
        kt_stack_stop(&t->stack);
        free(t);
        return 0;
}

static int spawn_worker(qt_t *t, const char *id, const char *group)
{
        const char *argv[] = {"kinfer-worker",
                              "--models",
                              t->models,
                              "--worker-id",
                              id,
                              "--group",
                              group,
                              "-X",
                              "session.timeout.ms=6000",
                              "-X",
                              "heartbeat.interval.ms=500",
                              NULL};
        int slot = kt_stack_spawn(&t->stack, id, argv, NULL);
        assert_true(slot >= 0);
        return slot;
}

static long long hget_ll(redisContext *c, const char *key, const char *field)
{
        redisReply *r = redisCommand(c, "HGET %s %s", key, field);
        long long v = 0;
        assert_non_null(r);
        if (r->type == REDIS_REPLY_STRING)
                v = atoll(r->str);
        freeReplyObject(r);
        return v;
}

/* Job i of a user: input (i, -i) so its result identifies it. */
static void job_input(int i, float *x)
{
        x[0] = (float)i;
        x[1] = (float)-i;
}

/* Produces jobs first..first+n-1 of user, keys spread over partitions so
 * both workers race on this user's quota. */
static void produce_jobs(qt_t *t, const char *user, int first, int n)
{
        kt_msg_t *msgs = calloc((size_t)n, sizeof(*msgs));
        msgpack_sbuffer *bufs = calloc((size_t)n, sizeof(*bufs));
        static const char *keys[] = {"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"};
        assert_non_null(msgs);
        assert_non_null(bufs);
        for (int i = 0; i < n; i++) {
                char id[96];
                float x[2];
                job_input(first + i, x);
                snprintf(id, sizeof(id), "%s-%d", user, first + i);
                msgpack_sbuffer_init(&bufs[i]);
                kt_job_pack(&bufs[i], id, user, "lin", x, 1, 2, NULL, 0);
                msgs[i] = (kt_msg_t){keys[i % 8], bufs[i].data, bufs[i].size, -1};
        }
        assert_int_equal(kt_produce(t->stack.brokers, "kinfer.jobs", msgs, n), 0);
        for (int i = 0; i < n; i++)
                msgpack_sbuffer_destroy(&bufs[i]);
        free(bufs);
        free(msgs);
}

/* Waits until user's lifetime jobs + errors reach n. */
static void wait_settled(qt_t *t, const char *user, long long n, int timeout_ms)
{
        char key[128];
        long long deadline = kt_now_ms() + timeout_ms, got = 0;
        snprintf(key, sizeof(key), "kinfer:{%s}:usage", user);
        while (kt_now_ms() < deadline) {
                got = hget_ll(t->c, key, "jobs") + hget_ll(t->c, key, "errors");
                if (got >= n)
                        break;
                kt_sleep_ms(20);
        }
        if (got != n) {
                kt_stack_fail(&t->stack);
                fail_msg("user %s: %lld of %lld jobs settled", user, got, n);
        }
}

/* Counts ok / quota_exceeded results of jobs first..first+n-1 and checks
 * every ok output; fills worker_of (strdup'd) if not NULL. */
static void count_results(qt_t *t, const char *user, int first, int n, int *ok, int *over,
                          char **worker_of)
{
        *ok = *over = 0;
        for (int i = first; i < first + n; i++) {
                kf_result_t r;
                char id[96];
                snprintf(id, sizeof(id), "%s-%d", user, i);
                if (kt_result_get(t->c, user, id, &r) != 1)
                        fail_msg("job %s has no result", id);
                if (r.ok) {
                        float x[2];
                        job_input(i, x);
                        assert_int_equal(r.rows * r.cols, 2);
                        assert_true(r.output[0] == 2 * x[0] + 1 && r.output[1] == 3 * x[1] + 1);
                        (*ok)++;
                } else {
                        if (strcmp(r.error, "quota_exceeded"))
                                fail_msg("job %s: %s: %s", id, r.error, r.message);
                        (*over)++;
                }
                if (worker_of)
                        worker_of[i - first] = strdup(r.worker);
                kf_result_clear(&r);
        }
}

static int run_cli(qt_t *t, const char *const *argv, char **out)
{
        return kt_stack_run(&t->stack, argv, NULL, out, 30000);
}

/* Two workers, a limit of 500 jobs, 2,000 jobs: exactly 500 ok.  A worker is
 * SIGKILLed mid-run and replaced.  Then everything is replayed (a new group
 * re-reads the topic, and 200 jobs are produced again with the same ids): no
 * counter moves, no result changes. */
static void test_limit_exact_and_replay(void **state)
{
        qt_t *t = *state;
        const char *set[] = {"kinfer", "quota",    "set",      "qa", "--jobs",
                             "500",    "--window", "31536000", NULL};
        char **worker_of = calloc(2000, sizeof(char *));
        int ok, over, w1, w2, w3;
        long long before[4];
        static const char *fields[] = {"jobs", "rows", "flops", "errors"};

        assert_int_equal(run_cli(t, set, NULL), 0);
        w1 = spawn_worker(t, "q-w1", "kinfer-workers");
        w2 = spawn_worker(t, "q-w2", "kinfer-workers");
        produce_jobs(t, "qa", 0, 1000);
        /* kill one worker as soon as results start to appear */
        while (hget_ll(t->c, "kinfer:{qa}:usage", "jobs") +
                   hget_ll(t->c, "kinfer:{qa}:usage", "errors") ==
               0)
                kt_sleep_ms(2);
        assert_int_equal(kt_stack_kill(&t->stack, w1, SIGKILL, 5000), 128 + SIGKILL);
        w3 = spawn_worker(t, "q-w3", "kinfer-workers");
        produce_jobs(t, "qa", 1000, 1000);
        wait_settled(t, "qa", 2000, 120000);

        count_results(t, "qa", 0, 2000, &ok, &over, worker_of);
        assert_int_equal(ok, 500);
        assert_int_equal(over, 1500);
        assert_int_equal(hget_ll(t->c, "kinfer:{qa}:usage", "jobs"), 500);
        assert_int_equal(hget_ll(t->c, "kinfer:{qa}:usage", "rows"), 500);
        assert_int_equal(hget_ll(t->c, "kinfer:{qa}:usage", "flops"), 500 * 2 * 4);
        assert_int_equal(hget_ll(t->c, "kinfer:{qa}:usage", "errors"), 1500);
        assert_int_equal(hget_ll(t->c, "kinfer:{qa}:usage:models", "jobs:lin"), 500);
        for (int i = 0; i < 4; i++)
                before[i] = hget_ll(t->c, "kinfer:{qa}:usage", fields[i]);

        /* Replay: a worker in a new group reads every job again, and 200 jobs
         * are produced a second time with the same ids. */
        assert_int_equal(kt_stack_kill(&t->stack, w2, SIGTERM, 20000), 0);
        assert_int_equal(kt_stack_kill(&t->stack, w3, SIGTERM, 20000), 0);
        produce_jobs(t, "qa", 0, 200);
        spawn_worker(t, "q-replay", "replay-group");
        {
                /* a sentinel job per partition, after everything else: when
                 * all four have results, the replay worker has seen it all */
                kt_msg_t msgs[PARTS];
                msgpack_sbuffer bufs[PARTS];
                for (int p = 0; p < PARTS; p++) {
                        char id[32];
                        float x[2] = {1, 1};
                        snprintf(id, sizeof(id), "sentinel-%d", p);
                        msgpack_sbuffer_init(&bufs[p]);
                        kt_job_pack(&bufs[p], id, "sentinel", "lin", x, 1, 2, NULL, 0);
                        msgs[p] = (kt_msg_t){"s", bufs[p].data, bufs[p].size, p};
                }
                assert_int_equal(kt_produce(t->stack.brokers, "kinfer.jobs", msgs, PARTS), 0);
                for (int p = 0; p < PARTS; p++)
                        msgpack_sbuffer_destroy(&bufs[p]);
                wait_settled(t, "sentinel", PARTS, 60000);
        }
        for (int i = 0; i < 4; i++)
                assert_int_equal(hget_ll(t->c, "kinfer:{qa}:usage", fields[i]), before[i]);
        {
                char **again = calloc(2000, sizeof(char *));
                count_results(t, "qa", 0, 2000, &ok, &over, again);
                assert_int_equal(ok, 500);
                assert_int_equal(over, 1500);
                for (int i = 0; i < 2000; i++) {
                        assert_string_equal(again[i], worker_of[i]); /* first result stands */
                        assert_string_not_equal(again[i], "q-replay");
                        free(again[i]);
                        free(worker_of[i]);
                }
                free(again);
        }
        free(worker_of);
}

/* Fixed windows aligned to Unix time: a limit of 5 jobs per 3 s window.
 * Each window's ok results never exceed 5, each window's counter equals its
 * ok results (a new window starts from zero), and old window keys expire. */
static void test_window_rollover(void **state)
{
        qt_t *t = *state;
        const char *set[] = {"kinfer", "quota", "set", "qw", "--jobs", "5", "--window", "3", NULL};
        int per_window_ok[64] = {0};
        long long starts[64];
        int nwin = 0;

        assert_int_equal(run_cli(t, set, NULL), 0);
        spawn_worker(t, "w-w1", "kinfer-workers");
        produce_jobs(t, "qw", 0, 8);
        wait_settled(t, "qw", 8, 60000);
        /* into the next window: wait for the window the first batch used to end */
        kt_sleep_ms(3500);
        produce_jobs(t, "qw", 8, 8);
        wait_settled(t, "qw", 16, 60000);

        for (int i = 0; i < 16; i++) {
                kf_result_t r;
                char id[32];
                long long w;
                int k;
                snprintf(id, sizeof(id), "qw-%d", i);
                assert_int_equal(kt_result_get(t->c, "qw", id, &r), 1);
                assert_true(r.has_window); /* ok and quota_exceeded results both say */
                w = (long long)r.window;
                assert_true(w % 3 == 0); /* aligned to Unix time */
                for (k = 0; k < nwin && starts[k] != w; k++)
                        ;
                if (k == nwin)
                        starts[nwin++] = w;
                if (r.ok)
                        per_window_ok[k]++;
                kf_result_clear(&r);
        }
        assert_true(nwin >= 2); /* the two bursts used different windows */
        for (int k = 0; k < nwin; k++) {
                char key[128];
                snprintf(key, sizeof(key), "kinfer:{qw}:usage:window:%lld", starts[k]);
                assert_true(per_window_ok[k] <= 5);
                assert_true(per_window_ok[k] >= 1);
                /* the counter of a window is exactly its ok results, even
                 * though the lifetime counter kept growing */
                if (hget_ll(t->c, key, "jobs") != 0) /* may have expired already */
                        assert_int_equal(hget_ll(t->c, key, "jobs"), per_window_ok[k]);
        }
        {
                long long total_ok = 0;
                for (int k = 0; k < nwin; k++)
                        total_ok += per_window_ok[k];
                assert_int_equal(hget_ll(t->c, "kinfer:{qw}:usage", "jobs"), total_ok);
                assert_true(total_ok >= 10); /* 5 in each burst's window at least */
        }
        /* windows end and their keys expire one window later: within ~7 s */
        {
                char key[128];
                long long deadline = kt_now_ms() + 15000;
                redisReply *r;
                snprintf(key, sizeof(key), "kinfer:{qw}:usage:window:%lld", starts[0]);
                r = redisCommand(t->c, "TTL %s", key);
                assert_non_null(r);
                assert_true(r->integer <= 6); /* never a key without expiry */
                freeReplyObject(r);
                while (kt_now_ms() < deadline) {
                        r = redisCommand(t->c, "EXISTS %s", key);
                        long long e = r->integer;
                        freeReplyObject(r);
                        if (!e)
                                break;
                        kt_sleep_ms(200);
                }
                r = redisCommand(t->c, "EXISTS %s", key);
                assert_int_equal(r->integer, 0);
                freeReplyObject(r);
        }
}

/* kinfer quota set refuses nonsense with a message; a worker finding
 * nonsense in Redis logs it, uses its default, and keeps serving. */
static void test_bad_settings(void **state)
{
        qt_t *t = *state;
        static const struct {
                const char *flag, *value, *says;
        } bad[] = {
            {"--jobs", "-5", "--jobs: quota jobs \"-5\" is not a decimal integer in 0.."},
            {"--jobs", "lots", "--jobs: quota jobs \"lots\" is not a decimal integer"},
            {"--jobs", "0x10", "--jobs: quota jobs \"0x10\" is not a decimal integer"},
            {"--jobs", "1e3", "--jobs: quota jobs \"1e3\" is not a decimal integer"},
            {"--rows", "1.5", "--rows: quota rows \"1.5\" is not a decimal integer"},
            {"--rows", " 7", "--rows: quota rows \" 7\" is not a decimal integer"},
            {"--window", "0",
             "--window: quota window \"0\" is not a decimal integer in 1..31622400"},
            {"--window", "999999999",
             "quota window \"999999999\" is not a decimal integer in 1..31622400"},
            {"--window", "unlimited", "--window: quota window \"unlimited\" is not a decimal"},
        };
        char *out = NULL, log[600], *text;
        FILE *fp;
        long size;
        int ok, over;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                const char *argv[] = {"kinfer",    "quota",      "set", "qb",
                                      bad[i].flag, bad[i].value, NULL};
                assert_int_equal(run_cli(t, argv, NULL), 2);
                /* kt_stack_run keeps stderr in run.log */
                snprintf(log, sizeof(log), "%s/run.log", t->stack.dir);
                fp = fopen(log, "r");
                assert_non_null(fp);
                fseek(fp, 0, SEEK_END);
                size = ftell(fp);
                fseek(fp, 0, SEEK_SET);
                text = calloc(1, (size_t)size + 1);
                assert_int_equal(fread(text, 1, (size_t)size, fp), (size_t)size);
                fclose(fp);
                if (!strstr(text, bad[i].says))
                        fail_msg("kinfer quota set %s %s: expected '%s' on stderr", bad[i].flag,
                                 bad[i].value, bad[i].says);
                free(text);
        }
        {
                redisReply *r = redisCommand(t->c, "EXISTS kinfer:{qb}:quota");
                assert_int_equal(r->integer, 0); /* nothing was written */
                freeReplyObject(r);
        }

        /* Garbage written behind the CLI's back: the worker carries on with
         * its default (unlimited) and says why in its log. */
        freeReplyObject(redisCommand(t->c, "HSET kinfer:{qb}:quota jobs abc rows -3 window 0"));
        spawn_worker(t, "b-w1", "kinfer-workers");
        produce_jobs(t, "qb", 0, 20);
        wait_settled(t, "qb", 20, 60000);
        count_results(t, "qb", 0, 20, &ok, &over, NULL);
        assert_int_equal(ok, 20);
        snprintf(log, sizeof(log), "%s/b-w1.log", t->stack.dir);
        fp = fopen(log, "r");
        assert_non_null(fp);
        text = calloc(1, 1 << 20);
        assert_true(fread(text, 1, (1 << 20) - 1, fp) > 0);
        fclose(fp);
        assert_non_null(strstr(text, "quota jobs=\"abc\" is not a decimal integer"));
        assert_non_null(strstr(text, "quota window=\"0\""));
        free(text);
        {
                const char *argv[] = {"kinfer", "quota", "get", "qb", "--json", NULL};
                assert_int_equal(run_cli(t, argv, &out), 0);
                assert_non_null(strstr(out, "\"jobs\":\"abc\""));
                free(out);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_limit_exact_and_replay, setup, teardown),
            cmocka_unit_test_setup_teardown(test_window_rollover, setup, teardown),
            cmocka_unit_test_setup_teardown(test_bad_settings, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
