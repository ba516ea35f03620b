/* metrics.c - the worker's metrics (see metrics.h): relaxed atomic adds on
 * the job path, one mutex for the per-model table, and the text exposition
 * format written on demand.  Hand-written: Debian has no C Prometheus
 * client, and the format is a few lines of text per series. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "job.h"
#include "kf_log_limit.h"
#include "kf_util.h"

#define HASH_NONFATAL_OOM        1
#define uthash_nonfatal_oom(elt) ((elt)->hh_oom = 1)
#include <uthash.h>

#define KW_HIST_MAX 18 /* finite buckets of the widest histogram */

typedef struct hist_def_s {
        const char *name, *help;
        double bounds[KW_HIST_MAX];
        int n;
        int section; /* 0: always rendered; else a KW_SHOW_* bit */
} hist_def_t;

/* Latency buckets from 0.5 ms to 60 s: a W1 job takes well under a
 * millisecond end to end, a backlog drained after a restart minutes. */
#define LATENCY_BUCKETS                                                                            \
        {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}, 16

static const hist_def_t hist_defs[KW_H__CNT] = {
    [KW_H_QUEUE_WAIT] = {"kinfer_queue_wait_seconds",
                         "Time from a job's Kafka timestamp to its pick-up by this worker.",
                         LATENCY_BUCKETS},
    [KW_H_COMPUTE] = {"kinfer_compute_seconds", "Time of one batch's forward passes.",
                      LATENCY_BUCKETS},
    [KW_H_REDIS_WRITE] = {"kinfer_redis_write_seconds",
                          "Time of one pipelined round of steps, sent to answered.",
                          LATENCY_BUCKETS},
    [KW_H_END_TO_END] =
        {"kinfer_end_to_end_seconds",
         "Time from a job's Kafka timestamp to its Redis step done (its result written, or "
         "found written before: a duplicate).",
         LATENCY_BUCKETS},
    [KW_H_BATCH_JOBS] = {"kinfer_batch_jobs",
                         "Jobs per micro-batch.",
                         {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096},
                         12},
    [KW_H_RT_TXN] = {"kinfer_results_transaction_seconds",
                     "Time of one committed result-topic transaction, begun to commit answered: "
                     "its result messages, the consumed offsets and the commit (exactly once).",
                     LATENCY_BUCKETS, KW_SHOW_RESULTS},
};

typedef struct def_s {
        const char *name, *help;
        int section; /* 0: always rendered; else a KW_SHOW_* bit */
} def_t;

static const def_t counter_defs[KW_C__CNT] = {
    [KW_C_CONSUMED] = {"kinfer_messages_consumed_total", "Messages taken from the jobs topic."},
    [KW_C_DUPLICATES] = {"kinfer_jobs_duplicate_total",
                         "Jobs whose id already had a result: nothing written or charged."},
    [KW_C_DEAD_LETTERED] = {"kinfer_jobs_dead_lettered_total",
                            "Copies acknowledged by the dead-letter topic."},
    [KW_C_REDIS_ROUND_TRIPS] = {"kinfer_redis_round_trips_total",
                                "Pipelined rounds of steps sent to Redis."},
    [KW_C_REDIS_ERRORS] = {"kinfer_redis_errors_total",
                           "Rounds of steps that failed and were retried."},
    [KW_C_REDIS_RECONNECTS] = {"kinfer_redis_reconnects_total",
                               "Redis connections made again after one was dropped."},
    [KW_C_RT_PRODUCED] = {"kinfer_results_produced_total",
                          "Result messages handed to the result topic's producer (one sent again "
                          "after a failure counts again).",
                          KW_SHOW_RESULTS},
    [KW_C_RT_DELIVERED] = {"kinfer_results_delivered_total",
                           "Result messages acknowledged by the brokers (at least once) or "
                           "committed in a transaction (exactly once).",
                           KW_SHOW_RESULTS},
    [KW_C_RT_FAILED] = {"kinfer_results_failed_total",
                        "Result messages not delivered: a failed delivery report or produce call "
                        "(at least once), or produced in a transaction that failed (exactly once). "
                        "Their batch is sent again.",
                        KW_SHOW_RESULTS},
    [KW_C_RT_TXN_COMMITTED] = {"kinfer_results_transactions_committed_total",
                               "Result-topic transactions committed (exactly once; 0 otherwise).",
                               KW_SHOW_RESULTS},
    [KW_C_RT_TXN_ABORTED] = {"kinfer_results_transactions_aborted_total",
                             "Result-topic transactions aborted; their messages are produced again "
                             "in a new one (exactly once; 0 otherwise).",
                             KW_SHOW_RESULTS},
    [KW_C_RT_TOO_LARGE] = {"kinfer_results_too_large_total",
                           "too_large error results delivered (at least once) or committed "
                           "(exactly once) in place of results over a size limit of the result "
                           "producer or the brokers (counted also in delivered).",
                           KW_SHOW_RESULTS},
};

