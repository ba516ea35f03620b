/* cmd_bench.c - `kinfer bench`: a load generator that drains a backlog or runs
 * an open loop and reports throughput and end-to-end latency; its compute
 * mode (bench_compute.c) times the same forward passes without queue or Redis.
 *
 * It speaks protocol v2 (docs/protocol.md) like any client: every job names
 * the run's inbox ("bench-RUN", one list per user), so the Redis cost it
 * measures includes the worker's inbox push (one per user per batch); results
 * are read with GET and kf_result_decode(); completion is learnt from the
 * users' usage counters. */
#include <errno.h>
#include <openssl/crypto.h>
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
#include "kf_result.h"
#include "kf_stats.h"
#include "kf_util.h"
#include "kinfer.h"
#include "model.h"
#include "signer.h"

/* Redis commands sent per pipelined round trip (GET, MEMORY USAGE, UNLINK). */
#define BENCH_PIPE_CHUNK 1000
/* Result keys whose MEMORY USAGE is read, evenly spread over the run. */
#define BENCH_MEM_SAMPLES 1000
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
        int64_t horizon;      /* the workers' --charge-horizon: where charge records are */
        int keep;             /* leave the run's keys in Redis */
        char *sign;           /* drain, open: hmac | ed25519 | NULL (unsigned) */
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
     "open: also time when the results of N jobs, evenly spread, become visible (popped from "
     "the run's inboxes with BLMPOP, Redis >= 7.0; 0 = none)"},
    {"charge-horizon", 0, "KINFER_CHARGE_HORIZON", KF_OPT_INT, O(horizon), 60, 2592000, "3600", "S",
     "the workers' --charge-horizon: where the run's charge records are (memory report, "
     "deletion)"},
    {"keep", 0, NULL, KF_OPT_BOOL, O(keep), 0, 0, "0", NULL,
     "keep the run's results, inboxes and charge records (default: deleted once read)"},
    {"batch-rows", 0, NULL, KF_OPT_INT, O(batch_rows), 1, 1 << 20, "256", "N",
     "compute: rows per forward pass (match the worker's --batch-max-rows)"},
    {"threads", 0, NULL, KF_OPT_INT, O(threads), 1, 256, "1", "N",
     "compute: threads computing in parallel (match the worker's --compute-threads)"},
    {"blas-threads", 0, NULL, KF_OPT_INT, O(blas_threads), 1, 256, "1", "N",
     "compute: OpenBLAS threads per call (match the worker's --blas-threads)"},
    {"seed", 's', NULL, KF_OPT_INT, OK(seed), 0, INT64_MAX, "1", "N", "seed of the random inputs"},
    {"quiet", 'q', NULL, KF_OPT_BOOL, OK(quiet), 0, 0, "0", NULL, "no progress bar"},
    {"sign", 0, NULL, KF_OPT_STR, O(sign), 0, 0, NULL, "ALG",
     "drain, open: sign every job (hmac or ed25519) with a key made for each user at the "
     "start (for workers with --require-signatures)"},
    {NULL},
};

typedef enum { BENCH_DRAIN, BENCH_OPEN, BENCH_COMPUTE } bench_mode_t;

/* Per job: nothing yet, handed to librdkafka, acknowledged, not delivered. */
enum { BENCH_JOB_NONE = 0, BENCH_JOB_SENT, BENCH_JOB_DELIVERED, BENCH_JOB_FAILED };

