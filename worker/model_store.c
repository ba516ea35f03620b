/* model_store.c - the worker's model lookup: one face (model_store.h) over
 * two backends, the Redis registry (model_store_registry*.c) and a
 * directory (model_store_dir.c). */
#include "model_store.h"

#include <stdlib.h>

#include "kf_util.h"
#include "model_store_dir.h"
#include "model_store_registry.h"

struct ms_store_s {
        msr_t *reg; /* exactly one of reg and dir is set */
        msd_t *dir;
};

ms_store_t *ms_store_new_registry(const char *redis_url, const char *prefix, int timeout_ms,
                                  int resync_ms, char *errstr, size_t errstr_size)
{
        ms_store_t *ms = calloc(1, sizeof(*ms));
        if (!ms) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        if (!(ms->reg = msr_new(redis_url, prefix, timeout_ms, resync_ms, errstr, errstr_size))) {
                free(ms);
                return NULL;
        }
        return ms;
}

ms_store_t *ms_store_new(const char *dir)
{
        ms_store_t *ms = calloc(1, sizeof(*ms));
        if (!ms)
                return NULL;
        if (!(ms->dir = msd_new(dir))) {
                free(ms);
                return NULL;
        }
        return ms;
}

void ms_store_destroy(ms_store_t *ms)
{
        if (!ms)
                return;
        msr_destroy(ms->reg);
        msd_destroy(ms->dir);
        free(ms);
}

void ms_store_set_budget(ms_store_t *ms, uint64_t bytes)
{
        if (ms->reg)
                msr_set_budget(ms->reg, bytes);
        else
                msd_set_budget(ms->dir, bytes);
}

void ms_store_stats(ms_store_t *ms, ms_store_stats_t *st)
{
        if (ms->reg)
                msr_stats(ms->reg, st);
        else
                msd_stats(ms->dir, st);
}

model_t *ms_store_get(ms_store_t *ms, const char *name, uint32_t version, kf_err_t *err,
                      char *errstr, size_t errstr_size)
{
        if (ms->reg)
                return msr_get(ms->reg, name, version, err, errstr, errstr_size);
        return msd_get(ms->dir, name, version, err, errstr, errstr_size);
}
