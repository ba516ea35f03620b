/* faults.h - the fixture shared by the fault tests (tests/faults/test_*.c).
 *
 * A fault test is: a private stack (real redis-server + dev broker, see
 * tests/harness/stack.h), a test-packed model, a known set of jobs produced
 * straight to Kafka with librdkafka (acks=all; each job's partition/offset
 * recorded from its delivery report), workers, a fault, and then the one
 * check every case shares (fx_check), against docs/protocol.md (v2):
 *   - every job that has a readable id and user has exactly one result, the
 *     value at kinfer:{USER}:result:ID (read and decoded with kt_result_get):
 *     the expected status and error code, output within 1e-5 of a
 *     double-precision reference computed here with plain loops, `source` =
 *     the job's own partition/offset, a TTL; and every job that names the
 *     inbox FX_INBOX has its id on kinfer:{USER}:inbox:fx at least once (a
 *     redelivery or duplicate pushes it again, as documented), and that inbox
 *     holds no id of anything else;
 *   - every user's usage counters (lifetime, per model, summed over the quota
 *     windows) equal what the ok results add up to (jobs, rows, flops = rows
 *     x 2 x sum in*out), errors equal the error results: a duplicate charge
 *     or a lost job cannot hide;
 *   - kinfer:stats undecodable counts the messages without an address.
 * Messages without a readable id or user are checked against the dead-letter
 * topic with fx_dlq_read.
 *
 * Everything here asserts with cmocka; call it from the test thread only.
 * Waits poll a condition with generous timeouts: no fixed sleeps. */
#ifndef KT_FAULTS_H
#define KT_FAULTS_H

#include <librdkafka/rdkafka.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../harness/stack.h"

#define FX_IN            8 /* the model: 8 -> 16 (tanh) -> 4 (identity) */
#define FX_HID           16
#define FX_OUT           4
#define FX_MAXROWS       3
#define FX_FLOPS_PER_ROW (2LL * (FX_IN * FX_HID + FX_HID * FX_OUT))
#define FX_MAX_USERS     16
#define FX_TOPIC         "kinfer.jobs"
#define FX_DLQ_TOPIC     "kinfer.dlq"
#define FX_GROUP         "kinfer-workers"
#define FX_INBOX         "fx" /* the inbox every good job names */

/* One message the test produces, and what it must become. */
typedef struct fx_job_s {
        char id[160]; /* the job id a result is keyed by; "" = none readable */
        int user;     /* index of its user; -1 = no readable user (then the
                         message has no address: dlq must be 1) */
        int rows;     /* input rows (good jobs) */
        float x[FX_MAXROWS * FX_IN];
        const char *want_error;   /* NULL: an ok result; else the error code expected
                                     (on the result, or in kinfer.error on the DLQ) */
        const char *want_message; /* NULL: any non-empty message; else text the
                                     result's message (or the DLQ copy's
                                     kinfer.reason) contains; a leading '^'
                                     means it must start with the rest */
        const char *model;        /* the model the result names and is charged to:
                                     NULL = "mlp", "" = none readable */
        int inbox;                /* 1: the message names the inbox FX_INBOX, so its id
                                     must be pushed onto kinfer:{USER}:inbox:fx */
        int dlq;                  /* 1: no result possible; expect a DLQ copy instead */
        char *value;              /* a hand-made message value (malloc'd), or NULL to
                                     encode the good job from id/user/rows/x */
        size_t len;
        int null_value; /* produce a message with no value at all */
        char key[80];   /* message key; "" = the user's name */
        int cli;        /* 1: submitted with `kinfer submit` (fx_submit_cli),
                           which chose the id; partition and offset are
                           not known, the result's source must name some
                           message of FX_TOPIC */
        /* Set by the delivery report. */
        int32_t partition;
        int64_t offset;
        int delivered; /* 1 ok, -1 failed */
} fx_job_t;

/* What a DLQ message carried. */
typedef struct fx_dlq_rec_s {
        char source[128], error[64], reason[512], worker[128];
        char *key, *value; /* malloc'd copies (NULL if absent) */
        size_t key_len, value_len;
        int found; /* matched to a produced message */
} fx_dlq_rec_t;

typedef struct fx_s {
        kt_stack_t stack;
        char tag[32];
        char models_dir[300];
        float W1[FX_IN * FX_HID], b1[FX_HID], W2[FX_HID * FX_OUT], b2[FX_OUT];
        char users[FX_MAX_USERS][48];
        int n_users;
        fx_job_t *jobs;
        int n_jobs, cap_jobs;
        rd_kafka_t *producer;
        redisContext *rc;
        /* The background producer (fx_stream_start). */
        pthread_t thread;
        int streaming;
        int stream_from, stream_to, stream_rate;
        atomic_int produced; /* jobs [0, produced) have been handed to librdkafka */
        atomic_int stream_stop;
        int passed;                     /* set by fx_finish; else teardown keeps logs */
        int redelivered_dlq;            /* 1: address-less messages may have been redelivered, so
                                           kinfer:stats undecodable (a plain counter, not
                                           part of the idempotent step) may count some
                                           twice: fx_check then wants >= instead of == */
        int registry;                   /* 1: workers start without --models and load the
                                           model from the registry (fx_push_model) */
        int real_kafka;                 /* 1: the stack runs a genuine Kafka (fx_setup_kafka) */
        const char *const *kafka_users; /* fx_setup_kafka_secure's users, else NULL */
        const char *const *cli_args;    /* more arguments for fx_submit_cli's `kinfer
                                           submit` (NULL-terminated), or NULL */
        uint64_t rng;
} fx_t;

