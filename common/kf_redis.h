/* kf_redis.h - Redis connections and server-side scripts, on hiredis.
 *
 * Connections are made from a redis://[user:password@]host:port[/db] URL
 * (KINFER_REDIS).  A context that reported an I/O or protocol error is never
 * reused: hiredis leaves it in an undefined state, so callers free it and
 * connect again.  hiredis 0.14 writes without MSG_NOSIGNAL, so every program
 * using this module must ignore SIGPIPE (kf_redis_connect does not do it for
 * them: signal dispositions belong to main()). */
#ifndef KF_REDIS_H
#define KF_REDIS_H

#include <hiredis.h>
#include <stddef.h>

typedef struct kf_redis_url_s {
        char host[256];
        int port;
        char user[128]; /* "" = no ACL user (AUTH password only, or no AUTH) */
        char pass[256]; /* "" = no AUTH */
        int db;
} kf_redis_url_t;

/* Parses redis://[[user]:password@]host[:port][/db]; port defaults to 6379,
 * db to 0.  The password ends at the last '@' and may be %-escaped.
 * Returns 0, or -1 with errstr saying which part is wrong; errors show the
 * URL without its password (kf_redact_url), and the password is registered
 * with kf_secret_add so that no log line shows it. */
int kf_redis_url_parse(const char *url, kf_redis_url_t *u, char *errstr, size_t errstr_size);

/* Connects (timeout_ms bounds connect and every later command), AUTHs and
 * SELECTs.  Returns a context the caller frees with redisFree, or NULL with
 * errstr naming host:port and the reason (never the password). */
redisContext *kf_redis_connect(const kf_redis_url_t *u, int timeout_ms, char *errstr,
                               size_t errstr_size);

/* A Lua script and the SHA1 Redis knows it by (filled by kf_script_load). */
typedef struct kf_script_s {
        const char *name; /* for logs */
        const char *src;
        char sha[41];
} kf_script_t;

/* SCRIPT LOAD; returns 0 and fills s->sha, or -1 with errstr. */
int kf_script_load(redisContext *c, kf_script_t *s, char *errstr, size_t errstr_size);

/* Appends EVALSHA to c's output buffer (pipelining): argv holds the keys
 * then the arguments, argc their count, argvlen their lengths (binary safe).
 * Returns REDIS_OK or REDIS_ERR (out of memory). */
int kf_script_append(redisContext *c, const kf_script_t *s, int numkeys, int argc,
                     const char **argv, const size_t *argvlen);

/* 1 if r is a NOSCRIPT error reply: the server lost its script cache (a
 * restart or SCRIPT FLUSH); load the script again and resend. */
int kf_reply_is_noscript(const redisReply *r);

/* 1 if r is an error reply that says this server cannot take writes now
 * because of its role (READONLY: a replica, e.g. the old master after a
 * failover; MASTERDOWN; LOADING): drop the connection and connect again,
 * which through a moved address or proxy reaches the new master. */
int kf_reply_is_role_change(const redisReply *r);

/* Runs one command and checks the reply type; returns the reply (caller
 * frees) or NULL with errstr (I/O error: c is then unusable; or an error
 * reply). */
redisReply *kf_redis_cmd(redisContext *c, char *errstr, size_t errstr_size, const char *fmt, ...);

#endif
