/* worker.c - kinfer-worker's pipeline: the loop thread polls Kafka and forms
 * micro-batches, compute threads run the forward passes, writer threads
 * commit results to Redis and only then let the offsets be stored.
 *
 *   loop thread     poll, decode, resolve models, quota pre-check, track
 *                   offsets  --compute_q-->
 *   compute threads (compute_threads of them, OpenBLAS single-threaded each
 *                   unless --blas-threads says otherwise)  --write_q-->
 *   writer threads  (writer_threads of them, a Redis connection each)
 *                   hand messages without an address (id and user) to the dead-letter
 *                   stage, pipelined Redis steps (retried with backoff while
 *                   Redis is away), kw_offsets_done
 *   dead-letter stage (dlq.c, a thread and a Redis connection) copies those
 *                   messages to the DLQ topic, retrying until the broker
 *                   takes them, then counts them and kw_offsets_done: a copy
 *                   that waits holds back its own offset, never other results
 *
 * Two writers keep Redis busy: while Redis runs one writer's pipeline, the
 * other builds its next one or reads its replies (with one, Redis idles
 * for that time).  Each step is atomic, so writers need no order between
 * them; offsets are tracked out of order anyway.
 *
 * At most compute_threads + writer_threads + 1 batches are in flight; when
 * the pipeline is full (Redis slow or away), or a batch waits for the model
 * registry, the loop thread pauses its partitions and keeps polling, so it
 * stays in the group.  Rebalances and shutdown drain the pipeline first (see
 * drain()). */
#include "worker.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batch.h"
#include "commit.h"
#include "dlq.h"
#include "endpoint.h"
#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_util.h"
#include "metrics.h"
#include "model_store.h"
#include "offsets.h"
#include "queue.h"
#include "quota.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 5000
#define PAUSE_AFTER_MS 1000 /* a full pipeline for this long pauses fetching */
#define GAUGES_EVERY_US 1000000 /* the loop thread refreshes pulled metrics this often */

typedef struct kw_writer_s {
        kw_worker_t *w;
        kw_commit_t commit; /* this writer's step writer and connection */
        pthread_t thread;
        int started;
} kw_writer_t;

struct kw_worker_s {
        const kw_config_t *conf;
        volatile sig_atomic_t *stop;
        char worker_id[256];
        job_limits_t limits;
        kw_compute_limits_t costs; /* output and scratch bounds per job */
        rd_kafka_t *rk;
        kw_step_conf_t step; /* what every step is told (read only once running) */
        ms_store_t *models;  /* loop thread */
        kw_precheck_t pre;   /* loop thread: quota pre-check */
        kw_writer_t *writers;
        int n_writers;
        kw_dlq_t dlq;        /* the dead-letter stage (thread-safe, see dlq.h) */
        kw_commit_t dlq_commit; /* the dead-letter stage's counting */
        kw_offsets_t *offsets;
        kw_queue_t compute_q, write_q;
        pthread_t *computers;
        int n_computers;
        kw_batch_t *cur;     /* loop thread: the batch being filled */
        int paused;          /* loop thread: the assignment is paused */
        int resolve_backoff_ms; /* loop thread: the registry is away (0: it is not) */
        int64_t resolve_at_us;  /* loop thread: when to ask it again */
        rd_kafka_topic_partition_list_t *rewind; /* loop thread: see rewind_later */
        int max_inflight;
        pthread_mutex_t lock; /* guards inflight, with `idle` */
        pthread_cond_t idle;  /* signalled when a batch leaves the pipeline */
        int inflight;         /* batches dispatched, not yet written */
        atomic_int abandon;   /* writer: drop batches instead of retrying */
        atomic_ullong batches, abandoned;
        unsigned long long jobs_seen; /* loop thread */
        int fatal;            /* loop thread: the consumer had a fatal error */
        kw_metrics_t *metrics;   /* NULL unless --http (then thread-safe) */
        kw_status_t status;      /* what /healthz and /readyz read (atomics) */
        kw_endpoint_t *endpoint; /* --http */
        int64_t gauges_at_us;    /* loop thread: next refresh of the pulled metrics */
        unsigned long long dlq_sent_seen; /* loop thread: dead-letter copies counted */
};

