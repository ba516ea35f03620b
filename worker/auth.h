/* auth.h - the worker's check of signed jobs (docs/protocol.md, "Signed
 * jobs"): reads each message's signature headers, finds the signing key
 * among the job's user's keys (P{U}:keys in Redis, cached), verifies the
 * signature over the message value and answers `unauthorized` when it
 * fails, or when the job is unsigned and signatures are required.  HMACs
 * (about a microsecond) are verified here; an Ed25519 signature (tens of
 * microseconds) is left to the compute thread that takes the batch
 * (sig_pending, batch.h), so that several are checked in parallel.
 *
 * The key is looked up under the user the job names, so one user's key
 * cannot sign another user's job.  Keys are cached for ttl (--key-cache-ms),
 * found and missing alike: a revoked key is refused at most that long after
 * `kinfer key revoke`.  A kw_auth_t is the loop thread's alone. */
#ifndef KW_AUTH_H
#define KW_AUTH_H

#include <stdint.h>

#include "batch.h"
#include "redis_conn.h"

typedef struct kw_key_entry_s kw_key_entry_t;

typedef struct kw_auth_s {
        kw_redis_t redis;   /* its own connection */
        const char *prefix; /* key prefix (not owned) */
        int require;        /* 1: an unsigned job is unauthorized */
        int64_t ttl_us;     /* how long a looked-up key is trusted */
        kw_key_entry_t *cache;
        unsigned n_cached;
        int64_t retry_us; /* last reconnect attempt */
        uint64_t lookups; /* Redis lookups of keys, for tests and logs */
} kw_auth_t;

/* Connects (redis_conn.h); prefix is not owned.  Returns 0 or -1 with
 * errstr; kw_auth_close it either way. */
int kw_auth_open(kw_auth_t *a, const char *url, int timeout_ms, const char *prefix, int require,
                 int64_t ttl_ms, char *errstr, size_t errstr_size);
void kw_auth_close(kw_auth_t *a); /* accepts a zeroed one */

/* Checks every job of b that has an address (an id and a user) and was not
 * checked yet, whatever its state: a job that failed to decode or expired
 * is still unauthorized first, so an unsigned message never reaches the
 * user's counters (not even `errors`).  A job that fails becomes DONE with
 * KF_ERR_UNAUTHORIZED and a message naming why.  Keys not in the cache are
 * read in one pipelined round trip.  Returns how many jobs could not be
 * checked because Redis is unreachable (0: the batch is checked), with the
 * reason in why: call again later; such jobs must not be computed yet.
 * Loop thread. */
int kw_auth_check(kw_auth_t *a, kw_batch_t *b, char *why, size_t why_size);

#endif
