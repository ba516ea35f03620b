/* cmd_bench.c - `kinfer bench`: a load generator that drains a backlog or runs
 * an open loop and reports throughput and end-to-end latency; its compute
 * mode (bench_compute.c) times the same forward passes without queue or Redis. */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "kf_kafka.h"
#include "kf_keys.h"
#include "kf_stats.h"
#include "kf_util.h"
#include "kinfer.h"
#include "model.h"

/* Redis commands sent per pipelined round trip (HMGET, UNLINK). */
#define BENCH_PIPE_CHUNK 1000
/* How often completion is polled (usage counters), and the bar redrawn. */
#define BENCH_POLL_US 20000
#define BENCH_BAR_US  100000

/* Options: kc_conf_t first, so KC_OPTS_CONN and the kc fields reused below
 * (model, user, ttl, timeout, rows-per-job, seed, quiet, -X) keep their
 * offsets; the bench-only settings follow. */
typedef struct bench_conf_s {
        kc_conf_t kc;
        char *mode;       /* drain | open | compute */
        char *model_file; /* input_dim (and the name) from a model file */
        int64_t cols;     /* input columns when there is no model file */
        int64_t users;    /* 0 = one per partition of the topic */
        int64_t jobs;     /* drain, compute */
        int64_t rate;     /* open: jobs per second */
        int64_t duration; /* open: seconds */
        int64_t pause_pid;
        char *cpu_pids;       /* processes whose CPU time is reported */
        int64_t batch_rows;   /* compute */
        int64_t threads;      /* compute */
        int64_t blas_threads; /* compute */
        int64_t probes;       /* open: jobs whose visibility is timed (0 = none) */
        int keep;             /* leave result keys in Redis */
} bench_conf_t;

#define O(f)  offsetof(bench_conf_t, f)
#define OK(f) offsetof(bench_conf_t, kc.f)

static const kf_opt_t bench_opts[] = {
    KC_OPTS_CONN,
    {"mode", 0, NULL, KF_OPT_STR, O(mode), 0, 0, "drain", "MODE",
     "drain (publish --jobs, time until all are done), open (--rate for --duration) or "
     "compute (forward passes only)"},
    {"model", 'm', NULL, KF_OPT_STR, OK(model), 0, 0, NULL, "NAME",
     "model the jobs name (default: the --model-file's name)"},
    {"model-file", 'M', NULL, KF_OPT_STR, O(model_file), 0, 0, NULL, "FILE",
     "model file: gives the input columns (compute: the model itself)"},
    {"cols", 0, NULL, KF_OPT_INT, O(cols), 0, 65536, "0", "N",
     "input columns, when there is no --model-file"},
    {"user", 'u', NULL, KF_OPT_STR, OK(user), 0, 0, "bench", "ID",
     "base of the user names: ID-0, ID-3, ... (chosen to cover the partitions evenly)"},
    {"users", 0, NULL, KF_OPT_INT, O(users), 0, 100000, "0", "N",
     "spread the jobs over N users (0 = one per partition of the topic)"},
    {"rows-per-job", 0, NULL, KF_OPT_INT, OK(rows_per_job), 1, 65536, "1", "N",
     "input rows of each job"},
    {"jobs", 'n', NULL, KF_OPT_INT, O(jobs), 1, 100000000, "10000", "N",
     "drain, compute: number of jobs"},
    {"rate", 0, NULL, KF_OPT_INT, O(rate), 0, 10000000, "0", "R", "open: jobs per second"},
    {"duration", 0, NULL, KF_OPT_INT, O(duration), 0, 86400, "10", "S",
     "open: seconds of publishing"},
    {"pause-pid", 0, NULL, KF_OPT_INT, O(pause_pid), 0, INT32_MAX, "0", "PID",
     "drain: SIGSTOP this process (a worker) while publishing, SIGCONT when the whole backlog "
     "is in, and time from then"},
    {"cpu-pids", 0, NULL, KF_OPT_STR, O(cpu_pids), 0, 0, NULL, "PID,..",
     "report the CPU time these processes (worker, broker, redis) used while the jobs ran"},
    {"ttl", 0, NULL, KF_OPT_INT, OK(ttl), 1, JOB_TTL_MAX, "3600", "S", "result lifetime"},
    {"timeout", 0, NULL, KF_OPT_INT, OK(timeout_s), 1, 86400, "60", "S",
     "give up when no job completes for S seconds"},
    {"probes", 0, NULL, KF_OPT_INT, O(probes), 0, 1000000, "1000", "N",
     "open: also time when the results of N jobs, evenly spread, become visible (BLPOP; 0 = "
     "none)"},
    {"keep", 0, NULL, KF_OPT_BOOL, O(keep), 0, 0, "0", NULL,
     "keep the result and done keys (default: deleted once read)"},
    {"batch-rows", 0, NULL, KF_OPT_INT, O(batch_rows), 1, 1 << 20, "256", "N",
     "compute: rows per forward pass (match the worker's --batch-max-rows)"},
    {"threads", 0, NULL, KF_OPT_INT, O(threads), 1, 256, "1", "N",
     "compute: threads computing in parallel (match the worker's --compute-threads)"},
    {"blas-threads", 0, NULL, KF_OPT_INT, O(blas_threads), 1, 256, "1", "N",
     "compute: OpenBLAS threads per call (match the worker's --blas-threads)"},
    {"seed", 's', NULL, KF_OPT_INT, OK(seed), 0, INT64_MAX, "1", "N", "seed of the random inputs"},
    {"quiet", 'q', NULL, KF_OPT_BOOL, OK(quiet), 0, 0, "0", NULL, "no progress bar"},
    {NULL},
};

