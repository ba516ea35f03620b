/* kf_util.h - small helpers every kinfer module uses: clocks, strings. */
#ifndef KF_UTIL_H
#define KF_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Wall clock, Unix milliseconds (result timestamps, deadlines). */
int64_t kf_now_ms(void);
/* Monotonic clock in microseconds (batch waits, latency). */
int64_t kf_mono_us(void);

/* snprintf into errstr if errstr is not NULL; returns -1 for `return kf_err(...)`. */
int kf_errf(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies at most dstsize-1 bytes and always terminates.  Returns strlen(src). */
size_t kf_strlcpy(char *dst, const char *src, size_t dstsize);

/* Parses a whole decimal integer within [min, max]; 0 on success, -1 if the
 * text is empty, has trailing junk or is out of range. */
int kf_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);

/* Fills buf with n random bytes as 2n lowercase hex digits (buf >= 2n+1). */
int kf_random_hex(char *buf, size_t n);

#endif
