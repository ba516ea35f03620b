/* model_store_registry_conn.c - the registry store's Redis connections
 * (one per thread, reconnected on demand, the first failure in a row
 * logged) and the reloader's wake-up pipe: what the other parts share. */
#include <unistd.h>

#include "kf_log.h"
#include "model_store_registry_int.h"

/* A connected context for cn, connecting if needed; NULL with errstr. */
redisContext *msr_conn(msr_t *r, msr_conn_t *cn, char *errstr, size_t errstr_size)
{
        if (cn->c)
                return cn->c;
        cn->c = kf_redis_connect(&r->url, r->timeout_ms, errstr, errstr_size);
        if (!cn->c) {
                if (!cn->down)
                        kf_warn("model registry: %s", errstr);
                cn->down = 1;
                return NULL;
        }
        if (cn->down)
                kf_info("model registry: connected to %s:%d again", r->url.host, r->url.port);
        cn->down = 0;
        return cn->c;
}

void msr_conn_drop(msr_conn_t *cn)
{
        if (cn->c)
                redisFree(cn->c);
        cn->c = NULL;
}

/* A byte in the pipe wakes the reloader from its poll. */
void msr_wake(msr_t *r)
{
        char b = 1;
        if (write(r->wake[1], &b, 1) < 0) {
                /* full pipe: the reloader is being woken already */
        }
}
