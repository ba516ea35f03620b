/* top_view.c - one frame of `kinfer top` as lines of text: the pool, each
 * worker, the busiest users (top.h).  Only printable ASCII leaves here. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "top.h"

#define NAME_W 24 /* worker and user name columns */

void kt_view_escape(const char *name, char *out, size_t n)
{
        size_t o = 0;
        if (!n)
                return;
        for (const unsigned char *s = (const unsigned char *)name; *s; s++) {
                char piece[5];
                size_t len;
                if (*s == '\\')
                        len = (size_t)snprintf(piece, sizeof(piece), "\\\\");
                else if (*s < 0x20 || *s > 0x7e)
                        len = (size_t)snprintf(piece, sizeof(piece), "\\x%02x", *s);
                else
                        piece[0] = (char)*s, piece[1] = '\0', len = 1;
                if (o + len >= n)
                        break;
                memcpy(out + o, piece, len);
                o += len;
        }
        out[o] = '\0';
}

/* name escaped and cut to NAME_W columns ('~' marks a cut). */
static void cell_name(const char *name, char out[NAME_W + 1])
{
        char esc[4 * 256 + 1];
        kt_view_escape(name, esc, sizeof(esc));
        if (strlen(esc) > NAME_W) {
                memcpy(out, esc, NAME_W - 1);
                out[NAME_W - 1] = '~';
                out[NAME_W] = '\0';
        } else
                strcpy(out, esc);
}

/* The URL as people say it: without "http://" and "/metrics". */
static void worker_name(const char *url, char out[NAME_W + 1])
{
        char buf[512];
        size_t n;
        if (!strncmp(url, "http://", 7))
                url += 7;
        snprintf(buf, sizeof(buf), "%s", url);
        n = strlen(buf);
        if (n > 8 && !strcmp(buf + n - 8, "/metrics"))
                buf[n - 8] = '\0';
        cell_name(buf, out);
}

typedef struct {
        kt_line_cb *cb;
        void *opaque;
        int width, i;
} out_t;

