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
 * drain() in loop.c).
 *
 * This file is the worker's lifetime (kw_worker_new, kw_worker_destroy);
 * the threads are in pipeline.c (compute, writers) and loop.c (the loop
 * thread), their shared state in worker_int.h. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_kafka.h"
#include "kf_log.h"
#include "kf_util.h"
#include "worker_int.h"

kw_worker_t *kw_worker_new(const kw_config_t *c, volatile sig_atomic_t *stop, char *errstr,
                           size_t errstr_size)
{
        /* at-least-once: offsets are stored by us after Redis acknowledged the
         * results, and committed by librdkafka in the background and on close. */
        static const char *const defaults[] = {
            "enable.auto.offset.store", "false", "enable.auto.commit", "true", "auto.offset.reset",
            "earliest",
            /* Eager protocol: librdkafka 2.0.2's cooperative-sticky has bugs
             * fixed only in 2.1-2.10; see docs/operations.md. */
            "partition.assignment.strategy", "range,roundrobin", "enable.partition.eof", "false",
            /* Bounds how long an idle fetch waits before new jobs are seen
             * when the broker does not answer fetches early (the dev
             * broker); real Kafka answers as soon as data arrives. */
            "fetch.wait.max.ms", "50",
            /* the consumer lag per partition, for the metrics */
            "statistics.interval.ms", "5000", NULL};
        rd_kafka_conf_t *kconf = NULL;
        char murl[512];
        rd_kafka_topic_partition_list_t *topics = NULL;
        rd_kafka_resp_err_t err;
        /* exactly once: offsets are committed in the result transactions */
        static const char *const eos_defaults[] = {"enable.auto.commit", "false", "isolation.level",
                                                   "read_committed", NULL};
        const char *const *cdefaults = defaults;
        const char *all_defaults[64];
        kf_props_t cprops = {0};
        kw_worker_t *w;
        char host[128];

        if (c->chain_model && c->require_signatures) {
                /* a chained job is built here from a result message: no user
                 * signed its bytes, so every one would be unauthorized */
                kf_errf(errstr, errstr_size,
                        "--chain-model with --require-signatures: chained jobs are made by "
                        "the worker from result messages and carry no user's signature; "
                        "restrict who may write topic %s with Kafka ACLs instead "
                        "(docs/security.md)",
                        c->topic);
                return NULL;
        }
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
        w->costs = (kw_compute_limits_t){(uint64_t)c->max_output_elements,
                                         (uint64_t)c->max_scratch_elements};
        w->step = (kw_step_conf_t){c->prefix,
                                   w->worker_id,
                                   {c->quota_jobs, c->quota_rows, c->quota_window},
                                   c->charge_horizon,
                                   c->results_topic != NULL};
        openblas_set_num_threads((int)c->blas_threads);
        /* A loop stuck for longer than a drain may take is not draining. */
        w->status.stall_us = (c->grace_ms + 30000) * 1000;
        kw_status_tick(&w->status, kf_mono_us());
        if (!(w->metrics = kw_metrics_new()) || !(w->part_costs = kw_costs_new())) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }

        if (c->models_dir)
                w->models = ms_store_new(c->models_dir);
        else
                w->models = ms_store_new_registry(c->redis_url, c->prefix, (int)c->redis_timeout_ms,
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
        if (kw_auth_open(&w->auth, c->redis_url, (int)c->redis_timeout_ms, c->prefix,
                         c->require_signatures, c->key_cache_ms, errstr, errstr_size))
                goto err;
        for (int i = 0; i < w->n_writers; i++) {
                w->writers[i].w = w;
                if (kw_commit_open(&w->writers[i].commit, c->redis_url, (int)c->redis_timeout_ms,
                                   &w->step, errstr, errstr_size))
                        goto err;
                w->writers[i].commit.metrics = w->metrics;
        }
        if (kw_commit_open(&w->dlq_commit, c->redis_url, (int)c->redis_timeout_ms, &w->step, errstr,
                           errstr_size))
                goto err;
        if (kw_dlq_init(&w->dlq, c->brokers, &c->props, c->dlq_topic, w->worker_id,
                        c->max_message_bytes, errstr, errstr_size))
                goto err;

        if (c->exactly_once && !c->results_topic) {
                kf_errf(errstr, errstr_size, "--exactly-once needs --results-topic");
                goto err;
        }
        if (c->transactional_id)
                kf_strlcpy(w->txn_id, c->transactional_id, sizeof(w->txn_id));
        else
                snprintf(w->txn_id, sizeof(w->txn_id), "kinfer-%s-%s", c->group, w->worker_id);
        {
                kw_rt_conf_t rc = {c->brokers,
                                   &c->props,
                                   c->results_topic,
                                   c->results_key,
                                   c->exactly_once,
                                   w->txn_id,
                                   (int)(c->grace_ms > 30000 ? c->grace_ms : 30000),
                                   w->metrics,
                                   w->worker_id};
                if (kw_rt_init(&w->rt, &rc, errstr, errstr_size))
                        goto err;
                if (c->results_topic)
                        kw_metrics_show(w->metrics, KW_SHOW_RESULTS);
        }
        if (c->exactly_once) { /* the defaults, then the exactly-once ones (later wins) */
                int n = 0;
                for (int i = 0; defaults[i]; i++)
                        all_defaults[n++] = defaults[i];
                for (int i = 0; eos_defaults[i]; i++)
                        all_defaults[n++] = eos_defaults[i];
                all_defaults[n] = NULL;
                cdefaults = all_defaults;
        }

        /* -X dlq.KEY=VALUE is the dead-letter producer's alone, results.KEY
         * the result producer's. */
        if (kw_dlq_consumer_props(&c->props, &cprops, errstr, errstr_size))
                goto err;
        kw_rt_strip_props(&cprops);
        kconf = kf_kafka_conf_new(c->brokers, cdefaults, &cprops, errstr, errstr_size);
        kf_props_free(&cprops);
        if (!kconf)
                goto err;
        if (rd_kafka_conf_set(kconf, "group.id", c->group, errstr, errstr_size) ||
            rd_kafka_conf_set(kconf, "client.id", w->worker_id, errstr, errstr_size) ||
            (c->instance_id &&
             rd_kafka_conf_set(kconf, "group.instance.id", c->instance_id, errstr, errstr_size)))
                goto err;
        rd_kafka_conf_set_rebalance_cb(kconf, kw_rebalance_cb);
        rd_kafka_conf_set_stats_cb(kconf, kw_stats_cb);
        rd_kafka_conf_set_error_cb(kconf, kw_consumer_error_cb);
        rd_kafka_conf_set_opaque(kconf, w);
        if (!(w->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size)))
                goto err;
        kconf = NULL; /* owned by w->rk now */
        rd_kafka_poll_set_consumer(w->rk);
        if (!(w->offsets = kw_offsets_new(w->rk))) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        kw_rt_bind(&w->rt, w->rk, w->offsets);
        if (kw_dlq_start(&w->dlq, &w->dlq_commit, w->offsets, w->stop, errstr, errstr_size))
                goto err;
        if (kw_threads_start(w, errstr, errstr_size))
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
                if (!(w->endpoint =
                          kw_endpoint_start(c->http_addr, w->metrics, &w->status, &w->pre.redis.url,
                                            (int)c->redis_timeout_ms, errstr, errstr_size)))
                        goto err;
                kf_info("serving /metrics, /healthz and /readyz on %s (port %d)", c->http_addr,
                        kw_endpoint_port(w->endpoint));
                /* The heartbeat record kinfer top finds the pool by. */
                if (kw_advertise_url(c->http_addr, kw_endpoint_port(w->endpoint), murl,
                                     sizeof(murl))) {
                        kf_errf(errstr, errstr_size, "--http %s: no URL fits", c->http_addr);
                        goto err;
                }
                if (!(w->advertise =
                          kw_advertise_start(&w->pre.redis.url, c->prefix, w->worker_id, murl,
                                             (int)c->redis_timeout_ms, errstr, errstr_size)))
                        goto err;
        }
        if (c->results_topic)
                kf_info("results to topic %s, keyed by %s, %s%s", c->results_topic, c->results_key,
                        c->exactly_once ? "exactly once, transactional.id " : "at least once",
                        c->exactly_once ? w->txn_id : "");
        if (c->chain_model)
                kf_info("chained: messages of %s are result messages, each a job of model %s",
                        c->topic, c->chain_model);
        kf_info("worker %s: group %s, topic %s, brokers %s, redis %s:%d, models %s, "
                "%d compute threads x %lld BLAS threads, %d writer threads",
                w->worker_id, c->group, c->topic, c->brokers, w->pre.redis.url.host,
                w->pre.redis.url.port, c->models_dir ? c->models_dir : "(registry)", w->n_computers,
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
        kw_advertise_stop(w->advertise); /* the record goes before the endpoint */
        kw_endpoint_stop(w->endpoint);   /* it reads the metrics and the status */
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
        kw_rt_close(&w->rt); /* the writers are gone */
        if (w->rk)
                rd_kafka_destroy(w->rk);
        kw_offsets_destroy(w->offsets);
        for (int i = 0; i < w->n_writers; i++)
                kw_commit_close(&w->writers[i].commit);
        free(w->writers);
        kw_precheck_close(&w->pre);
        kw_auth_close(&w->auth);
        ms_store_destroy(w->models);
        kw_queue_destroy(&w->compute_q);
        kw_queue_destroy(&w->write_q);
        kw_metrics_destroy(w->metrics);
        kw_costs_free(w->part_costs);
        pthread_cond_destroy(&w->idle);
        pthread_mutex_destroy(&w->lock);
        free(w);
}