typedef enum { BENCH_DRAIN, BENCH_OPEN, BENCH_COMPUTE } bench_mode_t;

/* Per job: nothing yet, handed to librdkafka, acknowledged, not delivered. */
enum { BENCH_JOB_NONE = 0, BENCH_JOB_SENT, BENCH_JOB_DELIVERED, BENCH_JOB_FAILED };

typedef struct bench_s {
        bench_conf_t *conf;
        bench_mode_t mode;
        uint32_t cols;
        char run[17]; /* random part of the job ids */
        uint64_t rng;
        float *input; /* rows_per_job x cols, refilled per job */
        /* users: job i belongs to users[i % n_users] */
        char (*users)[JOB_USER_MAX + 1];
        size_t n_users;
        int32_t partitions;
        /* jobs */
        size_t n;         /* jobs to publish */
        size_t published; /* handed to librdkafka */
        int64_t *sent_us; /* per job: Unix us of its (scheduled) produce */
        unsigned char *state;
        size_t delivered, failed;
        rd_kafka_t *rk;
        redisContext *redis;
        int paused; /* pause_pid is stopped by us */
        /* timing (Unix us) */
        int64_t t_first_us, t_published_us, t_start_us;
        int64_t t_all_us;   /* every result was there (seen by the usage poll) */
        int64_t max_lag_us; /* open: how far publishing fell behind schedule */
        /* outcome */
        size_t ok, errors, missing;
        int64_t last_done_ms;
        double *lat_ms, *svc_ms; /* per completed job */
        size_t n_lat;
        kc_probe_t *probe;  /* open: when sampled results became visible */
        size_t probe_every; /* every probe_every-th job is probed */
        int probe_running;  /* its thread is still watching */
        double *vis_ms;     /* per probed job seen: visible - produce time */
        size_t n_vis;
        char first_error[256];
        kc_cpu_t cpu; /* while the jobs ran */
        /* progress bar */
        int bar;
        int64_t bar_drawn_us;
} bench_t;

static volatile sig_atomic_t bench_stop;

static void bench_on_signal(int sig)
{
        (void)sig;
        bench_stop = 1;
}

/* Wall clock in Unix microseconds: the worker's `done` is wall clock too. */
static int64_t bench_now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void bench_sleep_us(int64_t us)
{
        struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) && errno == EINTR && !bench_stop) {
        }
}

/* Draws "\r<what> [#####-----] 42% done/total <rate>" on stderr, at most
 * every BENCH_BAR_US unless final. */
static void bench_bar(bench_t *b, const char *what, size_t done, size_t total, double per_s,
                      int final)
{
        char bar[31];
        int64_t now = kf_mono_us();
        size_t fill;

        if (!b->bar || (!final && now - b->bar_drawn_us < BENCH_BAR_US))
                return;
        b->bar_drawn_us = now;
        fill = total ? done * 30 / total : 30;
        for (size_t i = 0; i < 30; i++)
                bar[i] = i < fill ? '#' : '-';
        bar[30] = '\0';
        fprintf(stderr, "\r\033[Kkinfer bench: %-9s [%s] %3zu%% %zu/%zu", what, bar,
                total ? done * 100 / total : 100, done, total);
        if (per_s > 0)
                fprintf(stderr, "  %.0f jobs/s", per_s);
        if (final)
                fputc('\n', stderr);
        fflush(stderr);
}

static void bench_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        bench_t *b = opaque;
        size_t idx = (size_t)(uintptr_t)rkm->_private;
        (void)rk;
        if (rkm->err) {
                if (!b->failed)
                        kc_err("bench: job %zu was not delivered: %s", idx + 1,
                               rd_kafka_err2str(rkm->err));
                b->state[idx] = BENCH_JOB_FAILED;
                b->failed++;
        } else {
                b->state[idx] = BENCH_JOB_DELIVERED;
                b->delivered++;
        }
}

