/* job.h - the v2 inference job: its in-memory form and its msgpack codec.
 *
 * The wire format is specified in docs/protocol.md; this header is the C
 * side of that contract.  Decoding never trusts the message: every declared
 * length is checked against the bytes actually present before anything is
 * allocated (see mp_bound.h), and limits bound what a job may ask for. */
#ifndef KF_JOB_H
#define KF_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "kf_error.h"

#define JOB_PROTOCOL_VERSION 2
#define JOB_ID_MAX           128 /* id: 1..128 chars of [A-Za-z0-9._:-] */
#define JOB_USER_MAX         64  /* user: 1..64 chars, same set */
#define JOB_MODEL_MAX        64  /* model name: 1..64 chars, same set */
#define JOB_INBOX_MAX        64  /* inbox name: 1..64 chars, same set */
#define JOB_TTL_DEFAULT      86400u
#define JOB_TTL_MAX          (30u * 86400u) /* a result lives at most 30 days */

typedef enum {
        JOB_OUTPUT_RAW = 0, /* the last layer's values, rows x output_dim */
        JOB_OUTPUT_SOFTMAX, /* softmax over each row, rows x output_dim */
        JOB_OUTPUT_ARGMAX,  /* index of each row's maximum, rows x 1 */
        JOB_OUTPUT_TOPK,    /* indices then values of each row's k largest, rows x 2k */
} job_output_t;

#define JOB_K_MAX (1u << 20) /* k of topk: at most the widest output a model can have */

/* Upper bounds on what one job may ask for.  A job over a limit is rejected
 * with KF_ERR_TOO_LARGE before its input is allocated. */
typedef struct job_limits_s {
        size_t max_message_bytes; /* the whole Kafka message value */
        uint32_t max_rows;
        uint32_t max_cols;
        uint64_t max_elements; /* rows * cols */
} job_limits_t;

/* Safe defaults: 8 MiB messages, 65536 rows, 65536 cols, 16M elements.
 * Unpacking costs up to ~24 bytes per msgpack element, so the message limit
 * also bounds a job's transient memory (8 MiB -> at most ~200 MiB). */
extern const job_limits_t job_limits_default;

typedef struct job_s {
        char id[JOB_ID_MAX + 1];       /* "" when no valid id could be read */
        char user[JOB_USER_MAX + 1];   /* "" when not (yet) read */
        char model[JOB_MODEL_MAX + 1]; /* "" when not (yet) read */
        uint32_t version;              /* 0 = the model's active version */
        uint32_t rows, cols;
        float *input;        /* rows*cols floats, row-major; owned (free with job_clear) */
        job_output_t output; /* default JOB_OUTPUT_RAW */
        uint32_t k;          /* TOPK: 1..JOB_K_MAX (the model's output_dim is checked
                              * when it is known); 0 otherwise */
        int64_t deadline_ms; /* Unix ms; 0 = no deadline */
        uint32_t ttl_s;      /* result lifetime; default JOB_TTL_DEFAULT */
        char inbox[JOB_INBOX_MAX + 1]; /* "" = none: the list that receives the id */
        int stream_only;               /* 'results: "stream"': no Redis result value, only the
                                        * result topic (when the worker has one) */
} job_t;

/* Decodes one job from a Kafka message value.
 *
 * Returns KF_OK and a complete job, or an error code (KF_ERR_BAD_REQUEST or
 * KF_ERR_TOO_LARGE) with a message naming what was wrong in errstr, e.g.
 * "input row 3 has 5 values, row 0 has 4".  On error job->input is NULL, but
 * job->id (and user/model, ttl, inbox) hold whatever valid values could be
 * read, so the caller can still write an error result: job->id[0] == '\0'
 * means the message has no address for a result (no readable id, or no
 * readable user: results are scoped by user).  Never allocates more than a small multiple of
 * len.  lim may be NULL for job_limits_default.
 * The caller owns job; call job_clear() afterwards in every case. */
kf_err_t job_decode(const void *buf, size_t len, const job_limits_t *lim, job_t *job, char *errstr,
                    size_t errstr_size);

/* Frees job->input and resets every field to its default.  Accepts a job that
 * was never decoded if it was zero-initialised. */
void job_clear(job_t *job);

/* Input encodings a producer can choose (both decode to the same job). */
typedef enum {
        JOB_ENC_F32 = 0, /* {dtype:"f32", shape:[r,c], data:<bin>}: compact, exact */
        JOB_ENC_ROWS,    /* [[x,..],..] as msgpack float32 values */
} job_encoding_t;

/* Encodes job as a v2 msgpack map.  Optional fields are written only when
 * they differ from their defaults.  Returns 0 and a malloc'd buffer in
 * *out and *outlen (caller frees), or -1 with errstr set (invalid field). */
int job_encode(const job_t *job, job_encoding_t enc, char **out, size_t *outlen, char *errstr,
               size_t errstr_size);

/* 1 if s is a valid identifier of 1..maxlen chars of [A-Za-z0-9._:-]. */
int job_name_valid(const char *s, size_t len, size_t maxlen);

#endif
