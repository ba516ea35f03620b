/* results_topic.h - the result topic (--results-topic): one Kafka message
 * per job, its value the result exactly as the Redis step decided it (the
 * same msgpack map as P{U}:result:ID, docs/protocol.md "Result topic"),
 * keyed by the job id or by the job message's own key (--results-key), with
 * the job message's headers carried over.
 *
 * Two modes:
 *   at least once (default): a writer thread produces its batch's messages
 *     after the Redis step and waits until the brokers acknowledged them
 *     all; only then are the offsets stored.  A crash in between sends some
 *     results twice (a redelivered job's duplicate step answers the first
 *     result, which is sent again).
 *   exactly once (--exactly-once): a transactional producer; a transaction
 *     holds the result messages of the batches that reached it (a group
 *     commit: those that arrived while the previous one committed) and the
 *     consumer group's new offsets (send_offsets_to_transaction with the
 *     consumer's group metadata, so a worker fenced by a rebalance cannot
 *     commit), one transaction at a time.  A transaction that fails is
 *     aborted and its batches, still in memory, produced again in a new
 *     one; a producer
 *     fenced by a newer one with the same transactional.id, or any fatal
 *     error, stops the worker (exit 1).  A read_committed consumer of the
 *     topic sees each consumed job's result once; Redis stays idempotent by
 *     job id (the step's charge record), and the dead-letter topic stays at
 *     least once: neither is in the transaction.
 *
 * Too large: a result message that can never be delivered for its size is
 * replaced by a too_large error result (results_size.h), so that it cannot
 * hold its partition: at once when librdkafka refuses it (the producer's
 * message.max.bytes); when the brokers refuse it (MSG_SIZE_TOO_LARGE,
 * RECORD_LIST_TOO_LARGE), after it was refused alone: at least once, each
 * message so refused is sent again alone; exactly once, the aborted
 * transaction is redone with each message flushed alone, and each redo
 * replaces the one refused or commits.  Kept in the job (rt_level) across
 * retries of its batch.
 *
 * Threads: kw_rt_send from the writer threads (in exactly-once mode each
 * waits for its batch's transaction, which one of them commits); kw_rt_commit_offsets and
 * kw_rt_reset from the loop thread, after a drain; the producer's delivery reports are served by
 * whichever thread polls it.  Errors are returned with a message; the
 * caller logs them.
 *
 * Metrics (metrics.h, KW_SHOW_RESULTS): every message handed to the
 * producer counts as produced; it ends delivered or failed (at least once:
 * by its delivery report, or at once when rd_kafka_producev refuses it;
 * exactly once: with its transaction, committed or aborted), and while
 * its delivery report is outstanding it counts as unacknowledged; a
 * too_large result delivered or committed in place of a result also counts
 * in kinfer_results_too_large_total. */
#ifndef KW_RESULTS_TOPIC_H
#define KW_RESULTS_TOPIC_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "kf_config.h"
#include "metrics.h"
#include "offsets.h"

/* -X results.KEY=VALUE sets KEY on the result producer only. */
#define KW_RT_OUTCOMES    64 /* transactions whose outcome a waiter may still read */
#define KW_RT_PROP_PREFIX "results."

/* What a result message is keyed by. */
typedef enum {
        KW_RT_KEY_ID = 0, /* the job id: a job's results land on one partition */
        KW_RT_KEY_INPUT,  /* the job message's key (the user, for `kinfer submit`) */
} kw_rt_key_t;

typedef struct kw_rt_conf_s {
        const char *brokers;
        const kf_props_t *props; /* the worker's -X properties (not owned) */
        const char *topic;       /* NULL: no result topic */
        const char *key;         /* "id" or "input" */
        int exactly_once;
        const char *transactional_id; /* exactly once: the producer's transactional.id */
        int timeout_ms;               /* transactional calls and delivery waits */
        kw_metrics_t *metrics;        /* counts kinfer_results_* (not owned; may be NULL) */
        const char *worker_id;        /* for a too_large result whose own cannot be read */
} kw_rt_conf_t;

