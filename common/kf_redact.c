/* kf_redact.c - redacted forms of URLs and property values, and the
 * process-wide list of secret values scrubbed from every log line. */
#include "kf_redact.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"

int kf_prop_is_secret(const char *name)
{
        static const char *const words[] = {"password", "passwd",     "secret", "key",
                                            "token",    "credential", NULL};
        if (!name)
                return 0;
        for (int i = 0; words[i]; i++)
                if (strcasestr(name, words[i]))
                        return 1;
        return !strcasecmp(name, "sasl.oauthbearer.config");
}

const char *kf_redact_url(const char *url, char *buf, size_t size)
{
        const char *auth = strstr(url, "://");
        const char *at, *colon;

        auth = auth ? auth + 3 : url;
        /* The last '@': a password may hold '@' or '/' unescaped, a host,
         * port or database never does. */
        if (!(at = strrchr(auth, '@'))) {
                kf_strlcpy(buf, url, size);
                return buf;
        }
        colon = memchr(auth, ':', (size_t)(at - auth));
        if (colon) /* keep "scheme://user:", the user helps to debug ACLs */
                snprintf(buf, size, "%.*s" KF_REDACTED "%s", (int)(colon + 1 - url), url, at);
        else
                snprintf(buf, size, "%.*s" KF_REDACTED "%s", (int)(auth - url), url, at);
        return buf;
}

char *kf_redact_value(char *dst, size_t size, const char *src, const char *secret)
{
        size_t o = 0, slen = secret ? strlen(secret) : 0;

        if (!size)
                return dst;
        while (*src && o + 1 < size) {
                if (slen && !strncmp(src, secret, slen)) {
                        o += kf_strlcpy(dst + o, KF_REDACTED, size - o);
                        if (o >= size) /* cut short: kf_strlcpy terminated it */
                                return dst;
                        src += slen;
                } else {
                        dst[o++] = *src++;
                }
        }
        dst[o] = '\0';
        return dst;
}

/* Written under reg_lock, then published by storing the new count with
 * release order; readers load the count (acquire) and read only entries
 * below it, which never change again.  So kf_log_write, which any thread
 * calls, takes no lock. */
_Static_assert(KF_SECRET_MIN > sizeof(KF_REDACTED) - 1, "scrubbing in place must not grow");
static char *reg_secrets[KF_SECRETS_MAX];
static atomic_int reg_count;
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;

int kf_secret_add(const char *secret)
{
        int n, rc = -1;

        if (!secret || strlen(secret) < KF_SECRET_MIN)
                return -1;
        pthread_mutex_lock(&reg_lock);
        n = atomic_load_explicit(&reg_count, memory_order_relaxed);
        for (int i = 0; i < n; i++)
                if (!strcmp(reg_secrets[i], secret)) {
                        rc = 0;
                        goto out;
                }
        if (n < KF_SECRETS_MAX && (reg_secrets[n] = strdup(secret))) {
                atomic_store_explicit(&reg_count, n + 1, memory_order_release);
                rc = 0;
        }
out:
        pthread_mutex_unlock(&reg_lock);
        return rc;
}

void kf_redact_secrets(char *s)
{
        int n = atomic_load_explicit(&reg_count, memory_order_acquire);

        for (int i = 0; i < n; i++) {
                const char *sec = reg_secrets[i];
                size_t slen = strlen(sec), rlen = sizeof(KF_REDACTED) - 1;
                char *p = s;
                /* In place: slen >= KF_SECRET_MIN > rlen, so the rest moves left. */
                while ((p = strstr(p, sec))) {
                        memcpy(p, KF_REDACTED, rlen);
                        memmove(p + rlen, p + slen, strlen(p + slen) + 1);
                        p += rlen;
                }
        }
}
