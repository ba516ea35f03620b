/* http.c - the worker's HTTP endpoint over libmicrohttpd (see http.h).
 * libmicrohttpd rather than a socket loop of our own: request parsing,
 * timeouts, connection limits and HTTP/1.1 details are its job. */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "kf_util.h"

#define HTTP_CONN_LIMIT 64 /* scrapers and probes: a handful at a time */
#define HTTP_TIMEOUT_S  10 /* an idle or slow client is dropped after this */

struct kw_http_s {
        struct MHD_Daemon *d;
        const kw_http_route_t *routes;
        size_t n_routes;
        void *ctx;
        int port;
};

static enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *type,
                                  char *body, size_t len)
{
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        enum MHD_Result rc;
        if (!resp) {
                free(body);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        rc = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return rc;
}

static enum MHD_Result http_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
        char *body = strdup(text);
        return body ? http_reply(conn, status, "text/plain; charset=utf-8", body, strlen(body))
                    : MHD_NO;
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **req_cls)
{
        kw_http_t *h = cls;
        const kw_http_route_t *r = NULL;
        char *body = NULL;
        size_t len = 0;
        FILE *fp;
        int status;

        (void)version;
        (void)upload_data;
        if (!*req_cls) { /* first call: headers only; answer on the next */
                *req_cls = h;
                return MHD_YES;
        }
        if (*upload_data_size) { /* a body: ignored, GET routes take none */
                *upload_data_size = 0;
                return MHD_YES;
        }
        if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
                return http_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n");
        for (size_t i = 0; i < h->n_routes && !r; i++)
                if (!strcmp(url, h->routes[i].path))
                        r = &h->routes[i];
        if (!r)
                return http_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
        if (!(fp = open_memstream(&body, &len)))
                return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        status = r->fn(h->ctx, fp);
        if (fclose(fp) != 0 || !body) {
                free(body);
                return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        return http_reply(conn, (unsigned)status, r->content_type, body, len);
}

/* "HOST:PORT" into a socket address; -1 with errstr. */
static int http_addr(const char *addr, struct sockaddr_storage *ss, char *errstr,
                     size_t errstr_size)
{
        char host[128];
        const char *colon = strrchr(addr, ':');
        int64_t port;
        size_t hl;

        memset(ss, 0, sizeof(*ss));
        if (!colon || kf_parse_i64(colon + 1, 0, 65535, &port) != 0)
                return kf_errf(errstr, errstr_size,
                               "--http '%s': expected HOST:PORT (e.g. 127.0.0.1:9464)", addr);
        hl = (size_t)(colon - addr);
        if (hl >= sizeof(host))
                return kf_errf(errstr, errstr_size, "--http '%s': host too long", addr);
        memcpy(host, addr, hl);
        host[hl] = '\0';
        if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
                host[hl - 1] = '\0';
                s6->sin6_family = AF_INET6;
                s6->sin6_port = htons((uint16_t)port);
                if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) == 1)
                        return 0;
        } else {
                struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
                s4->sin_family = AF_INET;
                s4->sin_port = htons((uint16_t)port);
                if (!strcmp(host, "localhost"))
                        kf_strlcpy(host, "127.0.0.1", sizeof(host));
                if (inet_pton(AF_INET, host, &s4->sin_addr) == 1)
                        return 0;
        }
        return kf_errf(errstr, errstr_size,
                       "--http '%s': the host must be a numeric address (127.0.0.1, 0.0.0.0, "
                       "[::1]) or localhost",
                       addr);
}

kw_http_t *kw_http_start(const char *addr, const kw_http_route_t *routes, size_t n_routes,
                         void *ctx, char *errstr, size_t errstr_size)
{
        struct sockaddr_storage ss;
        const union MHD_DaemonInfo *info;
        kw_http_t *h;
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;

        if (http_addr(addr, &ss, errstr, errstr_size) != 0)
                return NULL;
        if (!(h = calloc(1, sizeof(*h)))) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        h->routes = routes;
        h->n_routes = n_routes;
        h->ctx = ctx;
        if (ss.ss_family == AF_INET6)
                flags |= MHD_USE_IPv6;
        h->d = MHD_start_daemon(flags, 0, NULL, NULL, http_handler, h, MHD_OPTION_SOCK_ADDR,
                                (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
                                (unsigned)HTTP_CONN_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
                                (unsigned)HTTP_TIMEOUT_S, MHD_OPTION_END);
        if (!h->d) {
                kf_errf(errstr, errstr_size,
                        "--http %s: cannot listen there (address in use or not local?)", addr);
                free(h);
                return NULL;
        }
        info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
        h->port = info ? (int)info->port : 0;
        return h;
}

int kw_http_port(const kw_http_t *h)
{
        return h->port;
}

void kw_http_stop(kw_http_t *h)
{
        if (!h)
                return;
        MHD_stop_daemon(h->d);
        free(h);
}
