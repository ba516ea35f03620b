/* kf_log_limit.h - at most N lines per interval from one log call site.
 *
 * Some lines are written once per message or per job (a refused forgery, a
 * message without a readable job id): their count is whatever anyone who
 * can write to the jobs topic chooses.  Such a call site logs through
 * kf_warn_limited() and friends instead: in each window of
 * --log-limit-s seconds it writes its first --log-limit lines (they carry
 * the offsets an operator needs), counts the rest without formatting
 * them, and then writes one summary line
 *   "unauthorized job: 4812 more lines like this not logged in the last 10 s"
 * at the site's level, either when the site logs again after the window or
 * from kf_log_limit_flush() (the worker's loop thread calls it; shutdown
 * flushes everything).  The lines shown plus the counts in summaries are
 * exactly the lines asked for: nothing is dropped without being counted.
 *
 * Bound: a site writes at most LINES + 1 lines per window of INTERVAL s,
 * so over T seconds at most (LINES + 1) * (T / INTERVAL + 1) lines.
 *
 * Threads: every function may be called from any thread; each site has its
 * own mutex (static, initialised by KF_LOG_LIMIT_INIT), and sites register
 * themselves on a global list on first use for the flush.  Settings are
 * set once at start, before threads.  No function fails: a summary is a
 * log line like any other. */
#ifndef KF_LOG_LIMIT_H
#define KF_LOG_LIMIT_H

#include <pthread.h>
#include <stdint.h>

#include "kf_log.h"

typedef struct kf_log_limit_s {
        const char *what; /* names the site in its summary (a literal) */
        pthread_mutex_t lock;
        int level;                   /* the site's level, for its summary */
        int64_t window_us;           /* when the current window opened; 0 = none */
        uint64_t shown, suppressed;  /* in the current window */
        int registered;              /* on the flush list */
        struct kf_log_limit_s *next; /* the flush list */
} kf_log_limit_t;

#define KF_LOG_LIMIT_INIT(what_)                                                                   \
        {                                                                                          \
                (what_), PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, 0, NULL                            \
        }

#define KF_LOG_LIMIT_LINES_DEFAULT    20
#define KF_LOG_LIMIT_INTERVAL_DEFAULT 10 /* seconds */

/* LINES per INTERVAL_S seconds per site; LINES 0 = no limit.  Call before
 * starting threads. */
void kf_log_limit_set(int lines, int interval_s);

/* 1: write this line (the caller does); 0: it is counted instead.  Writes
 * the summary of a window that has ended first. */
int kf_log_limit_pass(kf_log_limit_t *l, kf_log_level_t level);

/* Writes the summary of every site whose window has ended with lines not
 * logged (ALL: every site with lines not logged, at shutdown).  Cheap when
 * there is none: one atomic load. */
void kf_log_limit_flush(int all);

/* Lines not logged since start, over all sites (for /metrics). */
uint64_t kf_log_limit_suppressed_total(void);

#define KF_LOG_LIMITED(lvl, what, ...)                                                             \
        do {                                                                                       \
                static kf_log_limit_t kf_ll_site_ = KF_LOG_LIMIT_INIT(what);                       \
                if ((int)(lvl) <= kf_log_threshold && kf_log_limit_pass(&kf_ll_site_, (lvl)))      \
                        kf_log_write((lvl), __VA_ARGS__);                                          \
        } while (0)

#define kf_error_limited(what, ...) KF_LOG_LIMITED(KF_LOG_ERROR, what, __VA_ARGS__)
#define kf_warn_limited(what, ...)  KF_LOG_LIMITED(KF_LOG_WARN, what, __VA_ARGS__)
#define kf_info_limited(what, ...)  KF_LOG_LIMITED(KF_LOG_INFO, what, __VA_ARGS__)

#endif
