/* fuzz_job_decode.c - libFuzzer target for job_decode (common/job_codec.c):
 * arbitrary bytes in, and on top of "no crash, no leak, no huge allocation"
 * the decoder's contract is checked on every input:
 *   - success: id/user/model are valid names, the shape is within the
 *     limits, every input value is finite, optional fields are in range,
 *     and the job survives job_encode -> job_decode unchanged (both forms);
 *   - error: a known code, a message, no input, and an id that is either
 *     empty or valid and comes with a valid user (together they address the
 *     error result).
 * Limits are tight (64 KiB, 64 x 64, 1024 values) so inputs stay small and
 * the limit paths are reachable by mutation.  Built and run by `make fuzz`. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const job_limits_t fuzz_limits = {
    .max_message_bytes = 64 * 1024,
    .max_rows = 64,
    .max_cols = 64,
    .max_elements = 1024,
};

/* A broken invariant is a finding: print why, then abort so libFuzzer
 * saves the input. */
#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "fuzz_job_decode: %s: ", #cond);                           \
                        fprintf(stderr, __VA_ARGS__);                                              \
                        fputc('\n', stderr);                                                       \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

static int name_ok(const char *s, size_t max)
{
        return job_name_valid(s, strnlen(s, max + 1), max);
}

static void check_same(const job_t *a, const job_t *b)
{
        CHECK(!strcmp(a->id, b->id) && !strcmp(a->user, b->user) && !strcmp(a->model, b->model),
              "names changed in a round trip: %s/%s/%s -> %s/%s/%s", a->id, a->user, a->model,
              b->id, b->user, b->model);
        CHECK(a->version == b->version && a->output == b->output &&
                  a->deadline_ms == b->deadline_ms && a->ttl_s == b->ttl_s,
              "options changed in a round trip");
        CHECK(a->rows == b->rows && a->cols == b->cols, "shape %ux%u became %ux%u", a->rows,
              a->cols, b->rows, b->cols);
        /* Bitwise: both forms carry float32 exactly (including -0.0). */
        CHECK(!memcmp(a->input, b->input, (size_t)a->rows * a->cols * sizeof(float)),
              "input values changed in a round trip");
}

/* The decoded job, encoded again in each form, decodes to the same job. */
static void check_round_trip(const job_t *job)
{
        for (int enc = JOB_ENC_F32; enc <= JOB_ENC_ROWS; enc++) {
                char *buf = NULL, err[256];
                size_t len = 0;
                job_t again;
                kf_err_t rc;

                CHECK(job_encode(job, (job_encoding_t)enc, &buf, &len, err, sizeof(err)) == 0,
                      "job_encode refused a job job_decode accepted: %s", err);
                memset(&again, 0, sizeof(again));
                /* The rows form costs up to 5 bytes per value: the default
                 * limits, not the fuzz limits, bound the message size. */
                rc = job_decode(buf, len, NULL, &again, err, sizeof(err));
                CHECK(rc == KF_OK, "re-decoding an encoded job failed: %s (%s)", kf_err_name(rc),
                      err);
                check_same(job, &again);
                job_clear(&again);
                free(buf);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char err[512];
        job_t job;
        kf_err_t rc;

        memset(&job, 0, sizeof(job));
        memset(err, 'x', sizeof(err)); /* job_decode must terminate it */
        rc = job_decode(data, size, &fuzz_limits, &job, err, sizeof(err));
        CHECK(memchr(err, '\0', sizeof(err)) != NULL, "errstr not terminated");

        if (rc == KF_OK) {
                uint64_t n = (uint64_t)job.rows * job.cols;
                CHECK(err[0] == '\0', "success with a message: %s", err);
                CHECK(name_ok(job.id, JOB_ID_MAX), "bad id '%s'", job.id);
                CHECK(name_ok(job.user, JOB_USER_MAX), "bad user '%s'", job.user);
                CHECK(name_ok(job.model, JOB_MODEL_MAX), "bad model '%s'", job.model);
                CHECK(job.rows >= 1 && job.cols >= 1, "empty input %ux%u", job.rows, job.cols);
                CHECK(job.rows <= fuzz_limits.max_rows && job.cols <= fuzz_limits.max_cols &&
                          n <= fuzz_limits.max_elements,
                      "input %ux%u over the limits", job.rows, job.cols);
                CHECK(job.input != NULL, "no input");
                for (uint64_t i = 0; i < n; i++)
                        CHECK(isfinite(job.input[i]), "input[%llu] = %g", (unsigned long long)i,
                              (double)job.input[i]);
                CHECK(job.ttl_s >= 1 && job.ttl_s <= JOB_TTL_MAX, "ttl %u", job.ttl_s);
                CHECK((unsigned)job.output <= JOB_OUTPUT_ARGMAX, "output %d", (int)job.output);
                CHECK(job.deadline_ms >= 0, "deadline %lld", (long long)job.deadline_ms);
                check_round_trip(&job);
        } else {
                CHECK(rc == KF_ERR_BAD_REQUEST || rc == KF_ERR_TOO_LARGE, "unexpected code %s: %s",
                      kf_err_name(rc), err);
                CHECK(err[0] != '\0', "error %s without a message", kf_err_name(rc));
                CHECK(job.input == NULL && job.rows == 0 && job.cols == 0,
                      "error %s but input %p %ux%u", kf_err_name(rc), (void *)job.input, job.rows,
                      job.cols);
                CHECK(job.id[0] == '\0' || name_ok(job.id, JOB_ID_MAX), "bad id '%s' on error",
                      job.id);
                CHECK(job.user[0] == '\0' || name_ok(job.user, JOB_USER_MAX), "bad user '%s'",
                      job.user);
                CHECK(job.model[0] == '\0' || name_ok(job.model, JOB_MODEL_MAX), "bad model '%s'",
                      job.model);
                CHECK(job.ttl_s >= 1 && job.ttl_s <= JOB_TTL_MAX, "ttl %u on error", job.ttl_s);
                /* v2: a result's address is user and id, both or neither */
                CHECK(job.id[0] == '\0' || job.user[0] != '\0', "id '%s' without a user", job.id);
                CHECK(job.inbox[0] == '\0' || name_ok(job.inbox, JOB_INBOX_MAX), "bad inbox '%s'",
                      job.inbox);
        }
        job_clear(&job);
        CHECK(job.input == NULL, "job_clear left input");
        return 0;
}
