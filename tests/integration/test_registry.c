/* test_registry.c - the model registry end to end, on a real redis-server,
 * the real dev broker and real kinfer-worker processes in registry mode (no
 * --models): the `kinfer model` CLI, MLPs of several shapes and an ensemble
 * checked against references computed here (plain double loops) or by numpy
 * (kinfer-convert), hot swaps under continuous load, and a corrupt blob
 * written straight into Redis.  Model files and jobs are packed here with
 * msgpack-c, not with kinfer's encoders. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../harness/kt_job.h"
#include "../harness/stack.h"

#define TOPIC "kinfer.jobs"

/* ---- models the test owns: weights, files, references ---- */

#define TM_MAX_LAYERS 3
typedef struct tm_s {
        char name[64];
        int n_layers, dims[TM_MAX_LAYERS + 1];
        const char *acts[TM_MAX_LAYERS];
        float *W[TM_MAX_LAYERS], *b[TM_MAX_LAYERS];
} tm_t;

static uint64_t rng = 2026;
static double rnd(void) /* uniform in [-1, 1) */
{
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

static void tm_init(tm_t *t, const char *name, int n_layers, const int *dims,
                    const char *const *acts)
{
        memset(t, 0, sizeof(*t));
        snprintf(t->name, sizeof(t->name), "%s", name);
        t->n_layers = n_layers;
        for (int l = 0; l <= n_layers; l++)
                t->dims[l] = dims[l];
        for (int l = 0; l < n_layers; l++) {
                t->acts[l] = acts[l];
                t->W[l] = malloc(sizeof(float) * (size_t)dims[l] * (size_t)dims[l + 1]);
                t->b[l] = malloc(sizeof(float) * (size_t)dims[l + 1]);
                assert_true(t->W[l] && t->b[l]);
                for (int i = 0; i < dims[l] * dims[l + 1]; i++)
                        t->W[l][i] = (float)(rnd() * 0.7);
                for (int i = 0; i < dims[l + 1]; i++)
                        t->b[l][i] = (float)(rnd() * 0.3);
        }
}

static void tm_free(tm_t *t)
{
        for (int l = 0; l < t->n_layers; l++) {
                free(t->W[l]);
                free(t->b[l]);
        }
}

static int tm_out(const tm_t *t)
{
        return t->dims[t->n_layers];
}

/* One row, in double. */
static void tm_ref(const tm_t *t, const float *x, double *y)
{
        double a[256], o[256];
        for (int i = 0; i < t->dims[0]; i++)
                a[i] = x[i];
        for (int l = 0; l < t->n_layers; l++) {
                int n = t->dims[l + 1];
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < n; j++) {
                        double s = t->b[l][j];
                        for (int i = 0; i < t->dims[l]; i++)
                                s += a[i] * t->W[l][i * n + j];
                        if (!strcmp(t->acts[l], "relu"))
                                s = s > 0 ? s : 0;
                        else if (!strcmp(t->acts[l], "tanh"))
                                s = tanh(s);
                        else if (!strcmp(t->acts[l], "sigmoid"))
                                s = 1 / (1 + exp(-s));
                        o[j] = s;
                        mx = s > mx ? s : mx;
                }
                if (!strcmp(t->acts[l], "softmax")) {
                        for (int j = 0; j < n; j++)
                                sum += (o[j] = exp(o[j] - mx));
                        for (int j = 0; j < n; j++)
                                o[j] /= sum;
                }
                memcpy(a, o, sizeof(double) * (size_t)n);
        }
        memcpy(y, a, sizeof(double) * (size_t)tm_out(t));
}

static void pk_str(msgpack_packer *pk, const char *s)
{
        msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void write_file(const char *path, const void *buf, size_t len)
{
        FILE *fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(buf, 1, len, fp), len);
        assert_int_equal(fclose(fp), 0);
}

/* The model file of t, per docs/protocol.md (x86-64: floats already LE). */
static void tm_write(const tm_t *t, const char *path)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7);
        pk_str(&pk, "format");
        pk_str(&pk, "kinfer-model");
        pk_str(&pk, "v");
        msgpack_pack_uint32(&pk, 1);
        pk_str(&pk, "name");
        pk_str(&pk, t->name);
        pk_str(&pk, "kind");
        pk_str(&pk, "mlp");
        pk_str(&pk, "input_dim");
        msgpack_pack_uint32(&pk, (uint32_t)t->dims[0]);
        pk_str(&pk, "output_dim");
        msgpack_pack_uint32(&pk, (uint32_t)tm_out(t));
        pk_str(&pk, "layers");
        msgpack_pack_array(&pk, (size_t)t->n_layers);
        for (int l = 0; l < t->n_layers; l++) {
                size_t nw = (size_t)t->dims[l] * (size_t)t->dims[l + 1] * 4;
                msgpack_pack_map(&pk, 3);
                pk_str(&pk, "W");
                msgpack_pack_bin_with_body(&pk, t->W[l], nw);
                pk_str(&pk, "b");
                msgpack_pack_bin_with_body(&pk, t->b[l], (size_t)t->dims[l + 1] * 4);
                pk_str(&pk, "act");
                pk_str(&pk, t->acts[l]);
        }
        write_file(path, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
}

typedef struct tmember_s {
        const char *model;
        unsigned version; /* 0 = not written: follows the active version */
        double weight;
} tmember_t;

static void ens_write(const char *path, const char *name, int din, int dout, int n,
                      const tmember_t *m)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7);
        pk_str(&pk, "format");
        pk_str(&pk, "kinfer-model");
        pk_str(&pk, "v");
        msgpack_pack_uint32(&pk, 1);
        pk_str(&pk, "name");
        pk_str(&pk, name);
        pk_str(&pk, "kind");
        pk_str(&pk, "ensemble");
        pk_str(&pk, "input_dim");
        msgpack_pack_uint32(&pk, (uint32_t)din);
        pk_str(&pk, "output_dim");
        msgpack_pack_uint32(&pk, (uint32_t)dout);
        pk_str(&pk, "members");
        msgpack_pack_array(&pk, (size_t)n);
        for (int i = 0; i < n; i++) {
                msgpack_pack_map(&pk, m[i].version ? 3 : 2);
                pk_str(&pk, "model");
                pk_str(&pk, m[i].model);
                if (m[i].version) {
                        pk_str(&pk, "version");
                        msgpack_pack_uint32(&pk, m[i].version);
                }
                pk_str(&pk, "weight");
                msgpack_pack_double(&pk, m[i].weight);
        }
        write_file(path, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
}

