/* loop.c - the worker's loop thread (see worker.c for the pipeline): polls
 * Kafka, fills micro-batches, finds their models, runs the quota pre-check
 * and hands them to the compute threads; pauses fetching while the
 * pipeline is full; drains the pipeline on rebalances and shutdown. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_log_limit.h"
#include "kf_util.h"
#include "worker_int.h"

static kw_batch_t *batch_new(void)
{
        return calloc(1, sizeof(kw_batch_t));
}

static int inflight_get(kw_worker_t *w)
{
        int n;
        pthread_mutex_lock(&w->lock);
        n = w->inflight;
        pthread_mutex_unlock(&w->lock);
        return n;
}

/* --- loop thread -------------------------------------------------------- */

static void set_paused(kw_worker_t *w, int pause)
{
        rd_kafka_topic_partition_list_t *parts;
        int cnt;
        if (w->paused == pause || rd_kafka_assignment(w->rk, &parts))
                return;
        if (pause)
                rd_kafka_pause_partitions(w->rk, parts);
        else
                rd_kafka_resume_partitions(w->rk, parts);
        cnt = parts->cnt;
        rd_kafka_topic_partition_list_destroy(parts);
        w->paused = pause;
        /* a flood can make the pipeline fill and drain many times a second */
        kf_info_limited("fetching paused or resumed", "%s fetching from %d partitions",
                        pause ? "paused" : "resumed", cnt);
}

/* Logs a consumer error event; librdkafka recovers from all but fatal ones.
 * After a fatal one the consumer never fetches again: the worker shuts down
 * and exits 1, so that a supervisor starts a fresh one. */
static void consumer_error(kw_worker_t *w, rd_kafka_message_t *rkm)
{
        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                return;
        if (rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
                char why[512];
                rd_kafka_resp_err_t err = rd_kafka_fatal_error(w->rk, why, sizeof(why));
                if (!w->fatal)
                        kf_error("fatal consumer error %s: %s; the worker stops (exit status 1)",
                                 rd_kafka_err2name(err), why);
                w->fatal = 1;
                *w->stop = 1;
                return;
        }
        kf_warn("consumer: %s", rd_kafka_message_errstr(rkm));
}

/* The consumer's error callback (client-wide errors: brokers down,
 * authentication, TLS), called from rd_kafka_consumer_poll on the loop
 * thread.  Refused credentials, a failing TLS handshake (an unknown CA, a
 * certificate that does not name the broker) or a client certificate the
 * broker refuses, before the worker ever joined the group, is a
 * configuration that cannot work (kf_kafka_refusal): the worker stops at
 * start with the reason (exit status 1) rather than wait unready forever.
 * Later, the same errors are logged and retried like any broker outage (a
 * broker restarted with a new certificate, credentials being rotated). */
void kw_consumer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
        kw_worker_t *w = opaque;
        const char *check = NULL, *what = kf_kafka_refusal(err, reason, &check);

        if (!w->ever_assigned && what) {
                if (!w->fatal)
                        kf_error("Kafka %s at start: %s; check %s (-X or the config file's "
                                 "\"kafka\"); the worker stops (exit status 1)",
                                 what, reason, check);
                w->fatal = 1;
                *w->stop = 1;
                return;
        }
        /* What librdkafka logs when there is no callback (kafka.c's format). */
        kf_error("kafka %s ERROR: %s: %s", rd_kafka_name(rk), rd_kafka_err2name(err), reason);
}

/* Adds a job to the batch being filled: the message itself, or with
 * --chain-model the job mapped from the result message it holds. */
static int add_job(kw_worker_t *w, rd_kafka_message_t *rkm)
{
        char why[512], *job = NULL;
        size_t len = 0;
        int m, rc;
        if (!w->conf->chain_model)
                return kw_batch_add(w->cur, rkm, &w->limits);
        m = kw_chain_map(rkm->payload, rkm->len, w->conf->chain_model, &job, &len, why,
                         sizeof(why));
        rc = kw_batch_add_value(w->cur, rkm, job ? job : "", len, m ? why : NULL, &w->limits);
        free(job);
        return rc;
}

/* Adds a polled message to the batch being filled (or logs an error event).
 * Out of memory, the message is dropped, and the offset tracker blocks its
 * partition (logged), so that no later offset is stored before it is
 * redelivered.  Returns 1 if a job was added. */