/* Seconds from a message's Kafka timestamp (producer or broker time) to
 * now, or -1 if it has none. */
static double since_message(const rd_kafka_message_t *rkm)
{
        int64_t ts = rd_kafka_message_timestamp(rkm, NULL);
        return ts > 0 ? (double)(kf_now_ms() - ts) / 1e3 : -1;
}

static void inflight_gauge(kw_worker_t *w, int n)
{
        kw_metrics_set(w->metrics, KW_G_INFLIGHT_BATCHES, n);
}

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

/* --- compute threads ---------------------------------------------------- */

static void *compute_main(void *arg)
{
        kw_worker_t *w           = arg;
        kw_compute_ctx_t ctx     = {0};
        kw_batch_t *b;
        while ((b = kw_queue_pop(&w->compute_q))) {
                if (!atomic_load(&w->abandon)) {
                        int64_t t0 = kf_mono_us();
                        kw_batch_compute(b, &ctx, (uint32_t)w->conf->batch_max_rows);
                        kw_metrics_observe(w->metrics, KW_H_COMPUTE,
                                           (double)(kf_mono_us() - t0) / 1e6);
                }
                kw_queue_push(&w->write_q, b);
        }
        kw_compute_ctx_free(&ctx);
        return NULL;
}

/* The next wait of a capped exponential backoff. */
static int backoff_next(int ms)
{
        return ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2;
}

/* --- writer threads ----------------------------------------------------- */

/* One attempt to make a computed batch durable: messages without an
 * address (no readable id or user) go to the dead-letter stage, which copies them on its own
 * time (a copy the DLQ does not take must not hold back these results),
 * then the steps.  A job the step hands back (quota window rolled over) is
 * computed here and written in the next round.  Returns 0 or -1. */
static int write_once(kw_writer_t *wr, kw_batch_t *b, kw_compute_ctx_t *ctx)
{
        kw_worker_t *w = wr->w;
        char err[512];

        kw_dlq_take(&w->dlq, b);
        for (int round = 0; round < 3; round++) {
                int left = 0;
                kw_batch_compute(b, ctx, (uint32_t)w->conf->batch_max_rows);
                if (kw_commit_batch(&wr->commit, b, err, sizeof(err))) {
                        kf_warn("results of %d jobs not written yet: %s", b->n, err);
                        return -1;
                }
                for (int i = 0; i < b->n; i++)
                        left += b->jobs[i].state != KW_JOB_WRITTEN &&
                                b->jobs[i].state != KW_JOB_HELD;
                if (!left)
                        return 0;
        }
        kf_warn("batch of %d jobs: steps keep handing jobs back; retrying", b->n);
        return -1;
}

/* Sleeps ms in small steps, returning early when the batch is abandoned. */
static void backoff_sleep(kw_worker_t *w, int ms)
{
        for (int slept = 0; slept < ms && !atomic_load(&w->abandon); slept += 50) {
                struct timespec ts = {0, 50 * 1000000L};
                nanosleep(&ts, NULL);
        }
}

