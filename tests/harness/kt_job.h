/* kt_job.h - test-side job and model packing, written against
 * docs/protocol.md with msgpack-c directly (never with kinfer's own
 * job_encode or model_encode), and a checked producer.
 *
 * Tests use these to put exactly the bytes they mean on the wire, with
 * whatever key they like, independent of the code under test. */
#ifndef KT_JOB_H
#define KT_JOB_H

#include <hiredis.h>
#include <msgpack.h>
#include <stddef.h>

#include "kf_result.h"

/* Packs a v2 job with input in the rows form (float64 values) into sb
 * (initialised by the caller).  extra_key/extra_val add one uint field
 * (e.g. "ttl", "deadline", "version") when extra_key is not NULL. */
void kt_job_pack(msgpack_sbuffer *sb, const char *id, const char *user, const char *model,
                 const float *x, int rows, int cols, const char *extra_key,
                 unsigned long long extra_val);

/* One Kafka message to produce. partition -1 = by key. */
typedef struct kt_msg_s {
        const char *key;
        const void *val;
        size_t len;
        int partition;
} kt_msg_t;

/* Produces the messages with an idempotent producer (acks=all) and waits
 * for every delivery report.  Returns the number NOT delivered (0 = all). */
int kt_produce(const char *brokers, const char *topic, const kt_msg_t *msgs, int n);

/* Writes an MLP model file: dims[0..n_layers], acts[i] per layer, W[i]
 * (dims[i] x dims[i+1], row-major) and b[i] (dims[i+1]).  Returns 0 or -1. */
int kt_write_model(const char *path, const char *name, int n_layers, const int *dims,
                   const char *const *acts, const float *const *W, const float *const *b);

/* Writes DIR/lin.kmodel, the model tests check by hand: 2 -> 2, identity,
 * y = (2 x0 + 1, 3 x1 + 1).  Returns 0 or -1. */
int kt_write_lin_model(const char *dir);

/* Reads user's result of job id: GET kinfer:{USER}:result:ID, spelled here
 * from docs/protocol.md, and decodes it.  Returns 1 and fills r (clear it
 * with kf_result_clear), 0 if there is none, -1 (message on stderr) if the
 * value cannot be decoded or Redis fails. */
int kt_result_get(redisContext *c, const char *user, const char *id, kf_result_t *r);

/* One counter of a user's usage hash (kinfer:{USER}:usage, or with window
 * set kinfer:{USER}:usage:window:WINDOW): 0 when missing, -1 if not an
 * integer.  field "jobs:MODEL" etc. with window "models" reads the
 * per-model hash. */
long long kt_usage(redisContext *c, const char *user, const char *window, const char *field);

#endif