static int take(kw_worker_t *w, rd_kafka_message_t *rkm)
{
        if (rkm->err) {
                consumer_error(w, rkm);
                rd_kafka_message_destroy(rkm);
                return 0;
        }
        if ((!w->cur && !(w->cur = batch_new())) || add_job(w, rkm)) {
                kw_offsets_lost(w->offsets, rd_kafka_topic_name(rkm->rkt), rkm->partition,
                                rkm->offset, "out of memory adding it to a batch");
                rd_kafka_message_destroy(rkm);
                return 0;
        }
        w->jobs_seen++;
        kw_metrics_add(w->metrics, KW_C_CONSUMED, 1);
        kw_metrics_observe(w->metrics, KW_H_QUEUE_WAIT, kw_since_message(rkm));
        return 1;
}

/* 1 while a held batch must not ask again yet (kw_hold_t). */
static int hold_waiting(const kw_hold_t *h)
{
        return h->backoff_ms && kf_mono_us() < h->at_us;
}

/* What was asked answered: returns 1 if a batch had been held. */
static int hold_release(kw_hold_t *h)
{
        int was = h->backoff_ms != 0;
        h->backoff_ms = 0;
        return was;
}

/* Asked in vain: the next ask after a capped exponential backoff.  Returns 1
 * the first time (the hold begins: say so), 0 while it lasts. */
