/* commit.c - the step writer: sends a batch's step calls pipelined, one
 * round trip, and applies the step's answers to the jobs. */
#include "commit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kf_log_limit.h"
#include "kf_util.h"

/* worker/step.lua, made a C string at build time (see the Makefile). */
static const char step_lua[] =
#include "step_lua.h"
    ;

/* What the step script answers for each job (see step.lua). */
typedef enum {
        KW_STEP_UNKNOWN = -1,  /* not a code: the reply element is no integer */
        KW_STEP_DUPLICATE = 0, /* (user, id) already decided: nothing written or charged */
        KW_STEP_OK = 1,        /* ok result written and charged */
        KW_STEP_QUOTA = 2,     /* quota_exceeded result written */
        KW_STEP_ERROR = 3,     /* error result written */
        KW_STEP_RECOMPUTE = 4, /* pre-checked over quota, fits now: compute it */
        KW_STEP_DAMAGED = 5,   /* internal result: the user's counters are damaged */
        KW_STEP_UNAUTH = 6,    /* unauthorized result written: not charged, not counted */
} kw_step_code_t;

int kw_commit_open(kw_commit_t *cm, const char *url, int timeout_ms, const kw_step_conf_t *conf,
                   char *errstr, size_t errstr_size)
{
        const kf_script_t step = {"kinfer-step", step_lua, ""};
        cm->conf = conf;
        cm->warned_us = 0;
        cm->written = 0;
        cm->duplicates = 0;
        cm->undecodable = 0;
        cm->metrics = NULL;
        cm->series = NULL;
        return kw_redis_open(&cm->redis, url, timeout_ms, &step, errstr, errstr_size);
}

void kw_commit_close(kw_commit_t *cm)
{
        kw_redis_close(&cm->redis);
}

/* Counts a job's result in the metrics, under the model it ran on (none if
 * it never resolved one). */
static void count_result(kw_commit_t *cm, const kw_job_t *j, kf_err_t code)
{
        const char *name = j->model ? j->model->name : "";
        uint32_t version = j->model ? j->model->version : 0;
        if (!cm->series || version != cm->series_version || strcmp(name, cm->series_model)) {
                cm->series = kw_metrics_series(cm->metrics, name, version);
                kf_strlcpy(cm->series_model, name, sizeof(cm->series_model));
                cm->series_version = version;
        }
        kw_metrics_series_add(cm->series, code, 1);
}

/* Applies a job's code from its group's reply (see step.lua). */
static void step_code(kw_commit_t *cm, kw_job_t *j, long long code)
{
        switch (code) {
        case KW_STEP_RECOMPUTE: /* the window rolled over since the pre-check */
                j->state = KW_JOB_NEW;
                j->over_quota = 0;
                j->err = KF_OK;
                j->precheck_done = 1;
                return;
        case KW_STEP_DUPLICATE:
                cm->duplicates++;
                kw_metrics_add(cm->metrics, KW_C_DUPLICATES, 1);
                kf_debug("job %s of user %s: already decided (redelivery or reused id), "
                         "not charged again",
                         j->job.id, j->job.user);
                break;
        case KW_STEP_OK:
                cm->written++;
                count_result(cm, j, KF_OK);
                break;
        case KW_STEP_QUOTA:
                cm->written++;
                count_result(cm, j, KF_ERR_QUOTA_EXCEEDED);
                break;
        case KW_STEP_ERROR:
                cm->written++;
                count_result(cm, j, j->err);
                break;
        case KW_STEP_UNAUTH:
                cm->written++;
                count_result(cm, j, KF_ERR_UNAUTHORIZED);
                /* one line per forged job would be the forger's to multiply */
                kf_info_limited("unauthorized job",
                                "job %s of user %s (%s/%d/%lld): unauthorized: %s", j->job.id,
                                j->job.user, rd_kafka_topic_name(j->rkm->rkt),
                                (int)j->rkm->partition, (long long)j->rkm->offset, j->errmsg);
                break;
        case KW_STEP_DAMAGED:
                cm->written++;
                count_result(cm, j, KF_ERR_INTERNAL);
                kf_error_limited(
                    "job of a user with damaged usage records",
                    "job %s of user %s (%s/%d/%lld): answered internal, the user's usage "
                    "records in Redis are damaged (see the step's warning)",
                    j->job.id, j->job.user, rd_kafka_topic_name(j->rkm->rkt),
                    (int)j->rkm->partition, (long long)j->rkm->offset);
                break;
        case KW_STEP_UNKNOWN:
        default:
                kf_error_limited("unexpected step code",
                                 "job %s (%s/%d/%lld): unexpected code %lld from the step script",
                                 j->job.id, rd_kafka_topic_name(j->rkm->rkt),
                                 (int)j->rkm->partition, (long long)j->rkm->offset, code);
        }
        j->state = KW_JOB_WRITTEN;
}

