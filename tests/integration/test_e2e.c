/* test_e2e.c - the worker pool end to end, on a real redis-server and the
 * real dev broker: jobs submitted through the `kinfer` CLI, computed by
 * kinfer-worker processes, checked in Redis against a reference computed
 * here in double precision with plain loops (not kinfer's sgemm code). */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <msgpack.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../harness/kt_job.h"
#include "../harness/stack.h"

#define N_JOBS  1000
#define N_USERS 10
#define IN      8
#define HID     16
#define OUT     4
#define MAXROWS 3

/* The test's own model: weights it chose, written with msgpack-c directly
 * (not with kinfer's model_encode), so a codec bug cannot cancel out. */
typedef struct ref_model_s {
        float W1[IN * HID], b1[HID], W2[HID * OUT], b2[OUT];
} ref_model_t;

typedef struct ref_job_s {
        int user, rows;
        float x[MAXROWS * IN];
        char id[160];
} ref_job_t;

static uint64_t rng_state = 42;
static double rnd(void) /* uniform in [-1, 1) */
{
        rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
        return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
        msgpack_pack_str(pk, strlen(s));
        msgpack_pack_str_body(pk, s, strlen(s));
}

static void pack_f32_bin(msgpack_packer *pk, const float *v, size_t n)
{
        msgpack_pack_bin(pk, n * 4);
        msgpack_pack_bin_body(pk, v, n * 4); /* x86_64: already little-endian */
}

static void write_model(const char *path, const ref_model_t *m)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        FILE *fp;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7);
        pack_str(&pk, "format");
        pack_str(&pk, "kinfer-model");
        pack_str(&pk, "v");
        msgpack_pack_uint32(&pk, 1);
        pack_str(&pk, "name");
        pack_str(&pk, "mlp");
        pack_str(&pk, "kind");
        pack_str(&pk, "mlp");
        pack_str(&pk, "input_dim");
        msgpack_pack_uint32(&pk, IN);
        pack_str(&pk, "output_dim");
        msgpack_pack_uint32(&pk, OUT);
        pack_str(&pk, "layers");
        msgpack_pack_array(&pk, 2);
        msgpack_pack_map(&pk, 3);
        pack_str(&pk, "W");
        pack_f32_bin(&pk, m->W1, IN * HID);
        pack_str(&pk, "b");
        pack_f32_bin(&pk, m->b1, HID);
        pack_str(&pk, "act");
        pack_str(&pk, "tanh");
        msgpack_pack_map(&pk, 3);
        pack_str(&pk, "W");
        pack_f32_bin(&pk, m->W2, HID * OUT);
        pack_str(&pk, "b");
        pack_f32_bin(&pk, m->b2, OUT);
        pack_str(&pk, "act");
        pack_str(&pk, "identity");

        fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(sb.data, 1, sb.size, fp), sb.size);
        fclose(fp);
        msgpack_sbuffer_destroy(&sb);
}

/* y = tanh(x.W1 + b1).W2 + b2, in double, with plain loops. */
static void reference(const ref_model_t *m, const float *x, double *y)
{
        double h[HID];
        for (int j = 0; j < HID; j++) {
                double s = m->b1[j];
                for (int i = 0; i < IN; i++)
                        s += (double)x[i] * m->W1[i * HID + j];
                h[j] = tanh(s);
        }
        for (int j = 0; j < OUT; j++) {
                double s = m->b2[j];
                for (int i = 0; i < HID; i++)
                        s += h[i] * m->W2[i * OUT + j];
                y[j] = s;
        }
}

typedef struct e2e_s {
        kt_stack_t stack;
        ref_model_t model;
        ref_job_t *jobs;
        char models_dir[300];
} e2e_t;

static int setup(void **state)
{
        e2e_t *t = calloc(1, sizeof(*t));
        char path[400];

        assert_non_null(t);
        assert_int_equal(kt_stack_init(&t->stack), 0);
        assert_int_equal(kt_stack_start_redis(&t->stack, NULL), 0);
        assert_int_equal(kt_stack_start_broker(&t->stack, 1, 4), 0);

        for (int i = 0; i < IN * HID; i++)
                t->model.W1[i] = (float)(rnd() * 0.6);
        for (int i = 0; i < HID; i++)
                t->model.b1[i] = (float)(rnd() * 0.1);
        for (int i = 0; i < HID * OUT; i++)
                t->model.W2[i] = (float)(rnd() * 0.6);
        for (int i = 0; i < OUT; i++)
                t->model.b2[i] = (float)(rnd() * 0.1);
        snprintf(t->models_dir, sizeof(t->models_dir), "%s/models", t->stack.dir);
        snprintf(path, sizeof(path), "mkdir -p %s", t->models_dir);
        assert_int_equal(system(path), 0);
        snprintf(path, sizeof(path), "%s/mlp.kmodel", t->models_dir);
        write_model(path, &t->model);
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        e2e_t *t = *state;
        kt_stack_stop(&t->stack);
        free(t->jobs);
        free(t);
        return 0;
}

