/* step_args.c - builds one step call's KEYS and ARGV (step_args.h): the
 * keys of one user, the result values as msgpack, the meta records. */
#include "step_args.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_pack.h"

static int call_reserve(kw_step_call_t *c, int more)
{
        if (c->argc + more > c->cap) {
                int ncap = (c->argc + more) * 2;
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

static void arg(kw_step_call_t *c, const char *s, size_t len)
{
        c->argv[c->argc] = s;
        c->len[c->argc] = len;
        c->argc++;
}

static void sarg(kw_step_call_t *c, const char *s)
{
        arg(c, s, strlen(s));
}

/* Packs job j's result value (docs/protocol.md, "Result") into sb: a map16
 * header, the pairs every result has (clen bytes, ncommon pairs), then the
 * kind's own.  The step needs the common part apart to build the results it
 * decides itself (quota_exceeded, damaged counters), and appends `window`
 * to an ok result, which the header already counts. */
static int pack_value(const kw_step_conf_t *conf, const kw_job_t *j, msgpack_sbuffer *sb,
                      kw_step_text_t *t)
{
        const job_t *job = &j->job;
        int ok = j->err == KF_OK;
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
        rc |= mp_pack_kv_str(&pk, "worker", conf->worker_id);
        rc |= mp_pack_kv_str(&pk, "source", source);
        rc |= mp_pack_kv_u64(&pk, "enqueued", (uint64_t)(enq > 0 ? enq : j->started_ms));
        rc |= mp_pack_kv_u64(&pk, "started", (uint64_t)j->started_ms);
        rc |= mp_pack_kv_u64(&pk, "done", (uint64_t)j->done_ms);
        t->clen = (uint32_t)(sb->size - cpos);
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

/* Appends job j's KW_STEP_JOB_ARGS entries (see step.lua); the value's
 * pointer is set by the caller once the group's buffer no longer moves. */
static void step_job_args(const kw_step_conf_t *conf, const kw_job_t *j, kw_step_text_t *t,
                          kw_step_call_t *c)
{
        const job_t *job = &j->job;
        double flops = j->err == KF_OK ? (double)j->flops : 0.0;
        uint64_t fbits;
        unsigned char *p = t->meta;
        uint32_t ttl = job->ttl_s ? job->ttl_s : JOB_TTL_DEFAULT;

        memcpy(&fbits, &flops, sizeof(fbits));
        *p++ = j->err == KF_OK                 ? KW_STEP_KIND_OK
               : j->over_quota                 ? KW_STEP_KIND_OVER
               : j->err == KF_ERR_UNAUTHORIZED ? KW_STEP_KIND_UNAUTH
                                               : KW_STEP_KIND_ERROR;
        /* stream only, and only where there is a stream: else the result
         * would go nowhere */
        if (job->stream_only && conf->results_topic)
                p[-1] = (unsigned char)(p[-1] + KW_STEP_STREAM_ONLY);
        /* whoever sent an unauthorized job chose its ttl: it is not theirs
         * to keep a value in the user's keys for long */
        if (j->err == KF_ERR_UNAUTHORIZED && ttl > KW_UNAUTH_TTL_MAX)
                ttl = KW_UNAUTH_TTL_MAX;
        p = put_le(p, ttl, 4);
        p = put_le(p, job->rows, 4);
        p = put_le(p, fbits, 8);
        p = put_le(p, t->clen, 4);
        *p++ = t->ncommon;
        arg(c, (const char *)t->meta, KW_STEP_META_LEN);
        sarg(c, job->id);
        sarg(c, job->model);
        sarg(c, job->inbox);
        arg(c, NULL, 0); /* the value */
}

int kw_step_args(kw_step_call_t *call, const kw_step_conf_t *conf, const kw_batch_t *b,
                 const int *idx, int n)
{
        const char *user = b->jobs[idx[0]].job.user;
        int first_job;

        call->argc = 0;
        if (!call->vals.data)
                msgpack_sbuffer_init(&call->vals);
        call->vals.size = 0;
        if (call_reserve(call,
                         KW_STEP_FIXED_KEYS + n + KW_STEP_FIXED_ARGS + KW_STEP_JOB_ARGS * n + 1))
                return -1;
        if (kf_user_key(call->keys[0], conf->prefix, user, KF_K_USAGE, NULL) < 0 ||
            kf_user_key(call->keys[1], conf->prefix, user, KF_K_QUOTA, NULL) < 0 ||
            kf_user_key(call->keys[2], conf->prefix, user, KF_K_MODELS, NULL) < 0 ||
            kf_user_base(call->base, conf->prefix, user) < 0)
                return -2;
        snprintf(call->num[0], sizeof(call->num[0]), "%lld", (long long)conf->quota.jobs);
        snprintf(call->num[1], sizeof(call->num[1]), "%lld", (long long)conf->quota.rows);
        snprintf(call->num[2], sizeof(call->num[2]), "%lld", (long long)conf->quota.window);
        snprintf(call->num[3], sizeof(call->num[3]), "%lld", (long long)conf->charge_horizon);
        snprintf(call->num[4], sizeof(call->num[4]), "%d", n);

        for (int k = 0; k < KW_STEP_FIXED_KEYS; k++)
                sarg(call, call->keys[k]);
        for (int i = 0; i < n; i++) {
                if (kf_user_key(call->text[i].k_result, conf->prefix, user, KF_K_RESULT,
                                b->jobs[idx[i]].job.id) < 0)
                        return -2;
                sarg(call, call->text[i].k_result);
        }
        call->nkeys = call->argc;
        for (int k = 0; k < 4; k++) /* default quota jobs, rows, window; horizon */
                sarg(call, call->num[k]);
        sarg(call, call->base);
        sarg(call, call->num[4]); /* the number of jobs */
        first_job = call->argc;
        for (int i = 0; i < n; i++) {
                if (pack_value(conf, &b->jobs[idx[i]], &call->vals, &call->text[i]))
                        return -1;
                step_job_args(conf, &b->jobs[idx[i]], &call->text[i], call);
        }
        for (int i = 0; i < n; i++) { /* the values no longer move */
                int a = first_job + i * KW_STEP_JOB_ARGS + 4;
                call->argv[a] = call->vals.data + call->text[i].voff;
                call->len[a] = call->text[i].vlen;
        }
        if (conf->results_topic)
                sarg(call, "1"); /* the values back, for the result topic */
        return 0;
}

void kw_step_call_free(kw_step_call_t *call)
{
        if (call->vals.data)
                msgpack_sbuffer_destroy(&call->vals);
        free(call->argv);
        free(call->len);
        call->argv = NULL;
        call->len = NULL;
        call->argc = call->cap = call->nkeys = 0;
}
