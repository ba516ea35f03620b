/* cmd_quota.c - `kinfer quota set|get|rm` and `kinfer usage`: a user's
 * limits and what they used, lifetime, in the current window and per model. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kf_keys.h"
#include "kf_quota.h"
#include "kf_util.h"
#include "kinfer.h"

#define O(f) offsetof(kc_conf_t, f)

static const kf_opt_t set_opts[] = {
    KC_OPTS_CONN,
    {"jobs", 0, NULL, KF_OPT_STR, O(q_jobs), 0, 0, NULL, "N|unlimited",
     "most ok jobs per window (0 blocks the user)"},
    {"rows", 0, NULL, KF_OPT_STR, O(q_rows), 0, 0, NULL, "N|unlimited", "most rows per window"},
    {"window", 0, NULL, KF_OPT_STR, O(q_window), 0, 0, NULL, "S",
     "window length in seconds, 1..31622400; windows are aligned to Unix time"},
    {NULL},
};

static const kf_opt_t show_opts[] = {
    KC_OPTS_CONN,
    {"json", 0, NULL, KF_OPT_BOOL, O(json), 0, 0, "0", NULL, "print one JSON object"},
    {"model", 'm', NULL, KF_OPT_STR, O(model), 0, 0, NULL, "NAME",
     "usage: only this model's counters"},
    {NULL},
};

static const kf_opt_t rm_opts[] = {KC_OPTS_CONN, {NULL}};

static const char *const counters[] = {"jobs", "rows", "flops", "errors", NULL};

/* Reads an optional limit flag: "unlimited" -> *unlimited (jobs and rows
 * only), else a value in the one grammar workers accept (kf_quota.h). */
static int parse_limit(kf_quota_field_t f, const char *v, int64_t *out, int *unlimited)
{
        char err[256];
        *unlimited = 0;
        if (!v)
                return 0;
        if (!strcasecmp(v, "unlimited") && f != KF_QUOTA_WINDOW) {
                *unlimited = 1;
                return 0;
        }
        if (kf_quota_parse(f, v, strlen(v), out, err, sizeof(err))) {
                kc_err("quota set: --%s: %s%s", kf_quota_field_names[f], err,
                       f != KF_QUOTA_WINDOW ? ", or 'unlimited'" : "");
                return -1;
        }
        return 0;
}

/* A key of the user's (kf_keys.h); name may be NULL. */
static void key_of(char *key, const kc_conf_t *c, kf_kind_t kind, const char *user,
                   const char *name)
{
        if (kf_user_key(key, c->prefix, user, kind, name) < 0) {
                kc_err("cannot build a key of user '%s'", user);
                exit(KC_EXIT_USAGE);
        }
}

static int user_arg(int first, int argc, char **argv, const char *what)
{
        if (first != argc - 1 || !job_name_valid(argv[first], strlen(argv[first]), JOB_USER_MAX)) {
                kc_err("%s: give exactly one user id (1..64 chars of [A-Za-z0-9._:-])", what);
                return -1;
        }
        return 0;
}

static int quota_set(int argc, char **argv)
{
        kc_conf_t c = {0};
        int64_t jobs = 0, rows = 0, window = 0;
        int ujobs, urows, uwin, rc = KC_EXIT_USAGE;
        char key[KF_KEY_MAX];
        redisContext *r;
        int first = kc_parse(set_opts, &c, 0, argc, argv,
                             "quota set USER [--jobs N|unlimited] [--rows N|unlimited] "
                             "[--window S]\n\nSets a user's limits per window.  A limit not "
                             "given is left as it is; 'unlimited'\nremoves it.  Users without "
                             "a limit get the workers' defaults (--quota-*).");
        if (user_arg(first, argc, argv, "quota set"))
                goto out;
        if (!c.q_jobs && !c.q_rows && !c.q_window) {
                kc_err("quota set: give at least one of --jobs, --rows, --window");
                goto out;
        }
        if (parse_limit(KF_QUOTA_JOBS, c.q_jobs, &jobs, &ujobs) ||
            parse_limit(KF_QUOTA_ROWS, c.q_rows, &rows, &urows) ||
            parse_limit(KF_QUOTA_WINDOW, c.q_window, &window, &uwin))
                goto out;
        r = kc_redis(&c);
        key_of(key, &c, KF_K_QUOTA, argv[first], NULL);
        /* One transaction: a reader never sees half of the new settings. */
        freeReplyObject(kc_redis_cmd(r, "MULTI"));
        if (c.q_jobs)
                freeReplyObject(ujobs ? kc_redis_cmd(r, "HDEL %s jobs", key)
                                      : kc_redis_cmd(r, "HSET %s jobs %lld", key, (long long)jobs));
        if (c.q_rows)
                freeReplyObject(urows ? kc_redis_cmd(r, "HDEL %s rows", key)
                                      : kc_redis_cmd(r, "HSET %s rows %lld", key, (long long)rows));
        if (c.q_window)
                freeReplyObject(kc_redis_cmd(r, "HSET %s window %lld", key, (long long)window));
        freeReplyObject(kc_redis_cmd(r, "EXEC"));
        redisFree(r);
        rc = KC_EXIT_OK;
out:
        kf_config_free(set_opts, &c, NULL);
        return rc;
}

