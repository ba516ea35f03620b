/* results_topic.c - the result topic's producer: result messages per
 * batch, waited for (at least once) or committed with the consumed offsets
 * in one transaction per batch (exactly once).  See results_topic.h. */
#include "results_topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_sign.h"
#include "kf_util.h"
#include "results_size.h"

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 5000

struct rt_wait_s;

/* One message's delivery report, read by the writer that produced it. */
typedef struct rt_slot_s {
        struct rt_wait_s *wt;
        _Atomic rd_kafka_resp_err_t err; /* its report's error (0 also before it came) */
        int level;                       /* the job's rt_level when it was produced */
} rt_slot_t;

/* What one batch (at least once) or one transaction attempt (exactly once)
 * waits for: a heap record, since a delivery report may be served by
 * another writer's poll, and may come after the writer gave up waiting
 * (abandoned) or aborted the transaction: freed by whoever drops the last
 * reference. */
typedef struct rt_wait_s {
        atomic_int refs;                 /* messages not reported yet, + 1 for the writer */
        _Atomic rd_kafka_resp_err_t err; /* the first failure */
        int n;
        rt_slot_t slot[]; /* one per message */
} rt_wait_t;

static rt_wait_t *rt_wait_new(int n)
{
        rt_wait_t *wt = calloc(1, sizeof(*wt) + sizeof(rt_slot_t) * (size_t)(n > 0 ? n : 1));
        if (!wt)
                return NULL;
        atomic_store(&wt->refs, 1);
        wt->n = n;
        for (int i = 0; i < n; i++)
                wt->slot[i].wt = wt;
        return wt;
}

static void rt_wait_drop(rt_wait_t *wt)
{
        if (wt && atomic_fetch_sub(&wt->refs, 1) == 1)
                free(wt);
}

/* The errors that say a message (or the record batch it was in) is over a
 * size limit: librdkafka's own check, or the broker's MESSAGE_TOO_LARGE
 * (the same code) and RECORD_LIST_TOO_LARGE. */
static int rt_size_err(rd_kafka_resp_err_t err)
{
        return err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
               err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE;
}

static void rt_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        rt_slot_t *s = rkm->_private;
        kw_rt_t *rt = opaque;
        rt_wait_t *wt;
        (void)rk;
        kw_metrics_gauge_add(rt->metrics, KW_G_RT_UNACKED, -1);
        if (!s)
                return;
        wt = s->wt;
        atomic_store(&s->err, rkm->err);
        if (rkm->err) {
                rd_kafka_resp_err_t none = RD_KAFKA_RESP_ERR_NO_ERROR;
                atomic_compare_exchange_strong(&wt->err, &none, rkm->err);
        }
        /* exactly once: the transaction's commit counts it (rt_lead) */
        if (rkm->err && !rt->eos) {
                kw_metrics_add(rt->metrics, KW_C_RT_FAILED, 1);
        } else if (!rt->eos) {
                atomic_fetch_add(&rt->sent, 1);
                kw_metrics_add(rt->metrics, KW_C_RT_DELIVERED, 1);
                kw_metrics_add(rt->metrics, KW_C_RT_TOO_LARGE, s->level > 0);
        }
        rt_wait_drop(wt);
}

