/* dlq.c - the dead-letter stage: copies messages that cannot have a result
 * to the dead-letter topic, retries until the broker has them, then counts
 * them and lets their offsets be stored. */
#include "dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_log_limit.h"
#include "kf_util.h"

#define RETRY_MIN_MS  100
#define RETRY_MAX_MS  5000
#define RELOG_US      (30 * 1000000LL) /* a copy that keeps failing is logged this often */
#define POLL_MS       50               /* the stage thread's longest sleep */
#define HEADROOM      4096             /* of max_bytes: kinfer.* headers and framing */
#define COUNT_MAX     256              /* copies counted per Redis round trip */
#define RDK_MAX_BYTES 1000000000LL     /* librdkafka's largest message.max.bytes */
#define RDK_DEF_BYTES 1000000LL        /* and its default */

/* One job handed over by a writer.  The delivery report's opaque points
 * here, so a record lives until no produce of it is in flight, whatever
 * became of the job. */
struct kw_dlq_item_s {
        kw_job_t job;     /* moved out of its batch: owns the Kafka message */
        char source[320]; /* "topic/partition/offset", for headers and logs */
        int inflight;     /* a produce awaits its delivery report */
        int acked;        /* the broker has the copy */
        int done;         /* counted and its offset marked done */
        int abandoned;    /* given up: never counted, never stored */
        int attempts;
        int backoff_ms;               /* the last wait before a retry */
        int64_t retry_at_us;          /* kf_mono_us() of the next attempt */
        int64_t logged_us;            /* of the last failure logged */
        rd_kafka_resp_err_t last_err; /* of the last failure */
        struct kw_dlq_item_s *next;
};

static void item_free(kw_dlq_item_t *it)
{
        kw_job_clear(&it->job);
        free(it);
}

/* A copy failed (refused at once, or in its delivery report): try again
 * later.  Logged on the first failure, when the reason changes (a copy that
 * first timed out may then be refused for a cause the operator can fix) and
 * every RELOG_US, so a copy that can never be made is visible without
 * flooding the log.  d->lock. */
static void item_failed(kw_dlq_t *d, kw_dlq_item_t *it, rd_kafka_resp_err_t err)
{
        int64_t now = kf_mono_us();

        atomic_fetch_add(&d->failed, 1);
        if (it->abandoned)
                return;
        it->backoff_ms = kf_backoff_next(it->backoff_ms, RETRY_MIN_MS, RETRY_MAX_MS);
        it->retry_at_us = now + (int64_t)it->backoff_ms * 1000;
        if (it->logged_us && now - it->logged_us < RELOG_US && err == it->last_err)
                return;
        it->logged_us = now;
        it->last_err = err;
        kf_warn_limited(
            "failed dead-letter copy",
            "dead-letter copy of %s to %s failed (attempt %d, next in %d ms): %s; until a "
            "copy is taken, no offset of partition %d from %lld on is committed "
            "(docs/operations.md, Dead letters)",
            it->source, d->topic, it->attempts, it->backoff_ms, rd_kafka_err2str(err),
            (int)it->job.rkm->partition, (long long)it->job.rkm->offset);
}

/* Starts one attempt: the copy goes to librdkafka, whose delivery report
 * says how it went.  d->lock. */
