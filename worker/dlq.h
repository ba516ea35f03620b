/* dlq.h - the dead-letter stage: where a message goes when it cannot
 * become a result (no readable job id, not msgpack, over the size limit).
 *
 * A writer thread hands such a job over (kw_dlq_take) and goes on writing
 * the other results of its batch: the stage owns the job from then on.  It
 * copies the message to the dead-letter topic, retries a copy that failed
 * with capped exponential backoff (logging why, with the message's
 * topic/partition/offset), and once the broker has acknowledged the copy
 * counts the message in {prefix}stats and marks its offset done.  So a copy
 * that fails or waits never holds back anyone else's results; it holds back
 * only its own offset and, because offsets are stored in order, every later
 * offset of its partition (offsets.h).
 *
 * The copy keeps the original key and value and carries headers naming its
 * origin and the reason:
 *   kinfer.source     "topic/partition/offset"
 *   kinfer.error      the error code (bad_request, too_large)
 *   kinfer.reason     the human message
 *   kinfer.worker     the worker id
 *   kinfer.truncated  only on a copy cut to fit the producer's
 *                     message.max.bytes (a too_large message can be
 *                     larger than anything the worker accepts):
 *                     "value V of N bytes, key K of M bytes"
 * It is produced idempotently with acks=all.  The producer's
 * message.max.bytes is at least --max-message-bytes + KW_DLQ_OVERHEAD, so
 * every message the worker accepts is copied whole.
 *
 * Threads: kw_dlq_take from the writer threads; kw_dlq_held, kw_dlq_full,
 * kw_dlq_fatal from any thread; kw_dlq_abandon from the loop thread.  The
 * stage's own thread polls the producer (delivery reports land there),
 * retries, and counts acknowledged copies with its own Redis connection.
 * A delivery report points at a heap record that lives until the report
 * has arrived, whatever became of the job's batch or partition. */
#ifndef KW_DLQ_H
#define KW_DLQ_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "batch.h"
#include "commit.h"
#include "kf_config.h"
#include "offsets.h"

/* message.max.bytes beyond --max-message-bytes: the key, the kinfer.*
 * headers and the record framing of a copy of the largest accepted job. */
#define KW_DLQ_OVERHEAD 65536

/* Copies outstanding (not acknowledged) before kw_dlq_full says so: the
 * loop thread then stops taking new batches, which pauses fetching.  Each
 * holds its Kafka message (up to --max-message-bytes) until done. */
#define KW_DLQ_MAX_HELD 1024

/* -X dlq.KEY=VALUE sets KEY on the dead-letter producer only. */
#define KW_DLQ_PROP_PREFIX "dlq."

typedef struct kw_dlq_item_s kw_dlq_item_t;

typedef struct kw_dlq_s {
        int inited; /* kw_dlq_init ran: kw_dlq_close has work */
        rd_kafka_t *rk;
        const char *topic;           /* not owned */
        const char *worker_id;       /* not owned */
        size_t max_bytes;            /* the producer's message.max.bytes */
        kw_commit_t *commit;         /* counts copies in stats; not owned; stage thread */
        kw_offsets_t *offsets;       /* not owned */
        volatile sig_atomic_t *stop; /* set on a fatal producer error */
        pthread_t thread;
        int started;
        pthread_mutex_t lock;       /* guards items and everything in them */
        kw_dlq_item_t *items;       /* every job handed over and not freed yet */
        atomic_int held;            /* items neither done nor abandoned */
        atomic_int closing;         /* the stage thread is to return */
        atomic_int fatal;           /* the producer had a fatal error */
        atomic_ullong sent, failed; /* copies acknowledged, attempts failed */
} kw_dlq_t;

/* Creates the dead-letter producer: the -X properties about reaching the
 * cluster (security.*, sasl.*, ...), message.max.bytes, and every dlq.*
 * property with the prefix taken off.  max_message_bytes is the worker's
 * --max-message-bytes; a message.max.bytes below it + KW_DLQ_OVERHEAD is
 * refused.  Returns 0 or -1 with errstr. */
int kw_dlq_init(kw_dlq_t *d, const char *brokers, const kf_props_t *props, const char *topic,
                const char *worker_id, int64_t max_message_bytes, char *errstr, size_t errstr_size);

/* Starts the stage thread.  commit and offsets stay the caller's and must
 * outlive kw_dlq_close; *stop is set if the producer dies.  Returns 0 or -1
 * with errstr. */
int kw_dlq_start(kw_dlq_t *d, kw_commit_t *commit, kw_offsets_t *offsets,
                 volatile sig_atomic_t *stop, char *errstr, size_t errstr_size);

/* Stops the thread, drops what is left (kw_dlq_abandon first: nothing left
 * here will be counted or stored) and destroys the producer.  Every Kafka
 * message handed over is destroyed here, so call it before destroying the
 * consumer they came from.  Accepts a stage that was never started. */
void kw_dlq_close(kw_dlq_t *d);

/* Takes every DONE job of b without an address out of the batch (no
 * readable id or user: the codec leaves its id empty; its slot becomes
 * KW_JOB_HELD, which the writer neither commits nor stores) and
 * starts its copy.  Writer threads.  Out of memory, a job stays in the batch
 * as KW_JOB_HELD, logged: its offset is then never stored and the message is
 * redelivered after the next rebalance or restart. */
void kw_dlq_take(kw_dlq_t *d, kw_batch_t *b);

/* Jobs handed over whose copies are not done (acknowledged, counted, offset
 * marked), not counting abandoned ones; 0 after a fatal error, since none
 * can finish then.  drain() waits for this to reach 0. */
int kw_dlq_held(kw_dlq_t *d);

/* 1 when KW_DLQ_MAX_HELD copies are outstanding. */
int kw_dlq_full(kw_dlq_t *d);

/* Gives up every job held: its offset will never be stored, nor its copy
 * counted (the message is redelivered to its partition's next owner, which
 * copies it again).  Returns how many were given up.  Called when the
 * partitions are revoked or the worker stops, before kw_offsets_forget. */
int kw_dlq_abandon(kw_dlq_t *d);

/* 1 once the producer had a fatal error (logged, and *stop set). */
int kw_dlq_fatal(kw_dlq_t *d);

/* The -X properties for the consumer: all but the dlq.* ones.  Fills out
 * (free with kf_props_free).  Returns 0 or -1 with errstr. */
int kw_dlq_consumer_props(const kf_props_t *props, kf_props_t *out, char *errstr,
                          size_t errstr_size);

#endif
