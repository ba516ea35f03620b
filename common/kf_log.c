/* kf_log.c - the one log line format of every kinfer program (see kf_log.h). */
#include "kf_log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
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
        log_progname = progname;
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

static int log_json; /* set once at start, before threads */

void kf_log_set_json(int json)
{
        log_json = json;
}

/* The message as a JSON line: {"ts", "level", "prog", "pid", "msg"}; the
 * message is escaped by jansson (quotes, control characters, any bytes). */
static void write_json(const char *ts, kf_log_level_t level, const char *msg)
{
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:i, s:s}", "ts", ts, "level", kf_log_level_name(level),
                      "prog", log_progname, "pid", (int)getpid(), "msg", msg);
        char *text;
        if (!o) /* not UTF-8: jansson refuses it; say so rather than drop the line */
                o = json_pack("{s:s, s:s, s:s, s:i, s:s}", "ts", ts, "level",
                              kf_log_level_name(level), "prog", log_progname, "pid", (int)getpid(),
                              "msg", "(a message that is not UTF-8)");
        if (!o)
                return;
        text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!text)
                return;
        fprintf(stderr, "%s\n", text); /* one write under stdio's lock */
        free(text);
}

void kf_log_write(kf_log_level_t level, const char *fmt, ...)
{
        char line[2048], ts[96];
        struct timeval tv;
        struct tm tm;
        va_list ap;
        int n;

        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(tv.tv_usec / 1000));
        if (log_json) {
                va_start(ap, fmt);
                vsnprintf(line, sizeof(line), fmt, ap);
                va_end(ap);
                kf_redact_secrets(line);
                write_json(ts, level, line);
                return;
        }
        n = snprintf(line, sizeof(line), "%s %s[%d] %s ", ts, log_progname, (int)getpid(),
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
        n = (int)strlen(line);
        line[n] = '\n';
        line[n + 1] = '\0';
        fputs(line, stderr);
}
