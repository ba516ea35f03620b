/* bench_report.c - what a run of `kinfer bench` shows: the progress bar on
 * stderr while it runs, and the report, one JSON line on stdout, at the end. */
#include <stdio.h>

#include "bench_run.h"
#include "kf_stats.h"
#include "kf_util.h"

/* How often the bar is redrawn. */
#define BENCH_BAR_US 100000

/* Draws "\r<what> [#####-----] 42% done/total <rate>" on stderr, at most
 * every BENCH_BAR_US unless final. */
void kc_bench_bar(kc_bench_t *b, const char *what, size_t done, size_t total, double per_s,
                  int final)
{
        char bar[31];
        int64_t now = kf_mono_us();
        size_t fill;

        if (!b->bar || (!final && now - b->bar_drawn_us < BENCH_BAR_US))
                return;
        b->bar_drawn_us = now;
        fill = total ? done * 30 / total : 30;
        for (size_t i = 0; i < 30; i++)
                bar[i] = i < fill ? '#' : '-';
        bar[30] = '\0';
        fprintf(stderr, "\r\033[Kkinfer bench: %-9s [%s] %3zu%% %zu/%zu", what, bar,
                total ? done * 100 / total : 100, done, total);
        if (per_s > 0)
                fprintf(stderr, "  %.0f jobs/s", per_s);
        if (final)
                fputc('\n', stderr);
        fflush(stderr);
}

/* o[key] = the p-th percentile of the n sorted values v, for the report. */
static void bench_set_pct(json_t *o, const char *key, const double *v, size_t n, double p)
{
        json_object_set_new(o, key, kc_bench_real(kf_stats_percentile(v, n, p)));
}

/* Throughput counts until every result was there (t_all_us: a pipelined
 * worker writes results after their `done`); latency is `done` minus the
 * produce time, as the protocol defines `done`, and the sampled "visible"
 * latency is until the result could be read. */
void kc_bench_report(kc_bench_t *b)
{
        const kc_conf_t *c = &b->conf->kc;
        double secs = (double)(b->t_all_us - b->t_start_us) / 1e6;
        double csecs = (double)(b->last_done_ms * 1000 - b->t_start_us) / 1e6;
        double done = (double)(b->ok + b->errors);
        double rec = b->record_fields > 0 ? b->record_bytes / b->record_fields : 0;
        json_t *o = json_object(), *cj;

        kf_stats_sort(b->lat_ms, b->n_lat);
        kf_stats_sort(b->svc_ms, b->n_lat);
        kf_stats_sort(b->vis_ms, b->n_vis);
        if (!(secs > 0) || !b->n_lat)
                secs = 0;
        if (!(csecs > 0) || !b->n_lat)
                csecs = 0;
        json_object_set_new(o, "mode", json_string(b->mode == KC_BENCH_OPEN ? "open" : "drain"));
        json_object_set_new(o, "model", json_string(c->model));
        json_object_set_new(o, "cols", json_integer(b->cols));
        json_object_set_new(o, "rows_per_job", json_integer(c->rows_per_job));
        json_object_set_new(o, "users", json_integer((json_int_t)b->n_users));
        json_object_set_new(o, "partitions", json_integer(b->partitions));
        if (b->mode == KC_BENCH_OPEN) {
                json_object_set_new(o, "rate", json_integer(b->conf->rate));
                json_object_set_new(o, "duration_s", json_integer(b->conf->duration));
                json_object_set_new(o, "max_lag_ms", kc_bench_real((double)b->max_lag_us / 1e3));
        } else {
                json_object_set_new(o, "paused_worker", json_boolean(b->conf->pause_pid != 0));
        }
        json_object_set_new(o, "jobs", json_integer((json_int_t)b->n));
        json_object_set_new(o, "delivered", json_integer((json_int_t)b->delivered));
        json_object_set_new(o, "ok", json_integer((json_int_t)b->ok));
        json_object_set_new(o, "errors", json_integer((json_int_t)b->errors));
        json_object_set_new(o, "missing",
                            json_integer((json_int_t)(b->missing + (b->n - b->delivered))));
        json_object_set_new(o, "publish_s",
                            kc_bench_real((double)(b->t_published_us - b->t_first_us) / 1e6));
        json_object_set_new(o, "elapsed_s", kc_bench_real(secs));
        json_object_set_new(o, "jobs_per_s", kc_bench_real(secs > 0 ? done / secs : 0));
        json_object_set_new(o, "rows_per_s",
                            kc_bench_real(secs > 0 ? done * (double)c->rows_per_job / secs : 0));
        /* until the last `done`, and how much later the last result was there */
        json_object_set_new(o, "done_jobs_per_s", kc_bench_real(csecs > 0 ? done / csecs : 0));
        json_object_set_new(o, "write_lag_ms", kc_bench_real((secs - csecs) * 1e3));
        bench_set_pct(o, "p50_ms", b->lat_ms, b->n_lat, 50);
        bench_set_pct(o, "p90_ms", b->lat_ms, b->n_lat, 90);
        bench_set_pct(o, "p99_ms", b->lat_ms, b->n_lat, 99);
        bench_set_pct(o, "max_ms", b->lat_ms, b->n_lat, 100);
        bench_set_pct(o, "service_p50_ms", b->svc_ms, b->n_lat, 50);
        bench_set_pct(o, "service_p99_ms", b->svc_ms, b->n_lat, 99);
        if (b->probe) {
                json_object_set_new(o, "visible_n", json_integer((json_int_t)b->n_vis));
                bench_set_pct(o, "visible_p50_ms", b->vis_ms, b->n_vis, 50);
                bench_set_pct(o, "visible_p99_ms", b->vis_ms, b->n_vis, 99);
                bench_set_pct(o, "visible_max_ms", b->vis_ms, b->n_vis, 100);
                json_object_set_new(o, "visible_late", json_boolean(kc_probe_overflowed(b->probe)));
        }
        /* Redis memory per stored result and charge record: see kc_bench_memory */
        json_object_set_new(
            o, "redis_bytes_per_result",
            rec > 0 && done > 0 && b->mem1 >= 0
                ? kc_bench_real(((double)(b->mem1 - b->mem0) - b->inbox_bytes - rec * done) / done)
                : json_null());
        json_object_set_new(o, "redis_bytes_per_result_key",
                            b->key_samples ? kc_bench_real(b->key_bytes) : json_null());
        json_object_set_new(o, "redis_bytes_per_charge_record",
                            rec > 0 ? kc_bench_real(rec) : json_null());
        if (b->errors)
                json_object_set_new(o, "first_error", json_string(b->first_error));
        if ((cj = kc_cpu_json(&b->cpu, done)))
                json_object_set_new(o, "cpu", cj);
        kc_print_json(o);
        fflush(stdout);
        json_decref(o);
}