/* ---- the fixture ---- */

typedef struct reg_s {
        kt_stack_t stack;
        redisContext *c;
        rd_kafka_t *rk;
        int delivered, failed; /* delivery reports */
} reg_t;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        reg_t *t = opaque;
        (void)rk;
        if (rkm->err)
                __atomic_add_fetch(&t->failed, 1, __ATOMIC_RELAXED);
        else
                __atomic_add_fetch(&t->delivered, 1, __ATOMIC_RELAXED);
}

static int setup_common(void **state, int with_broker)
{
        reg_t *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        assert_int_equal(kt_stack_init(&t->stack), 0);
        assert_int_equal(kt_stack_start_redis(&t->stack, NULL), 0);
        assert_non_null(t->c = kt_stack_redis(&t->stack));
        if (with_broker) {
                rd_kafka_conf_t *conf = rd_kafka_conf_new();
                char err[256];
                assert_int_equal(kt_stack_start_broker(&t->stack, 1, 4), 0);
                assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", t->stack.brokers, err,
                                                   sizeof(err)),
                                 RD_KAFKA_CONF_OK);
                rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof(err));
                rd_kafka_conf_set(conf, "linger.ms", "1", err, sizeof(err));
                rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
                rd_kafka_conf_set_opaque(conf, t);
                assert_non_null(t->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)));
        }
        *state = t;
        return 0;
}

static int setup(void **state)
{
        return setup_common(state, 1);
}

static int setup_redis_only(void **state)
{
        return setup_common(state, 0);
}

static int teardown(void **state)
{
        reg_t *t = *state;
        if (t->rk) {
                rd_kafka_flush(t->rk, 10000);
                rd_kafka_destroy(t->rk);
        }
        redisFree(t->c);
        kt_stack_stop(&t->stack);
        free(t);
        return 0;
}

static void path_in(reg_t *t, char *buf, size_t size, const char *file)
{
        snprintf(buf, size, "%s/%s", t->stack.dir, file);
}

/* Runs `kinfer ARGS` through sh with stderr folded into *out (may be NULL).
 * Returns the exit status. */
__attribute__((format(printf, 3, 4))) static int kinfer(reg_t *t, char **out, const char *fmt, ...)
{
        char args[2048], cmd[3072];
        const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
        va_list ap;
        char *o = NULL;
        int rc;

        va_start(ap, fmt);
        vsnprintf(args, sizeof(args), fmt, ap);
        va_end(ap);
        snprintf(cmd, sizeof(cmd), "exec %s/kinfer %s 2>&1", t->stack.bindir, args);
        rc = kt_stack_run(&t->stack, argv, NULL, &o, 60000);
        if (out)
                *out = o;
        else
                free(o);
        return rc;
}

/* kinfer ... must succeed; returns its output (caller frees). */
static char *kinfer_ok(reg_t *t, const char *args)
{
        char *out = NULL;
        int rc = kinfer(t, &out, "%s", args);
        if (rc != 0)
                fail_msg("kinfer %s: exit %d: %s", args, rc, out ? out : "");
        return out;
}

/* kinfer ... must fail with exit status want and say `says`. */
static void kinfer_refused(reg_t *t, int want, const char *says, const char *args)
{
        char *out = NULL;
        int rc = kinfer(t, &out, "%s", args);
        if (rc != want || !out || !strstr(out, says))
                fail_msg("kinfer %s: want exit %d saying \"%s\", got exit %d: %s", args, want, says,
                         rc, out ? out : "");
        free(out);
}

static json_t *kinfer_json(reg_t *t, const char *args)
{
        char *out = kinfer_ok(t, args);
        json_error_t jerr;
        json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK, &jerr);
        if (!j)
                fail_msg("kinfer %s: not JSON (%s): %s", args, jerr.text, out);
        free(out);
        return j;
}

static void push_file(reg_t *t, const char *path, int activate, unsigned want_version)
{
        char args[1024];
        json_t *j;
        snprintf(args, sizeof(args), "model push --json %s%s", activate ? "--activate " : "", path);
        j = kinfer_json(t, args);
        if (want_version)
                assert_int_equal(json_integer_value(json_object_get(j, "version")), want_version);
        json_decref(j);
}

static void push_tm(reg_t *t, const tm_t *m, int activate, unsigned want_version)
{
        char path[512], file[128];
        snprintf(file, sizeof(file), "%s-%u.kmodel", m->name, want_version);
        path_in(t, path, sizeof(path), file);
        tm_write(m, path);
        push_file(t, path, activate, want_version);
}

static int spawn_worker(reg_t *t, const char *id)
{
        /* No --models: the registry.  A short session so the group forms fast. */
        const char *level = getenv("KT_WORKER_LOG") ? getenv("KT_WORKER_LOG") : "info";
        const char *argv[] = {"kinfer-worker",
                              "--worker-id",
                              id,
                              "--log-level",
                              level,
                              "-X",
                              "session.timeout.ms=6000",
                              "-X",
                              "heartbeat.interval.ms=500",
                              NULL};
        int slot = kt_stack_spawn(&t->stack, id, argv, NULL);
        assert_true(slot >= 0);
        return slot;
}

/* ---- jobs and results ---- */

typedef struct tjob_s {
        char id[96];
        const char *model;
        unsigned version;
        const char *output; /* NULL = raw */
        unsigned k;
        int rows, cols;
        float x[4 * 32];
        long long sent_ms; /* wall clock, just before produce */
        char user[16];     /* who produced it: results are the user's */
} tjob_t;

