/* faults.c - the fault tests' shared fixture: a model and jobs made here,
 * produced straight to Kafka, and the exactly-once check of Redis against a
 * double-precision reference (see faults.h). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include "faults.h"

#include "../harness/kt_job.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define FX_MSG_TIMEOUT_MS "180000" /* a produce may wait out a broker outage */

void fx_sleep_ms(int ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
                ;
}

static double fx_rnd(fx_t *fx) /* uniform in [-1, 1) */
{
        fx->rng = fx->rng * 6364136223846793005ULL + 1442695040888963407ULL;
        return (double)(fx->rng >> 11) / 4503599627370496.0 - 1.0;
}

const char *fx_user(fx_t *fx, int u)
{
        return u >= 0 && u < fx->n_users ? fx->users[u] : "";
}

/* ---- messages -------------------------------------------------------- */

void fx_msg_init(fx_msg_t *m)
{
        msgpack_sbuffer_init(&m->sb);
        msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

void fx_msg_str(fx_msg_t *m, const char *s)
{
        msgpack_pack_str(&m->pk, strlen(s));
        msgpack_pack_str_body(&m->pk, s, strlen(s));
}

void fx_msg_raw(fx_msg_t *m, const void *bytes, size_t n)
{
        if (n)
                msgpack_sbuffer_write(&m->sb, bytes, n);
}

void fx_msg_f32(fx_msg_t *m, const float *v, size_t n)
{
        msgpack_pack_bin(&m->pk, n * 4);
        msgpack_pack_bin_body(&m->pk, v, n * 4); /* x86_64: already little-endian */
}

void fx_msg_take(fx_msg_t *m, fx_job_t *job)
{
        free(job->value);
        job->len = m->sb.size;
        job->value = malloc(m->sb.size ? m->sb.size : 1);
        assert_non_null(job->value);
        if (m->sb.size)
                memcpy(job->value, m->sb.data, m->sb.size);
        msgpack_sbuffer_destroy(&m->sb);
}

/* A good job as the protocol's f32 form (v2), packed here (not with
 * job_encode). */
static void fx_pack_good(fx_t *fx, const fx_job_t *job, fx_msg_t *m)
{
        fx_msg_init(m);
        msgpack_pack_map(&m->pk, job->inbox ? 6 : 5);
        fx_msg_str(m, "v");
        msgpack_pack_uint32(&m->pk, 2);
        fx_msg_str(m, "id");
        fx_msg_str(m, job->id);
        fx_msg_str(m, "user");
        fx_msg_str(m, fx_user(fx, job->user));
        fx_msg_str(m, "model");
        fx_msg_str(m, "mlp");
        if (job->inbox) {
                fx_msg_str(m, "inbox");
                fx_msg_str(m, FX_INBOX);
        }
        fx_msg_str(m, "input");
        msgpack_pack_map(&m->pk, 3);
        fx_msg_str(m, "dtype");
        fx_msg_str(m, "f32");
        fx_msg_str(m, "shape");
        msgpack_pack_array(&m->pk, 2);
        msgpack_pack_uint32(&m->pk, (uint32_t)job->rows);
        msgpack_pack_uint32(&m->pk, FX_IN);
        fx_msg_str(m, "data");
        fx_msg_f32(m, job->x, (size_t)job->rows * FX_IN);
}

/* ---- the model and its reference -------------------------------------- */

static void fx_write_model(fx_t *fx)
{
        char path[400];
        fx_msg_t m;
        FILE *fp;

        for (int i = 0; i < FX_IN * FX_HID; i++)
                fx->W1[i] = (float)(fx_rnd(fx) * 0.6);
        for (int i = 0; i < FX_HID; i++)
                fx->b1[i] = (float)(fx_rnd(fx) * 0.1);
        for (int i = 0; i < FX_HID * FX_OUT; i++)
                fx->W2[i] = (float)(fx_rnd(fx) * 0.6);
        for (int i = 0; i < FX_OUT; i++)
                fx->b2[i] = (float)(fx_rnd(fx) * 0.1);

        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 7);
        fx_msg_str(&m, "format");
        fx_msg_str(&m, "kinfer-model");
        fx_msg_str(&m, "v");
        msgpack_pack_uint32(&m.pk, 1);
        fx_msg_str(&m, "name");
        fx_msg_str(&m, "mlp");
        fx_msg_str(&m, "kind");
        fx_msg_str(&m, "mlp");
        fx_msg_str(&m, "input_dim");
        msgpack_pack_uint32(&m.pk, FX_IN);
        fx_msg_str(&m, "output_dim");
        msgpack_pack_uint32(&m.pk, FX_OUT);
        fx_msg_str(&m, "layers");
        msgpack_pack_array(&m.pk, 2);
        msgpack_pack_map(&m.pk, 3);
        fx_msg_str(&m, "W");
        fx_msg_f32(&m, fx->W1, FX_IN * FX_HID);
        fx_msg_str(&m, "b");
        fx_msg_f32(&m, fx->b1, FX_HID);
        fx_msg_str(&m, "act");
        fx_msg_str(&m, "tanh");
        msgpack_pack_map(&m.pk, 3);
        fx_msg_str(&m, "W");
        fx_msg_f32(&m, fx->W2, FX_HID * FX_OUT);
        fx_msg_str(&m, "b");
        fx_msg_f32(&m, fx->b2, FX_OUT);
        fx_msg_str(&m, "act");
        fx_msg_str(&m, "identity");

        snprintf(fx->models_dir, sizeof(fx->models_dir), "%s/models", fx->stack.dir);
        assert_int_equal(mkdir(fx->models_dir, 0755), 0);
        snprintf(path, sizeof(path), "%s/mlp.kmodel", fx->models_dir);
        fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(m.sb.data, 1, m.sb.size, fp), m.sb.size);
        fclose(fp);
        msgpack_sbuffer_destroy(&m.sb);
}

/* y = tanh(x.W1 + b1).W2 + b2 for one row, in double, with plain loops. */
static void fx_reference(const fx_t *fx, const float *x, double *y)
{
        double h[FX_HID];
        for (int j = 0; j < FX_HID; j++) {
                double s = fx->b1[j];
                for (int i = 0; i < FX_IN; i++)
                        s += (double)x[i] * fx->W1[i * FX_HID + j];
                h[j] = tanh(s);
        }
        for (int j = 0; j < FX_OUT; j++) {
                double s = fx->b2[j];
                for (int i = 0; i < FX_HID; i++)
                        s += h[i] * fx->W2[i * FX_OUT + j];
                y[j] = s;
        }
}

/* ---- Kafka ------------------------------------------------------------ */

static void fx_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        fx_job_t *job = rkm->_private;
        (void)rk;
        (void)opaque;
        if (!job)
                return;
        if (rkm->err) {
                fprintf(stderr, "faults: delivery of %s failed: %s\n",
                        job->id[0] ? job->id : "(no id)", rd_kafka_err2str(rkm->err));
                job->delivered = -1;
                return;
        }
        if (rkm->offset < 0) { /* acknowledged without the broker saying where */
                fprintf(stderr, "faults: %s reported delivered without an offset\n",
                        job->id[0] ? job->id : "(no id)");
                job->delivered = -1;
                return;
        }
        job->partition = rkm->partition;
        job->offset = rkm->offset;
        job->delivered = 1;
}

/* The test's own clients see every injected broker fault; their log lines
 * would only bury the test's output.  FAULTS_DEBUG=1 shows them. */
static void fx_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
        const char *dbg = getenv("FAULTS_DEBUG");
        if (dbg && *dbg && strcmp(dbg, "0"))
                fprintf(stderr, "faults: %s: %d %s %s\n", rd_kafka_name(rk), level, fac, buf);
}

/* Not idempotent, on purpose.  librdkafka 2.0.2's mock cluster checks the
 * sequence numbers of transactional producers only, so after a batch lost to
 * a broker going down or an injected Produce error, it accepts the next
 * batch, and an idempotent producer then counts the lost one as delivered
 * ("implicitly acked by subsequent batch success": success, offset -1001,
 * never stored).  A real broker refuses the out-of-order batch instead.
 * Without idempotence every delivery report comes from the broker's answer
 * to that message's own batch; a retry may store a job twice, which the
 * workers must (and do) treat as a duplicate. */
