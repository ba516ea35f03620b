/* auth.c - verifies signed jobs against their user's keys (see auth.h):
 * the headers, the key cache, the key store reads, the verdicts. */
#include "auth.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_NONFATAL_OOM        1
#define uthash_nonfatal_oom(elt) ((elt)->hh_oom = 1)
#include <uthash.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kf_sign.h"
#include "kf_util.h"

#define KW_AUTH_CACHE_MAX 65536 /* entries; beyond it the cache starts over */

typedef enum {
        KEY_PENDING = 0, /* asked for in this round */
        KEY_ACTIVE,
        KEY_MISSING, /* no such key id for this user */
        KEY_REVOKED,
        KEY_BROKEN, /* the record in Redis cannot be used (named in the log) */
} key_state_t;

struct kw_key_entry_s {
        char name[JOB_USER_MAX + 1 + KF_SIGN_KID_LEN + 1]; /* "USER KID": ' ' is no id char */
        key_state_t state;
        int64_t until_us; /* trusted until */
        kf_verify_key_t key;
        int hh_oom;
        UT_hash_handle hh;
};

int kw_auth_open(kw_auth_t *a, const char *url, int timeout_ms, const char *prefix, int require,
                 int64_t ttl_ms, char *errstr, size_t errstr_size)
{
        memset(a, 0, sizeof(*a));
        a->prefix = prefix;
        a->require = require;
        a->ttl_us = ttl_ms * 1000;
        return kw_redis_open(&a->redis, url, timeout_ms, NULL, errstr, errstr_size);
}

static void cache_clear(kw_auth_t *a)
{
        kw_key_entry_t *e, *tmp;
        HASH_ITER(hh, a->cache, e, tmp)
        {
                HASH_DEL(a->cache, e);
                kf_verify_key_clear(&e->key);
                free(e);
        }
        a->n_cached = 0;
}

void kw_auth_close(kw_auth_t *a)
{
        if (!a)
                return;
        cache_clear(a);
        kw_redis_close(&a->redis);
}

static void deny(kw_job_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void deny(kw_job_t *j, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->errmsg, sizeof(j->errmsg), fmt, ap);
        va_end(ap);
        j->err = KF_ERR_UNAUTHORIZED;
        j->state = KW_JOB_DONE;
        j->over_quota = 0;
        free(j->job.input); /* never computed */
        j->job.input = NULL;
        j->done_ms = kf_now_ms();
        j->auth_done = 1;
}

/* One header's only value: 1 found (in *val, *size), 0 absent, -1 given
 * more than once (which one would count is ambiguous: refused). */
static int header(rd_kafka_headers_t *hdrs, const char *name, const void **val, size_t *size)
{
        const void *v2;
        size_t s2;
        if (!hdrs || rd_kafka_header_get(hdrs, 0, name, val, size) != RD_KAFKA_RESP_ERR_NO_ERROR)
                return 0;
        if (rd_kafka_header_get(hdrs, 1, name, &v2, &s2) == RD_KAFKA_RESP_ERR_NO_ERROR)
                return -1;
        return *val ? 1 : -1; /* a header without a value is no signature */
}

/* What a job's headers say: its signature, key id and algorithm.  Returns
 * 1 signed (well formed), 0 unsigned (none of the three headers), -1 with
 * j denied (malformed or partial). */
typedef struct job_sig_s {
        kf_sign_alg_t alg;
        char kid[KF_SIGN_KID_LEN + 1];
        unsigned char sig[KF_SIGN_SIG_MAX];
        size_t siglen;
} job_sig_t;