static long long wall_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void produce(reg_t *t, tjob_t *j, const char *user)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        rd_kafka_resp_err_t err;

        snprintf(j->user, sizeof(j->user), "%s", user);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 5 + (j->version != 0) + (j->output != NULL) + (j->k != 0));
        pk_str(&pk, "v");
        msgpack_pack_uint32(&pk, 2);
        pk_str(&pk, "id");
        pk_str(&pk, j->id);
        pk_str(&pk, "user");
        pk_str(&pk, user);
        pk_str(&pk, "model");
        pk_str(&pk, j->model);
        pk_str(&pk, "input");
        msgpack_pack_map(&pk, 3);
        pk_str(&pk, "dtype");
        pk_str(&pk, "f32");
        pk_str(&pk, "shape");
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint32(&pk, (uint32_t)j->rows);
        msgpack_pack_uint32(&pk, (uint32_t)j->cols);
        pk_str(&pk, "data");
        msgpack_pack_bin_with_body(&pk, j->x, (size_t)j->rows * (size_t)j->cols * 4);
        if (j->version) {
                pk_str(&pk, "version");
                msgpack_pack_uint32(&pk, j->version);
        }
        if (j->output) {
                pk_str(&pk, "output");
                pk_str(&pk, j->output);
        }
        if (j->k) {
                pk_str(&pk, "k");
                msgpack_pack_uint32(&pk, j->k);
        }
        j->sent_ms = wall_ms();
        do {
                err = rd_kafka_producev(t->rk, RD_KAFKA_V_TOPIC(TOPIC),
                                        RD_KAFKA_V_KEY(user, strlen(user)),
                                        RD_KAFKA_V_VALUE(sb.data, sb.size),
                                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
                if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        rd_kafka_poll(t->rk, 10);
        } while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL);
        assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
        rd_kafka_poll(t->rk, 0);
        msgpack_sbuffer_destroy(&sb);
}

static void job_fill(tjob_t *j, const char *tag, int n, const char *model, int rows, int cols)
{
        memset(j, 0, sizeof(*j));
        snprintf(j->id, sizeof(j->id), "%s-%d", tag, n);
        j->model = model;
        j->rows = rows;
        j->cols = cols;
        for (int i = 0; i < rows * cols; i++)
                j->x[i] = (float)(rnd() * 2);
}

typedef struct tres_s {
        char status[16], error[32], message[1024];
        unsigned version;
        int rows, cols;
        long long enqueued, started;
        float out[4 * 64];
} tres_t;

/* Reads job j's result; 0 if there is none yet. */
static int result(reg_t *t, const tjob_t *j, tres_t *r)
{
        kf_result_t res;
        int rc = kt_result_get(t->c, j->user, j->id, &res);

        memset(r, 0, sizeof(*r));
        assert_true(rc >= 0);
        if (rc == 0)
                return 0;
        snprintf(r->status, sizeof(r->status), "%s", res.ok ? "ok" : "error");
        r->version = (unsigned)res.version;
        r->rows = (int)res.rows;
        r->cols = (int)res.cols;
        if (res.output && (size_t)res.rows * res.cols <= sizeof(r->out) / sizeof(r->out[0]))
                memcpy(r->out, res.output, (size_t)res.rows * res.cols * sizeof(float));
        snprintf(r->error, sizeof(r->error), "%s", res.error);
        snprintf(r->message, sizeof(r->message), "%s", res.message);
        r->enqueued = (long long)res.enqueued;
        r->started = (long long)res.started;
        kf_result_clear(&res);
        return 1;
}

static void wait_result(reg_t *t, const tjob_t *j, tres_t *r, int timeout_ms)
{
        long long until = kt_now_ms() + timeout_ms;
        while (!result(t, j, r)) {
                if (kt_now_ms() > until) {
                        kt_stack_fail(&t->stack);
                        fail_msg("no result for job %s of %s after %d ms", j->id, j->user,
                                 timeout_ms);
                }
                usleep(5000);
        }
}

/* Compares a raw output against a weighted sum of references. */
static int matches(const tres_t *r, const tjob_t *j, int n, const tm_t *const *m, const double *w)
{
        int out = tm_out(m[0]);
        if (r->rows != j->rows || r->cols != out)
                return 0;
        for (int row = 0; row < j->rows; row++) {
                double want[64] = {0}, y[64];
                for (int k = 0; k < n; k++) {
                        tm_ref(m[k], j->x + row * j->cols, y);
                        for (int c = 0; c < out; c++)
                                want[c] += w[k] * y[c];
                }
                for (int c = 0; c < out; c++)
                        if (fabs(r->out[row * out + c] - want[c]) > 1e-5 * fmax(1.0, fabs(want[c])))
                                return 0;
        }
        return 1;
}

static void expect_ok(reg_t *t, const tjob_t *j, const tres_t *r, unsigned version, int n,
                      const tm_t *const *m, const double *w)
{
        if (strcmp(r->status, "ok")) {
                kt_stack_fail(&t->stack);
                fail_msg("job %s: %s %s: %s", j->id, r->status, r->error, r->message);
        }
        if (version && r->version != version)
                fail_msg("job %s: version %u, expected %u", j->id, r->version, version);
        if (!matches(r, j, n, m, w))
                fail_msg("job %s: output differs from the reference (shape %d,%d)", j->id, r->rows,
                         r->cols);
}

