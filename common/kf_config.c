/* kf_config.c - applies a kf_opt_t table to defaults, environment and argv.
 * See kf_config.h for the precedence rules. */
#include "kf_config.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kf_log.h"
#include "kf_redact.h"
#include "kf_util.h"

#define KF_MAX_OPTS 96

static int opt_set(const kf_opt_t *o, void *conf, const char *val, const char *origin,
                   char *errstr, size_t errstr_size)
{
        char *field = (char *)conf + o->offset;
        int64_t v;

        switch (o->type) {
        case KF_OPT_STR: {
                char **sp = (char **)field;
                char *dup = strdup(val);
                if (!dup)
                        return kf_errf(errstr, errstr_size, "out of memory");
                free(*sp);
                *sp = dup;
                return 0;
        }
        case KF_OPT_INT:
                if (kf_parse_i64(val, o->min, o->max, &v))
                        return kf_errf(errstr, errstr_size,
                                       "%s: '%s' is not a whole number in [%lld, %lld]", origin,
                                       val, (long long)o->min, (long long)o->max);
                *(int64_t *)field = v;
                return 0;
        case KF_OPT_BOOL:
                if (!strcmp(val, "1") || !strcasecmp(val, "true") || !strcasecmp(val, "yes"))
                        *(int *)field = 1;
                else if (!strcmp(val, "0") || !strcasecmp(val, "false") ||
                         !strcasecmp(val, "no"))
                        *(int *)field = 0;
                else
                        return kf_errf(errstr, errstr_size,
                                       "%s: '%s' is not a boolean (1/0, true/false, yes/no)",
                                       origin, val);
                return 0;
        case KF_OPT_LOG: {
                int lvl = kf_log_level_parse(val);
                if (lvl < 0)
                        return kf_errf(errstr, errstr_size,
                                       "%s: '%s' is not a log level (error, warn, info, debug)",
                                       origin, val);
                *(int *)field = lvl;
                return 0;
        }
        }
        return kf_errf(errstr, errstr_size, "%s: unknown option type", origin);
}

int kf_props_add(kf_props_t *props, const char *kv, char *errstr, size_t errstr_size)
{
        const char *eq = strchr(kv, '=');
        char **nk, **nv;

        if (!eq || eq == kv) {
                /* Only the name: without '=' the rest may be a value typed
                 * after another separator ("sasl.password:hunter2"). */
                size_t nl = strspn(kv, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                       "0123456789._-");
                return kf_errf(errstr, errstr_size,
                               "-X '%.*s%s': expected key=value (a librdkafka property)",
                               (int)nl, kv, kv[nl] ? "..." : "");
        }
        nk = realloc(props->keys, sizeof(*nk) * (size_t)(props->cnt + 1));
        if (!nk)
                return kf_errf(errstr, errstr_size, "out of memory");
        props->keys = nk;
        nv          = realloc(props->vals, sizeof(*nv) * (size_t)(props->cnt + 1));
        if (!nv)
                return kf_errf(errstr, errstr_size, "out of memory");
        props->vals             = nv;
        props->keys[props->cnt] = strndup(kv, (size_t)(eq - kv));
        props->vals[props->cnt] = strdup(eq + 1);
        if (!props->keys[props->cnt] || !props->vals[props->cnt]) {
                free(props->keys[props->cnt]);
                free(props->vals[props->cnt]);
                return kf_errf(errstr, errstr_size, "out of memory");
        }
        /* librdkafka may quote it in its own log lines: scrubbed there. */
        if (kf_prop_is_secret(props->keys[props->cnt]))
                kf_secret_add(props->vals[props->cnt]);
        props->cnt++;
        return 0;
}

