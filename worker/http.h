/* http.h - the worker's HTTP endpoint (--http ADDR:PORT): a few read-only
 * GET routes served by libmicrohttpd (Debian's libmicrohttpd-dev) on its
 * own thread, so a scrape never runs on, nor waits for, the job path.
 *
 * Each route is a function that writes the response body to a FILE (an
 * in-memory stream) and returns the HTTP status.  Routes run on the
 * server's thread, one request at a time; they must not block for long.
 * Anything but GET or HEAD is 405, an unknown path 404. */
#ifndef KW_HTTP_H
#define KW_HTTP_H

#include <stddef.h>
#include <stdio.h>

typedef struct kw_http_s kw_http_t;

typedef struct kw_http_route_s {
        const char *path;         /* exact, e.g. "/metrics" */
        const char *content_type; /* e.g. "text/plain; version=0.0.4; charset=utf-8" */
        int (*fn)(void *ctx, FILE *body);
} kw_http_route_t;

/* Listens on addr "HOST:PORT" (a numeric IPv4 or IPv6 address in [], or
 * "localhost"; PORT 0 picks a free one, see kw_http_port) and serves routes
 * (n_routes entries, copied pointers: the array and its strings must
 * outlive the server) with ctx.  Returns NULL with errstr naming the
 * address on a bad address or when it cannot listen. */
kw_http_t *kw_http_start(const char *addr, const kw_http_route_t *routes, size_t n_routes,
                         void *ctx, char *errstr, size_t errstr_size);

/* The port listened on. */
int kw_http_port(const kw_http_t *h);

/* Stops serving and joins the server's thread.  Accepts NULL. */
void kw_http_stop(kw_http_t *h);

#endif