static void *writer_main(void *arg)
{
        kw_writer_t *wr      = arg;
        kw_worker_t *w       = wr->w;
        kw_compute_ctx_t ctx = {0};
        kw_batch_t *b;

        while ((b = kw_queue_pop(&w->write_q))) {
                int backoff = BACKOFF_MIN_MS;
                while (!atomic_load(&w->abandon) && write_once(wr, b, &ctx)) {
                        backoff_sleep(w, backoff);
                        backoff = backoff_next(backoff);
                }
                if (atomic_load(&w->abandon)) {
                        /* Not stored, so redelivered to the partitions' next owner;
                         * any step we did write makes its copy a no-op there. */
                        for (int i = 0; i < b->n; i++) /* HELD: the dead-letter stage's */
                                atomic_fetch_add(&w->abandoned,
                                                 b->jobs[i].state != KW_JOB_HELD);
                } else {
                        for (int i = 0; i < b->n; i++) {
                                rd_kafka_message_t *rkm = b->jobs[i].rkm;
                                if (b->jobs[i].state != KW_JOB_WRITTEN)
                                        continue; /* HELD: the dead-letter stage's */
                                kw_metrics_observe(w->metrics, KW_H_END_TO_END,
                                                   since_message(rkm));
                                kw_offsets_done(w->offsets, rd_kafka_topic_name(rkm->rkt),
                                                rkm->partition, rkm->offset);
                        }
                        atomic_fetch_add(&w->batches, 1);
                }
                kw_batch_free(b);
                pthread_mutex_lock(&w->lock);
                w->inflight--;
                inflight_gauge(w, w->inflight);
                pthread_cond_broadcast(&w->idle);
                pthread_mutex_unlock(&w->lock);
        }
        kw_compute_ctx_free(&ctx);
        return NULL;
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
        kf_info("%s fetching from %d partitions", pause ? "paused" : "resumed", cnt);
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
        if ((!w->cur && !(w->cur = batch_new())) || kw_batch_add(w->cur, rkm, &w->limits)) {
                kw_offsets_lost(w->offsets, rd_kafka_topic_name(rkm->rkt), rkm->partition,
                                rkm->offset, "out of memory adding it to a batch");
                rd_kafka_message_destroy(rkm);
                return 0;
        }
        w->jobs_seen++;
        kw_metrics_add(w->metrics, KW_C_CONSUMED, 1);
        kw_metrics_observe(w->metrics, KW_H_QUEUE_WAIT, since_message(rkm));
        return 1;
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

        if (w->resolve_backoff_ms && kf_mono_us() < w->resolve_at_us)
                return -1;
        held = kw_batch_resolve(b, w->models, &w->costs, why, sizeof(why));
        if (!held) {
                if (w->resolve_backoff_ms)
                        kf_info("model registry reachable again: the %d held jobs go on", b->n);
                w->resolve_backoff_ms = 0;
                return 0;
        }
        if (!w->resolve_backoff_ms) {
                kf_warn("model registry unreachable: %d jobs wait for their models, fetching "
                        "pauses until it is back: %s",
                        held, why);
                w->resolve_backoff_ms = BACKOFF_MIN_MS;
        } else {
                kf_debug("model registry still unreachable (%d jobs wait): %s", held, why);
                w->resolve_backoff_ms = backoff_next(w->resolve_backoff_ms);
        }
        w->resolve_at_us = kf_mono_us() + (int64_t)w->resolve_backoff_ms * 1000;
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
        if (resolve(w, b))
                return -1;
        pthread_mutex_lock(&w->lock);
        /* Many dead-letter copies outstanding (the DLQ refuses them) count
         * as a full pipeline: each holds its message in memory. */
        room = w->inflight < w->max_inflight && !kw_dlq_full(&w->dlq);
        if (room) {
                w->inflight++;
                inflight_gauge(w, w->inflight);
        }
        pthread_mutex_unlock(&w->lock);
        if (!room)
                return -1;
        kw_quota_precheck(&w->pre, b);
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
                        struct timespec ts;
                        pthread_mutex_lock(&w->lock);
                        clock_gettime(CLOCK_REALTIME, &ts);
                        ts.tv_nsec += 5 * 1000000L;
                        if (ts.tv_nsec >= 1000000000L) {
                                ts.tv_sec++;
                                ts.tv_nsec -= 1000000000L;
                        }
                        if (w->inflight >= w->max_inflight || w->resolve_backoff_ms ||
                            kw_dlq_full(&w->dlq))
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
        int rc        = 0;

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
                        rc     = -1;
                }
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 50 * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
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

