/* model_store_registry_int.h - private to the registry store's files: its
 * state and the functions they share.  model_store_registry.h is the face.
 *
 * The registry store is a cache the loop thread reads under a mutex, kept
 * current off the loop thread by a reloader that follows the registry's
 * change channel.  Files, each calling only those before it:
 * _conn.c (connections, the wake-up pipe), _cache.c (entries and builds,
 * under the lock), _build.c (refresh and build: Redis I/O and decoding),
 * _lookup.c (the loop thread's msr_get), _reloader.c (the background
 * thread), model_store_registry.c (lifetime, budget and stats).
 *
 * Design.  Each model name has an entry: the registry metadata last read,
 * the versions built so far (model_t, or why it was refused) and `serving`,
 * the model jobs without a version get.  A refresh reads the metadata, builds
 * the active version if no build of the same blob (sha256) is cached, and
 * then, under the lock, swaps `serving`: a pointer exchange, so no job waits
 * for it, and jobs already holding a reference finish on the old model.  A
 * version that fails verification never becomes `serving`: the last good one
 * stays, and the refusal is logged.  The loop thread refreshes only names it
 * has never seen (first use) and versions it has not built (a pinned job);
 * everything else happens on the reloader, woken by PUBLISHed changes and by
 * a periodic check of each model's `seq` (a change missed while the
 * subscription was down is found there).  Refreshes race harmlessly: the
 * metadata with the higher seq wins, and an ensemble built while any model
 * swapped is rebuilt once more. */
#ifndef KW_MODEL_STORE_REGISTRY_INT_H
#define KW_MODEL_STORE_REGISTRY_INT_H

#include <hiredis.h>
#include <pthread.h>
#include <stdint.h>

#include "kf_keys.h"
#include "kf_redis.h"
#include "model_registry.h"
#include "model_store_registry.h"

/* Names are found through a uthash table (Debian's uthash-dev, header only):
 * out of memory while adding is the caller's error, never an abort. */
#define HASH_NONFATAL_OOM        1
#define uthash_nonfatal_oom(elt) ((elt)->hh_oom = 1)
#include <uthash.h>

#define MSR_BACKOFF_MIN_MS    50
#define MSR_BACKOFF_MAX_MS    5000
#define MSR_ABSENT_RECHECK_US 1000000 /* an unknown name is asked again after 1 s */
#define MSR_FRESH_US          200000  /* a newer pinned version: re-read at most every 200 ms */
#define MSR_IDLE_US           (600LL * 1000000) /* a version nobody used for 10 min is dropped */
#define MSR_MAX_DEPS          256

/* Refresh flags. */
#define MSR_RETRY   1 /* build again what was refused (a change was announced) */
#define MSR_REBUILD 2 /* rebuild ensembles even if cached: a model they follow changed */

typedef enum {
        MSR_BUILT = 0,
        MSR_REFUSED,   /* verification or decoding failed: cached as such */
        MSR_MISSING,   /* the version is gone from the registry */
        MSR_TRANSIENT, /* Redis failed: nothing learnt, try again */
} msr_res_t;

typedef struct msr_conn_s {
        redisContext *c;
        int down; /* the last attempt failed (logged once) */
} msr_conn_t;

/* Names a build followed (an ensemble member without a version, at any
 * depth): when one of them changes, the build is redone. */
typedef struct msr_deps_s {
        char **names;
        uint32_t n;
} msr_deps_t;

typedef struct msr_ver_s {
        uint32_t version;
        char sha256[MREG_SHA256_HEX]; /* of the blob it was built from */
        model_t *model;               /* NULL: refused, errmsg says why */
        char errmsg[300];
        msr_deps_t deps;
        int64_t used_us;
        struct msr_ver_s *next;
} msr_ver_t;

typedef struct msr_model_s {
        char name[JOB_MODEL_MAX + 1];
        int found;        /* the registry has this name */
        mreg_meta_t meta; /* as last read */
        model_t *serving; /* what version-0 jobs get (own reference); NULL: see serving_err */
        kf_err_t serving_err;
        char serving_msg[300];
        msr_ver_t *vers;
        int64_t checked_us; /* last metadata read */
        int64_t fresh_us;   /* when a re-read did not find fresh_v ... */
        uint32_t fresh_v;   /* ... a pinned version newer than the metadata */
        int64_t used_us;
        UT_hash_handle hh; /* in r->models, by name */
        int hh_oom;        /* set by uthash when adding failed */
        /* Names the registry does not have, least recently asked first
         * (r->unknown): at most MS_UNKNOWN_MAX are kept. */
        struct msr_model_s *uprev, *unext;
        int in_unknown;
} msr_model_t;