typedef struct bench_s {
        bench_conf_t *conf;
        bench_mode_t mode;
        uint32_t cols;
        char run[17];                 /* random part of the job ids */
        char id_base[JOB_ID_MAX + 1]; /* job idx's id: id_base then idx + 1 */
        size_t id_base_len;
        char inbox[JOB_INBOX_MAX + 1]; /* every job's inbox: "bench-RUN" */
        uint64_t rng;
        float *input; /* rows_per_job x cols, refilled per job */
        /* users: job i belongs to users[i % n_users] */
        char (*users)[JOB_USER_MAX + 1];
        size_t n_users;
        kc_signer_t *signers; /* --sign: users[i]'s key, else NULL */
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
        size_t probe_lead;  /* jobs due within KC_PROBE_LEAD_US of one another */
        size_t probe_next;  /* the next probed job to announce */
        int probe_running;  /* its thread is still watching */
        double *vis_ms;     /* per probed job seen: visible - produce time */
        size_t n_vis;
        char first_error[512];
        kc_cpu_t cpu; /* while the jobs ran */
        /* Redis memory (bench_memory): used_memory before and once every
         * result existed; what the run's inboxes and charge records hold */
        int64_t time0_s;    /* Redis TIME at the start: the first charge period */
        int64_t mem0, mem1; /* -1: unknown */
        double inbox_bytes, record_bytes, record_fields;
        double key_bytes; /* MEMORY USAGE of sampled result keys, their mean */
        size_t key_samples;
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

/* Sets the run's names: job ids "USER-RUN-N" (N = idx + 1; USER the --user
 * base, 1..40 chars) and the inbox "bench-RUN" (22 chars). */
static void bench_names(bench_t *b)
{
        int n = snprintf(b->id_base, sizeof(b->id_base), "%.64s-%s-", b->conf->kc.user, b->run);
        b->id_base_len = n > 0 ? (size_t)n : 0;
        snprintf(b->inbox, sizeof(b->inbox), "bench-%s", b->run);
}

/* Writes job idx's id into id (JOB_ID_MAX + 1 bytes). */
static void bench_job_id(const bench_t *b, size_t idx, char *id)
{
        snprintf(id, JOB_ID_MAX + 1, "%.100s%zu", b->id_base, idx + 1); /* id_base: <= 82 */
}

/* The inverse of bench_job_id, for ids popped from the inboxes (a
 * kc_probe_idx_fn: it reads only id_base, fixed before the probe starts). */
static int bench_job_idx(const char *id, size_t len, const void *opaque, size_t *idx)
{
        const bench_t *b = opaque;
        size_t v = 0;

        if (len <= b->id_base_len || len - b->id_base_len > 19 ||
            memcmp(id, b->id_base, b->id_base_len))
                return -1;
        for (size_t i = b->id_base_len; i < len; i++) {
                if (id[i] < '0' || id[i] > '9')
                        return -1;
                v = v * 10 + (size_t)(id[i] - '0');
        }
        if (!v)
                return -1;
        *idx = v - 1;
        return 0;
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

/* --sign: a new key for each user, stored like `kinfer key create` does
 * (the users' older keys stay; each run signs with its own).  Returns 0 or
 * -1 (said why). */
static int bench_keys(bench_t *b)
{
        kf_sign_alg_t alg = !strcmp(b->conf->sign, "hmac")      ? KF_SIGN_HMAC
                            : !strcmp(b->conf->sign, "ed25519") ? KF_SIGN_ED25519
                                                                : KF_SIGN_NONE;
        unsigned char pub[KF_SIGN_KEY_LEN];
        char err[256];
        if (alg == KF_SIGN_NONE) {
                kc_err("bench: --sign '%s': expected hmac or ed25519", b->conf->sign);
                return -1;
        }
        if (!(b->signers = calloc(b->n_users, sizeof(*b->signers)))) {
                kc_err("bench: out of memory");
                return -1;
        }
        for (size_t u = 0; u < b->n_users; u++)
                if (kc_key_new(alg, b->users[u], &b->signers[u], pub, err, sizeof(err)) ||
                    kc_key_store(b->redis, b->conf->kc.prefix, &b->signers[u], pub, err,
                                 sizeof(err))) {
                        kc_err("bench: a key for user %s: %s", b->users[u], err);
                        return -1;
                }
        return 0;
}

/* Sum of the users' jobs + errors counters (one pipelined round trip).
 * Returns the sum, or -1 on a Redis error (reported). */
static int64_t bench_usage_sum(bench_t *b)
{
        char key[KF_KEY_MAX];
        int64_t sum = 0;
        int failed = 0;

        for (size_t u = 0; u < b->n_users; u++) /* before anything is queued */
                if (kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_USAGE, NULL) < 0) {
                        kc_err("bench: no usage key for user %s", b->users[u]);
                        return -1;
                }
        for (size_t u = 0; u < b->n_users; u++) {
                kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_USAGE, NULL);
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
        rd_kafka_headers_t *hdrs = NULL;

        memset(&job, 0, sizeof(job));
        bench_job_id(b, idx, job.id);
        kf_strlcpy(job.user, user, sizeof(job.user));
        kf_strlcpy(job.model, c->model, sizeof(job.model));
        job.rows = (uint32_t)c->rows_per_job;
        job.cols = b->cols;
        job.input = b->input; /* borrowed */
        job.ttl_s = (uint32_t)c->ttl;
        kf_strlcpy(job.inbox, b->inbox, sizeof(job.inbox));
        kc_bench_random(&b->rng, b->input, (size_t)job.rows * job.cols);
        if (job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err))) {
                kc_err("bench: job %zu: %s", idx + 1, err);
                return -1;
        }
        if (b->signers && !(hdrs = kc_signer_headers(&b->signers[idx % b->n_users], buf, len, err,
                                                     sizeof(err)))) {
                kc_err("bench: job %zu: cannot sign: %s", idx + 1, err);
                free(buf);
                return -1;
        }
        b->sent_us[idx] = sent_us;
        b->state[idx] = BENCH_JOB_SENT;
        for (;;) {
                kerr = rd_kafka_producev(
                    b->rk, RD_KAFKA_V_TOPIC(c->topic), RD_KAFKA_V_KEY(user, strlen(user)),
                    RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                    RD_KAFKA_V_HEADERS(hdrs), /* NULL: none; taken on success */
                    RD_KAFKA_V_OPAQUE((void *)(uintptr_t)idx), RD_KAFKA_V_END);
                if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL || bench_stop)
                        break;
                rd_kafka_poll(b->rk, 10); /* let deliveries drain the queue */
        }
        if (kerr) {
                kc_err("bench: job %zu: cannot produce: %s", idx + 1, rd_kafka_err2str(kerr));
                if (hdrs)
                        rd_kafka_headers_destroy(hdrs);
                b->state[idx] = BENCH_JOB_NONE;
                free(buf);
                return -1;
        }
        if (!b->t_first_us)
                b->t_first_us = sent_us;
        b->published++;
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
        b->t_published_us = kf_now_us();
}

