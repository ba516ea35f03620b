/* bench_run.c - a drain or open run of `kinfer bench` from start to end:
 * the producer and Redis, the users, publishing, waiting, collecting, the
 * report, the deletion of the run's keys; and what it holds, released. */
#include <errno.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "bench_run.h"
#include "kf_kafka.h"
#include "kf_util.h"

/* drain and open: publish, wait for the results, report. */
int kc_bench_run(kc_bench_t *b)
{
        /* clang-format off */
        static const char *const pdefaults[] = {
            "enable.idempotence", "true", /* as kinfer submit */
            "acks", "all",
            "linger.ms", "5",
            "message.timeout.ms", "60000",
            NULL};
        /* clang-format on */
        kc_conf_t *c = &b->conf->kc;
        rd_kafka_conf_t *kconf;
        char err[512];
        int64_t base;
        int rc = KC_EXIT_FAIL;

        b->redis = kc_redis(c); /* exits 3 if Redis is unreachable */
        if (!(kconf = kf_kafka_conf_new(c->brokers, pdefaults, &c->props, err, sizeof(err)))) {
                kc_err("%s", err);
                return KC_EXIT_USAGE;
        }
        rd_kafka_conf_set_dr_msg_cb(kconf, kc_bench_dr_cb);
        rd_kafka_conf_set_opaque(kconf, b);
        if (!(b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, err, sizeof(err)))) {
                rd_kafka_conf_destroy(kconf);
                kc_err("%s", err);
                return KC_EXIT_CONN;
        }
        if (kc_bench_pick_users(b))
                return KC_EXIT_CONN;
        if (b->conf->sign && kc_bench_keys(b))
                return KC_EXIT_CONN;
        if (!(b->sent_us = calloc(b->n, sizeof(*b->sent_us))) || !(b->state = calloc(b->n, 1)) ||
            !(b->input = malloc((size_t)c->rows_per_job * b->cols * sizeof(float)))) {
                kc_err("bench: out of memory");
                return KC_EXIT_FAIL;
        }
        if ((base = kc_bench_usage_sum(b)) < 0)
                return KC_EXIT_CONN;
        b->mem1 = -1;
        if ((b->time0_s = kc_bench_redis_time(b)) < 0 ||
            (b->mem0 = kc_bench_used_memory_settled(b)) < 0) {
                kc_err("redis: cannot read TIME or INFO memory");
                return KC_EXIT_CONN;
        }
        /* The CPU window: from the first job (a paused worker: from its
         * resumption) until every result is there. */
        if (!b->conf->pause_pid)
                kc_cpu_sample(&b->cpu, 0);

        if (b->mode == KC_BENCH_DRAIN) {
                if (b->conf->pause_pid) {
                        if (kill((pid_t)b->conf->pause_pid, SIGSTOP)) {
                                kc_err("bench: cannot stop pid %lld: %s",
                                       (long long)b->conf->pause_pid, strerror(errno));
                                return KC_EXIT_USAGE;
                        }
                        b->paused = 1;
                }
                if (kc_bench_publish_drain(b))
                        goto out;
                if (b->paused) {
                        kc_cpu_sample(&b->cpu, 0);
                        b->t_start_us = kf_now_us();
                        kill((pid_t)b->conf->pause_pid, SIGCONT);
                        b->paused = 0;
                } else {
                        b->t_start_us = b->t_first_us;
                }
        } else {
                if (b->conf->probes > 0) {
                        b->probe_every = b->n / (size_t)b->conf->probes;
                        if (b->probe_every < 1)
                                b->probe_every = 1;
                        if (!(b->probe = kc_probe_start(c, b->users, b->n_users, b->inbox, b->n,
                                                        b->probe_every, kc_bench_job_idx, b))) {
                                kc_err("bench: cannot start the probe thread");
                                goto out;
                        }
                        b->probe_running = 1;
                        b->probe_lead =
                            (size_t)(((double)b->conf->rate * KC_PROBE_LEAD_US + 999999) / 1e6);
                }
                if (kc_bench_publish_open(b))
                        goto out;
        }

        if (b->failed)
                kc_err("bench: %zu of %zu jobs were not delivered", b->failed, b->published);
        if (kc_bench_wait_done(b, base))
                goto out;
        kc_cpu_sample(&b->cpu, 1);
        /* the probe stopped first: its pops would change the memory */
        if (kc_bench_collect_visible(b) || kc_bench_memory(b) || kc_bench_collect(b))
                goto out;
        kc_bench_report(b);
        if (!b->conf->keep && kc_bench_delete_keys(b))
                goto out;
        if (b->errors)
                kc_err("bench: %zu error results (first: %s)", b->errors, b->first_error);
        if (b->missing)
                kc_err("bench: %zu delivered jobs have no result", b->missing);
        rc = b->errors || b->missing || b->failed || b->delivered != b->n ? KC_EXIT_FAIL
                                                                          : KC_EXIT_OK;
out:
        if (b->paused) /* never leave the worker stopped */
                kill((pid_t)b->conf->pause_pid, SIGCONT);
        b->paused = 0;
        if (b->probe_running)
                kc_probe_finish(b->probe, 0, 0);
        b->probe_running = 0;
        if (*b->stop)
                kc_err("bench: interrupted");
        return rc;
}

void kc_bench_free(kc_bench_t *b)
{
        if (b->rk) {
                rd_kafka_flush(b->rk, 5000);
                rd_kafka_destroy(b->rk);
        }
        if (b->redis)
                redisFree(b->redis);
        free(b->users);
        if (b->signers)
                OPENSSL_cleanse(b->signers, b->n_users * sizeof(*b->signers));
        free(b->signers);
        free(b->sent_us);
        free(b->state);
        free(b->input);
        free(b->lat_ms);
        free(b->svc_ms);
        free(b->vis_ms);
        kc_probe_free(b->probe);
}
