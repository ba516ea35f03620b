/* pipeline.c - the worker's compute and writer threads (see worker.c for
 * the pipeline): compute threads run a batch's forward passes, writer
 * threads make it durable in Redis and only then let its offsets be stored. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kf_log.h"
#include "kf_util.h"
#include "worker_int.h"

/* Seconds from a message's Kafka timestamp (producer or broker time) to
 * now, or -1 if it has none. */
double kw_since_message(const rd_kafka_message_t *rkm)
{
        int64_t ts = rd_kafka_message_timestamp(rkm, NULL);
        return ts > 0 ? (double)(kf_now_ms() - ts) / 1e3 : -1;
}

void kw_inflight_gauge(kw_worker_t *w, int n)
{
        kw_metrics_set(w->metrics, KW_G_INFLIGHT_BATCHES, n);
}

/* --- compute threads ---------------------------------------------------- */

static void *compute_main(void *arg)
{
        kw_worker_t *w = arg;
        kw_compute_ctx_t ctx = {0};
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

/* --- writer threads ----------------------------------------------------- */

/* 1 if a job of b is neither written nor handed to the dead-letter stage. */
static int left_any(const kw_batch_t *b)
{
        for (int i = 0; i < b->n; i++)
                if (b->jobs[i].state != KW_JOB_WRITTEN && b->jobs[i].state != KW_JOB_HELD)
                        return 1;
        return 0;
}

/* One attempt to make a computed batch durable: messages without an
 * address (no readable id or user) go to the dead-letter stage, which copies them on its own
 * time (a copy the DLQ does not take must not hold back these results),
 * then the steps.  A job the step hands back (quota window rolled over) is
 * computed here and written in the next round.  Then the result topic, if
 * any.  Returns 0, -1 (retry), or -2: given up, not to be stored. */
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
                        left +=
                            b->jobs[i].state != KW_JOB_WRITTEN && b->jobs[i].state != KW_JOB_HELD;
                if (!left)
                        break;
        }
        if (left_any(b)) {
                kf_warn("batch of %d jobs: steps keep handing jobs back; retrying", b->n);
                return -1;
        }
        /* The result topic after Redis: a result message carries what the
         * step decided (results_topic.h). */
        switch (kw_rt_send(&w->rt, b, &w->abandon, err, sizeof(err))) {
        case 0:
                return 0;
        case -2: /* given up: its offsets must not be stored */
                kf_warn("results of %d jobs given up: %s", b->n, err);
                if (kw_rt_fatal(&w->rt))
                        *w->stop = 1;
                return -2;
        default:
                kf_warn("results of %d jobs not sent yet: %s", b->n, err);
                return -1;
        }
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
        kw_writer_t *wr = arg;
        kw_worker_t *w = wr->w;
        kw_compute_ctx_t ctx = {0};
        kw_batch_t *b;

        while ((b = kw_queue_pop(&w->write_q))) {
                int backoff = BACKOFF_MIN_MS, rc = -1;
                while (!atomic_load(&w->abandon) && (rc = write_once(wr, b, &ctx)) == -1) {
                        backoff_sleep(w, backoff);
                        backoff = kf_backoff_next(backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
                }
                if (rc != 0) {
                        /* Not stored, so redelivered to the partitions' next owner;
                         * any step we did write makes its copy a no-op there. */
                        for (int i = 0; i < b->n; i++) /* HELD: the dead-letter stage's */
                                atomic_fetch_add(&w->abandoned, b->jobs[i].state != KW_JOB_HELD);
                } else {
                        for (int i = 0; i < b->n; i++) {
                                rd_kafka_message_t *rkm = b->jobs[i].rkm;
                                if (b->jobs[i].state != KW_JOB_WRITTEN)
                                        continue; /* HELD: the dead-letter stage's */
                                kw_metrics_observe(w->metrics, KW_H_END_TO_END,
                                                   kw_since_message(rkm));
                                kw_offsets_done(w->offsets, rd_kafka_topic_name(rkm->rkt),
                                                rkm->partition, rkm->offset);
                        }
                        atomic_fetch_add(&w->batches, 1);
                }
                kw_batch_free(b);
                pthread_mutex_lock(&w->lock);
                w->inflight--;
                kw_inflight_gauge(w, w->inflight);
                pthread_cond_broadcast(&w->idle);
                pthread_mutex_unlock(&w->lock);
        }
        kw_compute_ctx_free(&ctx);
        return NULL;
}

int kw_threads_start(kw_worker_t *w, char *errstr, size_t errstr_size)
{
        int n = (int)w->conf->compute_threads;
        if (n <= 0) {
                long cpus = sysconf(_SC_NPROCESSORS_ONLN);
                n = cpus > 0 ? (int)cpus : 1;
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