static int hold_again(kw_hold_t *h)
{
        int first = !h->backoff_ms;
        h->backoff_ms =
            first ? BACKOFF_MIN_MS : kf_backoff_next(h->backoff_ms, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        h->at_us = kf_mono_us() + (int64_t)h->backoff_ms * 1000;
        return first;
}

/* Finds the models of the batch's jobs.  While the model registry is
 * unreachable, jobs whose model is not cached cannot be answered: that is an
 * outage, not their fault, so the batch waits here like it waits for a full
 * pipeline (dispatch() pauses fetching meanwhile) and the registry is asked
 * again with capped exponential backoff.  Returns 0 when every job has its
 * model or its error, -1 while the batch must wait. */
static int resolve(kw_worker_t *w, kw_batch_t *b)
{
        char why[256] = "";
        int held;

        if (hold_waiting(&w->resolve_hold))
                return -1;
        held = kw_batch_resolve(b, w->models, &w->costs, why, sizeof(why));
        if (!held) {
                if (hold_release(&w->resolve_hold))
                        kf_info("model registry reachable again: the %d held jobs go on", b->n);
                return 0;
        }
        if (hold_again(&w->resolve_hold))
                kf_warn("model registry unreachable: %d jobs wait for their models, fetching "
                        "pauses until it is back: %s",
                        held, why);
        else
                kf_debug("model registry still unreachable (%d jobs wait): %s", held, why);
        return -1;
}

/* Checks the batch's signatures (auth.h) before anything else is done for
 * it.  While the signing keys cannot be read (Redis away), the jobs cannot be
 * judged: like an unreachable registry, the batch waits (fetching pauses)
 * and Redis is asked again with capped exponential backoff.  Returns 0 when
 * every job is checked, -1 while the batch must wait. */
static int authorize(kw_worker_t *w, kw_batch_t *b)
{
        char why[256] = "";
        int held;

        if (hold_waiting(&w->auth_hold))
                return -1;
        held = kw_auth_check(&w->auth, b, why, sizeof(why));
        if (!held) {
                if (hold_release(&w->auth_hold))
                        kf_info("signing keys readable again: the %d held jobs go on", b->n);
                return 0;
        }
        if (hold_again(&w->auth_hold))
                kf_warn("signing keys unreadable: %d jobs wait for their check, fetching "
                        "pauses until Redis is back: %s",
                        held, why);
        return -1;
}

/* Hands the current batch to the compute threads if its models are known
 * and the pipeline has room.  Returns 0 if dispatched (or nothing to
 * dispatch), -1 if it must wait (pipeline full, or registry away). */
static int dispatch_now(kw_worker_t *w)
{
        kw_batch_t *b = w->cur;
        int room;

        if (!b || b->n == 0)
                return 0;
        if (authorize(w, b) || resolve(w, b))
                return -1;
        pthread_mutex_lock(&w->lock);
        /* Many dead-letter copies outstanding (the DLQ refuses them) count
         * as a full pipeline: each holds its message in memory. */
        room = w->inflight < w->max_inflight && !kw_dlq_full(&w->dlq);
        if (room) {
                w->inflight++;
                kw_inflight_gauge(w, w->inflight);
        }
        pthread_mutex_unlock(&w->lock);
        if (!room)
                return -1;
        kw_quota_precheck(&w->pre, b);
        for (int i = 0; i < b->n; i++) { /* what a message of its partition costs */
                const kw_job_t *j = &b->jobs[i];
                if (j->model && j->state == KW_JOB_NEW)
                        kw_costs_observe(w->part_costs, j->rkm->partition,
                                         (double)j->model->flops_per_row * j->job.rows);
        }
        for (int i = 0; i < b->n; i++) {
                rd_kafka_message_t *rkm = b->jobs[i].rkm;
                /* out of memory, the tracker blocks the partition at it */
                kw_offsets_add(w->offsets, rd_kafka_topic_name(rkm->rkt), rkm->partition,
                               rkm->offset);
        }
        w->cur = NULL;
        kw_metrics_observe(w->metrics, KW_H_BATCH_JOBS, b->n);
        kw_queue_push(&w->compute_q, b);
        return 0;
}

/* Forgets a message fetched while the partitions are paused and the
 * pipeline is full: the first such offset of each partition is remembered,
 * and resume() seeks back to it, so nothing is skipped and no batch grows
 * past its bounds. */
static void rewind_later(kw_worker_t *w, rd_kafka_message_t *rkm)
{
        const char *topic = rd_kafka_topic_name(rkm->rkt);
        if (!w->rewind)
                w->rewind = rd_kafka_topic_partition_list_new(8);
        if (!rd_kafka_topic_partition_list_find(w->rewind, topic, rkm->partition))
                rd_kafka_topic_partition_list_add(w->rewind, topic, rkm->partition)->offset =
                    rkm->offset;
        rd_kafka_message_destroy(rkm);
}

/* Seeks back to the messages rewind_later gave back, and resumes fetching.
 * A partition the seek fails for would go on after the messages it gave
 * back: the offset tracker blocks it at the first of them (logged), so they
 * are redelivered to its next owner. */
static void resume(kw_worker_t *w)
{
        if (w->rewind) {
                rd_kafka_error_t *error = rd_kafka_seek_partitions(w->rk, w->rewind, 5000);
                for (int i = 0; i < w->rewind->cnt; i++) {
                        const rd_kafka_topic_partition_t *rp = &w->rewind->elems[i];
                        char why[256];
                        if (!error && !rp->err)
                                continue;
                        snprintf(why, sizeof(why), "seeking back to it after a pause failed: %s",
                                 error ? rd_kafka_error_string(error) : rd_kafka_err2str(rp->err));
                        kw_offsets_lost(w->offsets, rp->topic, rp->partition, rp->offset, why);
                }
                if (error)
                        rd_kafka_error_destroy(error);
                rd_kafka_topic_partition_list_destroy(w->rewind);
                w->rewind = NULL;
        }
        set_paused(w, 0);
}

/* Dispatches the current batch, waiting for room.  A full pipeline (Redis
 * slow or away) or a registry outage is waited out without polling at
 * first: batches stay within their bounds.  After PAUSE_AFTER_MS the
 * partitions are paused and the consumer polled, so the group sees us alive
 * and rebalances are served; a message that still arrives is given back
 * (rewind_later). */
static void dispatch(kw_worker_t *w)
{
        int64_t since = kf_mono_us();
        while (dispatch_now(w)) {
                kw_status_tick(&w->status, kf_mono_us());
                if (*w->stop)
                        return; /* drain() takes it from here */
                if (kf_mono_us() - since < PAUSE_AFTER_MS * 1000) {
                        struct timespec ts = kf_timespec_after(CLOCK_REALTIME, 5);
                        pthread_mutex_lock(&w->lock);
                        /* a held batch waits too: asking again before
                         * its backoff ends would only spin */
                        if (w->inflight >= w->max_inflight || w->resolve_hold.backoff_ms ||
                            w->auth_hold.backoff_ms || kw_dlq_full(&w->dlq))
                                pthread_cond_timedwait(&w->idle, &w->lock, &ts);
                        pthread_mutex_unlock(&w->lock);
                } else {
                        rd_kafka_message_t *rkm;
                        set_paused(w, 1);
                        rkm = rd_kafka_consumer_poll(w->rk, 50);
                        if (w->cur == NULL) { /* a rebalance drained it meanwhile */
                                /* and forgot the rewinds: a message now comes from
                                 * the new assignment, not to be given back but
                                 * taken (given back, nothing would seek to it) */
                                if (!rkm || !take(w, rkm))
                                        return;
                                since = kf_mono_us();
                                continue;
                        }
                        if (rkm && rkm->err) {
                                consumer_error(w, rkm);
                                rd_kafka_message_destroy(rkm);
                        } else if (rkm) {
                                rewind_later(w, rkm);
                        }
                }
        }
        if (w->paused)
                resume(w);
}

/* Waits until the current batch is dispatched, every dispatched batch is
 * written and every dead-letter copy taken, for at most timeout_ms.  If that
 * is not enough (Redis or the DLQ away), the rest is abandoned: the writer
 * drops it and the dead-letter stage gives its copies up, without storing
 * offsets, so it is redelivered to the partitions' next owner.  Never polls
 * the consumer (it runs inside the rebalance callback too).  Returns 0 if
 * everything was written, -1 if some was abandoned. */
static int drain(kw_worker_t *w, int64_t timeout_ms)
{
        int64_t until = kf_mono_us() + timeout_ms * 1000;
        int rc = 0;

        pthread_mutex_lock(&w->lock);
        while (w->inflight > 0 || (w->cur && w->cur->n) || (!rc && kw_dlq_held(&w->dlq))) {
                struct timespec ts;
                /* draining is the loop's work for its grace period, not a stall */
                kw_status_tick(&w->status, kf_mono_us());
                if (w->cur && w->cur->n && w->inflight < w->max_inflight) {
                        int waiting;
                        pthread_mutex_unlock(&w->lock);
                        waiting = dispatch_now(w); /* -1: the registry is away */
                        pthread_mutex_lock(&w->lock);
                        if (!waiting)
                                continue;
                }
                if (!rc && kf_mono_us() > until) {
                        int held = w->cur ? w->cur->n : 0;
                        kf_error("%d batches, %d held jobs and %d dead-letter copies not done "
                                 "within %lld ms: abandoning them (they will be redelivered)",
                                 w->inflight, held, kw_dlq_held(&w->dlq), (long long)timeout_ms);
                        atomic_store(&w->abandon, 1);
                        atomic_fetch_add(&w->abandoned, (unsigned long long)held);
                        kw_batch_free(w->cur); /* never dispatched: not tracked */
                        w->cur = NULL;
                        rc = -1;
                }
                ts = kf_timespec_after(CLOCK_REALTIME, 50);
                pthread_cond_timedwait(&w->idle, &w->lock, &ts);
        }
        pthread_mutex_unlock(&w->lock);
        atomic_store(&w->abandon, 0);
        /* Copies given up on time-out, or that can never be taken (fatal
         * producer error): nothing of theirs may be stored after this, since
         * the caller forgets the partitions' offsets next. */
        if (kw_dlq_abandon(&w->dlq))
                rc = -1;
        return rc;
}

/* Called by librdkafka from rd_kafka_consumer_poll, on the loop thread,
 * every statistics.interval.ms. */
int kw_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
        kw_worker_t *w = opaque;
        size_t max = (size_t)w->assigned + 1, n = 0;
        kw_lag_t *lags;
        char err[256];
        (void)rk;
        if (max > KW_LAG_MAX_PARTITIONS)
                max = KW_LAG_MAX_PARTITIONS;
        if (!(lags = malloc(max * sizeof(*lags))))
                return 0;
        if (kw_lag_parse(json, len, w->conf->topic, lags, max, &n, err, sizeof(err)))
                kf_debug("%s", err);
        else
                kw_metrics_set_lag(w->metrics, lags, n, kw_costs_remaining(w->part_costs, lags, n));
        free(lags);
        return 0; /* librdkafka frees json */
}

