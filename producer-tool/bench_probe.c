/* bench_probe.c - when results become visible: a thread of `kinfer bench`
 * that pops the run's inbox lists and notes the instant each sampled job's id
 * arrives.
 *
 * Every job of a run names the run's inbox, so when its result is written the
 * worker pushes its id onto {prefix}{USER}:inbox:NAME of the job's user, in
 * the same atomic step (one push per user per batch).  The thread blocks on
 * those lists with BLMPOP ... LEFT COUNT n, which returns every id waiting on
 * the first non-empty one in a single call (BLPOP and LPOP key COUNT in one
 * round trip; Redis >= 7.0, which the worker needs already: its step uses
 * EXPIRE ... GT).
 *
 * What it costs Redis, which the bench measures too (--cpu-pids): every call
 * is a round trip whose system calls cost Redis more than the command (INFO
 * commandstats counts 4-18 us a BLMPOP, more for a longer pop).  A thread
 * that waits on every user's inbox is woken by nearly every push: with W1
 * (tiny model, 64 users) at 6,400 jobs/s on 2 cores that was 0.7-0.85 BLMPOP
 * per job, and redis-server used 68-77 us per job against 53-59 without the
 * probe.  So the thread watches only the inboxes of users that have a
 * sampled job announced (kc_probe_add) and not yet seen; the other users'
 * ids stay in their lists (the bench deletes them) until that user is
 * watched again, when one call takes up to KC_PROBE_POP_COUNT of them.  It
 * is then woken by pushes to those few lists only: once per sampled job or
 * less (one pop can hold several), plus the other jobs of those users that
 * finish meanwhile.  Measured the same way with 1,000 sampled jobs per run:
 * 0.18 BLMPOP per job at 4,800 jobs/s, about +3 us per job of redis-server
 * CPU (8%); 0.05 and 0.013 per job at 12,000 and 24,000 jobs/s, lost in the
 * run-to-run noise.  Jobs are announced KC_PROBE_LEAD_US before they are
 * published, and the thread changes the lists it watches at least every
 * KC_PROBE_BLOCK_MS, so a job's list is watched before its id can arrive.
 * The ids of a drain (no probe) are never popped: its Redis cost is the
 * worker's, plus the bench's poll of the usage counters (one HMGET per user
 * every 20 ms, as before v2). */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "kf_keys.h"
#include "kf_util.h"
#include "kinfer.h"

/* Lists watched by one BLMPOP at most: when more users have a sampled job
 * pending, they are watched in turns, and their instants come out late
 * (visible_late). */
#define KC_PROBE_WATCH_MAX 256
/* Ids taken by one pop at most. */
#define KC_PROBE_POP_COUNT 1000
/* The longest one BLMPOP blocks (a string: its timeout argument, seconds),
 * in ms: how soon newly announced jobs' lists are watched, and the stop flag
 * read. */
#define KC_PROBE_BLOCK_MS  20
#define KC_PROBE_BLOCK_ARG "0.02"
#define KC_PROBE_NO_USER   UINT32_MAX

struct kc_probe_s {
        redisContext *redis; /* the thread's own connection */
        pthread_t tid;
        pthread_mutex_t lock;
        char **keys; /* the inbox of each user */
        size_t n_keys;
        size_t n_jobs, every;
        kc_probe_idx_fn *idx_of;
        const void *opaque;
        /* under lock; per sampled job (slot idx / every) */
        int64_t *seen_us;  /* Unix us its id was first popped, 0 = not yet */
        uint32_t *user_of; /* its user, KC_PROBE_NO_USER until announced */
        size_t *pending;   /* per user: announced sampled jobs not seen yet */
        size_t n_seen;
        int overflow;
        size_t expect; /* when stopping: stop once this many sampled jobs were seen */
        int stopping, failed;
        int64_t deadline_us; /* when stopping: give up at this monotonic instant */
};

static_assert(KC_PROBE_BLOCK_MS * 1000 < KC_PROBE_LEAD_US,
              "a job's list must be watched before the job is published");

