/* endpoint.h - the worker's HTTP face (--http ADDR:PORT): /metrics,
 * /healthz and /readyz over http.h, and what "healthy" and "ready" mean.
 *
 *   /metrics  the Prometheus exposition of metrics.h
 *   /healthz  200 while the loop thread turns: it has polled Kafka within
 *             stall_us (a loop stuck in a callback or a deadlock is 503, so
 *             a liveness probe restarts the process); draining on a
 *             rebalance or shutdown counts as turning for its grace period
 *   /readyz   200 when the worker is in its consumer group (it has an
 *             assignment, possibly empty: idle in the group is ready), not
 *             shutting down, and Redis answers PING on the endpoint's own
 *             connection (so a stopped Redis shows at once, not at the next
 *             write); else 503 with the reasons, one per line
 *
 * The worker writes kw_status_t's fields (atomics) from its threads; the
 * endpoint's thread only reads them.  Nothing here runs on, or waits for,
 * the job path. */
#ifndef KW_ENDPOINT_H
#define KW_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "kf_redis.h"
#include "metrics.h"

typedef struct kw_status_s {
        int64_t loop_tick_us; /* atomic: kf_mono_us() of the loop thread's last turn */
        int in_group;         /* atomic: 1 between an assignment and a revocation */
        int stopping;         /* atomic: shutting down */
        int64_t stall_us;     /* /healthz fails when the loop has not turned for this long */
} kw_status_t;

typedef struct kw_endpoint_s kw_endpoint_t;

/* Serves on addr (http.h's syntax).  m, st and redis must outlive the
 * endpoint; timeout_ms bounds its Redis connect and PING.  Returns NULL
 * with errstr naming the address. */
kw_endpoint_t *kw_endpoint_start(const char *addr, kw_metrics_t *m, kw_status_t *st,
                                 const kf_redis_url_t *redis, int timeout_ms, char *errstr,
                                 size_t errstr_size);
int kw_endpoint_port(const kw_endpoint_t *e);
void kw_endpoint_stop(kw_endpoint_t *e); /* accepts NULL */

/* The loop thread's heartbeat, cheap enough for every turn. */
static inline void kw_status_tick(kw_status_t *st, int64_t now_us)
{
        __atomic_store_n(&st->loop_tick_us, now_us, __ATOMIC_RELAXED);
}

#endif
