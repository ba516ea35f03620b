/* bench_jobs.c - the jobs of a `kinfer bench` run: their ids and inbox, the
 * users they belong to (spread over the topic's partitions) and their signing
 * keys, and their publishing, as fast as possible (drain) or on a schedule
 * (open). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "kf_util.h"

void kc_bench_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        kc_bench_t *b = opaque;
        size_t idx = (size_t)(uintptr_t)rkm->_private;
        (void)rk;
        if (rkm->err) {
                if (!b->failed)
                        kc_err("bench: job %zu was not delivered: %s", idx + 1,
                               rd_kafka_err2str(rkm->err));
                b->state[idx] = KC_BENCH_JOB_FAILED;
                b->failed++;
        } else {
                b->state[idx] = KC_BENCH_JOB_DELIVERED;
                b->delivered++;
        }
}

/* Sets the run's names: job ids "USER-RUN-N" (N = idx + 1; USER the --user
 * base, 1..40 chars) and the inbox "bench-RUN" (22 chars). */
void kc_bench_names(kc_bench_t *b)
{
        int n = snprintf(b->id_base, sizeof(b->id_base), "%.64s-%s-", b->conf->kc.user, b->run);
        b->id_base_len = n > 0 ? (size_t)n : 0;
        snprintf(b->inbox, sizeof(b->inbox), "bench-%s", b->run);
}

/* Writes job idx's id into id (JOB_ID_MAX + 1 bytes). */
void kc_bench_job_id(const kc_bench_t *b, size_t idx, char *id)
{
        snprintf(id, JOB_ID_MAX + 1, "%.100s%zu", b->id_base, idx + 1); /* id_base: <= 82 */
}

/* The inverse of kc_bench_job_id, for ids popped from the inboxes (a
 * kc_probe_idx_fn: it reads only id_base, fixed before the probe starts). */
int kc_bench_job_idx(const char *id, size_t len, const void *opaque, size_t *idx)
{
        const kc_bench_t *b = opaque;
        size_t v = 0;

        if (len <= b->id_base_len || len - b->id_base_len > 19 ||
            memcmp(id, b->id_base, b->id_base_len))
                return -1;
        for (size_t i = b->id_base_len; i < len; i++) {
                if (id[i] < '0' || id[i] > '9')
                        return -1;
                v = v * 10 + (size_t)(id[i] - '0');
        }
        if (!v)
                return -1;
        *idx = v - 1;
        return 0;
}

/* Picks n_users user names whose messages land evenly on the topic's
 * partitions under the default partitioner (crc32 of the key), so a backlog
 * spreads over every partition: the dev broker keeps only ~5 MiB each. */