static rd_kafka_t *fx_producer_new(fx_t *fx)
{
        /* A genuine broker (fx_setup_kafka) checks the sequence numbers, so
         * there the producer is idempotent: a produce retried across a broker
         * crash is then stored once, at the offset its delivery report gives
         * (fx_check compares each result's source with it). */
        const char *idempotent = fx->real_kafka ? "true" : "false";
        const char *const props[] = {"enable.idempotence",
                                     idempotent,
                                     "acks",
                                     "all",
                                     "linger.ms",
                                     "5",
                                     "message.timeout.ms",
                                     FX_MSG_TIMEOUT_MS,
                                     "message.max.bytes",
                                     "2000000",
                                     NULL};
        char err[512];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_t *rk;

        assert_int_equal(
            rd_kafka_conf_set(conf, "bootstrap.servers", fx->stack.brokers, err, sizeof(err)),
            RD_KAFKA_CONF_OK);
        for (int i = 0; props[i]; i += 2)
                if (rd_kafka_conf_set(conf, props[i], props[i + 1], err, sizeof(err)))
                        fail_msg("producer %s: %s", props[i], err);
        rd_kafka_conf_set_dr_msg_cb(conf, fx_dr_cb);
        rd_kafka_conf_set_log_cb(conf, fx_kafka_log);
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
        if (!rk)
                fail_msg("producer: %s", err);
        return rk;
}

static void fx_produce_one(fx_t *fx, fx_job_t *job)
{
        const char *key = job->key[0] ? job->key : fx_user(fx, job->user);
        fx_msg_t m;
        const void *val = job->value;
        size_t len = job->len;
        rd_kafka_resp_err_t err;
        int packed = 0;

        if (!job->value && !job->null_value) {
                fx_pack_good(fx, job, &m);
                val = m.sb.data;
                len = m.sb.size;
                packed = 1;
        }
        if (job->null_value) {
                val = NULL;
                len = 0;
        }
        job->delivered = 0;
        for (;;) {
                err = rd_kafka_producev(
                    fx->producer, RD_KAFKA_V_TOPIC(FX_TOPIC), RD_KAFKA_V_KEY(key, strlen(key)),
                    RD_KAFKA_V_VALUE((void *)val, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_OPAQUE(job), RD_KAFKA_V_END);
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        break;
                rd_kafka_poll(fx->producer, 10);
        }
        if (packed)
                msgpack_sbuffer_destroy(&m.sb);
        if (err)
                fail_msg("produce %s: %s", job->id, rd_kafka_err2str(err));
}

static void fx_check_delivered(fx_t *fx, int from, int to)
{
        rd_kafka_resp_err_t err = rd_kafka_flush(fx->producer, 200000);
        if (err)
                fail_msg("producer flush: %s (%d messages left)", rd_kafka_err2str(err),
                         rd_kafka_outq_len(fx->producer));
        for (int i = from; i < to; i++)
                if (fx->jobs[i].delivered != 1)
                        fail_msg("job %d (%s) was not delivered to Kafka", i, fx->jobs[i].id);
}

void fx_produce(fx_t *fx, int from, int to)
{
        assert_false(fx->streaming);
        for (int i = from; i < to; i++) {
                fx_produce_one(fx, &fx->jobs[i]);
                rd_kafka_poll(fx->producer, 0);
        }
        fx_check_delivered(fx, from, to);
        if (atomic_load(&fx->produced) < to)
                atomic_store(&fx->produced, to);
}

static void *fx_stream_main(void *arg)
{
        fx_t *fx = arg;
        long long start = kt_now_ms();
        for (int i = fx->stream_from; i < fx->stream_to && !atomic_load(&fx->stream_stop); i++) {
                long long due =
                    start + (long long)(i - fx->stream_from + 1) * 1000 / fx->stream_rate;
                fx_produce_one(fx, &fx->jobs[i]);
                atomic_store(&fx->produced, i + 1);
                rd_kafka_poll(fx->producer, 0);
                if (due > kt_now_ms())
                        fx_sleep_ms((int)(due - kt_now_ms()));
        }
        return NULL;
}

void fx_stream_start(fx_t *fx, int from, int to, int per_sec)
{
        assert_false(fx->streaming);
        fx->stream_from = from;
        fx->stream_to = to;
        fx->stream_rate = per_sec > 0 ? per_sec : 1;
        atomic_store(&fx->stream_stop, 0);
        assert_int_equal(pthread_create(&fx->thread, NULL, fx_stream_main, fx), 0);
        fx->streaming = 1;
}

void fx_stream_join(fx_t *fx)
{
        if (!fx->streaming)
                return;
        pthread_join(fx->thread, NULL);
        fx->streaming = 0;
        fx_check_delivered(fx, fx->stream_from, fx->stream_to);
}

void fx_stream_stop(fx_t *fx)
{
        int produced;
        if (!fx->streaming)
                return;
        assert_int_equal(fx->stream_to, fx->n_jobs);
        atomic_store(&fx->stream_stop, 1);
        pthread_join(fx->thread, NULL);
        fx->streaming = 0;
        produced = atomic_load(&fx->produced);
        fx_check_delivered(fx, fx->stream_from, produced);
        for (int i = produced; i < fx->n_jobs; i++)
                free(fx->jobs[i].value);
        fx->n_jobs = produced;
        fx->stream_to = produced;
}

int fx_produced(fx_t *fx)
{
        return atomic_load(&fx->produced);
}

/* One user's jobs of [from, to) as JSON lines (values printed with %.9g,
 * which a float32 survives exactly), submitted with one `kinfer submit`. */
static void fx_submit_cli_user(fx_t *fx, int u, int from, int to)
{
        char path[400], *out = NULL, *line, *save = NULL;
        const char *argv[32] = {"kinfer",       "submit", "--model", "mlp", "--user",
                                fx_user(fx, u), "--file", path,      NULL};
        int n = 0, next = from, rc, a = 8;
        FILE *fp;

        snprintf(path, sizeof(path), "%s/cli-%s-u%d-%d.jsonl", fx->stack.dir, fx->tag, u, from);
        fp = fopen(path, "w");
        assert_non_null(fp);
        for (int i = from; i < to; i++) {
                fx_job_t *job = &fx->jobs[i];
                if (job->user != u)
                        continue;
                assert_true(!job->value && !job->null_value && !job->dlq && !job->want_error);
                job->cli = 1;
                job->inbox = 0; /* the CLI names an inbox of its own */
                fputc('[', fp);
                for (int r = 0; r < job->rows; r++) {
                        fputs(r ? ",[" : "[", fp);
                        for (int v = 0; v < FX_IN; v++)
                                fprintf(fp, "%s%.9g", v ? "," : "", job->x[r * FX_IN + v]);
                        fputc(']', fp);
                }
                fputs("]\n", fp);
                n++;
        }
        assert_int_equal(fclose(fp), 0);
        if (!n)
                return;
        for (int i = 0; fx->cli_args && fx->cli_args[i]; i++) {
                assert_true(a < 31);
                argv[a++] = fx->cli_args[i];
        }
        argv[a] = NULL;
        rc = kt_stack_run(&fx->stack, argv, NULL, &out, 120000);
        if (rc != 0) {
                kt_stack_fail(&fx->stack);
                fail_msg("kinfer submit --user %s --file %s: exit %d (run.log)", fx_user(fx, u),
                         path, rc);
        }
        /* One id per line, in the order of the file. */
        for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                while (next < to && fx->jobs[next].user != u)
                        next++;
                if (next == to)
                        fail_msg("kinfer submit printed more ids than the %d jobs of %s", n,
                                 fx_user(fx, u));
                snprintf(fx->jobs[next].id, sizeof(fx->jobs[next].id), "%s", line);
                next++;
                n--;
        }
        free(out);
        if (n)
                fail_msg("kinfer submit printed %d ids too few for %s", n, fx_user(fx, u));
}

