/* advertise.h - the worker's heartbeat record in Redis, so that `kinfer
 * top` finds a pool without being given every address.
 *
 * With --http, a worker writes the string key P"worker:"ID (docs/protocol.md,
 * "Redis keys"; ID its --worker-id) holding the URL of its /metrics, with an
 * expiry of three periods, once per period (KW_ADVERTISE_PERIOD_MS), and
 * deletes it when it stops.  A worker that dies leaves a record that expires
 * within three periods; until then top shows it as down.
 *
 * Threads: one of its own, with its own Redis connection: a Redis that is
 * away delays the record, never the job path nor the HTTP endpoint.  Errors
 * are logged once per outage (kf_log), then retried each period. */
#ifndef KW_ADVERTISE_H
#define KW_ADVERTISE_H

#include <stddef.h>

#include "kf_redis.h"

#define KW_ADVERTISE_PERIOD_MS 10000

typedef struct kw_advertise_s kw_advertise_t;

/* Writes into buf the URL of /metrics for a server started with --http
 * http_addr and listening on port: http://HOST:PORT/metrics with the host of
 * http_addr, or this machine's hostname when that is a wildcard (0.0.0.0,
 * [::]), which nobody could reach.  Returns 0, or -1 if it does not fit. */
int kw_advertise_url(const char *http_addr, int port, char *buf, size_t size);

/* Starts the heartbeat of worker_id at url (strings copied; redis must
 * outlive it).  Returns NULL with errstr (out of memory, a key that does
 * not fit, no thread).  Connects on its thread, not here. */
kw_advertise_t *kw_advertise_start(const kf_redis_url_t *redis, const char *prefix,
                                   const char *worker_id, const char *url, int timeout_ms,
                                   char *errstr, size_t errstr_size);

/* Stops the thread and deletes the record (best effort, within the
 * timeout).  Accepts NULL. */
void kw_advertise_stop(kw_advertise_t *a);

#endif
