/* test_model_store.c - the worker's registry-backed model store, in this
 * process, against a real redis-server: first use, hot swaps seen within a
 * second and never waited for, corrupt blobs refused while the last good
 * version keeps serving, ensembles that follow a member, a Redis restart.
 * Expected outputs come from the test's own weights with plain double loops.
 * The directory store (--models DIR) is tested here too: every version is
 * scanned, and names cannot leave DIR. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../worker/model_store.h"
#include "../harness/stack.h"
#include "kf_log.h"
#include "kf_redis.h"
#include "model.h"
#include "model_registry.h"

#define PREFIX "kinfer:"

/* ---- models the test owns ---- */

#define TM_MAX_LAYERS 3
typedef struct tm_s {
        int n_layers, dims[TM_MAX_LAYERS + 1];
        model_act_t acts[TM_MAX_LAYERS];
        float *W[TM_MAX_LAYERS], *b[TM_MAX_LAYERS];
} tm_t;

static uint64_t rng = 99;
static double rnd(void)
{
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

static void tm_init(tm_t *t, int n_layers, const int *dims)
{
        memset(t, 0, sizeof(*t));
        t->n_layers = n_layers;
        for (int l = 0; l <= n_layers; l++)
                t->dims[l] = dims[l];
        for (int l = 0; l < n_layers; l++) {
                t->acts[l] = l + 1 == n_layers ? MODEL_ACT_IDENTITY : MODEL_ACT_TANH;
                t->W[l] = malloc(sizeof(float) * (size_t)dims[l] * (size_t)dims[l + 1]);
                t->b[l] = malloc(sizeof(float) * (size_t)dims[l + 1]);
                assert_non_null(t->W[l]);
                assert_non_null(t->b[l]);
                for (int i = 0; i < dims[l] * dims[l + 1]; i++)
                        t->W[l][i] = (float)(rnd() * 0.5);
                for (int i = 0; i < dims[l + 1]; i++)
                        t->b[l][i] = (float)(rnd() * 0.5);
        }
}

static void tm_free(tm_t *t)
{
        for (int l = 0; l < t->n_layers; l++) {
                free(t->W[l]);
                free(t->b[l]);
        }
}

static void tm_ref(const tm_t *t, const float *x, double *y)
{
        double a[4096], o[4096];
        for (int i = 0; i < t->dims[0]; i++)
                a[i] = x[i];
        for (int l = 0; l < t->n_layers; l++) {
                for (int j = 0; j < t->dims[l + 1]; j++) {
                        double s = t->b[l][j];
                        for (int i = 0; i < t->dims[l]; i++)
                                s += a[i] * t->W[l][(size_t)i * t->dims[l + 1] + j];
                        o[j] = t->acts[l] == MODEL_ACT_TANH ? tanh(s) : s;
                }
                memcpy(a, o, sizeof(double) * (size_t)t->dims[l + 1]);
        }
        memcpy(y, a, sizeof(double) * (size_t)t->dims[t->n_layers]);
}

/* The file of t named name (kinfer's encoder: the codec has its own tests). */
static char *tm_blob(const tm_t *t, const char *name, size_t *len)
{
        uint32_t dims[TM_MAX_LAYERS + 1];
        char err[256], *buf;
        model_t *m;
        for (int l = 0; l <= t->n_layers; l++)
                dims[l] = (uint32_t)t->dims[l];
        m = model_new_mlp(name, (uint32_t)t->n_layers, dims, t->acts, err, sizeof(err));
        assert_non_null(m);
        for (int l = 0; l < t->n_layers; l++) {
                memcpy(m->layers[l].W, t->W[l], sizeof(float) * (size_t)dims[l] * dims[l + 1]);
                memcpy(m->layers[l].b, t->b[l], sizeof(float) * dims[l + 1]);
        }
        assert_int_equal(model_encode(m, &buf, len, err, sizeof(err)), 0);
        model_unref(m);
        return buf;
}

static uint32_t push(redisContext *c, const char *name, const void *blob, size_t len, int activate)
{
        char err[512];
        uint32_t v = 0;
        mreg_rc_t rc = mreg_push(c, PREFIX, name, blob, len, activate, 0, &v, err, sizeof(err));
        if (rc != MREG_OK)
                fail_msg("push %s: %s", name, err);
        return v;
}

static uint32_t push_tm(redisContext *c, const tm_t *t, const char *name, int activate)
{
        size_t len;
        char *blob = tm_blob(t, name, &len);
        uint32_t v = push(c, name, blob, len, activate);
        free(blob);
        return v;
}

static void activate(redisContext *c, const char *name, uint32_t v)
{
        char err[512];
        if (mreg_activate(c, PREFIX, name, v, 0, NULL, err, sizeof(err)) != MREG_OK)
                fail_msg("activate %s %u: %s", name, v, err);
}

/* Checks m computes what the reference weighted sum of models computes. */
static void check_outputs(model_t *m, int n, const tm_t *const *models, const double *w)
{
        model_scratch_t s = {0};
        int din = models[0]->dims[0], dout = models[0]->dims[models[0]->n_layers];
        float x[4096], y[4096];
        assert_int_equal(m->input_dim, din);
        for (int row = 0; row < 3; row++) {
                double want[4096] = {0}, yr[4096];
                for (int i = 0; i < din; i++)
                        x[i] = (float)rnd();
                for (int k = 0; k < n; k++) {
                        tm_ref(models[k], x, yr);
                        for (int j = 0; j < dout; j++)
                                want[j] += w[k] * yr[j];
                }
                assert_int_equal(model_forward(m, x, 1, y, &s), 0);
                for (int j = 0; j < dout; j++)
                        if (fabs(y[j] - want[j]) > 1e-5 * fmax(1.0, fabs(want[j])))
                                fail_msg("model %s v%u col %d: got %.9g, reference %.9g", m->name,
                                         m->version, j, y[j], want[j]);
        }
        model_scratch_free(&s);
}

static model_t *get(ms_store_t *ms, const char *name, uint32_t version)
{
        char msg[512];
        kf_err_t err;
        model_t *m = ms_store_get(ms, name, version, &err, msg, sizeof(msg));
        if (!m)
                fail_msg("get %s v%u: %s: %s", name, version, kf_err_name(err), msg);
        assert_int_equal(err, KF_OK);
        return m;
}

static void get_fails(ms_store_t *ms, const char *name, uint32_t version, kf_err_t want_err,
                      const char *want_msg)
{
        char msg[512] = "";
        kf_err_t err = KF_OK;
        model_t *m = ms_store_get(ms, name, version, &err, msg, sizeof(msg));
        if (m || err != want_err || !strstr(msg, want_msg))
                fail_msg("get %s v%u: want %s \"%s\", got %s %s \"%s\"", name, version,
                         kf_err_name(want_err), want_msg, m ? "a model" : "NULL", kf_err_name(err),
                         msg);
}

static void sleep_ms(int ms)
{
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
}

/* Polls get(name, 0) until it returns version want; returns the ms it took,
 * or fails after timeout_ms. */
static long long wait_serving(ms_store_t *ms, const char *name, uint32_t want, int timeout_ms)
{
        long long t0 = kt_now_ms();
        for (;;) {
                model_t *m = get(ms, name, 0);
                uint32_t v = m->version;
                model_unref(m);
                if (v == want)
                        return kt_now_ms() - t0;
                if (kt_now_ms() - t0 > timeout_ms)
                        fail_msg("%s: still serving version %u, not %u, after %d ms", name, v, want,
                                 timeout_ms);
                sleep_ms(1);
        }
}

/* The store's reloader subscribes in the background: tests that publish
 * by hand wait for it (the store itself catches up on changes made before
 * it subscribed by comparing seq, which test_redis_restart covers). */
static void wait_subscribed(redisContext *c)
{
        long long until = kt_now_ms() + 5000;
        for (;;) {
                redisReply *r = redisCommand(c, "PUBSUB NUMSUB " PREFIX "models");
                long long n = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2
                                  ? r->element[1]->integer
                                  : 0;
                freeReplyObject(r);
                if (n >= 1)
                        return;
                if (kt_now_ms() > until)
                        fail_msg("the store did not subscribe to " PREFIX "models in 5 s");
                sleep_ms(5);
        }
}

typedef struct st_s {
        kt_stack_t stack;
        redisContext *c;
        ms_store_t *ms;
} st_t;

static int setup_args(void **state, const char *const *redis_args)
{
        st_t *t = calloc(1, sizeof(*t));
        char err[256];
        assert_non_null(t);
        assert_int_equal(kt_stack_init(&t->stack), 0);
        assert_int_equal(kt_stack_start_redis(&t->stack, redis_args), 0);
        assert_non_null(t->c = kt_stack_redis(&t->stack));
        /* Long resync: swaps must come from the change channel. */
        t->ms = ms_store_new_registry(t->stack.redis_url, PREFIX, 2000, 600000, err, sizeof(err));
        if (!t->ms)
                fail_msg("ms_store_new_registry: %s", err);
        wait_subscribed(t->c);
        *state = t;
        return 0;
}

static int setup(void **state)
{
        return setup_args(state, NULL);
}

static int setup_aof(void **state)
{
        static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
        return setup_args(state, aof);
}

static int teardown(void **state)
{
        st_t *t = *state;
        ms_store_destroy(t->ms);
        if (t->c)
                redisFree(t->c);
        kt_stack_stop(&t->stack);
        free(t);
        return 0;
}

/* First use loads from the registry; activate, pin, rollback. */
static void test_first_use_and_swaps(void **state)
{
        st_t *t = *state;
        const int dims[] = {6, 9, 4};
        tm_t m1, m2;
        const tm_t *one[1];
        const double w1[1] = {1};
        model_t *held, *m;
        long long ms;

        tm_init(&m1, 2, dims);
        tm_init(&m2, 2, dims);
        get_fails(t->ms, "mlp", 0, KF_ERR_UNKNOWN_MODEL, "unknown model 'mlp'");
        assert_int_equal(push_tm(t->c, &m1, "mlp", 1), 1);
        /* an unknown name is asked again after a second, or at once when
         * the registry announces it */
        sleep_ms(300);
        held = get(t->ms, "mlp", 0);
        assert_int_equal(held->version, 1);
        one[0] = &m1;
        check_outputs(held, 1, one, w1);

        assert_int_equal(push_tm(t->c, &m2, "mlp", 0), 2);
        m = get(t->ms, "mlp", 0);
        assert_int_equal(m->version, 1); /* pushed, not active */
        model_unref(m);
        m = get(t->ms, "mlp", 2); /* pinned */
        assert_int_equal(m->version, 2);
        one[0] = &m2;
        check_outputs(m, 1, one, w1);
        model_unref(m);

        activate(t->c, "mlp", 2);
        ms = wait_serving(t->ms, "mlp", 2, 1000);
        print_message("activate: serving v2 after %lld ms\n", ms);
        /* the job that held v1 still computes with v1 */
        one[0] = &m1;
        check_outputs(held, 1, one, w1);
        model_unref(held);

        assert_int_equal(mreg_rollback(t->c, PREFIX, "mlp", 0, NULL, NULL, NULL, 0), MREG_OK);
        ms = wait_serving(t->ms, "mlp", 1, 1000);
        print_message("rollback: serving v1 after %lld ms\n", ms);
        get_fails(t->ms, "mlp", 7, KF_ERR_UNKNOWN_MODEL,
                  "model 'mlp' has no version 7 (versions: "
                  "1, 2)");
        /* a version pushed after the cache last read the metadata */
        assert_int_equal(push_tm(t->c, &m2, "mlp", 0), 3);
        m = get(t->ms, "mlp", 3);
        assert_int_equal(m->version, 3);
        model_unref(m);
        tm_free(&m1);
        tm_free(&m2);
}

typedef struct flipper_s {
        const char *url;
        int rounds;
        long long done_ms;
} flipper_t;

static void *flip(void *arg)
{
        flipper_t *f = arg;
        struct timeval tv = {5, 0};
        kf_redis_url_t u;
        redisContext *c;
        char err[256];
        kf_redis_url_parse(f->url, &u, err, sizeof(err));
        c = redisConnectWithTimeout(u.host, u.port, tv);
        for (int i = 0; i < f->rounds; i++) {
                mreg_activate(c, PREFIX, "big", 1 + (uint32_t)(i % 2 == 0), 0, NULL, err,
                              sizeof(err));
                sleep_ms(150);
        }
        redisFree(c);
        __atomic_store_n(&f->done_ms, kt_now_ms(), __ATOMIC_RELEASE);
        return NULL;
}

/* Two 32 MiB versions swapped ten times while this thread, the loop thread,
 * asks for the model every 100 us: no lookup waits for a load (each takes
 * over 100 ms: GET, SHA-256, decode), every lookup succeeds, and both
 * versions are seen. */
static void test_lookups_never_wait(void **state)
{
        st_t *t = *state;
        const int dims[] = {2048, 4096, 2};
        tm_t a, b;
        flipper_t f = {t->stack.redis_url, 10, 0};
        pthread_t th;
        long long worst = 0, n = 0, seen[3] = {0, 0, 0};
        model_t *m;

        tm_init(&a, 2, dims);
        tm_init(&b, 2, dims);
        assert_int_equal(push_tm(t->c, &a, "big", 1), 1);
        assert_int_equal(push_tm(t->c, &b, "big", 0), 2);
        m = get(t->ms, "big", 0); /* first use: this one may wait */
        model_unref(m);
        assert_int_equal(pthread_create(&th, NULL, flip, &f), 0);
        while (!__atomic_load_n(&f.done_ms, __ATOMIC_ACQUIRE) || kt_now_ms() - f.done_ms < 1000) {
                long long t0 = kt_now_ms(), dt;
                m = get(t->ms, "big", 0);
                dt = kt_now_ms() - t0;
                worst = dt > worst ? dt : worst;
                seen[m->version]++;
                model_unref(m);
                n++;
                nanosleep(&(struct timespec){0, 100000}, NULL);
        }
        pthread_join(th, NULL);
        print_message("%lld lookups, slowest %lld ms; v1 %lld times, v2 %lld times\n", n, worst,
                      seen[1], seen[2]);
        assert_true(worst < 50);
        assert_true(seen[1] > 0 && seen[2] > 0);
        tm_free(&a);
        tm_free(&b);
}

/* Writes version v of name by hand, as a broken tool would: metadata that
 * claims sha/size, and whatever bytes.  Then makes it active and announces. */
static void write_by_hand(redisContext *c, const char *name, uint32_t v, const char *sha,
                          size_t size, const void *bytes, size_t len, int dims_in, int dims_out)
{
        char msg[128];
        redisReply *r;
        r = redisCommand(c, "SET " PREFIX "model:%s:%u %b", name, v, bytes, len);
        freeReplyObject(r);
        r = redisCommand(
            c,
            "HSET " PREFIX "model-meta:%s next %u %u:size %llu %u:sha256 %s %u:kind mlp "
            "%u:input_dim %d %u:output_dim %d active %u",
            name, v, v, (unsigned long long)size, v, sha, v, v, dims_in, v, dims_out, v);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        freeReplyObject(r);
        r = redisCommand(c, "HINCRBY " PREFIX "model-meta:%s seq 1", name);
        freeReplyObject(r);
        snprintf(msg, sizeof(msg), "activate %s %u", name, v);
        r = redisCommand(c, "PUBLISH " PREFIX "models %s", msg);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        assert_true(r->integer >= 1); /* the store's reloader listens */
        freeReplyObject(r);
}

static void test_corrupt_keeps_last_good(void **state)
{
        st_t *t = *state;
        const int dims[] = {3, 5, 2};
        tm_t good, next;
        const tm_t *one[1] = {&good};
        const double w1[1] = {1};
        char sha[MREG_SHA256_HEX], err[256];
        size_t len;
        char *blob;
        model_t *m;
        ms_store_t *fresh;

        tm_init(&good, 2, dims);
        tm_init(&next, 2, dims);
        assert_int_equal(push_tm(t->c, &good, "m", 1), 1);
        m = get(t->ms, "m", 0);
        model_unref(m);

        /* v2: the metadata of a good blob, but the blob cut short */
        blob = tm_blob(&next, "m", &len);
        mreg_sha256_hex(blob, len, sha);
        write_by_hand(t->c, "m", 2, sha, len, blob, len - 9, 3, 2);
        sleep_ms(500);
        m = get(t->ms, "m", 0);
        assert_int_equal(m->version, 1); /* the last good one */
        check_outputs(m, 1, one, w1);
        model_unref(m);
        get_fails(t->ms, "m", 2, KF_ERR_INTERNAL, "truncated");

        /* v3: a blob whose checksum matches, with a NaN weight inside */
        {
                float nan = NAN, w0 = next.W[0][0];
                char *p = memmem(blob, len, &w0, sizeof(w0));
                assert_non_null(p);
                memcpy(p, &nan, sizeof(nan));
        }
        mreg_sha256_hex(blob, len, sha);
        write_by_hand(t->c, "m", 3, sha, len, blob, len, 3, 2);
        sleep_ms(500);
        m = get(t->ms, "m", 0);
        assert_int_equal(m->version, 1);
        model_unref(m);
        get_fails(t->ms, "m", 3, KF_ERR_INTERNAL, "layer 0: W[0] is NaN");

        /* A worker that starts now has no last good version: the reason. */
        fresh = ms_store_new_registry(t->stack.redis_url, PREFIX, 2000, 600000, err, sizeof(err));
        assert_non_null(fresh);
        get_fails(fresh, "m", 0, KF_ERR_INTERNAL,
                  "model 'm' version 3 cannot be loaded: layer 0: W[0] is NaN");
        m = get(fresh, "m", 1);
        model_unref(m);
        ms_store_destroy(fresh);

        /* A good version through the CLI's path takes over. */
        assert_int_equal(push_tm(t->c, &next, "m", 1), 4);
        wait_serving(t->ms, "m", 4, 1000);
        free(blob);
        tm_free(&good);
        tm_free(&next);
}

static void push_ensemble(redisContext *c, const char *name, uint32_t n, const char *const *mem,
                          const uint32_t *vers, const double *w, int din, int dout)
{
        model_member_spec_t ms[8] = {0}; /* act 0: identity */
        model_ens_spec_t spec = {{0}, (uint32_t)din, (uint32_t)dout, n, ms};
        char err[256], *buf;
        size_t len;
        strcpy(spec.name, name);
        for (uint32_t i = 0; i < n; i++) {
                strcpy(ms[i].model, mem[i]);
                ms[i].version = vers[i];
                ms[i].weight = w[i];
        }
        assert_int_equal(model_ens_encode(&spec, &buf, &len, err, sizeof(err)), 0);
        push(c, name, buf, len, 1);
        free(buf);
}

/* E = 0.5 A + 2 B@1 (A followed), F = -1 E: both rebuilt when A moves. */
static void test_ensemble_follows(void **state)
{
        st_t *t = *state;
        const int dims[] = {4, 6, 3}, dims1[] = {4, 3};
        tm_t a1, a2, b1, b2;
        const char *em[] = {"A", "B"}, *fm[] = {"E"};
        const uint32_t ev[] = {0, 1}, fv[] = {0};
        const double ew[] = {0.5, 2.0}, fw[] = {-1.0};
        const tm_t *set[2];
        double w[2];
        model_t *e, *f;

        tm_init(&a1, 2, dims);
        tm_init(&a2, 2, dims);
        tm_init(&b1, 1, dims1);
        tm_init(&b2, 1, dims1);
        push_tm(t->c, &a1, "A", 1);
        push_tm(t->c, &b1, "B", 1);
        push_tm(t->c, &b2, "B", 1); /* B v2 active; E pins v1 */
        push_ensemble(t->c, "E", 2, em, ev, ew, 4, 3);
        push_ensemble(t->c, "F", 1, fm, fv, fw, 4, 3);

        e = get(t->ms, "E", 0);
        f = get(t->ms, "F", 0);
        set[0] = &a1;
        set[1] = &b1;
        check_outputs(e, 2, set, ew);
        w[0] = -0.5;
        w[1] = -2.0;
        check_outputs(f, 2, set, w);
        assert_int_equal(e->version, 1);
        model_unref(e);
        model_unref(f);

        push_tm(t->c, &a2, "A", 1); /* A v2 active: E and F follow */
        {
                long long t0 = kt_now_ms();
                for (;;) {
                        e = get(t->ms, "E", 0);
                        f = get(t->ms, "F", 0);
                        if (e->members[0].model->version == 2 ||
                            e->members[1].model->version == 2) {
                                int fa = 0;
                                for (uint32_t i = 0; i < f->n_members; i++)
                                        fa |= !strcmp(f->members[i].model->name, "A") &&
                                              f->members[i].model->version == 2;
                                if (fa)
                                        break;
                        }
                        model_unref(e);
                        model_unref(f);
                        if (kt_now_ms() - t0 > 1000)
                                fail_msg("E and F still use A v1 after 1 s");
                        sleep_ms(2);
                }
                print_message("E and F follow A v2 after %lld ms\n", kt_now_ms() - t0);
        }
        set[0] = &a2;
        check_outputs(e, 2, set, ew);
        check_outputs(f, 2, set, w);
        model_unref(e);
        model_unref(f);
        tm_free(&a1);
        tm_free(&a2);
        tm_free(&b1);
        tm_free(&b2);
}

/* Redis goes away: cached models keep serving without delay, and what is
 * not cached gets "no verdict yet" instead of an error; it comes back (same
 * data, appendonly): those lookups get their answers, and the reloader
 * resubscribes and sees a change. */
static void test_redis_restart(void **state)
{
        st_t *t = *state;
        const int dims[] = {2, 3};
        tm_t m1, m2;
        model_t *m;
        long long t0, worst = 0;

        tm_init(&m1, 1, dims);
        tm_init(&m2, 1, dims);
        push_tm(t->c, &m1, "r", 1);
        push_tm(t->c, &m2, "r", 0);
        m = get(t->ms, "r", 0);
        model_unref(m);
        redisFree(t->c);
        t->c = NULL;

        assert_int_equal(kt_stack_signal_redis(&t->stack, SIGKILL), 128 + SIGKILL);
        for (int i = 0; i < 200; i++) {
                long long s = kt_now_ms();
                m = get(t->ms, "r", 0);
                worst = kt_now_ms() - s > worst ? kt_now_ms() - s : worst;
                assert_int_equal(m->version, 1);
                model_unref(m);
                sleep_ms(5);
        }
        print_message("Redis down: slowest lookup %lld ms\n", worst);
        assert_true(worst < 10);
        /* What needs Redis gets no verdict (KF_OK, NULL: ask again later),
         * not an error a job would keep: a name never seen, and a version
         * never built. */
        get_fails(t->ms, "never-seen", 0, KF_OK, "model registry unavailable");
        get_fails(t->ms, "r", 2, KF_OK, "model registry unavailable");
        assert_int_equal(kt_stack_restart_redis(&t->stack), 0);
        assert_non_null(t->c = kt_stack_redis(&t->stack));
        for (long long until = kt_now_ms() + 10000;;) { /* redis replays its AOF first */
                redisReply *r = redisCommand(t->c, "PING");
                int loading = r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "LOADING", 7);
                freeReplyObject(r);
                if (!loading)
                        break;
                if (kt_now_ms() > until)
                        fail_msg("redis still loading after 10 s");
                sleep_ms(10);
        }
        /* Back: the same lookups get their real answers. */
        get_fails(t->ms, "never-seen", 0, KF_ERR_UNKNOWN_MODEL, "unknown model 'never-seen'");
        m = get(t->ms, "r", 2);
        assert_int_equal(m->version, 2);
        model_unref(m);
        activate(t->c, "r", 2);
        t0 = kt_now_ms();
        wait_serving(t->ms, "r", 2, 12000);
        print_message("after the restart, v2 served %lld ms after activation\n", kt_now_ms() - t0);
        tm_free(&m1);
        tm_free(&m2);
}