int kf_config_parse(const kf_opt_t *opts, void *conf, kf_props_t *props, int argc, char **argv,
                    int *first_arg, char *errstr, size_t errstr_size)
{
        struct option lopts[KF_MAX_OPTS + 3];
        char sopts[KF_MAX_OPTS * 2 + 8];
        char origin[128];
        size_t si = 0;
        int n = 0, c, idx;

        /* 1. defaults, 2. environment */
        for (const kf_opt_t *o = opts; o->name; o++, n++) {
                const char *env = o->env ? getenv(o->env) : NULL;
                if (n >= KF_MAX_OPTS)
                        return kf_errf(errstr, errstr_size, "too many options");
                if (o->def && opt_set(o, conf, o->def, o->name, errstr, errstr_size))
                        return KF_CONFIG_ERR;
                if (env && *env) {
                        snprintf(origin, sizeof(origin), "environment variable %s", o->env);
                        if (opt_set(o, conf, env, origin, errstr, errstr_size))
                                return KF_CONFIG_ERR;
                }
                lopts[n].name    = o->name;
                lopts[n].has_arg = o->type == KF_OPT_BOOL ? optional_argument : required_argument;
                lopts[n].flag    = NULL;
                lopts[n].val     = 256 + n;
                if (o->short_flag) {
                        sopts[si++] = (char)o->short_flag;
                        if (o->type != KF_OPT_BOOL)
                                sopts[si++] = ':';
                }
        }
        lopts[n]     = (struct option){"help", no_argument, NULL, 'h'};
        lopts[n + 1] = (struct option){NULL, 0, NULL, 0};
        sopts[si++]  = 'h';
        if (props) {
                sopts[si++] = 'X';
                sopts[si++] = ':';
        }
        sopts[si] = '\0';

        /* 3. command line */
        optind = 1;
        opterr = 0;
        while ((c = getopt_long(argc, argv, sopts, lopts, &idx)) != -1) {
                const kf_opt_t *o = NULL;
                if (c == 'h')
                        return KF_CONFIG_HELP;
                if (c == 'X') {
                        if (kf_props_add(props, optarg, errstr, errstr_size))
                                return KF_CONFIG_ERR;
                        continue;
                }
                if (c >= 256 && c < 256 + n)
                        o = &opts[c - 256];
                else
                        for (const kf_opt_t *s = opts; s->name; s++)
                                if (s->short_flag && s->short_flag == c)
                                        o = s;
                if (!o) {
                        if (c == '?' && optopt)
                                return kf_errf(errstr, errstr_size,
                                               "unknown or incomplete option '-%c' (see --help)",
                                               optopt);
                        return kf_errf(errstr, errstr_size, "unknown option '%s' (see --help)",
                                       argv[optind - 1]);
                }
                snprintf(origin, sizeof(origin), "--%s", o->name);
                if (opt_set(o, conf, optarg ? optarg : "1", origin, errstr, errstr_size))
                        return KF_CONFIG_ERR;
        }
        if (first_arg)
                *first_arg = optind;
        else if (optind < argc)
                return kf_errf(errstr, errstr_size, "unexpected argument '%s' (see --help)",
                               argv[optind]);
        return KF_CONFIG_OK;
}

void kf_config_usage(FILE *fp, const kf_opt_t *opts)
{
        for (const kf_opt_t *o = opts; o->name; o++) {
                char flag[96];
                if (o->short_flag)
                        snprintf(flag, sizeof(flag), "-%c, --%s%s%s", o->short_flag, o->name,
                                 o->arg ? " " : "", o->arg ? o->arg : "");
                else
                        snprintf(flag, sizeof(flag), "    --%s%s%s", o->name, o->arg ? " " : "",
                                 o->arg ? o->arg : "");
                fprintf(fp, "  %-34s %s", flag, o->help);
                if (o->env)
                        fprintf(fp, " [env %s]", o->env);
                if (o->def && *o->def)
                        fprintf(fp, " (default %s)", o->def);
                fputc('\n', fp);
        }
        fprintf(fp, "  %-34s %s\n", "-h, --help", "show this help and exit");
}

void kf_config_free(const kf_opt_t *opts, void *conf, kf_props_t *props)
{
        for (const kf_opt_t *o = opts; o->name; o++) {
                if (o->type == KF_OPT_STR) {
                        char **sp = (char **)((char *)conf + o->offset);
                        free(*sp);
                        *sp = NULL;
                }
        }
        if (props)
                kf_props_free(props);
}

void kf_props_free(kf_props_t *props)
{
        for (int i = 0; i < props->cnt; i++) {
                free(props->keys[i]);
                free(props->vals[i]);
        }
        free(props->keys);
        free(props->vals);
        memset(props, 0, sizeof(*props));
}