static void rt_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
        kw_rt_t *rt = opaque;
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
                char why[512];
                rd_kafka_resp_err_t ferr = rd_kafka_fatal_error(rk, why, sizeof(why));
                if (!atomic_exchange(&rt->fatal, 1))
                        kf_error("result producer: fatal error %s: %s; the worker stops (exit "
                                 "status 1)",
                                 rd_kafka_err2name(ferr), why);
                return;
        }
        kf_warn("result producer: %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static int is_rt_prop(const char *key)
{
        return !strncmp(key, KW_RT_PROP_PREFIX, strlen(KW_RT_PROP_PREFIX));
}

void kw_rt_strip_props(kf_props_t *props)
{
        int n = 0;
        for (int i = 0; i < props->cnt; i++) {
                if (is_rt_prop(props->keys[i])) {
                        free(props->keys[i]);
                        free(props->vals[i]);
                        continue;
                }
                props->keys[n] = props->keys[i];
                props->vals[n] = props->vals[i];
                n++;
        }
        props->cnt = n;
}

/* The producer's properties: those of the -X ones about reaching the
 * cluster, then results.KEY ones (which win). */
static int rt_props(const kf_props_t *props, kf_props_t *out, char *errstr, size_t errstr_size)
{
        static const char *const shared[] = {
            "security.",   "sasl.", "ssl.",        "socket.",           "broker.", "reconnect.",
            "client.rack", "debug", "api.version", "message.max.bytes", NULL};
        char kv[4096];
        memset(out, 0, sizeof(*out));
        for (int pass = 0; pass < 2; pass++)
                for (int i = 0; props && i < props->cnt; i++) {
                        const char *k = props->keys[i];
                        int keep = 0;
                        if (pass == 1) {
                                if (!is_rt_prop(k))
                                        continue;
                                k += strlen(KW_RT_PROP_PREFIX);
                                keep = 1;
                        }
                        for (int s = 0; !keep && shared[s]; s++)
                                keep = !strncmp(k, shared[s], strlen(shared[s]));
                        if (!keep)
                                continue;
                        snprintf(kv, sizeof(kv), "%s=%s", k, props->vals[i]);
                        if (kf_props_add(out, kv, errstr, errstr_size)) {
                                kf_props_free(out);
                                return -1;
                        }
                }
        return 0;
}

int kw_rt_init(kw_rt_t *rt, const kw_rt_conf_t *c, char *errstr, size_t errstr_size)
{
        // clang-format off
        const char *defaults[] = {
            "enable.idempotence", "true",
            "acks", "all",
            "linger.ms", "5",
            /* Bounds how long a transaction of a worker that died and was not
             * restarted under its transactional.id holds back read_committed
             * consumers of the partitions it wrote to (docs/operations.md). */
            "transaction.timeout.ms", "10000",
            "message.timeout.ms", "10000",
            NULL, NULL, NULL};
        // clang-format on
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_error_t *error;
        kf_props_t pprops = {0};
        int rc = -1;

        memset(rt, 0, sizeof(*rt));
        if (!c->topic)
                return 0;
        rt->topic = c->topic;
        rt->eos = c->exactly_once;
        rt->timeout_ms = c->timeout_ms;
        rt->metrics = c->metrics;
        rt->worker_id = c->worker_id;
        if (!strcmp(c->key, "id"))
                rt->key = KW_RT_KEY_ID;
        else if (!strcmp(c->key, "input"))
                rt->key = KW_RT_KEY_INPUT;
        else
                return kf_errf(errstr, errstr_size, "--results-key must be id or input, got '%s'",
                               c->key);
        pthread_mutex_init(&rt->lock, NULL);
        pthread_cond_init(&rt->cv, NULL);
        rt->lock_inited = 1;
        rt->next_seq = 1; /* done_seq 0: none yet */
        if (rt->eos) {
                defaults[10] = "transactional.id";
                defaults[11] = c->transactional_id;
        }
        if (rt_props(c->props, &pprops, errstr, errstr_size))
                return -1;
        if (!(conf = kf_kafka_conf_new(c->brokers, defaults, &pprops, errstr, errstr_size)))
                goto cleanup;
        {
                size_t sz = sizeof(rt->max_bytes);
                if (rd_kafka_conf_get(conf, "message.max.bytes", rt->max_bytes, &sz) !=
                    RD_KAFKA_CONF_OK)
                        kf_strlcpy(rt->max_bytes, "?", sizeof(rt->max_bytes));
        }
        rd_kafka_conf_set_dr_msg_cb(conf, rt_dr_cb);
        rd_kafka_conf_set_error_cb(conf, rt_error_cb);
        rd_kafka_conf_set_opaque(conf, rt);
        if (!(rt->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size)))
                goto cleanup;
        conf = NULL; /* owned by rt->rk now */
        if (rt->eos && (error = rd_kafka_init_transactions(rt->rk, rt->timeout_ms))) {
                kf_errf(errstr, errstr_size,
                        "result topic %s: initialising transactions (transactional.id %s): %s "
                        "(exactly once needs Kafka 2.5 or later)",
                        c->topic, c->transactional_id, rd_kafka_error_string(error));
                rd_kafka_error_destroy(error);
                goto cleanup;
        }
        rc = 0;
cleanup:
        if (conf)
                rd_kafka_conf_destroy(conf);
        kf_props_free(&pprops);
        return rc;
}