/* ---- the directory store (--models DIR) ---- */

/* ---- bounds (#11 class 5): what the store keeps ---- */

static void stats(ms_store_t *ms, ms_store_stats_t *st)
{
        ms_store_stats(ms, st);
}

/* Jobs naming models that do not exist must not grow the store: every
 * distinct name is remembered only up to MS_UNKNOWN_MAX, the oldest
 * forgotten first, and a real model is still served afterwards.  Names
 * are asked twice (a name remembered answers without Redis, which the
 * count of commands shows). */
static void run_unknown_bounded(ms_store_t *ms, redisContext *c, const char *known)
{
        const int n = MS_UNKNOWN_MAX + 700;
        char name[64];
        ms_store_stats_t st;
        model_t *m;

        for (int i = 0; i < n; i++) {
                snprintf(name, sizeof(name), "nosuch-%d", i);
                get_fails(ms, name, 0, KF_ERR_UNKNOWN_MODEL, "unknown model");
                if (i % 3 == 0) /* pinned versions of unknown names too */
                        get_fails(ms, name, 5, KF_ERR_UNKNOWN_MODEL, "");
        }
        stats(ms, &st);
        if (st.unknown_names > MS_UNKNOWN_MAX || st.names > MS_UNKNOWN_MAX + 1)
                fail_msg("after %d unknown names the store remembers %zu (%zu unknown); the "
                         "bound is %d",
                         n, st.names, st.unknown_names, MS_UNKNOWN_MAX);
        assert_true(st.unknown_names >= MS_UNKNOWN_MAX / 2); /* remembered, not dropped */
        /* the most recent names are the ones remembered: answered without Redis */
        if (c) {
                long long before, after;
                redisReply *r = redisCommand(c, "INFO commandstats");
                assert_non_null(r);
                before = r->str && strstr(r->str, "cmdstat_hgetall:calls=")
                             ? atoll(strstr(r->str, "cmdstat_hgetall:calls=") + 22)
                             : 0;
                freeReplyObject(r);
                for (int i = n - 20; i < n; i++) {
                        snprintf(name, sizeof(name), "nosuch-%d", i);
                        get_fails(ms, name, 0, KF_ERR_UNKNOWN_MODEL, "unknown model");
                }
                r = redisCommand(c, "INFO commandstats");
                assert_non_null(r);
                after = r->str && strstr(r->str, "cmdstat_hgetall:calls=")
                            ? atoll(strstr(r->str, "cmdstat_hgetall:calls=") + 22)
                            : 0;
                freeReplyObject(r);
                if (after != before)
                        fail_msg("asking 20 recent unknown names again cost %lld metadata reads",
                                 after - before);
        }
        m = get(ms, known, 0);
        model_unref(m);
}

