/* kinfer.h - shared state of the `kinfer` command-line tool's subcommands.
 *
 * Every subcommand parses its own option table (kf_config) into one kc_conf_t,
 * so connection settings (KINFER_BROKERS, KINFER_REDIS, ...) mean the same
 * everywhere.  Data goes to stdout, diagnostics to stderr prefixed "kinfer: ".
 * Exit codes: 0 ok, 1 a job or lookup failed, 2 usage error, 3 connection. */
#ifndef KC_KINFER_H
#define KC_KINFER_H

#include <hiredis.h>
#include <jansson.h>
#include <stdint.h>

#include "job.h"
#include "kf_config.h"

#define KC_EXIT_OK    0
#define KC_EXIT_FAIL  1
#define KC_EXIT_USAGE 2
#define KC_EXIT_CONN  3

typedef struct kc_conf_s {
        char *config_file; /* --config: settings (and secrets) from a file */
        char *brokers, *redis_url, *topic, *prefix;
        /* submit */
        char *model, *user, *output, *file, *format, *encoding, *id, *id_prefix, *inbox;
        int64_t version, ttl, deadline_ms, rows_per_job, timeout_s;
        int64_t k; /* --output topk */
        int wait, quiet;
        /* model init/build */
        char *out_path, *dims, *acts;
        int64_t seed;
        /* model push/activate/rollback/rm (the registry) */
        char *name;
        int activate, force;
        /* usage, quota */
        int json;
        char *q_jobs, *q_rows, *q_window;
        /* tail */
        int from_beginning;
        int64_t max_messages;
        /* key create/rotate; submit and bench sign with key_file */
        char *key_alg, *key_file;
        kf_props_t props;
} kc_conf_t;

/* Connection options every subcommand that talks to a server accepts.
 * --config (KINFER_CLI_CONFIG, not the worker's KINFER_CONFIG: a worker's
 * file has keys the CLI does not know) keeps the Redis password and the
 * Kafka credentials out of the command line, where `ps` shows them. */
#define KC_OPTS_CONN                                                                               \
        {"config",                                                                                 \
         0,                                                                                        \
         "KINFER_CLI_CONFIG",                                                                      \
         KF_OPT_CONFIG,                                                                            \
         offsetof(kc_conf_t, config_file),                                                         \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         "FILE",                                                                                   \
         "a JSON config file: these options' long names, \"kafka\": -X properties"},               \
            {"brokers", 'b', "KINFER_BROKERS", KF_OPT_STR, offsetof(kc_conf_t, brokers),           \
             0,         0,   "localhost:9092", "LIST",     "Kafka bootstrap servers"},             \
            {"redis",                                                                              \
             'r',                                                                                  \
             "KINFER_REDIS",                                                                       \
             KF_OPT_STR,                                                                           \
             offsetof(kc_conf_t, redis_url),                                                       \
             0,                                                                                    \
             0,                                                                                    \
             "redis://127.0.0.1:6379/0",                                                           \
             "URL",                                                                                \
             "redis://[user:password@]host:port[/db]"},                                            \
            {"topic", 't', "KINFER_TOPIC", KF_OPT_STR, offsetof(kc_conf_t, topic),                 \
             0,       0,   "kinfer.jobs",  "NAME",     "job topic"},                               \
        {                                                                                          \
                "prefix", 0, "KINFER_PREFIX", KF_OPT_STR, offsetof(kc_conf_t, prefix), 0, 0,       \
                    "kinfer:", "STR", "prefix of every Redis key"                                  \
        }

/* Parses argv (argv[0] = the subcommand) with opts; on --help prints usage
 * (synopsis first) and exits 0, on error prints it and exits 2.  Returns the
 * index of the first positional argument. */
int kc_parse(const kf_opt_t *opts, kc_conf_t *conf, int with_props, int argc, char **argv,
             const char *synopsis);

/* Connects to conf->redis_url or exits 3 with a message. */
redisContext *kc_redis(const kc_conf_t *conf);

/* Runs one command (hiredis format) on r; on an error reply or a lost
 * connection prints "kinfer: redis: <why>" and exits 3.  The caller frees
 * the reply. */
redisReply *kc_redis_cmd(redisContext *r, const char *fmt, ...);

/* Prints "kinfer: <message>" to stderr, scrubbed of registered secrets
 * (kf_redact.h); at most 2 KiB of message. */