/* Notes the ids of one pop (a BLMPOP reply's array of ids), seen at now.
 * Called under lock. */
static void kc_probe_ids(kc_probe_t *p, const redisReply *ids, int64_t now)
{
        for (size_t i = 0; i < ids->elements; i++) {
                const redisReply *e = ids->element[i];
                size_t idx, slot;
                if (e->type != REDIS_REPLY_STRING || p->idx_of(e->str, e->len, p->opaque, &idx) ||
                    idx >= p->n_jobs || idx % p->every)
                        continue;
                slot = idx / p->every;
                /* the first instant: a redelivered job is pushed again */
                if (p->seen_us[slot])
                        continue;
                p->seen_us[slot] = now;
                p->n_seen++;
                if (p->user_of[slot] != KC_PROBE_NO_USER)
                        p->pending[p->user_of[slot]]--;
        }
}

static void kc_probe_fail(kc_probe_t *p)
{
        pthread_mutex_lock(&p->lock);
        p->failed = 1;
        pthread_mutex_unlock(&p->lock);
}

static void *kc_probe_main(void *arg)
{
        kc_probe_t *p = arg;
        size_t most = p->n_keys < KC_PROBE_WATCH_MAX ? p->n_keys : KC_PROBE_WATCH_MAX;
        const char **argv = calloc(most + 6, sizeof(*argv));
        size_t *lens = calloc(most + 6, sizeof(*lens));
        size_t *watched = calloc(most, sizeof(*watched)); /* the users of argv's keys */
        char count[24], nkeys[24];
        size_t start = 0; /* the user watched first: turns about, so none starves */

        snprintf(count, sizeof(count), "%d", KC_PROBE_POP_COUNT);
        if (!argv || !lens || !watched)
                kc_probe_fail(p);
        while (argv && lens && watched) {
                redisReply *r;
                size_t n = 0, w = 0, want = 0;
                int stop;

                pthread_mutex_lock(&p->lock);
                stop = p->stopping && (p->n_seen >= p->expect || kf_mono_us() > p->deadline_us);
                for (size_t i = 0; i < p->n_keys && !stop; i++) {
                        size_t u = (start + i) % p->n_keys;
                        if (!p->pending[u])
                                continue;
                        want++;
                        if (w < most)
                                watched[w++] = u;
                }
                if (want > w)
                        p->overflow = 1;
                pthread_mutex_unlock(&p->lock);
                if (stop)
                        break;
                if (!w) { /* nothing announced and unseen: no need to ask Redis */
                        struct timespec ts = {0, 1000000};
                        nanosleep(&ts, NULL);
                        continue;
                }
                snprintf(nkeys, sizeof(nkeys), "%zu", w);
                argv[n++] = "BLMPOP";
                argv[n++] = KC_PROBE_BLOCK_ARG;
                argv[n++] = nkeys;
                for (size_t i = 0; i < w; i++)
                        argv[n++] = p->keys[watched[i]];
                argv[n++] = "LEFT";
                argv[n++] = "COUNT";
                argv[n++] = count;
                for (size_t i = 0; i < n; i++)
                        lens[i] = strlen(argv[i]);
                if (!(r = redisCommandArgv(p->redis, (int)n, argv, lens)) ||
                    r->type == REDIS_REPLY_ERROR) {
                        if (r)
                                kc_err("bench: the probe's BLMPOP (Redis >= 7.0): %s", r->str);
                        freeReplyObject(r);
                        kc_probe_fail(p);
                        break;
                }
                /* [key, [id, ...]], or nil on a timeout */
                if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                    r->element[0]->type == REDIS_REPLY_STRING &&
                    r->element[1]->type == REDIS_REPLY_ARRAY) {
                        int64_t now = kf_now_us();
                        const redisReply *key = r->element[0];
                        pthread_mutex_lock(&p->lock);
                        kc_probe_ids(p, r->element[1], now);
                        pthread_mutex_unlock(&p->lock);
                        for (size_t i = 0; i < w; i++)
                                if (strlen(p->keys[watched[i]]) == key->len &&
                                    !memcmp(p->keys[watched[i]], key->str, key->len)) {
                                        start = watched[i] + 1; /* next time, the ones after */
                                        break;
                                }
                } else if (want > w) {
                        start = watched[w - 1] + 1; /* a quiet turn: the next ones */
                }
                start %= p->n_keys;
                freeReplyObject(r);
        }
        free(argv);
        free(lens);
        free(watched);
        return NULL;
}