/* cmocka setup and teardown of a case: a zeroed fx_t in *state (fx_setup
 * then starts its stack), and fx_teardown plus free afterwards. */
int fx_state_setup(void **state);
int fx_state_teardown(void **state);

/* Starts redis (with extra_args, or NULL), a dev broker of n_brokers brokers
 * and `partitions` partitions, writes the model, makes n_users users and a
 * producer.  tag prefixes job ids and user names. */
void fx_setup(fx_t *fx, const char *tag, int n_brokers, int partitions, int n_users,
              const char *const *redis_args);

/* The same on a genuine single-node Apache Kafka (kt_stack_start_kafka)
 * instead of the dev broker; the test producer is then idempotent. */
void fx_setup_kafka(fx_t *fx, const char *tag, int partitions, int n_users,
                    const char *const *redis_args);

/* fx_setup_kafka on a Kafka with a SASL_SSL listener too
 * (kt_stack_start_kafka_secure) for the users name, password, ..., NULL;
 * the test's own clients keep the plaintext listener. */
void fx_setup_kafka_secure(fx_t *fx, const char *tag, int partitions, int n_users,
                           const char *const *users);

/* Submits jobs [from, to) (good jobs of fx_add_good) through the `kinfer`
 * CLI, one `kinfer submit --file` of JSON lines per user: the CLI chooses
 * the ids (recorded into the jobs) and produces them; no inbox is named. */
void fx_submit_cli(fx_t *fx, int from, int to);

/* Stops the stream, the producer and the stack; keeps the logs (and prints
 * them) unless fx_finish ran. */
void fx_teardown(fx_t *fx);

/* Spawns a worker named `name` (also its --worker-id) with the test settings
 * (short session timeout, --redis-timeout-ms 1000, the DLQ topic) plus extra
 * (NULL-terminated, may be NULL).  Returns its slot. */
int fx_worker(fx_t *fx, const char *name, const char *const *extra);

/* fx_worker with --http 127.0.0.1:PORT on a fresh port, returned in *port
 * (read its /metrics with kt_scrape, harness/kt_metrics.h). */
int fx_http_worker(fx_t *fx, const char *name, int *port, const char *const *extra);

/* Pushes the model into the stack's model registry and activates it
 * (`kinfer model push`), as version 1; workers spawned afterwards load it
 * from there instead of from a directory. */
void fx_push_model(fx_t *fx);

/* Stops the given worker slots with SIGTERM and asserts each exits 0; scans
 * every process log for sanitizer reports; marks the test passed. */
void fx_finish(fx_t *fx, const int *slots, int n_slots);

/* Fails if any process log so far holds a sanitizer report (fx_finish's
 * scan, for a case that checks mid-way, e.g. after a worker exits). */
void fx_check_logs(fx_t *fx);

/* Appends n good jobs (random 1..3 rows, users round-robin, inbox
 * FX_INBOX).  Returns the index of the first. */
int fx_add_good(fx_t *fx, int n);

/* Appends one job slot for a hand-made message (user -1, no id, no inbox);
 * the caller fills it: an id and a user for a result, or dlq = 1. */
fx_job_t *fx_add_raw(fx_t *fx);

/* Produces jobs [from, to) and waits for every delivery report. */
void fx_produce(fx_t *fx, int from, int to);

/* Produces jobs [from, to) from a background thread at about per_sec jobs a
 * second; fx_stream_join waits for it and asserts every delivery. */
void fx_stream_start(fx_t *fx, int from, int to, int per_sec);
void fx_stream_join(fx_t *fx);

/* Stops the stream early: the jobs it did not produce are dropped from the
 * job list (so it must be the last range), the rest must be delivered.  Lets
 * a case keep load on for exactly as long as its faults take. */
void fx_stream_stop(fx_t *fx);

/* Jobs [0, fx_produced()) have been handed to the producer. */
int fx_produced(fx_t *fx);

/* Runs the cases of a test file; FAULTS_ONLY=pattern (cmocka's test filter,
 * '*' and '?' wildcards) runs only the matching ones. */
#define fx_run(tests) fx_run_group(__FILE__, tests, sizeof(tests) / sizeof((tests)[0]))
int fx_run_group(const char *name, const struct CMUnitTest *tests, size_t n);