/* Writes job idx's id into id (JOB_ID_MAX + 1 bytes). */
static void bench_job_id(const bench_t *b, size_t idx, char *id)
{
        snprintf(id, JOB_ID_MAX + 1, "%.64s-%s-%zu", b->conf->kc.user, b->run, idx + 1);
}

/* Picks n_users user names whose messages land evenly on the topic's
 * partitions under the default partitioner (crc32 of the key), so a backlog
 * spreads over every partition: the dev broker keeps only ~5 MiB each. */
static int bench_pick_users(bench_t *b)
{
        const kc_conf_t *c = &b->conf->kc;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_t *rkt;
        rd_kafka_resp_err_t err;
        size_t *need = NULL, chosen = 0;
        int rc = -1;

        if (!(rkt = rd_kafka_topic_new(b->rk, c->topic, NULL))) {
                kc_err("bench: topic %s: %s", c->topic, rd_kafka_err2str(rd_kafka_last_error()));
                return -1;
        }
        err = rd_kafka_metadata(b->rk, 0, rkt, &md, 10000);
        if (err || md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt < 1) {
                kc_err("bench: cannot read the partitions of topic %s: %s", c->topic,
                       rd_kafka_err2str(err                  ? err
                                        : md->topic_cnt == 1 ? md->topics[0].err
                                                             : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
                goto out;
        }
        b->partitions = md->topics[0].partition_cnt;
        b->n_users = b->conf->users ? (size_t)b->conf->users : (size_t)b->partitions;
        if (!(b->users = calloc(b->n_users, sizeof(*b->users))) ||
            !(need = calloc((size_t)b->partitions, sizeof(*need)))) {
                kc_err("bench: out of memory");
                goto out;
        }
        for (size_t p = 0; p < (size_t)b->partitions; p++)
                need[p] =
                    b->n_users / (size_t)b->partitions + (p < b->n_users % (size_t)b->partitions);
        for (unsigned long j = 0; chosen < b->n_users && j < 10000000; j++) {
                char name[JOB_USER_MAX + 1];
                int32_t p;
                int len = snprintf(name, sizeof(name), "%.40s-%lu", c->user, j);
                p = rd_kafka_msg_partitioner_consistent_random(rkt, name, (size_t)len,
                                                               b->partitions, NULL, NULL);
                if (p < 0 || p >= b->partitions || need[p] == 0)
                        continue;
                need[p]--;
                memcpy(b->users[chosen++], name, (size_t)len + 1);
        }
        if (chosen < b->n_users) {
                kc_err("bench: found only %zu of %zu user names", chosen, b->n_users);
                goto out;
        }
        rc = 0;
out:
        free(need);
        if (md)
                rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        return rc;
}

/* Sum of the users' jobs + errors counters (one pipelined round trip).
 * Returns the sum, or -1 on a Redis error (reported). */
static int64_t bench_usage_sum(bench_t *b)
{
        char key[KF_KEY_MAX];
        int64_t sum = 0;
        int failed = 0;

        for (size_t u = 0; u < b->n_users; u++) {
                kf_key(key, b->conf->kc.prefix, "usage", b->users[u]);
                if (redisAppendCommand(b->redis, "HMGET %s jobs errors", key) != REDIS_OK)
                        failed = 1;
        }
        for (size_t u = 0; u < b->n_users && !failed; u++) {
                redisReply *r = NULL;
                if (redisGetReply(b->redis, (void **)&r) != REDIS_OK || !r ||
                    r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                        failed = 1;
                } else {
                        for (size_t k = 0; k < 2; k++)
                                if (r->element[k]->type == REDIS_REPLY_STRING)
                                        sum += strtoll(r->element[k]->str, NULL, 10);
                }
                freeReplyObject(r);
        }
        if (failed) {
                kc_err("redis: reading usage counters: %s",
                       b->redis->errstr[0] ? b->redis->errstr : "unexpected reply");
                return -1;
        }
        return sum;
}

/* Encodes job idx with fresh random input and hands it to librdkafka,
 * recording sent_us as its produce time.  Returns 0 or -1. */
static int bench_produce(bench_t *b, size_t idx, int64_t sent_us)
{
        const kc_conf_t *c = &b->conf->kc;
        const char *user = b->users[idx % b->n_users];
        job_t job;
        char err[512], *buf;
        size_t len;
        rd_kafka_resp_err_t kerr;

        memset(&job, 0, sizeof(job));
        bench_job_id(b, idx, job.id);
        kf_strlcpy(job.user, user, sizeof(job.user));
        kf_strlcpy(job.model, c->model, sizeof(job.model));
        job.rows = (uint32_t)c->rows_per_job;
        job.cols = b->cols;
        job.input = b->input; /* borrowed */
        job.ttl_s = (uint32_t)c->ttl;
        kc_bench_random(&b->rng, b->input, (size_t)job.rows * job.cols);
        if (job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err))) {
                kc_err("bench: job %zu: %s", idx + 1, err);
                return -1;
        }
        b->sent_us[idx] = sent_us;
        b->state[idx] = BENCH_JOB_SENT;
        for (;;) {
                kerr = rd_kafka_producev(
                    b->rk, RD_KAFKA_V_TOPIC(c->topic), RD_KAFKA_V_KEY(user, strlen(user)),
                    RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                    RD_KAFKA_V_OPAQUE((void *)(uintptr_t)idx), RD_KAFKA_V_END);
                if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL || bench_stop)
                        break;
                rd_kafka_poll(b->rk, 10); /* let deliveries drain the queue */
        }
        if (kerr) {
                kc_err("bench: job %zu: cannot produce: %s", idx + 1, rd_kafka_err2str(kerr));
                b->state[idx] = BENCH_JOB_NONE;
                free(buf);
                return -1;
        }
        if (!b->t_first_us)
                b->t_first_us = sent_us;
        b->published++;
        if (b->probe && idx % b->probe_every == 0)
                kc_probe_add(b->probe, idx, job.id);
        return 0;
}

