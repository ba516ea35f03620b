/* worker.c - the consumer loop of kinfer-worker: poll a micro-batch,
 * compute it, commit it to Redis, and only then store its Kafka offsets. */
#include "worker.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch.h"
#include "commit.h"
#include "dlq.h"
#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_util.h"
#include "model_store.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 5000

struct kw_worker_s {
        const kw_config_t *conf;
        volatile sig_atomic_t *stop;
        char worker_id[256];
        job_limits_t limits;
        rd_kafka_t *rk;
        kw_redis_t redis;
        kw_dlq_t dlq;
        ms_store_t *models;
        kw_batch_t batch;
        int paused; /* the assignment is paused while Redis is unreachable */
        unsigned long long jobs_seen, batches, abandoned;
};

/* Stores, per partition, the offset after the batch's last message.  The
 * batch is processed as a whole, so every message below it is written. */
static void store_offsets(kw_worker_t *w)
{
        rd_kafka_topic_partition_list_t *offs;
        rd_kafka_resp_err_t err;

        if (w->batch.n == 0)
                return;
        offs = rd_kafka_topic_partition_list_new(8);
        for (int i = 0; i < w->batch.n; i++) {
                rd_kafka_message_t *rkm = w->batch.jobs[i].rkm;
                rd_kafka_topic_partition_t *p =
                    rd_kafka_topic_partition_list_find(offs, rd_kafka_topic_name(rkm->rkt),
                                                       rkm->partition);
                if (!p)
                        p = rd_kafka_topic_partition_list_add(offs, rd_kafka_topic_name(rkm->rkt),
                                                              rkm->partition);
                if (rkm->offset + 1 > p->offset)
                        p->offset = rkm->offset + 1;
        }
        err = rd_kafka_offsets_store(w->rk, offs);
        if (err)
                /* Only when the partition was taken away meanwhile; its next
                 * owner re-reads these jobs and the step makes them no-ops. */
                kf_warn("storing offsets: %s", rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_destroy(offs);
}

/* One attempt to make the batch durable.  On success its offsets are stored
 * and the batch is emptied.  Returns 0 or -1 (batch kept). */
static int flush_once(kw_worker_t *w)
{
        char err[512];
        if (w->batch.n == 0)
                return 0;
        if (kw_dlq_send_batch(&w->dlq, &w->batch, 10000, err, sizeof(err))) {
                kf_warn("batch of %d jobs not done yet: %s", w->batch.n, err);
                return -1;
        }
        /* A job goes back to NEW when the quota window rolled over between
         * the pre-check and its step; the second round computes it. */
        for (int round = 0; round < 3; round++) {
                int left = 0;
                kw_quota_precheck(&w->redis, &w->batch);
                kw_batch_compute(&w->batch, w->models, (uint32_t)w->conf->batch_max_rows);
                if (kw_commit_batch(&w->redis, &w->batch, err, sizeof(err))) {
                        kf_warn("results of %d jobs not written yet: %s", w->batch.n, err);
                        return -1;
                }
                for (int i = 0; i < w->batch.n; i++)
                        left += w->batch.jobs[i].state != KW_JOB_WRITTEN;
                if (!left)
                        break;
                if (round == 2) {
                        kf_warn("%d jobs still not written after 3 rounds; retrying", left);
                        return -1;
                }
        }
        store_offsets(w);
        w->batches++;
        kw_batch_reset(&w->batch);
        return 0;
}

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

/* Called by librdkafka from rd_kafka_consumer_poll, i.e. on the loop thread,
 * between batches or during the retry loop of flush(). */
static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
        kw_worker_t *w = opaque;

        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
                kf_info("assigned %d partitions", parts->cnt);
                rd_kafka_assign(rk, parts);
                w->paused = 0;
                return;
        }
        /* Revoked (or lost): finish what we hold for these partitions if Redis
         * takes it now, else abandon it to the next owner: its offsets were
         * not stored, so it is redelivered, and the step makes any result we
         * did write a no-op for the new owner. */
        kf_info("revoking %d partitions (%s)", parts->cnt, rd_kafka_err2str(err));
        if (w->batch.n && flush_once(w)) {
                kf_warn("abandoning %d in-flight jobs to the partitions' next owner", w->batch.n);
                w->abandoned += (unsigned long long)w->batch.n;
                kw_batch_reset(&w->batch);
        }
        if (!rd_kafka_assignment_lost(rk))
                rd_kafka_commit(rk, NULL, 0); /* stored offsets, before we let go */
        rd_kafka_assign(rk, NULL);
        w->paused = 0;
}

/* Makes the batch durable, retrying with capped exponential backoff while
 * Redis is away.  Meanwhile the assignment is paused and the consumer keeps
 * polling, so it stays in the group and serves rebalances.  Gives up only
 * at shutdown after grace_ms.  Returns 0 or -1 (abandoned). */
static int flush(kw_worker_t *w, int64_t give_up_us)
{
        int backoff = BACKOFF_MIN_MS;
        while (w->batch.n) {
                rd_kafka_message_t *rkm;
                if (flush_once(w) == 0)
                        break;
                if (give_up_us && kf_mono_us() > give_up_us) {
                        kf_error("shutdown grace period over: abandoning %d unwritten jobs "
                                 "(they will be redelivered)",
                                 w->batch.n);
                        w->abandoned += (unsigned long long)w->batch.n;
                        kw_batch_reset(&w->batch);
                        return -1;
                }
                set_paused(w, 1);
                rkm = rd_kafka_consumer_poll(w->rk, backoff);
                if (rkm) {
                        if (rkm->err)
                                rd_kafka_message_destroy(rkm);
                        else /* fetched before the pause took effect: keep it */
                                kw_batch_add(&w->batch, rkm, &w->limits);
                }
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        }
        set_paused(w, 0);
        return 0;
}