static void flush_producer(reg_t *t)
{
        assert_int_equal(rd_kafka_flush(t->rk, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
        assert_int_equal(t->failed, 0);
}

/* ---- 1: the CLI against the registry (no workers) ---- */

static void test_cli(void **state)
{
        reg_t *t = *state;
        const int d[] = {4, 6, 3}, d2[] = {4, 5};
        const char *acts[] = {"relu", "identity"};
        tm_t m, other;
        char path[512], args[1024], *out;
        json_t *j, *vers;
        int slots[8];

        tm_init(&m, "m", 2, d, acts);
        tm_init(&other, "m", 1, d2, acts + 1);
        push_tm(t, &m, 1, 1);

        /* Eight operators pushing at once get eight different versions. */
        path_in(t, path, sizeof(path), "m-1.kmodel");
        for (int i = 0; i < 8; i++) {
                char id[32], cmd[1024];
                const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
                snprintf(id, sizeof(id), "push-%d", i);
                snprintf(cmd, sizeof(cmd), "exec %s/kinfer model push %s", t->stack.bindir, path);
                slots[i] = kt_stack_spawn(&t->stack, id, argv, NULL);
                assert_true(slots[i] >= 0);
        }
        for (int i = 0; i < 8; i++)
                assert_int_equal(kt_stack_wait(&t->stack, slots[i], 30000), 0);
        j = kinfer_json(t, "model show m --json");
        vers = json_object_get(j, "versions");
        assert_int_equal(json_array_size(vers), 9);
        for (size_t i = 0; i < 9; i++)
                assert_int_equal(
                    json_integer_value(json_object_get(json_array_get(vers, i), "version")), i + 1);
        assert_int_equal(json_integer_value(json_object_get(j, "active")), 1);
        assert_string_equal(json_string_value(json_object_get(json_array_get(vers, 0), "kind")),
                            "mlp");
        assert_int_equal(json_integer_value(json_object_get(json_array_get(vers, 0), "layers")), 2);
        json_decref(j);

        /* activate, rollback (twice: an undo, then nothing left) */
        out = kinfer_ok(t, "model activate m 3");
        assert_non_null(strstr(out, "m version 3 active (was 1)"));
        free(out);
        out = kinfer_ok(t, "model activate m 5");
        free(out);
        out = kinfer_ok(t, "model rollback m");
        assert_non_null(strstr(out, "version 3 active (was 5)"));
        free(out);
        out = kinfer_ok(t, "model rollback m");
        assert_non_null(strstr(out, "version 1 active (was 3)"));
        free(out);
        kinfer_refused(t, 1, "no earlier active version", "model rollback m");
        kinfer_refused(t, 1, "model 'm' has no version 42 (versions: 1, 2, 3, 4, 5, 6, 7, 8, 9)",
                       "model activate m 42");
        kinfer_refused(t, 1, "unknown model 'nope'", "model show nope");

        /* rm: never the active version without --force; numbers never reused */
        kinfer_refused(t, 1, "version 1 is the active version of 'm'", "model rm m 1");
        out = kinfer_ok(t, "model rm m 9");
        free(out);
        out = kinfer_ok(t, "model rm m 8");
        free(out);
        push_tm(t, &m, 0, 10);
        out = kinfer_ok(t, "model rm --force m 1");
        free(out);
        j = kinfer_json(t, "model show --json m");
        assert_int_equal(json_integer_value(json_object_get(j, "active")), 0);
        assert_int_equal(json_integer_value(json_object_get(j, "last_version")), 10);
        assert_int_equal(json_array_size(json_object_get(j, "versions")), 7);
        json_decref(j);
        out = kinfer_ok(t, "model list");
        assert_non_null(strstr(out, "m "));
        assert_non_null(strstr(out, "2, 3, 4, 5, 6, 7, 10"));
        free(out);
        out = kinfer_ok(t, "model activate m 2");
        assert_non_null(strstr(out, "m version 2 active (was none)"));
        free(out);

        /* --name stores a file under another name */
        path_in(t, path, sizeof(path), "m-1.kmodel");
        snprintf(args, sizeof(args), "model push --name renamed --json %s", path);
        j = kinfer_json(t, args);
        assert_string_equal(json_string_value(json_object_get(j, "name")), "renamed");
        assert_int_equal(json_integer_value(json_object_get(j, "version")), 1);
        json_decref(j);

        /* What validation refuses never reaches the registry. */
        {
                char bad[512];
                FILE *fp;
                long size;
                char *buf;
                path_in(t, bad, sizeof(bad), "truncated.kmodel");
                fp = fopen(path, "rb");
                fseek(fp, 0, SEEK_END);
                size = ftell(fp);
                rewind(fp);
                buf = malloc((size_t)size);
                assert_int_equal(fread(buf, 1, (size_t)size, fp), (size_t)size);
                fclose(fp);
                write_file(bad, buf, (size_t)size - 5);
                snprintf(args, sizeof(args), "model push %s", bad);
                kinfer_refused(t, 1, "refused: not valid msgpack", args);
                /* a NaN weight: W[0] of layer 0 comes right after its bin header */
                memcpy(buf + (memmem(buf, (size_t)size, m.W[0], 4) - (void *)buf), &(float){NAN},
                       4);
                write_file(bad, buf, (size_t)size);
                kinfer_refused(t, 1, "refused: layer 0: W[0] is NaN", args);
                free(buf);
        }

        /* Ensembles: members must exist, fit, and form no cycle. */
        {
                const tmember_t e1[] = {{"m", 0, 0.5}, {"m", 3, 0.5}};
                const tmember_t e_missing[] = {{"ghost", 0, 1}};
                const tmember_t e_dims[] = {{"m", 0, 1}, {"other", 1, 1}};
                const tmember_t f1[] = {{"e", 0, 2}};
                const tmember_t e2[] = {{"f", 0, 1}};
                char p[512];

                snprintf(other.name, sizeof(other.name), "other");
                push_tm(t, &other, 1, 1);
                path_in(t, p, sizeof(p), "e.kmodel");
                ens_write(p, "e", 4, 3, 2, e1);
                push_file(t, p, 1, 1);
                ens_write(p, "e", 4, 3, 1, e_missing);
                snprintf(args, sizeof(args), "model push %s", p);
                kinfer_refused(t, 1, "member 'ghost' is not in the registry", args);
                ens_write(p, "e", 4, 3, 2, e_dims);
                kinfer_refused(t, 1, "member 'other' version 1 is 4->5, the ensemble is 4->3",
                               args);
                path_in(t, p, sizeof(p), "f.kmodel");
                ens_write(p, "f", 4, 3, 1, f1);
                push_file(t, p, 1, 1);
                path_in(t, p, sizeof(p), "e2.kmodel");
                ens_write(p, "e", 4, 3, 1, e2);
                snprintf(args, sizeof(args), "model push %s", p);
                kinfer_refused(t, 1, "cycle: e v2 -> f v1 -> e v2", args);
                j = kinfer_json(t, "model show e --json");
                assert_int_equal(json_integer_value(json_object_get(j, "last_version")), 1);
                json_decref(j);

                /* e follows m: m may not become 4->5 (unless --force) */
                snprintf(other.name, sizeof(other.name), "m");
                path_in(t, p, sizeof(p), "m-wide.kmodel");
                tm_write(&other, p);
                snprintf(args, sizeof(args), "model push --activate %s", p);
                kinfer_refused(t, 1,
                               "ensemble 'e' version 1 follows 'm' and is 4->3, but 'm' version "
                               "11 is 4->5",
                               args);
                push_file(t, p, 0, 11);
                kinfer_refused(t, 1, "follows 'm'", "model activate m 11");
                out = kinfer_ok(t, "model activate --force m 11");
                free(out);
                out = kinfer_ok(t, "model activate m 2");
                free(out);
                kinfer_refused(t, 1, "version 3 of 'm' is a pinned member of 'e' version 1",
                               "model rm m 3");
                out = kinfer_ok(t, "model show e");
                assert_non_null(strstr(out, "output = 0.5 x m (active) + 0.5 x m v3"));
                assert_non_null(strstr(out, "weighted sum of its members' outputs"));
                free(out);
        }
        tm_free(&m);
        tm_free(&other);
}

/* ---- 2: MLPs of several shapes, through workers that load on first use */

static void test_shapes(void **state)
{
        reg_t *t = *state;
        const int d1[] = {8, 16, 4}, d2[] = {3, 2}, d3[] = {16, 32, 32, 10};
        const char *a1[] = {"tanh", "identity"}, *a2[] = {"identity"},
                   *a3[] = {"relu", "sigmoid", "identity"};
        tm_t m[3];
        tjob_t *jobs = calloc(64, sizeof(*jobs));
        tres_t r;
        double one = 1;
        int n = 0;

        assert_non_null(jobs);
        tm_init(&m[0], "s1", 2, d1, a1);
        tm_init(&m[1], "s2", 1, d2, a2);
        tm_init(&m[2], "s3", 3, d3, a3);
        for (int i = 0; i < 3; i++)
                push_tm(t, &m[i], 1, 1);
        /* workers start after the pushes: they load on first use */
        spawn_worker(t, "w1");
        spawn_worker(t, "w2");
        for (int i = 0; i < 3; i++)
                for (int k = 0; k < 12; k++, n++) {
                        job_fill(&jobs[n], "shape", n, m[i].name, 1 + k % 4, m[i].dims[0]);
                        produce(t, &jobs[n], "shapes");
                }
        flush_producer(t);
        for (int i = 0; i < n; i++) {
                const tm_t *mm = &m[i / 12];
                wait_result(t, &jobs[i], &r, 90000);
                expect_ok(t, &jobs[i], &r, 1, 1, &mm, &one);
        }

        /* Post-processing of s3 (10 outputs): softmax, argmax, topk 3. */
        {
                const char *outs[] = {"softmax", "argmax", "topk"};
                const tm_t *mm = &m[2];
                for (int i = 0; i < 3; i++) {
                        job_fill(&jobs[n + i], "post", i, "s3", 3, 16);
                        jobs[n + i].output = outs[i];
                        jobs[n + i].k = i == 2 ? 3 : 0;
                        produce(t, &jobs[n + i], "shapes");
                }
                flush_producer(t);
                for (int i = 0; i < 3; i++) {
                        tjob_t *j = &jobs[n + i];
                        wait_result(t, j, &r, 30000);
                        assert_string_equal(r.status, "ok");
                        assert_int_equal(r.rows, 3);
                        assert_int_equal(r.cols, i == 0 ? 10 : i == 1 ? 1 : 6);
                        for (int row = 0; row < 3; row++) {
                                double y[10], mx = -INFINITY, sum = 0;
                                int best = 0;
                                tm_ref(mm, j->x + row * 16, y);
                                for (int c = 0; c < 10; c++) {
                                        mx = fmax(mx, y[c]);
                                        best = y[c] > y[best] ? c : best;
                                }
                                for (int c = 0; c < 10; c++)
                                        sum += exp(y[c] - mx);
                                if (i == 0) {
                                        for (int c = 0; c < 10; c++)
                                                assert_true(fabs(r.out[row * 10 + c] -
                                                                 exp(y[c] - mx) / sum) < 1e-5);
                                } else if (i == 1) {
                                        assert_true(r.out[row] == (float)best);
                                } else {
                                        /* indices of the 3 largest, largest first, then values */
                                        double last = INFINITY;
                                        for (int q = 0; q < 3; q++) {
                                                int idx = (int)r.out[row * 6 + q];
                                                int above = 0;
                                                assert_true(idx >= 0 && idx < 10);
                                                for (int c = 0; c < 10; c++)
                                                        above += y[c] > y[idx];
                                                assert_int_equal(above, q);
                                                assert_true(y[idx] <= last);
                                                last = y[idx];
                                                assert_true(fabs(r.out[row * 6 + 3 + q] - y[idx]) <
                                                            1e-5 * fmax(1, fabs(y[idx])));
                                        }
                                }
                        }
                }
        }

        /* A pinned version that does not exist; a k the model cannot give. */
        job_fill(&jobs[n], "pin", 0, "s1", 1, 8);
        jobs[n].version = 7;
        produce(t, &jobs[n], "shapes");
        job_fill(&jobs[n + 1], "bigk", 0, "s3", 1, 16);
        jobs[n + 1].output = "topk";
        jobs[n + 1].k = 11;
        produce(t, &jobs[n + 1], "shapes");
        flush_producer(t);
        wait_result(t, &jobs[n], &r, 30000);
        assert_string_equal(r.status, "error");
        assert_string_equal(r.error, "unknown_model");
        assert_string_equal(r.message, "model 's1' has no version 7 (versions: 1)");
        wait_result(t, &jobs[n + 1], &r, 30000);
        assert_string_equal(r.error, "bad_request");
        assert_non_null(strstr(r.message, "k = 11, but model 's3' version 1 has 10 outputs"));
        for (int i = 0; i < 3; i++)
                tm_free(&m[i]);
        free(jobs);
}

/* ---- 3: an ensemble, and a member it follows moving on ---- */

static void test_ensemble(void **state)
{
        reg_t *t = *state;
        const int da[] = {8, 12, 4}, db[] = {8, 4};
        const char *aa[] = {"tanh", "identity"}, *ab[] = {"sigmoid"};
        tm_t a, b1, b2;
        /* e = 0.7 a + 0.3 b (follows b) - 0.5 b@2 (pinned) */
        const tmember_t mem[] = {{"a", 0, 0.7}, {"b", 0, 0.3}, {"b", 2, -0.5}};
        const double w[] = {0.7, 0.3, -0.5};
        const tm_t *before[3] = {&a, &b1, &b2}, *after[3] = {&a, &b2, &b2};
        tjob_t jobs[40];
        tres_t r;
        char p[512], *out;
        long long switched;

        tm_init(&a, "a", 2, da, aa);
        tm_init(&b1, "b", 1, db, ab);
        tm_init(&b2, "b", 1, db, ab);
        push_tm(t, &a, 1, 1);
        push_tm(t, &b1, 1, 1);
        push_tm(t, &b2, 0, 2);
        path_in(t, p, sizeof(p), "e.kmodel");
        ens_write(p, "e", 8, 4, 3, mem);
        push_file(t, p, 1, 1);
        spawn_worker(t, "ew1");

        for (int i = 0; i < 20; i++) {
                job_fill(&jobs[i], "ens", i, "e", 1 + i % 4, 8);
                produce(t, &jobs[i], "ens");
        }
        flush_producer(t);
        for (int i = 0; i < 20; i++) {
                wait_result(t, &jobs[i], &r, 90000);
                expect_ok(t, &jobs[i], &r, 1, 3, before, w);
        }

        /* b v2 becomes active: e follows it (its own version stays 1) */
        switched = wall_ms();
        out = kinfer_ok(t, "model activate b 2");
        free(out);
        usleep(1000 * 1000);
        for (int i = 20; i < 40; i++) {
                job_fill(&jobs[i], "ens", i, "e", 1 + i % 4, 8);
                produce(t, &jobs[i], "ens");
        }
        flush_producer(t);
        for (int i = 20; i < 40; i++) {
                wait_result(t, &jobs[i], &r, 30000);
                assert_true(r.enqueued >= switched + 1000);
                expect_ok(t, &jobs[i], &r, 1, 3, after, w);
        }
        tm_free(&a);
        tm_free(&b1);
        tm_free(&b2);
}

/* ---- 4: activate and roll back under continuous load ---- */

#define LOAD_MAX 4000

typedef struct load_s {
        reg_t *t;
        tjob_t *jobs;
        int n;    /* produced so far (written by the producer thread) */
        int stop; /* atomic */
} load_t;

static void *load_thread(void *arg)
{
        load_t *l = arg;
        while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE) && l->n < LOAD_MAX) {
                tjob_t *j = &l->jobs[l->n];
                char user[16];
                snprintf(user, sizeof(user), "load%d", l->n % 4);
                produce(l->t, j, user);
                __atomic_store_n(&l->n, l->n + 1, __ATOMIC_RELEASE);
                usleep(4000); /* ~250 jobs/s */
        }
        return NULL;
}

