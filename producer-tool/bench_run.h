/* bench_run.h - a drain or open run of `kinfer bench`: its state
 * (kc_bench_t) and its parts, called in this order by bench_run.c:
 *   bench_jobs.c     the run's names, users and signing keys; publishing
 *   bench_collect.c  completion (usage counters), results and latencies
 *   bench_memory.c   Redis memory of the run's keys, and their deletion
 *   bench_report.c   the progress bar (stderr) and the JSON report (stdout)
 * cmd_bench.c parses the options, checks them against the mode and calls
 * kc_bench_run (or bench_compute.c's kc_bench_compute).
 *
 * Ownership: the kc_bench_t owns every buffer, connection and handle it
 * points to (conf excepted: the caller's); kc_bench_free releases them.
 * Threads: all of it runs on the command's thread, but for the delivery
 * callback, which librdkafka calls from rd_kafka_poll on that same thread,
 * and the probe thread (bench_probe.c), which reads only id_base through
 * kc_bench_job_idx.
 * Errors: functions that return int return 0 or -1 (kc_bench_run an exit
 * code), int64_t ones a value or -1; a failure is reported on stderr
 * (kc_err) where it happens, so callers only stop, but for
 * kc_bench_redis_time and kc_bench_used_memory_settled, whose callers say
 * what could not be read. */
#ifndef KC_BENCH_RUN_H
#define KC_BENCH_RUN_H

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "bench.h"
#include "kinfer.h"
#include "signer.h"

/* Redis commands sent per pipelined round trip (GET, MEMORY USAGE, UNLINK). */
#define KC_BENCH_PIPE_CHUNK 1000

/* Options: kc_conf_t first, so KC_OPTS_CONN and the kc fields reused below
 * (model, user, ttl, timeout, rows-per-job, seed, quiet, -X) keep their
 * offsets; the bench-only settings follow. */
typedef struct kc_bench_conf_s {
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
} kc_bench_conf_t;

typedef enum { KC_BENCH_DRAIN, KC_BENCH_OPEN, KC_BENCH_COMPUTE } kc_bench_mode_t;

/* Per job: nothing yet, handed to librdkafka, acknowledged, not delivered. */
enum { KC_BENCH_JOB_NONE = 0, KC_BENCH_JOB_SENT, KC_BENCH_JOB_DELIVERED, KC_BENCH_JOB_FAILED };

typedef struct kc_bench_s {
        kc_bench_conf_t *conf;
        volatile sig_atomic_t *stop; /* set on SIGINT/SIGTERM: stop publishing and waiting */
        kc_bench_mode_t mode;
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
        /* Redis memory (kc_bench_memory): used_memory before and once every
         * result existed; what the run's inboxes and charge records hold */
        int64_t time0_s;    /* Redis TIME at the start: the first charge period */
        int64_t mem0, mem1; /* -1: unknown */
        double inbox_bytes, record_bytes, record_fields;
        double key_bytes; /* MEMORY USAGE of sampled result keys, their mean */
        size_t key_samples;
        /* progress bar */
        int bar;
        int64_t bar_drawn_us;
} kc_bench_t;

/* bench_run.c: publishes the jobs (drain or open), waits for the results,
 * reads them and Redis' memory, prints the report, deletes the run's keys
 * (unless --keep).  b comes from cmd_bench.c with conf, stop, mode, cols, n,
 * rng, bar, cpu and the names (kc_bench_names) set.  Returns a KC_EXIT_ code
 * (exits 3 if Redis is unreachable, as kc_redis).  A worker stopped with
 * --pause-pid is resumed whatever happens. */
int kc_bench_run(kc_bench_t *b);

/* Releases what b holds: flushes (5 s at most) and destroys the producer,
 * closes Redis, wipes the signing keys.  Accepts a b that never ran. */
void kc_bench_free(kc_bench_t *b);

/* bench_jobs.c: the run's jobs. */

/* Sets id_base and inbox from conf->kc.user and run. */
void kc_bench_names(kc_bench_t *b);

/* Job idx's id into id (JOB_ID_MAX + 1 bytes): "USER-RUN-N", N = idx + 1. */
void kc_bench_job_id(const kc_bench_t *b, size_t idx, char *id);

/* Its inverse, a kc_probe_idx_fn (opaque: the kc_bench_t). */
int kc_bench_job_idx(const char *id, size_t len, const void *opaque, size_t *idx);

/* librdkafka's delivery report callback (opaque: the kc_bench_t): marks the
 * job delivered or failed. */
void kc_bench_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque);

/* Reads the topic's partitions into partitions and picks n_users user
 * names spread evenly over them (b->rk must exist).  0 or -1. */
int kc_bench_pick_users(kc_bench_t *b);

/* --sign: a new key per user, stored in Redis (b->redis).  0 or -1. */
int kc_bench_keys(kc_bench_t *b);

/* Publish every job: drain as fast as librdkafka takes them; open on the
 * schedule of --rate (announcing sampled jobs to b->probe), then wait for
 * every delivery report.  0, or -1 on a produce error or when stopped. */
int kc_bench_publish_drain(kc_bench_t *b);
int kc_bench_publish_open(kc_bench_t *b);

/* bench_collect.c: what became of the jobs. */

/* The sum of the users' jobs + errors usage counters, or -1. */
int64_t kc_bench_usage_sum(kc_bench_t *b);

/* Polls kc_bench_usage_sum until it has grown by every delivered job from
 * base, or nothing completed for --timeout s (reported, not an error); sets
 * t_all_us.  0, or -1 on a Redis error. */
int kc_bench_wait_done(kc_bench_t *b, int64_t base);

/* Job idx's result key into key (KF_KEY_MAX bytes).  0 or -1. */
int kc_bench_result_key(const kc_bench_t *b, size_t idx, char *key);

/* Reads every delivered job's result: ok, errors (first_error), missing,
 * lat_ms and svc_ms.  0 or -1. */
int kc_bench_collect(kc_bench_t *b);

/* Stops the probe (if any) and fills vis_ms.  0 or -1. */
int kc_bench_collect_visible(kc_bench_t *b);

/* bench_memory.c: Redis memory of the run's keys. */

/* Redis' TIME in Unix s, or -1 (not reported). */
int64_t kc_bench_redis_time(kc_bench_t *b);

/* used_memory minus the clients' buffers once it has settled, or -1 (not
 * reported). */
int64_t kc_bench_used_memory_settled(kc_bench_t *b);

/* Once every result exists: mem1, inbox_bytes, record_bytes,
 * record_fields, key_bytes, key_samples.  0 or -1. */
int kc_bench_memory(kc_bench_t *b);

/* Deletes the run's results, inboxes and charge records.  0 or -1. */
int kc_bench_delete_keys(kc_bench_t *b);

/* bench_report.c: what the run shows. */

/* "\r<what> [#####-----] 42% done/total <rate>" on stderr when b->bar, at
 * most every 100 ms unless final (which ends the line). */
void kc_bench_bar(kc_bench_t *b, const char *what, size_t done, size_t total, double per_s,
                  int final);

/* The JSON line on stdout (sorts lat_ms, svc_ms and vis_ms). */
void kc_bench_report(kc_bench_t *b);

#endif
