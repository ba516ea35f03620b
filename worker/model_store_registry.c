/* model_store_registry.c - the registry store's lifetime (msr_new,
 * msr_destroy), its budget and its stats.  The design is described in
 * model_store_registry_int.h. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_log.h"
#include "kf_util.h"
#include "model_store_registry_int.h"

msr_t *msr_new(const char *redis_url, const char *prefix, int timeout_ms, int resync_ms,
               char *errstr, size_t errstr_size)
{
        msr_t *r = calloc(1, sizeof(*r));

        if (!r) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        r->wake[0] = r->wake[1] = -1;
        pthread_mutex_init(&r->lock, NULL);
        if (kf_redis_url_parse(redis_url, &r->url, errstr, errstr_size) != 0)
                goto err;
        if (strlen(prefix) > 64) {
                kf_errf(errstr, errstr_size, "key prefix longer than 64 chars");
                goto err;
        }
        kf_strlcpy(r->prefix, prefix, sizeof(r->prefix));
        mreg_channel(r->channel, prefix);
        r->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
        r->resync_ms = resync_ms > 0 ? resync_ms : 5000;
        r->budget = MS_BUDGET_DEFAULT;
        if (pipe2(r->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
                kf_errf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto err;
        }
        if (pthread_create(&r->thread, NULL, msr_thread, r) != 0) {
                kf_errf(errstr, errstr_size, "cannot start the model reloader thread");
                goto err;
        }
        r->started = 1;
        return r;
err:
        msr_destroy(r);
        return NULL;
}

void msr_set_budget(msr_t *r, uint64_t bytes)
{
        pthread_mutex_lock(&r->lock);
        r->budget = bytes;
        msr_budget(r, NULL);
        pthread_mutex_unlock(&r->lock);
}

void msr_stats(msr_t *r, ms_store_stats_t *st)
{
        msr_model_t *e, *tmp;
        memset(st, 0, sizeof(*st));
        pthread_mutex_lock(&r->lock);
        HASH_ITER(hh, r->models, e, tmp)
        {
                st->names++;
                st->unknown_names += !e->found;
                if (e->serving)
                        st->serving_bytes += e->serving->weight_bytes;
                for (msr_ver_t *v = e->vers; v; v = v->next)
                        st->builds++;
                st->cached_bytes += msr_cached_bytes(e);
        }
        st->evicted = r->evicted;
        pthread_mutex_unlock(&r->lock);
}

void msr_destroy(msr_t *r)
{
        if (!r)
                return;
        if (r->started) {
                __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
                msr_wake(r);
                pthread_join(r->thread, NULL);
        }
        msr_model_t *e, *tmp;
        HASH_ITER(hh, r->models, e, tmp)
        msr_remove(r, e);
        for (msr_dirty_t *d = r->dirty, *dn; d; d = dn) {
                dn = d->next;
                free(d);
        }
        msr_conn_drop(&r->fg);
        msr_conn_drop(&r->bg);
        if (r->sub)
                redisFree(r->sub);
        if (r->wake[0] >= 0)
                close(r->wake[0]);
        if (r->wake[1] >= 0)
                close(r->wake[1]);
        pthread_mutex_destroy(&r->lock);
        free(r);
}