static const def_t gauge_defs[KW_G__CNT] = {
    [KW_G_INFLIGHT_BATCHES] = {"kinfer_inflight_batches",
                               "Batches taken from Kafka and not yet written."},
    [KW_G_ASSIGNED_PARTITIONS] = {"kinfer_assigned_partitions",
                                  "Partitions of the jobs topic this worker holds."},
    [KW_G_MODELS_CACHED_BYTES] = {"kinfer_model_cache_bytes",
                                  "Weights kept for model versions not being served."},
    [KW_G_MODELS_SERVING_BYTES] = {"kinfer_model_serving_bytes",
                                   "Weights of the model versions being served."},
    [KW_G_RT_UNACKED] = {"kinfer_results_unacknowledged",
                         "Result messages produced whose delivery report has not arrived yet.",
                         KW_SHOW_RESULTS},
};

typedef struct hist_s {
        uint64_t counts[KW_HIST_MAX + 1]; /* per bucket, not cumulative; last = +Inf */
        uint64_t sum_ns;                  /* sum of values in units of 1e-9 */
} hist_t;

/* Results of one (model, version), per code. */
typedef struct series_s {
        char key[JOB_MODEL_MAX + 16]; /* "model\0" + version, as text: "mnist/3" */
        char model[JOB_MODEL_MAX + 1];
        uint32_t version;
        uint64_t codes[KF_ERR__CNT];
        UT_hash_handle hh;
        int hh_oom;
} series_t;

struct kw_metrics_s {
        uint64_t counters[KW_C__CNT];
        int64_t gauges[KW_G__CNT];
        hist_t hists[KW_H__CNT];
        pthread_mutex_t lock; /* guards series, n_series, other */
        series_t *series;
        size_t n_series;
        series_t other; /* past KW_METRICS_MAX_SERIES */
        kw_lag_t *lags; /* guarded by lock too */
        size_t n_lags;
        double work_flops;
        int have_lag; /* statistics seen at least once */
        double start_time;
        int show; /* KW_SHOW_* bits */
};

kw_metrics_t *kw_metrics_new(void)
{
        kw_metrics_t *m = calloc(1, sizeof(*m));
        struct timespec ts;
        if (!m)
                return NULL;
        pthread_mutex_init(&m->lock, NULL);
        kf_strlcpy(m->other.model, "(other)", sizeof(m->other.model));
        clock_gettime(CLOCK_REALTIME, &ts);
        m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
        return m;
}

void kw_metrics_destroy(kw_metrics_t *m)
{
        series_t *s, *tmp;
        if (!m)
                return;
        HASH_ITER(hh, m->series, s, tmp)
        {
                HASH_DEL(m->series, s);
                free(s);
        }
        pthread_mutex_destroy(&m->lock);
        free(m->lags);
        free(m);
}

void kw_metrics_add(kw_metrics_t *m, kw_counter_t c, uint64_t n)
{
        if (m)
                __atomic_add_fetch(&m->counters[c], n, __ATOMIC_RELAXED);
}

void kw_metrics_set(kw_metrics_t *m, kw_gauge_t g, int64_t v)
{
        if (m)
                __atomic_store_n(&m->gauges[g], v, __ATOMIC_RELAXED);
}