/* drain: every job as fast as librdkafka takes them. */
static int bench_publish_drain(bench_t *b)
{
        for (size_t i = 0; i < b->n && !bench_stop; i++) {
                if (bench_produce(b, i, kf_now_us()))
                        return -1;
                rd_kafka_poll(b->rk, 0);
                bench_bar(b, "publish", i + 1, b->n, 0, 0);
        }
        bench_bar(b, "publish", b->published, b->n, 0, 1);
        bench_flush(b);
        return bench_stop ? -1 : 0;
}

/* open: announces to the probe the sampled jobs due up to KC_PROBE_LEAD_US
 * after job i, which is about to be published (job j belongs to users[j %
 * n_users], as in bench_produce). */
static void bench_probe_ahead(bench_t *b, size_t i)
{
        while (b->probe && b->probe_next < b->n && b->probe_next <= i + b->probe_lead) {
                kc_probe_add(b->probe, b->probe_next, b->probe_next % b->n_users);
                b->probe_next += b->probe_every;
        }
}

/* open: job i is due at start + i/rate, whatever has completed.  Its
 * latency is measured from when it was due, so a publisher that falls
 * behind cannot hide queueing (max_lag_us reports by how much it did). */
static int bench_publish_open(bench_t *b)
{
        double step_us = 1e6 / (double)b->conf->rate;
        int64_t mono0, wall0;
        size_t i = 0;

        bench_probe_ahead(b, 0); /* the first jobs, before the clock starts */
        mono0 = kf_mono_us() + 1000;
        wall0 = kf_now_us() + 1000;

        while (i < b->n && !bench_stop) {
                int64_t now = kf_mono_us(), due;
                while (i < b->n && (due = mono0 + (int64_t)((double)i * step_us)) <= now) {
                        if (now - due > b->max_lag_us)
                                b->max_lag_us = now - due;
                        bench_probe_ahead(b, i);
                        if (bench_produce(b, i, wall0 + (due - mono0)))
                                return -1;
                        i++;
                }
                rd_kafka_poll(b->rk, 0);
                bench_bar(b, "open loop", i, b->n, 0, 0);
                if (i < b->n) {
                        int64_t wait = mono0 + (int64_t)((double)i * step_us) - kf_mono_us();
                        if (wait > 0)
                                kf_sleep_us(wait < 1000 ? wait : 1000, &bench_stop);
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
                int64_t sum = bench_usage_sum(b), done, now = kf_now_us();
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
                kf_sleep_us(BENCH_POLL_US, &bench_stop);
        }
        if (b->bar)
                fputs("\r\033[K", stderr);
        return 0;
}

/* Builds job idx's result key into key (KF_KEY_MAX bytes).  Returns 0, or
 * -1 (reported). */
static int bench_result_key(const bench_t *b, size_t idx, char *key)
{
        const char *user = b->users[idx % b->n_users];
        char id[JOB_ID_MAX + 1];

        bench_job_id(b, idx, id);
        if (kf_user_key(key, b->conf->kc.prefix, user, KF_K_RESULT, id) < 0) {
                kc_err("bench: cannot build the result key of user %s, job %s", user, id);
                return -1;
        }
        return 0;
}

/* Notes an error result (or one that cannot be read) of job id. */
static void bench_error(bench_t *b, const char *id, const char *what, const char *why)
{
        if (!b->errors)
                snprintf(b->first_error, sizeof(b->first_error), "%.128s: %.40s: %.300s", id, what,
                         why);
        b->errors++;
}

/* Counts one result value of job idx: ok or error, and its latencies. */
static void bench_result(bench_t *b, size_t idx, const redisReply *r)
{
        char id[JOB_ID_MAX + 1], err[256];
        kf_result_t res;

        bench_job_id(b, idx, id);
        if (kf_result_decode(r->str, r->len, &res, err, sizeof(err))) {
                bench_error(b, id, "unreadable result", err);
        } else if (strcmp(res.id, id) || strcmp(res.user, b->users[idx % b->n_users])) {
                snprintf(err, sizeof(err), "it names job %.128s of user %.64s", res.id, res.user);
                bench_error(b, id, "another job's result", err);
        } else {
                int64_t done = (int64_t)res.done;
                int64_t started = res.started ? (int64_t)res.started : done;
                if (res.ok && res.nonfinite) { /* computed and charged, but unusable */
                        snprintf(err, sizeof(err), "%llu output values are NaN or +-Inf",
                                 (unsigned long long)res.nonfinite);
                        bench_error(b, id, "nonfinite", err);
                } else if (res.ok) {
                        b->ok++;
                } else {
                        bench_error(b, id, res.error, res.message);
                }
                if (done > b->last_done_ms)
                        b->last_done_ms = done;
                b->lat_ms[b->n_lat] = (double)(done * 1000 - b->sent_us[idx]) / 1e3;
                b->svc_ms[b->n_lat] = (double)(done - started);
                b->n_lat++;
        }
        kf_result_clear(&res);
}

/* Reads the result of every delivered job (GET, pipelined in chunks), and
 * derives latencies (`done`, `started`), errors and missing results. */
static int bench_collect(bench_t *b)
{
        char key[KF_KEY_MAX];

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
                        if (bench_result_key(b, i, key))
                                return -1;
                        if (redisAppendCommand(b->redis, "GET %s", key) != REDIS_OK)
                                goto fail;
                }
                for (size_t i = lo; i < hi; i++) {
                        redisReply *r = NULL;
                        if (b->state[i] != BENCH_JOB_DELIVERED)
                                continue;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK || !r ||
                            (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL)) {
                                freeReplyObject(r);
                                goto fail;
                        }
                        if (r->type == REDIS_REPLY_NIL)
                                b->missing++;
                        else
                                bench_result(b, i, r);
                        freeReplyObject(r);
                }
        }
        return 0;
