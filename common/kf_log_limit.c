/* kf_log_limit.c - per-site log limits (see kf_log_limit.h). */
#include "kf_log_limit.h"

#include <stdatomic.h>

#include "kf_util.h"

static int limit_lines = KF_LOG_LIMIT_LINES_DEFAULT;
static int64_t limit_us = (int64_t)KF_LOG_LIMIT_INTERVAL_DEFAULT * 1000000;

static pthread_mutex_t sites_lock = PTHREAD_MUTEX_INITIALIZER;
static kf_log_limit_t *sites; /* pushed at the head under sites_lock, never removed */

/* Sites with lines not logged and no summary yet: the flush's fast path. */
static atomic_int pending;
static _Atomic uint64_t suppressed_total;

void kf_log_limit_set(int lines, int interval_s)
{
        limit_lines = lines > 0 ? lines : 0;
        limit_us = (int64_t)(interval_s > 0 ? interval_s : 1) * 1000000;
}

uint64_t kf_log_limit_suppressed_total(void)
{
        return atomic_load(&suppressed_total);
}

/* Writes the window's summary, if lines were not logged, and closes the
 * window.  l->lock. */
static void close_window(kf_log_limit_t *l, int64_t now)
{
        if (l->suppressed) {
                /* kf_log_write, not KF_LOG: the lines were counted at a level
                 * that passed the threshold, so their summary does too */
                kf_log_write((kf_log_level_t)l->level,
                             "%s: %llu more lines like this not logged in the last %.0f s "
                             "(at most %d per %lld s are; --log-limit)",
                             l->what, (unsigned long long)l->suppressed,
                             (double)(now - l->window_us) / 1e6, limit_lines,
                             (long long)(limit_us / 1000000));
                atomic_fetch_sub(&pending, 1);
        }
        l->window_us = 0;
        l->shown = 0;
        l->suppressed = 0;
}

int kf_log_limit_pass(kf_log_limit_t *l, kf_log_level_t level)
{
        int64_t now;
        int pass;

        if (!limit_lines)
                return 1;
        now = kf_mono_us();
        pthread_mutex_lock(&l->lock);
        if (!l->registered) {
                l->registered = 1;
                pthread_mutex_lock(&sites_lock); /* order: a site's lock, then sites_lock */
                l->next = sites;
                sites = l;
                pthread_mutex_unlock(&sites_lock);
        }
        l->level = (int)level;
        if (l->window_us && now - l->window_us >= limit_us)
                close_window(l, now);
        if (!l->window_us)
                l->window_us = now;
        pass = l->shown < (uint64_t)limit_lines;
        if (pass) {
                l->shown++;
        } else {
                if (!l->suppressed++)
                        atomic_fetch_add(&pending, 1);
                atomic_fetch_add(&suppressed_total, 1);
        }
        pthread_mutex_unlock(&l->lock);
        return pass;
}

void kf_log_limit_flush(int all)
{
        kf_log_limit_t *l;
        int64_t now;

        if (!atomic_load(&pending))
                return;
        /* The list is read under sites_lock and walked without it (sites
         * are never removed, and a site's next is set before it is
         * published), so no site's lock is ever taken under sites_lock. */
        pthread_mutex_lock(&sites_lock);
        l = sites;
        pthread_mutex_unlock(&sites_lock);
        now = kf_mono_us();
        for (; l; l = l->next) {
                pthread_mutex_lock(&l->lock);
                if (l->suppressed && (all || now - l->window_us >= limit_us))
                        close_window(l, now);
                pthread_mutex_unlock(&l->lock);
        }
}
