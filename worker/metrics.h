/* metrics.h - the worker's metrics in Prometheus' terms: counters, gauges
 * and histograms that the job path updates without locks (relaxed atomic
 * adds), rendered on demand in the text exposition format, version 0.0.4
 * (worker/http.c serves it at /metrics; docs/operations.md lists them).
 *
 * Labels.  Results are counted per (model, version, code).  A model name is
 * a label only once a model store resolved it (so it exists); jobs naming
 * no model that exists are counted under model="" version="", and at most
 * KW_METRICS_MAX_SERIES (model, version) pairs are kept, the rest counted
 * under model="(other)": no job can grow a scrape without bound.
 *
 * A worker keeps them always (they cost a few relaxed atomic adds per job
 * and a mutex per result): its summary log line reads them, and --http
 * serves them.
 *
 * Threads: every kw_metrics_* update may be called from any thread at any
 * time; kw_metrics_render from any thread, usually the HTTP server's.  The
 * per-model table takes a mutex, held for a lookup only; a writer keeps the
 * series of the model it last counted (kw_metrics_series), so counting a
 * result is one atomic add. */
#ifndef KW_METRICS_H
#define KW_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kf_error.h"

#define KW_METRICS_MAX_SERIES 1024

/* Plain counters, no labels. */
typedef enum {
        KW_C_CONSUMED = 0,  /* messages taken from Kafka */
        KW_C_DUPLICATES,    /* jobs whose id already had its result: nothing written or charged */
        KW_C_DEAD_LETTERED, /* copies acknowledged by the dead-letter topic */
        KW_C_REDIS_ROUND_TRIPS, /* pipelined rounds of steps sent to Redis */
        KW_C_REDIS_ERRORS,      /* rounds that failed (the batch is retried) */
        KW_C_REDIS_RECONNECTS,  /* connections made again after one was dropped */
        /* The result topic's (results_topic.h); shown once kw_metrics_show(KW_SHOW_RESULTS). */
        KW_C_RT_PRODUCED,      /* result messages handed to the producer */
        KW_C_RT_DELIVERED,     /* acknowledged (at least once) or committed (exactly once) */
        KW_C_RT_FAILED,        /* failed delivery reports, refused produce calls, or the
                                * messages produced in failed transactions: sent again */
        KW_C_RT_TXN_COMMITTED, /* exactly once: transactions committed */
        KW_C_RT_TXN_ABORTED,   /* exactly once: transactions aborted */
        KW_C_RT_TOO_LARGE,     /* too_large error results delivered (or committed) in place
                                * of results too large for the topic */
        KW_C__CNT
} kw_counter_t;

/* Gauges set by their owner. */
typedef enum {
        KW_G_INFLIGHT_BATCHES = 0, /* batches taken and not yet written */
        KW_G_ASSIGNED_PARTITIONS,  /* partitions this worker holds */
        KW_G_MODELS_CACHED_BYTES,  /* weights of model versions kept, not being served */
        KW_G_MODELS_SERVING_BYTES, /* weights of the versions being served */
        KW_G_RT_UNACKED,           /* result messages produced, delivery report not served yet
                                    * (kw_metrics_gauge_add; KW_SHOW_RESULTS) */
        KW_G__CNT
} kw_gauge_t;

/* Histograms, in seconds unless said. */
typedef enum {
        KW_H_QUEUE_WAIT = 0, /* Kafka message timestamp to pick-up */
        KW_H_COMPUTE,        /* one batch's forward passes */
        KW_H_REDIS_WRITE,    /* one round of steps, sent to answered */
        KW_H_END_TO_END,     /* Kafka message timestamp to its step done (written or duplicate) */
        KW_H_BATCH_JOBS,     /* jobs per batch (a count, not seconds) */
        KW_H_RT_TXN, /* a committed transaction, begin to commit answered (KW_SHOW_RESULTS) */
        KW_H__CNT
} kw_hist_id_t;

typedef struct kw_metrics_s kw_metrics_t;

/* NULL out of memory. */
kw_metrics_t *kw_metrics_new(void);
void kw_metrics_destroy(kw_metrics_t *m); /* accepts NULL */

void kw_metrics_add(kw_metrics_t *m, kw_counter_t c, uint64_t n);
void kw_metrics_set(kw_metrics_t *m, kw_gauge_t g, int64_t v);
void kw_metrics_observe(kw_metrics_t *m, kw_hist_id_t h, double value);
/* Adds delta (may be negative) to a gauge counted up and down by its
 * users rather than set by one owner. */
void kw_metrics_gauge_add(kw_metrics_t *m, kw_gauge_t g, int64_t delta);

/* Optional sections: their metrics are rendered only once shown (a worker
 * without a result topic exports no kinfer_results_* series, so none can
 * be mistaken for a result topic that is idle). */
#define KW_SHOW_RESULTS 1 /* the worker has a result topic */
void kw_metrics_show(kw_metrics_t *m, int sections);

/* The counters of one (model, version): found or made once (a lookup under
 * the mutex), then counted into without a lock.  model NULL or "" = none
 * resolved (version ignored).  Never freed before kw_metrics_destroy, so a
 * caller may keep the pointer; past KW_METRICS_MAX_SERIES it is the
 * "(other)" one.  NULL only when m is. */
typedef struct series_s kw_series_t;
kw_series_t *kw_metrics_series(kw_metrics_t *m, const char *model, uint32_t version);

/* n results of code in s (NULL: nothing). */
void kw_metrics_series_add(kw_series_t *s, kf_err_t code, uint64_t n);

/* Both at once, for one-off counts. */
void kw_metrics_jobs(kw_metrics_t *m, const char *model, uint32_t version, kf_err_t code,
                     uint64_t n);

/* The consumer lag of one partition (messages). */
typedef struct kw_lag_s {
        char topic[256];
        int32_t partition;
        int64_t lag;
} kw_lag_t;

/* Replaces the lag per partition (n entries, copied) and the work they
 * stand for (flops; see lag.h).  Returns 0, or -1 out of memory (the old
 * ones stay). */
int kw_metrics_set_lag(kw_metrics_t *m, const kw_lag_t *lags, size_t n, double work_flops);

/* The totals a summary log line shows. */
typedef struct kw_totals_s {
        uint64_t consumed, ok, errors, duplicates, dead_lettered;
} kw_totals_t;
void kw_metrics_totals(kw_metrics_t *m, kw_totals_t *t);

/* Writes every metric to fp in the text exposition format.  Returns 0, or
 * -1 if writing failed. */
int kw_metrics_render(kw_metrics_t *m, FILE *fp);

#endif
