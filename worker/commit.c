/* commit.c - the per-job atomic Redis step (Lua) and the pipelined writer
 * that sends a whole batch of steps in one round trip. */
#include "commit.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kf_quota.h"
#include "kf_util.h"
#include "mp_pack.h"

/* worker/step.lua, made a C string at build time (see the Makefile). */
static const char step_lua[] =
#include "step_lua.h"
    ;

#define GROUP_MAX_JOBS 128 /* jobs of one user per script call */

/* What the step script answers for each job (see step.lua). */
typedef enum {
        KW_STEP_DUPLICATE = 0, /* (user, id) already decided: nothing written or charged */
        KW_STEP_OK        = 1, /* ok result written and charged */
        KW_STEP_QUOTA     = 2, /* quota_exceeded result written */
        KW_STEP_ERROR     = 3, /* error result written */
        KW_STEP_RECOMPUTE = 4, /* pre-checked over quota, fits now: compute it */
        KW_STEP_DAMAGED   = 5, /* internal result: the user's counters are damaged */
} kw_step_code_t;

#define JOB_ARGS 5 /* ARGV entries per job (step.lua) */

/* A job's meta argument: struct '<BI4I4dI4B' in step.lua. */
#define STEP_META_LEN 22
enum { STEP_KIND_OK = 1, STEP_KIND_ERROR = 2, STEP_KIND_OVER = 3 };

/* The text one job's step arguments point into.  The result value itself
 * is in the group's value buffer, at voff (the buffer may move while the
 * group's values are packed, so pointers are taken afterwards). */