static void test_unknown_names_bounded(void **state)
{
        st_t *t = *state;
        const int dims[] = {3, 2};
        tm_t tm;
        tm_init(&tm, 1, dims);
        push_tm(t->c, &tm, "real", 1);
        run_unknown_bounded(t->ms, t->c, "real");
        tm_free(&tm);
}

/* Versions pinned by jobs are kept within the budget, least recently
 * used dropped first; a job holding a dropped version finishes on it (ASan
 * would see it freed), and the next job pinning it gets it rebuilt.  The
 * serving version is never counted nor dropped. */
#define BT_VERSIONS 4
static void run_budget(ms_store_t *ms, const char *name, tm_t *tm, uint32_t *vers, uint32_t serving)
{
        const double w1[1] = {1};
        ms_store_stats_t st;
        model_t *held, *m;
        uint64_t one;

        m = get(ms, name, vers[0]);
        one = m->weight_bytes;
        model_unref(m);
        /* room for two pinned versions, not three */
        ms_store_set_budget(ms, one * 2 + one / 2);
        held = get(ms, name, vers[0]);
        m = get(ms, name, vers[1]);
        model_unref(m);
        stats(ms, &st);
        assert_int_equal(st.evicted, 0);
        assert_true(st.cached_bytes == 2 * one);
        m = get(ms, name, vers[2]); /* over budget: vers[0], the least recent, goes */
        model_unref(m);
        stats(ms, &st);
        if (st.evicted != 1 || st.cached_bytes != 2 * one)
                fail_msg("three pinned versions of %llu bytes in a budget for two: %llu bytes "
                         "kept, %llu evicted",
                         (unsigned long long)one, (unsigned long long)st.cached_bytes,
                         (unsigned long long)st.evicted);
        { /* the held reference still computes: it was dropped from the cache only */
                const tm_t *one_tm[1] = {&tm[0]};
                check_outputs(held, 1, one_tm, w1);
                model_unref(held);
        }
        for (int k = 0; k < 3; k++) { /* each again: correct, rebuilt when needed */
                const tm_t *one_tm[1] = {&tm[k]};
                m = get(ms, name, vers[k]);
                assert_int_equal(m->version, vers[k]);
                check_outputs(m, 1, one_tm, w1);
                model_unref(m);
                stats(ms, &st);
                assert_true(st.cached_bytes <= 2 * one + one / 2);
        }
        m = get(ms, name, 0);
        assert_int_equal(m->version, serving);
        model_unref(m);
        stats(ms, &st);
        assert_true(st.serving_bytes >= one);
        /* budget 0: every pinned version goes, the serving one stays */
        ms_store_set_budget(ms, 0);
        stats(ms, &st);
        assert_int_equal(st.cached_bytes, 0);
        m = get(ms, name, 0);
        assert_int_equal(m->version, serving);
        model_unref(m);
}

