/* commit.h - the step writer: writes a batch's results to Redis (protocol
 * v2), one atomic, idempotent Lua step (step.lua) per group of one user's
 * jobs, all of a batch's steps pipelined in one round trip.
 *
 * The step writes each result as one value, records the job id in the
 * user's charge record, charges the usage counters and pushes the ids onto
 * the jobs' inboxes, and does nothing for a (user, id) already decided: a
 * redelivered job, a reused id, or a late write from a worker that lost its
 * partition, is charged once and never overwrites the first result.  Its
 * arguments are built by step_args.c; the connection is redis_conn.c's: a
 * context that saw an I/O error is dropped and a new one made on the next
 * attempt; NOSCRIPT (server restarted or SCRIPT FLUSH) reloads the script
 * and resends.
 * A kw_commit_t belongs to one thread: each writer thread has its own, and
 * the dead-letter stage one to count its copies. */
#ifndef KW_COMMIT_H
#define KW_COMMIT_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "metrics.h"
#include "redis_conn.h"
#include "step_args.h"

typedef struct kw_commit_s {
        kw_redis_t redis;           /* its own connection, with the step script */
        const kw_step_conf_t *conf; /* shared, read only (not owned) */
        int64_t warned_us;          /* last "bad data in Redis" log, rate limit */
        kw_metrics_t *metrics;      /* NULL: none (shared, thread-safe; not owned) */
        /* The metrics series of the (model, version) last counted: most
         * jobs of a batch share one, so a result is counted without a
         * lookup.  Keyed by name, not by the model pointer, which a freed
         * model's successor may reuse. */
        kw_series_t *series;
        char series_model[JOB_MODEL_MAX + 1];
        uint32_t series_version;
        /* counters since start, for logs */
        unsigned long long written, duplicates, undecodable;
} kw_commit_t;

/* Connects (redis_conn.h) and loads the step script; conf must outlive cm.
 * Returns 0 or -1 with errstr; kw_commit_close it either way. */
int kw_commit_open(kw_commit_t *cm, const char *url, int timeout_ms, const kw_step_conf_t *conf,
                   char *errstr, size_t errstr_size);
void kw_commit_close(kw_commit_t *cm);

/* Writes every DONE job of the batch (and counts messages without a readable
 * id in {prefix}stats).  Jobs written move to WRITTEN, so calling again after
 * a failure writes only the rest.  A job the step gives back for computing
 * (see kw_quota_precheck) goes back to NEW.  Returns 0 when every job is
 * WRITTEN or NEW again, or -1 with errstr when Redis is unreachable or
 * refused a step (OOM, BUSY): retry later; nothing half-written is charged. */
int kw_commit_batch(kw_commit_t *cm, kw_batch_t *b, char *errstr, size_t errstr_size);

#endif
