/* kf_util.c - clocks, bounded string copies and number parsing. */
#include "kf_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

int64_t kf_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kf_mono_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int kf_errf(char *errstr, size_t errstr_size, const char *fmt, ...)
{
        va_list ap;
        if (errstr && errstr_size) {
                va_start(ap, fmt);
                vsnprintf(errstr, errstr_size, fmt, ap);
                va_end(ap);
        }
        return -1;
}

size_t kf_strlcpy(char *dst, const char *src, size_t dstsize)
{
        size_t n = strlen(src);
        if (dstsize) {
                size_t c = n < dstsize - 1 ? n : dstsize - 1;
                memcpy(dst, src, c);
                dst[c] = '\0';
        }
        return n;
}

int kf_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
        char *end;
        long long v;
        if (!s || !*s)
                return -1;
        errno = 0;
        v     = strtoll(s, &end, 10);
        if (errno || *end || v < min || v > max)
                return -1;
        *out = v;
        return 0;
}

int kf_random_hex(char *buf, size_t n)
{
        static const char hex[] = "0123456789abcdef";
        unsigned char raw[64];
        if (n > sizeof(raw) || getrandom(raw, n, 0) != (ssize_t)n)
                return -1;
        for (size_t i = 0; i < n; i++) {
                buf[2 * i]     = hex[raw[i] >> 4];
                buf[2 * i + 1] = hex[raw[i] & 15];
        }
        buf[2 * n] = '\0';
        return 0;
}