void kw_rt_bind(kw_rt_t *rt, rd_kafka_t *consumer, kw_offsets_t *offsets)
{
        rt->consumer = consumer;
        rt->offsets = offsets;
}

/* Job j's result message cannot be delivered for its size: the next level
 * stands for it from now on (kw_rts_escalate).  Returns 0 or -1. */
static int rt_escalate(kw_rt_t *rt, kw_job_t *j, const char *why)
{
        return kw_rts_escalate(j, rt->topic, why, rt->worker_id, rt->key == KW_RT_KEY_INPUT);
}

/* The brokers refused job j's message, alone in its request, for its size. */
static int rt_escalate_broker(kw_rt_t *rt, kw_job_t *j, rd_kafka_resp_err_t err)
{
        char why[256];
        kw_rts_broker_limit(why, sizeof(why), err);
        return rt_escalate(rt, j, why);
}

/* Produces one job's result message (or what stands for it: rt_level);
 * retries while the local queue is full, and replaces a message that
 * librdkafka refuses for its size at once.  s: its delivery report's slot,
 * or NULL. */
static rd_kafka_resp_err_t rt_produce(kw_rt_t *rt, kw_job_t *j, rt_slot_t *s)
{
        rd_kafka_headers_t *hdrs = NULL, *copy = NULL;
        const void *key = j->job.id;
        size_t key_len = strlen(j->job.id);
        rd_kafka_resp_err_t err;

        for (;;) {
                if (rt->key == KW_RT_KEY_INPUT && j->rt_level < 3) {
                        key = j->rkm->key;
                        key_len = j->rkm->key_len;
                } else {
                        key = j->job.id;
                        key_len = strlen(j->job.id);
                }
                const char *val = j->rt_level ? j->rt_alt : j->rt_value;
                size_t len = j->rt_level ? j->rt_alt_len : j->rt_len;
                if (j->rt_level < 2 && !rd_kafka_message_headers(j->rkm, &hdrs) && hdrs &&
                    !(copy = rd_kafka_headers_copy(hdrs)))
                        return RD_KAFKA_RESP_ERR__FAIL;
                /* A job's signature covers the job's bytes, not the result's:
                 * carried over, it would make a chained stage (chain.h) find
                 * a signature that does not match and refuse the job. */
                if (copy) {
                        rd_kafka_header_remove(copy, KF_SIGN_HDR_SIG);
                        rd_kafka_header_remove(copy, KF_SIGN_HDR_KID);
                        rd_kafka_header_remove(copy, KF_SIGN_HDR_ALG);
                }
                j->rt_msg_size = len + key_len + kw_rts_hdrs_size(copy);
                if (s) {
                        s->level = j->rt_level;
                        atomic_fetch_add(&s->wt->refs, 1);
                }
                err = rd_kafka_producev(
                    rt->rk, RD_KAFKA_V_TOPIC(rt->topic), RD_KAFKA_V_KEY(key, key_len),
                    RD_KAFKA_V_VALUE((void *)val, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_HEADERS(copy), RD_KAFKA_V_OPAQUE(s), RD_KAFKA_V_END);
                if (!err) {
                        kw_metrics_add(rt->metrics, KW_C_RT_PRODUCED, 1);
                        kw_metrics_gauge_add(rt->metrics, KW_G_RT_UNACKED, 1);
                        return 0; /* the headers are the message's now */
                }
                if (s)
                        atomic_fetch_sub(&s->wt->refs, 1);
                if (copy)
                        rd_kafka_headers_destroy(copy);
                copy = NULL;
                if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
                        char why[128];
                        snprintf(why, sizeof(why), "the result producer's message.max.bytes %s",
                                 rt->max_bytes);
                        if (rt_escalate(rt, j, why))
                                return err;
                        continue;
                }
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        return err;
                rd_kafka_poll(rt->rk, 10);
        }
}