kc_probe_t *kc_probe_start(const kc_conf_t *conf, char (*users)[JOB_USER_MAX + 1], size_t n_users,
                           const char *inbox, size_t n_jobs, size_t every, kc_probe_idx_fn *idx_of,
                           const void *opaque)
{
        kc_probe_t *p = calloc(1, sizeof(*p));
        size_t slots = n_jobs / (every ? every : 1) + 1;

        if (!p || !n_users || n_users >= KC_PROBE_NO_USER || !every)
                goto fail;
        p->n_jobs = n_jobs;
        p->every = every;
        p->idx_of = idx_of;
        p->opaque = opaque;
        if (!(p->seen_us = calloc(slots, sizeof(*p->seen_us))) ||
            !(p->user_of = malloc(slots * sizeof(*p->user_of))) ||
            !(p->pending = calloc(n_users, sizeof(*p->pending))) ||
            !(p->keys = calloc(n_users, sizeof(*p->keys))))
                goto fail;
        for (size_t i = 0; i < slots; i++)
                p->user_of[i] = KC_PROBE_NO_USER;
        for (size_t u = 0; u < n_users; u++) {
                char key[KF_KEY_MAX];
                if (kf_user_key(key, conf->prefix, users[u], KF_K_INBOX, inbox) < 0) {
                        kc_err("bench: no inbox key for user %s, inbox %s", users[u], inbox);
                        goto fail;
                }
                if (!(p->keys[u] = strdup(key)))
                        goto fail;
                p->n_keys++;
        }
        p->redis = kc_redis(conf); /* exits 3 if Redis is unreachable */
        pthread_mutex_init(&p->lock, NULL);
        if (pthread_create(&p->tid, NULL, kc_probe_main, p)) {
                pthread_mutex_destroy(&p->lock);
                redisFree(p->redis);
                p->redis = NULL;
                goto fail;
        }
        return p;
fail:
        kc_probe_free(p);
        return NULL;
}

void kc_probe_add(kc_probe_t *p, size_t idx, size_t user)
{
        size_t slot = idx / p->every;

        if (idx >= p->n_jobs || idx % p->every || user >= p->n_keys)
                return;
        pthread_mutex_lock(&p->lock);
        if (p->user_of[slot] == KC_PROBE_NO_USER) {
                p->user_of[slot] = (uint32_t)user;
                if (!p->seen_us[slot])
                        p->pending[user]++;
        }
        pthread_mutex_unlock(&p->lock);
}

int kc_probe_finish(kc_probe_t *p, size_t expect, int64_t wait_us)
{
        pthread_mutex_lock(&p->lock);
        p->stopping = 1;
        p->expect = expect;
        p->deadline_us = kf_mono_us() + wait_us;
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->tid, NULL);
        pthread_mutex_destroy(&p->lock);
        redisFree(p->redis);
        p->redis = NULL;
        return p->failed ? -1 : 0;
}

int64_t kc_probe_seen_us(const kc_probe_t *p, size_t idx)
{
        return idx < p->n_jobs && idx % p->every == 0 ? p->seen_us[idx / p->every] : 0;
}

int kc_probe_overflowed(const kc_probe_t *p)
{
        return p->overflow;
}

void kc_probe_free(kc_probe_t *p)
{
        if (!p)
                return;
        for (size_t i = 0; i < p->n_keys; i++)
                free(p->keys[i]);
        free(p->keys);
        free(p->seen_us);
        free(p->user_of);
        free(p->pending);
        free(p);
}
