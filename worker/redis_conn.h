/* redis_conn.h - one Redis connection of the worker, and its state.
 *
 * Each thread that talks to Redis owns one (every writer thread, the loop
 * thread's quota pre-check, the dead-letter stage).  A context that saw an
 * I/O or protocol error is dropped (kw_redis_drop) and a new one made on the
 * next kw_redis_ensure, which also loads the connection's script again.
 * This module is the only one that sets the fields; the others read them
 * (c to send, url to name the server in logs). */
#ifndef KW_REDIS_CONN_H
#define KW_REDIS_CONN_H

#include <stddef.h>

#include "kf_redis.h"

typedef struct kw_redis_s {
        kf_redis_url_t url;
        redisContext *c;    /* NULL while disconnected */
        int timeout_ms;     /* connect and every command */
        kf_script_t script; /* loaded on every connect (src NULL: none); its
                             * sha for EVALSHA */
} kw_redis_t;

/* Parses the URL and connects once, to fail fast on a wrong URL or
 * password; script (name and source copied, the strings not owned; NULL:
 * none) is loaded on every connect.  Returns 0 or -1 with errstr.  kw_redis_close it either way. */
int kw_redis_open(kw_redis_t *r, const char *url, int timeout_ms, const kf_script_t *script,
                  char *errstr, size_t errstr_size);

/* Connects (and loads the script) if disconnected.  Returns 0 or -1 with
 * errstr. */
int kw_redis_ensure(kw_redis_t *r, char *errstr, size_t errstr_size);

/* Drops the context after an I/O error or a reply that says this server
 * cannot take writes (a new connection may reach the new master). */
void kw_redis_drop(kw_redis_t *r);

void kw_redis_close(kw_redis_t *r); /* accepts a zeroed, never opened one */

#endif