static int read_sig(kw_job_t *j, job_sig_t *s)
{
        rd_kafka_headers_t *hdrs = NULL;
        const void *v[3] = {0};
        size_t n[3] = {0};
        const char *names[3] = {KF_SIGN_HDR_SIG, KF_SIGN_HDR_KID, KF_SIGN_HDR_ALG};
        int found = 0;

        if (rd_kafka_message_headers(j->rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
                hdrs = NULL;
        for (int i = 0; i < 3; i++) {
                int rc = header(hdrs, names[i], &v[i], &n[i]);
                if (rc < 0) {
                        deny(j, "header %s is given more than once or without a value", names[i]);
                        return -1;
                }
                found += rc;
        }
        if (!found)
                return 0;
        if (found < 3) {
                deny(j, "a signed job needs all three headers %s, %s and %s, it has %d",
                     KF_SIGN_HDR_SIG, KF_SIGN_HDR_KID, KF_SIGN_HDR_ALG, found);
                return -1;
        }
        s->alg = kf_sign_alg_parse(v[2], n[2]);
        if (s->alg == KF_SIGN_NONE) {
                deny(j, "header %s is not hmac-sha256 or ed25519", KF_SIGN_HDR_ALG);
                return -1;
        }
        if (!kf_sign_kid_valid(v[1], n[1])) {
                deny(j, "header %s is not a key id ('k' and 16 lowercase hex digits)",
                     KF_SIGN_HDR_KID);
                return -1;
        }
        memcpy(s->kid, v[1], KF_SIGN_KID_LEN);
        s->kid[KF_SIGN_KID_LEN] = '\0';
        s->siglen = kf_sign_sig_len(s->alg);
        if (kf_hex_decode(v[0], n[0], s->sig, s->siglen)) {
                deny(j, "header %s is not %s hex digits", KF_SIGN_HDR_SIG,
                     s->alg == KF_SIGN_HMAC ? "64" : "128");
                return -1;
        }
        return 1;
}

static kw_key_entry_t *entry_get(kw_auth_t *a, const char *user, const char *kid, int64_t now)
{
        char name[sizeof(((kw_key_entry_t *)0)->name)];
        kw_key_entry_t *e;
        snprintf(name, sizeof(name), "%s %s", user, kid);
        HASH_FIND_STR(a->cache, name, e);
        if (e && e->state != KEY_PENDING && now >= e->until_us) {
                HASH_DEL(a->cache, e);
                kf_verify_key_clear(&e->key);
                free(e);
                a->n_cached--;
                e = NULL;
        }
        if (e)
                return e;
        if (!(e = calloc(1, sizeof(*e))))
                return NULL;
        memcpy(e->name, name, sizeof(name));
        HASH_ADD_STR(a->cache, name, e);
        if (e->hh_oom) {
                free(e);
                return NULL;
        }
        a->n_cached++;
        return e;
}

/* Fills a PENDING entry from HMGET KID:alg KID:state KID:key. */
static void entry_fill(kw_auth_t *a, kw_key_entry_t *e, const redisReply *rep, int64_t now)
{
        char err[128];
        unsigned char material[KF_SIGN_KEY_LEN];
        const redisReply *alg, *state, *key;
        e->until_us = now + a->ttl_us;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3) {
                kf_warn("signing key %s: the keys hash is not a hash: %s", e->name,
                        rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
                e->state = KEY_BROKEN;
                return;
        }
        alg = rep->element[0];
        state = rep->element[1];
        key = rep->element[2];
        if (alg->type != REDIS_REPLY_STRING) {
                e->state = KEY_MISSING;
                return;
        }
        if (state->type == REDIS_REPLY_STRING && !strcmp(state->str, "revoked")) {
                e->state = KEY_REVOKED;
                return;
        }
        e->state = KEY_BROKEN;
        if (state->type != REDIS_REPLY_STRING || strcmp(state->str, "active") ||
            key->type != REDIS_REPLY_STRING ||
            kf_hex_decode(key->str, key->len, material, sizeof(material)) ||
            kf_verify_key_init(&e->key, kf_sign_alg_parse(alg->str, alg->len), material, err,
                               sizeof(err))) {
                kf_warn("signing key %s: its record in Redis is malformed (alg, state or key); "
                        "jobs signed with it are unauthorized",
                        e->name);
                return;
        }
        e->state = KEY_ACTIVE;
}

/* Reads the PENDING entries in one pipelined round trip.  Returns 0 or -1
 * with why (the entries stay PENDING). */
static int fetch(kw_auth_t *a, kw_key_entry_t **want, int n, char *why, size_t why_size)
{
        kw_redis_t *r = &a->redis;
        char key[KF_KEY_MAX], user[JOB_USER_MAX + 1];
        int64_t now;

        if (!r->c) {
                int64_t now_us = kf_mono_us();
                if (now_us - a->retry_us < 200000)
                        return kf_errf(why, why_size, "redis %s:%d unreachable", r->url.host,
                                       r->url.port);
                a->retry_us = now_us;
                if (kw_redis_ensure(r, why, why_size))
                        return -1;
        }
        for (int i = 0; i < n; i++) {
                const char *sp = strchr(want[i]->name, ' ');
                const char *kid = sp + 1;
                memcpy(user, want[i]->name, (size_t)(sp - want[i]->name));
                user[sp - want[i]->name] = '\0';
                if (kf_user_key(key, a->prefix, user, KF_K_KEYS, NULL) < 0)
                        key[0] = '\0';
                redisAppendCommand(r->c, "HMGET %s %s:alg %s:state %s:key", key, kid, kid, kid);
        }
        now = kf_mono_us();
        for (int i = 0; i < n; i++) {
                redisReply *rep;
                if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep) {
                        kf_errf(why, why_size, "redis %s:%d: %s", r->url.host, r->url.port,
                                r->c->errstr[0] ? r->c->errstr : "I/O error");
                        kw_redis_drop(r);
                        return -1;
                }
                /* Only WRONGTYPE says the record itself is bad.  Any other
                 * error (NOPERM: the worker's ACL user may not read the
                 * keys; LOADING, MASTERDOWN: a restart or failover) says
                 * nothing about the key: the jobs wait, as for an outage,
                 * rather than be answered unauthorized.  The connection is
                 * dropped with the replies still pending. */
                if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "WRONGTYPE", 9)) {
                        kf_errf(why, why_size, "redis %s:%d refused reading signing key %s: %s",
                                r->url.host, r->url.port, want[i]->name, rep->str);
                        freeReplyObject(rep);
                        kw_redis_drop(r);
                        return -1;
                }
                entry_fill(a, want[i], rep, now);
                freeReplyObject(rep);
                a->lookups++;
        }
        return 0;
}