typedef struct step_text_s {
        char k_result[KF_KEY_MAX];
        unsigned char meta[STEP_META_LEN];
        uint32_t clen;
        uint8_t ncommon;
        size_t voff, vlen;
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

/* Packs job j's result value (docs/protocol.md, "Result") into sb: a map16
 * header, the pairs every result has (clen bytes, ncommon pairs), then the
 * kind's own.  The step needs the common part apart to build the results it
 * decides itself (quota_exceeded, damaged counters), and appends `window`
 * to an ok result, which the header already counts. */
static int pack_value(kw_redis_t *r, const kw_job_t *j, msgpack_sbuffer *sb, step_text_t *t)
{
        const job_t *job = &j->job;
        int ok           = j->err == KF_OK;
        rd_kafka_timestamp_type_t tstype;
        int64_t enq = rd_kafka_message_timestamp(j->rkm, &tstype);
        unsigned char hdr[3] = {0xde, 0, 0};
        msgpack_packer pk;
        size_t hpos = sb->size, cpos;
        char source[320];
        int ncommon = 8 + (job->model[0] != '\0');
        uint64_t nonfinite = 0;
        int nown;
        int rc;

        if (ok) /* an overflowing forward pass: say so, never pass it off as numbers */
                for (size_t i = 0; i < (size_t)j->out_rows * j->out_cols; i++)
                        nonfinite += !isfinite(j->output[i]);
        nown = ok ? 5 + (nonfinite > 0) : j->over_quota ? 0 : 3;
        msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
        t->voff = hpos;
        snprintf(source, sizeof(source), "%s/%d/%lld", rd_kafka_topic_name(j->rkm->rkt),
                 (int)j->rkm->partition, (long long)j->rkm->offset);
        hdr[1] = (unsigned char)((ncommon + nown) >> 8);
        hdr[2] = (unsigned char)(ncommon + nown);
        rc = msgpack_sbuffer_write(sb, (const char *)hdr, sizeof(hdr));
        cpos = sb->size;
        rc |= mp_pack_kv_u64(&pk, "v", JOB_PROTOCOL_VERSION);
        rc |= mp_pack_kv_str(&pk, "id", job->id);
        rc |= mp_pack_kv_str(&pk, "user", job->user);
        if (job->model[0])
                rc |= mp_pack_kv_str(&pk, "model", job->model);
        rc |= mp_pack_kv_str(&pk, "worker", r->worker_id);
        rc |= mp_pack_kv_str(&pk, "source", source);
        rc |= mp_pack_kv_u64(&pk, "enqueued", (uint64_t)(enq > 0 ? enq : j->started_ms));
        rc |= mp_pack_kv_u64(&pk, "started", (uint64_t)j->started_ms);
        rc |= mp_pack_kv_u64(&pk, "done", (uint64_t)j->done_ms);
        t->clen    = (uint32_t)(sb->size - cpos);
        t->ncommon = (uint8_t)ncommon;
        if (ok) {
                size_t n = (size_t)j->out_rows * j->out_cols;
                rc |= mp_pack_kv_str(&pk, "status", "ok");
                rc |= mp_pack_kv_u64(&pk, "version", j->model_version);
                rc |= mp_pack_cstr(&pk, "shape");
                rc |= msgpack_pack_array(&pk, 2);
                rc |= msgpack_pack_uint32(&pk, j->out_rows);
                rc |= msgpack_pack_uint32(&pk, j->out_cols);
                rc |= mp_pack_cstr(&pk, "output");
                rc |= mp_pack_f32_le(&pk, j->output, n);
                if (nonfinite)
                        rc |= mp_pack_kv_u64(&pk, "nonfinite", nonfinite);
        } else if (!j->over_quota) {
                rc |= mp_pack_kv_str(&pk, "status", "error");
                rc |= mp_pack_kv_str(&pk, "error", kf_err_name(j->err));
                rc |= mp_pack_kv_str(&pk, "message", j->errmsg);
        }
        t->vlen = sb->size - hpos;
        return rc ? -1 : 0;
}

static unsigned char *put_le(unsigned char *p, uint64_t v, int n)
{
        for (int i = 0; i < n; i++)
                *p++ = (unsigned char)(v >> (8 * i));
        return p;
}

/* Appends job j's JOB_ARGS entries (see step.lua); the value's pointer is
 * set by the caller once the group's buffer no longer moves. */
static void step_job_args(const kw_job_t *j, step_text_t *t, step_call_t *c)
{
        const job_t *job = &j->job;
        double flops     = j->err == KF_OK ? (double)j->flops : 0.0;
        uint64_t fbits;
        unsigned char *p = t->meta;

        memcpy(&fbits, &flops, sizeof(fbits));
        *p++ = j->err == KF_OK ? STEP_KIND_OK : j->over_quota ? STEP_KIND_OVER : STEP_KIND_ERROR;
        p    = put_le(p, job->ttl_s ? job->ttl_s : JOB_TTL_DEFAULT, 4);
        p    = put_le(p, job->rows, 4);
        p    = put_le(p, fbits, 8);
        p    = put_le(p, t->clen, 4);
        *p++ = t->ncommon;
        arg(c, (const char *)t->meta, STEP_META_LEN);
        sarg(c, job->id);
        sarg(c, job->model);
        sarg(c, job->inbox);
        arg(c, NULL, 0); /* the value */
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
        switch (code) {
        case KW_STEP_RECOMPUTE: /* the window rolled over since the pre-check */
                j->state         = KW_JOB_NEW;
                j->over_quota    = 0;
                j->err           = KF_OK;
                j->precheck_done = 1;
                return;
        case KW_STEP_DUPLICATE:
                r->duplicates++;
                kf_debug("job %s of user %s: already decided (redelivery or reused id), "
                         "not charged again",
                         j->job.id, j->job.user);
                break;
        case KW_STEP_OK:
        case KW_STEP_QUOTA:
        case KW_STEP_ERROR:
                r->written++;
                break;
        case KW_STEP_DAMAGED:
                r->written++;
                kf_error("job %s of user %s: answered internal, the user's usage records in "
                         "Redis are damaged (see the step's warning)",
                         j->job.id, j->job.user);
                break;
        default:
                kf_error("job %s: unexpected code %lld from the step script", j->job.id, code);
        }
        j->state = KW_JOB_WRITTEN;
}

/* Builds and appends one script call for jobs[idx[0..n-1]], all of one
 * user.  vals is the group's value buffer (reset here). */
static int append_group(kw_redis_t *r, kw_batch_t *b, const int *idx, int n, step_text_t *text,
                        msgpack_sbuffer *vals, step_call_t *call)
{
        const char *user = b->jobs[idx[0]].job.user;
        char usage[KF_KEY_MAX], quota[KF_KEY_MAX], models[KF_KEY_MAX], base[KF_KEY_MAX];
        char qj[24], qr[24], qw[24], hz[24], nj[16];
        int first_job;

        call->argc = 0;
        vals->size = 0;
        if (call_reserve(call, 3 + n + 6 + JOB_ARGS * n))
                return -1;
        /* The decoder admits only valid users and ids, so these cannot fail;
         * a key that was not built is never sent. */
        if (kf_user_key(usage, r->prefix, user, KF_K_USAGE, NULL) < 0 ||
            kf_user_key(quota, r->prefix, user, KF_K_QUOTA, NULL) < 0 ||
            kf_user_key(models, r->prefix, user, KF_K_MODELS, NULL) < 0 ||
            kf_user_base(base, r->prefix, user) < 0)
                return -2;
        snprintf(qj, sizeof(qj), "%lld", (long long)r->quota_jobs);
        snprintf(qr, sizeof(qr), "%lld", (long long)r->quota_rows);
        snprintf(qw, sizeof(qw), "%lld", (long long)r->quota_window);
        snprintf(hz, sizeof(hz), "%lld", (long long)r->charge_horizon);
        snprintf(nj, sizeof(nj), "%d", n);

        sarg(call, usage);
        sarg(call, quota);
        sarg(call, models);
        for (int i = 0; i < n; i++) {
                if (kf_user_key(text[i].k_result, r->prefix, user, KF_K_RESULT,
                                b->jobs[idx[i]].job.id) < 0)
                        return -2;
                sarg(call, text[i].k_result);
        }
        call->nkeys = call->argc;
        sarg(call, qj);
        sarg(call, qr);
        sarg(call, qw);
        sarg(call, hz);
        sarg(call, base);
        sarg(call, nj);
        first_job = call->argc;
        for (int i = 0; i < n; i++) {
                if (pack_value(r, &b->jobs[idx[i]], vals, &text[i]))
                        return -1;
                step_job_args(&b->jobs[idx[i]], &text[i], call);
        }
        for (int i = 0; i < n; i++) {
                int a        = first_job + i * JOB_ARGS + 4;
                call->argv[a] = vals->data + text[i].voff;
                call->len[a]  = text[i].vlen;
        }
        /* hiredis copies the arguments into its output buffer here, so the
         * text and values can be reused for the next group */
        return kf_script_append(r->c, &r->step, call->nkeys, call->argc, call->argv, call->len) ==
                       REDIS_OK
                   ? 0
                   : -1;
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
        msgpack_sbuffer vals;
        char stats[KF_KEY_MAX];
        int nord = 0, nents = 0, rc = 0, again = 0, role_change = 0;

        msgpack_sbuffer_init(&vals);
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
                switch (append_group(r, b, order + e->first, e->n, text, &vals, &call)) {
                case 0:
                        break;
                case -2: /* cannot happen for decoded jobs; never write a wrong key */
                        rc = kf_errf(errstr, errstr_size,
                                     "job %s: cannot build the Redis keys of user '%s'",
                                     j->job.id, j->job.user);
                        goto out;
                default:
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
                                kf_errf(errstr, errstr_size, "redis %s:%d refused a result "
                                        "write: %.*s",
                                        r->url.host, r->url.port, (int)rep->len, rep->str);
                        /* this server will not take writes in its role: a new
                         * connection may reach the new master */
                        role_change |= kf_reply_is_role_change(rep);
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
                                        kf_warn("user %s: bad data in Redis: %s",
                                                b->jobs[order[e->first]].job.user, warn->str);
                                }
                        }
                }
                freeReplyObject(rep);
        }
        if (role_change) {
                kf_warn("redis %s:%d cannot take writes in its role (failover?): "
                        "reconnecting",
                        r->url.host, r->url.port);
                redis_drop(r);
        }
        if (rc == 0 && again) {
                kf_warn("redis lost the step script (restart or SCRIPT FLUSH): reloading");
                rc = kf_script_load(r->c, &r->step, errstr, errstr_size) ? -1 : 1;
                if (rc < 0)
                        redis_drop(r);
        }
out:
        msgpack_sbuffer_destroy(&vals);
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
                        if (kf_user_key(key, r->prefix, j->job.user, KF_K_QUOTA, NULL) < 0)
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
                            pre_setting(rep->element[0], KF_QUOTA_JOBS, r->quota_jobs);
                        users[u].max_rows =
                            pre_setting(rep->element[1], KF_QUOTA_ROWS, r->quota_rows);
                        users[u].window =
                            pre_setting(rep->element[2], KF_QUOTA_WINDOW, r->quota_window);
                } else {
                        users[u].max_jobs = users[u].max_rows = -1;
                }
                freeReplyObject(rep);
                if (users[u].max_jobs < 0 && users[u].max_rows < 0)
                        continue; /* unlimited: nothing to estimate */
                char start[24];
                snprintf(start, sizeof(start), "%lld", (long long)(now - now % users[u].window));
                if (kf_user_key(key, r->prefix, users[u].user, KF_K_WINDOW, start) < 0)
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
