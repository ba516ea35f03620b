/* commit.c - the per-job atomic Redis step (Lua) and the pipelined writer
 * that sends a whole batch of steps in one round trip. */
#include "commit.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kf_util.h"

/* worker/step.lua, made a C string at build time (see the Makefile). */
static const char step_lua[] =
#include "step_lua.h"
    ;

#define STEP_MAX_ARGS 48

/* Every argument of one job's step, with the storage for its text. */
typedef struct step_args_s {
        const char *argv[STEP_MAX_ARGS];
        size_t len[STEP_MAX_ARGS];
        int argc;
        char k_result[KF_KEY_MAX], k_done[KF_KEY_MAX], k_usage[KF_KEY_MAX];
        char k_quota[KF_KEY_MAX], k_model[KF_KEY_MAX * 2], k_window[KF_KEY_MAX + 16];
        char ttl[16], rows[16], flops[24], version[16], shape[32], source[320];
        char qjobs[24], qrows[24], qwindow[24], ncommon[8];
        char enq[24], started[24], done[24];
} step_args_t;

static void arg(step_args_t *a, const char *s, size_t len)
{
        a->argv[a->argc] = s;
        a->len[a->argc]  = len;
        a->argc++;
}

static void sarg(step_args_t *a, const char *s)
{
        arg(a, s, strlen(s));
}

static void step_build(kw_redis_t *r, const kw_job_t *j, step_args_t *a)
{
        const job_t *job = &j->job;
        int ok           = j->err == KF_OK;
        rd_kafka_timestamp_type_t tstype;
        int64_t enq = rd_kafka_message_timestamp(j->rkm, &tstype);
        int first_common;

        a->argc = 0;
        kf_key(a->k_result, r->prefix, "result", job->id);
        kf_key(a->k_done, r->prefix, "done", job->id);
        if (job->user[0]) {
                kf_key(a->k_usage, r->prefix, "usage", job->user);
                kf_key(a->k_quota, r->prefix, "quota", job->user);
                snprintf(a->k_window, sizeof(a->k_window), "%s:window:", a->k_usage);
                if (job->model[0])
                        snprintf(a->k_model, sizeof(a->k_model), "%s:model:%s", a->k_usage,
                                 job->model);
                else
                        a->k_model[0] = '\0';
        } else { /* an error result for a job whose user is unreadable */
                kf_key(a->k_usage, r->prefix, "stats", NULL);
                kf_key(a->k_quota, r->prefix, "quota", "-");
                a->k_window[0] = a->k_model[0] = '\0';
        }
        snprintf(a->ttl, sizeof(a->ttl), "%u", job->ttl_s ? job->ttl_s : JOB_TTL_DEFAULT);
        snprintf(a->rows, sizeof(a->rows), "%u", job->rows);
        snprintf(a->flops, sizeof(a->flops), "%" PRIu64, ok ? j->flops : 0);
        snprintf(a->qjobs, sizeof(a->qjobs), "%lld", (long long)r->quota_jobs);
        snprintf(a->qrows, sizeof(a->qrows), "%lld", (long long)r->quota_rows);
        snprintf(a->qwindow, sizeof(a->qwindow), "%lld", (long long)r->quota_window);
        snprintf(a->source, sizeof(a->source), "%s/%d/%lld", rd_kafka_topic_name(j->rkm->rkt),
                 (int)j->rkm->partition, (long long)j->rkm->offset);
        snprintf(a->enq, sizeof(a->enq), "%lld", (long long)(enq > 0 ? enq : j->started_ms));
        snprintf(a->started, sizeof(a->started), "%lld", (long long)j->started_ms);
        snprintf(a->done, sizeof(a->done), "%lld", (long long)j->done_ms);

        sarg(a, a->k_result);
        sarg(a, a->k_done);
        sarg(a, a->k_usage);
        sarg(a, a->k_quota);
        sarg(a, a->ttl);
        sarg(a, ok ? "ok" : j->over_quota ? "over" : "error");
        sarg(a, a->rows);
        sarg(a, a->flops);
        sarg(a, a->qjobs);
        sarg(a, a->qrows);
        sarg(a, a->qwindow);
        sarg(a, a->k_model);
        sarg(a, a->k_window);
        sarg(a, ""); /* ncommon, filled in below */
        first_common = a->argc;

        sarg(a, "id");
        sarg(a, job->id);
        if (job->user[0]) {
                sarg(a, "user");
                sarg(a, job->user);
        }
        if (job->model[0]) {
                sarg(a, "model");
                sarg(a, job->model);
        }
        sarg(a, "worker");
        sarg(a, r->worker_id);
        sarg(a, "source");
        sarg(a, a->source);
        sarg(a, "enqueued");
        sarg(a, a->enq);
        sarg(a, "started");
        sarg(a, a->started);
        sarg(a, "done");
        sarg(a, a->done);
        snprintf(a->ncommon, sizeof(a->ncommon), "%d", a->argc - first_common);
        a->argv[first_common - 1] = a->ncommon;
        a->len[first_common - 1]  = strlen(a->ncommon);

        if (ok) {
                snprintf(a->version, sizeof(a->version), "%u", j->model_version);
                snprintf(a->shape, sizeof(a->shape), "%u,%u", j->out_rows, j->out_cols);
                sarg(a, "version");
                sarg(a, a->version);
                sarg(a, "shape");
                sarg(a, a->shape);
                sarg(a, "output");
                arg(a, (const char *)j->output, (size_t)j->out_rows * j->out_cols * sizeof(float));
        } else if (!j->over_quota) {
                sarg(a, "error");
                sarg(a, kf_err_name(j->err));
                sarg(a, "message");
                sarg(a, j->errmsg);
        }
}