void kw_metrics_observe(kw_metrics_t *m, kw_hist_id_t h, double value)
{
        const hist_def_t *d = &hist_defs[h];
        int b = 0;
        if (!m || !(value >= 0)) /* NaN and negatives (clock skew) are not observations */
                return;
        while (b < d->n && value > d->bounds[b])
                b++;
        __atomic_add_fetch(&m->hists[h].counts[b], 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&m->hists[h].sum_ns,
                           value > 1.8e10 ? (uint64_t)1.8e19 : (uint64_t)(value * 1e9),
                           __ATOMIC_RELAXED);
}

void kw_metrics_gauge_add(kw_metrics_t *m, kw_gauge_t g, int64_t delta)
{
        if (m)
                __atomic_add_fetch(&m->gauges[g], delta, __ATOMIC_RELAXED);
}

void kw_metrics_show(kw_metrics_t *m, int sections)
{
        if (m)
                __atomic_or_fetch(&m->show, sections, __ATOMIC_RELAXED);
}

kw_series_t *kw_metrics_series(kw_metrics_t *m, const char *model, uint32_t version)
{
        char key[sizeof(((series_t *)0)->key)];
        series_t *s;

        if (!m)
                return NULL;
        if (!model || !model[0])
                version = 0;
        snprintf(key, sizeof(key), "%.*s/%u", JOB_MODEL_MAX, model ? model : "", version);
        pthread_mutex_lock(&m->lock);
        HASH_FIND_STR(m->series, key, s);
        if (!s && m->n_series < KW_METRICS_MAX_SERIES && (s = calloc(1, sizeof(*s)))) {
                kf_strlcpy(s->key, key, sizeof(s->key));
                kf_strlcpy(s->model, model ? model : "", sizeof(s->model));
                s->version = version;
                HASH_ADD_STR(m->series, key, s);
                if (s->hh_oom) {
                        free(s);
                        s = NULL;
                } else {
                        m->n_series++;
                }
        }
        if (!s)
                s = &m->other;
        pthread_mutex_unlock(&m->lock);
        return s;
}

void kw_metrics_series_add(kw_series_t *s, kf_err_t code, uint64_t n)
{
        if (s && code >= 0 && code < KF_ERR__CNT)
                __atomic_add_fetch(&s->codes[code], n, __ATOMIC_RELAXED);
}

void kw_metrics_jobs(kw_metrics_t *m, const char *model, uint32_t version, kf_err_t code,
                     uint64_t n)
{
        kw_metrics_series_add(kw_metrics_series(m, model, version), code, n);
}

/* A copy of s for reading, its counters read atomically (they are added to
 * without the lock). */
static void series_copy(series_t *dst, const series_t *s)
{
        memcpy(dst->model, s->model, sizeof(dst->model));
        dst->version = s->version;
        for (int c = 0; c < KF_ERR__CNT; c++)
                dst->codes[c] = __atomic_load_n(&s->codes[c], __ATOMIC_RELAXED);
}

int kw_metrics_set_lag(kw_metrics_t *m, const kw_lag_t *lags, size_t n, double work_flops)
{
        kw_lag_t *copy = NULL;
        if (!m)
                return 0;
        if (n && !(copy = malloc(n * sizeof(*copy))))
                return -1;
        if (n)
                memcpy(copy, lags, n * sizeof(*copy));
        pthread_mutex_lock(&m->lock);
        free(m->lags);
        m->lags = copy;
        m->n_lags = n;
        m->work_flops = work_flops;
        m->have_lag = 1;
        pthread_mutex_unlock(&m->lock);
        return 0;
}

