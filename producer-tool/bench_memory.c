/* bench_memory.c - Redis memory of a `kinfer bench` run: what its results,
 * inboxes and charge records cost Redis, and their deletion at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "kf_keys.h"
#include "kf_util.h"

/* Result keys whose MEMORY USAGE is read, evenly spread over the run. */
#define BENCH_MEM_SAMPLES 1000

/* Redis' clock (TIME), Unix s: it places the charge records.  -1 on error. */
int64_t kc_bench_redis_time(kc_bench_t *b)
{
        redisReply *r = redisCommand(b->redis, "TIME");
        int64_t t = -1;

        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING)
                t = strtoll(r->element[0]->str, NULL, 10);
        freeReplyObject(r);
        return t;
}

/* Redis' memory without its clients: used_memory of INFO memory (what its
 * allocator has handed out) minus the tot-mem of every client in CLIENT LIST
 * (each connection's structure, query and reply buffers: the worker's grow
 * by tens of KB while it writes, more than 100 bytes per result of a small
 * run).  Bytes, or -1 on error. */
static int64_t bench_used_memory(kc_bench_t *b)
{
        redisReply *r = NULL, *l = NULL;
        const char *p;
        int64_t v = -1;

        if (redisAppendCommand(b->redis, "INFO memory") != REDIS_OK ||
            redisAppendCommand(b->redis, "CLIENT LIST") != REDIS_OK ||
            redisGetReply(b->redis, (void **)&r) != REDIS_OK ||
            redisGetReply(b->redis, (void **)&l) != REDIS_OK)
                goto out;
        if (r && r->type == REDIS_REPLY_STRING && (p = strstr(r->str, "\nused_memory:")) && l &&
            l->type == REDIS_REPLY_STRING) {
                v = strtoll(p + 13, NULL, 10);
                for (p = l->str; (p = strstr(p, " tot-mem=")); p += 9)
                        v -= strtoll(p + 9, NULL, 10);
        }
out:
        freeReplyObject(r);
        freeReplyObject(l);
        return v;
}

/* bench_used_memory once Redis has settled: read every 100 ms until two
 * reads in a row change it by at most 1 KiB (at most 3 s; then the last
 * read).  After a run has deleted its keys, Redis' cron shrinks the keyspace
 * tables within a few hundred ms (half a MiB after 20,000 keys): without
 * waiting, the next run would count that shrink against its own results;
 * and a table that has just grown is rehashed, with both arrays held
 * meanwhile.  -1 on error. */
int64_t kc_bench_used_memory_settled(kc_bench_t *b)
{
        int64_t m = bench_used_memory(b);

        for (int i = 0, calm = 0; i < 30 && m >= 0 && calm < 2; i++) {
                int64_t next;
                kf_sleep_us(100000, b->stop);
                if ((next = bench_used_memory(b)) < 0)
                        return -1;
                calm = next - m <= 1024 && m - next <= 1024 ? calm + 1 : 0;
                m = next;
        }
        return m;
}

/* How many charge periods the run spans: from the one that held time0_s to
 * the one that holds t1 (the worker's step files a job's charge record under
 * Redis' TIME, in the period of --charge-horizon seconds it falls in). */
static size_t bench_periods(const kc_bench_t *b, int64_t t1)
{
        int64_t h = b->conf->horizon;
        if (b->time0_s < 0 || t1 < b->time0_s)
                return 1;
        return (size_t)((t1 - t1 % h - (b->time0_s - b->time0_s % h)) / h + 1);
}

/* User u's charge record of the run's period i (0: the one that held
 * time0_s) into key; 0, or -1 if the key cannot be built. */
static int bench_record_key(const kc_bench_t *b, size_t u, int64_t i, char *key)
{
        int64_t h = b->conf->horizon;
        char start[24];

        snprintf(start, sizeof(start), "%lld", (long long)(b->time0_s - b->time0_s % h + i * h));
        return kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_CHARGED, start) < 0 ? -1 : 0;
}

