/* cmd_result.c - `kinfer get` and `kinfer wait`: read the results workers
 * wrote to Redis. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_util.h"
#include "kinfer.h"

#define O(f) offsetof(kc_conf_t, f)

#define KC_OPT_USER                                                                                \
        {                                                                                          \
                "user", 'u', "KINFER_USER", KF_OPT_STR, O(user), 0, 0, NULL, "ID",                 \
                    "whose jobs (results are kept per user; required)"                             \
        }

static const kf_opt_t get_opts[] = {KC_OPTS_CONN, KC_OPT_USER, {NULL}};

static const kf_opt_t wait_opts[] = {
    KC_OPTS_CONN,
    KC_OPT_USER,
    {"inbox", 0, NULL, KF_OPT_STR, O(inbox), 0, 0, NULL, "NAME",
     "the inbox the jobs announce themselves on (default: the one `kinfer submit` gave "
     "them, read from their ids)"},
    {"timeout", 0, NULL, KF_OPT_INT, O(timeout_s), 0, 30LL * 86400, "60", "S",
     "give up after S seconds in all (0 = never)"},
    {NULL},
};

static int get_or_wait(int argc, char **argv, int wait)
{
        kc_conf_t c = {0};
        const kf_opt_t *opts = wait ? wait_opts : get_opts;
        kc_printer_t p = {NULL, KC_EXIT_OK};
        char inbox[JOB_INBOX_MAX + 1];
        redisContext *r;
        int first;

        first = kc_parse(opts, &c, 0, argc, argv,
                         wait ? "wait --user ID [--inbox NAME] [--timeout S] JOB_ID...\n\nWaits "
                                "for each job's result (BLPOP on the jobs' inbox, no polling)\nand "
                                "prints them as JSON lines, in the order given.  Exit 1 if any\n"
                                "job failed or timed out."
                              : "get --user ID JOB_ID...\n\nPrints the results of jobs as JSON "
                                "lines.  Exit 1 if any job has no result\nor an error result.");
        if (first >= argc || !c.user) {
                kc_err("%s: give --user and at least one job id", argv[0]);
                kf_config_free(opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        if (!job_name_valid(c.user, strlen(c.user), JOB_USER_MAX) ||
            (c.inbox && !job_name_valid(c.inbox, strlen(c.inbox), JOB_INBOX_MAX))) {
                kc_err("%s: --user and --inbox must be 1..64 chars of [A-Za-z0-9._:-]", argv[0]);
                kf_config_free(opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        for (int i = first; i < argc; i++)
                if (!job_name_valid(argv[i], strlen(argv[i]), JOB_ID_MAX)) {
                        kc_err("'%s' is not a valid job id (1..128 chars of [A-Za-z0-9._:-])",
                               argv[i]);
                        kf_config_free(opts, &c, NULL);
                        return KC_EXIT_USAGE;
                }
        r = kc_redis(&c);
        p.ids = argv + first;
        if (wait) {
                const char *ib = c.inbox;
                if (!ib && kc_inbox_from_id(argv[first], inbox) == 0)
                        ib = inbox;
                kc_results_wait(r, &c, c.user, ib, argv + first, (size_t)(argc - first),
                                c.timeout_s, kc_print_result, &p);
        } else {
                for (int i = first; i < argc; i++) {
                        json_t *res = kc_result_json(r, &c, c.user, argv[i]);
                        if (!res) {
                                kc_err("job %s of user %s: no result (yet)", argv[i], c.user);
                                p.rc = KC_EXIT_FAIL;
                                continue;
                        }
                        kc_print_result((size_t)(i - first), res, &p);
                        json_decref(res);
                }
        }
        redisFree(r);
        kf_config_free(opts, &c, NULL);
        return p.rc;
}

int kc_cmd_get(int argc, char **argv)
{
        return get_or_wait(argc, argv, 0);
}

int kc_cmd_wait(int argc, char **argv)
{
        return get_or_wait(argc, argv, 1);
}
