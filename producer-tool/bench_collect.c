/* bench_collect.c - what became of a `kinfer bench` run's jobs: completion
 * from the users' usage counters, then each result read with GET and
 * kf_result_decode() (ok or error, latency from `done`), and from the probe
 * when sampled results became visible. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "kf_keys.h"
#include "kf_result.h"
#include "kf_util.h"

/* How often completion is polled (usage counters). */
#define BENCH_POLL_US 20000

/* Sum of the users' jobs + errors counters (one pipelined round trip).
 * Returns the sum, or -1 on a Redis error (reported). */
int64_t kc_bench_usage_sum(kc_bench_t *b)
{
        char key[KF_KEY_MAX];
        int64_t sum = 0;
        int failed = 0;

        for (size_t u = 0; u < b->n_users; u++) /* before anything is queued */
                if (kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_USAGE, NULL) < 0) {
                        kc_err("bench: no usage key for user %s", b->users[u]);
                        return -1;
                }
        for (size_t u = 0; u < b->n_users; u++) {
                kf_user_key(key, b->conf->kc.prefix, b->users[u], KF_K_USAGE, NULL);
                if (redisAppendCommand(b->redis, "HMGET %s jobs errors", key) != REDIS_OK)
                        failed = 1;
        }
        for (size_t u = 0; u < b->n_users && !failed; u++) {
                redisReply *r = NULL;
                if (redisGetReply(b->redis, (void **)&r) != REDIS_OK || !r ||
                    r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                        failed = 1;
                } else {
                        for (size_t k = 0; k < 2; k++)
                                if (r->element[k]->type == REDIS_REPLY_STRING)
                                        sum += strtoll(r->element[k]->str, NULL, 10);
                }
                freeReplyObject(r);
        }
        if (failed) {
                kc_err("redis: reading usage counters: %s",
                       b->redis->errstr[0] ? b->redis->errstr : "unexpected reply");
                return -1;
        }
        return sum;
}

/* Polls the usage counters until every delivered job has a result, or
 * none completes for --timeout seconds; t_all_us is when the poll saw the
 * last one (at most BENCH_POLL_US late).  Returns 0, or -1 on Redis error. */
int kc_bench_wait_done(kc_bench_t *b, int64_t base)
{
        int64_t last_change = kf_mono_us(), t0 = kf_mono_us(), prev = -1;

        while (!*b->stop) {
                int64_t sum = kc_bench_usage_sum(b), done, now = kf_now_us();
                double secs;
                if (sum < 0)
                        return -1;
                done = sum - base;
                secs = (double)(kf_mono_us() - t0) / 1e6;
                kc_bench_bar(b, "results", (size_t)(done > 0 ? done : 0), b->delivered,
                             secs > 0.2 ? (double)done / secs : 0, 0);
                if (done != prev)
                        b->t_all_us = now;
                if (done >= (int64_t)b->delivered)
                        break;
                if (done != prev) {
                        prev = done;
                        last_change = kf_mono_us();
                } else if (kf_mono_us() - last_change > b->conf->kc.timeout_s * 1000000) {
                        kc_err("bench: no job completed for %lld s; %lld of %zu results missing",
                               (long long)b->conf->kc.timeout_s,
                               (long long)((int64_t)b->delivered - done), b->delivered);
                        break;
                }
                kf_sleep_us(BENCH_POLL_US, b->stop);
        }
        if (b->bar)
                fputs("\r\033[K", stderr);
        return 0;
}

/* Builds job idx's result key into key (KF_KEY_MAX bytes).  Returns 0, or
 * -1 (reported). */
int kc_bench_result_key(const kc_bench_t *b, size_t idx, char *key)
{
        const char *user = b->users[idx % b->n_users];
        char id[JOB_ID_MAX + 1];

        kc_bench_job_id(b, idx, id);
        if (kf_user_key(key, b->conf->kc.prefix, user, KF_K_RESULT, id) < 0) {
                kc_err("bench: cannot build the result key of user %s, job %s", user, id);
                return -1;
        }
        return 0;
}

/* Notes an error result (or one that cannot be read) of job id. */
static void bench_error(kc_bench_t *b, const char *id, const char *what, const char *why)
{
        if (!b->errors)
                snprintf(b->first_error, sizeof(b->first_error), "%.128s: %.40s: %.300s", id, what,
                         why);
        b->errors++;
}

