/* kt_proxy.h - a loopback TCP forwarder for tests: what a virtual IP, a DNS
 * name or a proxy in front of Redis does during a failover.  New connections
 * go to the current target port; connections already made stay with the
 * server they reached, as a real client's do.  One thread, poll(2). */
#ifndef KT_PROXY_H
#define KT_PROXY_H

typedef struct kt_proxy_s kt_proxy_t;

/* Listens on a free loopback port forwarding to 127.0.0.1:target_port.
 * Returns NULL on failure (message on stderr). */
kt_proxy_t *kt_proxy_start(int target_port);
int kt_proxy_port(const kt_proxy_t *p);
/* New connections go to target_port from now on. */
void kt_proxy_retarget(kt_proxy_t *p, int target_port);
/* Stops the thread and closes every connection. */
void kt_proxy_stop(kt_proxy_t *p);

#endif
