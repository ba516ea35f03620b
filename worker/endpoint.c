/* endpoint.c - /metrics, /healthz and /readyz (see endpoint.h). */
#include "endpoint.h"

#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "kf_util.h"

struct kw_endpoint_s {
        kw_http_t *http;
        kw_metrics_t *m;
        kw_status_t *st;
        const kf_redis_url_t *url;
        int timeout_ms;
        redisContext *c; /* the endpoint thread's own, for PING */
};

static int route_metrics(void *ctx, FILE *body)
{
        kw_endpoint_t *e = ctx;
        return kw_metrics_render(e->m, body) == 0 ? 200 : 500;
}

static int route_healthz(void *ctx, FILE *body)
{
        kw_endpoint_t *e = ctx;
        int64_t idle = kf_mono_us() - __atomic_load_n(&e->st->loop_tick_us, __ATOMIC_RELAXED);
        if (idle > e->st->stall_us) {
                fprintf(body, "unhealthy: the loop thread has not polled Kafka for %.1f s\n",
                        (double)idle / 1e6);
                return 503;
        }
        fputs("ok\n", body);
        return 200;
}

/* PINGs Redis on the endpoint's connection, connecting if needed; 0 if it
 * answered PONG, else -1 with why. */
static int redis_ping(kw_endpoint_t *e, char *why, size_t why_size)
{
        redisReply *rep;
        int ok;
        if (!e->c && !(e->c = kf_redis_connect(e->url, e->timeout_ms, why, why_size)))
                return -1;
        rep = redisCommand(e->c, "PING");
        ok = rep && rep->type == REDIS_REPLY_STATUS && !strcmp(rep->str, "PONG");
        if (!ok)
                kf_errf(why, why_size, "redis %s:%d: %s", e->url->host, e->url->port,
                        rep && rep->type == REDIS_REPLY_ERROR ? rep->str
                        : e->c->errstr[0]                     ? e->c->errstr
                                                              : "no answer to PING");
        if (rep)
                freeReplyObject(rep);
        if (!ok) { /* LOADING, a dead socket: a fresh connection next time */
                redisFree(e->c);
                e->c = NULL;
        }
        return ok ? 0 : -1;
}

static int route_readyz(void *ctx, FILE *body)
{
        kw_endpoint_t *e = ctx;
        char why[300];
        int ready = 1;

        if (__atomic_load_n(&e->st->stopping, __ATOMIC_RELAXED)) {
                fputs("not ready: shutting down\n", body);
                ready = 0;
        } else if (!__atomic_load_n(&e->st->in_group, __ATOMIC_RELAXED)) {
                fputs("not ready: not in the consumer group (joining, or rebalancing)\n", body);
                ready = 0;
        }
        if (redis_ping(e, why, sizeof(why))) {
                fprintf(body, "not ready: %s\n", why);
                ready = 0;
        }
        if (ready)
                fputs("ok\n", body);
        return ready ? 200 : 503;
}

static const kw_http_route_t routes[] = {
    {"/metrics", "text/plain; version=0.0.4; charset=utf-8", route_metrics},
    {"/healthz", "text/plain; charset=utf-8", route_healthz},
    {"/readyz", "text/plain; charset=utf-8", route_readyz},
};

kw_endpoint_t *kw_endpoint_start(const char *addr, kw_metrics_t *m, kw_status_t *st,
                                 const kf_redis_url_t *redis, int timeout_ms, char *errstr,
                                 size_t errstr_size)
{
        kw_endpoint_t *e = calloc(1, sizeof(*e));
        if (!e) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        e->m = m;
        e->st = st;
        e->url = redis;
        e->timeout_ms = timeout_ms < 1000 ? timeout_ms : 1000; /* a probe waits little */
        if (!(e->http = kw_http_start(addr, routes, sizeof(routes) / sizeof(routes[0]), e, errstr,
                                      errstr_size))) {
                free(e);
                return NULL;
        }
        return e;
}

int kw_endpoint_port(const kw_endpoint_t *e)
{
        return kw_http_port(e->http);
}

void kw_endpoint_stop(kw_endpoint_t *e)
{
        if (!e)
                return;
        kw_http_stop(e->http); /* joins the thread that used e->c */
        if (e->c)
                redisFree(e->c);
        free(e);
}