static void test_hot_swap_under_load(void **state)
{
        reg_t *t = *state;
        const int d[] = {10, 24, 5};
        const char *acts[] = {"tanh", "identity"};
        tm_t v1, v2;
        const tm_t *m1 = &v1, *m2 = &v2;
        double one = 1;
        load_t l = {t, NULL, 0, 0};
        pthread_t th;
        tres_t r;
        tjob_t warm;
        long long t_act, t_rb;
        int n, count[3] = {0, 0, 0};
        char *out;

        tm_init(&v1, "live", 2, d, acts);
        tm_init(&v2, "live", 2, d, acts);
        push_tm(t, &v1, 1, 1);
        push_tm(t, &v2, 0, 2);
        spawn_worker(t, "lw1");
        spawn_worker(t, "lw2");
        /* warm up: both workers in the group, the model loaded */
        job_fill(&warm, "warm", 0, "live", 1, 10);
        produce(t, &warm, "load0");
        flush_producer(t);
        wait_result(t, &warm, &r, 90000);
        usleep(3000 * 1000);

        l.jobs = calloc(LOAD_MAX, sizeof(*l.jobs));
        assert_non_null(l.jobs);
        for (int i = 0; i < LOAD_MAX; i++)
                job_fill(&l.jobs[i], "load", i, "live", 1 + i % 3, 10);
        assert_int_equal(pthread_create(&th, NULL, load_thread, &l), 0);
        usleep(2000 * 1000);
        t_act = wall_ms();
        out = kinfer_ok(t, "model activate live 2");
        free(out);
        usleep(3000 * 1000);
        t_rb = wall_ms();
        out = kinfer_ok(t, "model rollback live");
        assert_non_null(strstr(out, "version 1 active (was 2)"));
        free(out);
        usleep(3000 * 1000);
        __atomic_store_n(&l.stop, 1, __ATOMIC_RELEASE);
        pthread_join(th, NULL);
        flush_producer(t);
        n = __atomic_load_n(&l.n, __ATOMIC_ACQUIRE);
        print_message("%d jobs under load; activate at +%lld ms, rollback at +%lld ms\n", n,
                      t_act - l.jobs[0].sent_ms, t_rb - l.jobs[0].sent_ms);
        assert_true(n > 1000);

        for (int i = 0; i < n; i++) {
                tjob_t *j = &l.jobs[i];
                wait_result(t, j, &r, 60000);
                if (strcmp(r.status, "ok")) {
                        kt_stack_fail(&t->stack);
                        fail_msg("job %s failed: %s: %s", j->id, r.error, r.message);
                }
                if (r.version != 1 && r.version != 2)
                        fail_msg("job %s: version %u", j->id, r.version);
                /* the version it names is the one that computed it */
                expect_ok(t, j, &r, r.version, 1, r.version == 1 ? &m1 : &m2, &one);
                count[r.version]++;
                /* new jobs use the new version within one second (until the
                 * rollback began: t_rb is taken before the CLI runs) */
                if (j->sent_ms >= t_act + 1000 && r.started < t_rb && r.version != 2)
                        fail_msg("job %s sent %lld ms after activate got version %u", j->id,
                                 j->sent_ms - t_act, r.version);
                if (j->sent_ms >= t_rb + 1000 && r.version != 1)
                        fail_msg("job %s sent %lld ms after rollback got version %u", j->id,
                                 j->sent_ms - t_rb, r.version);
                /* picked up before a switch began: the version before it */
                if (r.started < t_act && r.version != 1)
                        fail_msg("job %s picked up before the activation got version %u", j->id,
                                 r.version);
                if (r.started >= t_act + 1000 && r.started < t_rb && r.version != 2)
                        fail_msg("job %s picked up %lld ms after activate got version %u", j->id,
                                 r.started - t_act, r.version);
        }
        print_message("v1 computed %d jobs, v2 %d, none failed\n", count[1], count[2]);
        assert_true(count[2] > 300);
        free(l.jobs);
        tm_free(&v1);
        tm_free(&v2);
}

