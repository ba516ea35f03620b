/* offsets.h - which Kafka offsets may be stored, when jobs finish out of
 * order.
 *
 * Batches are computed by several threads and written as they finish, so a
 * later message of a partition can be written before an earlier one.  The
 * tracker remembers every in-flight offset per partition, in consumption
 * order, and stores (rd_kafka_offsets_store) only the offset below which
 * every message is done: a crash redelivers whatever was not written, and
 * nothing written is skipped.
 *
 * A message the worker consumed but lost before it could be tracked (out of
 * memory, a seek back that failed) blocks its partition: from then on no
 * offset past the lost one is stored for it, so it is redelivered to the
 * partition's next owner, until kw_offsets_forget (a revoke) clears the
 * block.  Each block is logged with the message's topic/partition/offset.
 *
 * Thread-safe: the loop thread adds, the writer threads and the dead-letter
 * stage mark done. */
#ifndef KW_OFFSETS_H
#define KW_OFFSETS_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

typedef struct kw_offsets_s kw_offsets_t;

/* rk is the consumer offsets are stored on; not owned.  NULL when out of
 * memory. */
kw_offsets_t *kw_offsets_new(rd_kafka_t *rk);
void kw_offsets_destroy(kw_offsets_t *t); /* accepts NULL */

/* A message was consumed (loop thread, in consumption order, offsets of a
 * partition increasing).  Returns 0, or -1 when out of memory: the message
 * is then not tracked and its partition is blocked at it (logged). */
int kw_offsets_add(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset);

/* A consumed message was dropped before kw_offsets_add (why says how, for
 * the log): its partition is blocked at it.  Loop thread. */
void kw_offsets_lost(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset,
                     const char *why);

/* A message's result is durable; stores the partition's new committable
 * offset if it advanced (never past a block).  Returns 0, or -1 if the
 * offset is not tracked (its partition was forgotten after a revoke, or
 * kw_offsets_add failed for it). */
int kw_offsets_done(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset);

/* The offsets stored so far, one per partition that has one (exactly-once
 * mode sends them in its transaction: results_topic.h).  Returns a new
 * list (caller destroys it; empty when none), or NULL when out of memory. */
rd_kafka_topic_partition_list_t *kw_offsets_positions(kw_offsets_t *t);

/* Drops every partition's state and every block (after a revoke, when the
 * rest of the in-flight work is abandoned to the partitions' next owner,
 * which starts at the committed offsets). */
void kw_offsets_forget(kw_offsets_t *t);

#endif
