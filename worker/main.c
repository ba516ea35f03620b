/* main.c - kinfer-worker: command line, signals, and the worker's lifetime.
 * Everything else is in worker.c. */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_kafka.h"
#include "kf_keys.h"
#include "kf_log.h"
#include "kf_redact.h"
#include "worker.h"

#define O(f) offsetof(kw_config_t, f)

const kf_opt_t kw_options[] = {
    {"config", 0, "KINFER_CONFIG", KF_OPT_CONFIG, O(config_file), 0, 0, NULL, "FILE",
     "read settings from a JSON file: {\"brokers\": \"...\", \"batch-max-jobs\": 512, "
     "\"kafka\": {PROPERTY: VALUE}}; the environment and flags override it"},
    {"print-config", 0, NULL, KF_OPT_ACTION, O(print_config), 0, 0, NULL, NULL,
     "print the effective configuration (a config file, secrets masked) and exit"},
    {"brokers", 'b', "KINFER_BROKERS", KF_OPT_STR, O(brokers), 0, 0, "localhost:9092", "LIST",
     "Kafka bootstrap servers"},
    {"redis", 'r', "KINFER_REDIS", KF_OPT_STR, O(redis_url), 0, 0, "redis://127.0.0.1:6379/0",
     "URL", "redis://[user:password@]host:port[/db]"},
    {"models", 'm', "KINFER_MODELS", KF_OPT_STR, O(models_dir), 0, 0, NULL, "DIR",
     "offline: models from DIR/NAME.kmodel or DIR/NAME/VERSION.kmodel (default: the Redis "
     "model registry)"},
    {"model-resync-ms", 0, "KINFER_MODEL_RESYNC_MS", KF_OPT_INT, O(model_resync_ms), 100,
     3600000, "5000", "MS",
     "registry: also re-check every cached model this often (changes arrive at once)"},
    {"model-cache-mb", 0, "KINFER_MODEL_CACHE_MB", KF_OPT_INT, O(model_cache_mb), 0, 1 << 20,
     "512", "MB",
     "most MiB of weights kept for model versions not being served (pinned or replaced; "
     "least recently used dropped first)"},
    {"topic", 't', "KINFER_TOPIC", KF_OPT_STR, O(topic), 0, 0, "kinfer.jobs", "NAME",
     "topic jobs are consumed from"},
    {"dlq-topic", 0, "KINFER_DLQ_TOPIC", KF_OPT_STR, O(dlq_topic), 0, 0, "kinfer.dlq", "NAME",
     "dead-letter topic for messages that cannot have a result"},
    {"group", 'g', "KINFER_GROUP", KF_OPT_STR, O(group), 0, 0, "kinfer-workers", "ID",
     "consumer group of the worker pool"},
    {"instance-id", 0, "KINFER_INSTANCE_ID", KF_OPT_STR, O(instance_id), 0, 0, NULL, "ID",
     "static group membership: a restart within the session timeout keeps the "
     "partitions, no rebalance"},
    {"prefix", 0, "KINFER_PREFIX", KF_OPT_STR, O(prefix), 0, 0, KF_PREFIX_DEFAULT, "STR",
     "prefix of every Redis key"},
    {"worker-id", 0, "KINFER_WORKER_ID", KF_OPT_STR, O(worker_id), 0, 0, NULL, "ID",
     "name written into results (default hostname:pid)"},
    {"batch-max-jobs", 0, "KINFER_BATCH_MAX_JOBS", KF_OPT_INT, O(batch_max_jobs), 1, 100000,
     "512", "N", "most jobs in one micro-batch"},
    {"batch-max-rows", 0, "KINFER_BATCH_MAX_ROWS", KF_OPT_INT, O(batch_max_rows), 1, 1 << 20,
     "256", "N", "most rows stacked into one forward pass"},
    {"batch-wait-us", 0, "KINFER_BATCH_WAIT_US", KF_OPT_INT, O(batch_wait_us), 0, 1000000, "1000",
     "US", "longest wait for a micro-batch to fill"},
    {"blas-threads", 0, "KINFER_BLAS_THREADS", KF_OPT_INT, O(blas_threads), 1, 256, "1", "N",
     "OpenBLAS threads per worker"},
    {"compute-threads", 0, "KINFER_COMPUTE_THREADS", KF_OPT_INT, O(compute_threads), 0, 256, "0",
     "N", "threads computing batches in parallel (0 = one per CPU)"},
    {"writer-threads", 0, "KINFER_WRITER_THREADS", KF_OPT_INT, O(writer_threads), 1, 16, "2",
     "N", "threads writing results to Redis, a connection each"},
    {"redis-timeout-ms", 0, "KINFER_REDIS_TIMEOUT_MS", KF_OPT_INT, O(redis_timeout_ms), 10,
     600000, "5000", "MS", "Redis connect and command timeout"},
    {"grace-ms", 0, "KINFER_GRACE_MS", KF_OPT_INT, O(grace_ms), 0, 3600000, "10000", "MS",
     "on shutdown, how long to keep trying to write in-flight results"},
    {"max-message-bytes", 0, "KINFER_MAX_MESSAGE_BYTES", KF_OPT_INT, O(max_message_bytes), 64,
     1LL << 31, "8388608", "N", "largest job message accepted"},
    {"max-rows", 0, "KINFER_MAX_ROWS", KF_OPT_INT, O(max_rows), 1, UINT32_MAX, "65536", "N",
     "most input rows per job"},
    {"max-cols", 0, "KINFER_MAX_COLS", KF_OPT_INT, O(max_cols), 1, UINT32_MAX, "65536", "N",
     "most input columns per job"},
    {"max-elements", 0, "KINFER_MAX_ELEMENTS", KF_OPT_INT, O(max_elements), 1, 1LL << 32,
     "16777216", "N", "most input values (rows x cols) per job"},
    {"max-output-elements", 0, "KINFER_MAX_OUTPUT_ELEMENTS", KF_OPT_INT, O(max_output_elements),
     1, 120000000, "16777216", "N",
     "most output values (rows x columns) per job: 64 MiB of float32 (at most 120M: a "
     "result must stay under Redis' 512 MiB value limit)"},
    {"max-scratch-elements", 0, "KINFER_MAX_SCRATCH_ELEMENTS", KF_OPT_INT,
     O(max_scratch_elements), 1, 1LL << 34, "67108864", "N",
     "most values of a job's forward-pass scratch (rows x widest layer): 256 MiB"},
    {"quota-jobs", 0, "KINFER_QUOTA_JOBS", KF_OPT_INT, O(quota_jobs), -1, 1000000000000000LL,
     "-1", "N", "default max jobs per user per window, for users without a quota (-1 = unlimited)"},
    {"quota-rows", 0, "KINFER_QUOTA_ROWS", KF_OPT_INT, O(quota_rows), -1, 1000000000000000LL,
     "-1", "N", "default max rows per user per window (-1 = unlimited)"},
    {"quota-window", 0, "KINFER_QUOTA_WINDOW", KF_OPT_INT, O(quota_window), 1, 31622400, "3600",
     "S", "default quota window length (windows are aligned to Unix time)"},
    {"charge-horizon", 0, "KINFER_CHARGE_HORIZON", KF_OPT_INT, O(charge_horizon), 60, 30 * 86400,
     "3600", "S",
     "a job id is never charged twice within S s (records live S to 2S s); the same on "
     "every worker"},
    {"log-level", 'l', "KINFER_LOG_LEVEL", KF_OPT_LOG, O(log_level), 0, 0, "info", "LEVEL",
     "error, warn, info or debug"},
    {NULL},
};