static void emit(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(out_t *o, const char *fmt, ...)
{
        char line[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (o->width > 0 && (size_t)o->width < sizeof(line))
                line[o->width] = '\0';
        o->cb(o->i++, line, o->opaque);
}

static void rate(char *buf, size_t n, int have, double v)
{
        if (have)
                snprintf(buf, n, "%.1f", v);
        else
                snprintf(buf, n, "-");
}

static void count(char *buf, size_t n, long long v)
{
        if (v < 0)
                snprintf(buf, n, "?"); /* not a number in Redis */
        else
                snprintf(buf, n, "%lld", v);
}

static int cmp_users(const void *a, const void *b)
{
        const kt_user_t *x = *(const kt_user_t *const *)a, *y = *(const kt_user_t *const *)b;
        double rx = x->have_rate ? x->jobs_rate : 0, ry = y->have_rate ? y->jobs_rate : 0;
        if (rx != ry)
                return rx < ry ? 1 : -1;
        if (x->jobs != y->jobs)
                return x->jobs < y->jobs ? 1 : -1;
        return strcmp(x->name, y->name);
}

static void render_workers(const kt_pool_t *p, out_t *o, double pool_jobs)
{
        char name[NAME_W + 1], reason[KT_REASON_MAX * 4], jr[32], er[32], share[32], work[32];

        emit(o, "%-*s %-5s %10s %10s %10s %7s %9s %9s %9s %11s %6s %6s", NAME_W, "WORKER", "STATE",
             "JOBS", "OK", "ERRORS", "SHARE", "JOBS/S", "ERR/S", "LAG", "WORK_FLOPS", "INFLT",
             "PARTS");
        if (!p->n_workers)
                emit(o, "(none: no worker given, and no worker's heartbeat record in Redis; "
                        "workers write one with --http)");
        for (size_t i = 0; i < p->n_workers; i++) {
                const kt_worker_t *w = &p->workers[i];
                worker_name(w->url, name);
                if (!w->up) {
                        kt_view_escape(w->reason, reason, sizeof(reason));
                        emit(o, "%-*s %-5s %s", NAME_W, name, "down", reason);
                        continue;
                }
                rate(jr, sizeof(jr), w->have_rate, w->jobs_rate);
                rate(er, sizeof(er), w->have_rate, w->err_rate);
                if (pool_jobs > 0)
                        snprintf(share, sizeof(share), "%.1f%%", 100.0 * w->jobs / pool_jobs);
                else
                        snprintf(share, sizeof(share), "-");
                if (w->have_work)
                        snprintf(work, sizeof(work), "%.4g", w->work);
                else
                        snprintf(work, sizeof(work), "-");
                emit(o, "%-*s %-5s %10.0f %10.0f %10.0f %7s %9s %9s %9.0f %11s %6.0f %6.0f", NAME_W,
                     name, "up", w->jobs, w->ok, w->errors, share, jr, er, w->lag, work,
                     w->inflight, w->partitions);
        }
}

static void render_users(const kt_pool_t *p, out_t *o, int max_users)
{
        kt_user_t **all = NULL, *u, *tmp;
        size_t n = 0;
        char name[NAME_W + 1], jobs[24], errs[24], rows[24], flops[24], jr[32], er[32];

        if (p->n_users && !(all = malloc(p->n_users * sizeof(*all)))) {
                emit(o, "users: out of memory");
                return;
        }
        HASH_ITER(hh, p->users, u, tmp)
        {
                all[n++] = u;
        }
        if (n > 1)
                qsort(all, n, sizeof(*all), cmp_users);
        emit(o, "%-*s %10s %10s %12s %16s %9s %9s", NAME_W, "USER", "JOBS", "ERRORS", "ROWS",
             "FLOPS", "JOBS/S", "ERR/S");
        for (size_t i = 0; i < n && (max_users < 0 || i < (size_t)max_users); i++) {
                u = all[i];
                cell_name(u->name, name);
                count(jobs, sizeof(jobs), u->jobs);
                count(errs, sizeof(errs), u->errors);
                count(rows, sizeof(rows), u->rows);
                count(flops, sizeof(flops), u->flops);
                rate(jr, sizeof(jr), u->have_rate, u->jobs_rate);
                rate(er, sizeof(er), u->have_rate, u->err_rate);
                emit(o, "%-*s %10s %10s %12s %16s %9s %9s", NAME_W, name, jobs, errs, rows, flops,
                     jr, er);
        }
        if (max_users >= 0 && n > (size_t)max_users)
                emit(o, "... %zu more users", n - (size_t)max_users);
        free(all);
}

void kt_view_render(const kt_pool_t *p, int width, int max_users, double interval_s,
                    kt_line_cb *line, void *opaque)
{
        out_t o = {.cb = line, .opaque = opaque, .width = width};
        double jobs = 0, errs = 0, jr = 0, er = 0, lag = 0, work = 0, inflight = 0;
        int up = 0, rates = 1, have_work = 0;
        char clock[16], rj[32], re[32], pct[32], reason[KT_REASON_MAX * 4], wk[32];
        time_t now = time(NULL);
        struct tm tm;

        for (size_t i = 0; i < p->n_workers; i++) {
                const kt_worker_t *w = &p->workers[i];
                if (!w->up)
                        continue;
                up++;
                jobs += w->jobs;
                errs += w->errors;
                lag += w->lag;
                inflight += w->inflight;
                if (w->have_work)
                        work += w->work, have_work = 1;
                if (w->have_rate)
                        jr += w->jobs_rate, er += w->err_rate;
                else
                        rates = 0;
        }
        rates = rates && up;
        gmtime_r(&now, &tm);
        strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
        emit(&o, "kinfer top  %s UTC  every %.1f s  (q quits)", clock, interval_s);
        rate(rj, sizeof(rj), rates, jr);
        rate(re, sizeof(re), rates, er);
        if (rates && jr > 0)
                snprintf(pct, sizeof(pct), "%.1f%%", 100.0 * er / jr);
        else
                snprintf(pct, sizeof(pct), "-");
        if (have_work)
                snprintf(wk, sizeof(wk), "%.4g", work);
        else
                snprintf(wk, sizeof(wk), "-");
        emit(&o, "pool: workers %d/%zu up  jobs %.0f  errors %.0f  jobs/s %s  errors/s %s (%s)", up,
             p->n_workers, jobs, errs, rj, re, pct);
        emit(&o, "      lag %.0f  work remaining %s flops  batches in flight %.0f", lag, wk,
             inflight);
        if (p->redis_up)
                emit(&o, "redis: up  users %zu%s", p->n_users,
                     p->users_unread ? "  (more usage keys than read: see --help)" : "");
        else {
                kt_view_escape(p->redis_reason, reason, sizeof(reason));
                emit(&o, "redis: down  %s", reason);
        }
        emit(&o, "%s", "");
        render_workers(p, &o, jobs);
        emit(&o, "%s", "");
        render_users(p, &o, max_users);
}
