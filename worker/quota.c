/* quota.c - the quota pre-check: reads the users' quotas and window usage
 * and marks the jobs that would exceed them, so they are not computed. */
#include "quota.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kf_quota.h"
#include "kf_util.h"

int kw_precheck_open(kw_precheck_t *p, const char *url, int timeout_ms, const char *prefix,
                     const kw_quota_t *defaults, char *errstr, size_t errstr_size)
{
        p->prefix = prefix;
        p->defaults = *defaults;
        p->retry_us = 0;
        return kw_redis_open(&p->redis, url, timeout_ms, NULL, errstr, errstr_size);
}

void kw_precheck_close(kw_precheck_t *p)
{
        kw_redis_close(&p->redis);
}

/* One user's quota as the pre-check sees it. */
typedef struct pre_user_s {
        const char *user;
        int64_t max_jobs, max_rows, window; /* -1 = unlimited */
        int64_t used_jobs, used_rows;       /* in the window, plus this batch so far */
} pre_user_t;

/* A quota setting as the step reads it: invalid values mean the default. */
static int64_t pre_setting(const redisReply *v, kf_quota_field_t f, int64_t def)
{
        int64_t n;
        if (v->type != REDIS_REPLY_STRING || kf_quota_parse(f, v->str, v->len, &n, NULL, 0))
                return def;
        return n;
}

/* A usage counter; anything but a plain integer counts as 0 here (the step
 * reports damaged counters). */
static int64_t pre_used(const redisReply *v)
{
        int64_t n;
        if (v->type != REDIS_REPLY_STRING || kf_parse_i64(v->str, 0, INT64_MAX, &n))
                return 0;
        return n;
}

void kw_quota_precheck(kw_precheck_t *p, kw_batch_t *b)
{
        kw_redis_t *r = &p->redis;
        pre_user_t *users = calloc((size_t)b->n + 1, sizeof(*users));
        int nusers = 0, sent = 0;
        int64_t now = kf_now_ms() / 1000;
        char key[KF_KEY_MAX];

        if (!users)
                goto out;
        if (!r->c) { /* reconnect at most once a second: the step decides anyway */
                int64_t now_us = kf_mono_us();
                char err[256];
                if (now_us - p->retry_us < 1000000)
                        goto out;
                p->retry_us = now_us;
                if (kw_redis_ensure(r, err, sizeof(err))) {
                        kf_debug("quota pre-check skipped: %s", err);
                        goto out;
                }
        }
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                int u;
                if (j->state != KW_JOB_NEW || j->precheck_done)
                        continue;
                for (u = 0; u < nusers && strcmp(users[u].user, j->job.user); u++)
                        ;
                if (u == nusers) {
                        users[nusers++].user = j->job.user;
                        if (kf_user_key(key, p->prefix, j->job.user, KF_K_QUOTA, NULL) < 0)
                                key[0] = '\0'; /* no such user: reads nothing */
                        redisAppendCommand(r->c, "HMGET %s jobs rows window", key);
                }
        }
        for (int u = 0; u < nusers; u++) {
                redisReply *rep;
                if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep)
                        goto io_error;
                if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3) {
                        users[u].max_jobs =
                            pre_setting(rep->element[0], KF_QUOTA_JOBS, p->defaults.jobs);
                        users[u].max_rows =
                            pre_setting(rep->element[1], KF_QUOTA_ROWS, p->defaults.rows);
                        users[u].window =
                            pre_setting(rep->element[2], KF_QUOTA_WINDOW, p->defaults.window);
                } else {
                        users[u].max_jobs = users[u].max_rows = -1;
                }
                freeReplyObject(rep);
                if (users[u].max_jobs < 0 && users[u].max_rows < 0)
                        continue; /* unlimited: nothing to estimate */
                char start[24];
                snprintf(start, sizeof(start), "%lld", (long long)(now - now % users[u].window));
                if (kf_user_key(key, p->prefix, users[u].user, KF_K_WINDOW, start) < 0)
                        key[0] = '\0';
                redisAppendCommand(r->c, "HMGET %s jobs rows", key);
                sent++;
        }
        for (int u = 0; u < nusers && sent; u++) {
                redisReply *rep;
                if (users[u].max_jobs < 0 && users[u].max_rows < 0)
                        continue;
                if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep)
                        goto io_error;
                if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2) {
                        users[u].used_jobs = pre_used(rep->element[0]);
                        users[u].used_rows = pre_used(rep->element[1]);
                }
                freeReplyObject(rep);
        }
        /* Walk the batch in order, as the steps will run. */
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                pre_user_t *pu;
                int u;
                if (j->state != KW_JOB_NEW || j->precheck_done)
                        continue;
                j->precheck_done = 1;
                for (u = 0; u < nusers && strcmp(users[u].user, j->job.user); u++)
                        ;
                pu = &users[u];
                if ((pu->max_jobs >= 0 && pu->used_jobs + 1 > pu->max_jobs) ||
                    (pu->max_rows >= 0 && pu->used_rows + j->job.rows > pu->max_rows)) {
                        j->over_quota = 1;
                        j->err = KF_ERR_QUOTA_EXCEEDED;
                        j->state = KW_JOB_DONE;
                        j->done_ms = kf_now_ms();
                        continue;
                }
                pu->used_jobs++;
                pu->used_rows += j->job.rows;
        }
        goto out;
io_error:
        kf_warn("quota pre-check skipped: redis %s:%d: %s", r->url.host, r->url.port,
                r->c->errstr[0] ? r->c->errstr : "I/O error");
        kw_redis_drop(r);
out:
        free(users);
}
