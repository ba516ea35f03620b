/* bench_probe.c - when results become visible: a thread of `kinfer bench`
 * that BLPOPs the done lists of sampled jobs and notes the instant of each. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "kf_keys.h"
#include "kf_util.h"
#include "kinfer.h"

/* Keys watched by one BLPOP at most: more pending probes than this (a
 * backlog) are watched in turn, and their instants come out late. */
#define KC_PROBE_WATCH_MAX 256

/* A probed job whose result has not been seen yet. */
typedef struct kc_probe_job_s {
        size_t idx;
        char id[JOB_ID_MAX + 1];
} kc_probe_job_t;

struct kc_probe_s {
        const kc_conf_t *conf;
        redisContext *redis; /* the thread's own connection */
        pthread_t tid;
        pthread_mutex_t lock;
        size_t n_jobs, max_probes;
        /* under lock */
        int64_t *seen_us;        /* per job index: Unix us it was seen, 0 = not yet */
        kc_probe_job_t *pending; /* max_probes of them */
        size_t n_pending;
        int stopping, overflow, failed;
        int64_t deadline_us; /* when stopping: give up at this monotonic instant */
};

static int64_t kc_probe_now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Marks the job whose done list is `key` as seen now. */
static void kc_probe_seen(kc_probe_t *p, const char *key, size_t keylen, int64_t now)
{
        for (size_t i = 0; i < p->n_pending; i++) {
                char k[KF_KEY_MAX];
                int n = kf_key(k, p->conf->prefix, "done", p->pending[i].id);
                if (n < 0 || (size_t)n != keylen || memcmp(k, key, keylen))
                        continue;
                p->seen_us[p->pending[i].idx] = now;
                p->pending[i] = p->pending[--p->n_pending];
                return;
        }
}

static void *kc_probe_main(void *arg)
{
        kc_probe_t *p = arg;
        char keys[KC_PROBE_WATCH_MAX][KF_KEY_MAX];
        const char *argv[KC_PROBE_WATCH_MAX + 2];
        size_t lens[KC_PROBE_WATCH_MAX + 2];

        for (;;) {
                redisReply *r;
                int n = 0;

                pthread_mutex_lock(&p->lock);
                if (p->stopping && (!p->n_pending || kf_mono_us() > p->deadline_us)) {
                        pthread_mutex_unlock(&p->lock);
                        break;
                }
                if (p->n_pending > KC_PROBE_WATCH_MAX)
                        p->overflow = 1;
                for (size_t i = 0; i < p->n_pending && n < KC_PROBE_WATCH_MAX; i++, n++)
                        kf_key(keys[n], p->conf->prefix, "done", p->pending[i].id);
                pthread_mutex_unlock(&p->lock);
                if (!n) {
                        struct timespec ts = {0, 2000000};
                        nanosleep(&ts, NULL);
                        continue;
                }
                argv[0] = "BLPOP";
                lens[0] = 5;
                for (int i = 0; i < n; i++) {
                        argv[i + 1] = keys[i];
                        lens[i + 1] = strlen(keys[i]);
                }
                argv[n + 1] = "0.02"; /* seconds: then watch newly added probes too */
                lens[n + 1] = 4;
                if (!(r = redisCommandArgv(p->redis, n + 2, argv, lens))) {
                        pthread_mutex_lock(&p->lock);
                        p->failed = 1;
                        pthread_mutex_unlock(&p->lock);
                        break;
                }
                if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                    r->element[0]->type == REDIS_REPLY_STRING) {
                        int64_t now = kc_probe_now_us();
                        pthread_mutex_lock(&p->lock);
                        kc_probe_seen(p, r->element[0]->str, r->element[0]->len, now);
                        pthread_mutex_unlock(&p->lock);
                }
                freeReplyObject(r);
        }
        return NULL;
}

kc_probe_t *kc_probe_start(const kc_conf_t *conf, size_t n_jobs, size_t max_probes)
{
        kc_probe_t *p = calloc(1, sizeof(*p));

        if (!p || !(p->seen_us = calloc(n_jobs ? n_jobs : 1, sizeof(*p->seen_us))) ||
            !(p->pending = calloc(max_probes ? max_probes : 1, sizeof(*p->pending)))) {
                kc_probe_free(p);
                return NULL;
        }
        p->conf = conf;
        p->n_jobs = n_jobs;
        p->max_probes = max_probes;
        p->redis = kc_redis(conf); /* exits 3 if Redis is unreachable */
        pthread_mutex_init(&p->lock, NULL);
        if (pthread_create(&p->tid, NULL, kc_probe_main, p)) {
                pthread_mutex_destroy(&p->lock);
                redisFree(p->redis);
                p->redis = NULL;
                kc_probe_free(p);
                return NULL;
        }
        return p;
}

void kc_probe_add(kc_probe_t *p, size_t idx, const char *id)
{
        pthread_mutex_lock(&p->lock);
        if (idx < p->n_jobs && p->n_pending < p->max_probes) {
                p->pending[p->n_pending].idx = idx;
                kf_strlcpy(p->pending[p->n_pending].id, id, sizeof(p->pending[0].id));
                p->n_pending++;
        }
        pthread_mutex_unlock(&p->lock);
}

int kc_probe_finish(kc_probe_t *p, int64_t wait_us)
{
        int failed;

        pthread_mutex_lock(&p->lock);
        p->stopping = 1;
        p->deadline_us = kf_mono_us() + wait_us;
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->tid, NULL);
        pthread_mutex_destroy(&p->lock);
        redisFree(p->redis);
        p->redis = NULL;
        failed = p->failed;
        return failed ? -1 : 0;
}

int64_t kc_probe_seen_us(const kc_probe_t *p, size_t idx)
{
        return idx < p->n_jobs ? p->seen_us[idx] : 0;
}

int kc_probe_overflowed(const kc_probe_t *p)
{
        return p->overflow;
}

void kc_probe_free(kc_probe_t *p)
{
        if (!p)
                return;
        free(p->seen_us);
        free(p->pending);
        free(p);
}