typedef struct kw_rt_s {
        rd_kafka_t *rk; /* the producer; NULL when there is no result topic */
        const char *topic;
        kw_rt_key_t key;
        int eos;
        int timeout_ms;
        kw_metrics_t *metrics; /* not owned */
        const char *worker_id; /* not owned */
        char max_bytes[24];    /* the producer's message.max.bytes, as configured */
        rd_kafka_t *consumer;  /* exactly once: whose group metadata (not owned) */
        kw_offsets_t *offsets; /* exactly once: what is committed (not owned) */
        pthread_mutex_t lock;  /* exactly once: guards what follows, to outcome */
        pthread_cond_t cv;     /* a transaction finished */
        int lock_inited;
        kw_batch_t **pend; /* batches of the next transaction (their writers wait) */
        int npend, cappend;
        uint64_t next_seq;                     /* the number of the next transaction */
        uint64_t done_seq;                     /* the last one finished, committed or given up */
        int committing;                        /* a writer is committing one (rt_lead) */
        unsigned char outcome[KW_RT_OUTCOMES]; /* by number: 1 committed */
        atomic_int broken;                     /* exactly once: a transaction was given up with
                                                * offsets marked done: none commits until kw_rt_reset */
        atomic_int fatal;                      /* the producer had a fatal error */
        atomic_ullong sent;                    /* messages acknowledged (or committed) */
        atomic_ullong txns;                    /* transactions committed */
        atomic_ullong aborts;                  /* transactions aborted */
} kw_rt_t;

/* Creates the producer (exactly once: transactional, and
 * rd_kafka_init_transactions, which also aborts what an earlier producer
 * with this transactional.id left open).  With no topic, rt->rk stays NULL
 * and every call is a no-op.  Returns 0 or -1 with errstr. */
int kw_rt_init(kw_rt_t *rt, const kw_rt_conf_t *c, char *errstr, size_t errstr_size);

/* Exactly once: the consumer whose offsets the transactions commit, and the
 * tracker they are read from.  Neither is owned; both outlive rt's use. */
void kw_rt_bind(kw_rt_t *rt, rd_kafka_t *consumer, kw_offsets_t *offsets);

/* Sends the result message of every WRITTEN job of b that has a value.
 * At least once: returns when every one is acknowledged.  Exactly once:
 * returns when its transaction committed, with the offsets, which it marks
 * done in the tracker when it joins.  Returns 0; -1 with errstr when it failed and may be retried
 * later (the jobs keep their values: the same messages are sent again); -2 with errstr when the
 * batch is given up (*abandon was set during a failing transaction, or a fatal error: kw_rt_fatal):
 * its offsets must not be stored.  Writer threads. */
int kw_rt_send(kw_rt_t *rt, kw_batch_t *b, const atomic_int *abandon, char *errstr,
               size_t errstr_size);

/* Exactly once: commits the offsets stored since the last transaction (the
 * dead-letter stage's, for one) in a transaction of their own, after a
 * drain and before the partitions go; one attempt (a fenced member gives
 * up at once: the next owner redoes those jobs, found done in Redis).
 * Returns 0 or -1 (logged). */
int kw_rt_commit_offsets(kw_rt_t *rt);

/* After kw_offsets_forget: transactions may commit again. */
void kw_rt_reset(kw_rt_t *rt);

/* 1 after a fatal producer error (the worker must stop and exit 1). */
int kw_rt_fatal(kw_rt_t *rt);

/* Flushes (at least once) or aborts what is open, destroys the producer.
 * Accepts an rt that was never initialised if it is zeroed. */
void kw_rt_close(kw_rt_t *rt);

/* Removes the results.* properties from props in place (they are the
 * result producer's alone; the consumer would refuse them). */
void kw_rt_strip_props(kf_props_t *props);

#endif