/* Sends "MEMORY USAGE key SAMPLES 0" (what = NULL) or "HLEN key" (what =
 * "HLEN") for n keys made by key(), pipelined in chunks, skipping the ones
 * key() declines; adds the positive integer replies (a missing key: nil or 0)
 * to *sum and counts them in *found.  Returns 0, or -1 (reported). */
typedef int(bench_key_fn)(const kc_bench_t *b, size_t i, char *key);

static int bench_sum(kc_bench_t *b, const char *what, size_t n, bench_key_fn *key, double *sum,
                     size_t *found)
{
        char k[KF_KEY_MAX];
        const char *mu[5] = {"MEMORY", "USAGE", k, "SAMPLES", "0"}, *hlen[2] = {"HLEN", k};
        size_t mul[5] = {6, 5, 0, 7, 1}, hlenl[2] = {4, 0};
        const char **argv = what ? hlen : mu;
        size_t *lens = what ? hlenl : mul;
        int argc = what ? 2 : 5;

        for (size_t lo = 0; lo < n; lo += KC_BENCH_PIPE_CHUNK) {
                size_t hi = lo + KC_BENCH_PIPE_CHUNK < n ? lo + KC_BENCH_PIPE_CHUNK : n, sent = 0;
                int failed = 0;
                for (size_t i = lo; i < hi && !failed; i++) {
                        if (key(b, i, k))
                                continue;
                        lens[what ? 1 : 2] = strlen(k);
                        failed = redisAppendCommandArgv(b->redis, argc, argv, lens) != REDIS_OK;
                        sent += !failed;
                }
                for (size_t i = 0; i < sent && !failed; i++) {
                        redisReply *r = NULL;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK || !r ||
                            (r->type != REDIS_REPLY_INTEGER && r->type != REDIS_REPLY_NIL))
                                failed = 1;
                        else if (r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
                                *sum += (double)r->integer;
                                ++*found;
                        }
                        freeReplyObject(r);
                }
                if (failed) {
                        kc_err("redis: %s: %s", what ? what : "MEMORY USAGE",
                               b->redis->errstr[0] ? b->redis->errstr : "unexpected reply");
                        return -1;
                }
        }
        return 0;
}

/* Keys for bench_sum: the users' inboxes; the users' charge records of the
 * run's periods (i = period * n_users + user); sampled result keys. */
static int bench_inbox_key(const kc_bench_t *b, size_t u, char *key)
{
        return kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_INBOX, b->inbox) < 0 ? -1 : 0;
}

static int bench_record_key_i(const kc_bench_t *b, size_t i, char *key)
{
        return bench_record_key(b, i % b->n_users, (int64_t)(i / b->n_users), key);
}

static size_t bench_samples(const kc_bench_t *b)
{
        return b->published < BENCH_MEM_SAMPLES ? b->published : BENCH_MEM_SAMPLES;
}

static int bench_sample_key(const kc_bench_t *b, size_t i, char *key)
{
        size_t idx = i * b->published / bench_samples(b);
        return b->state[idx] == KC_BENCH_JOB_DELIVERED ? kc_bench_result_key(b, idx, key) : -1;
}

/* Redis memory, once every result of the run exists (and before any is read
 * or deleted).  What kc_bench_report makes of it:
 *
 * redis_bytes_per_result = (M now - M before publishing - MEMORY USAGE of the
 *   run's inboxes - charge-record bytes of the run's results) / results,
 *   where M is used_memory minus the clients' buffers, each read once Redis
 *   has settled (kc_bench_used_memory_settled).
 *   It counts what a result costs Redis: the key name, the value (string
 *   object and msgpack bytes), its entries in the keyspace and in the expires
 *   dict, its share of both dicts' bucket arrays, and the allocator's
 *   rounding; plus, spread over the results, whatever else grew meanwhile
 *   (the usage counters: a few hundred bytes).  The bucket arrays double at
 *   powers of two: 16 to 32 bytes per key depending on where the key count
 *   falls, counted when they grow during the run (they are shrunk again once
 *   the run's keys are deleted).  So it is good to a few bytes for a drain of
 *   10^5 results, to a few % for 10^3.
 * redis_bytes_per_result_key = the mean MEMORY USAGE (SAMPLES 0) of up to
 *   BENCH_MEM_SAMPLES result keys: key name, value and keyspace entry, but
 *   not the expires entry nor the bucket arrays: a floor that does not vary.
 * redis_bytes_per_charge_record = MEMORY USAGE (SAMPLES 0) of the users'
 *   charge-record hashes of the run's periods over their HLEN: one field (id,
 *   status) with its share of the hash's own overhead.  It depends on how
 *   many ids a user has in one period: up to hash-max-listpack-entries (512
 *   built in, 128 in the sample redis.conf) the hash is a compact listpack,
 *   above it a hash table.  The records are looked for at the periods of
 *   --charge-horizon: when that is not the workers', none is found and both
 *   figures are unknown (null).
 *
 * Returns 0, or -1 on a Redis error (reported). */
