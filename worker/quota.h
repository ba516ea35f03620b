/* quota.h - the worker's side of quotas: the default quota, and the
 * pre-check that spares computing jobs of users over their quota.
 *
 * The quota itself is decided by the step (step.lua), atomically, with the
 * same defaults (kw_step_conf_t carries them) and the same grammar of
 * settings (kf_quota.c); the pre-check only estimates.  A kw_precheck_t is
 * the loop thread's. */
#ifndef KW_QUOTA_H
#define KW_QUOTA_H

#include <stdint.h>

#include "batch.h"
#include "redis_conn.h"

/* The quota of a user without a quota entry in Redis (--quota-*). */
typedef struct kw_quota_s {
        int64_t jobs;   /* max jobs per window, -1 = unlimited */
        int64_t rows;   /* max rows per window, -1 = unlimited */
        int64_t window; /* window length, seconds */
} kw_quota_t;

typedef struct kw_precheck_s {
        kw_redis_t redis;   /* its own connection */
        const char *prefix; /* key prefix (not owned) */
        kw_quota_t defaults;
        int64_t retry_us; /* last reconnect attempt (at most one a second) */
} kw_precheck_t;

/* Connects (redis_conn.h); prefix is not owned.  Returns 0 or -1 with
 * errstr; kw_precheck_close it either way. */
int kw_precheck_open(kw_precheck_t *p, const char *url, int timeout_ms, const char *prefix,
                     const kw_quota_t *defaults, char *errstr, size_t errstr_size);
void kw_precheck_close(kw_precheck_t *p);

/* Quota pre-check, before computing: reads each user's quota and current
 * window usage (two pipelined round trips) and marks the NEW jobs that would
 * exceed it as over_quota (DONE, not computed, input kept).  It is only an
 * estimate to save compute: the step decides atomically, and gives a job
 * back (state NEW again, precheck_done) if the window has rolled over since.
 * Best effort: on a Redis error it marks nothing. */
void kw_quota_precheck(kw_precheck_t *p, kw_batch_t *b);

#endif