/* Waits until librdkafka has a delivery report for every published job. */
static void bench_flush(bench_t *b)
{
        while (rd_kafka_outq_len(b->rk) > 0 && !bench_stop) {
                rd_kafka_poll(b->rk, 10);
                bench_bar(b, "delivering", b->delivered + b->failed, b->published, 0, 0);
        }
        rd_kafka_poll(b->rk, 0);
        b->t_published_us = bench_now_us();
}

/* drain: every job as fast as librdkafka takes them. */
static int bench_publish_drain(bench_t *b)
{
        for (size_t i = 0; i < b->n && !bench_stop; i++) {
                if (bench_produce(b, i, bench_now_us()))
                        return -1;
                rd_kafka_poll(b->rk, 0);
                bench_bar(b, "publish", i + 1, b->n, 0, 0);
        }
        bench_bar(b, "publish", b->published, b->n, 0, 1);
        bench_flush(b);
        return bench_stop ? -1 : 0;
}

/* open: job i is due at start + i/rate, whatever has completed.  Its
 * latency is measured from when it was due, so a publisher that falls
 * behind cannot hide queueing (max_lag_us reports by how much it did). */
static int bench_publish_open(bench_t *b)
{
        double step_us = 1e6 / (double)b->conf->rate;
        int64_t mono0 = kf_mono_us() + 1000;
        int64_t wall0 = bench_now_us() + 1000;
        size_t i = 0;

        while (i < b->n && !bench_stop) {
                int64_t now = kf_mono_us(), due;
                while (i < b->n && (due = mono0 + (int64_t)((double)i * step_us)) <= now) {
                        if (now - due > b->max_lag_us)
                                b->max_lag_us = now - due;
                        if (bench_produce(b, i, wall0 + (due - mono0)))
                                return -1;
                        i++;
                }
                rd_kafka_poll(b->rk, 0);
                bench_bar(b, "open loop", i, b->n, 0, 0);
                if (i < b->n) {
                        int64_t wait = mono0 + (int64_t)((double)i * step_us) - kf_mono_us();
                        if (wait > 0)
                                bench_sleep_us(wait < 1000 ? wait : 1000);
                }
        }
        bench_bar(b, "open loop", b->published, b->n, 0, 1);
        b->t_start_us = b->t_first_us;
        bench_flush(b);
        return bench_stop ? -1 : 0;
}

/* Polls the usage counters until every delivered job has a result, or
 * none completes for --timeout seconds; t_all_us is when the poll saw the
 * last one (at most BENCH_POLL_US late).  Returns 0, or -1 on Redis error. */
static int bench_wait_done(bench_t *b, int64_t base)
{
        int64_t last_change = kf_mono_us(), t0 = kf_mono_us(), prev = -1;

        while (!bench_stop) {
                int64_t sum = bench_usage_sum(b), done, now = bench_now_us();
                double secs;
                if (sum < 0)
                        return -1;
                done = sum - base;
                secs = (double)(kf_mono_us() - t0) / 1e6;
                bench_bar(b, "results", (size_t)(done > 0 ? done : 0), b->delivered,
                          secs > 0.2 ? (double)done / secs : 0, 0);
                if (done != prev)
                        b->t_all_us = now;
                if (done >= (int64_t)b->delivered)
                        break;
                if (done != prev) {
                        prev = done;
                        last_change = kf_mono_us();
                } else if (kf_mono_us() - last_change > b->conf->kc.timeout_s * 1000000) {
                        kc_err("bench: no job completed for %lld s; %lld of %zu results missing",
                               (long long)b->conf->kc.timeout_s,
                               (long long)((int64_t)b->delivered - done), b->delivered);
                        break;
                }
                bench_sleep_us(BENCH_POLL_US);
        }
        if (b->bar)
                fputs("\r\033[K", stderr);
        return 0;
}

