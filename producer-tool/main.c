/* main.c - `kinfer`, the command-line client: dispatches a subcommand.
 * Subcommands live in cmd_*.c; what they share in cli.c (errors, options),
 * result_json.c, input.c. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kinfer.h"

static const struct {
        const char *name;
        int (*fn)(int, char **);
        const char *what;
} cmds[] = {
    {"submit", kc_cmd_submit,
     "submit jobs (rows from arguments, JSON lines or CSV); --wait for results"},
    {"get", kc_cmd_get, "print the results of jobs that are done"},
    {"wait", kc_cmd_wait, "wait for jobs' results and print them"},
    {"usage", kc_cmd_usage, "print a user's usage: lifetime, current window, per model"},
    {"quota", kc_cmd_quota, "set, show or remove a user's quota"},
    {"model", kc_cmd_model,
     "model files (init, build, inspect) and the registry (push, list, "
     "show, activate, rollback, rm)"},
    {"tail", kc_cmd_tail, "print result messages of a result topic as JSON lines"},
    {"key", kc_cmd_key, "signing keys of a user: create, rotate, revoke, list"},
    {"bench", kc_cmd_bench,
     "load generator: drain/open-loop throughput and latency, compute limit"},
    {"top", kc_cmd_top, "live view of a running pool: jobs/s, errors, lag, workers, busiest users"},
};

static void usage(FILE *fp)
{
        fprintf(fp, "Usage: kinfer COMMAND [OPTION]... [ARG]...\n\nCommands:\n");
        for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
                fprintf(fp, "  %-8s %s\n", cmds[i].name, cmds[i].what);
        fprintf(fp, "\n'kinfer COMMAND --help' shows a command's options.  Connection settings\n"
                    "come from a config file (--config FILE or KINFER_CLI_CONFIG: where\n"
                    "passwords belong, see docs/security.md), KINFER_BROKERS, KINFER_REDIS,\n"
                    "KINFER_TOPIC, KINFER_PREFIX or flags.  The wire contract is in\n"
                    "docs/protocol.md.\n");
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