void kw_metrics_totals(kw_metrics_t *m, kw_totals_t *t)
{
        series_t *s, *tmp;
        memset(t, 0, sizeof(*t));
        t->consumed = __atomic_load_n(&m->counters[KW_C_CONSUMED], __ATOMIC_RELAXED);
        t->duplicates = __atomic_load_n(&m->counters[KW_C_DUPLICATES], __ATOMIC_RELAXED);
        t->dead_lettered = __atomic_load_n(&m->counters[KW_C_DEAD_LETTERED], __ATOMIC_RELAXED);
        pthread_mutex_lock(&m->lock);
        HASH_ITER(hh, m->series, s, tmp)
        {
                t->ok += __atomic_load_n(&s->codes[KF_OK], __ATOMIC_RELAXED);
                for (int c = 1; c < KF_ERR__CNT; c++)
                        t->errors += __atomic_load_n(&s->codes[c], __ATOMIC_RELAXED);
        }
        t->ok += __atomic_load_n(&m->other.codes[KF_OK], __ATOMIC_RELAXED);
        for (int c = 1; c < KF_ERR__CNT; c++)
                t->errors += __atomic_load_n(&m->other.codes[c], __ATOMIC_RELAXED);
        pthread_mutex_unlock(&m->lock);
}

/* ---- rendering ---- */