/* Reads done, started and status of every delivered job, pipelined in
 * chunks, and derives latencies, errors and missing results. */
static int bench_collect(bench_t *b)
{
        const char *prefix = b->conf->kc.prefix;
        char id[JOB_ID_MAX + 1], key[KF_KEY_MAX];

        if (!(b->lat_ms = malloc((b->n ? b->n : 1) * sizeof(double))) ||
            !(b->svc_ms = malloc((b->n ? b->n : 1) * sizeof(double)))) {
                kc_err("bench: out of memory");
                return -1;
        }
        for (size_t lo = 0; lo < b->published; lo += BENCH_PIPE_CHUNK) {
                size_t hi =
                    lo + BENCH_PIPE_CHUNK < b->published ? lo + BENCH_PIPE_CHUNK : b->published;
                for (size_t i = lo; i < hi; i++) {
                        if (b->state[i] != BENCH_JOB_DELIVERED)
                                continue;
                        bench_job_id(b, i, id);
                        kf_key(key, prefix, "result", id);
                        if (redisAppendCommand(b->redis, "HMGET %s done started status error",
                                               key) != REDIS_OK)
                                goto fail;
                }
                for (size_t i = lo; i < hi; i++) {
                        redisReply *r = NULL, **e;
                        if (b->state[i] != BENCH_JOB_DELIVERED)
                                continue;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK || !r ||
                            r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
                                freeReplyObject(r);
                                goto fail;
                        }
                        e = r->element;
                        /* e: done, started, status, error */
                        if (e[0]->type != REDIS_REPLY_STRING || e[2]->type != REDIS_REPLY_STRING) {
                                b->missing++;
                        } else {
                                int64_t done = strtoll(e[0]->str, NULL, 10);
                                int64_t started = e[1]->type == REDIS_REPLY_STRING
                                                      ? strtoll(e[1]->str, NULL, 10)
                                                      : done;
                                if (!strcmp(e[2]->str, "ok")) {
                                        b->ok++;
                                } else {
                                        if (!b->errors)
                                                snprintf(b->first_error, sizeof(b->first_error),
                                                         "%s: %s", id,
                                                         e[3]->type == REDIS_REPLY_STRING
                                                             ? e[3]->str
                                                             : e[2]->str);
                                        b->errors++;
                                }
                                if (done > b->last_done_ms)
                                        b->last_done_ms = done;
                                b->lat_ms[b->n_lat] = (double)(done * 1000 - b->sent_us[i]) / 1e3;
                                b->svc_ms[b->n_lat] = (double)(done - started);
                                b->n_lat++;
                        }
                        freeReplyObject(r);
                }
        }
        return 0;
fail:
        kc_err("redis: reading results: %s",
               b->redis->errstr[0] ? b->redis->errstr : "unexpected reply");
        return -1;
}

/* Stops the probe thread (once every probed result was seen, or after 2 s)
 * and derives the visible latency of the probed jobs.  Returns 0 or -1. */
static int bench_collect_visible(bench_t *b)
{
        size_t every = b->probe_every;

        if (!b->probe)
                return 0;
        b->probe_running = 0;
        if (kc_probe_finish(b->probe, 2000000)) {
                kc_err("bench: the probe thread's Redis connection failed");
                return -1;
        }
        if (!(b->vis_ms = malloc((b->published / every + 1) * sizeof(double)))) {
                kc_err("bench: out of memory");
                return -1;
        }
        for (size_t i = 0; i < b->published; i += every) {
                int64_t seen = kc_probe_seen_us(b->probe, i);
                if (seen && b->state[i] == BENCH_JOB_DELIVERED)
                        b->vis_ms[b->n_vis++] = (double)(seen - b->sent_us[i]) / 1e3;
        }
        return 0;
}

/* Deletes the results and done lists of this run (pipelined UNLINK). */
static int bench_delete_keys(bench_t *b)
{
        const char *prefix = b->conf->kc.prefix;
        char id[JOB_ID_MAX + 1], k1[KF_KEY_MAX], k2[KF_KEY_MAX];

        for (size_t lo = 0; lo < b->published; lo += BENCH_PIPE_CHUNK) {
                size_t hi =
                    lo + BENCH_PIPE_CHUNK < b->published ? lo + BENCH_PIPE_CHUNK : b->published;
                for (size_t i = lo; i < hi; i++) {
                        bench_job_id(b, i, id);
                        kf_key(k1, prefix, "result", id);
                        kf_key(k2, prefix, "done", id);
                        if (redisAppendCommand(b->redis, "UNLINK %s %s", k1, k2) != REDIS_OK)
                                goto fail;
                }
                for (size_t i = lo; i < hi; i++) {
                        redisReply *r = NULL;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK)
                                goto fail;
                        freeReplyObject(r);
                }
        }
        return 0;
