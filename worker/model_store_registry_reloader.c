/* model_store_registry_reloader.c - the registry store's background
 * thread: follows the registry's change channel (SUBSCRIBE, with its own
 * connection), refreshes the names marked dirty, and every resync_ms
 * compares each cached name's seq with Redis (the safety net for changes
 * announced while it was not subscribed). */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_log.h"
#include "kf_util.h"
#include "model_store_registry_int.h"

/* ---- the reloader ---- */

static int msr_stopping(msr_t *r)
{
        return __atomic_load_n(&r->stop, __ATOMIC_ACQUIRE);
}

/* Waits up to ms for a wake-up byte (drained) or stop; 1 if woken. */
static int msr_sleep(msr_t *r, int ms)
{
        struct pollfd p = {r->wake[0], POLLIN, 0};
        char buf[64];
        int n = poll(&p, 1, ms);
        if (n > 0 && (p.revents & POLLIN)) {
                while (read(r->wake[0], buf, sizeof(buf)) > 0)
                        ;
                return 1;
        }
        return 0;
}

/* Every cached name is checked: a changed seq (or a name that appeared)
 * is refreshed.  Also drops versions nobody used for MSR_IDLE_US. */
static void msr_resync(msr_t *r)
{
        char(*names)[JOB_MODEL_MAX + 1] = NULL;
        uint64_t *seqs = NULL;
        int *found = NULL;
        size_t n = 0, i;
        redisContext *c;
        char err[256], key[KF_KEY_MAX];
        int64_t now = kf_mono_us();

        pthread_mutex_lock(&r->lock);
        n = HASH_COUNT(r->models);
        names = calloc(n ? n : 1, sizeof(*names));
        seqs = calloc(n ? n : 1, sizeof(*seqs));
        found = calloc(n ? n : 1, sizeof(*found));
        if (names && seqs && found) {
                i = 0;
                msr_model_t *e, *tmp;
                HASH_ITER(hh, r->models, e, tmp)
                {
                        /* Idle versions (not serving) go; unknown names nobody asks
                         * for go too. */
                        for (msr_ver_t **vp = &e->vers; *vp;) {
                                msr_ver_t *v = *vp;
                                if ((!v->model || v->model != e->serving) &&
                                    now - v->used_us > MSR_IDLE_US) {
                                        *vp = v->next;
                                        msr_ver_free(v);
                                } else {
                                        vp = &v->next;
                                }
                        }
                        if (!e->found && now - e->used_us > MSR_IDLE_US) {
                                msr_remove(r, e);
                                continue;
                        }
                        kf_strlcpy(names[i], e->name, sizeof(names[i]));
                        seqs[i] = e->meta.seq;
                        found[i] = e->found;
                        i++;
                }
                n = i;
        } else {
                n = 0;
        }
        pthread_mutex_unlock(&r->lock);

        /* A context unused since Redis went away fails only on first use:
         * then one more try on a fresh connection. */
        for (int attempt = 0; n && attempt < 2; attempt++) {
                size_t got = 0;
                if (!(c = msr_conn(r, &r->bg, err, sizeof(err))))
                        break;
                for (i = 0; i < n; i++) {
                        mreg_key_meta(key, r->prefix, names[i]);
                        redisAppendCommand(c, "HGET %s seq", key);
                }
                for (i = 0; i < n; i++, got++) {
                        redisReply *rep = NULL;
                        int changed;
                        if (redisGetReply(c, (void **)&rep) != REDIS_OK || !rep) {
                                msr_conn_drop(&r->bg);
                                break;
                        }
                        /* An error reply (LOADING after a restart): refresh
                         * to be sure; the refresh retries until it can. */
                        changed = rep->type == REDIS_REPLY_NIL ? found[i]
                                  : rep->type == REDIS_REPLY_STRING
                                      ? !found[i] || strtoull(rep->str, NULL, 10) != seqs[i]
                                      : 1;
                        if (changed) {
                                pthread_mutex_lock(&r->lock);
                                msr_mark_dirty(r, names[i], 0);
                                pthread_mutex_unlock(&r->lock);
                        }
                        freeReplyObject(rep);
                }
                if (got == n)
                        break;
        }
        free(names);
        free(seqs);
        free(found);
}

/* Takes the dirty list and refreshes each name; a name that failed for
 * Redis' sake goes back on the list.  Returns -1 if Redis failed. */
static int msr_process_dirty(msr_t *r)
{
        msr_dirty_t *d, *next;
        char err[300];
        int rc = 0;

        pthread_mutex_lock(&r->lock);
        d = r->dirty;
        r->dirty = NULL;
        pthread_mutex_unlock(&r->lock);
        for (; d; d = next) {
                msr_path_t path = {0};
                next = d->next;
                if (rc == 0 && !msr_stopping(r) &&
                    msr_refresh(r, &r->bg, d->name, d->flags, &path, err, sizeof(err)) ==
                        MSR_TRANSIENT) {
                        kf_debug("model %s: refresh postponed: %s", d->name, err);
                        rc = -1;
                }
                if (rc != 0) {
                        pthread_mutex_lock(&r->lock);
                        msr_mark_dirty(r, d->name, d->flags);
                        pthread_mutex_unlock(&r->lock);
                }
                free(d);
        }
        return rc;
}

