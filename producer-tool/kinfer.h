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
        char *brokers, *redis_url, *topic, *prefix;
        /* submit */
        char *model, *user, *output, *file, *format, *encoding, *id, *id_prefix;
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
        kf_props_t props;
} kc_conf_t;

/* Connection options every subcommand that talks to a server accepts. */
#define KC_OPTS_CONN                                                                               \
        {"brokers", 'b', "KINFER_BROKERS", KF_OPT_STR, offsetof(kc_conf_t, brokers), 0, 0,        \
         "localhost:9092", "LIST", "Kafka bootstrap servers"},                                     \
            {"redis", 'r', "KINFER_REDIS", KF_OPT_STR, offsetof(kc_conf_t, redis_url), 0, 0,       \
             "redis://127.0.0.1:6379/0", "URL", "redis://[user:password@]host:port[/db]"},         \
            {"topic", 't', "KINFER_TOPIC", KF_OPT_STR, offsetof(kc_conf_t, topic), 0, 0,           \
             "kinfer.jobs", "NAME", "job topic"},                                                  \
            {"prefix", 0, "KINFER_PREFIX", KF_OPT_STR, offsetof(kc_conf_t, prefix), 0, 0,          \
             "kinfer:", "STR", "prefix of every Redis key"}

/* Parses argv (argv[0] = the subcommand) with opts; on --help prints usage
 * (synopsis first) and exits 0, on error prints it and exits 2.  Returns the
 * index of the first positional argument. */
int kc_parse(const kf_opt_t *opts, kc_conf_t *conf, int with_props, int argc, char **argv,
             const char *synopsis);

/* Connects to conf->redis_url or exits 3 with a message. */
redisContext *kc_redis(const kc_conf_t *conf);

/* Prints "kinfer: <message>" to stderr. */
void kc_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Reads the result of job id into a JSON object (caller decrefs).  Returns
 * NULL if there is no result (yet); exits 3 if Redis fails. */
json_t *kc_result_json(redisContext *c, const kc_conf_t *conf, const char *id);

/* Waits for job id's result (BLPOP on its done list after checking whether
 * the result exists already) for at most timeout_s seconds (0 = forever).
 * Returns its JSON or NULL on timeout. */
json_t *kc_result_wait(redisContext *c, const kc_conf_t *conf, const char *id, int64_t timeout_s);

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
