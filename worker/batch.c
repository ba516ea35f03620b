/* batch.c - decodes a micro-batch of Kafka messages into jobs and computes
 * them, one stacked forward pass per model, splitting results back per job. */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_sign.h"
#include "kf_util.h"

static void job_fail(kw_job_t *j, kf_err_t err)
{
        j->err = err;
        j->state = KW_JOB_DONE;
        free(j->job.input); /* the input is not needed for an error result */
        j->job.input = NULL;
        j->done_ms = kf_now_ms();
}

int kw_batch_add(kw_batch_t *b, rd_kafka_message_t *rkm, const job_limits_t *lim)
{
        return kw_batch_add_value(b, rkm, rkm->payload, rkm->len, NULL, lim);
}

int kw_batch_add_value(kw_batch_t *b, rd_kafka_message_t *rkm, const void *value, size_t len,
                       const char *fail, const job_limits_t *lim)
{
        kw_job_t *j;
        kf_err_t err;

        if (b->n == b->cap) {
                int ncap = b->cap ? b->cap * 2 : 64;
                kw_job_t *nj = realloc(b->jobs, sizeof(*nj) * (size_t)ncap);
                if (!nj)
                        return -1; /* rkm stays the caller's */
                b->jobs = nj;
                b->cap = ncap;
        }
        j = &b->jobs[b->n++];
        memset(j, 0, sizeof(*j));
        j->rkm = rkm;
        j->started_ms = kf_now_ms();

        err = job_decode(value, len, lim, &j->job, j->errmsg, sizeof(j->errmsg));
        if (fail) {
                kf_strlcpy(j->errmsg, fail, sizeof(j->errmsg));
                if (err == KF_OK)
                        err = KF_ERR_BAD_REQUEST;
        }
        if (err != KF_OK) {
                job_fail(j, err);
                return 0;
        }
        if (j->job.deadline_ms && j->started_ms > j->job.deadline_ms) {
                snprintf(j->errmsg, sizeof(j->errmsg),
                         "picked up %lld ms after its deadline; not computed, not charged",
                         (long long)(j->started_ms - j->job.deadline_ms));
                job_fail(j, KF_ERR_EXPIRED);
                return 0;
        }
        b->rows += j->job.rows;
        return 0;
}

/* Buffers a compute thread keeps between batches, at most (floats each):
 * 4M (16 MiB) holds a full batch of 256 rows through layers of 16k. */
#define KW_SCRATCH_KEEP ((size_t)4 << 20)

static int grow(float **buf, size_t *cap, size_t need)
{
        float *n;
        if (need <= *cap)
                return 0;
        if (!(n = realloc(*buf, need * sizeof(float))))
                return -1;
        *buf = n;
        *cap = need;
        return 0;
}

/* Computes grp[0..n-1] (all NEW, same model) as one stacked forward pass. */
static void compute_group(kw_compute_ctx_t *ctx, model_t *m, kw_job_t **grp, int n, uint32_t rows)
{
        size_t xo = 0, yo = 0;
        int64_t done;

        if (grow(&ctx->X, &ctx->xcap, (size_t)rows * m->input_dim) ||
            grow(&ctx->Y, &ctx->ycap, (size_t)rows * m->output_dim))
                goto oom;
        for (int i = 0; i < n; i++) {
                size_t cnt = (size_t)grp[i]->job.rows * m->input_dim;
                memcpy(ctx->X + xo, grp[i]->job.input, cnt * sizeof(float));
                xo += cnt;
        }
        if (model_forward(m, ctx->X, rows, ctx->Y, &ctx->scratch))
                goto oom;
        for (int i = 0; i < n; i++) {
                kw_job_t *j = grp[i];
                uint32_t ocols = model_output_cols_k(j->job.output, j->job.k, m->output_dim);
                j->output = malloc((size_t)j->job.rows * ocols * sizeof(float));
                if (!j->output) {
                        snprintf(j->errmsg, sizeof(j->errmsg), "out of memory for the output");
                        job_fail(j, KF_ERR_INTERNAL);
                        yo += (size_t)j->job.rows * m->output_dim;
                        continue;
                }
                model_postprocess_k(j->job.output, j->job.k, ctx->Y + yo, j->job.rows,
                                    m->output_dim, j->output);
                done = kf_now_ms(); /* `done` includes post-processing (protocol.md) */
                yo += (size_t)j->job.rows * m->output_dim;
                j->out_rows = j->job.rows;
                j->out_cols = ocols;
                j->model_version = m->version;
                j->flops = m->flops_per_row * j->job.rows;
                j->state = KW_JOB_DONE;
                j->done_ms = done;
                free(j->job.input);
                j->job.input = NULL;
        }
        return;
oom:
        for (int i = 0; i < n; i++) {
                snprintf(grp[i]->errmsg, sizeof(grp[i]->errmsg),
                         "out of memory computing a batch of %u rows", rows);
                job_fail(grp[i], KF_ERR_INTERNAL);
        }
}

/* Bounds a job's output and scratch before anything is allocated: a small
 * input against a wide model could otherwise ask for gigabytes, or an output
 * Redis can never take (its bulk limit is 512 MiB). */