fail:
        kc_err("redis: deleting results: %s", b->redis->errstr);
        return -1;
}

/* Throughput counts until every result was there (t_all_us: a pipelined
 * worker writes results after their `done`); latency is `done` minus the
 * produce time, as the protocol defines `done`, and the sampled "visible"
 * latency is until the result could be read. */
static void bench_report(bench_t *b)
{
        const kc_conf_t *c = &b->conf->kc;
        double secs = (double)(b->t_all_us - b->t_start_us) / 1e6;
        double csecs = (double)(b->last_done_ms * 1000 - b->t_start_us) / 1e6;
        double done = (double)(b->ok + b->errors);
        json_t *o = json_object(), *cj;

        kf_stats_sort(b->lat_ms, b->n_lat);
        kf_stats_sort(b->svc_ms, b->n_lat);
        kf_stats_sort(b->vis_ms, b->n_vis);
        if (!(secs > 0) || !b->n_lat)
                secs = 0;
        if (!(csecs > 0) || !b->n_lat)
                csecs = 0;
        json_object_set_new(o, "mode", json_string(b->mode == BENCH_OPEN ? "open" : "drain"));
        json_object_set_new(o, "model", json_string(c->model));
        json_object_set_new(o, "cols", json_integer(b->cols));
        json_object_set_new(o, "rows_per_job", json_integer(c->rows_per_job));
        json_object_set_new(o, "users", json_integer((json_int_t)b->n_users));
        json_object_set_new(o, "partitions", json_integer(b->partitions));
        if (b->mode == BENCH_OPEN) {
                json_object_set_new(o, "rate", json_integer(b->conf->rate));
                json_object_set_new(o, "duration_s", json_integer(b->conf->duration));
                json_object_set_new(o, "max_lag_ms", kc_bench_real((double)b->max_lag_us / 1e3));
        } else {
                json_object_set_new(o, "paused_worker", json_boolean(b->conf->pause_pid != 0));
        }
        json_object_set_new(o, "jobs", json_integer((json_int_t)b->n));
        json_object_set_new(o, "delivered", json_integer((json_int_t)b->delivered));
        json_object_set_new(o, "ok", json_integer((json_int_t)b->ok));
        json_object_set_new(o, "errors", json_integer((json_int_t)b->errors));
        json_object_set_new(o, "missing",
                            json_integer((json_int_t)(b->missing + (b->n - b->delivered))));
        json_object_set_new(o, "publish_s",
                            kc_bench_real((double)(b->t_published_us - b->t_first_us) / 1e6));
        json_object_set_new(o, "elapsed_s", kc_bench_real(secs));
        json_object_set_new(o, "jobs_per_s", kc_bench_real(secs > 0 ? done / secs : 0));
        json_object_set_new(o, "rows_per_s",
                            kc_bench_real(secs > 0 ? done * (double)c->rows_per_job / secs : 0));
        /* until the last `done`, and how much later the last result was there */
        json_object_set_new(o, "done_jobs_per_s", kc_bench_real(csecs > 0 ? done / csecs : 0));
        json_object_set_new(o, "write_lag_ms", kc_bench_real((secs - csecs) * 1e3));
        json_object_set_new(o, "p50_ms",
                            kc_bench_real(kf_stats_percentile(b->lat_ms, b->n_lat, 50)));
        json_object_set_new(o, "p90_ms",
                            kc_bench_real(kf_stats_percentile(b->lat_ms, b->n_lat, 90)));
        json_object_set_new(o, "p99_ms",
                            kc_bench_real(kf_stats_percentile(b->lat_ms, b->n_lat, 99)));
        json_object_set_new(o, "max_ms",
                            kc_bench_real(kf_stats_percentile(b->lat_ms, b->n_lat, 100)));
        json_object_set_new(o, "service_p50_ms",
                            kc_bench_real(kf_stats_percentile(b->svc_ms, b->n_lat, 50)));
        json_object_set_new(o, "service_p99_ms",
                            kc_bench_real(kf_stats_percentile(b->svc_ms, b->n_lat, 99)));
        if (b->probe) {
                json_object_set_new(o, "visible_n", json_integer((json_int_t)b->n_vis));
                json_object_set_new(o, "visible_p50_ms",
                                    kc_bench_real(kf_stats_percentile(b->vis_ms, b->n_vis, 50)));
                json_object_set_new(o, "visible_p99_ms",
                                    kc_bench_real(kf_stats_percentile(b->vis_ms, b->n_vis, 99)));
                json_object_set_new(o, "visible_max_ms",
                                    kc_bench_real(kf_stats_percentile(b->vis_ms, b->n_vis, 100)));
                json_object_set_new(o, "visible_late", json_boolean(kc_probe_overflowed(b->probe)));
        }
        if (b->errors)
                json_object_set_new(o, "first_error", json_string(b->first_error));
        if ((cj = kc_cpu_json(&b->cpu, done)))
                json_object_set_new(o, "cpu", cj);
        kc_print_json(o);
        fflush(stdout);
        json_decref(o);
}

