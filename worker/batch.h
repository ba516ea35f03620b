/* batch.h - one micro-batch of jobs on its way from Kafka to Redis.
 *
 * A job slot moves NEW -> DONE (result computed, success or error) ->
 * WRITTEN (Redis acknowledged it); a DONE job without a readable id goes to
 * HELD instead when the writer hands it to the dead-letter stage (dlq.h).
 * The batch owns the Kafka messages until kw_batch_free(), so offsets can
 * be stored from them after the write.
 * A batch belongs to one thread at a time: the loop thread fills it, a
 * compute thread computes it, a writer thread writes it (see worker.c). */
#ifndef KW_BATCH_H
#define KW_BATCH_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "job.h"
#include "kf_sign.h"
#include "model.h"
#include "model_store.h"

typedef enum {
        KW_JOB_NEW = 0, /* polled, not processed yet */
        KW_JOB_DONE,    /* result (ok or error) ready to be written */
        KW_JOB_WRITTEN, /* acknowledged by Redis */
        KW_JOB_HELD,    /* not this batch's to write or store: handed to the
                         * dead-letter stage (the slot is empty then), or
                         * kept back because it could not be (dlq.h) */
} kw_job_state_t;

typedef struct kw_job_s {
        rd_kafka_message_t *rkm; /* owned */
        job_t job;
        kw_job_state_t state;
        kf_err_t err;     /* KF_OK or the error result's code */
        char errmsg[256]; /* the error result's human message */
        float *output;    /* out_rows x out_cols, malloc'd; NULL on error */
        uint32_t out_rows, out_cols;
        uint32_t model_version;
        uint64_t flops;     /* charged on success: rows * 2 * sum(in*out) */
        int64_t started_ms; /* Unix ms when the worker picked it up */
        int64_t done_ms;    /* Unix ms when its result was ready */
        int over_quota;     /* the pre-check found the user over quota: not
                             * computed, input kept (see commit.h) */
        int precheck_done;  /* the pre-check is not asked again for this job */
        int auth_done;      /* its signature was checked (auth.h): not again */
        /* An Ed25519 signature auth.c found the key for, checked here on a
         * compute thread (tens of microseconds: in parallel, not on the
         * loop thread) before anything else: kw_batch_compute. */
        int sig_pending;
        unsigned char sig_pub[KF_SIGN_KEY_LEN], sig[KF_SIGN_SIG_MAX];
        char sig_kid[KF_SIGN_KID_LEN + 1];
        model_t *model; /* set by kw_batch_resolve; a reference */
        char *rt_value; /* with a result topic: the result as the step decided
                         * it (commit.c), malloc'd; NULL: none */
        size_t rt_len;
        /* When the result message cannot be delivered for its size
         * (results_topic.h): 0 the result itself; 1 a too_large error result
         * in its place (rt_alt); 2 the same without the job's headers; 3 also
         * keyed by the job id instead of the job message's key (a job
         * message's key can be as large as the limit).
         * Kept across retries of the batch; the result topic's writer only. */
        int rt_level;
        char *rt_alt; /* the too_large error result, malloc'd; NULL below level 1 */
        size_t rt_alt_len;
        size_t rt_msg_size; /* bytes of the message last produced: value, key, headers */
        size_t rt_big_size; /* rt_msg_size when the result itself was refused */
} kw_job_t;

typedef struct kw_batch_s {
        kw_job_t *jobs;
        int n, cap;
        uint64_t rows;           /* rows of the decoded jobs, for the batch size bound */
        struct kw_batch_s *next; /* queue link (see queue.h) */
} kw_batch_t;

/* One compute thread's buffers, grown on demand and reused across batches. */
typedef struct kw_compute_ctx_s {
        float *X, *Y; /* stacking buffers */
        size_t xcap, ycap;
        model_scratch_t scratch;
} kw_compute_ctx_t;

/* Takes ownership of rkm and decodes it; a job that does not decode is
 * DONE at once with its error result, and a job past its deadline is DONE as
 * expired.  Returns 0, or -1 when out of memory: nothing added, and rkm is
 * still the caller's (who must not let it be lost silently: offsets.h).
 * Loop thread. */
int kw_batch_add(kw_batch_t *b, rd_kafka_message_t *rkm, const job_limits_t *lim);

/* The same, decoding value (len bytes) instead of rkm's payload: a job
 * mapped from rkm (chain.h).  fail, if not NULL, makes the job an error
 * result (bad_request) with that message, or, without an address, a dead
 * letter giving it as the reason.  value stays the caller's. */
int kw_batch_add_value(kw_batch_t *b, rd_kafka_message_t *rkm, const void *value, size_t len,
                       const char *fail, const job_limits_t *lim);

/* What one job may cost in memory once its model is known (input limits
 * are checked when it is decoded): its output, and the forward pass's
 * scratch, which is rows x the model's widest layer. */
typedef struct kw_compute_limits_s {
        uint64_t max_output_elements;  /* rows x output columns */
        uint64_t max_scratch_elements; /* rows x widest layer */
} kw_compute_limits_t;

/* Looks up the model of every NEW job without one (a reference kept in the
 * job) and checks its input shape; jobs that fail are DONE with their error.
 * Jobs whose model cannot be looked up because the registry is unreachable
 * stay NEW without a model: returns how many (0: the batch is ready), with
 * the first one's reason in why; call again later, and never compute or
 * write the batch before it returns 0.  Loop thread: the model store is the
 * loop thread's. */
int kw_batch_resolve(kw_batch_t *b, ms_store_t *ms, const kw_compute_limits_t *lim, char *why,
                     size_t why_size);

/* Computes every resolved NEW job, stacking the jobs of one model into one
 * forward pass of at most max_rows rows; each job ends DONE with an output
 * or an error.  Any thread, with its own ctx. */
void kw_batch_compute(kw_batch_t *b, kw_compute_ctx_t *ctx, uint32_t max_rows);

/* Destroys one job's message, result and model reference; the job may live
 * outside a batch (dlq.c).  The slot is left empty and can be cleared
 * again. */
void kw_job_clear(kw_job_t *j);
/* Destroys every job (kw_job_clear) and b; accepts NULL. */
void kw_batch_free(kw_batch_t *b);
void kw_compute_ctx_free(kw_compute_ctx_t *ctx);

#endif