static int check_costs(kw_job_t *j, const kw_compute_limits_t *lim)
{
        const model_t *m = j->model;
        uint64_t rows = j->job.rows;
        uint64_t ocols = model_output_cols_k(j->job.output, j->job.k, m->output_dim);
        uint64_t out = rows * ocols;
        /* the raw output and the stacked input are no wider than this */
        uint64_t scratch = rows * m->max_width;

        if (out > lim->max_output_elements) {
                snprintf(j->errmsg, sizeof(j->errmsg),
                         "the output would be %llu x %llu = %llu values, limit "
                         "max_output_elements is %llu",
                         (unsigned long long)rows, (unsigned long long)ocols,
                         (unsigned long long)(rows * ocols),
                         (unsigned long long)lim->max_output_elements);
                return -1;
        }
        if (scratch > lim->max_scratch_elements) {
                snprintf(j->errmsg, sizeof(j->errmsg),
                         "computing %llu rows through model '%s' version %u (widest layer %u) "
                         "needs %llu scratch values, limit max_scratch_elements is %llu",
                         (unsigned long long)rows, m->name, m->version, m->max_width,
                         (unsigned long long)scratch,
                         (unsigned long long)lim->max_scratch_elements);
                return -1;
        }
        return 0;
}

int kw_batch_resolve(kw_batch_t *b, ms_store_t *ms, const kw_compute_limits_t *lim, char *why,
                     size_t why_size)
{
        int later = 0;
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                kf_err_t err;
                if (j->state != KW_JOB_NEW || j->model)
                        continue;
                if (later) { /* one timeout per attempt, not one per job */
                        later++;
                        continue;
                }
                j->model = ms_store_get(ms, j->job.model, j->job.version, &err, j->errmsg,
                                        sizeof(j->errmsg));
                if (!j->model && err == KF_OK) { /* the registry is away: ask again */
                        if (!later++)
                                kf_strlcpy(why, j->errmsg, why_size);
                        j->errmsg[0] = '\0';
                        continue;
                }
                if (!j->model) {
                        job_fail(j, err);
                        continue;
                }
                if (model_check_job(j->model, &j->job, &err, j->errmsg, sizeof(j->errmsg)))
                        job_fail(j, err);
                else if (check_costs(j, lim))
                        job_fail(j, KF_ERR_TOO_LARGE);
        }
        return later;
}

/* Checks the Ed25519 signatures auth.c left to a compute thread; a job whose
 * signature fails is unauthorized, whatever the loop thread decided for it
 * (a model error, the quota pre-check): the signature comes first. */
static void verify_pending(kw_batch_t *b)
{
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                kf_verify_key_t k;
                char err[64];
                int ok;
                if (!j->sig_pending)
                        continue;
                j->sig_pending = 0;
                ok = kf_verify_key_init(&k, KF_SIGN_ED25519, j->sig_pub, err, sizeof(err)) == 0 &&
                     kf_verify(&k, j->rkm->payload, j->rkm->len, j->sig, sizeof(j->sig));
                kf_verify_key_clear(&k);
                if (ok)
                        continue;
                snprintf(j->errmsg, sizeof(j->errmsg),
                         "the signature does not match the message (key %s of user %s)", j->sig_kid,
                         j->job.user);
                j->over_quota = 0;
                job_fail(j, KF_ERR_UNAUTHORIZED);
        }
}

void kw_batch_compute(kw_batch_t *b, kw_compute_ctx_t *ctx, uint32_t max_rows)
{
        kw_job_t **grp;

        verify_pending(b);
        grp = malloc(sizeof(*grp) * (size_t)(b->n ? b->n : 1));
        if (!grp) {
                for (int i = 0; i < b->n; i++)
                        if (b->jobs[i].state == KW_JOB_NEW) {
                                snprintf(b->jobs[i].errmsg, sizeof(b->jobs[i].errmsg),
                                         "out of memory");
                                job_fail(&b->jobs[i], KF_ERR_INTERNAL);
                        }
                return;
        }
        /* Stack jobs of the same model, in arrival order, up to max_rows. */
        for (int i = 0; i < b->n; i++) {
                model_t *m = b->jobs[i].model;
                uint32_t rows;
                int n;
                if (b->jobs[i].state != KW_JOB_NEW || !m)
                        continue;
                grp[0] = &b->jobs[i];
                rows = b->jobs[i].job.rows;
                n = 1;
                for (int k = i + 1; k < b->n; k++) {
                        kw_job_t *j = &b->jobs[k];
                        if (j->state != KW_JOB_NEW || j->model != m)
                                continue;
                        if (rows + j->job.rows > max_rows)
                                break;
                        grp[n++] = j;
                        rows += j->job.rows;
                }
                compute_group(ctx, m, grp, n, rows);
        }
        free(grp);
        /* A rare wide job must not pin its buffers for the thread's life. */
        if (ctx->scratch.cap + ctx->scratch.ecap > KW_SCRATCH_KEEP)
                model_scratch_free(&ctx->scratch);
        if (ctx->xcap > KW_SCRATCH_KEEP) {
                free(ctx->X);
                ctx->X = NULL;
                ctx->xcap = 0;
        }
        if (ctx->ycap > KW_SCRATCH_KEEP) {
                free(ctx->Y);
                ctx->Y = NULL;
                ctx->ycap = 0;
        }
}

void kw_job_clear(kw_job_t *j)
{
        job_clear(&j->job);
        free(j->output);
        j->output = NULL;
        free(j->rt_value);
        j->rt_value = NULL;
        free(j->rt_alt);
        j->rt_alt = NULL;
        j->rt_level = 0;
        model_unref(j->model);
        j->model = NULL;
        if (j->rkm)
                rd_kafka_message_destroy(j->rkm);
        j->rkm = NULL;
}

void kw_batch_free(kw_batch_t *b)
{
        if (!b)
                return;
        for (int i = 0; i < b->n; i++)
                kw_job_clear(&b->jobs[i]);
        free(b->jobs);
        free(b);
}

void kw_compute_ctx_free(kw_compute_ctx_t *ctx)
{
        free(ctx->X);
        free(ctx->Y);
        model_scratch_free(&ctx->scratch);
        memset(ctx, 0, sizeof(*ctx));
}