/* Keeps the result value the step answered for a written job, for the
 * result topic (results_topic.h); nil (a duplicate pre-checked over quota
 * whose first result is gone) keeps none.  Returns 0, or -1 when out of
 * memory (the job goes back to DONE: its next round is a duplicate that
 * answers the same value). */
static int keep_value(kw_job_t *j, const redisReply *v)
{
        free(j->rt_value);
        j->rt_value = NULL;
        j->rt_len = 0;
        if (v->type != REDIS_REPLY_STRING)
                return 0;
        if (!(j->rt_value = malloc(v->len ? v->len : 1))) {
                j->state = KW_JOB_DONE;
                return -1;
        }
        memcpy(j->rt_value, v->str, v->len);
        j->rt_len = v->len;
        return 0;
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
static int commit_round(kw_commit_t *cm, kw_batch_t *b, char *errstr, size_t errstr_size)
{
        kw_redis_t *r = &cm->redis;
        int *order = malloc(sizeof(int) * (size_t)(b->n + 1));
        char *grouped = calloc((size_t)b->n + 1, 1);
        entry_t *ents = malloc(sizeof(entry_t) * (size_t)(b->n + 1));
        kw_step_call_t *call = calloc(1, sizeof(*call));
        char stats[KF_KEY_MAX];
        int nord = 0, nents = 0, rc = 0, again = 0, role_change = 0;

        if (!order || !grouped || !ents || !call) {
                rc = kf_errf(errstr, errstr_size, "out of memory");
                goto out;
        }
        kf_key(stats, cm->conf->prefix, "stats", NULL);
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                entry_t *e;
                if (j->state != KW_JOB_DONE || grouped[i])
                        continue;
                e = &ents[nents++];
                e->first = nord;
                e->n = 0;
                e->undecodable = !j->job.id[0];
                if (e->undecodable) { /* nothing to key a result by: count it */
                        order[nord++] = i;
                        e->n = 1;
                        grouped[i] = 1;
                        if (redisAppendCommand(r->c, "HINCRBY %s undecodable 1", stats) !=
                            REDIS_OK) {
                                rc = kf_errf(errstr, errstr_size, "out of memory");
                                goto unsent;
                        }
                        continue;
                }
                for (int k = i; k < b->n && e->n < KW_STEP_GROUP_MAX; k++) {
                        kw_job_t *o = &b->jobs[k];
                        if (o->state != KW_JOB_DONE || grouped[k] || !o->job.id[0] ||
                            strcmp(o->job.user, j->job.user))
                                continue;
                        order[nord++] = k;
                        grouped[k] = 1;
                        e->n++;
                }
                switch (kw_step_args(call, cm->conf, b, order + e->first, e->n)) {
                case 0:
                        /* hiredis copies the arguments into its output buffer
                         * here, so the call can be reused for the next group */
                        if (kf_script_append(r->c, &r->script, call->nkeys, call->argc, call->argv,
                                             call->len) != REDIS_OK) {
                                rc = kf_errf(errstr, errstr_size, "out of memory");
                                goto unsent;
                        }
                        break;
                case -2: /* cannot happen for decoded jobs; never write a wrong key */
                        rc = kf_errf(errstr, errstr_size,
                                     "job %s: cannot build the Redis keys of user '%s'", j->job.id,
                                     j->job.user);
                        goto unsent;
                default:
                        rc = kf_errf(errstr, errstr_size, "out of memory");
                        goto unsent;
                }
        }
        for (int ei = 0; ei < nents; ei++) {
                entry_t *e = &ents[ei];
                redisReply *rep;
                if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep) {
                        rc = kf_errf(errstr, errstr_size, "redis %s:%d: %s", r->url.host,
                                     r->url.port, r->c->errstr[0] ? r->c->errstr : "I/O error");
                        kw_redis_drop(r);
                        goto out;
                }
                if (kf_reply_is_noscript(rep)) {
                        again = 1;
                } else if (rep->type == REDIS_REPLY_ERROR) {
                        /* OOM, BUSY, READONLY...: the step made no write (it fails
                         * on its first write or before), so retrying is safe. */
                        if (rc == 0)
                                kf_errf(errstr, errstr_size,
                                        "redis %s:%d refused a result "
                                        "write: %.*s",
                                        r->url.host, r->url.port, (int)rep->len, rep->str);
                        /* this server will not take writes in its role: a new
                         * connection may reach the new master */
                        role_change |= kf_reply_is_role_change(rep);
                        rc = -1;
                } else if (e->undecodable) {
                        kw_job_t *j = &b->jobs[order[e->first]];
                        j->state = KW_JOB_WRITTEN;
                        cm->undecodable++;
                        kf_warn_limited(
                            "message without a readable job id",
                            "message %s/%d/%lld has no readable job id, no result can be "
                            "written: %s",
                            rd_kafka_topic_name(j->rkm->rkt), (int)j->rkm->partition,
                            (long long)j->rkm->offset, j->errmsg);
                } else if (rep->type != REDIS_REPLY_ARRAY ||
                           rep->elements != (size_t)e->n * (cm->conf->results_topic ? 2 : 1) + 1) {
                        if (rc == 0)
                                kf_errf(errstr, errstr_size,
                                        "unexpected reply from the step "
                                        "script");
                        rc = -1;
                } else {
                        const redisReply *warn = rep->element[0];
                        for (int i = 0; i < e->n; i++) {
                                const redisReply *code = rep->element[i + 1];
                                kw_job_t *j = &b->jobs[order[e->first + i]];
                                step_code(cm, j,
                                          code->type == REDIS_REPLY_INTEGER ? code->integer
                                                                            : KW_STEP_UNKNOWN);
                                if (cm->conf->results_topic && j->state == KW_JOB_WRITTEN &&
                                    keep_value(j, rep->element[e->n + 1 + i])) {
                                        if (rc == 0)
                                                kf_errf(errstr, errstr_size, "out of memory");
                                        rc = -1;
                                }
                        }
                        if (warn->type == REDIS_REPLY_STRING && warn->len) {
                                int64_t now = kf_mono_us();
                                if (now - cm->warned_us > 10000000) { /* every 10 s */
                                        cm->warned_us = now;
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
                kw_redis_drop(r);
        }
        if (rc == 0 && again) {
                kf_warn("redis lost the step script (restart or SCRIPT FLUSH): reloading");
                rc = kf_script_load(r->c, &r->script, errstr, errstr_size) ? -1 : 1;
                if (rc < 0)
                        kw_redis_drop(r);
        }
        goto out;
unsent:
        /* Steps appended but not sent stay in the context's output buffer:
         * sent with the next round, their replies would be read as that
         * round's, a job taken for written that is not.  Drop them. */
        kw_redis_drop(r);
out:
        if (call)
                kw_step_call_free(call);
        free(order);
        free(grouped);
        free(ents);
        free(call);
        return rc;
}

int kw_commit_batch(kw_commit_t *cm, kw_batch_t *b, char *errstr, size_t errstr_size)
{
        for (int round = 0; round < 3; round++) {
                int was_down = !cm->redis.c, rc;
                int64_t t0;
                if (kw_redis_ensure(&cm->redis, errstr, errstr_size)) {
                        kw_metrics_add(cm->metrics, KW_C_REDIS_ERRORS, 1);
                        return -1;
                }
                if (was_down) /* kw_commit_open connected the first time */
                        kw_metrics_add(cm->metrics, KW_C_REDIS_RECONNECTS, 1);
                t0 = kf_mono_us();
                rc = commit_round(cm, b, errstr, errstr_size);
                kw_metrics_add(cm->metrics, KW_C_REDIS_ROUND_TRIPS, 1);
                if (rc < 0)
                        kw_metrics_add(cm->metrics, KW_C_REDIS_ERRORS, 1);
                else
                        kw_metrics_observe(cm->metrics, KW_H_REDIS_WRITE,
                                           (double)(kf_mono_us() - t0) / 1e6);
                if (rc <= 0)
                        return rc;
        }
        return kf_errf(errstr, errstr_size, "redis keeps losing the step script (NOSCRIPT)");
}
