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

#define GROUP_MAX_JOBS 128 /* jobs of one user per script call */
#define JOB_MAX_ARGS   32  /* ARGV entries one job adds, at most */

/* The text one job's step arguments point into (stable while sent). */
typedef struct step_text_s {
        char k_result[KF_KEY_MAX], k_done[KF_KEY_MAX];
        char ttl[16], rows[16], flops[24], version[16], shape[32], source[320];
        char enq[24], started[24], done[24], ncommon[8], nown[8];
} step_text_t;

/* One script call's arguments: KEYS then ARGV. */
typedef struct step_call_s {
        const char **argv;
        size_t *len;
        int argc, cap, nkeys;
} step_call_t;

static int call_reserve(step_call_t *c, int more)
{
        if (c->argc + more > c->cap) {
                int ncap          = (c->argc + more) * 2;
                const char **nargv = realloc(c->argv, sizeof(*nargv) * (size_t)ncap);
                size_t *nlen;
                if (!nargv)
                        return -1;
                c->argv = nargv;
                if (!(nlen = realloc(c->len, sizeof(*nlen) * (size_t)ncap)))
                        return -1;
                c->len = nlen;
                c->cap = ncap;
        }
        return 0;
}

static void arg(step_call_t *c, const char *s, size_t len)
{
        c->argv[c->argc] = s;
        c->len[c->argc]  = len;
        c->argc++;
}

static void sarg(step_call_t *c, const char *s)
{
        arg(c, s, strlen(s));
}

