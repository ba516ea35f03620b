/* model_store.h - where the worker finds models: the Redis model registry,
 * or (offline) a directory.
 *
 * Registry (ms_store_new_registry; docs/models.md): a model is loaded from
 * Redis on first use, its blob verified against the registry's SHA-256 and
 * validated, and cached.  A background thread (the reloader, with its own
 * Redis connections) follows the registry's change channel and rebuilds what
 * changed; the switch to a new version is a pointer swap under a mutex, so
 * jobs never wait for it, and a job holding a model (a reference) finishes
 * on it.  Versions pushed with the same blob share one copy of the weights.
 * A version that fails verification is logged and never served:
 * jobs without a version keep getting the last good one.  A job without a
 * version gets the active version; an ensemble's members without a version
 * follow their own active version (rebuilt when that changes).
 *
 * Directory (ms_store_new): DIR/NAME.kmodel (version 1) or
 * DIR/NAME/VERSION.kmodel (VERSION a positive integer without leading zeros;
 * every version is scanned).  NAME must not start with '.': "." and ".." are
 * valid job names but would leave DIR, so they get unknown_model.  A job
 * without a version gets the highest version on disk.  A model is loaded on
 * first use and kept (within the bounds below); a name not found is looked
 * up again on the next job, so models dropped into the directory appear
 * without a restart.  MLPs only.
 *
 * ms_store_get is called from the worker's loop thread only; the models it
 * returns are immutable and reference-counted and may travel elsewhere. */
#ifndef KW_MODEL_STORE_H
#define KW_MODEL_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kf_error.h"
#include "model.h"

/* Bounds on what a store keeps (#11, docs/operations.md "Limits"):
 * names a source does not have are remembered (so a job naming one does not
 * cost a lookup each) up to MS_UNKNOWN_MAX, least recently asked dropped
 * first; versions loaded but not being served (pinned by jobs, or replaced)
 * keep at most the budget's bytes of weights, least recently used dropped
 * first (a job holding one finishes on it; the next job loads it again).
 * The version each name serves is not counted: it is the working set. */
#define MS_UNKNOWN_MAX    4096
#define MS_BUDGET_DEFAULT (512ULL << 20)

typedef struct ms_store_s ms_store_t;

/* What a store holds, for tests and metrics. */
typedef struct ms_store_stats_s {
        size_t names;           /* model names remembered, known or not */
        size_t unknown_names;   /* of which the source does not have: <= MS_UNKNOWN_MAX */
        size_t builds;          /* versions loaded and kept (refused ones included) */
        uint64_t serving_bytes; /* weights of the versions served to jobs without a version */
        uint64_t cached_bytes;  /* weights of the other versions kept */
        uint64_t evicted;       /* versions dropped for the budget so far */
} ms_store_stats_t;

/* dir may be NULL: then every lookup fails with unknown_model. */
ms_store_t *ms_store_new(const char *dir);

/* Models from the registry at redis_url (redis://[user:password@]host:port[/db])
 * under key prefix (e.g. "kinfer:").  timeout_ms bounds connecting and each
 * Redis command; resync_ms is how often the reloader also compares every
 * cached model's change counter with Redis (the safety net for changes
 * announced while it was disconnected; <= 0: 5000).  Starts the reloader;
 * Redis need not be reachable yet.  Returns NULL with errstr on a bad URL or
 * prefix, or when the thread cannot start. */
ms_store_t *ms_store_new_registry(const char *redis_url, const char *prefix, int timeout_ms,
                                  int resync_ms, char *errstr, size_t errstr_size);

void ms_store_destroy(ms_store_t *ms); /* accepts NULL */

/* The budget in bytes for versions not being served (default
 * MS_BUDGET_DEFAULT); applied at once. */
void ms_store_set_budget(ms_store_t *ms, uint64_t bytes);

void ms_store_stats(ms_store_t *ms, ms_store_stats_t *st);

/* Returns a new reference to the model (caller unrefs), or NULL with *err =
 * KF_ERR_UNKNOWN_MODEL (no such model or version, or no active version; the
 * message lists the versions that exist) or KF_ERR_INTERNAL (it exists but
 * cannot be loaded: corrupt; the message says why, and it is logged), or
 * NULL with *err = KF_OK: the registry cannot be reached (or Redis is busy
 * loading), so there is no answer for the job yet; the message says why, and
 * the caller asks again later.  version 0 = the active version.  Loop thread
 * only; in registry mode it takes the store's mutex briefly, and does Redis
 * I/O only for a name or version it has not loaded yet. */
model_t *ms_store_get(ms_store_t *ms, const char *name, uint32_t version, kf_err_t *err,
                      char *errstr, size_t errstr_size);

#endif