void fx_submit_cli(fx_t *fx, int from, int to)
{
        assert_false(fx->streaming);
        for (int u = 0; u < fx->n_users; u++)
                fx_submit_cli_user(fx, u, from, to);
        if (atomic_load(&fx->produced) < to)
                atomic_store(&fx->produced, to);
}

int fx_run_group(const char *name, const struct CMUnitTest *tests, size_t n)
{
        const char *only = getenv("FAULTS_ONLY");
        const char *base = strrchr(name, '/');
        if (only && *only)
                cmocka_set_test_filter(only);
        return _cmocka_run_group_tests(base ? base + 1 : name, tests, n, NULL, NULL);
}

/* ---- jobs ------------------------------------------------------------- */

static fx_job_t *fx_job_new(fx_t *fx)
{
        assert_false(fx->streaming); /* the stream thread reads the array */
        if (fx->n_jobs == fx->cap_jobs) {
                int ncap = fx->cap_jobs ? fx->cap_jobs * 2 : 1024;
                fx_job_t *n = realloc(fx->jobs, sizeof(*n) * (size_t)ncap);
                assert_non_null(n);
                fx->jobs = n;
                fx->cap_jobs = ncap;
        }
        memset(&fx->jobs[fx->n_jobs], 0, sizeof(fx->jobs[0]));
        return &fx->jobs[fx->n_jobs++];
}

int fx_add_good(fx_t *fx, int n)
{
        int first = fx->n_jobs;
        for (int k = 0; k < n; k++) {
                int i = fx->n_jobs;
                fx_job_t *job = fx_job_new(fx);
                snprintf(job->id, sizeof(job->id), "%s-%05d", fx->tag, i);
                job->user = i % fx->n_users;
                job->inbox = 1;
                job->rows = 1 + (int)((fx->rng >> 33) % FX_MAXROWS);
                for (int v = 0; v < job->rows * FX_IN; v++)
                        job->x[v] = (float)(fx_rnd(fx) * 2.0);
        }
        return first;
}

fx_job_t *fx_add_raw(fx_t *fx)
{
        fx_job_t *job = fx_job_new(fx);
        job->user = -1;
        return job;
}

/* ---- setup and teardown ----------------------------------------------- */

/* fx_setup and fx_setup_kafka: n_brokers 0 starts a genuine Kafka. */
static void fx_setup_on(fx_t *fx, const char *tag, int n_brokers, int partitions, int n_users,
                        const char *const *redis_args, const char *const *kafka_users)
{
        memset(fx, 0, sizeof(*fx));
        fx->kafka_users = kafka_users;
        fx->real_kafka = n_brokers == 0;
        fx->rng = 0x6b696e666572ULL ^ (uint64_t)strlen(tag);
        snprintf(fx->tag, sizeof(fx->tag), "%s", tag);
        assert_true(n_users >= 1 && n_users <= FX_MAX_USERS);
        fx->n_users = n_users;
        for (int u = 0; u < n_users; u++)
                snprintf(fx->users[u], sizeof(fx->users[u]), "%s-u%d", tag, u);
        assert_int_equal(kt_stack_init(&fx->stack), 0);
        assert_int_equal(kt_stack_start_redis(&fx->stack, redis_args), 0);
        if (kafka_users      ? kt_stack_start_kafka_secure(&fx->stack, partitions, kafka_users)
            : fx->real_kafka ? kt_stack_start_kafka(&fx->stack, partitions)
                             : kt_stack_start_broker(&fx->stack, n_brokers, partitions)) {
                kt_stack_fail(&fx->stack);
                fail_msg("%s: could not start the %s (above)", tag,
                         fx->real_kafka ? "Kafka broker" : "dev broker");
        }
        fx_write_model(fx);
        fx->producer = fx_producer_new(fx);
        fx->rc = kt_stack_redis(&fx->stack);
        assert_non_null(fx->rc);
}

void fx_setup(fx_t *fx, const char *tag, int n_brokers, int partitions, int n_users,
              const char *const *redis_args)
{
        assert_true(n_brokers >= 1);
        fx_setup_on(fx, tag, n_brokers, partitions, n_users, redis_args, NULL);
}

void fx_setup_kafka(fx_t *fx, const char *tag, int partitions, int n_users,
                    const char *const *redis_args)
{
        fx_setup_on(fx, tag, 0, partitions, n_users, redis_args, NULL);
}

void fx_setup_kafka_secure(fx_t *fx, const char *tag, int partitions, int n_users,
                           const char *const *users)
{
        fx_setup_on(fx, tag, 0, partitions, n_users, NULL, users);
}

void fx_teardown(fx_t *fx)
{
        if (fx->streaming) {
                atomic_store(&fx->stream_stop, 1);
                pthread_join(fx->thread, NULL);
                fx->streaming = 0;
        }
        if (fx->producer) {
                rd_kafka_purge(fx->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
                rd_kafka_flush(fx->producer, 5000);
                rd_kafka_destroy(fx->producer);
                fx->producer = NULL;
        }
        if (fx->rc) {
                redisFree(fx->rc);
                fx->rc = NULL;
        }
        if (!fx->passed)
                kt_stack_fail(&fx->stack);
        kt_stack_stop(&fx->stack);
        for (int i = 0; i < fx->n_jobs; i++)
                free(fx->jobs[i].value);
        free(fx->jobs);
        fx->jobs = NULL;
}

void fx_push_model(fx_t *fx)
{
        char path[400], *out = NULL;
        const char *argv[] = {"kinfer", "model", "push", path, "--activate", NULL};
        int rc;
        snprintf(path, sizeof(path), "%s/mlp.kmodel", fx->models_dir);
        rc = kt_stack_run(&fx->stack, argv, NULL, &out, 30000);
        if (rc != 0) {
                kt_stack_fail(&fx->stack);
                fail_msg("kinfer model push %s: exit %d: %s", path, rc, out ? out : "");
        }
        free(out);
        fx->registry = 1;
}

int fx_worker(fx_t *fx, const char *name, const char *const *extra)
{
        static const char *const env[] = {"KINFER_DLQ_TOPIC=" FX_DLQ_TOPIC, NULL};
        const char *argv[48] = {"kinfer-worker", "--worker-id", name, "--redis-timeout-ms", "1000",
                                /* The group notices a dead or stopped worker
                                 * within seconds, not librdkafka's 45 s. */
                                "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"};
        const char *debug = getenv("FAULTS_WORKER_DEBUG");
        int n = 9, slot;
        char debug_prop[256];
        /* FAULTS_WORKER_DEBUG=fetch,cgrp: librdkafka's debug contexts for
         * the workers, into their logs in the kept test directory. */
        if (!fx->registry) {
                argv[n++] = "--models";
                argv[n++] = fx->models_dir;
        }
        if (debug && *debug) {
                snprintf(debug_prop, sizeof(debug_prop), "debug=%s", debug);
                argv[n++] = "-X";
                argv[n++] = debug_prop;
        }
        for (int i = 0; extra && extra[i]; i++) {
                assert_true(n < 46);
                argv[n++] = extra[i];
        }
        argv[n] = NULL;
        slot = kt_stack_spawn(&fx->stack, name, argv, env);
        assert_true(slot >= 0);
        return slot;
}

int fx_http_worker(fx_t *fx, const char *name, int *port, const char *const *extra)
{
        char addr[32];
        const char *argv[16] = {"--http", addr};
        int n = 2;
        *port = kt_free_port();
        assert_true(*port > 0);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", *port);
        for (int i = 0; extra && extra[i]; i++) {
                assert_true(n < 15);
                argv[n++] = extra[i];
        }
        argv[n] = NULL;
        return fx_worker(fx, name, argv);
}

static int fx_file_count(const char *path, const char *needle)
{
        char line[4096];
        int n = 0;
        FILE *fp = fopen(path, "r");
        if (!fp)
                return 0;
        while (fgets(line, sizeof(line), fp))
                if (strstr(line, needle))
                        n++;
        fclose(fp);
        return n;
}

int fx_log_count(fx_t *fx, int slot, const char *needle)
{
        assert_true(slot >= 0 && slot < KT_MAX_PROCS);
        return fx_file_count(fx->stack.procs[slot].log, needle);
}

long long fx_log_stat(fx_t *fx, int slot, const char *what)
{
        char line[4096], last[4096] = "";
        const char *p;
        FILE *fp = fopen(fx->stack.procs[slot].log, "r");
        if (!fp)
                return -1;
        while (fgets(line, sizeof(line), fp))
                if (strstr(line, "stopped:"))
                        memcpy(last, line, sizeof(last));
        fclose(fp);
        if (!(p = strstr(last, what)) || p == last)
                return -1;
        while (p > last && p[-1] == ' ')
                p--;
        while (p > last && p[-1] >= '0' && p[-1] <= '9')
                p--;
        return *p >= '0' && *p <= '9' ? atoll(p) : -1;
}

void fx_check_logs(fx_t *fx)
{
        static const char *const bad[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                          "runtime error:", "WARNING: ThreadSanitizer"};
        const char *logs[KT_MAX_PROCS + 2];
        int n_logs = 0;

        for (int i = 0; i < KT_MAX_PROCS; i++)
                if (fx->stack.procs[i].name[0])
                        logs[n_logs++] = fx->stack.procs[i].log;
        logs[n_logs++] = fx->stack.broker.log;
        for (int i = 0; i < n_logs; i++)
                for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++)
                        if (fx_file_count(logs[i], bad[b])) {
                                kt_stack_fail(&fx->stack);
                                fail_msg("%s reports '%s'", logs[i], bad[b]);
                        }
}

