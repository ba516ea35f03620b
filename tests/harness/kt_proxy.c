/* kt_proxy.c - the loopback TCP forwarder of kt_proxy.h. */
#include "kt_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define KT_PROXY_MAX_PAIRS 64

struct kt_proxy_s {
        int lfd, port;
        atomic_int target, stop;
        pthread_t thread;
        int a[KT_PROXY_MAX_PAIRS], b[KT_PROXY_MAX_PAIRS]; /* client side, server side; -1 free */
};

static int connect_to(int port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
                return fd;
        if (fd >= 0)
                close(fd);
        return -1;
}

static void close_pair(kt_proxy_t *p, int i)
{
        close(p->a[i]);
        close(p->b[i]);
        p->a[i] = p->b[i] = -1;
}

/* Moves what is readable on from to to; -1 when either side is done. */
static int pump(int from, int to)
{
        char buf[65536];
        ssize_t n = read(from, buf, sizeof(buf));
        if (n <= 0)
                return -1;
        for (ssize_t off = 0; off < n;) {
                ssize_t w = write(to, buf + off, (size_t)(n - off));
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return -1;
                off += w;
        }
        return 0;
}

static void *proxy_main(void *arg)
{
        kt_proxy_t *p = arg;
        while (!atomic_load(&p->stop)) {
                struct pollfd fds[1 + 2 * KT_PROXY_MAX_PAIRS];
                int idx[1 + 2 * KT_PROXY_MAX_PAIRS], n = 0;
                fds[n++] = (struct pollfd){p->lfd, POLLIN, 0};
                for (int i = 0; i < KT_PROXY_MAX_PAIRS; i++)
                        if (p->a[i] >= 0) {
                                idx[n] = i;
                                fds[n++] = (struct pollfd){p->a[i], POLLIN, 0};
                                idx[n] = i;
                                fds[n++] = (struct pollfd){p->b[i], POLLIN, 0};
                        }
                if (poll(fds, (nfds_t)n, 100) <= 0)
                        continue;
                if (fds[0].revents & POLLIN) {
                        int c = accept(p->lfd, NULL, NULL), s = -1, i;
                        if (c >= 0 && (s = connect_to(atomic_load(&p->target))) >= 0) {
                                for (i = 0; i < KT_PROXY_MAX_PAIRS && p->a[i] >= 0; i++)
                                        ;
                                if (i < KT_PROXY_MAX_PAIRS) {
                                        p->a[i] = c;
                                        p->b[i] = s;
                                        c = s = -1;
                                }
                        }
                        if (c >= 0)
                                close(c);
                        if (s >= 0)
                                close(s);
                }
                for (int k = 1; k < n; k++) {
                        int i = idx[k];
                        if (p->a[i] < 0 || !(fds[k].revents & (POLLIN | POLLHUP | POLLERR)))
                                continue;
                        if (fds[k].fd == p->a[i] ? pump(p->a[i], p->b[i]) : pump(p->b[i], p->a[i]))
                                close_pair(p, i);
                }
        }
        return NULL;
}

kt_proxy_t *kt_proxy_start(int target_port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);
        kt_proxy_t *p = calloc(1, sizeof(*p));
        int one = 1;

        if (!p)
                return NULL;
        for (int i = 0; i < KT_PROXY_MAX_PAIRS; i++)
                p->a[i] = p->b[i] = -1;
        atomic_store(&p->target, target_port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if ((p->lfd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
            setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
            bind(p->lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(p->lfd, 64) ||
            getsockname(p->lfd, (struct sockaddr *)&sa, &len) ||
            pthread_create(&p->thread, NULL, proxy_main, p)) {
                fprintf(stderr, "kt_proxy_start: %s\n", strerror(errno));
                if (p->lfd >= 0)
                        close(p->lfd);
                free(p);
                return NULL;
        }
        p->port = ntohs(sa.sin_port);
        return p;
}

int kt_proxy_port(const kt_proxy_t *p)
{
        return p->port;
}

void kt_proxy_retarget(kt_proxy_t *p, int target_port)
{
        atomic_store(&p->target, target_port);
}

void kt_proxy_stop(kt_proxy_t *p)
{
        if (!p)
                return;
        atomic_store(&p->stop, 1);
        pthread_join(p->thread, NULL);
        for (int i = 0; i < KT_PROXY_MAX_PAIRS; i++)
                if (p->a[i] >= 0)
                        close_pair(p, i);
        close(p->lfd);
        free(p);
}