/* ---- 5: a corrupt blob written straight into Redis ---- */

static int log_has(reg_t *t, int slot, const char *what)
{
        FILE *fp = fopen(t->stack.procs[slot].log, "r");
        char line[2048];
        int found = 0;
        if (!fp)
                return 0;
        while (!found && fgets(line, sizeof(line), fp))
                found = strstr(line, what) != NULL;
        fclose(fp);
        return found;
}

static void hand_version(reg_t *t, unsigned v, const char *sha, size_t claimed, const void *bytes,
                         size_t len)
{
        char msg[64];
        redisReply *rep;
        rep = redisCommand(t->c, "SET kinfer:model:hand:%u %b", v, bytes, len);
        assert_non_null(rep);
        if (rep->type != REDIS_REPLY_STATUS)
                fail_msg("SET: %s", rep->str);
        freeReplyObject(rep);
        rep = redisCommand(t->c,
                           "HSET kinfer:model-meta:hand next %u %u:size %llu %u:sha256 %s "
                           "%u:kind mlp %u:input_dim 6 %u:output_dim 3 active %u",
                           v, v, (unsigned long long)claimed, v, sha, v, v, v, v);
        assert_non_null(rep);
        if (rep->type != REDIS_REPLY_INTEGER)
                fail_msg("HSET: %s", rep->str);
        freeReplyObject(rep);
        rep = redisCommand(t->c, "HINCRBY kinfer:model-meta:hand seq 1");
        freeReplyObject(rep);
        snprintf(msg, sizeof(msg), "activate hand %u", v);
        rep = redisCommand(t->c, "PUBLISH kinfer:models %s", msg);
        assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
        assert_int_equal(rep->integer, 1); /* the worker's reloader listens */
        freeReplyObject(rep);
}