void fx_finish(fx_t *fx, const int *slots, int n_slots)
{
        for (int i = 0; i < n_slots; i++) {
                int st = kt_stack_kill(&fx->stack, slots[i], SIGTERM, 30000);
                if (st != 0) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s: exit status %d after SIGTERM, want 0",
                                 fx->stack.procs[slots[i]].name, st);
                }
        }
        fx_check_logs(fx);
        fx->passed = 1;
}

/* ---- Redis ------------------------------------------------------------ */

static int fx_reconnect(fx_t *fx)
{
        if (fx->rc)
                redisFree(fx->rc);
        fx->rc = kt_stack_redis(&fx->stack);
        return fx->rc ? 0 : -1;
}

redisReply *fx_redis(fx_t *fx, const char *fmt, ...)
{
        for (int attempt = 0; attempt < 2; attempt++) {
                redisReply *r;
                va_list ap;
                if (!fx->rc && fx_reconnect(fx))
                        continue;
                va_start(ap, fmt);
                r = redisvCommand(fx->rc, fmt, ap);
                va_end(ap);
                if (r)
                        return r;
                redisFree(fx->rc);
                fx->rc = NULL;
        }
        return NULL;
}

long long fx_redis_info(fx_t *fx, const char *section, const char *field)
{
        redisReply *r = fx_redis(fx, "INFO %s", section);
        char want[128];
        const char *p;
        long long v = -1;
        if (!r)
                return -1;
        snprintf(want, sizeof(want), "\n%s:", field);
        if (r->type == REDIS_REPLY_STRING && (p = strstr(r->str, want)))
                v = atoll(p + strlen(want));
        freeReplyObject(r);
        return v;
}

/* A message with a readable id and user has an address: it gets a result.
 * One without either is dead-lettered (fx_check refuses a job slot that
 * claims an id but no user and no DLQ copy: a test bug). */
static int fx_expects_result(const fx_job_t *job)
{
        return !job->dlq && job->id[0] && job->user >= 0;
}

/* The result key of a job: kinfer:{USER}:result:ID (docs/protocol.md, "Redis
 * keys"), spelled here, not with the worker's kf_keys. */
#define FX_RESULT_FMT "kinfer:{%s}:result:%s"

static long long fx_count_results_once(fx_t *fx, int upto)
{
        long long n = 0;
        int sent = 0;

        if (upto > fx_produced(fx)) /* later jobs cannot have results yet */
                upto = fx_produced(fx);

        if (!fx->rc && fx_reconnect(fx))
                return -1;
        for (int i = 0; i < upto; i++)
                if (fx_expects_result(&fx->jobs[i])) {
                        redisAppendCommand(fx->rc, "EXISTS " FX_RESULT_FMT,
                                           fx_user(fx, fx->jobs[i].user), fx->jobs[i].id);
                        sent++;
                }
        for (int s = 0; s < sent; s++) {
                redisReply *r;
                if (redisGetReply(fx->rc, (void **)&r) != REDIS_OK || !r) {
                        redisFree(fx->rc);
                        fx->rc = NULL;
                        return -1;
                }
                if (r->type == REDIS_REPLY_INTEGER)
                        n += r->integer;
                else /* e.g. LOADING: Redis is not answering yet */
                        n = -1000000000LL;
                freeReplyObject(r);
        }
        return n < 0 ? -1 : n;
}

long long fx_count_by_worker(fx_t *fx, int upto, const char *worker)
{
        long long n = 0;
        int sent = 0;

        if (upto > fx_produced(fx))
                upto = fx_produced(fx);

        if (!fx->rc && fx_reconnect(fx))
                return -1;
        for (int i = 0; i < upto; i++)
                if (fx_expects_result(&fx->jobs[i])) {
                        redisAppendCommand(fx->rc, "GET " FX_RESULT_FMT,
                                           fx_user(fx, fx->jobs[i].user), fx->jobs[i].id);
                        sent++;
                }
        for (int s = 0; s < sent; s++) {
                redisReply *r;
                kf_result_t res;
                char err[256];
                if (redisGetReply(fx->rc, (void **)&r) != REDIS_OK || !r) {
                        redisFree(fx->rc);
                        fx->rc = NULL;
                        return -1;
                }
                memset(&res, 0, sizeof(res));
                if (r->type == REDIS_REPLY_STRING &&
                    kf_result_decode(r->str, r->len, &res, err, sizeof(err)) == 0 &&
                    !strcmp(res.worker, worker))
                        n++;
                kf_result_clear(&res);
                freeReplyObject(r);
        }
        return n;
}

long long fx_count_results(fx_t *fx, int upto)
{
        long long n = fx_count_results_once(fx, upto);
        /* A connection from before a Redis restart fails once. */
        return n >= 0 ? n : fx_count_results_once(fx, upto);
}

void fx_wait_results(fx_t *fx, int upto, long long n, int timeout_ms)
{
        long long deadline = kt_now_ms() + timeout_ms, got = -1;
        while ((got = fx_count_results(fx, upto)) < n) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s: only %lld of the %lld results wanted after %d ms", fx->tag,
                                 got, n, timeout_ms);
                }
                fx_sleep_ms(50);
        }
}

/* Lists the first missing results, and sums them up per partition into
 * `out` ("p3: 12 from offset 210 to 251; ..."): a partition that stopped
 * shows as one run of offsets, a lost message as a single one. */
static void fx_report_missing(fx_t *fx, char *out, size_t out_size)
{
        enum { MAXP = 64 };
        long long n[MAXP] = {0}, lo[MAXP], hi[MAXP];
        size_t used = 0;

        out[0] = '\0';
        for (int i = 0, shown = 0; i < fx->n_jobs; i++) {
                const fx_job_t *job = &fx->jobs[i];
                int p = job->partition;
                redisReply *r;
                if (!fx_expects_result(job))
                        continue;
                r = fx_redis(fx, "EXISTS " FX_RESULT_FMT, fx_user(fx, job->user), job->id);
                if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0) {
                        if (shown++ < 20)
                                print_error("missing result: %s (user %s, %s/%d/%lld)\n", job->id,
                                            fx_user(fx, job->user), FX_TOPIC, p,
                                            (long long)job->offset);
                        if (p >= 0 && p < MAXP) {
                                if (!n[p]++ || job->offset < lo[p])
                                        lo[p] = job->offset;
                                if (n[p] == 1 || job->offset > hi[p])
                                        hi[p] = job->offset;
                        }
                }
                if (r)
                        freeReplyObject(r);
        }
        for (int p = 0; p < MAXP && used < out_size; p++)
                if (n[p]) {
                        int k = snprintf(out + used, out_size - used,
                                         "%sp%d: %lld from offset %lld to %lld", used ? "; " : "",
                                         p, n[p], lo[p], hi[p]);
                        if (k < 0)
                                break;
                        used += (size_t)k;
                }
}