static void item_produce(kw_dlq_t *d, kw_dlq_item_t *it)
{
        const rd_kafka_message_t *src = it->job.rkm;
        size_t key_len = src->key_len, len = src->len, room = d->max_bytes - HEADROOM;
        char truncated[128] = "";
        rd_kafka_headers_t *hdrs;
        rd_kafka_resp_err_t err;

        /* A too_large message can be larger than any producer limit: copy
         * what fits and say so, rather than never copying it at all (the
         * whole message stays in its topic until retention). */
        if (key_len + len > room) {
                size_t k = key_len < room ? key_len : room;
                size_t v = room - k < len ? room - k : len;
                snprintf(truncated, sizeof(truncated),
                         "value %zu of %zu bytes, key %zu of %zu bytes", v, len, k, key_len);
                key_len = k;
                len = v;
        }
        hdrs = rd_kafka_headers_new(5);
        rd_kafka_header_add(hdrs, "kinfer.source", -1, it->source, -1);
        rd_kafka_header_add(hdrs, "kinfer.error", -1, kf_err_name(it->job.err), -1);
        rd_kafka_header_add(hdrs, "kinfer.reason", -1, it->job.errmsg, -1);
        rd_kafka_header_add(hdrs, "kinfer.worker", -1, d->worker_id, -1);
        if (truncated[0])
                rd_kafka_header_add(hdrs, "kinfer.truncated", -1, truncated, -1);
        it->attempts++;
        err = rd_kafka_producev(
            d->rk, RD_KAFKA_V_TOPIC(d->topic), RD_KAFKA_V_KEY(src->key, key_len),
            RD_KAFKA_V_VALUE(src->payload, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(it), RD_KAFKA_V_END);
        if (err) {
                rd_kafka_headers_destroy(hdrs); /* not taken over on failure */
                item_failed(d, it, err);
                return;
        }
        it->inflight = 1;
}

/* Delivery reports, served by rd_kafka_poll/flush: the stage thread, or
 * kw_dlq_close after it stopped. */
static void dlq_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        kw_dlq_t *d = opaque;
        kw_dlq_item_t *it = rkm->_private;
        (void)rk;
        pthread_mutex_lock(&d->lock);
        it->inflight = 0;
        if (rkm->err) {
                item_failed(d, it, rkm->err);
        } else {
                it->acked = 1;
                atomic_fetch_add(&d->sent, 1);
                if (it->attempts > 1 && !it->abandoned)
                        kf_info_limited("dead-letter copy taken after retries",
                                        "dead-letter copy of %s taken by %s after %d attempts",
                                        it->source, d->topic, it->attempts);
        }
        pthread_mutex_unlock(&d->lock);
}

/* A fatal error leaves the producer unable to produce for good (librdkafka
 * fails every later produce): the worker could only pile up copies, so it
 * stops, and a supervisor starts a fresh one. */
static void dlq_check_fatal(kw_dlq_t *d)
{
        char why[512];
        rd_kafka_resp_err_t err;

        if (atomic_load(&d->fatal) || !(err = rd_kafka_fatal_error(d->rk, why, sizeof(why))))
                return;
        kf_error("dead-letter producer: fatal error %s: %s. No message can be copied to %s any "
                 "more, so the worker stops (exit status 1). The producer is idempotent: the "
                 "brokers must be Apache Kafka >= 0.11 and allow this client idempotent writes "
                 "(docs/operations.md, Kafka brokers)",
                 rd_kafka_err2name(err), why, d->topic);
        atomic_store(&d->fatal, 1);
        if (d->stop)
                *d->stop = 1;
}

/* librdkafka's client-level errors (brokers down, ...), from rd_kafka_poll. */
static void dlq_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
        kw_dlq_t *d = opaque;
        (void)rk;
        if (err == RD_KAFKA_RESP_ERR__FATAL)
                dlq_check_fatal(d);
        else
                kf_warn("dead-letter producer: %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err),
                        reason);
}

/* Frees the records that are finished, starts the retries that are due.
 * Returns how many copies are acknowledged and wait to be counted. */
static int dlq_sweep(kw_dlq_t *d)
{
        int64_t now = kf_mono_us();
        int ready = 0;
        kw_dlq_item_t **pp, *it;

        pthread_mutex_lock(&d->lock);
        for (pp = &d->items; (it = *pp);) {
                if ((it->done || it->abandoned) && !it->inflight) {
                        *pp = it->next;
                        item_free(it);
                        continue;
                }
                if (it->abandoned) /* a report is still due: keep the record, not the message */
                        kw_job_clear(&it->job);
                else if (it->acked)
                        ready += !it->done;
                else if (!it->inflight && now >= it->retry_at_us && !atomic_load(&d->fatal))
                        item_produce(d, it);
                pp = &it->next;
        }
        pthread_mutex_unlock(&d->lock);
        return ready;
}

