/* redis_conn.c - the worker's Redis connections: connect lazily, load the
 * script on every connect, drop a context that saw an error. */
#include "redis_conn.h"

#include <string.h>

int kw_redis_open(kw_redis_t *r, const char *url, int timeout_ms, const kf_script_t *script,
                  char *errstr, size_t errstr_size)
{
        memset(r, 0, sizeof(*r));
        r->timeout_ms = timeout_ms;
        if (script) {
                r->script.name = script->name;
                r->script.src = script->src;
        }
        if (kf_redis_url_parse(url, &r->url, errstr, errstr_size))
                return -1;
        return kw_redis_ensure(r, errstr, errstr_size);
}

int kw_redis_ensure(kw_redis_t *r, char *errstr, size_t errstr_size)
{
        if (r->c)
                return 0;
        if (!(r->c = kf_redis_connect(&r->url, r->timeout_ms, errstr, errstr_size)))
                return -1;
        if (r->script.src && kf_script_load(r->c, &r->script, errstr, errstr_size)) {
                kw_redis_drop(r);
                return -1;
        }
        return 0;
}

void kw_redis_drop(kw_redis_t *r)
{
        if (r->c) {
                redisFree(r->c);
                r->c = NULL;
        }
}

void kw_redis_close(kw_redis_t *r)
{
        kw_redis_drop(r);
}