static void sha256_of(reg_t *t, const char *path, char *hex)
{
        char cmd[1024], *out = NULL;
        const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
        snprintf(cmd, sizeof(cmd), "sha256sum %s | cut -c1-64", path);
        assert_int_equal(kt_stack_run(&t->stack, argv, NULL, &out, 10000), 0);
        memcpy(hex, out, 64);
        hex[64] = '\0';
        free(out);
}

static void test_corrupt_blob(void **state)
{
        reg_t *t = *state;
        const int d[] = {6, 3};
        const char *acts[] = {"tanh"};
        tm_t good, next;
        const tm_t *mg = &good;
        double one = 1;
        char p[512], sha[65];
        tjob_t jobs[30];
        tres_t r;
        FILE *fp;
        char *buf;
        long size;
        int w;

        tm_init(&good, "hand", 1, d, acts);
        tm_init(&next, "hand", 1, d, acts);
        push_tm(t, &good, 1, 1);
        w = spawn_worker(t, "cw1");
        job_fill(&jobs[0], "corrupt", 0, "hand", 2, 6);
        produce(t, &jobs[0], "c");
        flush_producer(t);
        wait_result(t, &jobs[0], &r, 90000);
        expect_ok(t, &jobs[0], &r, 1, 1, &mg, &one);

        /* v2: correct metadata, a blob cut short */
        path_in(t, p, sizeof(p), "next.kmodel");
        tm_write(&next, p);
        sha256_of(t, p, sha);
        fp = fopen(p, "rb");
        fseek(fp, 0, SEEK_END);
        size = ftell(fp);
        rewind(fp);
        buf = malloc((size_t)size);
        assert_int_equal(fread(buf, 1, (size_t)size, fp), (size_t)size);
        fclose(fp);
        hand_version(t, 2, sha, (size_t)size, buf, (size_t)size - 7);
        /* v3: a blob that matches its checksum, with a NaN weight */
        memcpy(memmem(buf, (size_t)size, next.W[0], 4), &(float){NAN}, 4);
        write_file(p, buf, (size_t)size);
        sha256_of(t, p, sha);
        usleep(300 * 1000);
        for (int i = 1; i < 15; i++) {
                job_fill(&jobs[i], "corrupt", i, "hand", 1, 6);
                produce(t, &jobs[i], "c");
        }
        flush_producer(t);
        hand_version(t, 3, sha, (size_t)size, buf, (size_t)size);
        usleep(300 * 1000);
        for (int i = 15; i < 29; i++) {
                job_fill(&jobs[i], "corrupt", i, "hand", 1, 6);
                produce(t, &jobs[i], "c");
        }
        job_fill(&jobs[29], "corrupt", 29, "hand", 1, 6);
        jobs[29].version = 3;
        produce(t, &jobs[29], "c");
        flush_producer(t);
        /* every job without a version: the last good one, computed right */
        for (int i = 1; i < 29; i++) {
                wait_result(t, &jobs[i], &r, 30000);
                expect_ok(t, &jobs[i], &r, 1, 1, &mg, &one);
        }
        wait_result(t, &jobs[29], &r, 30000);
        assert_string_equal(r.error, "internal");
        assert_non_null(strstr(r.message, "model 'hand' version 3 cannot be loaded: layer 0: "
                                          "W[0] is NaN"));
        /* and the worker said why */
        if (!log_has(t, w, "model hand v2 refused: blob has") || !log_has(t, w, "truncated") ||
            !log_has(t, w, "model hand v3 refused: layer 0: W[0] is NaN") ||
            !log_has(t, w, "still serving version 1")) {
                kt_stack_fail(&t->stack);
                fail_msg("the worker's log does not say why v2 and v3 were refused");
        }
        free(buf);
        tm_free(&good);
        tm_free(&next);
}