void fx_wait_all(fx_t *fx, int timeout_ms)
{
        long long deadline = kt_now_ms() + timeout_ms, want = 0, got = -1;
        char where[512];

        assert_false(fx->streaming);
        for (int i = 0; i < fx->n_jobs; i++)
                want += fx_expects_result(&fx->jobs[i]);
        while ((got = fx_count_results(fx, fx->n_jobs)) < want && kt_now_ms() < deadline)
                fx_sleep_ms(100);
        if (got != want) {
                kt_stack_fail(&fx->stack);
                fx_report_missing(fx, where, sizeof(where));
                fail_msg("%s: %lld of %lld results after %d ms; missing by partition: %s", fx->tag,
                         got, want, timeout_ms, where);
        }
        /* The dead-letter stage counts a copy once the broker has it, on its
         * own time: results of the jobs around it do not wait for that. */
        want = 0;
        for (int i = 0; i < fx->n_jobs; i++)
                want += fx->jobs[i].dlq;
        while ((got = fx_undecodable(fx)) < want && kt_now_ms() < deadline)
                fx_sleep_ms(100);
        if (got < want) {
                kt_stack_fail(&fx->stack);
                fail_msg("%s: kinfer:stats undecodable %lld after %d ms, want %lld: dead-letter "
                         "copies not taken",
                         fx->tag, got, timeout_ms, want);
        }
}

long long fx_undecodable(fx_t *fx)
{
        redisReply *r = fx_redis(fx, "HGET kinfer:stats undecodable");
        long long n = -1;
        if (r) {
                n = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
                freeReplyObject(r);
        }
        return n;
}

/* ---- the check -------------------------------------------------------- */

static const char *fx_elem(const redisReply *r, size_t i)
{
        return r->element[i]->type == REDIS_REPLY_STRING ? r->element[i]->str : NULL;
}

static long long fx_elem_ll(const redisReply *r, size_t i)
{
        const char *s = fx_elem(r, i);
        return s ? atoll(s) : 0;
}

#define FX_FAIL(fx, ...)                                                                           \
        do {                                                                                       \
                kt_stack_fail(&(fx)->stack);                                                       \
                fail_msg(__VA_ARGS__);                                                             \
        } while (0)

static const char *fx_model_of(const fx_job_t *job)
{
        return job->model ? job->model : "mlp";
}

int fx_text_matches(const char *text, const char *want)
{
        if (!text || !text[0])
                return 0;
        if (!want)
                return 1;
        if (want[0] == '^')
                return !strncmp(text, want + 1, strlen(want + 1));
        return strstr(text, want) != NULL;
}

/* One job's decoded result against what it must be. */
static void fx_check_job(fx_t *fx, const fx_job_t *job, const kf_result_t *r, long long ttl)
{
        const char *want = job->want_error ? "error" : "ok";
        char source[128];

        if (r->ok != !job->want_error)
                FX_FAIL(fx, "job %s: status %s (%s: %s), want %s%s%s", job->id,
                        r->ok ? "ok" : "error", r->ok ? "-" : r->error, r->ok ? "-" : r->message,
                        want, job->want_error ? " " : "", job->want_error ? job->want_error : "");
        if (r->v != 2)
                FX_FAIL(fx, "job %s: result v %llu, want 2", job->id, (unsigned long long)r->v);
        if (strcmp(r->id, job->id))
                FX_FAIL(fx, "job %s: result id '%s'", job->id, r->id);
        if (strcmp(r->user, fx_user(fx, job->user)))
                FX_FAIL(fx, "job %s: result user '%s', want %s", job->id, r->user,
                        fx_user(fx, job->user));
        if (strcmp(r->model, fx_model_of(job)))
                FX_FAIL(fx, "job %s: result model '%s', want '%s'", job->id, r->model,
                        fx_model_of(job));
        if (!r->worker[0])
                FX_FAIL(fx, "job %s: no worker field", job->id);
        if (job->cli) {
                /* Produced by `kinfer submit`: where it went is known only
                 * from the result, but it must name one message of the topic. */
                int p = -1, end = 0;
                long long off = -1;
                if (sscanf(r->source, FX_TOPIC "/%d/%lld%n", &p, &off, &end) != 2 ||
                    r->source[end] || p < 0 || off < 0)
                        FX_FAIL(fx, "job %s: source '%s', want %s/PARTITION/OFFSET", job->id,
                                r->source, FX_TOPIC);
        } else {
                snprintf(source, sizeof(source), "%s/%d/%lld", FX_TOPIC, (int)job->partition,
                         (long long)job->offset);
                if (strcmp(r->source, source))
                        FX_FAIL(fx, "job %s: source '%s', want %s", job->id, r->source, source);
        }
        if (job->want_error) {
                if (strcmp(r->error, job->want_error))
                        FX_FAIL(fx, "job %s: error '%s' (%s), want %s", job->id, r->error,
                                r->message[0] ? r->message : "no message", job->want_error);
                if (!fx_text_matches(r->message, job->want_message))
                        FX_FAIL(fx, "job %s: error %s with message '%s', want %s%s", job->id,
                                job->want_error, r->message,
                                job->want_message ? "one with " : "one",
                                job->want_message ? job->want_message : "");
        } else {
                if (r->rows != (uint32_t)job->rows || r->cols != FX_OUT)
                        FX_FAIL(fx, "job %s: shape [%u, %u], want [%d, %d]", job->id, r->rows,
                                r->cols, job->rows, FX_OUT);
                if (r->version != 1)
                        FX_FAIL(fx, "job %s: version %llu, want 1", job->id,
                                (unsigned long long)r->version);
                if (!r->output)
                        FX_FAIL(fx, "job %s: ok result without output", job->id);
                for (int row = 0; row < job->rows; row++) {
                        double y[FX_OUT];
                        fx_reference(fx, job->x + row * FX_IN, y);
                        for (int k = 0; k < FX_OUT; k++) {
                                float got = r->output[row * FX_OUT + k];
                                if (!(fabs(got - y[k]) <= 1e-5 * fmax(1.0, fabs(y[k]))))
                                        FX_FAIL(fx,
                                                "job %s row %d col %d: got %.9g, reference %.9g",
                                                job->id, row, k, got, y[k]);
                        }
                }
        }
        if (ttl <= 0)
                FX_FAIL(fx, "job %s: result TTL %lld, want > 0", job->id, ttl);
}