fail:
        kc_err("redis: reading results: %s",
               b->redis->errstr[0] ? b->redis->errstr : "unexpected reply");
        return -1;
}

/* Stops the probe thread (once every delivered probed job was seen, or after
 * 2 s) and derives the visible latency of the probed jobs.  Returns 0 or -1. */
static int bench_collect_visible(bench_t *b)
{
        size_t every = b->probe_every, expect = 0;

        if (!b->probe)
                return 0;
        for (size_t i = 0; i < b->published; i += every)
                expect += b->state[i] == BENCH_JOB_DELIVERED;
        b->probe_running = 0;
        if (kc_probe_finish(b->probe, expect, 2000000)) {
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

/* Redis' clock (TIME), Unix s: it places the charge records.  -1 on error. */
static int64_t bench_redis_time(bench_t *b)
{
        redisReply *r = redisCommand(b->redis, "TIME");
        int64_t t = -1;

        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING)
                t = strtoll(r->element[0]->str, NULL, 10);
        freeReplyObject(r);
        return t;
}

/* Redis' memory without its clients: used_memory of INFO memory (what its
 * allocator has handed out) minus the tot-mem of every client in CLIENT LIST
 * (each connection's structure, query and reply buffers: the worker's grow
 * by tens of KB while it writes, more than 100 bytes per result of a small
 * run).  Bytes, or -1 on error. */
static int64_t bench_used_memory(bench_t *b)
{
        redisReply *r = NULL, *l = NULL;
        const char *p;
        int64_t v = -1;

        if (redisAppendCommand(b->redis, "INFO memory") != REDIS_OK ||
            redisAppendCommand(b->redis, "CLIENT LIST") != REDIS_OK ||
            redisGetReply(b->redis, (void **)&r) != REDIS_OK ||
            redisGetReply(b->redis, (void **)&l) != REDIS_OK)
                goto out;
        if (r && r->type == REDIS_REPLY_STRING && (p = strstr(r->str, "\nused_memory:")) && l &&
            l->type == REDIS_REPLY_STRING) {
                v = strtoll(p + 13, NULL, 10);
                for (p = l->str; (p = strstr(p, " tot-mem=")); p += 9)
                        v -= strtoll(p + 9, NULL, 10);
        }
out:
        freeReplyObject(r);
        freeReplyObject(l);
        return v;
}

/* bench_used_memory once Redis has settled: read every 100 ms until two
 * reads in a row change it by at most 1 KiB (at most 3 s; then the last
 * read).  After a run has deleted its keys, Redis' cron shrinks the keyspace
 * tables within a few hundred ms (half a MiB after 20,000 keys): without
 * waiting, the next run would count that shrink against its own results;
 * and a table that has just grown is rehashed, with both arrays held
 * meanwhile.  -1 on error. */
static int64_t bench_used_memory_settled(bench_t *b)
{
        int64_t m = bench_used_memory(b);

        for (int i = 0, calm = 0; i < 30 && m >= 0 && calm < 2; i++) {
                int64_t next;
                kf_sleep_us(100000, &bench_stop);
                if ((next = bench_used_memory(b)) < 0)
                        return -1;
                calm = next - m <= 1024 && m - next <= 1024 ? calm + 1 : 0;
                m = next;
        }
        return m;
}

/* How many charge periods the run spans: from the one that held time0_s to
 * the one that holds t1 (the worker's step files a job's charge record under
 * Redis' TIME, in the period of --charge-horizon seconds it falls in). */
static size_t bench_periods(const bench_t *b, int64_t t1)
{
        int64_t h = b->conf->horizon;
        if (b->time0_s < 0 || t1 < b->time0_s)
                return 1;
        return (size_t)((t1 - t1 % h - (b->time0_s - b->time0_s % h)) / h + 1);
}

/* User u's charge record of the run's period i (0: the one that held
 * time0_s) into key; 0, or -1 if the key cannot be built. */
static int bench_record_key(const bench_t *b, size_t u, int64_t i, char *key)
{
        int64_t h = b->conf->horizon;
        char start[24];

        snprintf(start, sizeof(start), "%lld", (long long)(b->time0_s - b->time0_s % h + i * h));
        return kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_CHARGED, start) < 0 ? -1 : 0;
}