/* Called by librdkafka from rd_kafka_consumer_poll, on the loop thread. */
static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
        kw_worker_t *w = opaque;

        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
                kf_info("assigned %d partitions", parts->cnt);
                rd_kafka_assign(rk, parts);
                w->paused = 0;
                kw_metrics_set(w->metrics, KW_G_ASSIGNED_PARTITIONS, parts->cnt);
                __atomic_store_n(&w->status.in_group, 1, __ATOMIC_RELAXED);
                return;
        }
        /* Revoked (eager: all of them) or lost.  Finish what is in flight if
         * Redis takes it within the grace period, else abandon it; then
         * commit what was stored and let go. */
        __atomic_store_n(&w->status.in_group, 0, __ATOMIC_RELAXED);
        kw_metrics_set(w->metrics, KW_G_ASSIGNED_PARTITIONS, 0);
        kf_info("revoking %d partitions (%s); %d batches in flight", parts->cnt,
                rd_kafka_err2str(err), inflight_get(w) + (w->cur && w->cur->n ? 1 : 0));
        drain(w, w->conf->grace_ms);
        kw_offsets_forget(w->offsets);
        if (w->rewind) { /* the next owner starts at the committed offsets */
                rd_kafka_topic_partition_list_destroy(w->rewind);
                w->rewind = NULL;
        }
        if (!rd_kafka_assignment_lost(rk))
                rd_kafka_commit(rk, NULL, 0);
        rd_kafka_assign(rk, NULL);
        w->paused = 0;
}

/* Metrics the loop thread pulls from elsewhere, once a second: what the
 * model store keeps (its directory mode is the loop thread's alone) and the
 * dead-letter copies acknowledged. */
static void pull_metrics(kw_worker_t *w, int64_t now)
{
        ms_store_stats_t st;
        unsigned long long sent;
        if (!w->metrics || now < w->gauges_at_us)
                return;
        w->gauges_at_us = now + GAUGES_EVERY_US;
        ms_store_stats(w->models, &st);
        kw_metrics_set(w->metrics, KW_G_MODELS_CACHED_BYTES, (int64_t)st.cached_bytes);
        kw_metrics_set(w->metrics, KW_G_MODELS_SERVING_BYTES, (int64_t)st.serving_bytes);
        sent = atomic_load(&w->dlq.sent);
        kw_metrics_add(w->metrics, KW_C_DEAD_LETTERED, sent - w->dlq_sent_seen);
        w->dlq_sent_seen = sent;
}

int kw_worker_run(kw_worker_t *w)
{
        const kw_config_t *c = w->conf;
        int rc               = 0;

        while (!*w->stop) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(w->rk, 100);
                int64_t until, now = kf_mono_us();
                kw_status_tick(&w->status, now);
                pull_metrics(w, now);
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
        if (drain(w, c->grace_ms))
                rc = -1;
        rd_kafka_consumer_close(w->rk);
        /* A client that died is an error a supervisor must see: exit 1. */
        if (w->fatal || kw_dlq_fatal(&w->dlq))
                rc = -1;
        {
                unsigned long long written = 0, duplicates = 0;
                unsigned long long undecodable = w->dlq_commit.undecodable;
                for (int i = 0; i < w->n_writers; i++) {
                        written += w->writers[i].commit.written;
                        duplicates += w->writers[i].commit.duplicates;
                        undecodable += w->writers[i].commit.undecodable;
                }
                kf_info("stopped: %llu jobs, %llu batches, %llu written, %llu duplicates, "
                        "%llu undecodable (%llu dead-lettered), %llu abandoned",
                        w->jobs_seen, (unsigned long long)atomic_load(&w->batches), written,
                        duplicates, undecodable, (unsigned long long)atomic_load(&w->dlq.sent),
                        (unsigned long long)atomic_load(&w->abandoned));
        }
        return rc;
}

static int threads_start(kw_worker_t *w, char *errstr, size_t errstr_size)
{
        int n = (int)w->conf->compute_threads;
        if (n <= 0) {
                long cpus = sysconf(_SC_NPROCESSORS_ONLN);
                n         = cpus > 0 ? (int)cpus : 1;
        }
        if (!(w->computers = calloc((size_t)n, sizeof(pthread_t))))
                return kf_errf(errstr, errstr_size, "out of memory");
        for (; w->n_computers < n; w->n_computers++)
                if (pthread_create(&w->computers[w->n_computers], NULL, compute_main, w))
                        return kf_errf(errstr, errstr_size, "cannot start compute threads");
        for (int i = 0; i < w->n_writers; i++) {
                if (pthread_create(&w->writers[i].thread, NULL, writer_main, &w->writers[i]))
                        return kf_errf(errstr, errstr_size, "cannot start the writer threads");
                w->writers[i].started = 1;
        }
        w->max_inflight = n + w->n_writers + 1;
        return 0;
}