/* Handles one message of the change channel: "EVENT NAME VERSION". */
static void msr_on_message(msr_t *r, const redisReply *rep)
{
        const redisReply *payload;
        char name[JOB_MODEL_MAX + 1];
        const char *p, *sp;
        size_t len;

        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
            rep->element[0]->type != REDIS_REPLY_STRING || strcmp(rep->element[0]->str, "message"))
                return;
        payload = rep->element[2];
        if (payload->type != REDIS_REPLY_STRING)
                return;
        p = memchr(payload->str, ' ', payload->len);
        if (!p)
                return;
        p++;
        sp = memchr(p, ' ', payload->len - (size_t)(p - payload->str));
        len = sp ? (size_t)(sp - p) : payload->len - (size_t)(p - payload->str);
        if (!job_name_valid(p, len, JOB_MODEL_MAX))
                return;
        memcpy(name, p, len);
        name[len] = '\0';
        kf_debug("model registry: %.*s", (int)payload->len, payload->str);
        pthread_mutex_lock(&r->lock);
        r->ann++;
        if (msr_find(r, name))
                msr_mark_dirty(r, name, MSR_RETRY);
        pthread_mutex_unlock(&r->lock);
}

/* (Re)subscribes; returns 0 or -1. */
static int msr_subscribe(msr_t *r)
{
        char err[256];
        redisReply *rep;

        if (!(r->sub = kf_redis_connect(&r->url, r->timeout_ms, err, sizeof(err)))) {
                if (!r->sub_down)
                        kf_warn("model registry: cannot subscribe to changes: %s; retrying", err);
                r->sub_down = 1;
                return -1;
        }
        rep = redisCommand(r->sub, "SUBSCRIBE %s", r->channel);
        if (!rep || rep->type != REDIS_REPLY_ARRAY) {
                if (!r->sub_down)
                        kf_warn("model registry: SUBSCRIBE %s failed: %s", r->channel,
                                r->sub->errstr[0] ? r->sub->errstr : "unexpected reply");
                r->sub_down = 1;
                if (rep)
                        freeReplyObject(rep);
                redisFree(r->sub);
                r->sub = NULL;
                return -1;
        }
        freeReplyObject(rep);
        kf_info("model registry: following %s%s", r->channel,
                r->sub_down ? " again; checking every cached model" : "");
        r->sub_down = 0;
        return 0;
}

void *msr_thread(void *arg)
{
        msr_t *r = arg;
        int backoff = MSR_BACKOFF_MIN_MS, dirty;
        int64_t next_resync = kf_mono_us() + (int64_t)r->resync_ms * 1000, retry_at = 0;

        while (!msr_stopping(r)) {
                struct pollfd p[2];
                int64_t now, wait_us;

                if (!r->sub) {
                        if (msr_subscribe(r) != 0) {
                                msr_sleep(r, backoff);
                                backoff = kf_backoff_next(backoff, MSR_BACKOFF_MIN_MS,
                                                          MSR_BACKOFF_MAX_MS);
                                continue;
                        }
                        backoff = MSR_BACKOFF_MIN_MS;
                        retry_at = 0;
                        /* Changes may have been missed while unsubscribed. */
                        msr_resync(r);
                }
                now = kf_mono_us();
                pthread_mutex_lock(&r->lock);
                dirty = r->dirty != NULL;
                pthread_mutex_unlock(&r->lock);
                if (dirty && now >= retry_at) {
                        if (msr_process_dirty(r) != 0) {
                                /* Redis failed: retry with backoff, but keep
                                 * reading the subscription meanwhile. */
                                retry_at = now + (int64_t)backoff * 1000;
                                backoff = kf_backoff_next(backoff, MSR_BACKOFF_MIN_MS,
                                                          MSR_BACKOFF_MAX_MS);
                        } else {
                                backoff = MSR_BACKOFF_MIN_MS;
                                retry_at = 0;
                        }
                        continue;
                }
                if (now >= next_resync) {
                        msr_resync(r);
                        next_resync = now + (int64_t)r->resync_ms * 1000;
                        continue;
                }
                wait_us = next_resync - now;
                if (dirty && retry_at - now < wait_us)
                        wait_us = retry_at - now;
                p[0] = (struct pollfd){r->wake[0], POLLIN, 0};
                p[1] = (struct pollfd){r->sub->fd, POLLIN, 0};
                if (poll(p, 2, (int)(wait_us / 1000) + 1) <= 0)
                        continue;
                if (p[0].revents & POLLIN)
                        msr_sleep(r, 0); /* drains */
                if (p[1].revents & (POLLIN | POLLERR | POLLHUP)) {
                        void *rep = NULL;
                        if (redisBufferRead(r->sub) != REDIS_OK) {
                                kf_warn("model registry: change subscription lost: %s",
                                        r->sub->errstr[0] ? r->sub->errstr : "connection closed");
                                redisFree(r->sub);
                                r->sub = NULL;
                                r->sub_down = 1;
                                continue;
                        }
                        while (redisGetReplyFromReader(r->sub, &rep) == REDIS_OK && rep) {
                                msr_on_message(r, rep);
                                freeReplyObject(rep);
                                rep = NULL;
                        }
                }
        }
        return NULL;
}