/* Sends "MEMORY USAGE key SAMPLES 0" (what = NULL) or "HLEN key" (what =
 * "HLEN") for n keys made by key(), pipelined in chunks, skipping the ones
 * key() declines; adds the positive integer replies (a missing key: nil or 0)
 * to *sum and counts them in *found.  Returns 0, or -1 (reported). */
typedef int(bench_key_fn)(const bench_t *b, size_t i, char *key);

static int bench_sum(bench_t *b, const char *what, size_t n, bench_key_fn *key, double *sum,
                     size_t *found)
{
        char k[KF_KEY_MAX];
        const char *mu[5] = {"MEMORY", "USAGE", k, "SAMPLES", "0"}, *hlen[2] = {"HLEN", k};
        size_t mul[5] = {6, 5, 0, 7, 1}, hlenl[2] = {4, 0};
        const char **argv = what ? hlen : mu;
        size_t *lens = what ? hlenl : mul;
        int argc = what ? 2 : 5;

        for (size_t lo = 0; lo < n; lo += BENCH_PIPE_CHUNK) {
                size_t hi = lo + BENCH_PIPE_CHUNK < n ? lo + BENCH_PIPE_CHUNK : n, sent = 0;
                int failed = 0;
                for (size_t i = lo; i < hi && !failed; i++) {
                        if (key(b, i, k))
                                continue;
                        lens[what ? 1 : 2] = strlen(k);
                        failed = redisAppendCommandArgv(b->redis, argc, argv, lens) != REDIS_OK;
                        sent += !failed;
                }
                for (size_t i = 0; i < sent && !failed; i++) {
                        redisReply *r = NULL;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK || !r ||
                            (r->type != REDIS_REPLY_INTEGER && r->type != REDIS_REPLY_NIL))
                                failed = 1;
                        else if (r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
                                *sum += (double)r->integer;
                                ++*found;
                        }
                        freeReplyObject(r);
                }
                if (failed) {
                        kc_err("redis: %s: %s", what ? what : "MEMORY USAGE",
                               b->redis->errstr[0] ? b->redis->errstr : "unexpected reply");
                        return -1;
                }
        }
        return 0;
}