/* Writes N_JOBS jobs as one JSON-lines file per user (values printed with
 * %.9g, which float32 round-trips exactly) and submits each with `kinfer
 * submit`, recording the printed ids. */
static void submit_all(e2e_t *t, const char *tag)
{
        int next[N_USERS] = {0};
        t->jobs = calloc(N_JOBS, sizeof(*t->jobs));
        assert_non_null(t->jobs);
        for (int j = 0; j < N_JOBS; j++) {
                t->jobs[j].user = j % N_USERS;
                t->jobs[j].rows = 1 + j % MAXROWS;
                for (int k = 0; k < t->jobs[j].rows * IN; k++)
                        t->jobs[j].x[k] = (float)(rnd() * 2.0);
        }
        for (int u = 0; u < N_USERS; u++) {
                char path[400], user[32], *out = NULL, *line, *save = NULL;
                FILE *fp;
                snprintf(path, sizeof(path), "%s/jobs-%s-%d.jsonl", t->stack.dir, tag, u);
                snprintf(user, sizeof(user), "%s-user%d", tag, u);
                fp = fopen(path, "w");
                assert_non_null(fp);
                for (int j = u; j < N_JOBS; j += N_USERS) {
                        fputc('[', fp);
                        for (int r = 0; r < t->jobs[j].rows; r++) {
                                fputs(r ? ",[" : "[", fp);
                                for (int i = 0; i < IN; i++)
                                        fprintf(fp, "%s%.9g", i ? "," : "",
                                                t->jobs[j].x[r * IN + i]);
                                fputc(']', fp);
                        }
                        fputs("]\n", fp);
                }
                fclose(fp);
                {
                        const char *argv[] = {"kinfer", "submit", "--model", "mlp", "--user",
                                              user,     "--file", path,      NULL};
                        assert_int_equal(kt_stack_run(&t->stack, argv, NULL, &out, 60000), 0);
                }
                for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                        int j = u + N_USERS * next[u]++;
                        assert_true(j < N_JOBS);
                        snprintf(t->jobs[j].id, sizeof(t->jobs[j].id), "%s", line);
                }
                free(out);
                assert_int_equal(next[u], N_JOBS / N_USERS);
        }
}

/* Number of users' ok jobs counted so far (cheap progress probe). */
static long long jobs_done(redisContext *c, const char *tag)
{
        long long n = 0;
        for (int u = 0; u < N_USERS; u++) {
                char user[64];
                snprintf(user, sizeof(user), "%s-user%d", tag, u);
                n += kt_usage(c, user, NULL, "jobs");
        }
        return n;
}

static void wait_all_done(e2e_t *t, redisContext *c, const char *tag, int timeout_ms)
{
        long long deadline = kt_now_ms() + timeout_ms, n = 0;
        while (kt_now_ms() < deadline && (n = jobs_done(c, tag)) < N_JOBS) {
                struct timespec ts = {0, 20 * 1000000};
                nanosleep(&ts, NULL);
        }
        if (n != N_JOBS) {
                kt_stack_fail(&t->stack);
                fail_msg("only %lld of %d jobs done after %d ms", n, N_JOBS, timeout_ms);
        }
}

/* Every job has exactly its expected result; usage counters are exact.
 * Returns how many results each worker id wrote, in *per_worker. */
static void check_results(e2e_t *t, redisContext *c, const char *tag, char workers[][64],
                          int *per_worker, int n_workers)
{
        long long rows[N_USERS] = {0};
        const long long flops_per_row = 2LL * (IN * HID + HID * OUT);

        for (int j = 0; j < N_JOBS; j++) {
                const ref_job_t *job = &t->jobs[j];
                kf_result_t r;
                char user[64];
                snprintf(user, sizeof(user), "%s-user%d", tag, job->user);
                if (kt_result_get(c, user, job->id, &r) != 1)
                        fail_msg("job %s of %s: no readable result", job->id, user);
                if (!r.ok)
                        fail_msg("job %s: status error: %s: %s", job->id, r.error, r.message);
                assert_int_equal(r.rows, job->rows);
                assert_int_equal(r.cols, OUT);
                assert_int_equal(r.version, 1);
                assert_string_equal(r.user, user);
                for (int row = 0; row < job->rows; row++) {
                        double y[OUT];
                        reference(&t->model, job->x + row * IN, y);
                        for (int k = 0; k < OUT; k++) {
                                float got = r.output[row * OUT + k];
                                if (fabs(got - y[k]) > 1e-5 * fmax(1.0, fabs(y[k])))
                                        fail_msg("job %s row %d col %d: got %.9g, reference "
                                                 "%.9g",
                                                 job->id, row, k, got, y[k]);
                        }
                }
                for (int w = 0; w < n_workers; w++)
                        if (!strcmp(r.worker, workers[w]))
                                per_worker[w]++;
                rows[job->user] += job->rows;
                kf_result_clear(&r);
        }
        for (int u = 0; u < N_USERS; u++) {
                char user[64];
                snprintf(user, sizeof(user), "%s-user%d", tag, u);
                assert_int_equal(kt_usage(c, user, NULL, "jobs"), N_JOBS / N_USERS);
                assert_int_equal(kt_usage(c, user, NULL, "rows"), rows[u]);
                assert_int_equal(kt_usage(c, user, NULL, "flops"), rows[u] * flops_per_row);
                assert_int_equal(kt_usage(c, user, NULL, "errors"), 0);
        }
}