/* Called by librdkafka from rd_kafka_consumer_poll, on the loop thread. */
void kw_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                     rd_kafka_topic_partition_list_t *parts, void *opaque)
{
        kw_worker_t *w = opaque;

        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
                kf_info("assigned %d partitions", parts->cnt);
                w->assigned = parts->cnt;
                w->ever_assigned = 1;
                rd_kafka_assign(rk, parts);
                /* A partition paused before a revoke (a full pipeline) keeps
                 * librdkafka's pause flag when it is assigned again, and would
                 * never be fetched: resume them all (a no-op for the others). */
                rd_kafka_resume_partitions(rk, parts);
                w->paused = 0;
                kw_metrics_set(w->metrics, KW_G_ASSIGNED_PARTITIONS, parts->cnt);
                __atomic_store_n(&w->status.in_group, 1, __ATOMIC_RELAXED);
                return;
        }
        /* Revoked (eager: all of them) or lost.  Finish what is in flight if
         * Redis takes it within the grace period, else abandon it; then
         * commit what was stored and let go. */
        __atomic_store_n(&w->status.in_group, 0, __ATOMIC_RELAXED);
        w->assigned = 0;
        kw_metrics_set(w->metrics, KW_G_ASSIGNED_PARTITIONS, 0);
        kf_info("revoking %d partitions (%s); %d batches in flight", parts->cnt,
                rd_kafka_err2str(err), inflight_get(w) + (w->cur && w->cur->n ? 1 : 0));
        drain(w, w->conf->grace_ms);
        kw_rt_commit_offsets(&w->rt); /* exactly once: what the dead-letter stage stored */
        kw_offsets_forget(w->offsets);
        kw_rt_reset(&w->rt);
        if (w->rewind) { /* the next owner starts at the committed offsets */
                rd_kafka_topic_partition_list_destroy(w->rewind);
                w->rewind = NULL;
        }
        if (!rd_kafka_assignment_lost(rk) && !w->conf->exactly_once)
                rd_kafka_commit(rk, NULL, 0);
        rd_kafka_assign(rk, NULL);
        w->paused = 0;
}