/* Waits for wt's reports, or until *abandon.  Returns 1 if given up. */
static int rt_wait(kw_rt_t *rt, rt_wait_t *wt, const atomic_int *abandon)
{
        while (atomic_load(&wt->refs) > 1)
                if (abandon && atomic_load(abandon))
                        return 1;
                else
                        rd_kafka_poll(rt->rk, 20);
        return 0;
}

/* At least once: job j's message was refused for its size in a request
 * with others (the brokers' limit may be the record batch's): produced
 * again alone, and replaced if refused alone.  Returns 0, 1 when given up
 * (*abandon), or the error. */
static rd_kafka_resp_err_t rt_send_alone(kw_rt_t *rt, kw_job_t *j, const atomic_int *abandon)
{
        for (;;) {
                rt_wait_t *wt = rt_wait_new(1);
                rd_kafka_resp_err_t err;
                if (!wt)
                        return RD_KAFKA_RESP_ERR__FAIL;
                if ((err = rt_produce(rt, j, &wt->slot[0]))) {
                        kw_metrics_add(rt->metrics, KW_C_RT_FAILED, 1);
                        rt_wait_drop(wt);
                        return err;
                }
                if (rt_wait(rt, wt, abandon)) {
                        rt_wait_drop(wt);
                        return RD_KAFKA_RESP_ERR__TIMED_OUT;
                }
                err = atomic_load(&wt->slot[0].err);
                rt_wait_drop(wt);
                if (!rt_size_err(err) || rt_escalate_broker(rt, j, err))
                        return err;
        }
}

static int rt_send_plain(kw_rt_t *rt, kw_batch_t *b, const atomic_int *abandon, char *errstr,
                         size_t errstr_size)
{
        rt_wait_t *wt = rt_wait_new(b->n);
        rd_kafka_resp_err_t err = 0;
        int n = 0, given_up = 0;

        if (!wt)
                return kf_errf(errstr, errstr_size, "out of memory");
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                if (j->state != KW_JOB_WRITTEN || !j->rt_value)
                        continue;
                if ((err = rt_produce(rt, j, &wt->slot[i]))) {
                        kw_metrics_add(rt->metrics, KW_C_RT_FAILED, 1);
                        break;
                }
                n++;
        }
        /* Reports come within message.timeout.ms; a drain that gives up
         * (brokers away) does not wait that long. */
        given_up = rt_wait(rt, wt, abandon);
        /* Refused for size: each alone, replaced if refused alone; the
         * others' failures make the batch fail, as before. */
        for (int i = 0; !err && !given_up && i < b->n; i++) {
                rd_kafka_resp_err_t e = atomic_load(&wt->slot[i].err);
                if (rt_size_err(e))
                        e = rt_send_alone(rt, &b->jobs[i], abandon);
                if (e == RD_KAFKA_RESP_ERR__TIMED_OUT && abandon && atomic_load(abandon))
                        given_up = 1;
                else if (e)
                        err = e;
        }
        rt_wait_drop(wt);
        if (given_up)
                return kf_errf(errstr, errstr_size,
                               "result topic %s: not acknowledged before the drain gave up",
                               rt->topic) -
                       1;
        if (err)
                return kf_errf(errstr, errstr_size, "result topic %s: %d of %d messages: %s",
                               rt->topic, n, b->n, rd_kafka_err2str(err));
        return 0;
}

/* One transaction: the members' messages and the offsets pos (a snapshot
 * taken with the members: never past a message of a batch not among them).
 * *produced: how many messages it produced (all of them, unless it failed
 * first).  wt: a slot per message, in order.  careful (after a failure for
 * size): each message is flushed alone before the next is produced, so a
 * refusal for size is that message's own: it is replaced (rt_escalate) and
 * *resized set; the transaction fails, to be aborted and redone.  Returns
 * NULL or the error (caller destroys it). */