int kc_bench_pick_users(kc_bench_t *b)
{
        const kc_conf_t *c = &b->conf->kc;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_t *rkt;
        rd_kafka_resp_err_t err;
        size_t *need = NULL, chosen = 0;
        int rc = -1;

        if (!(rkt = rd_kafka_topic_new(b->rk, c->topic, NULL))) {
                kc_err("bench: topic %s: %s", c->topic, rd_kafka_err2str(rd_kafka_last_error()));
                return -1;
        }
        err = rd_kafka_metadata(b->rk, 0, rkt, &md, 10000);
        if (err || md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt < 1) {
                kc_err("bench: cannot read the partitions of topic %s: %s", c->topic,
                       rd_kafka_err2str(err                  ? err
                                        : md->topic_cnt == 1 ? md->topics[0].err
                                                             : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
                goto out;
        }
        b->partitions = md->topics[0].partition_cnt;
        b->n_users = b->conf->users ? (size_t)b->conf->users : (size_t)b->partitions;
        if (!(b->users = calloc(b->n_users, sizeof(*b->users))) ||
            !(need = calloc((size_t)b->partitions, sizeof(*need)))) {
                kc_err("bench: out of memory");
                goto out;
        }
        for (size_t p = 0; p < (size_t)b->partitions; p++)
                need[p] =
                    b->n_users / (size_t)b->partitions + (p < b->n_users % (size_t)b->partitions);
        for (unsigned long j = 0; chosen < b->n_users && j < 10000000; j++) {
                char name[JOB_USER_MAX + 1];
                int32_t p;
                int len = snprintf(name, sizeof(name), "%.40s-%lu", c->user, j);
                p = rd_kafka_msg_partitioner_consistent_random(rkt, name, (size_t)len,
                                                               b->partitions, NULL, NULL);
                if (p < 0 || p >= b->partitions || need[p] == 0)
                        continue;
                need[p]--;
                memcpy(b->users[chosen++], name, (size_t)len + 1);
        }
        if (chosen < b->n_users) {
                kc_err("bench: found only %zu of %zu user names", chosen, b->n_users);
                goto out;
        }
        rc = 0;
out:
        free(need);
        if (md)
                rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        return rc;
}

/* --sign: a new key for each user, stored like `kinfer key create` does
 * (the users' older keys stay; each run signs with its own).  Returns 0 or
 * -1 (said why). */
int kc_bench_keys(kc_bench_t *b)
{
        kf_sign_alg_t alg = !strcmp(b->conf->sign, "hmac")      ? KF_SIGN_HMAC
                            : !strcmp(b->conf->sign, "ed25519") ? KF_SIGN_ED25519
                                                                : KF_SIGN_NONE;
        unsigned char pub[KF_SIGN_KEY_LEN];
        char err[256];
        if (alg == KF_SIGN_NONE) {
                kc_err("bench: --sign '%s': expected hmac or ed25519", b->conf->sign);
                return -1;
        }
        if (!(b->signers = calloc(b->n_users, sizeof(*b->signers)))) {
                kc_err("bench: out of memory");
                return -1;
        }
        for (size_t u = 0; u < b->n_users; u++)
                if (kc_key_new(alg, b->users[u], &b->signers[u], pub, err, sizeof(err)) ||
                    kc_key_store(b->redis, b->conf->kc.prefix, &b->signers[u], pub, err,
                                 sizeof(err))) {
                        kc_err("bench: a key for user %s: %s", b->users[u], err);
                        return -1;
                }
        return 0;
}

/* Encodes job idx with fresh random input and hands it to librdkafka,
 * recording sent_us as its produce time.  Returns 0 or -1. */
static int bench_produce(kc_bench_t *b, size_t idx, int64_t sent_us)
{
        const kc_conf_t *c = &b->conf->kc;
        const char *user = b->users[idx % b->n_users];
        job_t job;
        char err[512], *buf;
        size_t len;
        rd_kafka_resp_err_t kerr;
        rd_kafka_headers_t *hdrs = NULL;

        memset(&job, 0, sizeof(job));
        kc_bench_job_id(b, idx, job.id);
        kf_strlcpy(job.user, user, sizeof(job.user));
        kf_strlcpy(job.model, c->model, sizeof(job.model));
        job.rows = (uint32_t)c->rows_per_job;
        job.cols = b->cols;
        job.input = b->input; /* borrowed */
        job.ttl_s = (uint32_t)c->ttl;
        kf_strlcpy(job.inbox, b->inbox, sizeof(job.inbox));
        kc_bench_random(&b->rng, b->input, (size_t)job.rows * job.cols);
        if (job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err))) {
                kc_err("bench: job %zu: %s", idx + 1, err);
                return -1;
        }
        if (b->signers && !(hdrs = kc_signer_headers(&b->signers[idx % b->n_users], buf, len, err,
                                                     sizeof(err)))) {
                kc_err("bench: job %zu: cannot sign: %s", idx + 1, err);
                free(buf);
                return -1;
        }
        b->sent_us[idx] = sent_us;
        b->state[idx] = KC_BENCH_JOB_SENT;
        for (;;) {
                kerr = rd_kafka_producev(
                    b->rk, RD_KAFKA_V_TOPIC(c->topic), RD_KAFKA_V_KEY(user, strlen(user)),
                    RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                    RD_KAFKA_V_HEADERS(hdrs), /* NULL: none; taken on success */
                    RD_KAFKA_V_OPAQUE((void *)(uintptr_t)idx), RD_KAFKA_V_END);
                if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL || *b->stop)
                        break;
                rd_kafka_poll(b->rk, 10); /* let deliveries drain the queue */
        }
        if (kerr) {
                kc_err("bench: job %zu: cannot produce: %s", idx + 1, rd_kafka_err2str(kerr));
                if (hdrs)
                        rd_kafka_headers_destroy(hdrs);
                b->state[idx] = KC_BENCH_JOB_NONE;
                free(buf);
                return -1;
        }
        if (!b->t_first_us)
                b->t_first_us = sent_us;
        b->published++;
        return 0;
}

