/* commit.h - writes a batch's results to Redis (protocol v2): one atomic,
 * idempotent Lua step per group of one user's jobs, all of a batch's steps
 * pipelined in one round trip.
 *
 * The step (step.lua) writes each result as one value, records the job id
 * in the user's charge record, charges the usage counters and pushes the ids
 * onto the jobs' inboxes, and does nothing for a (user, id) already decided:
 * a redelivered job, a reused id, or a late write from a worker that lost
 * its partition, is charged once and never overwrites the first result.  Redis connection state lives here: a context that saw an I/O
 * error is dropped and a new one made on the next attempt; NOSCRIPT (server
 * restarted or SCRIPT FLUSH) reloads the script and resends.
 * A kw_redis_t belongs to one thread: each writer thread has its own, and
 * the loop thread one for the quota pre-check. */
#ifndef KW_COMMIT_H
#define KW_COMMIT_H

#include <stddef.h>

#include "batch.h"
#include "kf_redis.h"

typedef struct kw_redis_s {
        kf_redis_url_t url;
        redisContext *c; /* NULL while disconnected */
        int timeout_ms;
        kf_script_t step;
        const char *prefix;    /* key prefix, e.g. "kinfer:" (not owned) */
        const char *worker_id; /* written into every result (not owned) */
        const char *topic;     /* source topic, for the result's `source` field */
        int64_t quota_jobs;    /* defaults for users without a quota entry: */
        int64_t quota_rows;    /*   max jobs/rows per window, -1 = unlimited */
        int64_t quota_window;  /*   window length, seconds */
        int64_t charge_horizon; /* seconds a charge record lasts at least */
        int64_t quota_warned_us; /* last "bad quota settings" log, rate limit */
        int64_t retry_us;        /* last reconnect attempt of the pre-check */
        /* counters since start, for logs */
        unsigned long long written, duplicates, undecodable;
} kw_redis_t;

/* Parses the URL and connects once, to fail fast on a wrong URL or password.
 * Returns 0 or -1 with errstr. */
int kw_redis_init(kw_redis_t *r, const char *url, int timeout_ms, char *errstr,
                  size_t errstr_size);
void kw_redis_close(kw_redis_t *r);

/* Quota pre-check, before computing: reads each user's quota and current
 * window usage (two pipelined round trips) and marks the NEW jobs that would
 * exceed it as over_quota (DONE, not computed, input kept).  It is only an
 * estimate to save compute: the step decides atomically, and gives a job
 * back (state NEW again, precheck_done) if the window has rolled over since.
 * Best effort: on a Redis error it marks nothing. */
void kw_quota_precheck(kw_redis_t *r, kw_batch_t *b);

/* Writes every DONE job of the batch (and counts messages without a readable
 * id in {prefix}stats).  Jobs written move to WRITTEN, so calling again after
 * a failure writes only the rest.  A job the step gives back for computing
 * (see kw_quota_precheck) goes back to NEW.  Returns 0 when every job is
 * WRITTEN or NEW again, or -1 with errstr when Redis is unreachable or
 * refused a step (OOM, BUSY): retry later; nothing half-written is charged. */
int kw_commit_batch(kw_redis_t *r, kw_batch_t *b, char *errstr, size_t errstr_size);

#endif