static uint64_t load(const uint64_t *p)
{
        return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* A label value: backslash, double quote and newline escaped.  Model names
 * are [A-Za-z0-9._:-] today, but the format must never depend on that. */
static void label(FILE *fp, const char *v)
{
        for (; *v; v++) {
                if (*v == '\\' || *v == '"')
                        fprintf(fp, "\\%c", *v);
                else if (*v == '\n')
                        fputs("\\n", fp);
                else
                        fputc(*v, fp);
        }
}

static void head(FILE *fp, const char *name, const char *type, const char *help)
{
        fprintf(fp, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Bucket bounds as Prometheus clients write them ("0.0005", "1", "2.5"). */
static void bound(FILE *fp, double b)
{
        fprintf(fp, "%.10g", b);
}

static int cmp_series(const void *a, const void *b)
{
        const series_t *x = *(const series_t *const *)a, *y = *(const series_t *const *)b;
        int c = strcmp(x->model, y->model);
        return c ? c : (x->version > y->version) - (x->version < y->version);
}

static void render_jobs(kw_metrics_t *m, FILE *fp)
{
        series_t **all = NULL, *s, *tmp, other;
        size_t n = 0;

        head(fp, "kinfer_jobs_total", "counter",
             "Results written, by model, version and code (ok or the error code).");
        pthread_mutex_lock(&m->lock);
        /* Copied under the lock, written after: a slow scraper never holds
         * up the job path. */
        if (m->n_series && (all = malloc(m->n_series * sizeof(*all)))) {
                HASH_ITER(hh, m->series, s, tmp)
                {
                        series_t *c = malloc(sizeof(*c));
                        if (!c)
                                break;
                        series_copy(c, s);
                        all[n++] = c;
                }
        }
        series_copy(&other, &m->other);
        pthread_mutex_unlock(&m->lock);
        if (n > 1)
                qsort(all, n, sizeof(*all), cmp_series);
        for (size_t i = 0; i <= n; i++) {
                const series_t *sp = i < n ? all[i] : &other;
                for (int code = 0; code < KF_ERR__CNT; code++) {
                        if (!sp->codes[code] && (sp == &other || code != KF_OK))
                                continue; /* zeros only for ok, so each series shows up */
                        fputs("kinfer_jobs_total{model=\"", fp);
                        label(fp, sp->model);
                        fputs("\",version=\"", fp);
                        if (sp->version)
                                fprintf(fp, "%u", sp->version);
                        fprintf(fp, "\",code=\"%s\"} %llu\n", kf_err_name((kf_err_t)code),
                                (unsigned long long)sp->codes[code]);
                }
        }
        for (size_t i = 0; i < n; i++)
                free(all[i]);
        free(all);
}

static void render_hist(kw_metrics_t *m, FILE *fp, kw_hist_id_t h)
{
        const hist_def_t *d = &hist_defs[h];
        uint64_t cum = 0;

        head(fp, d->name, "histogram", d->help);
        for (int b = 0; b <= d->n; b++) {
                cum += load(&m->hists[h].counts[b]);
                fprintf(fp, "%s_bucket{le=\"", d->name);
                if (b < d->n)
                        bound(fp, d->bounds[b]);
                else
                        fputs("+Inf", fp);
                fprintf(fp, "\"} %llu\n", (unsigned long long)cum);
        }
        fprintf(fp, "%s_sum %.9f\n%s_count %llu\n", d->name,
                (double)load(&m->hists[h].sum_ns) / 1e9, d->name, (unsigned long long)cum);
}

static void render_lag(kw_metrics_t *m, FILE *fp)
{
        kw_lag_t *lags = NULL;
        size_t n;
        double work;
        int have;

        pthread_mutex_lock(&m->lock);
        n = m->n_lags;
        work = m->work_flops;
        have = m->have_lag;
        if (n && (lags = malloc(n * sizeof(*lags))))
                memcpy(lags, m->lags, n * sizeof(*lags));
        pthread_mutex_unlock(&m->lock);
        if (!lags)
                n = 0;
        head(fp, "kinfer_consumer_lag", "gauge",
             "Messages of each held partition not yet committed (librdkafka statistics).");
        for (size_t i = 0; i < n; i++) {
                fputs("kinfer_consumer_lag{topic=\"", fp);
                label(fp, lags[i].topic);
                fprintf(fp, "\",partition=\"%d\"} %lld\n", (int)lags[i].partition,
                        (long long)lags[i].lag);
        }
        free(lags);
        if (have) {
                head(fp, "kinfer_work_remaining_flops", "gauge",
                     "The lag weighted by the recent cost of each partition's jobs (floating-"
                     "point operations).");
                fprintf(fp, "kinfer_work_remaining_flops %.17g\n", work);
        }
}

/* The process metrics every Prometheus client exports, same names. */
static void render_process(kw_metrics_t *m, FILE *fp)
{
        struct rusage ru;
        long rss_pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");

        if (f) {
                if (fscanf(f, "%*s %ld", &rss_pages) != 1)
                        rss_pages = 0;
                fclose(f);
        }
        if (getrusage(RUSAGE_SELF, &ru) == 0) {
                head(fp, "process_cpu_seconds_total", "counter",
                     "Total user and system CPU time spent in seconds.");
                fprintf(fp, "process_cpu_seconds_total %.6f\n",
                        (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                            (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
        }
        head(fp, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        fprintf(fp, "process_resident_memory_bytes %lld\n",
                (long long)rss_pages * sysconf(_SC_PAGESIZE));
        head(fp, "process_start_time_seconds", "gauge",
             "Start time of the process since unix epoch in seconds.");
        fprintf(fp, "process_start_time_seconds %.3f\n", m->start_time);
}

int kw_metrics_render(kw_metrics_t *m, FILE *fp)
{
        int show = __atomic_load_n(&m->show, __ATOMIC_RELAXED);
#define SHOWN(def) (!(def).section || ((def).section & show))
        for (int c = 0; c < KW_C__CNT; c++) {
                if (!SHOWN(counter_defs[c]))
                        continue;
                head(fp, counter_defs[c].name, "counter", counter_defs[c].help);
                fprintf(fp, "%s %llu\n", counter_defs[c].name,
                        (unsigned long long)load(&m->counters[c]));
        }
        /* process-wide, like the log it counts (kf_log_limit.h) */
        head(fp, "kinfer_log_lines_suppressed_total", "counter",
             "Log lines not written by the per-kind log limit (--log-limit), each counted in "
             "a summary line.");
        fprintf(fp, "kinfer_log_lines_suppressed_total %llu\n",
                (unsigned long long)kf_log_limit_suppressed_total());
        render_jobs(m, fp);
        for (int g = 0; g < KW_G__CNT; g++) {
                if (!SHOWN(gauge_defs[g]))
                        continue;
                head(fp, gauge_defs[g].name, "gauge", gauge_defs[g].help);
                fprintf(fp, "%s %lld\n", gauge_defs[g].name,
                        (long long)__atomic_load_n(&m->gauges[g], __ATOMIC_RELAXED));
        }
        for (int h = 0; h < KW_H__CNT; h++)
                if (SHOWN(hist_defs[h]))
                        render_hist(m, fp, (kw_hist_id_t)h);
#undef SHOWN
        render_lag(m, fp);
        render_process(m, fp);
        return ferror(fp) ? -1 : 0;
}