/* How many of jobs [0, upto) have a result (pipelined EXISTS of
 * kinfer:{USER}:result:ID), or -1 if Redis did not answer. */
long long fx_count_results(fx_t *fx, int upto);

/* How many results of jobs [0, upto) name `worker` as their writer
 * (pipelined GETs, each value decoded with kf_result_decode). */
long long fx_count_by_worker(fx_t *fx, int upto, const char *worker);

/* Waits until at least n of jobs [0, upto) have a result.  Fails after
 * timeout_ms. */
void fx_wait_results(fx_t *fx, int upto, long long n, int timeout_ms);

/* Waits until every job in [0, n_jobs) that can have a result has one, and
 * kinfer:stats counts at least as many address-less messages as were produced
 * (each is counted once its DLQ copy is acknowledged); fails listing the
 * missing ones after timeout_ms. */
void fx_wait_all(fx_t *fx, int timeout_ms);

/* kinfer:stats undecodable (0 if unset), or -1 if Redis did not answer. */
long long fx_undecodable(fx_t *fx);

/* The check described at the top, over all jobs. */
void fx_check(fx_t *fx);

/* The `worker`, `started` and `done` fields of every present result, to
 * show later that none was replaced (fx_snapshot_check). */
typedef struct fx_snapshot_s {
        int n;
        char (*val)[320];
} fx_snapshot_t;
void fx_snapshot_take(fx_t *fx, fx_snapshot_t *snap);
void fx_snapshot_check(fx_t *fx, const fx_snapshot_t *snap);
void fx_snapshot_free(fx_snapshot_t *snap);

/* Runs a Redis command on the test's connection, reconnecting once if the
 * connection broke.  Returns the reply (caller frees) or NULL. */
redisReply *fx_redis(fx_t *fx, const char *fmt, ...);

/* An integer field of INFO (e.g. "used_memory"), or -1. */
long long fx_redis_info(fx_t *fx, const char *section, const char *field);

/* Lines of a process log containing needle. */
int fx_log_count(fx_t *fx, int slot, const char *needle);

/* The number just before `what` (e.g. "duplicates") on the last line of a
 * worker's log that contains "stopped:" (its exit summary), or -1. */
long long fx_log_stat(fx_t *fx, int slot, const char *what);

/* Reads the DLQ topic from the beginning (own consumer group) until
 * messages from `want` distinct kinfer.source values arrived or timeout_ms
 * passed, then reads idle_ms more to catch extras.  Returns the records (caller frees with
 * fx_dlq_free) and their number in *n. */
fx_dlq_rec_t *fx_dlq_read(fx_t *fx, int want, int timeout_ms, int idle_ms, int *n);
void fx_dlq_free(fx_dlq_rec_t *recs, int n);

/* Appends a message without an address (no readable id or user; value
 * `bytes`, key "<tag>-dlq-key-<*k>", *k incremented) that must reach the DLQ
 * with kinfer.error `code` and a kinfer.reason matching want_message (NULL:
 * any non-empty one; the caller may set it on the returned slot). */
fx_job_t *fx_add_dlq(fx_t *fx, int *k, const char *code, const void *bytes, size_t n);

/* Every address-less message is on the DLQ with its key, value and headers
 * (kinfer.reason matching the slot's want_message), and nothing else is; kinfer.worker names one of
 * `workers`.  allow_dups: after crashes or revokes a message may be copied more than once (at least
 * once), but never lost. */
void fx_check_dlq(fx_t *fx, int n_dlq, const char *const *workers, int n_workers, int allow_dups);

/* The workers' group's committed offset of FX_TOPIC's partition (the next
 * message to consume), -1 if none is committed, -2 if the broker did not
 * answer.  fx_wait_committed waits until it reaches at least want. */
int64_t fx_committed(fx_t *fx, int32_t partition);
void fx_wait_committed(fx_t *fx, int32_t partition, int64_t want, int timeout_ms);

/* Packing helpers for hand-made messages. */
typedef struct fx_msg_s {
        msgpack_sbuffer sb;
        msgpack_packer pk;
} fx_msg_t;
void fx_msg_init(fx_msg_t *m);
void fx_msg_str(fx_msg_t *m, const char *s);
void fx_msg_raw(fx_msg_t *m, const void *bytes, size_t n);
void fx_msg_f32(fx_msg_t *m, const float *v, size_t n); /* bin of LE float32 */
/* Moves the bytes into job->value/len and frees the buffer. */
void fx_msg_take(fx_msg_t *m, fx_job_t *job);

/* Whether text matches want (see fx_job_t.want_message): NULL wants any
 * non-empty text, "^abc" a text starting with abc, "abc" one containing it. */
int fx_text_matches(const char *text, const char *want);

/* The user name of index u. */
const char *fx_user(fx_t *fx, int u);

/* Sleeps ms (for pacing only, never to wait for a condition). */
void fx_sleep_ms(int ms);

#endif
