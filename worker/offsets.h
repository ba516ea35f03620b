/* offsets.h - which Kafka offsets may be stored, when jobs finish out of
 * order.
 *
 * Batches are computed by several threads and written as they finish, so a
 * later message of a partition can be written before an earlier one.  The
 * tracker remembers every in-flight offset per partition, in consumption
 * order, and stores (rd_kafka_offsets_store) only the offset below which
 * every message is done: a crash redelivers whatever was not written, and
 * nothing written is skipped.  Thread-safe: the loop thread adds, the writer
 * thread marks done. */
#ifndef KW_OFFSETS_H
#define KW_OFFSETS_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kw_offsets_s kw_offsets_t;

kw_offsets_t *kw_offsets_new(rd_kafka_t *rk);
void kw_offsets_destroy(kw_offsets_t *t); /* accepts NULL */

/* A message was consumed (loop thread, in consumption order). */
int kw_offsets_add(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset);

/* A message's result is durable; stores the partition's new committable
 * offset if it advanced.  Returns 0, or -1 if the offset is not tracked
 * (its partition was forgotten after a revoke). */
int kw_offsets_done(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset);

/* Messages consumed and not yet done, over all partitions. */
size_t kw_offsets_inflight(kw_offsets_t *t);

/* Drops every partition's state (after a revoke, when the rest of the
 * in-flight work is abandoned to the partitions' next owner). */
void kw_offsets_forget(kw_offsets_t *t);

#endif