static void test_budget_pinned_versions(void **state)
{
        st_t *t = *state;
        const int dims[] = {16, 64, 8};
        tm_t tm[BT_VERSIONS];
        uint32_t vers[BT_VERSIONS];
        for (int k = 0; k < BT_VERSIONS; k++) {
                tm_init(&tm[k], 2, dims);
                vers[k] = push_tm(t->c, &tm[k], "pinned", k + 1 == BT_VERSIONS);
        }
        run_budget(t->ms, "pinned", tm, vers, vers[BT_VERSIONS - 1]);
        for (int k = 0; k < BT_VERSIONS; k++)
                tm_free(&tm[k]);
}

/* Versions pushed with the same blob (a rollback pushed again, a model
 * re-registered) share one copy of the weights: one is served, the others
 * pinned, and each still answers with its own version number.  The copies
 * are seen in the pointers and in the bytes the store counts. */
static void test_same_blob_shared(void **state)
{
        st_t *t = *state;
        const int dims[] = {16, 64, 8};
        const double w1[1] = {1};
        const tm_t *one[1];
        ms_store_stats_t st;
        model_t *m[4];
        uint32_t v[4];
        tm_t tm, other;
        size_t len;
        char *blob;

        tm_init(&tm, 2, dims);
        tm_init(&other, 2, dims);
        one[0] = &tm;
        blob = tm_blob(&tm, "twin", &len);
        v[0] = push(t->c, "twin", blob, len, 0);
        v[1] = push(t->c, "twin", blob, len, 0);
        v[2] = push(t->c, "twin", blob, len, 1); /* served */
        free(blob);
        v[3] = push_tm(t->c, &other, "twin", 0); /* a different blob */
        m[2] = get(t->ms, "twin", 0);
        m[0] = get(t->ms, "twin", v[0]);
        m[1] = get(t->ms, "twin", v[1]);
        m[3] = get(t->ms, "twin", v[3]);
        for (int k = 0; k < 3; k++) {
                assert_int_equal(m[k]->version, v[k]);
                check_outputs(m[k], 1, one, w1);
        }
        if (m[0]->layers != m[2]->layers || m[1]->layers != m[2]->layers)
                fail_msg("three versions of one blob hold separate copies of the weights");
        assert_true(m[3]->layers != m[2]->layers);
        stats(t->ms, &st);
        /* the twins are the served copy; only the other blob is cached */
        if (st.cached_bytes != m[3]->weight_bytes)
                fail_msg("cached %llu bytes, want %zu (one copy of the other blob)",
                         (unsigned long long)st.cached_bytes, m[3]->weight_bytes);
        /* the served version moves on: the twins' one copy outlives it */
        activate(t->c, "twin", v[3]);
        wait_serving(t->ms, "twin", v[3], 5000);
        model_unref(m[2]);
        stats(t->ms, &st);
        if (st.cached_bytes != m[0]->weight_bytes)
                fail_msg("after the switch: cached %llu bytes, want %zu (one copy of the twins)",
                         (unsigned long long)st.cached_bytes, m[0]->weight_bytes);
        /* dropping every pinned build: the held twins still compute */
        ms_store_set_budget(t->ms, 0);
        check_outputs(m[0], 1, one, w1);
        check_outputs(m[1], 1, one, w1);
        for (int k = 0; k < 4; k++)
                if (k != 2)
                        model_unref(m[k]);
        tm_free(&tm);
        tm_free(&other);
}