static rd_kafka_error_t *rt_txn(kw_rt_t *rt, kw_batch_t **members, int n,
                                const rd_kafka_topic_partition_list_t *pos,
                                unsigned long long *produced, rt_wait_t *wt, int careful,
                                int *resized)
{
        int k = 0;

        rd_kafka_error_t *error;
        rd_kafka_resp_err_t err;

        if (!pos)
                return rd_kafka_error_new(RD_KAFKA_RESP_ERR__FAIL, "out of memory");
        if ((error = rd_kafka_begin_transaction(rt->rk)))
                return error;
        for (int m = 0; m < n; m++)
                for (int i = 0; i < members[m]->n; i++) {
                        kw_job_t *j = &members[m]->jobs[i];
                        rt_slot_t *s = k < wt->n ? &wt->slot[k++] : NULL;
                        if (j->state != KW_JOB_WRITTEN || !j->rt_value)
                                continue;
                        if ((err = rt_produce(rt, j, s)))
                                return rd_kafka_error_new(err, "producing result %s: %s", j->job.id,
                                                          rd_kafka_err2str(err));
                        (*produced)++;
                        if (!careful || !s)
                                continue;
                        /* a broker away fails the attempt (as a commit would), not
                         * every message's flush in turn */
                        if ((err = rd_kafka_flush(rt->rk, rt->timeout_ms)))
                                return rd_kafka_error_new(err, "flushing result %s: %s", j->job.id,
                                                          rd_kafka_err2str(err));
                        err = atomic_load(&s->err);
                        if (rt_size_err(err) && !rt_escalate_broker(rt, j, err)) {
                                *resized = 1;
                                return rd_kafka_error_new(err, "result %s refused for its size",
                                                          j->job.id);
                        }
                        if (err)
                                return rd_kafka_error_new(err, "result %s: %s", j->job.id,
                                                          rd_kafka_err2str(err));
                }
        if (pos->cnt > 0) {
                rd_kafka_consumer_group_metadata_t *cgmd =
                    rd_kafka_consumer_group_metadata(rt->consumer);
                error = rd_kafka_send_offsets_to_transaction(rt->rk, pos, cgmd, rt->timeout_ms);
                rd_kafka_consumer_group_metadata_destroy(cgmd);
                if (error)
                        return error;
        }
        return rd_kafka_commit_transaction(rt->rk, rt->timeout_ms);
}

/* Commits the pending batches as one transaction, retrying it (aborted,
 * then produced again from the batches, which their writers keep while
 * they wait) until it commits, *abandon is set or the producer dies.  While
 * it commits no other transaction can, so no offset past one of its
 * messages is committed before that message.  Called and returns with
 * rt->lock held; releases it meanwhile. */