static int fx_cmp_str(const void *a, const void *b)
{
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The user's inbox FX_INBOX announces every job of the user that named it
 * (at least once: a redelivered or duplicate job is pushed again) and
 * nothing else, and lives (a TTL).  Returns how many ids were announced more
 * than once. */
static long long fx_check_inbox(fx_t *fx, int u)
{
        const char **want = calloc((size_t)fx->n_jobs + 1, sizeof(*want));
        const char **got;
        long long extra = 0;
        size_t n_want = 0, w = 0, g = 0;
        redisReply *l, *t;

        assert_non_null(want);
        for (int i = 0; i < fx->n_jobs; i++)
                if (fx_expects_result(&fx->jobs[i]) && fx->jobs[i].user == u && fx->jobs[i].inbox)
                        want[n_want++] = fx->jobs[i].id;
        l = fx_redis(fx, "LRANGE kinfer:{%s}:inbox:" FX_INBOX " 0 -1", fx_user(fx, u));
        assert_non_null(l);
        if (l->type != REDIS_REPLY_ARRAY)
                FX_FAIL(fx, "inbox of %s: LRANGE answered type %d (%s)", fx_user(fx, u), l->type,
                        l->type == REDIS_REPLY_ERROR ? l->str : "not a list");
        got = calloc(l->elements + 1, sizeof(*got));
        assert_non_null(got);
        for (size_t k = 0; k < l->elements; k++) {
                if (l->element[k]->type != REDIS_REPLY_STRING)
                        FX_FAIL(fx, "inbox of %s: element %zu is not a string", fx_user(fx, u), k);
                got[k] = l->element[k]->str;
        }
        qsort(want, n_want, sizeof(*want), fx_cmp_str);
        qsort(got, l->elements, sizeof(*got), fx_cmp_str);
        /* Merge the two sorted lists: every wanted id at least once, no other. */
        while (w < n_want || g < l->elements) {
                int c = w == n_want ? 1 : g == l->elements ? -1 : strcmp(want[w], got[g]);
                size_t same = 0;
                if (c < 0)
                        FX_FAIL(fx,
                                "job %s of %s: its id is not on kinfer:{%s}:inbox:" FX_INBOX
                                " (%zu ids there): its result was never announced",
                                want[w], fx_user(fx, u), fx_user(fx, u), l->elements);
                if (c > 0)
                        FX_FAIL(fx,
                                "kinfer:{%s}:inbox:" FX_INBOX " holds '%s', the id of no "
                                "job of %s that names this inbox",
                                fx_user(fx, u), got[g], fx_user(fx, u));
                while (g < l->elements && !strcmp(want[w], got[g])) {
                        g++;
                        same++;
                }
                extra += same > 1;
                w++;
        }
        if (n_want) {
                t = fx_redis(fx, "TTL kinfer:{%s}:inbox:" FX_INBOX, fx_user(fx, u));
                assert_non_null(t);
                if (t->type != REDIS_REPLY_INTEGER || t->integer <= 0)
                        FX_FAIL(fx, "kinfer:{%s}:inbox:" FX_INBOX ": TTL %lld, want > 0",
                                fx_user(fx, u),
                                t->type == REDIS_REPLY_INTEGER ? t->integer : -99LL);
                freeReplyObject(t);
        }
        freeReplyObject(l);
        free(got);
        free(want);
        return extra;
}

/* What one user's ok and error results add up to, per model. */
#define FX_MAX_MODELS 8
typedef struct fx_usage_s {
        long long jobs, rows, errors;
        struct {
                const char *model;
                long long jobs, rows, errors;
        } m[FX_MAX_MODELS];
        int n_models;
} fx_usage_t;

static void fx_usage_add(fx_usage_t *us, const char *model, int ok, long long rows)
{
        int k;
        if (ok) {
                us->jobs++;
                us->rows += rows;
        } else {
                us->errors++;
        }
        if (!model[0]) /* no readable model: the lifetime counters only */
                return;
        for (k = 0; k < us->n_models && strcmp(us->m[k].model, model); k++)
                ;
        if (k == us->n_models) {
                assert_true(k < FX_MAX_MODELS);
                us->m[us->n_models++].model = model;
        }
        if (ok) {
                us->m[k].jobs++;
                us->m[k].rows += rows;
        } else {
                us->m[k].errors++;
        }
}

/* kinfer:{USER}:usage:models holds exactly the per-model counters the
 * results add up to (fields jobs:MODEL rows:MODEL flops:MODEL errors:MODEL),
 * and the quota-window hashes add up to the lifetime ones
 * (docs/protocol.md, Usage counters). */
static void fx_check_usage_split(fx_t *fx, int u, const fx_usage_t *us)
{
        static const char *const counters[] = {"jobs", "rows", "flops", "errors"};
        long long wj = 0, wr = 0, wf = 0, we = 0;
        int matched = 0, want_fields = 0;
        redisReply *keys, *r = fx_redis(fx, "HGETALL kinfer:{%s}:usage:models", fx_user(fx, u));

        assert_non_null(r);
        if (r->type != REDIS_REPLY_ARRAY)
                FX_FAIL(fx, "kinfer:{%s}:usage:models: HGETALL answered type %d", fx_user(fx, u),
                        r->type);
        for (int k = 0; k < us->n_models; k++)
                want_fields += (us->m[k].jobs != 0) + (us->m[k].rows != 0) +
                               (us->m[k].rows * FX_FLOPS_PER_ROW != 0) + (us->m[k].errors != 0);
        for (size_t e = 0; e + 1 < r->elements; e += 2) {
                const char *field = fx_elem(r, e), *colon = field ? strchr(field, ':') : NULL;
                long long got = fx_elem_ll(r, e + 1), want = 0;
                size_t c;
                int k;
                if (!colon)
                        FX_FAIL(fx, "kinfer:{%s}:usage:models: field '%s' is not COUNTER:MODEL",
                                fx_user(fx, u), field ? field : "?");
                for (c = 0; c < 4 && (strlen(counters[c]) != (size_t)(colon - field) ||
                                      strncmp(field, counters[c], (size_t)(colon - field)));
                     c++)
                        ;
                for (k = 0; k < us->n_models && strcmp(us->m[k].model, colon + 1); k++)
                        ;
                if (c < 4 && k < us->n_models) {
                        long long v[4] = {us->m[k].jobs, us->m[k].rows,
                                          us->m[k].rows * FX_FLOPS_PER_ROW, us->m[k].errors};
                        want = v[c];
                        matched += want != 0;
                }
                if (got != want)
                        FX_FAIL(fx,
                                "usage of %s per model: %s is %lld, want %lld (a lost or "
                                "doubled charge)",
                                fx_user(fx, u), field, got, want);
        }
        if (matched != want_fields) {
                for (int k = 0; k < us->n_models; k++)
                        print_error("want for %s: jobs:%s %lld rows %lld errors %lld\n",
                                    fx_user(fx, u), us->m[k].model, us->m[k].jobs, us->m[k].rows,
                                    us->m[k].errors);
                FX_FAIL(fx,
                        "usage of %s per model: %d of the %d non-zero counters wanted in "
                        "kinfer:{%s}:usage:models",
                        fx_user(fx, u), matched, want_fields, fx_user(fx, u));
        }
        freeReplyObject(r);

        keys = fx_redis(fx, "KEYS kinfer:{%s}:usage:window:*", fx_user(fx, u));
        assert_non_null(keys);
        assert_int_equal(keys->type, REDIS_REPLY_ARRAY);
        for (size_t k = 0; k < keys->elements; k++) {
                r = fx_redis(fx, "HMGET %s jobs rows flops errors", keys->element[k]->str);
                assert_non_null(r);
                assert_int_equal(r->type, REDIS_REPLY_ARRAY);
                wj += fx_elem_ll(r, 0);
                wr += fx_elem_ll(r, 1);
                wf += fx_elem_ll(r, 2);
                we += fx_elem_ll(r, 3);
                freeReplyObject(r);
        }
        if (wj != us->jobs || wr != us->rows || wf != us->rows * FX_FLOPS_PER_ROW ||
            we != us->errors)
                FX_FAIL(fx,
                        "usage of %s over its %zu quota windows: jobs %lld rows %lld flops "
                        "%lld errors %lld, want %lld %lld %lld %lld",
                        fx_user(fx, u), keys->elements, wj, wr, wf, we, us->jobs, us->rows,
                        us->rows * FX_FLOPS_PER_ROW, us->errors);
        freeReplyObject(keys);
}

void fx_check(fx_t *fx)
{
        fx_usage_t *usage = calloc(FX_MAX_USERS, sizeof(*usage));
        long long undecodable = 0, ok = 0, errors = 0, announced_again = 0, *ttl;
        redisReply *r;

        assert_non_null(usage);
        assert_false(fx->streaming);
        if (!fx->rc)
                assert_int_equal(fx_reconnect(fx), 0);
        ttl = calloc((size_t)fx->n_jobs + 1, sizeof(*ttl));
        assert_non_null(ttl);
        /* The TTLs pipelined, then each result read with kt_result_get. */
        for (int i = 0; i < fx->n_jobs; i++) {
                const fx_job_t *job = &fx->jobs[i];
                if (!job->dlq && job->id[0] && job->user < 0)
                        fail_msg("test bug: job %s has an id but no user, so no address: it "
                                 "must be expected on the DLQ (dlq = 1)",
                                 job->id);
                if (fx_expects_result(job))
                        redisAppendCommand(fx->rc, "TTL " FX_RESULT_FMT, fx_user(fx, job->user),
                                           job->id);
        }
        for (int i = 0; i < fx->n_jobs; i++) {
                redisReply *t;
                if (!fx_expects_result(&fx->jobs[i]))
                        continue;
                assert_int_equal(redisGetReply(fx->rc, (void **)&t), REDIS_OK);
                ttl[i] = t->type == REDIS_REPLY_INTEGER ? t->integer : -99;
                freeReplyObject(t);
        }
        for (int i = 0; i < fx->n_jobs; i++) {
                const fx_job_t *job = &fx->jobs[i];
                kf_result_t res;
                int rc;
                if (job->dlq) {
                        undecodable++;
                        continue;
                }
                if (!fx_expects_result(job))
                        continue;
                rc = kt_result_get(fx->rc, fx_user(fx, job->user), job->id, &res);
                if (rc != 1) {
                        kf_result_clear(&res);
                        FX_FAIL(fx, "job %s of %s: %s", job->id, fx_user(fx, job->user),
                                rc == 0 ? "no result" : "the result cannot be read (above)");
                }
                fx_check_job(fx, job, &res, ttl[i]);
                kf_result_clear(&res);
                fx_usage_add(&usage[job->user], fx_model_of(job), !job->want_error, job->rows);
                if (!job->want_error)
                        ok++;
                else
                        errors++;
        }
        free(ttl);

        for (int u = 0; u < fx->n_users; u++) {
                const fx_usage_t *us = &usage[u];
                r = fx_redis(fx, "HMGET kinfer:{%s}:usage jobs rows flops errors", fx_user(fx, u));
                assert_non_null(r);
                assert_int_equal(r->type, REDIS_REPLY_ARRAY);
                if (fx_elem_ll(r, 0) != us->jobs || fx_elem_ll(r, 1) != us->rows ||
                    fx_elem_ll(r, 2) != us->rows * FX_FLOPS_PER_ROW ||
                    fx_elem_ll(r, 3) != us->errors)
                        FX_FAIL(fx,
                                "usage of %s: jobs %lld rows %lld flops %lld errors %lld, want "
                                "%lld %lld %lld %lld (a lost or doubled charge)",
                                fx_user(fx, u), fx_elem_ll(r, 0), fx_elem_ll(r, 1),
                                fx_elem_ll(r, 2), fx_elem_ll(r, 3), us->jobs, us->rows,
                                us->rows * FX_FLOPS_PER_ROW, us->errors);
                freeReplyObject(r);
                fx_check_usage_split(fx, u, us);
                announced_again += fx_check_inbox(fx, u);
        }
        free(usage);
        r = fx_redis(fx, "HGET kinfer:stats undecodable");
        assert_non_null(r);
        {
                long long got = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
                if (fx->redelivered_dlq ? got < undecodable : got != undecodable)
                        FX_FAIL(fx, "kinfer:stats undecodable %lld, want %s%lld", got,
                                fx->redelivered_dlq ? ">= " : "", undecodable);
        }
        freeReplyObject(r);
        print_message("%s: %lld ok results, %lld error results, %lld dead-lettered: all exactly "
                      "once, usage exact, every announced (%lld more than once)\n",
                      fx->tag, ok, errors, undecodable, announced_again);
}

/* ---- snapshots -------------------------------------------------------- */

/* "worker started done" of job i's result, "" when it has none. */
static void fx_snapshot_of(fx_t *fx, int i, char *out, size_t size)
{
        const fx_job_t *job = &fx->jobs[i];
        kf_result_t r;
        int rc;

        out[0] = '\0';
        if (!fx->rc)
                assert_int_equal(fx_reconnect(fx), 0);
        rc = kt_result_get(fx->rc, fx_user(fx, job->user), job->id, &r);
        if (rc < 0)
                FX_FAIL(fx, "job %s: the result cannot be read (above)", job->id);
        if (rc == 1)
                snprintf(out, size, "%s %llu %llu", r.worker, (unsigned long long)r.started,
                         (unsigned long long)r.done);
        kf_result_clear(&r);
}

void fx_snapshot_take(fx_t *fx, fx_snapshot_t *snap)
{
        snap->n = fx->n_jobs;
        snap->val = calloc((size_t)fx->n_jobs + 1, sizeof(*snap->val));
        assert_non_null(snap->val);
        for (int i = 0; i < fx->n_jobs; i++)
                if (fx_expects_result(&fx->jobs[i]))
                        fx_snapshot_of(fx, i, snap->val[i], sizeof(snap->val[i]));
}

void fx_snapshot_check(fx_t *fx, const fx_snapshot_t *snap)
{
        for (int i = 0; i < snap->n; i++) {
                char now[320];
                if (!snap->val[i][0])
                        continue;
                fx_snapshot_of(fx, i, now, sizeof(now));
                if (strcmp(now, snap->val[i]))
                        FX_FAIL(fx,
                                "job %s: result replaced: was '%s' (worker started done), "
                                "now '%s'",
                                fx->jobs[i].id, snap->val[i], now[0] ? now : "(none)");
        }
}

void fx_snapshot_free(fx_snapshot_t *snap)
{
        free(snap->val);
        snap->val = NULL;
}

/* ---- the dead-letter topic -------------------------------------------- */

static void fx_copy_header(rd_kafka_headers_t *hdrs, const char *name, char *dst, size_t size)
{
        const void *v;
        size_t n;
        dst[0] = '\0';
        if (hdrs && rd_kafka_header_get_last(hdrs, name, &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR && v)
                snprintf(dst, size, "%.*s", (int)n, (const char *)v);
}

static char *fx_dup_bytes(const void *p, size_t n)
{
        char *d;
        if (!p)
                return NULL;
        d = malloc(n + 1);
        assert_non_null(d);
        memcpy(d, p, n);
        d[n] = '\0';
        return d;
}

fx_dlq_rec_t *fx_dlq_read(fx_t *fx, int want, int timeout_ms, int idle_ms, int *n)
{
        char err[512], group[64];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_partition_list_t *parts;
        rd_kafka_topic_t *rkt;
        fx_dlq_rec_t *recs = NULL;
        int cap = 0, got = 0, distinct = 0;
        long long deadline = kt_now_ms() + timeout_ms, idle_until = -1;
        rd_kafka_t *rk;

        snprintf(group, sizeof(group), "%s-dlq-reader", fx->tag);
        if (rd_kafka_conf_set(conf, "bootstrap.servers", fx->stack.brokers, err, sizeof(err)) ||
            rd_kafka_conf_set(conf, "group.id", group, err, sizeof(err)) ||
            rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof(err)) ||
            rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err)))
                fail_msg("dlq reader: %s", err);
        rd_kafka_conf_set_log_cb(conf, fx_kafka_log);
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
        if (!rk)
                fail_msg("dlq reader: %s", err);
        rd_kafka_poll_set_consumer(rk);
        /* assign() rather than subscribe(): every partition from the start,
         * without waiting for the mock's 3 s first-join delay. */
        rkt = rd_kafka_topic_new(rk, FX_DLQ_TOPIC, NULL);
        if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) || md->topic_cnt != 1 || md->topics[0].err)
                fail_msg("dlq reader: no metadata for %s", FX_DLQ_TOPIC);
        parts = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
        for (int p = 0; p < md->topics[0].partition_cnt; p++)
                rd_kafka_topic_partition_list_add(parts, FX_DLQ_TOPIC,
                                                  md->topics[0].partitions[p].id)
                    ->offset = RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        assert_int_equal(rd_kafka_assign(rk, parts), 0);
        rd_kafka_topic_partition_list_destroy(parts);

        while (kt_now_ms() < (idle_until >= 0 ? idle_until : deadline)) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, 100);
                rd_kafka_headers_t *hdrs = NULL;
                fx_dlq_rec_t *rec;
                if (!rkm)
                        continue;
                if (rkm->err) {
                        if (rkm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                                fprintf(stderr, "faults: dlq reader: %s\n",
                                        rd_kafka_message_errstr(rkm));
                        rd_kafka_message_destroy(rkm);
                        continue;
                }
                if (got == cap) {
                        cap = cap ? cap * 2 : 32;
                        recs = realloc(recs, sizeof(*recs) * (size_t)cap);
                        assert_non_null(recs);
                }
                rec = &recs[got++];
                memset(rec, 0, sizeof(*rec));
                rd_kafka_message_headers(rkm, &hdrs);
                fx_copy_header(hdrs, "kinfer.source", rec->source, sizeof(rec->source));
                fx_copy_header(hdrs, "kinfer.error", rec->error, sizeof(rec->error));
                fx_copy_header(hdrs, "kinfer.reason", rec->reason, sizeof(rec->reason));
                fx_copy_header(hdrs, "kinfer.worker", rec->worker, sizeof(rec->worker));
                rec->key = fx_dup_bytes(rkm->key, rkm->key_len);
                rec->key_len = rkm->key_len;
                rec->value = fx_dup_bytes(rkm->payload, rkm->len);
                rec->value_len = rkm->len;
                rd_kafka_message_destroy(rkm);
                /* A redelivered message may be copied twice: count sources. */
                distinct++;
                for (int r = 0; r < got - 1; r++)
                        if (!strcmp(recs[r].source, rec->source)) {
                                distinct--;
                                break;
                        }
                if (distinct >= want && idle_until < 0)
                        idle_until = kt_now_ms() + idle_ms;
        }
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        *n = got;
        return recs;
}