/* Checks the options against the mode; returns 0 or -1 (reported). */
static int bench_check(bench_t *b, const model_t *m)
{
        bench_conf_t *bc = b->conf;
        kc_conf_t *c = &bc->kc;

        if (!strcmp(bc->mode, "drain"))
                b->mode = BENCH_DRAIN;
        else if (!strcmp(bc->mode, "open"))
                b->mode = BENCH_OPEN;
        else if (!strcmp(bc->mode, "compute"))
                b->mode = BENCH_COMPUTE;
        else {
                kc_err("bench: --mode '%s': expected drain, open or compute", bc->mode);
                return -1;
        }
        if (b->mode == BENCH_COMPUTE) {
                if (!m) {
                        kc_err("bench: --mode compute needs --model-file");
                        return -1;
                }
                return 0;
        }
        if (!c->model && m)
                c->model = strdup(m->name);
        b->cols = m ? m->input_dim : (uint32_t)bc->cols;
        if (!c->model || b->cols == 0) {
                kc_err("bench: give --model NAME and --cols N, or --model-file FILE");
                return -1;
        }
        if (!job_name_valid(c->model, strlen(c->model), JOB_MODEL_MAX) ||
            !job_name_valid(c->user, strlen(c->user), 40)) {
                kc_err("bench: --model (1..64) and --user (1..40) must be chars of "
                       "[A-Za-z0-9._:-]");
                return -1;
        }
        if (b->mode == BENCH_OPEN) {
                if (bc->rate < 1 || bc->duration < 1) {
                        kc_err("bench: --mode open needs --rate R and --duration S (both >= 1)");
                        return -1;
                }
                b->n = (size_t)(bc->rate * bc->duration);
        } else {
                b->n = (size_t)bc->jobs;
        }
        if (bc->pause_pid && b->mode != BENCH_DRAIN) {
                kc_err("bench: --pause-pid is for --mode drain");
                return -1;
        }
        return 0;
}

/* drain and open: publish, wait for the results, report. */
static int bench_run_queue(bench_t *b)
{
        /* clang-format off */
        static const char *const pdefaults[] = {
            "enable.idempotence", "true", /* as kinfer submit */
            "acks", "all",
            "linger.ms", "5",
            "message.timeout.ms", "60000",
            NULL};
        /* clang-format on */
        kc_conf_t *c = &b->conf->kc;
        rd_kafka_conf_t *kconf;
        char err[512];
        int64_t base;
        int rc = KC_EXIT_FAIL;

        b->redis = kc_redis(c); /* exits 3 if Redis is unreachable */
        if (!(kconf = kf_kafka_conf_new(c->brokers, pdefaults, &c->props, err, sizeof(err)))) {
                kc_err("%s", err);
                return KC_EXIT_USAGE;
        }
        rd_kafka_conf_set_dr_msg_cb(kconf, bench_dr_cb);
        rd_kafka_conf_set_opaque(kconf, b);
        if (!(b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, err, sizeof(err)))) {
                rd_kafka_conf_destroy(kconf);
                kc_err("%s", err);
                return KC_EXIT_CONN;
        }
        if (bench_pick_users(b))
                return KC_EXIT_CONN;
        if (!(b->sent_us = calloc(b->n, sizeof(*b->sent_us))) || !(b->state = calloc(b->n, 1)) ||
            !(b->input = malloc((size_t)c->rows_per_job * b->cols * sizeof(float)))) {
                kc_err("bench: out of memory");
                return KC_EXIT_FAIL;
        }
        if ((base = bench_usage_sum(b)) < 0)
                return KC_EXIT_CONN;
        /* The CPU window: from the first job (a paused worker: from its
         * resumption) until every result is there. */
        if (!b->conf->pause_pid)
                kc_cpu_sample(&b->cpu, 0);

        if (b->mode == BENCH_DRAIN) {
                if (b->conf->pause_pid) {
                        if (kill((pid_t)b->conf->pause_pid, SIGSTOP)) {
                                kc_err("bench: cannot stop pid %lld: %s",
                                       (long long)b->conf->pause_pid, strerror(errno));
                                return KC_EXIT_USAGE;
                        }
                        b->paused = 1;
                }
                if (bench_publish_drain(b))
                        goto out;
                if (b->paused) {
                        kc_cpu_sample(&b->cpu, 0);
                        b->t_start_us = bench_now_us();
                        kill((pid_t)b->conf->pause_pid, SIGCONT);
                        b->paused = 0;
                } else {
                        b->t_start_us = b->t_first_us;
                }
        } else {
                if (b->conf->probes > 0) {
                        b->probe_every = b->n / (size_t)b->conf->probes;
                        if (b->probe_every < 1)
                                b->probe_every = 1;
                        if (!(b->probe = kc_probe_start(c, b->n, b->n / b->probe_every + 1))) {
                                kc_err("bench: cannot start the probe thread");
                                goto out;
                        }
                        b->probe_running = 1;
                }
                if (bench_publish_open(b))
                        goto out;
        }

        if (b->failed)
                kc_err("bench: %zu of %zu jobs were not delivered", b->failed, b->published);
        if (bench_wait_done(b, base))
                goto out;
        kc_cpu_sample(&b->cpu, 1);
        if (bench_collect(b) || bench_collect_visible(b))
                goto out;
        bench_report(b);
        if (!b->conf->keep && bench_delete_keys(b))
                goto out;
        if (b->errors)
                kc_err("bench: %zu error results (first: %s)", b->errors, b->first_error);
        if (b->missing)
                kc_err("bench: %zu delivered jobs have no result", b->missing);
        rc = b->errors || b->missing || b->failed || b->delivered != b->n ? KC_EXIT_FAIL
                                                                          : KC_EXIT_OK;
