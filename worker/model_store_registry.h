/* model_store_registry.h - the model store's registry mode (private to
 * model_store.c, which dispatches to it; see model_store.h for the contract).
 *
 * Threads: msr_get() runs on the worker's loop thread; msr_new() starts one
 * background thread (the reloader) that subscribes to the registry's change
 * channel and rebuilds models off the loop thread.  Both share the cache
 * under one mutex, held only to look up or swap pointers, never across
 * Redis I/O or decoding; each thread has its own Redis connection. */
#ifndef KW_MODEL_STORE_REGISTRY_H
#define KW_MODEL_STORE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "kf_error.h"
#include "model.h"
#include "model_store.h"

typedef struct msr_s msr_t;

/* Parses redis_url, copies prefix and starts the reloader.  Redis need not be
 * up yet: the reloader connects with backoff.  Returns NULL with errstr on a
 * bad URL or when the thread cannot start. */
msr_t *msr_new(const char *redis_url, const char *prefix, int timeout_ms, int resync_ms,
               char *errstr, size_t errstr_size);

/* Stops and joins the reloader, drops the cache (models still referenced
 * elsewhere live on).  Accepts NULL. */
void msr_destroy(msr_t *r);

/* ms_store_set_budget and ms_store_stats for the registry; any thread. */
void msr_set_budget(msr_t *r, uint64_t bytes);
void msr_stats(msr_t *r, ms_store_stats_t *st);

/* ms_store_get for the registry; loop thread only. */
model_t *msr_get(msr_t *r, const char *name, uint32_t version, kf_err_t *err, char *errstr,
                 size_t errstr_size);

#endif
