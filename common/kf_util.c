/* kf_util.c - clocks and waits, bounded string copies, number parsing,
 * whole-file reads, splitmix64 and backoff (kf_util.h). */
#include "kf_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t kf_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kf_now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t kf_mono_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct timespec kf_timespec_after(clockid_t clock, int64_t ms)
{
        struct timespec ts;

        clock_gettime(clock, &ts);
        if (ms <= 0)
                return ts;
        ts.tv_sec += (time_t)(ms / 1000);
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

void kf_sleep_us(int64_t us, volatile sig_atomic_t *stop)
{
        struct timespec ts;

        if (us <= 0)
                return;
        ts.tv_sec = (time_t)(us / 1000000);
        ts.tv_nsec = (long)(us % 1000000) * 1000L;
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !(stop && *stop))
                ;
}

int kf_backoff_next(int ms, int min, int max)
{
        if (ms < min)
                return min;
        return ms > max / 2 ? max : ms * 2;
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
        v = strtoll(s, &end, 10);
        if (errno || *end || v < min || v > max)
                return -1;
        *out = v;
        return 0;
}

uint64_t kf_splitmix64(uint64_t *state)
{
        uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

double kf_splitmix64_pm1(uint64_t *state)
{
        return (double)(kf_splitmix64(state) >> 11) / 4503599627370496.0 - 1.0; /* / 2^52 */
}

/* "4 GiB", "512 MiB" or "1000 bytes", for a limit in a message. */
static void kf_size_str(size_t n, char *buf, size_t size)
{
        if (n >= ((size_t)1 << 30) && n % ((size_t)1 << 30) == 0)
                snprintf(buf, size, "%zu GiB", n >> 30);
        else if (n >= ((size_t)1 << 20) && n % ((size_t)1 << 20) == 0)
                snprintf(buf, size, "%zu MiB", n >> 20);
        else
                snprintf(buf, size, "%zu bytes", n);
}

int kf_file_read(const char *path, size_t max, char **bufp, size_t *lenp, char *errstr,
                 size_t errstr_size)
{
        struct stat st;
        char *buf = NULL, lim[32];
        size_t len = 0, cap;
        int fd, rc = -1;

        *bufp = NULL;
        *lenp = 0;
        kf_size_str(max, lim, sizeof(lim));
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return kf_errf(errstr, errstr_size, "%s: cannot open: %s", path, strerror(errno));
        if (fstat(fd, &st) != 0) {
                kf_errf(errstr, errstr_size, "%s: cannot stat: %s", path, strerror(errno));
                goto out;
        }
        if (S_ISDIR(st.st_mode)) {
                kf_errf(errstr, errstr_size, "%s: is a directory", path);
                goto out;
        }
        if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max) {
                kf_errf(errstr, errstr_size, "%s: %lld bytes, more than the %s limit", path,
                        (long long)st.st_size, lim);
                goto out;
        }
        /* One byte past the stat size lets the final read see EOF without a
         * realloc; pipes and files that grow still work, within the limit. */
        cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 65536;
        buf = malloc(cap);
        if (!buf) {
                kf_errf(errstr, errstr_size, "%s: out of memory reading %zu bytes", path, cap);
                goto out;
        }
        for (;;) {
                ssize_t n;
                if (len == cap) {
                        char *nb;
                        if (len > max) {
                                kf_errf(errstr, errstr_size, "%s: more than the %s limit", path,
                                        lim);
                                goto out;
                        }
                        cap = cap > max / 2 ? max + 1 : cap * 2;
                        nb = realloc(buf, cap);
                        if (!nb) {
                                kf_errf(errstr, errstr_size, "%s: out of memory reading %zu bytes",
                                        path, cap);
                                goto out;
                        }
                        buf = nb;
                }
                n = read(fd, buf + len, cap - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        kf_errf(errstr, errstr_size, "%s: read failed: %s", path, strerror(errno));
                        goto out;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if (len > max) {
                kf_errf(errstr, errstr_size, "%s: more than the %s limit", path, lim);
                goto out;
        }
        *bufp = buf;
        *lenp = len;
        buf = NULL;
        rc = 0;
out:
        close(fd);
        free(buf);
        return rc;
}

int kf_random_hex(char *buf, size_t n)
{
        static const char hex[] = "0123456789abcdef";
        unsigned char raw[64];
        if (n > sizeof(raw) || getrandom(raw, n, 0) != (ssize_t)n)
                return -1;
        for (size_t i = 0; i < n; i++) {
                buf[2 * i] = hex[raw[i] >> 4];
                buf[2 * i + 1] = hex[raw[i] & 15];
        }
        buf[2 * n] = '\0';
        return 0;
}