/* Keys for bench_sum: the users' inboxes; the users' charge records of the
 * run's periods (i = period * n_users + user); sampled result keys. */
static int bench_inbox_key(const bench_t *b, size_t u, char *key)
{
        return kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_INBOX, b->inbox) < 0 ? -1 : 0;
}

static int bench_record_key_i(const bench_t *b, size_t i, char *key)
{
        return bench_record_key(b, i % b->n_users, (int64_t)(i / b->n_users), key);
}

static size_t bench_samples(const bench_t *b)
{
        return b->published < BENCH_MEM_SAMPLES ? b->published : BENCH_MEM_SAMPLES;
}

static int bench_sample_key(const bench_t *b, size_t i, char *key)
{
        size_t idx = i * b->published / bench_samples(b);
        return b->state[idx] == BENCH_JOB_DELIVERED ? bench_result_key(b, idx, key) : -1;
}

/* Redis memory, once every result of the run exists (and before any is read
 * or deleted).  What bench_report makes of it:
 *
 * redis_bytes_per_result = (M now - M before publishing - MEMORY USAGE of the
 *   run's inboxes - charge-record bytes of the run's results) / results,
 *   where M is used_memory minus the clients' buffers, each read once Redis
 *   has settled (bench_used_memory_settled).
 *   It counts what a result costs Redis: the key name, the value (string
 *   object and msgpack bytes), its entries in the keyspace and in the expires
 *   dict, its share of both dicts' bucket arrays, and the allocator's
 *   rounding; plus, spread over the results, whatever else grew meanwhile
 *   (the usage counters: a few hundred bytes).  The bucket arrays double at
 *   powers of two: 16 to 32 bytes per key depending on where the key count
 *   falls, counted when they grow during the run (they are shrunk again once
 *   the run's keys are deleted).  So it is good to a few bytes for a drain of
 *   10^5 results, to a few % for 10^3.
 * redis_bytes_per_result_key = the mean MEMORY USAGE (SAMPLES 0) of up to
 *   BENCH_MEM_SAMPLES result keys: key name, value and keyspace entry, but
 *   not the expires entry nor the bucket arrays: a floor that does not vary.
 * redis_bytes_per_charge_record = MEMORY USAGE (SAMPLES 0) of the users'
 *   charge-record hashes of the run's periods over their HLEN: one field (id,
 *   status) with its share of the hash's own overhead.  It depends on how
 *   many ids a user has in one period: up to hash-max-listpack-entries (512
 *   built in, 128 in the sample redis.conf) the hash is a compact listpack,
 *   above it a hash table.  The records are looked for at the periods of
 *   --charge-horizon: when that is not the workers', none is found and both
 *   figures are unknown (null).
 *
 * Returns 0, or -1 on a Redis error (reported). */
