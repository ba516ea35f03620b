/* kt_metrics.h - a worker's /metrics (--http) read over plain TCP by the C
 * tests, for the counts they compare with what Redis and Kafka hold.
 *
 * A reader of the exposition lines the worker writes, not a general
 * Prometheus parser: a sample line is `NAME VALUE` or `NAME{LABELS} VALUE`
 * (tests/py read the same text with prometheus_client's parser and check
 * it with promtool). */
#ifndef KT_METRICS_H
#define KT_METRICS_H

/* GETs /metrics from 127.0.0.1:port and sums the integer values of the
 * samples named `metric` whose labels contain `label` (NULL: all).  Returns
 * the sum, or -1 if the worker did not answer 200 (not up yet, or gone).
 * Not thread-safe (a static buffer of 1 MiB). */
long long kt_scrape(int port, const char *metric, const char *label);

#endif