typedef struct dt_s {
        kt_stack_t stack;
        char dir[512]; /* <stack dir>/models: the store's DIR */
        ms_store_t *ms;
} dt_t;

static int setup_dir(void **state)
{
        dt_t *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        assert_int_equal(kt_stack_init(&t->stack), 0);
        snprintf(t->dir, sizeof(t->dir), "%s/models", t->stack.dir);
        assert_int_equal(mkdir(t->dir, 0755), 0);
        assert_non_null(t->ms = ms_store_new(t->dir));
        *state = t;
        return 0;
}

static int teardown_dir(void **state)
{
        dt_t *t = *state;
        ms_store_destroy(t->ms);
        kt_stack_stop(&t->stack);
        free(t);
        return 0;
}

/* Writes len bytes (none if blob is NULL) to path. */
static void write_path(const char *path, const void *blob, size_t len)
{
        FILE *fp = fopen(path, "wb");
        if (!fp)
                fail_msg("cannot create %s", path);
        if (len && fwrite(blob, 1, len, fp) != len)
                fail_msg("cannot write %s", path);
        assert_int_equal(fclose(fp), 0);
}

/* Writes t, its file naming it name, to path. */
static void write_tm(const char *path, const tm_t *t, const char *name)
{
        size_t len;
        char *blob = tm_blob(t, name, &len);
        write_path(path, blob, len);
        free(blob);
}