static volatile sig_atomic_t stop_flag;

/* First signal: graceful shutdown.  Second: exit now (in-flight work is
 * redelivered, since its offsets were not stored). */
static void on_signal(int sig)
{
        static const char msg[] = "kinfer-worker: second signal, exiting now\n";
        if (stop_flag) {
                if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
                        /* nothing left to do about it */
                }
                _exit(128 + sig);
        }
        stop_flag = 1;
}

static void usage(FILE *fp)
{
        fprintf(fp, "Usage: kinfer-worker [OPTION]... [-X KAFKA_PROPERTY=VALUE]...\n"
                    "Consumes inference jobs from Kafka, computes them, writes results to "
                    "Redis.\n\n");
        kf_config_usage(fp, kw_options);
        fprintf(fp, "  %-34s %s\n", "-X key=value",
                "set a librdkafka property (repeatable; overrides kinfer's defaults)");
        fprintf(fp, "  %-34s %s\n", "-X dlq.key=value",
                "set it on the dead-letter producer only (docs/operations.md)");
        fprintf(fp, "\nThe wire contract is in docs/protocol.md.\n");
}

int main(int argc, char **argv)
{
        kw_config_t conf;
        struct sigaction sa;
        char err[512];
        kw_worker_t *w;
        int rc;

        memset(&conf, 0, sizeof(conf));
        kf_log_init("kinfer-worker", KF_LOG_INFO);
        rc = kf_config_parse(kw_options, &conf, &conf.props, argc, argv, NULL, err, sizeof(err));
        if (rc == KF_CONFIG_HELP) {
                usage(stdout);
                kf_config_free(kw_options, &conf, &conf.props);
                return 0;
        }
        if (rc != KF_CONFIG_OK) {
                kf_redact_secrets(err); /* printed without kf_log, which scrubs its lines */
                fprintf(stderr, "kinfer-worker: %s\n", err);
                kf_config_free(kw_options, &conf, &conf.props);
                return 2;
        }
        kf_log_init("kinfer-worker", (kf_log_level_t)conf.log_level);
        if (conf.print_config) {
                rc = kf_config_print(stdout, kw_options, &conf, &conf.props, err, sizeof(err));
                if (rc)
                        fprintf(stderr, "kinfer-worker: %s\n", err);
                kf_config_free(kw_options, &conf, &conf.props);
                return rc ? 1 : 0;
        }
        /* A mistyped -X (flag or config file) stops it here, before it
         * connects anywhere; dlq.KEY is checked as KEY. */
        if (kf_kafka_props_check(&conf.props, "dlq.", err, sizeof(err))) {
                fprintf(stderr, "kinfer-worker: -X %s\n", err);
                kf_config_free(kw_options, &conf, &conf.props);
                return 2;
        }
        if (kf_prefix_valid(conf.prefix, err, sizeof(err))) {
                fprintf(stderr, "kinfer-worker: --prefix: %s\n", err);
                kf_config_free(kw_options, &conf, &conf.props);
                return 2;
        }

        /* hiredis 0.14 writes without MSG_NOSIGNAL: a Redis restart would
         * otherwise kill the worker with SIGPIPE. */
        signal(SIGPIPE, SIG_IGN);
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        if (!(w = kw_worker_new(&conf, &stop_flag, err, sizeof(err)))) {
                kf_error("%s", err);
                kf_config_free(kw_options, &conf, &conf.props);
                return 1;
        }
        rc = kw_worker_run(w);
        kw_worker_destroy(w);
        kf_config_free(kw_options, &conf, &conf.props);
        return rc ? 1 : 0;
}
