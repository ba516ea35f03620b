/* main.c - `kinfer`, the command-line client: dispatches a subcommand.
 * Subcommands live in cmd_*.c; shared helpers in result_json.c, input.c. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_keys.h"
#include "kf_redact.h"
#include "kinfer.h"

static const struct {
        const char *name;
        int (*fn)(int, char **);
        const char *what;
} cmds[] = {
    {"submit", kc_cmd_submit, "submit jobs (rows from arguments, JSON lines or CSV); --wait for results"},
    {"get", kc_cmd_get, "print the results of jobs that are done"},
    {"wait", kc_cmd_wait, "wait for jobs' results and print them"},
    {"usage", kc_cmd_usage, "print a user's usage: lifetime, current window, per model"},
    {"quota", kc_cmd_quota, "set, show or remove a user's quota"},
    {"model", kc_cmd_model, "model files (init, build, inspect) and the registry (push, list, "
                            "show, activate, rollback, rm)"},
    {"bench", kc_cmd_bench, "load generator: drain/open-loop throughput and latency, compute limit"},
};

static void usage(FILE *fp)
{
        fprintf(fp, "Usage: kinfer COMMAND [OPTION]... [ARG]...\n\nCommands:\n");
        for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
                fprintf(fp, "  %-8s %s\n", cmds[i].name, cmds[i].what);
        fprintf(fp, "\n'kinfer COMMAND --help' shows a command's options.  Connection settings\n"
                    "come from KINFER_BROKERS, KINFER_REDIS, KINFER_TOPIC, KINFER_PREFIX or\n"
                    "flags.  The wire contract is in docs/protocol.md.\n");
}

int main(int argc, char **argv)
{
        /* hiredis 0.14 writes without MSG_NOSIGNAL. */
        signal(SIGPIPE, SIG_IGN);
        kf_log_init("kinfer", KF_LOG_WARN);
        if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
                usage(argc < 2 ? stderr : stdout);
                return argc < 2 ? KC_EXIT_USAGE : KC_EXIT_OK;
        }
        for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
                if (!strcmp(argv[1], cmds[i].name))
                        return cmds[i].fn(argc - 1, argv + 1);
        kc_err("unknown command '%s' (see kinfer --help)", argv[1]);
        return KC_EXIT_USAGE;
}

void kc_err(const char *fmt, ...)
{
        char line[2048];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        /* Like kf_log's lines: a message quoting a server's reply or a
         * librdkafka error must not show a registered secret. */
        kf_redact_secrets(line);
        fprintf(stderr, "kinfer: %s\n", line);
}

int kc_parse(const kf_opt_t *opts, kc_conf_t *conf, int with_props, int argc, char **argv,
             const char *synopsis)
{
        char err[512];
        int first = 0;
        int rc = kf_config_parse(opts, conf, with_props ? &conf->props : NULL, argc, argv, &first,
                                 err, sizeof(err));
        if (rc == KF_CONFIG_HELP) {
                printf("Usage: kinfer %s\n\n", synopsis);
                kf_config_usage(stdout, opts);
                if (with_props)
                        printf("  %-34s %s\n", "-X key=value", "set a librdkafka property");
                exit(KC_EXIT_OK);
        }
        if (rc != KF_CONFIG_OK) {
                kc_err("%s %s", argv[0], err);
                exit(KC_EXIT_USAGE);
        }
        /* Every subcommand that names keys has --prefix: one check for all. */
        if (conf->prefix && kf_prefix_valid(conf->prefix, err, sizeof(err))) {
                kc_err("%s --prefix: %s", argv[0], err);
                exit(KC_EXIT_USAGE);
        }
        return first;
}