/* Logs a consumer error event; librdkafka recovers from all but fatal ones. */
static void consumer_error(kw_worker_t *w, rd_kafka_message_t *rkm)
{
        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                return;
        if (rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
                char why[512];
                rd_kafka_fatal_error(w->rk, why, sizeof(why));
                kf_error("fatal consumer error: %s", why);
                *w->stop = 1;
                return;
        }
        kf_warn("consumer: %s", rd_kafka_message_errstr(rkm));
}

int kw_worker_run(kw_worker_t *w)
{
        const kw_config_t *c = w->conf;
        int rc               = 0;

        while (!*w->stop) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(w->rk, 100);
                int64_t until;
                if (!rkm)
                        continue;
                if (rkm->err) {
                        consumer_error(w, rkm);
                        rd_kafka_message_destroy(rkm);
                        continue;
                }
                kw_batch_add(&w->batch, rkm, &w->limits);
                /* Fill the batch: whatever is already fetched, then wait up to
                 * batch_wait_us for more (the dynamic batcher's max delay). */
                until = kf_mono_us() + c->batch_wait_us;
                while (w->batch.n < c->batch_max_jobs &&
                       w->batch.rows < (uint64_t)c->batch_max_rows && !*w->stop) {
                        int64_t left = until - kf_mono_us();
                        rkm = rd_kafka_consumer_poll(w->rk, left >= 1000 ? (int)(left / 1000) : 0);
                        if (!rkm) {
                                if (left < 1000)
                                        break;
                                continue;
                        }
                        if (rkm->err) {
                                consumer_error(w, rkm);
                                rd_kafka_message_destroy(rkm);
                                continue;
                        }
                        kw_batch_add(&w->batch, rkm, &w->limits);
                }
                w->jobs_seen += (unsigned long long)w->batch.n;
                flush(w, 0);
        }

        /* Graceful shutdown: finish in-flight work within the grace period,
         * then leave the group (consumer_close commits the stored offsets). */
        kf_info("shutting down: %d jobs in flight", w->batch.n);
        if (flush(w, kf_mono_us() + c->grace_ms * 1000))
                rc = -1;
        rd_kafka_consumer_close(w->rk);
        kf_info("stopped: %llu jobs, %llu batches, %llu written, %llu duplicates, "
                "%llu undecodable (%llu dead-lettered), %llu abandoned",
                w->jobs_seen, w->batches, w->redis.written, w->redis.duplicates,
                w->redis.undecodable, w->dlq.sent, w->abandoned);
        return rc;
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
        kw_worker_t *w;
        char host[128];

        if (!(w = calloc(1, sizeof(*w)))) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        w->conf = c;
        w->stop = stop;
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
        openblas_set_num_threads((int)c->blas_threads);

        if (!(w->models = ms_store_new(c->models_dir))) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        w->redis.prefix    = c->prefix;
        w->redis.worker_id = w->worker_id;
        w->redis.topic        = c->topic;
        w->redis.quota_jobs   = c->quota_jobs;
        w->redis.quota_rows   = c->quota_rows;
        w->redis.quota_window = c->quota_window;
        if (kw_redis_init(&w->redis, c->redis_url, (int)c->redis_timeout_ms, errstr, errstr_size))
                goto err;
        if (kw_dlq_init(&w->dlq, c->brokers, &c->props, c->dlq_topic, w->worker_id, errstr,
                        errstr_size))
                goto err;

        if (!(kconf = kf_kafka_conf_new(c->brokers, defaults, &c->props, errstr, errstr_size)))
                goto err;
        if (rd_kafka_conf_set(kconf, "group.id", c->group, errstr, errstr_size) ||
            rd_kafka_conf_set(kconf, "client.id", w->worker_id, errstr, errstr_size))
                goto err;
        rd_kafka_conf_set_rebalance_cb(kconf, rebalance_cb);
        rd_kafka_conf_set_opaque(kconf, w);
        if (!(w->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size)))
                goto err;
        kconf = NULL; /* owned by w->rk now */
        rd_kafka_poll_set_consumer(w->rk);

        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, c->topic, RD_KAFKA_PARTITION_UA);
        if ((err = rd_kafka_subscribe(w->rk, topics))) {
                kf_errf(errstr, errstr_size, "subscribing to %s: %s", c->topic,
                        rd_kafka_err2str(err));
                goto err;
        }
        rd_kafka_topic_partition_list_destroy(topics);
        kf_info("worker %s: group %s, topic %s, brokers %s, redis %s:%d, models %s", w->worker_id,
                c->group, c->topic, c->brokers, w->redis.url.host, w->redis.url.port,
                c->models_dir ? c->models_dir : "(none)");
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
        if (w->rk)
                rd_kafka_destroy(w->rk);
        kw_batch_free(&w->batch);
        kw_redis_close(&w->redis);
        kw_dlq_close(&w->dlq);
        ms_store_destroy(w->models);
        free(w);
}