/* Appends job j's block of ARGV entries (see step.lua), its text in t. */
static void step_job_args(kw_redis_t *r, const kw_job_t *j, step_text_t *t, step_call_t *c)
{
        const job_t *job = &j->job;
        int ok           = j->err == KF_OK;
        rd_kafka_timestamp_type_t tstype;
        int64_t enq = rd_kafka_message_timestamp(j->rkm, &tstype);
        int at_counts, first;

        snprintf(t->ttl, sizeof(t->ttl), "%u", job->ttl_s ? job->ttl_s : JOB_TTL_DEFAULT);
        snprintf(t->rows, sizeof(t->rows), "%u", job->rows);
        snprintf(t->flops, sizeof(t->flops), "%" PRIu64, ok ? j->flops : 0);
        snprintf(t->source, sizeof(t->source), "%s/%d/%lld", rd_kafka_topic_name(j->rkm->rkt),
                 (int)j->rkm->partition, (long long)j->rkm->offset);
        snprintf(t->enq, sizeof(t->enq), "%lld", (long long)(enq > 0 ? enq : j->started_ms));
        snprintf(t->started, sizeof(t->started), "%lld", (long long)j->started_ms);
        snprintf(t->done, sizeof(t->done), "%lld", (long long)j->done_ms);

        sarg(c, ok ? "ok" : j->over_quota ? "over" : "error");
        sarg(c, t->ttl);
        sarg(c, t->rows);
        sarg(c, t->flops);
        sarg(c, job->model);
        at_counts = c->argc;
        sarg(c, ""); /* ncommon and nown, filled in below */
        sarg(c, "");
        first = c->argc;

        sarg(c, "id");
        sarg(c, job->id);
        if (job->user[0]) {
                sarg(c, "user");
                sarg(c, job->user);
        }
        if (job->model[0]) {
                sarg(c, "model");
                sarg(c, job->model);
        }
        sarg(c, "worker");
        sarg(c, r->worker_id);
        sarg(c, "source");
        sarg(c, t->source);
        sarg(c, "enqueued");
        sarg(c, t->enq);
        sarg(c, "started");
        sarg(c, t->started);
        sarg(c, "done");
        sarg(c, t->done);
        snprintf(t->ncommon, sizeof(t->ncommon), "%d", c->argc - first);
        first = c->argc;
        if (ok) {
                snprintf(t->version, sizeof(t->version), "%u", j->model_version);
                snprintf(t->shape, sizeof(t->shape), "%u,%u", j->out_rows, j->out_cols);
                sarg(c, "version");
                sarg(c, t->version);
                sarg(c, "shape");
                sarg(c, t->shape);
                sarg(c, "output");
                arg(c, (const char *)j->output, (size_t)j->out_rows * j->out_cols * sizeof(float));
        } else if (!j->over_quota) {
                sarg(c, "error");
                sarg(c, kf_err_name(j->err));
                sarg(c, "message");
                sarg(c, j->errmsg);
        }
        snprintf(t->nown, sizeof(t->nown), "%d", c->argc - first);
        c->argv[at_counts]     = t->ncommon;
        c->len[at_counts]      = strlen(t->ncommon);
        c->argv[at_counts + 1] = t->nown;
        c->len[at_counts + 1]  = strlen(t->nown);
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

/* Applies a job's code from its group's reply (see step.lua). */
static void step_code(kw_redis_t *r, kw_job_t *j, long long code)
{
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
                kf_error("job %s: unexpected code %lld from the step script", j->job.id, code);
}

/* Builds and appends one script call for jobs[idx[0..n-1]], all of one user
 * (or all without a readable user). */
static int append_group(kw_redis_t *r, kw_batch_t *b, const int *idx, int n, step_text_t *text,
                        step_call_t *call)
{
        const char *user = b->jobs[idx[0]].job.user;
        char usage[KF_KEY_MAX], quota[KF_KEY_MAX], wprefix[KF_KEY_MAX + 16];
        char mprefix[KF_KEY_MAX + 16], qj[24], qr[24], qw[24], nj[16];

        call->argc = 0;
        if (call_reserve(call, 2 + 2 * n + 6 + JOB_MAX_ARGS * n))
                return -1;
        if (user[0]) {
                kf_key(usage, r->prefix, "usage", user);
                kf_key(quota, r->prefix, "quota", user);
                snprintf(wprefix, sizeof(wprefix), "%s:window:", usage);
                snprintf(mprefix, sizeof(mprefix), "%s:model:", usage);
        } else { /* error results of jobs whose user is unreadable */
                kf_key(usage, r->prefix, "stats", NULL);
                kf_key(quota, r->prefix, "quota", "-");
                wprefix[0] = mprefix[0] = '\0';
        }
        snprintf(qj, sizeof(qj), "%lld", (long long)r->quota_jobs);
        snprintf(qr, sizeof(qr), "%lld", (long long)r->quota_rows);
        snprintf(qw, sizeof(qw), "%lld", (long long)r->quota_window);
        snprintf(nj, sizeof(nj), "%d", n);

        sarg(call, usage);
        sarg(call, quota);
        for (int i = 0; i < n; i++) {
                kf_key(text[i].k_result, r->prefix, "result", b->jobs[idx[i]].job.id);
                kf_key(text[i].k_done, r->prefix, "done", b->jobs[idx[i]].job.id);
                sarg(call, text[i].k_result);
                sarg(call, text[i].k_done);
        }
        call->nkeys = call->argc;
        sarg(call, qj);
        sarg(call, qr);
        sarg(call, qw);
        sarg(call, wprefix);
        sarg(call, mprefix);
        sarg(call, nj);
        for (int i = 0; i < n; i++)
                step_job_args(r, &b->jobs[idx[i]], &text[i], call);
        /* hiredis copies the arguments into its output buffer here, so the
         * text can be reused for the next group */
        return kf_script_append(r->c, &r->step, call->nkeys, call->argc, call->argv, call->len);
}

/* A pipelined request of one round: a script call for a group of jobs, or
 * the count of one message without a readable id. */
typedef struct entry_s {
        int first, n; /* into order[] */
        int undecodable;
} entry_t;

/* Sends one pipelined round of steps for the DONE jobs, grouped by user;
 * marks what Redis acknowledged.  Returns 0 if all acknowledged, 1 if some
 * need another round (NOSCRIPT), -1 on a connection error or a refused step. */
static int commit_round(kw_redis_t *r, kw_batch_t *b, char *errstr, size_t errstr_size)
{
        int *order        = malloc(sizeof(int) * (size_t)(b->n + 1));
        char *grouped     = calloc((size_t)b->n + 1, 1);
        entry_t *ents     = malloc(sizeof(entry_t) * (size_t)(b->n + 1));
        step_text_t *text = malloc(sizeof(step_text_t) * GROUP_MAX_JOBS);
        step_call_t call  = {0};
        char stats[KF_KEY_MAX];
        int nord = 0, nents = 0, rc = 0, again = 0;

        if (!order || !grouped || !ents || !text) {
                rc = kf_errf(errstr, errstr_size, "out of memory");
                goto out;
        }
        kf_key(stats, r->prefix, "stats", NULL);
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                entry_t *e;
                if (j->state != KW_JOB_DONE || grouped[i])
                        continue;
                e = &ents[nents++];
                e->first       = nord;
                e->n           = 0;
                e->undecodable = !j->job.id[0];
                if (e->undecodable) { /* nothing to key a result by: count it */
                        order[nord++] = i;
                        e->n          = 1;
                        grouped[i]    = 1;
                        if (redisAppendCommand(r->c, "HINCRBY %s undecodable 1", stats) !=
                            REDIS_OK) {
                                rc = kf_errf(errstr, errstr_size, "out of memory");
                                goto out;
                        }
                        continue;
                }
                for (int k = i; k < b->n && e->n < GROUP_MAX_JOBS; k++) {
                        kw_job_t *o = &b->jobs[k];
                        if (o->state != KW_JOB_DONE || grouped[k] || !o->job.id[0] ||
                            strcmp(o->job.user, j->job.user))
                                continue;
                        order[nord++] = k;
                        grouped[k]    = 1;
                        e->n++;
                }
                if (append_group(r, b, order + e->first, e->n, text, &call) != REDIS_OK) {
                        rc = kf_errf(errstr, errstr_size, "out of memory");
                        goto out;
                }
        }
        for (int ei = 0; ei < nents; ei++) {
                entry_t *e = &ents[ei];
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
                } else if (e->undecodable) {
                        kw_job_t *j = &b->jobs[order[e->first]];
                        j->state    = KW_JOB_WRITTEN;
                        r->undecodable++;
                        kf_warn("message %s/%d/%lld has no readable job id, no result can be "
                                "written: %s",
                                rd_kafka_topic_name(j->rkm->rkt), (int)j->rkm->partition,
                                (long long)j->rkm->offset, j->errmsg);
                } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != (size_t)e->n + 1) {
                        if (rc == 0)
                                kf_errf(errstr, errstr_size, "unexpected reply from the step "
                                                             "script");
                        rc = -1;
                } else {
                        const redisReply *warn = rep->element[0];
                        for (int i = 0; i < e->n; i++) {
                                const redisReply *code = rep->element[i + 1];
                                step_code(r, &b->jobs[order[e->first + i]],
                                          code->type == REDIS_REPLY_INTEGER ? code->integer : -1);
                        }
                        if (warn->type == REDIS_REPLY_STRING && warn->len) {
                                int64_t now = kf_mono_us();
                                if (now - r->quota_warned_us > 10000000) { /* every 10 s */
                                        r->quota_warned_us = now;
                                        kf_warn("user %s: bad quota settings in Redis: %s",
                                                b->jobs[order[e->first]].job.user, warn->str);
                                }
                        }
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
        free(order);
        free(grouped);
        free(ents);
        free(text);
        free(call.argv);
        free(call.len);
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

        if (!users)
                goto out;
        if (!r->c) { /* reconnect at most once a second: the step decides anyway */
                int64_t now_us = kf_mono_us();
                char err[256];
                if (now_us - r->retry_us < 1000000)
                        goto out;
                r->retry_us = now_us;
                if (redis_ensure(r, err, sizeof(err))) {
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