static void rt_lead(kw_rt_t *rt, const atomic_int *abandon)
{
        kw_batch_t **members = rt->pend;
        int n = rt->npend, ok = 0, backoff = RETRY_MIN_MS, careful = 0, slots = 0;
        unsigned long long msgs = 0, too_large = 0;
        uint64_t seq = rt->next_seq++;
        rd_kafka_topic_partition_list_t *pos = kw_offsets_positions(rt->offsets);

        rt->pend = NULL;
        rt->npend = rt->cappend = 0;
        rt->committing = 1;
        for (int m = 0; m < n; m++) {
                slots += members[m]->n;
                for (int i = 0; i < members[m]->n; i++)
                        msgs += members[m]->jobs[i].state == KW_JOB_WRITTEN &&
                                members[m]->jobs[i].rt_value;
        }
        pthread_mutex_unlock(&rt->lock);
        /* after a transaction given up, its offsets are in every snapshot:
         * none may commit (they joined before it was given up) */
        while (!atomic_load(&rt->broken)) {
                int64_t t0 = kf_mono_us();
                unsigned long long produced = 0;
                int resized = 0, sized = 0;
                rt_wait_t *wt = rt_wait_new(slots);
                rd_kafka_error_t *error =
                    wt ? rt_txn(rt, members, n, pos, &produced, wt, careful, &resized)
                       : rd_kafka_error_new(RD_KAFKA_RESP_ERR__FAIL, "out of memory");
                if (!error) {
                        rt_wait_drop(wt);
                        kw_metrics_observe(rt->metrics, KW_H_RT_TXN,
                                           (double)(kf_mono_us() - t0) / 1e6);
                        ok = 1;
                        break;
                }
                /* Whatever became of it, none of the messages it holds is
                 * delivered (each counted produced: the two stay level). */
                kw_metrics_add(rt->metrics, KW_C_RT_FAILED, produced);
                if (rd_kafka_error_is_fatal(error) || atomic_load(&rt->fatal)) {
                        rt_wait_drop(wt);
                        atomic_store(&rt->fatal, 1);
                        kf_error("result topic %s: transaction of %llu results: %s: fatal "
                                 "(fenced by a newer producer with this transactional.id?); "
                                 "the worker stops (exit status 1)",
                                 rt->topic, msgs, rd_kafka_error_string(error));
                        rd_kafka_error_destroy(error);
                        break;
                }
                if (!resized) /* a replaced result has logged its own line */
                        kf_warn("result topic %s: transaction of %llu results of %d batches: %s; "
                                "aborting it and sending them again",
                                rt->topic, msgs, n, rd_kafka_error_string(error));
                rd_kafka_error_destroy(error);
                if ((error = rd_kafka_abort_transaction(rt->rk, rt->timeout_ms))) {
                        kf_warn("result topic %s: aborting: %s", rt->topic,
                                rd_kafka_error_string(error));
                        if (rd_kafka_error_is_fatal(error))
                                atomic_store(&rt->fatal, 1);
                        rd_kafka_error_destroy(error);
                }
                atomic_fetch_add(&rt->aborts, 1);
                kw_metrics_add(rt->metrics, KW_C_RT_TXN_ABORTED, 1);
                /* Refused for size: redone at once, each message flushed
                 * alone, so that the one refused is known and replaced;
                 * every redo replaces one or commits, so it ends. */
                rd_kafka_poll(rt->rk, 0);
                for (int i = 0; wt && i < wt->n; i++)
                        sized |= rt_size_err(atomic_load(&wt->slot[i].err));
                rt_wait_drop(wt);
                if ((abandon && atomic_load(abandon)) || atomic_load(&rt->fatal))
                        break;
                if (resized || (sized && !careful)) {
                        careful = 1;
                        continue;
                }
                for (int slept = 0; slept < backoff && !(abandon && atomic_load(abandon));
                     slept += 50)
                        kf_sleep_us(50000, NULL);
                backoff = kf_backoff_next(backoff, RETRY_MIN_MS, RETRY_MAX_MS);
        }
        /* Nobody else polls this producer in exactly-once mode: serve its
         * delivery reports and errors here, or they pile up. */
        rd_kafka_poll(rt->rk, 0);
        pthread_mutex_lock(&rt->lock);
        if (ok) {
                for (int m = 0; m < n; m++)
                        for (int i = 0; i < members[m]->n; i++)
                                too_large += members[m]->jobs[i].state == KW_JOB_WRITTEN &&
                                             members[m]->jobs[i].rt_value &&
                                             members[m]->jobs[i].rt_level > 0;
                kw_metrics_add(rt->metrics, KW_C_RT_TOO_LARGE, too_large);
                atomic_fetch_add(&rt->txns, 1);
                atomic_fetch_add(&rt->sent, msgs);
                kw_metrics_add(rt->metrics, KW_C_RT_TXN_COMMITTED, 1);
                kw_metrics_add(rt->metrics, KW_C_RT_DELIVERED, msgs);
        } else {
                /* Its batches' offsets are marked done in the tracker: no
                 * transaction may send them until the partitions' state is
                 * forgotten (kw_rt_reset). */
                atomic_store(&rt->broken, 1);
        }
        rt->outcome[seq % KW_RT_OUTCOMES] = (unsigned char)ok;
        rt->done_seq = seq;
        rt->committing = 0;
        pthread_cond_broadcast(&rt->cv);
        if (pos)
                rd_kafka_topic_partition_list_destroy(pos);
        free(members);
}

/* Exactly once: b joins the pending transaction (its offsets marked done
 * now, under the lock, so that the transaction before it cannot send
 * them); the first writer to find no transaction committing commits the
 * pending ones (rt_lead), the others wait for theirs: a group commit, as
 * many batches per transaction as arrived while the previous one
 * committed. */