/* Counts acknowledged copies in {prefix}stats and marks their offsets done.
 * kw_commit_batch does the counting (it counts a DONE job without an id,
 * which is how the codec leaves a message without an address), on a batch
 * that borrows the jobs: shallow copies, of which it reads the message and
 * sets the state, while the records keep owning them.  Only
 * this thread frees records, so they stay put meanwhile; one given up
 * meanwhile is counted, but its offset is not marked.  Returns 0, or -1 if
 * Redis did not take them (counted again later). */
static int dlq_count(kw_dlq_t *d)
{
        kw_dlq_item_t *its[COUNT_MAX];
        kw_batch_t b = {0};
        char err[512];
        int n = 0, rc;

        pthread_mutex_lock(&d->lock);
        for (kw_dlq_item_t *it = d->items; it && n < COUNT_MAX; it = it->next)
                if (it->acked && !it->done && !it->abandoned)
                        its[n++] = it;
        pthread_mutex_unlock(&d->lock);
        if (!n)
                return 0;
        if (!(b.jobs = malloc(sizeof(*b.jobs) * (size_t)n))) {
                kf_warn("out of memory counting %d dead-letter copies; trying again", n);
                return -1;
        }
        for (int i = 0; i < n; i++) {
                b.jobs[i] = its[i]->job;
                b.jobs[i].state = KW_JOB_DONE;
        }
        b.n = b.cap = n;
        rc = kw_commit_batch(d->commit, &b, err, sizeof(err));

        pthread_mutex_lock(&d->lock);
        for (int i = 0; i < n; i++) {
                const rd_kafka_message_t *rkm = its[i]->job.rkm;
                if (b.jobs[i].state != KW_JOB_WRITTEN)
                        continue;
                its[i]->done = 1;
                if (its[i]->abandoned) /* kw_dlq_abandon took it off `held` */
                        continue;
                atomic_fetch_sub(&d->held, 1);
                /* Under d->lock: kw_dlq_abandon, and after it the partition's
                 * kw_offsets_forget, cannot come between the check and this. */
                kw_offsets_done(d->offsets, rd_kafka_topic_name(rkm->rkt), rkm->partition,
                                rkm->offset);
        }
        pthread_mutex_unlock(&d->lock);
        free(b.jobs);
        if (rc)
                kf_warn("%d dead-letter copies taken but not counted yet: %s", n, err);
        return rc ? -1 : 0;
}

static void *dlq_main(void *arg)
{
        kw_dlq_t *d = arg;
        int redis_backoff = 0;
        int64_t redis_at_us = 0;

        while (!atomic_load(&d->closing)) {
                rd_kafka_poll(d->rk, POLL_MS); /* delivery reports, errors */
                dlq_check_fatal(d);
                if (!dlq_sweep(d) || kf_mono_us() < redis_at_us)
                        continue;
                if (dlq_count(d)) { /* Redis away: like the writers, back off */
                        redis_backoff = kf_backoff_next(redis_backoff, RETRY_MIN_MS, RETRY_MAX_MS);
                        redis_at_us = kf_mono_us() + (int64_t)redis_backoff * 1000;
                } else {
                        redis_backoff = 0;
                }
        }
        return NULL;
}

/* Appends key=value to props. */
static int props_add(kf_props_t *props, const char *key, const char *val, char *errstr,
                     size_t errstr_size)
{
        char *kv;
        int rc;
        if (asprintf(&kv, "%s=%s", key, val) < 0)
                return kf_errf(errstr, errstr_size, "out of memory");
        rc = kf_props_add(props, kv, errstr, errstr_size);
        free(kv);
        return rc;
}

static int is_dlq_prop(const char *key)
{
        return !strncmp(key, KW_DLQ_PROP_PREFIX, strlen(KW_DLQ_PROP_PREFIX));
}

int kw_dlq_consumer_props(const kf_props_t *props, kf_props_t *out, char *errstr,
                          size_t errstr_size)
{
        memset(out, 0, sizeof(*out));
        for (int i = 0; props && i < props->cnt; i++)
                if (!is_dlq_prop(props->keys[i]) &&
                    props_add(out, props->keys[i], props->vals[i], errstr, errstr_size)) {
                        kf_props_free(out);
                        return -1;
                }
        return 0;
}

