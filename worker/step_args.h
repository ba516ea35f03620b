/* step_args.h - the arguments of one call of the step script (step.lua,
 * protocol v2): the KEYS and ARGV for a group of one user's jobs, each
 * job's result value packed as msgpack and its binary meta record.
 *
 * Pure: builds bytes, talks to no one; commit.c sends them.  What each
 * argument means is step.lua's header comment; the result value is
 * docs/protocol.md, "Result". */
#ifndef KW_STEP_ARGS_H
#define KW_STEP_ARGS_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "kf_keys.h"
#include "quota.h"

/* What the worker tells every step: fixed for its life, shared by every
 * thread (read only). */
typedef struct kw_step_conf_s {
        const char *prefix;     /* key prefix, e.g. "kinfer:" (not owned) */
        const char *worker_id;  /* written into every result (not owned) */
        kw_quota_t quota;       /* the default quota (quota.h) */
        int64_t charge_horizon; /* seconds a charge record lasts at least */
        int results_topic;      /* 1: the worker has a result topic: the step returns
                                 * each job's result value, and honours a job's
                                 * `results: "stream"` (no Redis value) */
} kw_step_conf_t;

#define KW_STEP_GROUP_MAX   128 /* jobs of one user per script call */
#define KW_STEP_JOB_ARGS    5   /* ARGV entries per job: meta, id, model, inbox, value */
#define KW_STEP_FIXED_ARGS  6   /* ARGV entries before the jobs' */
#define KW_STEP_FIXED_KEYS  3   /* KEYS before the jobs' result keys */
#define KW_STEP_STREAM_ONLY 128 /* added to a job's kind: no Redis result value */

/* A job's meta argument: struct '<BI4I4dI4B' in step.lua: kind, ttl (s),
 * rows, flops (a double), clen, ncommon. */
#define KW_STEP_META_LEN 22

/* Longest life of an unauthorized result, seconds (its ttl is the sender's
 * choice, and the sender is not the user). */
#define KW_UNAUTH_TTL_MAX 3600

/* The meta record's kind (step.lua). */
typedef enum {
        KW_STEP_KIND_OK = 1,     /* computed: an ok result, charged */
        KW_STEP_KIND_ERROR = 2,  /* an error result */
        KW_STEP_KIND_OVER = 3,   /* the pre-check found the user over quota: not computed */
        KW_STEP_KIND_UNAUTH = 4, /* the signature check failed: neither charged nor counted */
} kw_step_kind_t;

/* The text one job's step arguments point into.  The result value itself
 * is in the call's value buffer, at voff (the buffer may move while the
 * group's values are packed, so pointers are taken afterwards). */
typedef struct kw_step_text_s {
        char k_result[KF_KEY_MAX];
        unsigned char meta[KW_STEP_META_LEN];
        uint32_t clen;   /* bytes of the value's common pairs */
        uint8_t ncommon; /* how many common pairs */
        size_t voff, vlen;
} kw_step_text_t;

/* One script call's arguments (KEYS then ARGV, nkeys of them keys) and the
 * buffers they point into; reused from group to group, the arguments valid
 * until the next kw_step_args.  Zero it before the first use. */
typedef struct kw_step_call_s {
        const char **argv;
        size_t *len;
        int argc, cap, nkeys;
        kw_step_text_t text[KW_STEP_GROUP_MAX];
        msgpack_sbuffer vals; /* the group's result values */
        char keys[KW_STEP_FIXED_KEYS][KF_KEY_MAX], base[KF_KEY_MAX];
        char num[5][24]; /* the ARGV numbers, as text */
} kw_step_call_t;

/* Builds the call for b->jobs[idx[0..n-1]] (1 <= n <= KW_STEP_GROUP_MAX),
 * all DONE, with an id, of one user.  Returns 0, -1 when out of memory, or
 * -2 when a key cannot be built (never for a decoded job: the codec admits
 * only valid users and ids; a key that was not built is never sent). */
int kw_step_args(kw_step_call_t *call, const kw_step_conf_t *conf, const kw_batch_t *b,
                 const int *idx, int n);

void kw_step_call_free(kw_step_call_t *call); /* its buffers, not call */

#endif
