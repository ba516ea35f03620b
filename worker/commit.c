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

/* KEYS[1] result hash, KEYS[2] done list, KEYS[3] usage hash
 * ARGV[1] ttl (s), ARGV[2] status ("ok"|"error"), ARGV[3] rows, ARGV[4] flops,
 * ARGV[5..] the result's field/value pairs.
 * Returns 1 if written, 0 if the result already existed (duplicate delivery:
 * nothing is charged and the first result stands).  Everything is checked
 * before the first write, because Redis does not roll back a script's
 * earlier writes when a later command fails. */
static const char step_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    "local ttl = tonumber(ARGV[1])\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 5))\n"
    "redis.call('EXPIRE', KEYS[1], ttl)\n"
    "if ARGV[2] == 'ok' then\n"
    "  redis.call('HINCRBY', KEYS[3], 'jobs', 1)\n"
    "  redis.call('HINCRBY', KEYS[3], 'rows', ARGV[3])\n"
    "  redis.call('HINCRBY', KEYS[3], 'flops', ARGV[4])\n"
    "else\n"
    "  redis.call('HINCRBY', KEYS[3], 'errors', 1)\n"
    "end\n"
    "redis.call('RPUSH', KEYS[2], ARGV[2])\n"
    "redis.call('EXPIRE', KEYS[2], ttl)\n"
    "return 1\n";

#define STEP_MAX_ARGS 40

/* Every argument of one job's step, with the storage for its text. */
typedef struct step_args_s {
        const char *argv[STEP_MAX_ARGS];
        size_t len[STEP_MAX_ARGS];
        int argc;
        char k_result[KF_KEY_MAX], k_done[KF_KEY_MAX], k_usage[KF_KEY_MAX];
        char ttl[16], rows[16], flops[24], version[16], shape[32], source[320];
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

        a->argc = 0;
        kf_key(a->k_result, r->prefix, "result", job->id);
        kf_key(a->k_done, r->prefix, "done", job->id);
        if (job->user[0])
                kf_key(a->k_usage, r->prefix, "usage", job->user);
        else /* an error result for a job whose user is unreadable */
                kf_key(a->k_usage, r->prefix, "stats", NULL);
        snprintf(a->ttl, sizeof(a->ttl), "%u", job->ttl_s ? job->ttl_s : JOB_TTL_DEFAULT);
        snprintf(a->rows, sizeof(a->rows), "%u", ok ? j->out_rows : 0);
        snprintf(a->flops, sizeof(a->flops), "%" PRIu64, ok ? j->flops : 0);
        snprintf(a->source, sizeof(a->source), "%s/%d/%lld", rd_kafka_topic_name(j->rkm->rkt),
                 (int)j->rkm->partition, (long long)j->rkm->offset);
        snprintf(a->enq, sizeof(a->enq), "%lld", (long long)(enq > 0 ? enq : j->started_ms));
        snprintf(a->started, sizeof(a->started), "%lld", (long long)j->started_ms);
        snprintf(a->done, sizeof(a->done), "%lld", (long long)j->done_ms);

        sarg(a, a->k_result);
        sarg(a, a->k_done);
        sarg(a, a->k_usage);
        sarg(a, a->ttl);
        sarg(a, ok ? "ok" : "error");
        sarg(a, a->rows);
        sarg(a, a->flops);

        sarg(a, "status");
        sarg(a, ok ? "ok" : "error");
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
        if (ok) {
                snprintf(a->version, sizeof(a->version), "%u", j->model_version);
                snprintf(a->shape, sizeof(a->shape), "%u,%u", j->out_rows, j->out_cols);
                sarg(a, "version");
                sarg(a, a->version);
                sarg(a, "shape");
                sarg(a, a->shape);
                sarg(a, "output");
                arg(a, (const char *)j->output, (size_t)j->out_rows * j->out_cols * sizeof(float));
        } else {
                sarg(a, "error");
                sarg(a, kf_err_name(j->err));
                sarg(a, "message");
                sarg(a, j->errmsg);
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
                        arc = kf_script_append(r->c, &r->step, 3, a->argc, a->argv, a->len);
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
                } else {
                        j->state = KW_JOB_WRITTEN;
                        if (!j->job.id[0]) {
                                r->undecodable++;
                                kf_warn("message %s/%d/%lld has no readable job id, no result "
                                        "can be written: %s",
                                        rd_kafka_topic_name(j->rkm->rkt), (int)j->rkm->partition,
                                        (long long)j->rkm->offset, j->errmsg);
                        } else if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) {
                                r->duplicates++;
                                kf_debug("job %s: result already exists (redelivery), not "
                                         "charged again",
                                         j->job.id);
                        } else {
                                r->written++;
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
        free(a);
        free(sent);
        return rc;
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