#define DT_MODELS   32
#define DT_VERSIONS 300

/* DT_MODELS models with DT_VERSIONS version files each: every one serves
 * its highest version.  Only the highest file holds a model (the others
 * are empty, so serving one of them fails loudly).  Many models, each
 * with its own version numbers, because readdir's order depends on the
 * names and the file system: a scan that keeps only some of the entries
 * finds every highest version only by luck, and 32 times in a row almost
 * never. */
static void test_dir_all_versions(void **state)
{
        dt_t *t = *state;
        const int dims[] = {2, 3, 1};
        char name[32], path[700], list[64];
        tm_t tm;
        model_t *m;

        tm_init(&tm, 2, dims);
        for (int k = 0; k < DT_MODELS; k++) {
                uint32_t base = (uint32_t)k * 1000, top = base + DT_VERSIONS;
                snprintf(name, sizeof(name), "wide%d", k);
                snprintf(path, sizeof(path), "%s/%s", t->dir, name);
                assert_int_equal(mkdir(path, 0755), 0);
                for (uint32_t v = base + 1; v < top; v++) {
                        snprintf(path, sizeof(path), "%s/%s/%u.kmodel", t->dir, name, v);
                        write_path(path, NULL, 0);
                }
                snprintf(path, sizeof(path), "%s/%s/%u.kmodel", t->dir, name, top);
                write_tm(path, &tm, name);
        }
        for (int k = 0; k < DT_MODELS; k++) {
                const tm_t *one[1] = {&tm};
                const double w1[1] = {1};
                uint32_t top = (uint32_t)k * 1000 + DT_VERSIONS;
                snprintf(name, sizeof(name), "wide%d", k);
                m = get(t->ms, name, 0);
                if (m->version != top)
                        fail_msg("%s: served version %u, the highest is %u", name, m->version, top);
                check_outputs(m, 1, one, w1);
                model_unref(m);
        }
        /* the versions a missing pin reports include the highest one */
        snprintf(list, sizeof(list), "%u, %u", DT_VERSIONS - 1, DT_VERSIONS);
        get_fails(t->ms, "wide0", 7777, KF_ERR_UNKNOWN_MODEL, list);
        tm_free(&tm);
}

