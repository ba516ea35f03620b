/* options.c - kinfer-worker's option table (kf_config.h): every flag, its
 * KINFER_* variable, bounds, default and help line. */
#include <stddef.h>
#include <stdint.h>

#include "kf_keys.h"
#include "worker.h"

#define O(f) offsetof(kw_config_t, f)

const kf_opt_t kw_options[] = {
    {"config", 0, "KINFER_CONFIG", KF_OPT_CONFIG, O(config_file), 0, 0, NULL, "FILE",
     "read settings from a JSON file: {\"brokers\": \"...\", \"batch-max-jobs\": 512, "
     "\"kafka\": {PROPERTY: VALUE}}; the environment and flags override it"},
    {"print-config", 0, NULL, KF_OPT_ACTION, O(print_config), 0, 0, NULL, NULL,
     "print the effective configuration (a config file, secrets masked) and exit"},
    {"http", 0, "KINFER_HTTP", KF_OPT_STR, O(http_addr), 0, 0, NULL, "ADDR:PORT",
     "serve /metrics (Prometheus), /healthz and /readyz here, e.g. 127.0.0.1:9464, and "
     "advertise it in Redis (PREFIXworker:ID) for kinfer top (default: off)"},
    {"brokers", 'b', "KINFER_BROKERS", KF_OPT_STR, O(brokers), 0, 0, "localhost:9092", "LIST",
     "Kafka bootstrap servers"},
    {"redis", 'r', "KINFER_REDIS", KF_OPT_STR, O(redis_url), 0, 0, "redis://127.0.0.1:6379/0",
     "URL", "redis://[user:password@]host:port[/db]"},
    {"models", 'm', "KINFER_MODELS", KF_OPT_STR, O(models_dir), 0, 0, NULL, "DIR",
     "offline: models from DIR/NAME.kmodel or DIR/NAME/VERSION.kmodel (default: the Redis "
     "model registry)"},
    {"model-resync-ms", 0, "KINFER_MODEL_RESYNC_MS", KF_OPT_INT, O(model_resync_ms), 100, 3600000,
     "5000", "MS",
     "registry: also re-check every cached model this often (changes arrive at once)"},
    {"model-cache-mb", 0, "KINFER_MODEL_CACHE_MB", KF_OPT_INT, O(model_cache_mb), 0, 1 << 20, "512",
     "MB",
     "most MiB of weights kept for model versions not being served (pinned or replaced; "
     "least recently used dropped first)"},
    {"topic", 't', "KINFER_TOPIC", KF_OPT_STR, O(topic), 0, 0, "kinfer.jobs", "NAME",
     "topic jobs are consumed from"},
    {"dlq-topic", 0, "KINFER_DLQ_TOPIC", KF_OPT_STR, O(dlq_topic), 0, 0, "kinfer.dlq", "NAME",
     "dead-letter topic for messages that cannot have a result"},
    {"results-topic", 0, "KINFER_RESULTS_TOPIC", KF_OPT_STR, O(results_topic), 0, 0, NULL, "NAME",
     "also send every result to this topic, the Redis result's msgpack (default: off)"},
    {"results-key", 0, "KINFER_RESULTS_KEY", KF_OPT_STR, O(results_key), 0, 0, "id", "id|input",
     "key of a result message: the job id, or the job message's own key"},
    {"exactly-once", 0, "KINFER_EXACTLY_ONCE", KF_OPT_BOOL, O(exactly_once), 0, 0, "0", NULL,
     "with --results-topic: results and consumed offsets committed together in Kafka "
     "transactions (read_committed consumers see each result once)"},
    {"transactional-id", 0, "KINFER_TRANSACTIONAL_ID", KF_OPT_STR, O(transactional_id), 0, 0, NULL,
     "ID",
     "--exactly-once: the producer's transactional.id, stable across restarts (default "
     "kinfer-GROUP-WORKER_ID)"},
    {"chain-model", 0, "KINFER_CHAIN_MODEL", KF_OPT_STR, O(chain_model), 0, 0, NULL, "NAME",
     "the topic holds another stage's result messages: each becomes a job of model NAME, id "
     "ID:NAME, same user"},
    {"group", 'g', "KINFER_GROUP", KF_OPT_STR, O(group), 0, 0, "kinfer-workers", "ID",
     "consumer group of the worker pool"},
    {"instance-id", 0, "KINFER_INSTANCE_ID", KF_OPT_STR, O(instance_id), 0, 0, NULL, "ID",
     "static group membership: a restart within the session timeout keeps the "
     "partitions, no rebalance"},
    {"prefix", 0, "KINFER_PREFIX", KF_OPT_STR, O(prefix), 0, 0, KF_PREFIX_DEFAULT, "STR",
     "prefix of every Redis key"},
    {"worker-id", 0, "KINFER_WORKER_ID", KF_OPT_STR, O(worker_id), 0, 0, NULL, "ID",
     "name written into results (default hostname:pid)"},
    {"batch-max-jobs", 0, "KINFER_BATCH_MAX_JOBS", KF_OPT_INT, O(batch_max_jobs), 1, 100000, "512",
     "N", "most jobs in one micro-batch"},
    {"batch-max-rows", 0, "KINFER_BATCH_MAX_ROWS", KF_OPT_INT, O(batch_max_rows), 1, 1 << 20, "256",
     "N", "most rows stacked into one forward pass"},
    {"batch-wait-us", 0, "KINFER_BATCH_WAIT_US", KF_OPT_INT, O(batch_wait_us), 0, 1000000, "1000",
     "US", "longest wait for a micro-batch to fill"},
    {"blas-threads", 0, "KINFER_BLAS_THREADS", KF_OPT_INT, O(blas_threads), 1, 256, "1", "N",
     "OpenBLAS threads per worker"},
    {"compute-threads", 0, "KINFER_COMPUTE_THREADS", KF_OPT_INT, O(compute_threads), 0, 256, "0",
     "N", "threads computing batches in parallel (0 = one per CPU)"},
    {"writer-threads", 0, "KINFER_WRITER_THREADS", KF_OPT_INT, O(writer_threads), 1, 16, "2", "N",
     "threads writing results to Redis, a connection each (--exactly-once: at most this many "
     "batches per transaction)"},
    {"redis-timeout-ms", 0, "KINFER_REDIS_TIMEOUT_MS", KF_OPT_INT, O(redis_timeout_ms), 10, 600000,
     "5000", "MS", "Redis connect and command timeout"},
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
    {"max-output-elements", 0, "KINFER_MAX_OUTPUT_ELEMENTS", KF_OPT_INT, O(max_output_elements), 1,
     120000000, "16777216", "N",
     "most output values (rows x columns) per job: 64 MiB of float32 (at most 120M: a "
     "result must stay under Redis' 512 MiB value limit)"},
    {"max-scratch-elements", 0, "KINFER_MAX_SCRATCH_ELEMENTS", KF_OPT_INT, O(max_scratch_elements),
     1, 1LL << 34, "67108864", "N",
     "most values of a job's forward-pass scratch (rows x widest layer): 256 MiB"},
    {"quota-jobs", 0, "KINFER_QUOTA_JOBS", KF_OPT_INT, O(quota_jobs), -1, 1000000000000000LL, "-1",
     "N", "default max jobs per user per window, for users without a quota (-1 = unlimited)"},
    {"quota-rows", 0, "KINFER_QUOTA_ROWS", KF_OPT_INT, O(quota_rows), -1, 1000000000000000LL, "-1",
     "N", "default max rows per user per window (-1 = unlimited)"},
    {"quota-window", 0, "KINFER_QUOTA_WINDOW", KF_OPT_INT, O(quota_window), 1, 31622400, "3600",
     "S", "default quota window length (windows are aligned to Unix time)"},
    {"charge-horizon", 0, "KINFER_CHARGE_HORIZON", KF_OPT_INT, O(charge_horizon), 60, 30 * 86400,
     "3600", "S",
     "a job id is never charged twice within S s (records live S to 2S s); the same on "
     "every worker"},
    {"require-signatures", 0, "KINFER_REQUIRE_SIGNATURES", KF_OPT_BOOL, O(require_signatures), 0, 0,
     "0", NULL,
     "answer unsigned jobs `unauthorized` (signed jobs are verified in either mode; "
     "docs/security.md)"},
    {"key-cache-ms", 0, "KINFER_KEY_CACHE_MS", KF_OPT_INT, O(key_cache_ms), 0, 600000, "5000", "MS",
     "how long a signing key read from Redis is trusted: a revoked key is refused at most this "
     "long after `kinfer key revoke`"},
    {"log-format", 0, "KINFER_LOG_FORMAT", KF_OPT_STR, O(log_format), 0, 0, "plain", "FORMAT",
     "plain (one line per event) or json (one JSON object per line: ts, level, prog, pid, "
     "msg)"},
    {"log-summary-s", 0, "KINFER_LOG_SUMMARY_S", KF_OPT_INT, O(log_summary_s), 0, 86400, "10", "S",
     "log one summary line (jobs/s, ok, errors, duplicates) at info this often; 0 = never"},
    {"log-limit", 0, "KINFER_LOG_LIMIT", KF_OPT_INT, O(log_limit), 0, 1000000, "20", "N",
     "at most N lines per --log-limit-s from each kind of line a producer can repeat (a refused "
     "job, an unreadable message), then one summary line with the count; 0 = no limit"},
    {"log-limit-s", 0, "KINFER_LOG_LIMIT_S", KF_OPT_INT, O(log_limit_s), 1, 86400, "10", "S",
     "the window of --log-limit"},
    {"log-level", 'l', "KINFER_LOG_LEVEL", KF_OPT_LOG, O(log_level), 0, 0, "info", "LEVEL",
     "error, warn, info or debug"},
    {NULL},
};
