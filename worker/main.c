/* main.c - kinfer-worker: command line, signals, and the worker's lifetime.
 * The options are options.c's table; everything else is in worker.c. */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_kafka.h"
#include "kf_keys.h"
#include "kf_log.h"
#include "kf_log_limit.h"
#include "kf_redact.h"
#include "results_topic.h"
#include "worker.h"

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
        static const char *const prop_prefixes[] = {"dlq.", KW_RT_PROP_PREFIX, NULL};
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
        if (strcmp(conf.log_format, "plain") && strcmp(conf.log_format, "json")) {
                fprintf(stderr, "kinfer-worker: --log-format '%s': expected plain or json\n",
                        conf.log_format);
                kf_config_free(kw_options, &conf, &conf.props);
                return 2;
        }
        kf_log_set_json(!strcmp(conf.log_format, "json"));
        kf_log_limit_set((int)conf.log_limit, (int)conf.log_limit_s);
        if (conf.print_config) {
                rc = kf_config_print(stdout, kw_options, &conf, &conf.props, err, sizeof(err));
                if (rc)
                        fprintf(stderr, "kinfer-worker: %s\n", err);
                kf_config_free(kw_options, &conf, &conf.props);
                return rc ? 1 : 0;
        }
        /* A mistyped -X (flag or config file) stops it here, before it
         * connects anywhere; dlq.KEY and results.KEY are checked as KEY. */
        if (kf_kafka_props_check(&conf.props, prop_prefixes, err, sizeof(err))) {
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
        if (!kw_worker_closed(w)) {
                /* librdkafka still waits for the brokers on another thread:
                 * nothing of ours is left to finish, and destroying under
                 * it would block as long.  Leave now. */
                fflush(NULL);
                _exit(rc ? 1 : 0);
        }
        kw_worker_destroy(w);
        kf_config_free(kw_options, &conf, &conf.props);
        return rc ? 1 : 0;
}
