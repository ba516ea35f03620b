/* dlq.h - the dead-letter topic: where a message goes when it cannot
 * become a result (no readable job id, not msgpack, over the size limit).
 *
 * The copy keeps the original key and value and carries headers naming its
 * origin and the reason:
 *   kinfer.source  "topic/partition/offset"
 *   kinfer.error   the error code (bad_request, too_large)
 *   kinfer.reason  the human message
 *   kinfer.worker  the worker id
 * It is produced idempotently with acks=all, and the source offset is stored
 * only after the broker acknowledged the copy.  Used by the writer threads,
 * one at a time: a flush serves the delivery reports of every thread's
 * copies, and they point into the batches (worker.c holds a lock). */
#ifndef KW_DLQ_H
#define KW_DLQ_H

#include <librdkafka/rdkafka.h>

#include "batch.h"
#include "kf_config.h"

typedef struct kw_dlq_s {
        rd_kafka_t *rk;
        const char *topic;     /* not owned */
        const char *worker_id; /* not owned */
        unsigned long long sent, failed;
} kw_dlq_t;

/* Creates the dead-letter producer.  Returns 0 or -1 with errstr. */
int kw_dlq_init(kw_dlq_t *d, const char *brokers, const kf_props_t *props, const char *topic,
                const char *worker_id, char *errstr, size_t errstr_size);
void kw_dlq_close(kw_dlq_t *d);

/* Copies every DONE job without a readable id that is not in the DLQ yet,
 * and waits up to timeout_ms for the broker's acknowledgements.  Returns 0
 * when every such job is acknowledged (job->dlq = KW_DLQ_ACKED), or -1 with
 * errstr when some copy failed or is still unacknowledged: retry later. */
int kw_dlq_send_batch(kw_dlq_t *d, kw_batch_t *b, int timeout_ms, char *errstr,
                      size_t errstr_size);

#endif
