/* dlq.c - copies messages that cannot have a result to the dead-letter
 * topic, with headers saying where they came from and why. */
#include "dlq.h"

#include <stdio.h>
#include <string.h>

#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_util.h"

static void dlq_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        kw_dlq_t *d = opaque;
        kw_job_t *j = rkm->_private;
        (void)rk;
        if (rkm->err) {
                j->dlq = KW_DLQ_NONE; /* copy again on the next attempt */
                d->failed++;
                kf_warn("dead-letter copy of %s/%d/%lld failed: %s",
                        rd_kafka_topic_name(j->rkm->rkt), (int)j->rkm->partition,
                        (long long)j->rkm->offset, rd_kafka_err2str(rkm->err));
        } else {
                j->dlq = KW_DLQ_ACKED;
                d->sent++;
        }
}

int kw_dlq_init(kw_dlq_t *d, const char *brokers, const kf_props_t *props, const char *topic,
                const char *worker_id, char *errstr, size_t errstr_size)
{
        static const char *const defaults[] = {
            "enable.idempotence", "true",
            "acks", "all",
            "linger.ms", "1",
            "message.timeout.ms", "30000",
            NULL};
        rd_kafka_conf_t *conf;
        kf_props_t pprops = {0};

        memset(d, 0, sizeof(*d));
        d->topic     = topic;
        d->worker_id = worker_id;
        /* The -X properties about reaching the cluster apply to this producer
         * too; consumer tuning does not (librdkafka would warn about it). */
        for (int i = 0; props && i < props->cnt; i++) {
                static const char *const shared[] = {"security.", "sasl.", "ssl.", "socket.",
                                                     "broker.", "reconnect.", "client.rack",
                                                     "debug", "api.version", NULL};
                const char *k = props->keys[i];
                int keep      = 0;
                for (int s = 0; shared[s]; s++)
                        keep |= !strncmp(k, shared[s], strlen(shared[s]));
                if (keep) {
                        char kv[1024];
                        snprintf(kv, sizeof(kv), "%s=%s", k, props->vals[i]);
                        kf_props_add(&pprops, kv, NULL, 0);
                }
        }
        conf = kf_kafka_conf_new(brokers, defaults, &pprops, errstr, errstr_size);
        kf_props_free(&pprops);
        if (!conf)
                return -1;
        rd_kafka_conf_set_dr_msg_cb(conf, dlq_dr_cb);
        rd_kafka_conf_set_opaque(conf, d);
        if (!(d->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size))) {
                rd_kafka_conf_destroy(conf);
                return -1;
        }
        return 0;
}

void kw_dlq_close(kw_dlq_t *d)
{
        if (d->rk) {
                rd_kafka_flush(d->rk, 5000);
                rd_kafka_destroy(d->rk);
                d->rk = NULL;
        }
}

static int dlq_produce(kw_dlq_t *d, kw_job_t *j)
{
        rd_kafka_headers_t *hdrs = rd_kafka_headers_new(4);
        char source[320];
        rd_kafka_resp_err_t err;

        snprintf(source, sizeof(source), "%s/%d/%lld", rd_kafka_topic_name(j->rkm->rkt),
                 (int)j->rkm->partition, (long long)j->rkm->offset);
        rd_kafka_header_add(hdrs, "kinfer.source", -1, source, -1);
        rd_kafka_header_add(hdrs, "kinfer.error", -1, kf_err_name(j->err), -1);
        rd_kafka_header_add(hdrs, "kinfer.reason", -1, j->errmsg, -1);
        rd_kafka_header_add(hdrs, "kinfer.worker", -1, d->worker_id, -1);
        for (;;) {
                err = rd_kafka_producev(d->rk, RD_KAFKA_V_TOPIC(d->topic),
                                        RD_KAFKA_V_KEY(j->rkm->key, j->rkm->key_len),
                                        RD_KAFKA_V_VALUE(j->rkm->payload, j->rkm->len),
                                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(j),
                                        RD_KAFKA_V_END);
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        break;
                rd_kafka_poll(d->rk, 100);
        }
        if (err) {
                rd_kafka_headers_destroy(hdrs); /* not taken over on failure */
                return -1;
        }
        j->dlq = KW_DLQ_SENT;
        return 0;
}

int kw_dlq_send_batch(kw_dlq_t *d, kw_batch_t *b, int timeout_ms, char *errstr,
                      size_t errstr_size)
{
        int pending = 0;

        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                if (j->state == KW_JOB_NEW || j->job.id[0] || j->dlq != KW_DLQ_NONE)
                        continue;
                if (dlq_produce(d, j))
                        return kf_errf(errstr, errstr_size, "cannot produce to %s", d->topic);
                pending++;
        }
        if (!pending && rd_kafka_outq_len(d->rk) == 0)
                goto check;
        /* The delivery reports point into the batch: wait for all of them
         * before the batch can change. */
        rd_kafka_flush(d->rk, timeout_ms);
        while (rd_kafka_outq_len(d->rk) > 0)
                rd_kafka_flush(d->rk, 1000); /* message.timeout.ms bounds this */
check:
        for (int i = 0; i < b->n; i++)
                if (b->jobs[i].state != KW_JOB_NEW && !b->jobs[i].job.id[0] &&
                    b->jobs[i].dlq != KW_DLQ_ACKED)
                        return kf_errf(errstr, errstr_size,
                                       "dead-letter copies not acknowledged by %s yet", d->topic);
        return 0;
}