/* ---- 6: numpy weights through kinfer-convert, checked against numpy ---- */

static const char convert_py[] =
    "import numpy as np, sys\n"
    "d = sys.argv[1]\n"
    "rng = np.random.default_rng(7)\n"
    "sd = {'fc1.weight': rng.standard_normal((20, 12)).astype(np.float32) * 0.4,\n"
    "      'fc1.bias': rng.standard_normal(20).astype(np.float32) * 0.1,\n"
    "      'fc2.weight': rng.standard_normal((20, 20)).astype(np.float32) * 0.3,\n"
    "      'fc2.bias': rng.standard_normal(20).astype(np.float32) * 0.1,\n"
    "      'out.weight': rng.standard_normal((5, 20)).astype(np.float32) * 0.3,\n"
    "      'out.bias': rng.standard_normal(5).astype(np.float32) * 0.1}\n"
    "np.savez(d + '/torch.npz', **sd)\n"
    "k = {'W0': sd['fc1.weight'].T * 2, 'b0': sd['fc1.bias'], 'W1': sd['fc2.weight'].T,\n"
    "     'b1': sd['fc2.bias'], 'W2': sd['out.weight'].T, 'b2': sd['out.bias']}\n"
    "np.savez(d + '/kinfer.npz', **k)\n"
    "x = rng.standard_normal((16, 12)).astype(np.float32)\n"
    "x.tofile(d + '/x.f32')\n"
    "def fwd(W0, b0, W1, b1, W2, b2):\n"
    "    x64 = x.astype(np.float64)\n"
    "    h = np.maximum(x64 @ W0.astype(np.float64) + b0, 0)\n"
    "    h = np.tanh(h @ W1.astype(np.float64) + b1)\n"
    "    return h @ W2.astype(np.float64) + b2\n"
    "fwd(sd['fc1.weight'].T, sd['fc1.bias'], sd['fc2.weight'].T, sd['fc2.bias'],\n"
    "    sd['out.weight'].T, sd['out.bias']).tofile(d + '/ref1.f64')\n"
    "fwd(k['W0'], k['b0'], k['W1'], k['b1'], k['W2'], k['b2']).tofile(d + '/ref2.f64')\n";

static void read_all(const char *path, void *buf, size_t len)
{
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        assert_int_equal(fread(buf, 1, len, fp), len);
        fclose(fp);
}

static void test_convert(void **state)
{
        reg_t *t = *state;
        char py[512], cmd[12288], p[512], bin[PATH_MAX], *out = NULL;
        const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
        float x[16 * 12];
        double ref[2][16 * 5];
        tjob_t jobs[32];
        tres_t r;

        assert_non_null(realpath(t->stack.bindir, bin));
        path_in(t, py, sizeof(py), "make_weights.py");
        write_file(py, convert_py, sizeof(convert_py) - 1);
        snprintf(cmd, sizeof(cmd),
                 "/usr/bin/python3 %s %s && cd %s && %s/kinfer-convert torch.npz --name conv "
                 "--act relu,tanh,identity -o torch.kmodel && %s/kinfer-convert kinfer.npz "
                 "--name conv --act relu,tanh,identity -o kinfer.kmodel 2>&1",
                 py, t->stack.dir, t->stack.dir, bin, bin);
        if (kt_stack_run(&t->stack, argv, NULL, &out, 60000) != 0)
                fail_msg("numpy / kinfer-convert failed: %s", out ? out : "");
        free(out);
        path_in(t, p, sizeof(p), "x.f32");
        read_all(p, x, sizeof(x));
        path_in(t, p, sizeof(p), "ref1.f64");
        read_all(p, ref[0], sizeof(ref[0]));
        path_in(t, p, sizeof(p), "ref2.f64");
        read_all(p, ref[1], sizeof(ref[1]));
        path_in(t, p, sizeof(p), "torch.kmodel");
        push_file(t, p, 1, 1);
        path_in(t, p, sizeof(p), "kinfer.kmodel");
        push_file(t, p, 0, 2);
        spawn_worker(t, "cvw");
        for (int v = 0; v < 2; v++)
                for (int i = 0; i < 16; i++) {
                        tjob_t *j = &jobs[v * 16 + i];
                        memset(j, 0, sizeof(*j));
                        snprintf(j->id, sizeof(j->id), "conv-%d-%d", v, i);
                        j->model = "conv";
                        j->version = (unsigned)v + 1;
                        j->rows = 1;
                        j->cols = 12;
                        memcpy(j->x, x + i * 12, 12 * sizeof(float));
                        produce(t, j, "conv");
                }
        flush_producer(t);
        for (int v = 0; v < 2; v++)
                for (int i = 0; i < 16; i++) {
                        wait_result(t, &jobs[v * 16 + i], &r, 90000);
                        assert_string_equal(r.status, "ok");
                        assert_int_equal(r.version, v + 1);
                        assert_int_equal(r.cols, 5);
                        for (int c = 0; c < 5; c++) {
                                double want = ref[v][i * 5 + c];
                                if (fabs(r.out[c] - want) > 1e-5 * fmax(1.0, fabs(want)))
                                        fail_msg("conv v%d row %d col %d: got %.9g, numpy %.9g",
                                                 v + 1, i, c, r.out[c], want);
                        }
                }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_cli, setup_redis_only, teardown),
            cmocka_unit_test_setup_teardown(test_shapes, setup, teardown),
            cmocka_unit_test_setup_teardown(test_ensemble, setup, teardown),
            cmocka_unit_test_setup_teardown(test_hot_swap_under_load, setup, teardown),
            cmocka_unit_test_setup_teardown(test_corrupt_blob, setup, teardown),
            cmocka_unit_test_setup_teardown(test_convert, setup, teardown),
        };
        if (getenv("KT_TEST")) /* e.g. KT_TEST='test_corrupt*' runs only those */
                cmocka_set_test_filter(getenv("KT_TEST"));
        return cmocka_run_group_tests(tests, NULL, NULL);
}
