/* results_size.h - the too_large error result a result message is replaced
 * with when it can never be delivered for its size (docs/protocol.md,
 * "Result topic"): the same id, user, model, worker, source and times as
 * the result it stands for, status error, error too_large, and a message
 * naming the result's size, the limit that refused it and where the result
 * itself is (Redis, unless the job asked for the stream only).
 *
 * Pure: builds bytes, talks to no one; results_topic.c decides when.  Any
 * thread (no shared state). */
#ifndef KW_RESULTS_SIZE_H
#define KW_RESULTS_SIZE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "batch.h"

/* Sets j->rt_alt (freeing any earlier one) to the too_large result that
 * stands for j->rt_value.  why: what refused it, e.g. "the result
 * producer's message.max.bytes 100000"; level: the rt_level it is for (2:
 * it says the job's headers were left off; 3: and its key).  worker_id:
 * written when the result's own cannot be read back.  Returns 0, or -1
 * when out of memory (j->rt_alt then NULL). */
int kw_rts_replace(kw_job_t *j, const char *why, int level, const char *worker_id);

/* Job j's result message cannot be delivered for its size (why: the limit
 * that refused it): the next level (batch.h, rt_level) stands for it from
 * now on, across retries of its batch; logged here, one line per
 * occurrence.  topic: for the log; input_key: messages are keyed by the
 * job message's key (else level 3 would change nothing).  Returns 0, or -1
 * when there is no further level (or no memory). */
int kw_rts_escalate(kw_job_t *j, const char *topic, const char *why, const char *worker_id,
                    int input_key);

/* Writes into buf what the brokers' refusal err means, for why above. */
void kw_rts_broker_limit(char *buf, size_t size, rd_kafka_resp_err_t err);

/* Bytes of a message's headers as librdkafka counts them against
 * message.max.bytes (names and values); NULL: 0. */
size_t kw_rts_hdrs_size(const rd_kafka_headers_t *hdrs);

#endif