int kc_bench_memory(kc_bench_t *b)
{
        int64_t t1 = kc_bench_redis_time(b);
        size_t periods = bench_periods(b, t1), n_inboxes = 0, n_records = 0, n_counted = 0;

        b->mem1 = kc_bench_used_memory_settled(b);
        if (b->mem0 < 0 || b->mem1 < 0 || b->time0_s < 0 || t1 < b->time0_s) {
                kc_err("redis: cannot read TIME or INFO memory");
                return -1;
        }
        if (bench_sum(b, NULL, b->n_users, bench_inbox_key, &b->inbox_bytes, &n_inboxes) ||
            bench_sum(b, NULL, periods * b->n_users, bench_record_key_i, &b->record_bytes,
                      &n_records) ||
            bench_sum(b, "HLEN", periods * b->n_users, bench_record_key_i, &b->record_fields,
                      &n_counted) ||
            bench_sum(b, NULL, bench_samples(b), bench_sample_key, &b->key_bytes, &b->key_samples))
                return -1;
        if (b->key_samples)
                b->key_bytes /= (double)b->key_samples;
        if (!n_counted && b->delivered)
                kc_err("bench: no charge records of this run at --charge-horizon %lld (is it the "
                       "workers'?): memory per result and per record unknown",
                       (long long)b->conf->horizon);
        return 0;
}

/* Deletes the run's keys (pipelined UNLINK): the results, the users'
 * inboxes and their charge records of the run's periods.  The records hold
 * only bench users' ids, and a run's ids are never reused, so deleting them
 * loses no protection; it keeps a long bench from piling up records (about
 * 60-100 bytes per job for up to two horizons) and starts every run from the
 * same state.  A concurrent bench with the same --user base loses its records
 * too, which only matters if its jobs are redelivered. */
int kc_bench_delete_keys(kc_bench_t *b)
{
        size_t n_records = bench_periods(b, kc_bench_redis_time(b)) * b->n_users;
        size_t n_keys = b->published + b->n_users + n_records;
        char key[KF_KEY_MAX];

        for (size_t lo = 0; lo < n_keys; lo += KC_BENCH_PIPE_CHUNK) {
                size_t hi = lo + KC_BENCH_PIPE_CHUNK < n_keys ? lo + KC_BENCH_PIPE_CHUNK : n_keys;
                size_t sent = 0;
                for (size_t i = lo; i < hi; i++) {
                        int rc;
                        if (i < b->published)
                                rc = kc_bench_result_key(b, i, key);
                        else if (i < b->published + b->n_users)
                                rc = bench_inbox_key(b, i - b->published, key);
                        else
                                rc = bench_record_key_i(b, i - b->published - b->n_users, key);
                        if (rc)
                                continue;
                        if (redisAppendCommand(b->redis, "UNLINK %s", key) != REDIS_OK)
                                goto fail;
                        sent++;
                }
                for (size_t i = 0; i < sent; i++) {
                        redisReply *r = NULL;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK)
                                goto fail;
                        freeReplyObject(r);
                }
        }
        return 0;
fail:
        kc_err("redis: deleting the run's keys: %s", b->redis->errstr);
        return -1;
}
