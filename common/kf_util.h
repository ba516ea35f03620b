/* kf_util.h - small helpers every kinfer module uses: clocks and waits,
 * strings, numbers, whole files, a seeded generator, backoff. */
#ifndef KF_UTIL_H
#define KF_UTIL_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Wall clock, Unix milliseconds (result timestamps, deadlines). */
int64_t kf_now_ms(void);
/* Wall clock, Unix microseconds (latencies against another process's
 * wall-clock stamps, e.g. a result's `done`). */
int64_t kf_now_us(void);
/* Monotonic clock in microseconds (batch waits, latency). */
int64_t kf_mono_us(void);

/* The instant ms milliseconds from now on clock (CLOCK_REALTIME or
 * CLOCK_MONOTONIC: the clock of the condition variable it is for), as the
 * absolute timespec pthread_cond_timedwait takes; ms <= 0 is now. */
struct timespec kf_timespec_after(clockid_t clock, int64_t ms);

/* Sleeps us microseconds (<= 0: not at all), going back to sleep after a
 * signal unless *stop (may be NULL) is set by then. */
void kf_sleep_us(int64_t us, volatile sig_atomic_t *stop);

/* The next wait of a capped exponential backoff: min for the first (ms <
 * min, e.g. 0 for "not waiting yet"), then twice the last, at most max. */
int kf_backoff_next(int ms, int min, int max);

/* snprintf into errstr if errstr is not NULL; returns -1 for `return kf_err(...)`. */
int kf_errf(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies at most dstsize-1 bytes and always terminates.  Returns strlen(src). */
size_t kf_strlcpy(char *dst, const char *src, size_t dstsize);

/* Parses a whole decimal integer within [min, max]; 0 on success, -1 if the
 * text is empty, has trailing junk or is out of range. */
int kf_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);

/* splitmix64: the next value of a small, well-known generator, so a seed
 * gives the same numbers on every machine (random models, bench inputs;
 * not for secrets). */
uint64_t kf_splitmix64(uint64_t *state);
/* A double uniform in [-1, 1) from the top 53 bits of kf_splitmix64. */
double kf_splitmix64_pm1(uint64_t *state);

/* Reads a whole file (or pipe) of at most max bytes into a malloc'd buffer
 * (caller frees; one spare byte past len, not counted).  Returns 0, or -1
 * with errstr naming the path and the reason ("x.kmodel: is a directory",
 * "x.kmodel: 5000000000 bytes, more than the 4 GiB limit"). */
int kf_file_read(const char *path, size_t max, char **buf, size_t *len, char *errstr,
                 size_t errstr_size);

/* Fills buf with n random bytes as 2n lowercase hex digits (buf >= 2n+1). */
int kf_random_hex(char *buf, size_t n);

#endif
