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

static const kf_opt_t get_opts[] = {KC_OPTS_CONN, {NULL}};

static const kf_opt_t wait_opts[] = {
    KC_OPTS_CONN,
    {"timeout", 0, NULL, KF_OPT_INT, O(timeout_s), 0, 30LL * 86400, "60", "S",
     "give up after S seconds in all (0 = never)"},
    {NULL},
};

/* Prints a result; returns 1 if it is not an ok result. */
static int print_result(json_t *res)
{
        const char *status = json_string_value(json_object_get(res, "status"));
        kc_print_json(res);
        return !status || strcmp(status, "ok");
}

static int get_or_wait(int argc, char **argv, int wait)
{
        kc_conf_t c = {0};
        const kf_opt_t *opts = wait ? wait_opts : get_opts;
        redisContext *r;
        int first, rc = KC_EXIT_OK;
        int64_t until;

        first = kc_parse(opts, &c, 0, argc, argv,
                         wait ? "wait [--timeout S] ID...\n\nWaits for each job's result "
                                "(no polling: BLPOP on its done list) and prints\nthem as "
                                "JSON lines.  Exit 1 if any job failed or timed out."
                              : "get ID...\n\nPrints the results of jobs as JSON lines.  Exit 1 "
                                "if any job has no result\nor an error result.");
        if (first >= argc) {
                kc_err("%s: give at least one job id", argv[0]);
                kf_config_free(opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        r     = kc_redis(&c);
        until = c.timeout_s ? kf_now_ms() + c.timeout_s * 1000 : 0;
        for (int i = first; i < argc; i++) {
                json_t *res;
                if (!job_name_valid(argv[i], strlen(argv[i]), JOB_ID_MAX)) {
                        kc_err("'%s' is not a valid job id", argv[i]);
                        rc = KC_EXIT_FAIL;
                        continue;
                }
                if (wait) {
                        int64_t left = until ? (until - kf_now_ms() + 999) / 1000 : 0;
                        res = kc_result_wait(r, &c, argv[i], until && left < 1 ? 1 : left);
                } else {
                        res = kc_result_json(r, &c, argv[i]);
                }
                if (!res) {
                        kc_err("job %s: %s", argv[i],
                               wait ? "no result before the timeout" : "no result (yet)");
                        rc = KC_EXIT_FAIL;
                        continue;
                }
                if (print_result(res))
                        rc = KC_EXIT_FAIL;
                json_decref(res);
        }
        redisFree(r);
        kf_config_free(opts, &c, NULL);
        return rc;
}

int kc_cmd_get(int argc, char **argv)
{
        return get_or_wait(argc, argv, 0);
}

int kc_cmd_wait(int argc, char **argv)
{
        return get_or_wait(argc, argv, 1);
}