kw_worker_t *kw_worker_new(const kw_config_t *c, volatile sig_atomic_t *stop, char *errstr,
                           size_t errstr_size)
{
        /* at-least-once: offsets are stored by us after Redis acknowledged the
         * results, and committed by librdkafka in the background and on close. */
        static const char *const defaults[] = {
            "enable.auto.offset.store", "false",
            "enable.auto.commit", "true",
            "auto.offset.reset", "earliest",
            /* Eager protocol: librdkafka 2.0.2's cooperative-sticky has bugs
             * fixed only in 2.1-2.10; see docs/operations.md. */
            "partition.assignment.strategy", "range,roundrobin",
            "enable.partition.eof", "false",
            /* Bounds how long an idle fetch waits before new jobs are seen
             * when the broker does not answer fetches early (the dev
             * broker); real Kafka answers as soon as data arrives. */
            "fetch.wait.max.ms", "50",
            NULL};
        rd_kafka_conf_t *kconf = NULL;
        rd_kafka_topic_partition_list_t *topics = NULL;
        rd_kafka_resp_err_t err;
        kf_props_t cprops = {0};
        kw_worker_t *w;
        char host[128];

        if (!(w = calloc(1, sizeof(*w)))) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        w->conf = c;
        w->stop = stop;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->idle, NULL);
        kw_queue_init(&w->compute_q);
        kw_queue_init(&w->write_q);
        if (c->worker_id)
                kf_strlcpy(w->worker_id, c->worker_id, sizeof(w->worker_id));
        else {
                if (gethostname(host, sizeof(host)))
                        kf_strlcpy(host, "localhost", sizeof(host));
                host[sizeof(host) - 1] = '\0';
                snprintf(w->worker_id, sizeof(w->worker_id), "%s:%d", host, (int)getpid());
        }
        w->limits = (job_limits_t){(size_t)c->max_message_bytes, (uint32_t)c->max_rows,
                                   (uint32_t)c->max_cols, (uint64_t)c->max_elements};
        w->costs  = (kw_compute_limits_t){(uint64_t)c->max_output_elements,
                                          (uint64_t)c->max_scratch_elements};
        w->step   = (kw_step_conf_t){c->prefix, w->worker_id,
                                       {c->quota_jobs, c->quota_rows, c->quota_window},
                                       c->charge_horizon};
        openblas_set_num_threads((int)c->blas_threads);
        /* A loop stuck for longer than a drain may take is not draining. */
        w->status.stall_us = (c->grace_ms + 30000) * 1000;
        kw_status_tick(&w->status, kf_mono_us());
        if (c->http_addr && !(w->metrics = kw_metrics_new())) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }

        if (c->models_dir)
                w->models = ms_store_new(c->models_dir);
        else
                w->models = ms_store_new_registry(c->redis_url, c->prefix,
                                                  (int)c->redis_timeout_ms,
                                                  (int)c->model_resync_ms, errstr, errstr_size);
        if (!w->models) {
                if (c->models_dir)
                        kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        ms_store_set_budget(w->models, (uint64_t)c->model_cache_mb << 20);
        if (!(w->writers = calloc((size_t)c->writer_threads, sizeof(*w->writers)))) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        w->n_writers = (int)c->writer_threads;
        /* Each thread that talks to Redis has its own connection. */
        if (kw_precheck_open(&w->pre, c->redis_url, (int)c->redis_timeout_ms, c->prefix,
                             &w->step.quota, errstr, errstr_size))
                goto err;
        for (int i = 0; i < w->n_writers; i++) {
                w->writers[i].w = w;
                if (kw_commit_open(&w->writers[i].commit, c->redis_url, (int)c->redis_timeout_ms,
                                   &w->step, errstr, errstr_size))
                        goto err;
                w->writers[i].commit.metrics = w->metrics;
        }
        if (kw_commit_open(&w->dlq_commit, c->redis_url, (int)c->redis_timeout_ms, &w->step,
                           errstr, errstr_size))
                goto err;
        if (kw_dlq_init(&w->dlq, c->brokers, &c->props, c->dlq_topic, w->worker_id,
                        c->max_message_bytes, errstr, errstr_size))
                goto err;

        /* -X dlq.KEY=VALUE is the dead-letter producer's alone. */
        if (kw_dlq_consumer_props(&c->props, &cprops, errstr, errstr_size))
                goto err;
        kconf = kf_kafka_conf_new(c->brokers, defaults, &cprops, errstr, errstr_size);
        kf_props_free(&cprops);
        if (!kconf)
                goto err;
        if (rd_kafka_conf_set(kconf, "group.id", c->group, errstr, errstr_size) ||
            rd_kafka_conf_set(kconf, "client.id", w->worker_id, errstr, errstr_size) ||
            (c->instance_id && rd_kafka_conf_set(kconf, "group.instance.id", c->instance_id,
                                                 errstr, errstr_size)))
                goto err;
        rd_kafka_conf_set_rebalance_cb(kconf, rebalance_cb);
        rd_kafka_conf_set_opaque(kconf, w);
        if (!(w->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size)))
                goto err;
        kconf = NULL; /* owned by w->rk now */
        rd_kafka_poll_set_consumer(w->rk);
        if (!(w->offsets = kw_offsets_new(w->rk))) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        if (kw_dlq_start(&w->dlq, &w->dlq_commit, w->offsets, w->stop, errstr, errstr_size))
                goto err;
        if (threads_start(w, errstr, errstr_size))
                goto err;

        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, c->topic, RD_KAFKA_PARTITION_UA);
        if ((err = rd_kafka_subscribe(w->rk, topics))) {
                kf_errf(errstr, errstr_size, "subscribing to %s: %s", c->topic,
                        rd_kafka_err2str(err));
                goto err;
        }
        rd_kafka_topic_partition_list_destroy(topics);
        topics = NULL;
        if (c->http_addr) {
                if (!(w->endpoint = kw_endpoint_start(c->http_addr, w->metrics, &w->status,
                                                      &w->pre.redis.url,
                                                      (int)c->redis_timeout_ms, errstr,
                                                      errstr_size)))
                        goto err;
                kf_info("serving /metrics, /healthz and /readyz on %s (port %d)", c->http_addr,
                        kw_endpoint_port(w->endpoint));
        }
        kf_info("worker %s: group %s, topic %s, brokers %s, redis %s:%d, models %s, "
                "%d compute threads x %lld BLAS threads, %d writer threads",
                w->worker_id, c->group, c->topic, c->brokers, w->pre.redis.url.host,
                w->pre.redis.url.port,
                c->models_dir ? c->models_dir : "(registry)", w->n_computers,
                (long long)c->blas_threads, w->n_writers);
        return w;