static void redis_drop(kw_redis_t *r)
{
        if (r->c) {
                redisFree(r->c);
                r->c = NULL;
        }
}

static int redis_ensure(kw_redis_t *r, char *errstr, size_t errstr_size)
{
        if (r->c)
                return 0;
        if (!(r->c = kf_redis_connect(&r->url, r->timeout_ms, errstr, errstr_size)))
                return -1;
        if (kf_script_load(r->c, &r->step, errstr, errstr_size)) {
                redis_drop(r);
                return -1;
        }
        return 0;
}

int kw_redis_init(kw_redis_t *r, const char *url, int timeout_ms, char *errstr,
                  size_t errstr_size)
{
        r->c          = NULL;
        r->timeout_ms = timeout_ms;
        r->step.name  = "kinfer-step";
        r->step.src   = step_lua;
        if (kf_redis_url_parse(url, &r->url, errstr, errstr_size))
                return -1;
        return redis_ensure(r, errstr, errstr_size);
}

void kw_redis_close(kw_redis_t *r)
{
        redis_drop(r);
}

/* Applies one step's reply {code, warning} to its job. */
static void step_reply(kw_redis_t *r, kw_job_t *j, const redisReply *rep)
{
        long long code = -1;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[0]->type == REDIS_REPLY_INTEGER)
                code = rep->element[0]->integer;
        if (code == 4) { /* the window rolled over since the pre-check */
                j->state         = KW_JOB_NEW;
                j->over_quota    = 0;
                j->err           = KF_OK;
                j->precheck_done = 1;
                return;
        }
        j->state = KW_JOB_WRITTEN;
        if (code == 0) {
                r->duplicates++;
                kf_debug("job %s: result already exists (redelivery), not charged again",
                         j->job.id);
        } else {
                r->written++;
        }
        if (code < 0 || code > 4)
                kf_error("job %s: unexpected reply from the step script", j->job.id);
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[1]->type == REDIS_REPLY_STRING && rep->element[1]->len) {
                int64_t now = kf_mono_us();
                if (now - r->quota_warned_us > 10000000) { /* at most every 10 s */
                        r->quota_warned_us = now;
                        kf_warn("user %s: bad quota settings in Redis: %s", j->job.user,
                                rep->element[1]->str);
                }
        }
}

/* Sends one pipelined round of steps for the DONE jobs; marks what Redis
 * acknowledged.  Returns 0 if all acknowledged, 1 if some need another round
 * (NOSCRIPT), -1 on a connection error or a refused step. */
static int commit_round(kw_redis_t *r, kw_batch_t *b, char *errstr, size_t errstr_size)
{
        step_args_t *a = malloc(sizeof(*a));
        char stats[KF_KEY_MAX];
        int *sent = calloc((size_t)b->n + 1, sizeof(int));
        int nsent = 0, rc = 0, again = 0;

        if (!a || !sent) {
                rc = kf_errf(errstr, errstr_size, "out of memory");
                goto out;
        }
        kf_key(stats, r->prefix, "stats", NULL);
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                int arc;
                if (j->state != KW_JOB_DONE)
                        continue;
                if (!j->job.id[0]) /* nothing to key a result by: count it */
                        arc = redisAppendCommand(r->c, "HINCRBY %s undecodable 1", stats);
                else {
                        step_build(r, j, a);
                        arc = kf_script_append(r->c, &r->step, 4, a->argc, a->argv, a->len);
                }
                if (arc != REDIS_OK) {
                        rc = kf_errf(errstr, errstr_size, "out of memory");
                        goto out;
                }
                sent[nsent++] = i;
        }
        for (int s = 0; s < nsent; s++) {
                kw_job_t *j = &b->jobs[sent[s]];
                redisReply *rep;
                if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep) {
                        rc = kf_errf(errstr, errstr_size, "redis %s:%d: %s", r->url.host,
                                     r->url.port, r->c->errstr[0] ? r->c->errstr : "I/O error");
                        redis_drop(r);
                        goto out;
                }
                if (kf_reply_is_noscript(rep)) {
                        again = 1;
                } else if (rep->type == REDIS_REPLY_ERROR) {
                        /* OOM, BUSY, READONLY...: the step made no write (it fails
                         * on its first write or before), so retrying is safe. */
                        if (rc == 0)
                                kf_errf(errstr, errstr_size, "redis refused a result write: %.*s",
                                        (int)rep->len, rep->str);
                        rc = -1;
                } else if (!j->job.id[0]) {
                        j->state = KW_JOB_WRITTEN;
                        r->undecodable++;
                        kf_warn("message %s/%d/%lld has no readable job id, no result can be "
                                "written: %s",
                                rd_kafka_topic_name(j->rkm->rkt), (int)j->rkm->partition,
                                (long long)j->rkm->offset, j->errmsg);
                } else {
                        step_reply(r, j, rep);
                }
                freeReplyObject(rep);
        }
        if (rc == 0 && again) {
                kf_warn("redis lost the step script (restart or SCRIPT FLUSH): reloading");
                rc = kf_script_load(r->c, &r->step, errstr, errstr_size) ? -1 : 1;
                if (rc < 0)
                        redis_drop(r);
        }