static int rt_send_txn(kw_rt_t *rt, kw_batch_t *b, const atomic_int *abandon, char *errstr,
                       size_t errstr_size)
{
        uint64_t my;
        int rc = 0;

        pthread_mutex_lock(&rt->lock);
        if (atomic_load(&rt->broken) || atomic_load(&rt->fatal)) {
                pthread_mutex_unlock(&rt->lock);
                kf_errf(errstr, errstr_size,
                        "result topic %s: a transaction was given up; waiting for the "
                        "partitions to be reassigned",
                        rt->topic);
                return -2;
        }
        if (b) {
                if (rt->npend == rt->cappend) {
                        int ncap = rt->cappend ? rt->cappend * 2 : 16;
                        kw_batch_t **np = realloc(rt->pend, sizeof(*np) * (size_t)ncap);
                        if (!np) {
                                pthread_mutex_unlock(&rt->lock);
                                return kf_errf(errstr, errstr_size, "out of memory");
                        }
                        rt->pend = np;
                        rt->cappend = ncap;
                }
                rt->pend[rt->npend++] = b;
                for (int i = 0; i < b->n; i++) {
                        const kw_job_t *j = &b->jobs[i];
                        if (j->state == KW_JOB_WRITTEN)
                                kw_offsets_done(rt->offsets, rd_kafka_topic_name(j->rkm->rkt),
                                                j->rkm->partition, j->rkm->offset);
                }
        }
        my = rt->next_seq;
        while (rt->done_seq < my) {
                if (!rt->committing)
                        rt_lead(rt, abandon);
                else
                        pthread_cond_wait(&rt->cv, &rt->lock);
        }
        if (!rt->outcome[my % KW_RT_OUTCOMES])
                rc = kf_errf(errstr, errstr_size,
                             "result topic %s: the transaction was given up (see the log)",
                             rt->topic) -
                     1;
        pthread_mutex_unlock(&rt->lock);
        return rc;
}

int kw_rt_send(kw_rt_t *rt, kw_batch_t *b, const atomic_int *abandon, char *errstr,
               size_t errstr_size)
{
        if (!rt->rk)
                return 0;
        if (atomic_load(&rt->fatal))
                return kf_errf(errstr, errstr_size, "result producer: fatal error"), -2;
        return rt->eos ? rt_send_txn(rt, b, abandon, errstr, errstr_size)
                       : rt_send_plain(rt, b, abandon, errstr, errstr_size);
}

int kw_rt_commit_offsets(kw_rt_t *rt)
{
        /* One attempt: the loop thread (maybe inside the rebalance callback)
         * must not wait on a coordinator that fences it; what this does not
         * commit, the partitions' next owner redoes (found done in Redis). */
        atomic_int once = 1;
        char err[512];
        if (!rt->rk || !rt->eos || atomic_load(&rt->broken) || atomic_load(&rt->fatal))
                return 0;
        if (rt_send_txn(rt, NULL, &once, err, sizeof(err)) == 0)
                return 0;
        kf_warn("%s", err);
        return -1;
}

void kw_rt_reset(kw_rt_t *rt)
{
        if (rt->rk && atomic_exchange(&rt->broken, 0) && !atomic_load(&rt->fatal))
                kf_info("result topic %s: transactions resume after the rebalance", rt->topic);
}

int kw_rt_fatal(kw_rt_t *rt)
{
        return atomic_load(&rt->fatal);
}

void kw_rt_close(kw_rt_t *rt)
{
        if (rt->rk) {
                if (!rt->eos)
                        rd_kafka_flush(rt->rk, rt->timeout_ms);
                kf_info("result topic %s: %llu results sent, %llu transactions, %llu aborted",
                        rt->topic, (unsigned long long)atomic_load(&rt->sent),
                        (unsigned long long)atomic_load(&rt->txns),
                        (unsigned long long)atomic_load(&rt->aborts));
                rd_kafka_destroy(rt->rk);
                rt->rk = NULL;
        }
        if (rt->lock_inited) {
                pthread_mutex_destroy(&rt->lock);
                pthread_cond_destroy(&rt->cv);
        }
        free(rt->pend);
        rt->lock_inited = 0;
}