void fx_dlq_free(fx_dlq_rec_t *recs, int n)
{
        for (int i = 0; i < n; i++) {
                free(recs[i].key);
                free(recs[i].value);
        }
        free(recs);
}

fx_job_t *fx_add_dlq(fx_t *fx, int *k, const char *code, const void *bytes, size_t n)
{
        fx_job_t *job = fx_add_raw(fx);
        job->dlq = 1;
        job->want_error = code;
        snprintf(job->key, sizeof(job->key), "%s-dlq-key-%d", fx->tag, (*k)++);
        job->value = malloc(n ? n : 1);
        assert_non_null(job->value);
        if (n)
                memcpy(job->value, bytes, n);
        job->len = n;
        return job;
}

void fx_check_dlq(fx_t *fx, int n_dlq, const char *const *workers, int n_workers, int allow_dups)
{
        int n = 0, *seen = calloc((size_t)fx->n_jobs, sizeof(int));
        fx_dlq_rec_t *recs = fx_dlq_read(fx, n_dlq, 120000, 3000, &n);

        assert_non_null(seen);
        print_message("%d messages on %s, %d expected\n", n, FX_DLQ_TOPIC, n_dlq);
        for (int r = 0; r < n; r++) {
                fx_dlq_rec_t *rec = &recs[r];
                const fx_job_t *job = NULL;
                int i, w;
                for (i = 0; i < fx->n_jobs; i++) {
                        char src[128];
                        snprintf(src, sizeof(src), "%s/%d/%lld", FX_TOPIC,
                                 (int)fx->jobs[i].partition, (long long)fx->jobs[i].offset);
                        if (!strcmp(src, rec->source)) {
                                job = &fx->jobs[i];
                                break;
                        }
                }
                if (!job) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("DLQ message with kinfer.source '%s' matches no message "
                                 "produced (error '%s', reason '%s')",
                                 rec->source, rec->error, rec->reason);
                }
                if (!job->dlq) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s (job %s) was dead-lettered (%s: %s) but has a readable id "
                                 "and user",
                                 rec->source, job->id, rec->error, rec->reason);
                }
                if (seen[i]++ && !allow_dups) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s was dead-lettered %d times", rec->source, seen[i]);
                }
                if (strcmp(rec->error, job->want_error))
                        fail_msg("%s (key %s): kinfer.error '%s', want %s (reason: %s)",
                                 rec->source, job->key, rec->error, job->want_error, rec->reason);
                if (!fx_text_matches(rec->reason, job->want_message))
                        fail_msg("%s (key %s): kinfer.reason '%s', want %s%s", rec->source,
                                 job->key, rec->reason,
                                 job->want_message ? "one with " : "a non-empty one",
                                 job->want_message ? job->want_message : "");
                for (w = 0; w < n_workers && strcmp(rec->worker, workers[w]); w++)
                        ;
                if (w == n_workers)
                        fail_msg("%s: kinfer.worker '%s' is none of the workers", rec->source,
                                 rec->worker);
                if (!rec->key || rec->key_len != strlen(job->key) ||
                    memcmp(rec->key, job->key, rec->key_len))
                        fail_msg("%s: key '%s', want the original '%s'", rec->source,
                                 rec->key ? rec->key : "(null)", job->key);
                if (job->null_value ? rec->value != NULL
                                    : rec->value_len != job->len ||
                                          (job->len && memcmp(rec->value, job->value, job->len)))
                        fail_msg("%s (key %s): value of %zu bytes%s, want the original %zu%s",
                                 rec->source, job->key, rec->value_len, rec->value ? "" : " (null)",
                                 job->len, job->null_value ? " (null)" : "");
        }
        for (int i = 0; i < fx->n_jobs; i++)
                if (fx->jobs[i].dlq && !seen[i]) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("message %s/%d/%lld (key %s, %zu bytes, want %s) is not on the "
                                 "DLQ",
                                 FX_TOPIC, (int)fx->jobs[i].partition,
                                 (long long)fx->jobs[i].offset, fx->jobs[i].key, fx->jobs[i].len,
                                 fx->jobs[i].want_error);
                }
        {
                int dups = 0;
                for (int i = 0; i < fx->n_jobs; i++)
                        dups += seen[i] > 1 ? seen[i] - 1 : 0;
                if (dups)
                        print_message("%d DLQ copies were duplicates (redelivered after a "
                                      "crash)\n",
                                      dups);
        }
        fx_dlq_free(recs, n);
        free(seen);
}