void kc_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Reads the result of user's job id into a JSON object (caller decrefs).
 * Returns NULL if there is no result (yet); a value that cannot be decoded
 * is rendered with status "unreadable".  Exits 3 if Redis fails. */
json_t *kc_result_json(redisContext *c, const kc_conf_t *conf, const char *user, const char *id);

/* The JSON of one result value (a Redis result or a result message, the
 * same msgpack map); one with status "unreadable" naming why if it cannot
 * be decoded (buf NULL: no value).  Caller decrefs. */
json_t *kc_result_value_json(const void *buf, size_t len);

/* Receives result i of a wait, in the order of ids; res is NULL when it did
 * not come before the timeout.  res is borrowed. */
typedef void(kc_result_cb)(size_t i, json_t *res, void *opaque);

/* Waits for the results of user's jobs ids[0..n-1] for at most timeout_s
 * seconds in all (0 = forever), and calls cb for each, in order, as soon as
 * it and those before it are there.  Without polling when the jobs announce
 * themselves on inbox (BLPOP); at most every 5 s the results are read again,
 * since another client may take an id from a shared inbox.  inbox NULL:
 * reads the results every 200 ms.  Returns how many did not come. */
size_t kc_results_wait(redisContext *c, const kc_conf_t *conf, const char *user, const char *inbox,
                       char **ids, size_t n, int64_t timeout_s, kc_result_cb *cb, void *opaque);

/* A kc_result_cb that prints each result as a JSON line and sets rc to
 * KC_EXIT_FAIL for a missing or non-ok one; opaque is a kc_printer_t. */
typedef struct kc_printer_s {
        char **ids; /* the ids waited for, to name a missing one */
        int rc;
} kc_printer_t;
void kc_print_result(size_t i, json_t *res, void *opaque);

/* The inbox `kinfer submit` gives the jobs of one run (RUN: 16 hex digits),
 * and the one a job id made by submit (PREFIX-RUN-N) was announced on:
 * 0, or -1 if id is not of that form.  buf holds JOB_INBOX_MAX + 1. */
void kc_inbox_name(const char *run, char *buf);
int kc_inbox_from_id(const char *id, char *buf);

/* Prints a JSON value on one line on stdout. */
void kc_print_json(json_t *j);

int kc_cmd_submit(int argc, char **argv);
int kc_cmd_get(int argc, char **argv);
int kc_cmd_wait(int argc, char **argv);
int kc_cmd_usage(int argc, char **argv);
int kc_cmd_quota(int argc, char **argv);
int kc_cmd_model(int argc, char **argv);
/* cmd_registry.c: model push|list|show|activate|rollback|rm; argv[0] is that word. */
int kc_cmd_registry(int argc, char **argv);
int kc_cmd_bench(int argc, char **argv);
int kc_cmd_tail(int argc, char **argv);
/* cmd_key.c: key create|rotate|revoke|list. */
int kc_cmd_key(int argc, char **argv);
/* cmd_top.c: the live view (top.h, top_pool.c, top_view.c, prom_text.c). */
int kc_cmd_top(int argc, char **argv);

/* input.c: reading job inputs. A matrix of rows x cols float32. */
typedef struct kc_matrix_s {
        uint32_t rows, cols;
        float *data; /* owned */
} kc_matrix_t;

/* Parses "1,2.5,-3" rows given as arguments into one matrix.  Returns 0 or
 * -1 with errstr naming the argument and the bad value. */
int kc_rows_from_args(int argc, char **argv, kc_matrix_t *m, char *errstr, size_t errstr_size);

/* Callback for each job read from a file; return non-zero to stop. */
typedef int(kc_job_cb)(const kc_matrix_t *m, void *opaque);

/* Reads jobs from a JSON-lines file (each line a row [..] or rows [[..],..])
 * or a CSV file (each line a row; rows_per_job lines make one job; line 1 is
 * a header, skipped, only when none of its fields is a number) and calls cb
 * for each.  A value must be within float32's range; one that underflows it
 * becomes 0 or a subnormal.  format is "jsonl", "csv" or NULL (by the file's
 * extension; "-" is stdin and needs a format).  Returns 0 or -1 with errstr
 * naming the file, line and problem. */
int kc_read_jobs(const char *path, const char *format, int64_t rows_per_job, kc_job_cb *cb,
                 void *opaque, char *errstr, size_t errstr_size);

#endif