static int bench_memory(bench_t *b)
{
        int64_t t1 = bench_redis_time(b);
        size_t periods = bench_periods(b, t1), n_inboxes = 0, n_records = 0, n_counted = 0;

        b->mem1 = bench_used_memory_settled(b);
        if (b->mem0 < 0 || b->mem1 < 0 || b->time0_s < 0 || t1 < b->time0_s) {
                kc_err("redis: cannot read TIME or INFO memory");
                return -1;
        }
        if (bench_sum(b, NULL, b->n_users, bench_inbox_key, &b->inbox_bytes, &n_inboxes) ||
            bench_sum(b, NULL, periods * b->n_users, bench_record_key_i, &b->record_bytes,
                      &n_records) ||
            bench_sum(b, "HLEN", periods * b->n_users, bench_record_key_i, &b->record_fields,
                      &n_counted) ||
            bench_sum(b, NULL, bench_samples(b), bench_sample_key, &b->key_bytes, &b->key_samples))
                return -1;
        if (b->key_samples)
                b->key_bytes /= (double)b->key_samples;
        if (!n_counted && b->delivered)
                kc_err("bench: no charge records of this run at --charge-horizon %lld (is it the "
                       "workers'?): memory per result and per record unknown",
                       (long long)b->conf->horizon);
        return 0;
}

/* Deletes the run's keys (pipelined UNLINK): the results, the users'
 * inboxes and their charge records of the run's periods.  The records hold
 * only bench users' ids, and a run's ids are never reused, so deleting them
 * loses no protection; it keeps a long bench from piling up records (about
 * 60-100 bytes per job for up to two horizons) and starts every run from the
 * same state.  A concurrent bench with the same --user base loses its records
 * too, which only matters if its jobs are redelivered. */
static int bench_delete_keys(bench_t *b)
{
        size_t n_records = bench_periods(b, bench_redis_time(b)) * b->n_users;
        size_t n_keys = b->published + b->n_users + n_records;
        char key[KF_KEY_MAX];

        for (size_t lo = 0; lo < n_keys; lo += BENCH_PIPE_CHUNK) {
                size_t hi = lo + BENCH_PIPE_CHUNK < n_keys ? lo + BENCH_PIPE_CHUNK : n_keys;
                size_t sent = 0;
                for (size_t i = lo; i < hi; i++) {
                        int rc;
                        if (i < b->published)
                                rc = bench_result_key(b, i, key);
                        else if (i < b->published + b->n_users)
                                rc = bench_inbox_key(b, i - b->published, key);
                        else
                                rc = bench_record_key_i(b, i - b->published - b->n_users, key);
                        if (rc)
                                continue;
                        if (redisAppendCommand(b->redis, "UNLINK %s", key) != REDIS_OK)
                                goto fail;
                        sent++;
                }
                for (size_t i = 0; i < sent; i++) {
                        redisReply *r = NULL;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK)
                                goto fail;
                        freeReplyObject(r);
                }
        }
        return 0;
