/* top.h - `kinfer top`: what it shows of a running pool, and how it is read.
 *
 * A sample reads two independent sources:
 *   - each worker's /metrics (its --http endpoint) with libcurl, all at once
 *     (curl multi), parsed by prom_text.c: results by code, lag, work
 *     remaining, batches in flight, partitions held;
 *   - the per-user usage counters in Redis (docs/protocol.md, "Usage
 *     counters": P{U}:usage), found with SCAN and read in one pipeline.
 * Rates are the difference of two samples over the time between them.
 *
 * A source that fails is shown as down, with its reason, and is asked again
 * at the next sample: top never exits because a worker or Redis is away.
 *
 * Ownership: the pool owns every string in it; kt_pool_free frees it all.
 * Threads: one (the command's); libcurl and hiredis are used synchronously. */
#ifndef KC_TOP_H
#define KC_TOP_H

#include <hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uthash.h>

#include "kf_redis.h"

#define KT_USERS_MAX   100000      /* usage keys read per sample; more are counted, not read */
#define KT_BODY_MAX    (16u << 20) /* largest /metrics body taken */
#define KT_WORKERS_MAX 4096        /* heartbeat records read per sample */
#define KT_REASON_MAX  160

typedef struct kt_worker_s {
        char *url;                  /* the /metrics URL */
        int up;                     /* the last scrape worked */
        char reason[KT_REASON_MAX]; /* why not, when !up */
        double jobs, ok, errors;    /* kinfer_jobs_total: all, code ok, other codes */
        double consumed, duplicates, dead_lettered;
        double lag;    /* sum of kinfer_consumer_lag */
        double work;   /* kinfer_work_remaining_flops */
        int have_work; /* the gauge was there */
        double inflight, partitions;
        double jobs_rate, err_rate; /* per second, when have_rate */
        int have_rate;
        double prev_jobs, prev_errors; /* the scrape before, for the rates */
        int64_t prev_us;               /* its time (monotonic), 0 = none */
        void *body;                    /* the response being received (internal) */
        size_t body_len;
} kt_worker_t;

typedef struct kt_user_s {
        char *name;                          /* as found in the key: may hold any byte */
        long long jobs, rows, flops, errors; /* -1 = not a decimal integer in Redis */
        double jobs_rate, err_rate;
        int have_rate;
        long long prev_jobs, prev_errors;
        int64_t prev_us;
        unsigned gen; /* the sample that saw it last */
        UT_hash_handle hh;
} kt_user_t;

typedef struct kt_pool_s {
        kt_worker_t *workers; /* sorted by URL when discovered */
        size_t n_workers;
        int discover;        /* no URLs given: the workers' records in Redis */
        kt_user_t *users;    /* hash by name */
        size_t n_users;      /* in the hash */
        size_t users_unread; /* usage keys past KT_USERS_MAX */
        kf_redis_url_t redis_url;
        char *prefix;
        redisContext *redis; /* NULL while down */
        int redis_up;
        char redis_reason[KT_REASON_MAX];
        int timeout_ms; /* per scrape and per Redis command */
        unsigned gen;
        void *multi; /* CURLM * */
} kt_pool_t;

/* Sets up p for the given worker URLs ("host:port", "http://host:port" or a
 * full URL; /metrics is added when no path is given), or, with none, for the
 * workers that advertise themselves in Redis (P"worker:"ID, read at each
 * sample).  Returns 0, or -1 with errstr (a URL that cannot be used, out of
 * memory).  Connects to nothing. */
int kt_pool_init(kt_pool_t *p, char **urls, size_t n_urls, const char *redis_url,
                 const char *prefix, int timeout_ms, char *errstr, size_t errstr_size);

/* Reads every worker and Redis once.  Never fails: what could not be read
 * is marked down with its reason. */
void kt_pool_sample(kt_pool_t *p);

void kt_pool_free(kt_pool_t *p); /* accepts a pool that failed to init */

/* top_view.c: one frame of text, lines of at most width bytes (no line ends,
 * only printable ASCII: names are escaped), at most max_users user rows.
 * Calls line(i, text, opaque) per line. */
typedef void(kt_line_cb)(int i, const char *text, void *opaque);
void kt_view_render(const kt_pool_t *p, int width, int max_users, double interval_s,
                    kt_line_cb *line, void *opaque);

/* Writes name into out (size n) with every byte outside printable ASCII,
 * and the backslash, as \xHH or \\: no escape sequence reaches a terminal. */
void kt_view_escape(const char *name, char *out, size_t n);

#endif