/* The periodic summary line: what happened since the last one.  Never a
 * line per job at the default level. */
static void summary(kw_worker_t *w, int64_t now)
{
        int64_t every = w->conf->log_summary_s * 1000000;
        double s;
        kw_totals_t t;

        if (every <= 0)
                return;
        if (!w->summary_at_us) { /* the first one a period after start */
                w->summary_at_us = now + every;
                return;
        }
        if (now < w->summary_at_us)
                return;
        s = (double)(now - w->summary_at_us + every) / 1e6;
        w->summary_at_us = now + every;
        kw_metrics_totals(w->metrics, &t);
        kf_info("last %.0f s: %llu jobs (%.1f/s), %llu ok, %llu errors, %llu duplicates, %llu "
                "dead-lettered; %d batches in flight, %lld partitions",
                s, (unsigned long long)(t.consumed - w->summary_last.consumed),
                (double)(t.consumed - w->summary_last.consumed) / s,
                (unsigned long long)(t.ok - w->summary_last.ok),
                (unsigned long long)(t.errors - w->summary_last.errors),
                (unsigned long long)(t.duplicates - w->summary_last.duplicates),
                (unsigned long long)(t.dead_lettered - w->summary_last.dead_lettered),
                inflight_get(w), (long long)w->assigned);
        w->summary_last = t;
}

/* Metrics the loop thread pulls from elsewhere, once a second: what the
 * model store keeps (its directory mode is the loop thread's alone) and the
 * dead-letter copies acknowledged. */
static void pull_metrics(kw_worker_t *w, int64_t now)
{
        ms_store_stats_t st;
        unsigned long long sent;
        if (now < w->gauges_at_us)
                return;
        w->gauges_at_us = now + GAUGES_EVERY_US;
        ms_store_stats(w->models, &st);
        kw_metrics_set(w->metrics, KW_G_MODELS_CACHED_BYTES, (int64_t)st.cached_bytes);
        kw_metrics_set(w->metrics, KW_G_MODELS_SERVING_BYTES, (int64_t)st.serving_bytes);
        sent = atomic_load(&w->dlq.sent);
        kw_metrics_add(w->metrics, KW_C_DEAD_LETTERED, sent - w->dlq_sent_seen);
        w->dlq_sent_seen = sent;
        summary(w, now);
}

static void *closer_main(void *arg)
{
        kw_worker_t *w = arg;
        rd_kafka_consumer_close(w->rk);
        __atomic_store_n(&w->closed, 1, __ATOMIC_RELEASE);
        return NULL;
}

