/* kf_redis.c - Redis URL parsing, connecting with AUTH/SELECT, and EVALSHA
 * scripts that survive a server-side script cache flush. */
#include "kf_redis.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "kf_redact.h"
#include "kf_util.h"

/* Decodes %XX escapes so a password may hold ':', '@' or '/'. */
static int hexval(int c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        c |= 0x20;
        return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int url_unescape(char *dst, size_t dstsize, const char *src, size_t len)
{
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                int c = (unsigned char)src[i];
                if (c == '%') {
                        int hi, lo;
                        if (i + 2 >= len)
                                return -1;
                        hi = hexval((unsigned char)src[i + 1]);
                        lo = hexval((unsigned char)src[i + 2]);
                        if (hi < 0 || lo < 0)
                                return -1;
                        c = hi * 16 + lo;
                        i += 2;
                }
                if (o + 1 >= dstsize)
                        return -1;
                dst[o++] = (char)c;
        }
        dst[o] = '\0';
        return 0;
}

int kf_redis_url_parse(const char *url, kf_redis_url_t *u, char *errstr, size_t errstr_size)
{
        const char *p, *at, *slash, *hostend, *colon;
        char shown[512]; /* the URL as errors show it: without the password */
        int64_t v;

        memset(u, 0, sizeof(*u));
        u->port = 6379;
        kf_redact_url(url, shown, sizeof(shown));
        if (strncmp(url, "redis://", 8))
                return kf_errf(errstr, errstr_size,
                               "redis URL '%s' must start with redis:// "
                               "(redis://[user:password@]host:port[/db])",
                               shown);
        p = url + 8;
        /* The last '@' ends the password: host, port and database never
         * hold one, a password may hold '@' or '/' unescaped (taking the
         * first '/' as the database would print a piece of it as a port). */
        if ((at = strrchr(p, '@'))) {
                const char *c = memchr(p, ':', (size_t)(at - p));
                if (c) {
                        if (url_unescape(u->user, sizeof(u->user), p, (size_t)(c - p)) ||
                            url_unescape(u->pass, sizeof(u->pass), c + 1, (size_t)(at - c - 1)))
                                return kf_errf(errstr, errstr_size,
                                               "redis URL '%s': user or password too long or "
                                               "badly %%-escaped",
                                               shown);
                } else if (url_unescape(u->pass, sizeof(u->pass), p, (size_t)(at - p))) {
                        return kf_errf(errstr, errstr_size,
                                       "redis URL '%s': password too long or badly %%-escaped",
                                       shown);
                }
                /* Kept out of every log line from now on (kf_log scrubs it):
                 * a server or proxy may quote it in an error reply. */
                kf_secret_add(u->pass);
                p = at + 1;
        }
        slash = strchr(p, '/');
        hostend = slash ? slash : p + strlen(p);
        colon = memrchr(p, ':', (size_t)(hostend - p));
        if (colon) {
                char port[16];
                size_t pl = (size_t)(hostend - colon - 1);
                if (pl == 0 || pl >= sizeof(port))
                        return kf_errf(errstr, errstr_size, "redis URL '%s': bad port", shown);
                memcpy(port, colon + 1, pl);
                port[pl] = '\0';
                if (kf_parse_i64(port, 1, 65535, &v))
                        return kf_errf(errstr, errstr_size,
                                       "redis URL '%s': port '%s' is not in 1..65535", shown, port);
                u->port = (int)v;
                hostend = colon;
        }
        if (hostend == p || (size_t)(hostend - p) >= sizeof(u->host))
                return kf_errf(errstr, errstr_size, "redis URL '%s': missing or too long host",
                               shown);
        memcpy(u->host, p, (size_t)(hostend - p));
        u->host[hostend - p] = '\0';
        if (slash && slash[1]) {
                if (kf_parse_i64(slash + 1, 0, 1 << 20, &v))
                        return kf_errf(errstr, errstr_size,
                                       "redis URL '%s': database '%s' is not a number", shown,
                                       slash + 1);
                u->db = (int)v;
        }
        return 0;
}

redisReply *kf_redis_cmd(redisContext *c, char *errstr, size_t errstr_size, const char *fmt, ...)
{
        redisReply *r;
        va_list ap;

        va_start(ap, fmt);
        r = redisvCommand(c, fmt, ap);
        va_end(ap);
        if (!r) {
                kf_errf(errstr, errstr_size, "%s", c->errstr[0] ? c->errstr : "I/O error");
                return NULL;
        }
        if (r->type == REDIS_REPLY_ERROR) {
                kf_errf(errstr, errstr_size, "%.*s", (int)r->len, r->str);
                freeReplyObject(r);
                return NULL;
        }
        return r;
}

