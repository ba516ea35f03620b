/* worker_int.h - private to the worker's pipeline files (worker.c,
 * pipeline.c, loop.c): the worker's state and what they share.  worker.h is
 * the face; worker.c describes the pipeline.
 *
 * Files, each calling only those before it: pipeline.c (the compute and
 * writer threads), loop.c (the loop thread: polling, batching, dispatching,
 * rebalances, draining), worker.c (lifetime). */
#ifndef KW_WORKER_INT_H
#define KW_WORKER_INT_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "advertise.h"
#include "auth.h"
#include "batch.h"
#include "chain.h"
#include "commit.h"
#include "dlq.h"
#include "endpoint.h"
#include "lag.h"
#include "metrics.h"
#include "model_store.h"
#include "offsets.h"
#include "queue.h"
#include "quota.h"
#include "results_topic.h"
#include "worker.h"

#define KW_CLOSE_EXTRA_MS 2000 /* leaving the group may take this beyond --grace-ms */
#define BACKOFF_MIN_MS    50
#define BACKOFF_MAX_MS    5000
#define PAUSE_AFTER_MS    1000    /* a full pipeline for this long pauses fetching */
#define GAUGES_EVERY_US   1000000 /* the loop thread refreshes pulled metrics this often */

typedef struct kw_writer_s {
        kw_worker_t *w;
        kw_commit_t commit; /* this writer's step writer and connection */
        pthread_t thread;
        int started;
} kw_writer_t;

/* A batch held back because something it needs cannot be asked (the model
 * registry, the signing keys): the backoff in force, 0 while nothing is
 * held, and when to ask again.  Loop thread only (loop.c). */
typedef struct kw_hold_s {
        int backoff_ms;
        int64_t at_us;
} kw_hold_t;

struct kw_worker_s {
        const kw_config_t *conf;
        volatile sig_atomic_t *stop;
        char worker_id[256];
        job_limits_t limits;
        kw_compute_limits_t costs; /* output and scratch bounds per job */
        rd_kafka_t *rk;
        kw_step_conf_t step; /* what every step is told (read only once running) */
        ms_store_t *models;  /* loop thread */
        kw_precheck_t pre;   /* loop thread: quota pre-check */
        kw_auth_t auth;      /* loop thread: signatures (auth.h) */
        kw_writer_t *writers;
        int n_writers;
        kw_dlq_t dlq;           /* the dead-letter stage (thread-safe, see dlq.h) */
        kw_commit_t dlq_commit; /* the dead-letter stage's counting */
        kw_rt_t rt;             /* the result topic (thread-safe, see results_topic.h) */
        char txn_id[512];       /* exactly once: the transactional.id */
        kw_offsets_t *offsets;
        kw_queue_t compute_q, write_q;
        pthread_t *computers;
        int n_computers;
        kw_batch_t *cur;                         /* loop thread: the batch being filled */
        int paused;                              /* loop thread: the assignment is paused */
        kw_hold_t resolve_hold;                  /* loop thread: the registry is away */
        kw_hold_t auth_hold;                     /* loop thread: the signing keys are unreadable */
        rd_kafka_topic_partition_list_t *rewind; /* loop thread: see rewind_later */
        int max_inflight;
        pthread_mutex_t lock; /* guards inflight, with `idle` */
        pthread_cond_t idle;  /* signalled when a batch leaves the pipeline */
        int inflight;         /* batches dispatched, not yet written */
        atomic_int abandon;   /* writer: drop batches instead of retrying */
        atomic_ullong batches, abandoned;
        unsigned long long jobs_seen;     /* loop thread */
        int fatal;                        /* loop thread: the consumer had a fatal error */
        kw_metrics_t *metrics;            /* NULL unless --http (then thread-safe) */
        kw_status_t status;               /* what /healthz and /readyz read (atomics) */
        kw_endpoint_t *endpoint;          /* --http */
        kw_advertise_t *advertise;        /* --http: the heartbeat record in Redis */
        int64_t gauges_at_us;             /* loop thread: next refresh of the pulled metrics */
        unsigned long long dlq_sent_seen; /* loop thread: dead-letter copies counted */
        int64_t summary_at_us;            /* loop thread: next summary log line */
        int assigned;                     /* loop thread: partitions held */
        int ever_assigned;                /* loop thread: held partitions since the start */
        kw_costs_t *part_costs;           /* loop thread: recent flops per message, per partition */
        int closed;                       /* atomic: rd_kafka_consumer_close returned */
        kw_totals_t summary_last;         /* loop thread: the totals at the last one */
};

/* ---- pipeline.c ---- */

/* Starts the compute threads (--compute-threads, 0 = one per CPU) and the
 * writer threads, and sets max_inflight.  Returns 0 or -1 with errstr. */
int kw_threads_start(kw_worker_t *w, char *errstr, size_t errstr_size);

/* Seconds from a message's Kafka timestamp (producer or broker time) to
 * now, or -1 if it has none. */
double kw_since_message(const rd_kafka_message_t *rkm);

/* Sets the in-flight gauge (caller holds w->lock). */
void kw_inflight_gauge(kw_worker_t *w, int n);

/* ---- loop.c ---- */

/* librdkafka's statistics callback (set by kw_worker_new): the lag. */
int kw_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque);
/* The consumer's error callback (set by kw_worker_new): a Kafka that
 * refuses the credentials or the TLS handshake at start stops the worker. */
void kw_consumer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque);

/* librdkafka's rebalance callback (set by kw_worker_new). */
void kw_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                     rd_kafka_topic_partition_list_t *parts, void *opaque);

#endif