err:
        if (topics)
                rd_kafka_topic_partition_list_destroy(topics);
        if (kconf)
                rd_kafka_conf_destroy(kconf);
        kw_worker_destroy(w);
        return NULL;
}

void kw_worker_destroy(kw_worker_t *w)
{
        if (!w)
                return;
        kw_endpoint_stop(w->endpoint); /* it reads the metrics and the status */
        /* Stop the pipeline: compute threads first, then the writers. */
        kw_queue_close(&w->compute_q);
        for (int i = 0; i < w->n_computers; i++)
                pthread_join(w->computers[i], NULL);
        kw_queue_close(&w->write_q);
        for (int i = 0; i < w->n_writers; i++)
                if (w->writers[i].started)
                        pthread_join(w->writers[i].thread, NULL);
        free(w->computers);
        kw_batch_free(w->cur);
        if (w->rewind)
                rd_kafka_topic_partition_list_destroy(w->rewind);
        /* Before the consumer: the stage holds messages it fetched. */
        kw_dlq_close(&w->dlq);
        kw_commit_close(&w->dlq_commit);
        if (w->rk)
                rd_kafka_destroy(w->rk);
        kw_offsets_destroy(w->offsets);
        for (int i = 0; i < w->n_writers; i++)
                kw_commit_close(&w->writers[i].commit);
        free(w->writers);
        kw_precheck_close(&w->pre);
        ms_store_destroy(w->models);
        kw_queue_destroy(&w->compute_q);
        kw_queue_destroy(&w->write_q);
        kw_metrics_destroy(w->metrics);
        pthread_cond_destroy(&w->idle);
        pthread_mutex_destroy(&w->lock);
        free(w);
}