typedef struct msr_dirty_s {
        char name[JOB_MODEL_MAX + 1];
        int flags;
        struct msr_dirty_s *next;
} msr_dirty_t;

/* The path of ensembles being built, against cycles the registry did not
 * stop (a hand-edited hash) and unbounded nesting. */
typedef struct msr_path_s {
        const char *name[MODEL_MAX_DEPTH + 1];
        uint32_t version[MODEL_MAX_DEPTH + 1];
        int depth;
} msr_path_t;

struct msr_s {
        kf_redis_url_t url;
        char prefix[KF_KEY_MAX];
        char channel[KF_KEY_MAX];
        int timeout_ms, resync_ms;
        pthread_mutex_t lock; /* guards models, unknown, dirty, gen, budget, evicted */
        msr_model_t *models;  /* uthash head */
        msr_model_t *unknown; /* utlist of the entries with !found, LRU first */
        size_t n_unknown;
        uint64_t budget;  /* bytes of weights kept for versions not being served */
        uint64_t evicted; /* builds dropped for the budget */
        msr_dirty_t *dirty;
        uint64_t gen;      /* bumped whenever some model's serving version changes */
        uint64_t ann;      /* bumped for every change announced on the channel */
        msr_conn_t fg;     /* the loop thread's connection */
        msr_conn_t bg;     /* the reloader's command connection */
        redisContext *sub; /* the reloader's subscription */
        int sub_down;
        int wake[2]; /* a byte written wakes the reloader */
        int stop;    /* atomic */
        pthread_t thread;
        int started;
};

/* ---- model_store_registry_conn.c ---- */

/* A connected context for cn, connecting if needed; NULL with errstr (the
 * first failure in a row is logged). */
redisContext *msr_conn(msr_t *r, msr_conn_t *cn, char *errstr, size_t errstr_size);
void msr_conn_drop(msr_conn_t *cn);
void msr_wake(msr_t *r); /* any thread */

/* ---- model_store_registry_cache.c (caller holds r->lock where r is given) ---- */

void msr_deps_free(msr_deps_t *d);
int msr_deps_has(const msr_deps_t *d, const char *name);
int msr_deps_add(msr_deps_t *d, const char *name);
int msr_deps_merge(msr_deps_t *d, const msr_deps_t *from);
void msr_ver_free(msr_ver_t *v); /* accepts NULL */
/* A copy of src whose members string is its own; -1 out of memory. */
int msr_vdup(mreg_version_t *dst, const mreg_version_t *src);
msr_model_t *msr_find(msr_t *r, const char *name);
/* A new entry for name (not found yet), or NULL out of memory. */
msr_model_t *msr_add(msr_t *r, const char *name);
/* Unlinks and frees e with its builds (models held by jobs live on). */
void msr_remove(msr_t *r, msr_model_t *e);
/* Whether the registry has e's name; the unknown ones beyond MS_UNKNOWN_MAX
 * are dropped, least recently asked first (never e itself). */
void msr_set_found(msr_t *r, msr_model_t *e, int found);
/* A job asked for e now. */
void msr_touch(msr_t *r, msr_model_t *e, int64_t now);
/* Drops the least recently used builds that are not being served while
 * their weights exceed r->budget, never keep (the build a job has just
 * asked for: dropping it would rebuild it for every such job). */
void msr_budget(msr_t *r, const msr_ver_t *keep);
/* Bytes of weights e keeps for versions it does not serve, each copy once. */
uint64_t msr_cached_bytes(const msr_model_t *e);
msr_ver_t *msr_find_ver(msr_model_t *e, uint32_t version);
msr_ver_t *msr_ver_of(msr_model_t *e, const model_t *m);
void msr_set_serving(msr_model_t *e, model_t *m);
void msr_mark_dirty(msr_t *r, const char *name, int flags);
void msr_invalidate_dependents(msr_t *r, const char *name);
/* Inserts a new build into e unless one for the same blob is there; a
 * refused build never replaces a good one; then the budget is applied.
 * Returns the build kept. */
msr_ver_t *msr_insert_ver(msr_t *r, msr_model_t *e, msr_ver_t *nv);
void msr_settle(msr_t *r, msr_model_t *e);

/* ---- model_store_registry_build.c (no lock held on entry) ---- */

msr_res_t msr_build(msr_t *r, msr_conn_t *cn, const char *name, const mreg_version_t *vd,
                    msr_path_t *path, msr_ver_t **out, char *errstr, size_t errstr_size);
msr_res_t msr_refresh(msr_t *r, msr_conn_t *cn, const char *name, int flags, msr_path_t *path,
                      char *errstr, size_t errstr_size);

/* ---- model_store_registry_reloader.c ---- */

void *msr_thread(void *arg);

#endif