/* Job names may hold '.', so ".." and "." are valid names, and the store
 * must not turn them into DIR/../N.kmodel (outside DIR) or DIR/./N.kmodel.
 * Each trap below is a valid model file whose embedded name matches, so
 * only the name check keeps it from being served. */
static void test_dir_names_stay_inside(void **state)
{
        dt_t *t = *state;
        const int dims[] = {2, 2};
        static const char *const bad[] = {
            "..", ".", "...", ".hidden", "../models/ok", "ok/../ok", "/etc/passwd", "", NULL};
        char path[700];
        tm_t tm;
        model_t *m;

        tm_init(&tm, 1, dims);
        /* outside DIR: <stack dir>/1.kmodel and <stack dir>/..kmodel */
        snprintf(path, sizeof(path), "%s/1.kmodel", t->stack.dir);
        write_tm(path, &tm, "..");
        snprintf(path, sizeof(path), "%s/..kmodel", t->stack.dir);
        write_tm(path, &tm, ".");
        /* inside DIR, reachable only through "." and hidden names */
        snprintf(path, sizeof(path), "%s/1.kmodel", t->dir);
        write_tm(path, &tm, ".");
        snprintf(path, sizeof(path), "%s/..kmodel", t->dir);
        write_tm(path, &tm, ".");
        snprintf(path, sizeof(path), "%s/....kmodel", t->dir);
        write_tm(path, &tm, "...");
        snprintf(path, sizeof(path), "%s/.hidden.kmodel", t->dir);
        write_tm(path, &tm, ".hidden");
        /* a plain name with dots is fine */
        snprintf(path, sizeof(path), "%s/ok.v2.kmodel", t->dir);
        write_tm(path, &tm, "ok.v2");
        snprintf(path, sizeof(path), "%s/ok.kmodel", t->dir);
        write_tm(path, &tm, "ok");

        for (int i = 0; bad[i]; i++) {
                get_fails(t->ms, bad[i], 0, KF_ERR_UNKNOWN_MODEL, "is not a plain name");
                get_fails(t->ms, bad[i], 1, KF_ERR_UNKNOWN_MODEL, "is not a plain name");
        }
        m = get(t->ms, "ok.v2", 0);
        assert_int_equal(m->version, 1);
        model_unref(m);
        m = get(t->ms, "ok", 1);
        model_unref(m);
        tm_free(&tm);
}