fail:
        kc_err("redis: deleting the run's keys: %s", b->redis->errstr);
        return -1;
}

/* o[key] = the p-th percentile of the n sorted values v, for the report. */
static void bench_set_pct(json_t *o, const char *key, const double *v, size_t n, double p)
{
        json_object_set_new(o, key, kc_bench_real(kf_stats_percentile(v, n, p)));
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
        double rec = b->record_fields > 0 ? b->record_bytes / b->record_fields : 0;
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
        bench_set_pct(o, "p50_ms", b->lat_ms, b->n_lat, 50);
        bench_set_pct(o, "p90_ms", b->lat_ms, b->n_lat, 90);
        bench_set_pct(o, "p99_ms", b->lat_ms, b->n_lat, 99);
        bench_set_pct(o, "max_ms", b->lat_ms, b->n_lat, 100);
        bench_set_pct(o, "service_p50_ms", b->svc_ms, b->n_lat, 50);
        bench_set_pct(o, "service_p99_ms", b->svc_ms, b->n_lat, 99);
        if (b->probe) {
                json_object_set_new(o, "visible_n", json_integer((json_int_t)b->n_vis));
                bench_set_pct(o, "visible_p50_ms", b->vis_ms, b->n_vis, 50);
                bench_set_pct(o, "visible_p99_ms", b->vis_ms, b->n_vis, 99);
                bench_set_pct(o, "visible_max_ms", b->vis_ms, b->n_vis, 100);
                json_object_set_new(o, "visible_late", json_boolean(kc_probe_overflowed(b->probe)));
        }
        /* Redis memory per stored result and charge record: see bench_memory */
        json_object_set_new(
            o, "redis_bytes_per_result",
            rec > 0 && done > 0 && b->mem1 >= 0
                ? kc_bench_real(((double)(b->mem1 - b->mem0) - b->inbox_bytes - rec * done) / done)
                : json_null());
        json_object_set_new(o, "redis_bytes_per_result_key",
                            b->key_samples ? kc_bench_real(b->key_bytes) : json_null());
        json_object_set_new(o, "redis_bytes_per_charge_record",
                            rec > 0 ? kc_bench_real(rec) : json_null());
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
        if (b->conf->sign && bench_keys(b))
                return KC_EXIT_CONN;
        if (!(b->sent_us = calloc(b->n, sizeof(*b->sent_us))) || !(b->state = calloc(b->n, 1)) ||
            !(b->input = malloc((size_t)c->rows_per_job * b->cols * sizeof(float)))) {
                kc_err("bench: out of memory");
                return KC_EXIT_FAIL;
        }
        if ((base = bench_usage_sum(b)) < 0)
                return KC_EXIT_CONN;
        b->mem1 = -1;
        if ((b->time0_s = bench_redis_time(b)) < 0 ||
            (b->mem0 = bench_used_memory_settled(b)) < 0) {
                kc_err("redis: cannot read TIME or INFO memory");
                return KC_EXIT_CONN;
        }
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
                        b->t_start_us = kf_now_us();
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
                        if (!(b->probe = kc_probe_start(c, b->users, b->n_users, b->inbox, b->n,
                                                        b->probe_every, bench_job_idx, b))) {
                                kc_err("bench: cannot start the probe thread");
                                goto out;
                        }
                        b->probe_running = 1;
                        b->probe_lead =
                            (size_t)(((double)b->conf->rate * KC_PROBE_LEAD_US + 999999) / 1e6);
                }
                if (bench_publish_open(b))
                        goto out;
        }

        if (b->failed)
                kc_err("bench: %zu of %zu jobs were not delivered", b->failed, b->published);
        if (bench_wait_done(b, base))
                goto out;
        kc_cpu_sample(&b->cpu, 1);
        /* the probe stopped first: its pops would change the memory */
        if (bench_collect_visible(b) || bench_memory(b) || bench_collect(b))
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
                kc_probe_finish(b->probe, 0, 0);
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
        bench_names(&b);

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
        if (b.signers)
                OPENSSL_cleanse(b.signers, b.n_users * sizeof(*b.signers));
        free(b.signers);
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