redisContext *kf_redis_connect(const kf_redis_url_t *u, int timeout_ms, char *errstr,
                               size_t errstr_size)
{
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        char err[256];
        redisContext *c;
        redisReply *r = NULL;

        c = redisConnectWithTimeout(u->host, u->port, tv);
        if (!c || c->err) {
                kf_errf(errstr, errstr_size, "redis %s:%d: %s", u->host, u->port,
                        c ? c->errstr : "out of memory");
                goto err;
        }
        if (redisSetTimeout(c, tv) != REDIS_OK) {
                kf_errf(errstr, errstr_size, "redis %s:%d: cannot set timeout", u->host, u->port);
                goto err;
        }
        if (u->pass[0]) {
                char clean[256];
                if (u->user[0])
                        r = kf_redis_cmd(c, err, sizeof(err), "AUTH %s %s", u->user, u->pass);
                else
                        r = kf_redis_cmd(c, err, sizeof(err), "AUTH %s", u->pass);
                if (!r) {
                        /* Redis never quotes the password back; a proxy might,
                         * and a short one is not scrubbed by kf_log. */
                        kf_errf(errstr, errstr_size, "redis %s:%d: AUTH failed: %s", u->host,
                                u->port, kf_redact_value(clean, sizeof(clean), err, u->pass));
                        goto err;
                }
                freeReplyObject(r);
        }
        if (u->db) {
                r = kf_redis_cmd(c, err, sizeof(err), "SELECT %d", u->db);
                if (!r) {
                        kf_errf(errstr, errstr_size, "redis %s:%d: SELECT %d failed: %s", u->host,
                                u->port, u->db, err);
                        goto err;
                }
                freeReplyObject(r);
        }
        return c;
err:
        if (c)
                redisFree(c);
        return NULL;
}

int kf_script_load(redisContext *c, kf_script_t *s, char *errstr, size_t errstr_size)
{
        char err[256];
        redisReply *r = kf_redis_cmd(c, err, sizeof(err), "SCRIPT LOAD %s", s->src);
        if (!r)
                return kf_errf(errstr, errstr_size, "loading script '%s': %s", s->name, err);
        if (r->type != REDIS_REPLY_STRING || r->len != 40) {
                freeReplyObject(r);
                return kf_errf(errstr, errstr_size, "loading script '%s': unexpected reply",
                               s->name);
        }
        memcpy(s->sha, r->str, 40);
        s->sha[40] = '\0';
        freeReplyObject(r);
        return 0;
}

int kf_script_append(redisContext *c, const kf_script_t *s, int numkeys, int argc,
                     const char **argv, const size_t *argvlen)
{
        enum { STACK_ARGS = 64 };
        const char *sav[STACK_ARGS];
        size_t slen[STACK_ARGS];
        const char **av = sav;
        size_t *al = slen;
        char nk[16];
        int rc, total = argc + 3;

        if (total > STACK_ARGS) {
                av = malloc(sizeof(*av) * (size_t)total);
                al = malloc(sizeof(*al) * (size_t)total);
                if (!av || !al) {
                        rc = REDIS_ERR;
                        goto out;
                }
        }
        snprintf(nk, sizeof(nk), "%d", numkeys);
        av[0] = "EVALSHA";
        al[0] = 7;
        av[1] = s->sha;
        al[1] = 40;
        av[2] = nk;
        al[2] = strlen(nk);
        memcpy(av + 3, argv, sizeof(*av) * (size_t)argc);
        memcpy(al + 3, argvlen, sizeof(*al) * (size_t)argc);
        rc = redisAppendCommandArgv(c, total, av, al);
out:
        if (av != sav)
                free(av);
        if (al != slen)
                free(al);
        return rc;
}

int kf_reply_is_noscript(const redisReply *r)
{
        return r && r->type == REDIS_REPLY_ERROR && r->len >= 8 && !strncmp(r->str, "NOSCRIPT", 8);
}

int kf_reply_is_role_change(const redisReply *r)
{
        static const char *const codes[] = {"READONLY", "MASTERDOWN", "LOADING", NULL};
        if (!r || r->type != REDIS_REPLY_ERROR)
                return 0;
        for (int i = 0; codes[i]; i++) {
                size_t n = strlen(codes[i]);
                if (r->len >= n && !strncmp(r->str, codes[i], n))
                        return 1;
        }
        return 0;
}
