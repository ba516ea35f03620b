/* kf_log.h - leveled logging shared by kinfer programs.
 *
 * One line per event on stderr:
 *   2026-11-23T07:23:31.123Z kinfer-worker[4242] WARN  message
 * or, after kf_log_set_json(1), one JSON object per line.
 * The level is checked before anything is formatted (KF_LOG), so debug
 * logging in hot paths costs one comparison when it is off.
 * Thread-safe: each line is written with a single fputs under stdio's lock.
 * Every line is scrubbed of the secrets registered with kf_secret_add()
 * (kf_redact.h): passwords of Redis URLs, secret -X property values. */
#ifndef KF_LOG_H
#define KF_LOG_H

#include <stdarg.h>

typedef enum {
        KF_LOG_ERROR = 0,
        KF_LOG_WARN = 1,
        KF_LOG_INFO = 2,
        KF_LOG_DEBUG = 3,
} kf_log_level_t;

/* The current threshold; lines above it are skipped.  Read without a lock
 * on purpose: a stale read only drops or keeps one line. */
extern int kf_log_threshold;

/* Sets the program name shown in every line (not copied: pass a literal). */
void kf_log_init(const char *progname, kf_log_level_t level);

/* 1: every line is one JSON object instead, {"ts", "level", "prog", "pid",
 * "msg"}, for log pipelines.  Call before starting threads. */
void kf_log_set_json(int json);

/* Parses "error", "warn", "info" or "debug".  Returns the level or -1. */
int kf_log_level_parse(const char *name);
const char *kf_log_level_name(kf_log_level_t level); /* the reverse */

void kf_log_write(kf_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define KF_LOG(lvl, ...)                                                                           \
        do {                                                                                       \
                if ((int)(lvl) <= kf_log_threshold)                                                \
                        kf_log_write((lvl), __VA_ARGS__);                                          \
        } while (0)

#define kf_error(...) KF_LOG(KF_LOG_ERROR, __VA_ARGS__)
#define kf_warn(...)  KF_LOG(KF_LOG_WARN, __VA_ARGS__)
#define kf_info(...)  KF_LOG(KF_LOG_INFO, __VA_ARGS__)
#define kf_debug(...) KF_LOG(KF_LOG_DEBUG, __VA_ARGS__)

#endif