int kw_dlq_init(kw_dlq_t *d, const char *brokers, const kf_props_t *props, const char *topic,
                const char *worker_id, int64_t max_message_bytes, char *errstr, size_t errstr_size)
{
        /* The -X properties about reaching the cluster apply to this producer
         * too, and message.max.bytes (one limit for both clients); consumer
         * tuning does not (librdkafka would warn about it). */
        // clang-format off
        static const char *const shared[] = {"security.", "sasl.", "ssl.", "socket.",
                                             "broker.", "reconnect.", "client.rack",
                                             "debug", "api.version", "message.max.bytes",
                                             NULL};
        char max_bytes[32], got[32];
        const char *defaults[] = {
            "enable.idempotence", "true",
            "acks", "all",
            "linger.ms", "1",
            "message.timeout.ms", "30000",
            "message.max.bytes", max_bytes, /* see below */
            NULL};
        // clang-format on
        int64_t need = max_message_bytes + KW_DLQ_OVERHEAD, have;
        size_t got_size = sizeof(got);
        rd_kafka_conf_t *conf = NULL;
        kf_props_t pprops = {0};
        int rc = -1;

        memset(d, 0, sizeof(*d));
        pthread_mutex_init(&d->lock, NULL);
        d->inited = 1;
        d->topic = topic;
        d->worker_id = worker_id;
        /* Every message the worker accepts must fit whole: the producer
         * refuses a larger one at once, and that copy could never be made. */
        if (need > RDK_MAX_BYTES)
                need = RDK_MAX_BYTES; /* larger ones are copied truncated */
        snprintf(max_bytes, sizeof(max_bytes), "%lld",
                 (long long)(need > RDK_DEF_BYTES ? need : RDK_DEF_BYTES));
        for (int i = 0; props && i < props->cnt; i++) {
                const char *k = props->keys[i];
                int keep = 0;
                for (int s = 0; shared[s]; s++)
                        keep |= !strncmp(k, shared[s], strlen(shared[s]));
                if (keep && props_add(&pprops, k, props->vals[i], errstr, errstr_size))
                        goto cleanup;
        }
        for (int i = 0; props && i < props->cnt; i++) /* dlq.KEY: after, so it wins */
                if (is_dlq_prop(props->keys[i]) &&
                    props_add(&pprops, props->keys[i] + strlen(KW_DLQ_PROP_PREFIX), props->vals[i],
                              errstr, errstr_size))
                        goto cleanup;
        if (!(conf = kf_kafka_conf_new(brokers, defaults, &pprops, errstr, errstr_size)))
                goto cleanup;
        if (rd_kafka_conf_get(conf, "message.max.bytes", got, &got_size) != RD_KAFKA_CONF_OK ||
            kf_parse_i64(got, 0, RDK_MAX_BYTES, &have)) {
                kf_errf(errstr, errstr_size, "dead-letter producer: cannot read message.max.bytes");
                goto cleanup;
        }
        if (have < need) {
                kf_errf(errstr, errstr_size,
                        "message.max.bytes=%lld for the dead-letter producer is below "
                        "--max-message-bytes + %d (%lld): a copy of a job the worker accepts "
                        "could never be made; raise it (-X message.max.bytes or "
                        "-X dlq.message.max.bytes) or lower --max-message-bytes",
                        (long long)have, KW_DLQ_OVERHEAD, (long long)need);
                goto cleanup;
        }
        d->max_bytes = (size_t)have;
        rd_kafka_conf_set_dr_msg_cb(conf, dlq_dr_cb);
        rd_kafka_conf_set_error_cb(conf, dlq_error_cb);
        rd_kafka_conf_set_opaque(conf, d);
        if (!(d->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size)))
                goto cleanup;
        conf = NULL; /* owned by d->rk now */
        rc = 0;
cleanup:
        if (conf)
                rd_kafka_conf_destroy(conf);
        kf_props_free(&pprops);
        return rc;
}

