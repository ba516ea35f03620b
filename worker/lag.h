/* lag.h - the consumer lag per partition, read from librdkafka's statistics
 * (statistics.interval.ms; STATISTICS.md, "partitions": consumer_lag), and
 * the work it stands for: each partition's lag times the cost of its
 * recent jobs (flops per message, a moving average), so an autoscaler can
 * tell a backlog of tiny jobs from one of huge ones.
 *
 * Loop thread only (librdkafka calls the statistics callback from
 * rd_kafka_consumer_poll, on the thread that polls). */
#ifndef KW_LAG_H
#define KW_LAG_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

#define KW_LAG_MAX_PARTITIONS 4096

/* Reads the lag of every partition of topic this consumer holds (assigned:
 * "desired", with a consumer_lag >= 0, or hi_offset - lo_offset on a
 * partition nothing was committed on yet) from one statistics JSON document
 * (len bytes, not NUL-terminated).  Fills out[0..*n), at most max entries.
 * Returns 0, or -1 with errstr if it is not the statistics object (then
 * *n = 0).  Never trusts the document: any shape, any size. */
int kw_lag_parse(const char *json, size_t len, const char *topic, kw_lag_t *out, size_t max,
                 size_t *n, char *errstr, size_t errstr_size);

/* Per-partition cost of recent jobs. */
typedef struct kw_costs_s kw_costs_t;

kw_costs_t *kw_costs_new(void);
void kw_costs_free(kw_costs_t *c); /* accepts NULL */

/* One message of partition cost flops (0 for an error result). */
void kw_costs_observe(kw_costs_t *c, int32_t partition, double flops);

/* Sum over lags of lag x that partition's average flops per message (a
 * partition without jobs yet: the average of those with). */
double kw_costs_remaining(const kw_costs_t *c, const kw_lag_t *lags, size_t n);

#endif