out:
        free(a);
        free(sent);
        return rc;
}

/* One user's quota as the pre-check sees it. */
typedef struct pre_user_s {
        const char *user;
        int64_t max_jobs, max_rows, window; /* -1 = unlimited */
        int64_t used_jobs, used_rows;       /* in the window, plus this batch so far */
} pre_user_t;

/* A quota setting as the step reads it: invalid values mean the default. */
static int64_t pre_setting(const redisReply *v, int64_t def, int64_t lo, int64_t hi)
{
        int64_t n;
        if (v->type != REDIS_REPLY_STRING || kf_parse_i64(v->str, lo, hi, &n))
                return def;
        return n;
}

void kw_quota_precheck(kw_redis_t *r, kw_batch_t *b)
{
        pre_user_t *users = calloc((size_t)b->n + 1, sizeof(*users));
        int nusers = 0, sent = 0;
        int64_t now = kf_now_ms() / 1000;
        char key[KF_KEY_MAX];

        if (!users || !r->c)
                goto out;
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                int u;
                if (j->state != KW_JOB_NEW || j->precheck_done)
                        continue;
                for (u = 0; u < nusers && strcmp(users[u].user, j->job.user); u++)
                        ;
                if (u == nusers) {
                        users[nusers++].user = j->job.user;
                        kf_key(key, r->prefix, "quota", j->job.user);
                        redisAppendCommand(r->c, "HMGET %s jobs rows window", key);
                }
        }
        for (int u = 0; u < nusers; u++) {
                redisReply *rep;
                if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep)
                        goto io_error;
                if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3) {
                        users[u].max_jobs = pre_setting(rep->element[0], r->quota_jobs, 0, 1e15);
                        users[u].max_rows = pre_setting(rep->element[1], r->quota_rows, 0, 1e15);
                        users[u].window = pre_setting(rep->element[2], r->quota_window, 1, 31622400);
                } else {
                        users[u].max_jobs = users[u].max_rows = -1;
                }
                freeReplyObject(rep);
                if (users[u].max_jobs < 0 && users[u].max_rows < 0)
                        continue; /* unlimited: nothing to estimate */
                kf_key(key, r->prefix, "usage", users[u].user);
                redisAppendCommand(r->c, "HMGET %s:window:%lld jobs rows", key,
                                   (long long)(now - now % users[u].window));
                sent++;
        }
        for (int u = 0; u < nusers && sent; u++) {
                redisReply *rep;
                if (users[u].max_jobs < 0 && users[u].max_rows < 0)
                        continue;
                if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep)
                        goto io_error;
                if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2) {
                        users[u].used_jobs = pre_setting(rep->element[0], 0, 0, INT64_MAX);
                        users[u].used_rows = pre_setting(rep->element[1], 0, 0, INT64_MAX);
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
                        j->err        = KF_ERR_QUOTA_EXCEEDED;
                        j->state      = KW_JOB_DONE;
                        j->done_ms    = kf_now_ms();
                        continue;
                }
                pu->used_jobs++;
                pu->used_rows += j->job.rows;
        }
        goto out;
io_error:
        kf_warn("quota pre-check skipped: redis %s:%d: %s", r->url.host, r->url.port,
                r->c->errstr[0] ? r->c->errstr : "I/O error");
        redis_drop(r);
out:
        free(users);
}

int kw_commit_batch(kw_redis_t *r, kw_batch_t *b, char *errstr, size_t errstr_size)
{
        for (int round = 0; round < 3; round++) {
                int rc;
                if (redis_ensure(r, errstr, errstr_size))
                        return -1;
                rc = commit_round(r, b, errstr, errstr_size);
                if (rc <= 0)
                        return rc;
        }
        return kf_errf(errstr, errstr_size, "redis keeps losing the step script (NOSCRIPT)");
}