/* Waits until librdkafka has a delivery report for every published job. */
static void bench_flush(kc_bench_t *b)
{
        while (rd_kafka_outq_len(b->rk) > 0 && !*b->stop) {
                rd_kafka_poll(b->rk, 10);
                kc_bench_bar(b, "delivering", b->delivered + b->failed, b->published, 0, 0);
        }
        rd_kafka_poll(b->rk, 0);
        b->t_published_us = kf_now_us();
}

/* drain: every job as fast as librdkafka takes them. */
int kc_bench_publish_drain(kc_bench_t *b)
{
        for (size_t i = 0; i < b->n && !*b->stop; i++) {
                if (bench_produce(b, i, kf_now_us()))
                        return -1;
                rd_kafka_poll(b->rk, 0);
                kc_bench_bar(b, "publish", i + 1, b->n, 0, 0);
        }
        kc_bench_bar(b, "publish", b->published, b->n, 0, 1);
        bench_flush(b);
        return *b->stop ? -1 : 0;
}

/* open: announces to the probe the sampled jobs due up to KC_PROBE_LEAD_US
 * after job i, which is about to be published (job j belongs to users[j %
 * n_users], as in bench_produce). */
static void bench_probe_ahead(kc_bench_t *b, size_t i)
{
        while (b->probe && b->probe_next < b->n && b->probe_next <= i + b->probe_lead) {
                kc_probe_add(b->probe, b->probe_next, b->probe_next % b->n_users);
                b->probe_next += b->probe_every;
        }
}

/* open: job i is due at start + i/rate, whatever has completed.  Its
 * latency is measured from when it was due, so a publisher that falls
 * behind cannot hide queueing (max_lag_us reports by how much it did). */
int kc_bench_publish_open(kc_bench_t *b)
{
        double step_us = 1e6 / (double)b->conf->rate;
        int64_t mono0, wall0;
        size_t i = 0;

        bench_probe_ahead(b, 0); /* the first jobs, before the clock starts */
        mono0 = kf_mono_us() + 1000;
        wall0 = kf_now_us() + 1000;

        while (i < b->n && !*b->stop) {
                int64_t now = kf_mono_us(), due;
                while (i < b->n && (due = mono0 + (int64_t)((double)i * step_us)) <= now) {
                        if (now - due > b->max_lag_us)
                                b->max_lag_us = now - due;
                        bench_probe_ahead(b, i);
                        if (bench_produce(b, i, wall0 + (due - mono0)))
                                return -1;
                        i++;
                }
                rd_kafka_poll(b->rk, 0);
                kc_bench_bar(b, "open loop", i, b->n, 0, 0);
                if (i < b->n) {
                        int64_t wait = mono0 + (int64_t)((double)i * step_us) - kf_mono_us();
                        if (wait > 0)
                                kf_sleep_us(wait < 1000 ? wait : 1000, b->stop);
                }
        }
        kc_bench_bar(b, "open loop", b->published, b->n, 0, 1);
        b->t_start_us = b->t_first_us;
        bench_flush(b);
        return *b->stop ? -1 : 0;
}