int kw_dlq_start(kw_dlq_t *d, kw_commit_t *commit, kw_offsets_t *offsets,
                 volatile sig_atomic_t *stop, char *errstr, size_t errstr_size)
{
        d->commit = commit;
        d->offsets = offsets;
        d->stop = stop;
        if (pthread_create(&d->thread, NULL, dlq_main, d))
                return kf_errf(errstr, errstr_size, "cannot start the dead-letter thread");
        d->started = 1;
        return 0;
}

void kw_dlq_take(kw_dlq_t *d, kw_batch_t *b)
{
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                kw_dlq_item_t *it;
                if (j->state != KW_JOB_DONE || j->job.id[0])
                        continue;
                if (!(it = calloc(1, sizeof(*it)))) {
                        kf_error_limited(
                            "dead-letter copy without memory",
                            "out of memory: message %s/%d/%lld is not copied to %s; its "
                            "offset is not stored, so it is redelivered after the next "
                            "rebalance or restart",
                            rd_kafka_topic_name(j->rkm->rkt), (int)j->rkm->partition,
                            (long long)j->rkm->offset, d->topic);
                        j->state = KW_JOB_HELD;
                        continue;
                }
                it->job = *j;
                memset(j, 0, sizeof(*j)); /* the record owns the message now */
                j->state = KW_JOB_HELD;
                snprintf(it->source, sizeof(it->source), "%s/%d/%lld",
                         rd_kafka_topic_name(it->job.rkm->rkt), (int)it->job.rkm->partition,
                         (long long)it->job.rkm->offset);
                pthread_mutex_lock(&d->lock);
                it->next = d->items;
                d->items = it;
                if (atomic_fetch_add(&d->held, 1) + 1 == KW_DLQ_MAX_HELD)
                        /* a flood of undecodable messages crosses it again and again */
                        kf_warn_limited(
                            "dead-letter backlog full",
                            "%d dead-letter copies outstanding: no new batches (fetching "
                            "pauses) until some are taken",
                            KW_DLQ_MAX_HELD);
                if (!atomic_load(&d->fatal))
                        item_produce(d, it);
                pthread_mutex_unlock(&d->lock);
        }
}

int kw_dlq_held(kw_dlq_t *d)
{
        return atomic_load(&d->fatal) ? 0 : atomic_load(&d->held);
}

int kw_dlq_full(kw_dlq_t *d)
{
        return atomic_load(&d->held) >= KW_DLQ_MAX_HELD;
}

int kw_dlq_fatal(kw_dlq_t *d)
{
        return atomic_load(&d->fatal);
}

int kw_dlq_abandon(kw_dlq_t *d)
{
        int n = 0;
        pthread_mutex_lock(&d->lock);
        for (kw_dlq_item_t *it = d->items; it; it = it->next) {
                if (it->abandoned || it->done)
                        continue;
                it->abandoned = 1;
                if (n++ < 10)
                        kf_warn("giving up the dead-letter copy of %s (%d attempts, %s): its "
                                "offset is not stored, the message is redelivered",
                                it->source, it->attempts,
                                it->acked ? "taken, not counted yet" : "not taken");
        }
        atomic_fetch_sub(&d->held, n);
        pthread_mutex_unlock(&d->lock);
        if (n > 10)
                kf_warn("gave up %d dead-letter copies in all", n);
        return n;
}

void kw_dlq_close(kw_dlq_t *d)
{
        if (!d->inited)
                return;
        if (d->started) {
                atomic_store(&d->closing, 1);
                pthread_join(d->thread, NULL);
                d->started = 0;
        }
        if (d->rk) {
                /* drain() waited for the copies it could; what is left was given
                 * up.  Their delivery reports still come, as purged, into records
                 * that are freed only after the producer is gone. */
                kw_dlq_abandon(d);
                rd_kafka_purge(d->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
                rd_kafka_flush(d->rk, 5000);
                rd_kafka_destroy(d->rk);
                d->rk = NULL;
        }
        while (d->items) {
                kw_dlq_item_t *it = d->items;
                d->items = it->next;
                item_free(it);
        }
        pthread_mutex_destroy(&d->lock);
        d->inited = 0;
}
