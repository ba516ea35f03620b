/* kf_result.h - a job's result as Redis holds it (docs/protocol.md, protocol
 * v2, "Result"): one msgpack map under {prefix}{USER}:result:ID.
 *
 * The worker writes results (worker/commit.c packs them, worker/step.lua
 * finishes the ones it decides itself); this module reads them back for the
 * `kinfer` CLI and the tests.  Decoding never trusts the bytes: a damaged or
 * foreign value is an error naming what is wrong, never a crash. */
#ifndef KF_RESULT_H
#define KF_RESULT_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"

typedef struct kf_result_s {
        int ok;     /* status is "ok" */
        uint64_t v; /* protocol version of the result */
        char id[JOB_ID_MAX + 1];
        char user[JOB_USER_MAX + 1];
        char model[JOB_MODEL_MAX + 1]; /* "" when the job had none readable */
        char worker[256], source[320];
        uint64_t enqueued, started, done; /* Unix ms */
        /* ok */
        uint64_t version;
        uint32_t rows, cols;
        float *output;      /* rows*cols, malloc'd (NULL on error results) */
        uint64_t nonfinite; /* ok: how many output values are NaN or +-Inf */
        uint64_t window;    /* ok and quota_exceeded: window start, Unix s */
        int has_window;
        /* error */
        char error[32];
        char message[1024];
        uint64_t retry_after; /* quota_exceeded */
        int has_retry_after;
} kf_result_t;

/* Decodes one result value.  Unknown keys are ignored (protocol.md: clients
 * must).  Returns 0, or -1 with errstr naming the problem (not msgpack, not a
 * map, a missing or mistyped field, output size not matching shape).  Call
 * kf_result_clear() afterwards in both cases. */
int kf_result_decode(const void *buf, size_t len, kf_result_t *r, char *errstr, size_t errstr_size);

void kf_result_clear(kf_result_t *r);

#endif
