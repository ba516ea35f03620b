/* worker.h - kinfer-worker: one Kafka consumer of the pool's group.
 *
 * What happens to a job:
 *   poll a micro-batch of jobs  (Kafka, at most batch_max_jobs/rows, waiting
 *                                at most batch_wait_us for it to fill)
 *   decode and validate each    (job_decode: bad input becomes an error result)
 *   compute per model           (one sgemm per layer over the batch's rows)
 *   commit to Redis             (one atomic, idempotent script per job,
 *                                pipelined; retried while Redis is away)
 *   store the offsets           (only now, and only below the oldest job not
 *                                yet written: a crash redelivers, never loses)
 * kw_worker_run's thread polls and batches; compute threads and writer
 * threads do the rest (worker.c describes the pipeline). */
#ifndef KW_WORKER_H
#define KW_WORKER_H

#include <signal.h>
#include <stdint.h>

#include "job.h"
#include "kf_config.h"

typedef struct kw_config_s {
        char *config_file; /* --config: read by kf_config_parse, kept for --print-config */
        int print_config;
        char *http_addr;       /* --http: metrics and probes; NULL = off */
        char *log_format;      /* plain or json */
        int64_t log_summary_s; /* a summary line at info this often; 0 = never */
        int64_t log_limit;     /* lines per --log-limit-s per call site a producer drives */
        int64_t log_limit_s;
        char *brokers;
        char *redis_url;
        char *models_dir;
        int64_t model_resync_ms; /* registry: how often every cached model is re-checked */
        int64_t model_cache_mb;  /* weights kept for versions not being served */
        char *topic;
        char *dlq_topic;
        char *results_topic;    /* --results-topic: a result message per job; NULL = off */
        char *results_key;      /* "id" or "input" (results_topic.h) */
        int exactly_once;       /* transactions: results and offsets commit together */
        char *transactional_id; /* exactly once; NULL = kinfer-GROUP-WORKER_ID */
        char *chain_model;      /* --chain-model: the topic holds result messages of
                                 * another stage, each a job of this model (chain.h) */
        char *group;
        char *instance_id; /* static membership (group.instance.id), or NULL */
        char *prefix;
        char *worker_id; /* NULL = hostname:pid */
        int64_t batch_max_jobs;
        int64_t batch_max_rows;
        int64_t batch_wait_us;
        int64_t blas_threads;
        int64_t compute_threads; /* 0 = one per online CPU */
        int64_t writer_threads;  /* Redis writers, a connection each */
        int64_t redis_timeout_ms;
        int64_t grace_ms; /* shutdown: how long to keep retrying unwritten results */
        int64_t max_message_bytes;
        int64_t max_rows;
        int64_t max_cols;
        int64_t max_elements;
        int64_t max_output_elements;  /* rows x output columns of one job */
        int64_t max_scratch_elements; /* rows x widest layer of one job */
        int64_t quota_jobs;           /* default quota: max jobs per window, -1 = unlimited */
        int64_t quota_rows;           /* default quota: max rows per window, -1 = unlimited */
        int64_t quota_window;         /* default quota window, seconds */
        int64_t charge_horizon;       /* seconds a charge record lasts at least (protocol.md) */
        int require_signatures;       /* unsigned jobs are unauthorized (auth.h) */
        int64_t key_cache_ms;         /* how long a signing key read from Redis is trusted */
        int log_level;
        kf_props_t props; /* -X librdkafka properties */
} kw_config_t;

/* The option table of kinfer-worker (flags, KINFER_* variables, defaults). */
extern const kf_opt_t kw_options[];

typedef struct kw_worker_s kw_worker_t;

/* Creates the consumer and connects to Redis.  Does not take ownership of
 * conf (it must outlive the worker).  stop is polled between batches: set it
 * from a signal handler to begin a graceful shutdown.  Returns NULL with
 * errstr on a configuration or connection error. */
kw_worker_t *kw_worker_new(const kw_config_t *conf, volatile sig_atomic_t *stop, char *errstr,
                           size_t errstr_size);

/* Runs until *stop, then finishes in-flight work (up to grace_ms), commits
 * offsets and leaves the group, all within grace_ms + 2 s whatever the
 * brokers' state.  Returns 0 on a clean shutdown, -1 if work
 * had to be abandoned (it will be redelivered to another worker). */
int kw_worker_run(kw_worker_t *w);

/* 0 if kw_worker_run had to leave without closing the consumer (brokers
 * unreachable): then the caller must not kw_worker_destroy (librdkafka is
 * still closing on another thread) but exit the process. */
int kw_worker_closed(const kw_worker_t *w);

void kw_worker_destroy(kw_worker_t *w); /* accepts NULL */

#endif