/* Counts one result value of job idx: ok or error, and its latencies. */
static void bench_result(kc_bench_t *b, size_t idx, const redisReply *r)
{
        char id[JOB_ID_MAX + 1], err[256];
        kf_result_t res;

        kc_bench_job_id(b, idx, id);
        if (kf_result_decode(r->str, r->len, &res, err, sizeof(err))) {
                bench_error(b, id, "unreadable result", err);
        } else if (strcmp(res.id, id) || strcmp(res.user, b->users[idx % b->n_users])) {
                snprintf(err, sizeof(err), "it names job %.128s of user %.64s", res.id, res.user);
                bench_error(b, id, "another job's result", err);
        } else {
                int64_t done = (int64_t)res.done;
                int64_t started = res.started ? (int64_t)res.started : done;
                if (res.ok && res.nonfinite) { /* computed and charged, but unusable */
                        snprintf(err, sizeof(err), "%llu output values are NaN or +-Inf",
                                 (unsigned long long)res.nonfinite);
                        bench_error(b, id, "nonfinite", err);
                } else if (res.ok) {
                        b->ok++;
                } else {
                        bench_error(b, id, res.error, res.message);
                }
                if (done > b->last_done_ms)
                        b->last_done_ms = done;
                b->lat_ms[b->n_lat] = (double)(done * 1000 - b->sent_us[idx]) / 1e3;
                b->svc_ms[b->n_lat] = (double)(done - started);
                b->n_lat++;
        }
        kf_result_clear(&res);
}

/* Reads the result of every delivered job (GET, pipelined in chunks), and
 * derives latencies (`done`, `started`), errors and missing results. */
int kc_bench_collect(kc_bench_t *b)
{
        char key[KF_KEY_MAX];

        if (!(b->lat_ms = malloc((b->n ? b->n : 1) * sizeof(double))) ||
            !(b->svc_ms = malloc((b->n ? b->n : 1) * sizeof(double)))) {
                kc_err("bench: out of memory");
                return -1;
        }
        for (size_t lo = 0; lo < b->published; lo += KC_BENCH_PIPE_CHUNK) {
                size_t hi = lo + KC_BENCH_PIPE_CHUNK < b->published ? lo + KC_BENCH_PIPE_CHUNK
                                                                    : b->published;
                for (size_t i = lo; i < hi; i++) {
                        if (b->state[i] != KC_BENCH_JOB_DELIVERED)
                                continue;
                        if (kc_bench_result_key(b, i, key))
                                return -1;
                        if (redisAppendCommand(b->redis, "GET %s", key) != REDIS_OK)
                                goto fail;
                }
                for (size_t i = lo; i < hi; i++) {
                        redisReply *r = NULL;
                        if (b->state[i] != KC_BENCH_JOB_DELIVERED)
                                continue;
                        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK || !r ||
                            (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL)) {
                                freeReplyObject(r);
                                goto fail;
                        }
                        if (r->type == REDIS_REPLY_NIL)
                                b->missing++;
                        else
                                bench_result(b, i, r);
                        freeReplyObject(r);
                }
        }
        return 0;
fail:
        kc_err("redis: reading results: %s",
               b->redis->errstr[0] ? b->redis->errstr : "unexpected reply");
        return -1;
}

/* Stops the probe thread (once every delivered probed job was seen, or after
 * 2 s) and derives the visible latency of the probed jobs.  Returns 0 or -1. */
int kc_bench_collect_visible(kc_bench_t *b)
{
        size_t every = b->probe_every, expect = 0;

        if (!b->probe)
                return 0;
        for (size_t i = 0; i < b->published; i += every)
                expect += b->state[i] == KC_BENCH_JOB_DELIVERED;
        b->probe_running = 0;
        if (kc_probe_finish(b->probe, expect, 2000000)) {
                kc_err("bench: the probe thread's Redis connection failed");
                return -1;
        }
        if (!(b->vis_ms = malloc((b->published / every + 1) * sizeof(double)))) {
                kc_err("bench: out of memory");
                return -1;
        }
        for (size_t i = 0; i < b->published; i += every) {
                int64_t seen = kc_probe_seen_us(b->probe, i);
                if (seen && b->state[i] == KC_BENCH_JOB_DELIVERED)
                        b->vis_ms[b->n_vis++] = (double)(seen - b->sent_us[i]) / 1e3;
        }
        return 0;
}
