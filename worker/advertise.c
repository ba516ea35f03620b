/* advertise.c - the worker's heartbeat record in Redis (advertise.h). */
#include "advertise.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kf_util.h"

struct kw_advertise_s {
        const kf_redis_url_t *url;
        char key[KF_KEY_MAX];
        char *value;
        int timeout_ms;
        redisContext *c; /* the thread's; after the join, kw_advertise_stop's */
        int failing;     /* the last write failed: logged once */
        int stop;        /* under lock */
        pthread_mutex_t lock;
        pthread_cond_t cond;
        pthread_t thread;
};

int kw_advertise_url(const char *http_addr, int port, char *buf, size_t size)
{
        char host[256] = "";
        const char *colon = strrchr(http_addr, ':');
        size_t hl = colon ? (size_t)(colon - http_addr) : strlen(http_addr);
        int n;
        if (hl >= sizeof(host))
                return -1;
        memcpy(host, http_addr, hl);
        host[hl] = '\0';
        if (!hl || !strcmp(host, "0.0.0.0") || !strcmp(host, "[::]")) {
                if (gethostname(host, sizeof(host) - 1))
                        return -1;
                host[sizeof(host) - 1] = '\0';
        }
        n = snprintf(buf, size, "http://%s:%d/metrics", host, port);
        return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* One SET with its expiry; on failure the connection is dropped. */
static void beat(kw_advertise_t *a)
{
        char err[512];
        redisReply *r = NULL;
        if (!a->c && !(a->c = kf_redis_connect(a->url, a->timeout_ms, err, sizeof(err))))
                goto fail;
        r = redisCommand(a->c, "SET %s %s PX %d", a->key, a->value, 3 * KW_ADVERTISE_PERIOD_MS);
        if (!r || r->type != REDIS_REPLY_STATUS) {
                snprintf(err, sizeof(err), "%s",
                         r && r->type == REDIS_REPLY_ERROR ? r->str
                         : a->c->errstr[0]                 ? a->c->errstr
                                                           : "unexpected reply");
                goto fail;
        }
        freeReplyObject(r);
        if (a->failing)
                kf_info("heartbeat record %s written again", a->key);
        a->failing = 0;
        return;
fail:
        if (r)
                freeReplyObject(r);
        if (a->c) {
                redisFree(a->c);
                a->c = NULL;
        }
        if (!a->failing)
                kf_warn("heartbeat record %s not written (kinfer top will not find this worker "
                        "until it is): %s",
                        a->key, err);
        a->failing = 1;
}

static void *run(void *opaque)
{
        kw_advertise_t *a = opaque;
        pthread_mutex_lock(&a->lock);
        while (!a->stop) {
                struct timespec until;
                pthread_mutex_unlock(&a->lock);
                beat(a);
                clock_gettime(CLOCK_MONOTONIC, &until);
                until.tv_sec += KW_ADVERTISE_PERIOD_MS / 1000;
                pthread_mutex_lock(&a->lock);
                while (!a->stop && pthread_cond_timedwait(&a->cond, &a->lock, &until) != ETIMEDOUT)
                        ;
        }
        pthread_mutex_unlock(&a->lock);
        return NULL;
}

kw_advertise_t *kw_advertise_start(const kf_redis_url_t *redis, const char *prefix,
                                   const char *worker_id, const char *url, int timeout_ms,
                                   char *errstr, size_t errstr_size)
{
        kw_advertise_t *a = calloc(1, sizeof(*a));
        pthread_condattr_t ca;
        if (!a || !(a->value = strdup(url))) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        if (kf_key(a->key, prefix, "worker", worker_id) < 0) {
                kf_errf(errstr, errstr_size, "the heartbeat key of worker '%s' is too long",
                        worker_id);
                goto err;
        }
        a->url = redis;
        a->timeout_ms = timeout_ms;
        pthread_mutex_init(&a->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&a->cond, &ca);
        pthread_condattr_destroy(&ca);
        if (pthread_create(&a->thread, NULL, run, a)) {
                kf_errf(errstr, errstr_size, "cannot start the heartbeat thread");
                pthread_cond_destroy(&a->cond);
                pthread_mutex_destroy(&a->lock);
                goto err;
        }
        return a;
err:
        if (a)
                free(a->value);
        free(a);
        return NULL;
}

void kw_advertise_stop(kw_advertise_t *a)
{
        char err[512];
        redisReply *r;
        if (!a)
                return;
        pthread_mutex_lock(&a->lock);
        a->stop = 1;
        pthread_cond_signal(&a->cond);
        pthread_mutex_unlock(&a->lock);
        pthread_join(a->thread, NULL);
        /* Gone at once rather than down for up to three periods. */
        if (!a->c)
                a->c = kf_redis_connect(a->url, a->timeout_ms, err, sizeof(err));
        if (a->c && (r = redisCommand(a->c, "DEL %s", a->key)))
                freeReplyObject(r);
        if (a->c)
                redisFree(a->c);
        pthread_cond_destroy(&a->cond);
        pthread_mutex_destroy(&a->lock);
        free(a->value);
        free(a);
}
