/* kf_log.c - the one log line format of every kinfer program (see kf_log.h). */
#include "kf_log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "kf_redact.h"

int kf_log_threshold = KF_LOG_INFO;
static const char *log_progname = "kinfer";

static const char *const level_names[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};

void kf_log_init(const char *progname, kf_log_level_t level)
{
        log_progname     = progname;
        kf_log_threshold = level;
}

static const char *const level_words[] = {"error", "warn", "info", "debug"};

const char *kf_log_level_name(kf_log_level_t level)
{
        return (int)level >= 0 && level <= KF_LOG_DEBUG ? level_words[level] : "info";
}

int kf_log_level_parse(const char *name)
{
        const char *const *names = level_words;
        for (int i = 0; i < 4; i++) {
                const char *a = names[i], *b = name;
                while (*a && (*b | 0x20) == *a) {
                        a++;
                        b++;
                }
                if (!*a && !*b)
                        return i;
        }
        return -1;
}

void kf_log_write(kf_log_level_t level, const char *fmt, ...)
{
        char line[2048];
        struct timeval tv;
        struct tm tm;
        va_list ap;
        int n;

        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s[%d] %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), log_progname, (int)getpid(),
                     level_names[level < 0 || level > 3 ? 0 : level]);
        va_start(ap, fmt);
        if (n > 0 && (size_t)n < sizeof(line))
                n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n >= sizeof(line) - 1)
                n = (int)sizeof(line) - 2; /* truncated: keep the newline */
        line[n] = '\0';
        /* Whatever a message quotes (a librdkafka line, a server's reply),
         * no registered password or secret property value gets out. */
        kf_redact_secrets(line);
        n           = (int)strlen(line);
        line[n]     = '\n';
        line[n + 1] = '\0';
        fputs(line, stderr);
}