/* ---- committed offsets ------------------------------------------------ */

int64_t fx_committed(fx_t *fx, int32_t partition)
{
        char err[512];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_topic_partition_list_t *parts;
        rd_kafka_resp_err_t rerr;
        int64_t off = -2;
        rd_kafka_t *rk;

        if (rd_kafka_conf_set(conf, "bootstrap.servers", fx->stack.brokers, err, sizeof(err)) ||
            rd_kafka_conf_set(conf, "group.id", FX_GROUP, err, sizeof(err)))
                fail_msg("offset reader: %s", err);
        rd_kafka_conf_set_log_cb(conf, fx_kafka_log);
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
        if (!rk)
                fail_msg("offset reader: %s", err);
        parts = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(parts, FX_TOPIC, partition);
        /* OffsetFetch only: this handle never joins the workers' group. */
        rerr = rd_kafka_committed(rk, parts, 10000);
        if (!rerr && !parts->elems[0].err)
                off = parts->elems[0].offset < 0 ? -1 : parts->elems[0].offset;
        rd_kafka_topic_partition_list_destroy(parts);
        rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
        return off;
}

void fx_wait_committed(fx_t *fx, int32_t partition, int64_t want, int timeout_ms)
{
        long long deadline = kt_now_ms() + timeout_ms;
        int64_t got;
        while ((got = fx_committed(fx, partition)) < want) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("%s/%d: committed offset %lld after %d ms, want %lld", FX_TOPIC,
                                 (int)partition, (long long)got, timeout_ms, (long long)want);
                }
                fx_sleep_ms(250);
        }
}

int fx_state_setup(void **state)
{
        fx_t *fx = calloc(1, sizeof(*fx));
        assert_non_null(fx);
        *state = fx;
        return 0;
}

int fx_state_teardown(void **state)
{
        fx_t *fx = *state;
        fx_teardown(fx);
        free(fx);
        return 0;
}