static void verdict(kw_job_t *j, const job_sig_t *s, const kw_key_entry_t *e)
{
        switch (e->state) {
        case KEY_MISSING:
                deny(j, "key %s is not a key of user %s", s->kid, j->job.user);
                return;
        case KEY_REVOKED:
                deny(j, "key %s of user %s is revoked", s->kid, j->job.user);
                return;
        case KEY_ACTIVE:
                if (e->key.alg != s->alg) {
                        deny(j, "key %s is an %s key, the job says otherwise in kinfer-sig-alg",
                             s->kid, kf_sign_alg_name(e->key.alg));
                        return;
                }
                if (s->alg == KF_SIGN_ED25519) { /* a compute thread checks it (batch.h) */
                        memcpy(j->sig_pub, e->key.material, sizeof(j->sig_pub));
                        memcpy(j->sig, s->sig, sizeof(j->sig));
                        memcpy(j->sig_kid, s->kid, sizeof(j->sig_kid));
                        j->sig_pending = 1;
                        j->auth_done = 1;
                        return;
                }
                if (!kf_verify(&e->key, j->rkm->payload, j->rkm->len, s->sig, s->siglen)) {
                        deny(j, "the signature does not match the message (key %s of user %s)",
                             s->kid, j->job.user);
                        return;
                }
                j->auth_done = 1;
                return;
        default:
                deny(j, "key %s of user %s cannot be used (its record is malformed)", s->kid,
                     j->job.user);
        }
}

int kw_auth_check(kw_auth_t *a, kw_batch_t *b, char *why, size_t why_size)
{
        kw_key_entry_t **want = NULL, **of = NULL;
        job_sig_t *sigs = NULL;
        int nwant = 0, waiting = 0;
        int64_t now = kf_mono_us();

        /* Many key ids (forged ones): start over, before this batch takes
         * pointers to entries (never during it). */
        if (a->n_cached + (unsigned)b->n > KW_AUTH_CACHE_MAX)
                cache_clear(a);
        if (!(sigs = calloc((size_t)b->n, sizeof(*sigs))) ||
            !(of = calloc((size_t)b->n, sizeof(*of))) ||
            !(want = calloc((size_t)b->n, sizeof(*want)))) {
                kf_errf(why, why_size, "out of memory checking signatures");
                waiting = b->n;
                goto out;
        }
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                int rc;
                if (j->auth_done || !j->job.id[0] || j->state == KW_JOB_HELD)
                        continue; /* no address: the dead-letter stage's */
                rc = read_sig(j, &sigs[i]);
                if (rc < 0)
                        continue;
                if (rc == 0) {
                        if (a->require)
                                deny(j,
                                     "the job is unsigned and this worker requires signed jobs "
                                     "(headers %s, %s, %s)",
                                     KF_SIGN_HDR_SIG, KF_SIGN_HDR_KID, KF_SIGN_HDR_ALG);
                        j->auth_done = 1;
                        continue;
                }
                if (!(of[i] = entry_get(a, j->job.user, sigs[i].kid, now))) {
                        kf_errf(why, why_size, "out of memory caching signing keys");
                        waiting++;
                        continue;
                }
                if (of[i]->state == KEY_PENDING) {
                        int k;
                        for (k = 0; k < nwant && want[k] != of[i]; k++)
                                ;
                        if (k == nwant)
                                want[nwant++] = of[i];
                }
        }
        if (nwant && fetch(a, want, nwant, why, why_size)) {
                for (int i = 0; i < b->n; i++)
                        waiting += of[i] && of[i]->state == KEY_PENDING;
                goto out;
        }
        for (int i = 0; i < b->n; i++)
                if (of[i] && of[i]->state != KEY_PENDING)
                        verdict(&b->jobs[i], &sigs[i], of[i]);
out:
        free(sigs);
        free(of);
        free(want);
        return waiting;
}