static int spawn_worker(e2e_t *t, const char *id, const char *const *extra)
{
        /* A short session timeout so the group notices the SIGKILLed worker in
         * seconds rather than librdkafka's default 45 s. */
        const char *argv[20] = {"kinfer-worker",
                                "--models",
                                t->models_dir,
                                "--worker-id",
                                id,
                                "-X",
                                "session.timeout.ms=6000",
                                "-X",
                                "heartbeat.interval.ms=500"};
        int n = 9;
        for (int i = 0; extra && extra[i]; i++)
                argv[n++] = extra[i];
        argv[n] = NULL;
        return kt_stack_spawn(&t->stack, id, argv, NULL);
}

/* 1,000 jobs of 10 users through `kinfer submit` to two workers in one
 * group: every result present and within 1e-5 of the reference, usage exact,
 * both workers took part. */
static void test_two_workers(void **state)
{
        e2e_t *t = *state;
        char workers[2][64] = {"e2e-w1", "e2e-w2"};
        int per_worker[2] = {0, 0};
        redisContext *c;
        int w1, w2;

        w1 = spawn_worker(t, workers[0], NULL);
        w2 = spawn_worker(t, workers[1], NULL);
        assert_true(w1 >= 0 && w2 >= 0);
        submit_all(t, "two");
        c = kt_stack_redis(&t->stack);
        assert_non_null(c);
        wait_all_done(t, c, "two", 90000);
        check_results(t, c, "two", workers, per_worker, 2);
        print_message("results per worker: %s %d, %s %d\n", workers[0], per_worker[0], workers[1],
                      per_worker[1]);
        assert_int_equal(per_worker[0] + per_worker[1], N_JOBS);
        assert_true(per_worker[0] > 0);
        assert_true(per_worker[1] > 0);
        /* SIGTERM: finish, commit, leave the group, exit 0. */
        assert_int_equal(kt_stack_kill(&t->stack, w1, SIGTERM, 20000), 0);
        assert_int_equal(kt_stack_kill(&t->stack, w2, SIGTERM, 20000), 0);
        redisFree(c);
        free(t->jobs);
        t->jobs = NULL;
}

/* A worker SIGKILLed while it works through the backlog, then a new one:
 * every job still gets its one result, and nobody is charged twice even
 * though the new worker re-reads jobs whose offsets were never committed. */
static void test_sigkill_midrun(void **state)
{
        e2e_t *t = *state;
        char workers[2][64] = {"kill-w1", "kill-w2"};
        const char *slow[] = {"--batch-max-jobs", "8", NULL};
        int per_worker[2] = {0, 0};
        long long at_kill;
        redisContext *c = kt_stack_redis(&t->stack);
        int w1, w2;

        assert_non_null(c);
        submit_all(t, "kill");
        w1 = spawn_worker(t, workers[0], slow);
        assert_true(w1 >= 0);
        /* Kill it as soon as it has written its first results. */
        while ((at_kill = jobs_done(c, "kill")) == 0) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
        }
        assert_int_equal(kt_stack_kill(&t->stack, w1, SIGKILL, 5000), 128 + SIGKILL);
        at_kill = jobs_done(c, "kill");
        print_message("killed %s with %lld of %d jobs written\n", workers[0], at_kill, N_JOBS);
        assert_true(at_kill < N_JOBS); /* it really died mid-run */

        w2 = spawn_worker(t, workers[1], NULL);
        assert_true(w2 >= 0);
        wait_all_done(t, c, "kill", 90000);
        check_results(t, c, "kill", workers, per_worker, 2);
        assert_int_equal(per_worker[0] + per_worker[1], N_JOBS);
        assert_true(per_worker[0] > 0);
        assert_true(per_worker[1] > 0);
        assert_int_equal(kt_stack_kill(&t->stack, w2, SIGTERM, 20000), 0);
        redisFree(c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_two_workers, setup, teardown),
            cmocka_unit_test_setup_teardown(test_sigkill_midrun, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