static void test_dir_unknown_names_bounded(void **state)
{
        dt_t *t = *state;
        const int dims[] = {3, 2};
        char path[700];
        tm_t tm;
        tm_init(&tm, 1, dims);
        snprintf(path, sizeof(path), "%s/real.kmodel", t->dir);
        write_tm(path, &tm, "real");
        run_unknown_bounded(t->ms, NULL, "real");
        tm_free(&tm);
}

static void test_dir_budget_pinned_versions(void **state)
{
        dt_t *t = *state;
        const int dims[] = {16, 64, 8};
        char path[700];
        tm_t tm[BT_VERSIONS];
        uint32_t vers[BT_VERSIONS];
        snprintf(path, sizeof(path), "%s/pinned", t->dir);
        assert_int_equal(mkdir(path, 0755), 0);
        for (int k = 0; k < BT_VERSIONS; k++) {
                tm_init(&tm[k], 2, dims);
                vers[k] = (uint32_t)k + 1;
                snprintf(path, sizeof(path), "%s/pinned/%u.kmodel", t->dir, vers[k]);
                write_tm(path, &tm[k], "pinned");
        }
        run_budget(t->ms, "pinned", tm, vers, vers[BT_VERSIONS - 1]);
        for (int k = 0; k < BT_VERSIONS; k++)
                tm_free(&tm[k]);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_first_use_and_swaps, setup, teardown),
            cmocka_unit_test_setup_teardown(test_lookups_never_wait, setup, teardown),
            cmocka_unit_test_setup_teardown(test_corrupt_keeps_last_good, setup, teardown),
            cmocka_unit_test_setup_teardown(test_ensemble_follows, setup, teardown),
            cmocka_unit_test_setup_teardown(test_redis_restart, setup_aof, teardown),
            cmocka_unit_test_setup_teardown(test_unknown_names_bounded, setup, teardown),
            cmocka_unit_test_setup_teardown(test_budget_pinned_versions, setup, teardown),
            cmocka_unit_test_setup_teardown(test_same_blob_shared, setup, teardown),
            cmocka_unit_test_setup_teardown(test_dir_all_versions, setup_dir, teardown_dir),
            cmocka_unit_test_setup_teardown(test_dir_names_stay_inside, setup_dir, teardown_dir),
            cmocka_unit_test_setup_teardown(test_dir_unknown_names_bounded, setup_dir,
                                            teardown_dir),
            cmocka_unit_test_setup_teardown(test_dir_budget_pinned_versions, setup_dir,
                                            teardown_dir),
        };
        kf_log_init("test_model_store", KF_LOG_WARN);
        if (getenv("KT_TEST")) /* e.g. KT_TEST='test_corrupt*' runs only those */
                cmocka_set_test_filter(getenv("KT_TEST"));
        return cmocka_run_group_tests(tests, NULL, NULL);
}