out:
        if (b->paused) /* never leave the worker stopped */
                kill((pid_t)b->conf->pause_pid, SIGCONT);
        b->paused = 0;
        if (b->probe_running)
                kc_probe_finish(b->probe, 0);
        b->probe_running = 0;
        if (bench_stop)
                kc_err("bench: interrupted");
        return rc;
}

int kc_cmd_bench(int argc, char **argv)
{
        bench_conf_t bc = {0};
        bench_t b = {0};
        model_t *m = NULL;
        struct sigaction sa;
        char err[512];
        int first, rc = KC_EXIT_USAGE;

        first = kc_parse(bench_opts, &bc.kc, 1, argc, argv,
                         "bench [--mode drain|open|compute] (--model-file FILE | --model NAME "
                         "--cols N) [OPTION]...\n\n"
                         "Load generator.  drain: publishes --jobs jobs as fast as possible, "
                         "waits until\nall have results, reports jobs/s and latency (result "
                         "`done` minus produce\ntime).  open: publishes --rate jobs/s for "
                         "--duration s on a fixed schedule,\nwhatever completes.  compute: "
                         "times the same forward passes (--model-file) in\nbatches of "
                         "--batch-rows, with no queue or Redis.  Prints one JSON line;\nexit 1 "
                         "if any job failed, had an error result or no result.");
        b.conf = &bc;
        b.rng = (uint64_t)bc.kc.seed;
        b.bar = isatty(STDERR_FILENO) && !bc.kc.quiet;
        if (first < argc) {
                kc_err("bench: unexpected argument '%s'", argv[first]);
                goto out;
        }
        if (bc.model_file && !(m = model_load_file(bc.model_file, err, sizeof(err)))) {
                kc_err("bench: %s", err);
                rc = KC_EXIT_FAIL;
                goto out;
        }
        if (bench_check(&b, m))
                goto out;
        if (b.mode != BENCH_COMPUTE && kc_cpu_init(&b.cpu, bc.cpu_pids, err, sizeof(err))) {
                kc_err("bench: --cpu-pids: %s", err);
                goto out;
        }
        kf_random_hex(b.run, 8);

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = bench_on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        if (b.mode == BENCH_COMPUTE) {
                kc_compute_t cc = {
                    .jobs = (uint64_t)bc.jobs,
                    .rows_per_job = (uint32_t)bc.kc.rows_per_job,
                    .batch_rows = (uint32_t)bc.batch_rows,
                    .threads = (int)bc.threads,
                    .blas_threads = (int)bc.blas_threads,
                    .seed = (uint64_t)bc.kc.seed,
                    .cpu_pids = bc.cpu_pids,
                };
                rc = kc_bench_compute(m, &cc, &bench_stop);
        } else {
                rc = bench_run_queue(&b);
        }
out:
        if (b.rk) {
                rd_kafka_flush(b.rk, 5000);
                rd_kafka_destroy(b.rk);
        }
        if (b.redis)
                redisFree(b.redis);
        free(b.users);
        free(b.sent_us);
        free(b.state);
        free(b.input);
        free(b.lat_ms);
        free(b.svc_ms);
        free(b.vis_ms);
        kc_probe_free(b.probe);
        model_unref(m);
        kf_config_free(bench_opts, &bc, &bc.kc.props);
        return rc;
}