static int quota_rm(int argc, char **argv)
{
        kc_conf_t c = {0};
        char key[KF_KEY_MAX];
        redisContext *r;
        int first = kc_parse(rm_opts, &c, 0, argc, argv,
                             "quota rm USER\n\nRemoves a user's limits: the workers' defaults "
                             "apply again.");
        if (user_arg(first, argc, argv, "quota rm")) {
                kf_config_free(rm_opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        r = kc_redis(&c);
        key_of(key, &c, KF_K_QUOTA, argv[first], NULL);
        freeReplyObject(kc_redis_cmd(r, "DEL %s", key));
        redisFree(r);
        kf_config_free(rm_opts, &c, NULL);
        return KC_EXIT_OK;
}

/* {counter: number} from an HMGET of the four counters, each field named
 * COUNTER plus suffix (":MODEL" in the per-model hash, "" elsewhere);
 * absent fields as 0. */
static json_t *read_counters_of(redisContext *r, const char *key, const char *suffix)
{
        redisReply *rep = kc_redis_cmd(r, "HMGET %s jobs%s rows%s flops%s errors%s", key, suffix,
                                       suffix, suffix, suffix);
        json_t *o = json_object();
        for (int i = 0; counters[i]; i++) {
                const redisReply *v = rep->element[i];
                json_object_set_new(
                    o, counters[i],
                    json_integer(v->type == REDIS_REPLY_STRING ? strtoll(v->str, NULL, 10) : 0));
        }
        freeReplyObject(rep);
        return o;
}

static json_t *read_counters(redisContext *r, const char *key)
{
        return read_counters_of(r, key, "");
}

/* The current window's counters, from where the last step left them. */
static json_t *read_window(redisContext *r, const kc_conf_t *c, const char *user,
                           const char *usage_key)
{
        redisReply *rep = kc_redis_cmd(r, "HMGET %s window_start window_s", usage_key);
        long long start = 0, len = 0, now = kf_now_ms() / 1000;
        json_t *o = NULL;
        if (rep->element[0]->type == REDIS_REPLY_STRING &&
            rep->element[1]->type == REDIS_REPLY_STRING) {
                start = strtoll(rep->element[0]->str, NULL, 10);
                len = strtoll(rep->element[1]->str, NULL, 10);
        }
        freeReplyObject(rep);
        if (len > 0 && start + len > now) {
                char wkey[KF_KEY_MAX], name[24];
                snprintf(name, sizeof(name), "%lld", start);
                key_of(wkey, c, KF_K_WINDOW, user, name);
                o = read_counters(r, wkey);
                json_object_set_new(o, "start", json_integer(start));
                json_object_set_new(o, "length", json_integer(len));
                json_object_set_new(o, "resets_in", json_integer(start + len - now));
        }
        return o;
}

/* {model: {counter: number}} from the user's per-model hash, whose fields
 * are COUNTER:MODEL: the counter names hold no ':', so the model is all
 * after the first one, whatever it contains.  With --model, that model's. */
static json_t *read_models(redisContext *r, const kc_conf_t *c, const char *user)
{
        char key[KF_KEY_MAX];
        json_t *models = json_object();
        redisReply *rep;

        key_of(key, c, KF_K_MODELS, user, NULL);
        if (c->model) {
                char suffix[JOB_MODEL_MAX + 2];
                snprintf(suffix, sizeof(suffix), ":%s", c->model);
                json_object_set_new(models, c->model, read_counters_of(r, key, suffix));
                return models;
        }
        rep = kc_redis_cmd(r, "HGETALL %s", key);
        for (size_t i = 0; i + 1 < rep->elements; i += 2) {
                const char *f = rep->element[i]->str;
                const char *colon = strchr(f, ':');
                json_t *m;
                int k;
                if (!colon)
                        continue;
                for (k = 0; counters[k] && strncmp(f, counters[k], (size_t)(colon - f)); k++)
                        ;
                if (!counters[k] || strlen(counters[k]) != (size_t)(colon - f))
                        continue; /* not a field kinfer writes */
                if (!(m = json_object_get(models, colon + 1))) {
                        m = json_pack("{s:i,s:i,s:i,s:i}", "jobs", 0, "rows", 0, "flops", 0,
                                      "errors", 0);
                        json_object_set_new(models, colon + 1, m);
                }
                json_object_set_new(m, counters[k],
                                    json_integer(strtoll(rep->element[i + 1]->str, NULL, 10)));
        }
        freeReplyObject(rep);
        return models;
}

static void print_counters(const char *title, json_t *o)
{
        printf("%-10s", title);
        for (int i = 0; counters[i]; i++)
                printf(" %s %lld", counters[i],
                       (long long)json_integer_value(json_object_get(o, counters[i])));
        putchar('\n');
}

static int quota_get(int argc, char **argv)
{
        static const char *const limits[] = {"jobs", "rows", "window", NULL};
        kc_conf_t c = {0};
        char key[KF_KEY_MAX];
        redisContext *r;
        redisReply *rep;
        json_t *o, *q, *win;
        int first = kc_parse(show_opts, &c, 0, argc, argv,
                             "quota get [--json] USER\n\nPrints a user's limits and the current "
                             "window's usage.");
        if (user_arg(first, argc, argv, "quota get")) {
                kf_config_free(show_opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        r = kc_redis(&c);
        key_of(key, &c, KF_K_QUOTA, argv[first], NULL);
        rep = kc_redis_cmd(r, "HMGET %s jobs rows window", key);
        q = json_object();
        for (int i = 0; limits[i]; i++) {
                const redisReply *v = rep->element[i];
                int64_t n;
                if (v->type != REDIS_REPLY_STRING)
                        json_object_set_new(q, limits[i], json_null());
                else if (kf_quota_parse((kf_quota_field_t)i, v->str, v->len, &n, NULL, 0) == 0)
                        json_object_set_new(q, limits[i], json_integer(n));
                else /* workers treat it as unset and log it */
                        json_object_set_new(q, limits[i], json_string(v->str));
        }
        freeReplyObject(rep);
        key_of(key, &c, KF_K_USAGE, argv[first], NULL);
        win = read_window(r, &c, argv[first], key);
        o = json_pack("{s:s,s:o,s:o}", "user", argv[first], "quota", q, "window",
                      win ? win : json_null());
        if (c.json) {
                kc_print_json(o);
        } else {
                printf("user       %s\n", argv[first]);
                for (int i = 0; limits[i]; i++) {
                        json_t *v = json_object_get(q, limits[i]);
                        if (json_is_null(v))
                                printf("%-10s (not set: the workers' default)\n", limits[i]);
                        else if (json_is_string(v))
                                printf("%-10s INVALID '%s' (workers use their default)\n",
                                       limits[i], json_string_value(v));
                        else
                                printf("%-10s %lld%s\n", limits[i],
                                       (long long)json_integer_value(v),
                                       i == 2 ? " s" : " per window");
                }
                if (win) {
                        print_counters("window", win);
                        printf("%-10s %lld s\n", "resets in",
                               (long long)json_integer_value(json_object_get(win, "resets_in")));
                } else {
                        printf("window     no usage in the current window\n");
                }
        }
        json_decref(o);
        redisFree(r);
        kf_config_free(show_opts, &c, NULL);
        return KC_EXIT_OK;
}

int kc_cmd_quota(int argc, char **argv)
{
        if (argc >= 2 && !strcmp(argv[1], "set"))
                return quota_set(argc - 1, argv + 1);
        if (argc >= 2 && !strcmp(argv[1], "get"))
                return quota_get(argc - 1, argv + 1);
        if (argc >= 2 && !strcmp(argv[1], "rm"))
                return quota_rm(argc - 1, argv + 1);
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
                printf("Usage: kinfer quota SUBCOMMAND USER [OPTION]... (each takes --help)\n\n"
                       "  set   give USER a quota: --jobs N, --rows N per --window S\n"
                       "  get   show USER's quota\n"
                       "  rm    remove USER's quota (the workers' defaults apply)\n");
                return KC_EXIT_OK;
        }
        kc_err("quota: expected a subcommand: set, get or rm; see kinfer quota --help");
        return KC_EXIT_USAGE;
}

int kc_cmd_usage(int argc, char **argv)
{
        kc_conf_t c = {0};
        char key[KF_KEY_MAX];
        redisContext *r;
        json_t *o, *models, *win;
        int first = kc_parse(show_opts, &c, 0, argc, argv,
                             "usage [--json] [--model NAME] USER\n\nPrints a user's usage: "
                             "lifetime, the current quota window, and per model.");
        if (user_arg(first, argc, argv, "usage") ||
            (c.model && !job_name_valid(c.model, strlen(c.model), JOB_MODEL_MAX))) {
                kf_config_free(show_opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        r = kc_redis(&c);
        key_of(key, &c, KF_K_USAGE, argv[first], NULL);
        models = read_models(r, &c, argv[first]);
        o = read_counters(r, key);
        win = read_window(r, &c, argv[first], key);
        json_object_set_new(o, "user", json_string(argv[first]));
        json_object_set_new(o, "window", win ? win : json_null());
        json_object_set_new(o, "models", models);
        if (c.json) {
                kc_print_json(o);
        } else {
                const char *name;
                json_t *m;
                print_counters("lifetime", o);
                if (win)
                        print_counters("window", win);
                json_object_foreach(models, name, m)
                {
                        char title[80];
                        snprintf(title, sizeof(title), "model %s", name);
                        print_counters(title, m);
                }
        }
        json_decref(o);
        redisFree(r);
        kf_config_free(show_opts, &c, NULL);
        return KC_EXIT_OK;
}