/* rd_kafka_consumer_close waits until the group coordinator acknowledges
 * that this member left; with every broker gone that is the whole session
 * timeout (45 s by default), past any grace period, and a supervisor would
 * kill the worker first.  So the close runs on a thread of its own, waited
 * for until deadline; if it is not done by then, the worker says so and
 * leaves without it (kw_worker_closed): what it stored but could not
 * commit is consumed again by the partitions' next owner and found done. */
static void close_bounded(kw_worker_t *w, int64_t deadline_us)
{
        pthread_t t;
        if (pthread_create(&t, NULL, closer_main, w)) {
                closer_main(w);
                return;
        }
        while (!__atomic_load_n(&w->closed, __ATOMIC_ACQUIRE) && kf_mono_us() < deadline_us)
                kf_sleep_us(10000, NULL);
        if (__atomic_load_n(&w->closed, __ATOMIC_ACQUIRE)) {
                pthread_join(t, NULL);
                return;
        }
        pthread_detach(t);
        kf_warn("leaving the consumer group did not finish within --grace-ms + %d ms (brokers "
                "unreachable?): exiting without it; offsets stored since the last commit are "
                "consumed again by the next owner and found done",
                KW_CLOSE_EXTRA_MS);
}

int kw_worker_closed(const kw_worker_t *w)
{
        return __atomic_load_n(&w->closed, __ATOMIC_ACQUIRE);
}

int kw_worker_run(kw_worker_t *w)
{
        const kw_config_t *c = w->conf;
        int rc = 0;

        while (!*w->stop) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(w->rk, 100);
                int64_t until, now = kf_mono_us();
                kw_status_tick(&w->status, now);
                pull_metrics(w, now);
                kf_log_limit_flush(0); /* summaries of ended windows, even if the flood stopped */
                if (!rkm || !take(w, rkm))
                        continue;
                /* Fill the batch: whatever is already fetched, then wait up to
                 * batch_wait_us for more (the dynamic batcher's max delay). */
                until = kf_mono_us() + c->batch_wait_us;
                while (w->cur && w->cur->n < c->batch_max_jobs &&
                       w->cur->rows < (uint64_t)c->batch_max_rows && !*w->stop) {
                        int64_t left = until - kf_mono_us();
                        rkm = rd_kafka_consumer_poll(w->rk, left >= 1000 ? (int)(left / 1000) : 0);
                        if (!rkm) {
                                if (left < 1000)
                                        break;
                                continue;
                        }
                        take(w, rkm);
                }
                dispatch(w);
        }

        /* Graceful shutdown: finish in-flight work within the grace period,
         * then leave the group (consumer_close commits the stored offsets). */
        __atomic_store_n(&w->status.stopping, 1, __ATOMIC_RELAXED);
        kf_info("shutting down: %d batches in flight, %d dead-letter copies outstanding",
                inflight_get(w) + (w->cur != NULL), kw_dlq_held(&w->dlq));
        {
                int64_t deadline = kf_mono_us() + (c->grace_ms + KW_CLOSE_EXTRA_MS) * 1000;
                if (drain(w, c->grace_ms))
                        rc = -1;
                kw_rt_commit_offsets(&w->rt);
                close_bounded(w, deadline);
        }
        /* A client that died is an error a supervisor must see: exit 1. */
        if (w->fatal || kw_dlq_fatal(&w->dlq) || kw_rt_fatal(&w->rt))
                rc = -1;
        {
                unsigned long long written = 0, duplicates = 0;
                unsigned long long undecodable = w->dlq_commit.undecodable;
                for (int i = 0; i < w->n_writers; i++) {
                        written += w->writers[i].commit.written;
                        duplicates += w->writers[i].commit.duplicates;
                        undecodable += w->writers[i].commit.undecodable;
                }
                kf_log_limit_flush(1); /* every line not logged is counted in a summary */
                kf_info("stopped: %llu jobs, %llu batches, %llu written, %llu duplicates, "
                        "%llu undecodable (%llu dead-lettered), %llu abandoned",
                        w->jobs_seen, (unsigned long long)atomic_load(&w->batches), written,
                        duplicates, undecodable, (unsigned long long)atomic_load(&w->dlq.sent),
                        (unsigned long long)atomic_load(&w->abandoned));
        }
        return rc;
}
