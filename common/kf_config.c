/* kf_config.c - applies a kf_opt_t table to defaults, environment and argv.
 * See kf_config.h for the precedence rules. */
#include "kf_config.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kf_log.h"
#include "kf_redact.h"
#include "kf_util.h"

#define KF_MAX_OPTS 96

static int opt_set(const kf_opt_t *o, void *conf, const char *val, const char *origin, char *errstr,
                   size_t errstr_size)
{
        char *field = (char *)conf + o->offset;
        int64_t v;

        switch (o->type) {
        case KF_OPT_CONFIG:
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
        case KF_OPT_ACTION:
                if (!strcmp(val, "1") || !strcasecmp(val, "true") || !strcasecmp(val, "yes"))
                        *(int *)field = 1;
                else if (!strcmp(val, "0") || !strcasecmp(val, "false") || !strcasecmp(val, "no"))
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
                               "-X '%.*s%s': expected key=value (a librdkafka property)", (int)nl,
                               kv, kv[nl] ? "..." : "");
        }
        nk = realloc(props->keys, sizeof(*nk) * (size_t)(props->cnt + 1));
        if (!nk)
                return kf_errf(errstr, errstr_size, "out of memory");
        props->keys = nk;
        nv = realloc(props->vals, sizeof(*nv) * (size_t)(props->cnt + 1));
        if (!nv)
                return kf_errf(errstr, errstr_size, "out of memory");
        props->vals = nv;
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

/* The config file named on the command line (--NAME FILE, --NAME=FILE or
 * -C FILE for the KF_OPT_CONFIG option), else by its environment
 * variable; NULL if none. */
static const char *config_path(const kf_opt_t *co, int argc, char **argv)
{
        size_t nl = strlen(co->name);
        const char *path = NULL;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (!strcmp(a, "--"))
                        break;
                if (a[0] == '-' && a[1] == '-' && !strncmp(a + 2, co->name, nl)) {
                        if (a[2 + nl] == '=')
                                path = a + 3 + nl;
                        else if (!a[2 + nl] && i + 1 < argc)
                                path = argv[++i];
                } else if (co->short_flag && a[0] == '-' && a[1] == co->short_flag) {
                        if (a[2])
                                path = a + 2;
                        else if (i + 1 < argc)
                                path = argv[++i];
                }
        }
        if (!path && co->env && getenv(co->env) && *getenv(co->env))
                path = getenv(co->env);
        return path;
}

/* Applies the config file at path (see kf_config.h). */
static int config_load(const kf_opt_t *opts, void *conf, kf_props_t *props, const char *path,
                       char *errstr, size_t errstr_size)
{
        json_error_t jerr;
        json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr), *val;
        const char *key;
        char origin[384], text[64];
        int rc = -1;

        if (!root && jerr.line < 1) /* not JSON's fault: the file itself */
                return kf_errf(errstr, errstr_size, "config file %s: %s", path, jerr.text);
        if (!root)
                return kf_errf(errstr, errstr_size, "config file %s: line %d: %s", path, jerr.line,
                               jerr.text);
        if (!json_is_object(root)) {
                kf_errf(errstr, errstr_size, "config file %s: expected a JSON object", path);
                goto out;
        }
        json_object_foreach(root, key, val)
        {
                const kf_opt_t *o = NULL;
                const char *v = text;
                snprintf(origin, sizeof(origin), "config file %s: key \"%.64s\"", path, key);
                if (!props && !strcmp(key, "kafka"))
                        continue; /* one file for every subcommand; this one needs no Kafka */
                if (props && !strcmp(key, "kafka")) {
                        const char *pk;
                        json_t *pv;
                        if (!json_is_object(val)) {
                                kf_errf(errstr, errstr_size,
                                        "%s: expected an object of librdkafka properties", origin);
                                goto out;
                        }
                        json_object_foreach(val, pk, pv)
                        {
                                char kv[1024];
                                if (!json_is_string(pv)) {
                                        kf_errf(errstr, errstr_size,
                                                "%s: property \"%.64s\": expected a string", origin,
                                                pk);
                                        goto out;
                                }
                                if ((size_t)snprintf(kv, sizeof(kv), "%s=%s", pk,
                                                     json_string_value(pv)) >= sizeof(kv)) {
                                        kf_errf(errstr, errstr_size,
                                                "%s: property \"%.64s\" too long", origin, pk);
                                        goto out;
                                }
                                if (kf_props_add(props, kv, errstr, errstr_size))
                                        goto out;
                        }
                        continue;
                }
                for (const kf_opt_t *s = opts; s->name && !o; s++)
                        if (!strcmp(s->name, key) && s->type != KF_OPT_CONFIG &&
                            s->type != KF_OPT_ACTION)
                                o = s;
                if (!o) {
                        kf_errf(errstr, errstr_size,
                                "%s: unknown key (the keys are the long "
                                "option names of --help%s)",
                                origin, props ? ", and \"kafka\"" : "");
                        goto out;
                }
                if (json_is_null(val) && o->type == KF_OPT_STR) {
                        char **sp = (char **)((char *)conf + o->offset);
                        free(*sp);
                        *sp = NULL;
                        continue;
                }
                if (json_is_string(val))
                        v = json_string_value(val);
                else if (json_is_integer(val))
                        snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT,
                                 json_integer_value(val));
                else if (json_is_boolean(val))
                        snprintf(text, sizeof(text), "%s", json_is_true(val) ? "1" : "0");
                else {
                        kf_errf(errstr, errstr_size,
                                "%s: expected a string, a whole number or a boolean", origin);
                        goto out;
                }
                if (opt_set(o, conf, v, origin, errstr, errstr_size))
                        goto out;
        }
        rc = 0;
out:
        json_decref(root);
        return rc;
}

int kf_config_parse(const kf_opt_t *opts, void *conf, kf_props_t *props, int argc, char **argv,
                    int *first_arg, char *errstr, size_t errstr_size)
{
        struct option lopts[KF_MAX_OPTS + 3];
        char sopts[KF_MAX_OPTS * 2 + 8];
        char origin[128];
        size_t si = 0;
        int n = 0, c, idx;

        /* 1. defaults, 2. the config file, 3. environment */
        for (const kf_opt_t *o = opts; o->name; o++)
                if (o->def && opt_set(o, conf, o->def, o->name, errstr, errstr_size))
                        return KF_CONFIG_ERR;
        for (const kf_opt_t *o = opts; o->name; o++) {
                const char *path = o->type == KF_OPT_CONFIG ? config_path(o, argc, argv) : NULL;
                if (path && config_load(opts, conf, props, path, errstr, errstr_size))
                        return KF_CONFIG_ERR;
        }
        for (const kf_opt_t *o = opts; o->name; o++, n++) {
                const char *env = o->env ? getenv(o->env) : NULL;
                if (n >= KF_MAX_OPTS)
                        return kf_errf(errstr, errstr_size, "too many options");
                if (env && *env) {
                        snprintf(origin, sizeof(origin), "environment variable %s", o->env);
                        if (opt_set(o, conf, env, origin, errstr, errstr_size))
                                return KF_CONFIG_ERR;
                }
                lopts[n].name = o->name;
                lopts[n].has_arg = o->type == KF_OPT_BOOL || o->type == KF_OPT_ACTION
                                       ? optional_argument
                                       : required_argument;
                lopts[n].flag = NULL;
                lopts[n].val = 256 + n;
                if (o->short_flag) {
                        sopts[si++] = (char)o->short_flag;
                        if (o->type != KF_OPT_BOOL && o->type != KF_OPT_ACTION)
                                sopts[si++] = ':';
                }
        }
        lopts[n] = (struct option){"help", no_argument, NULL, 'h'};
        lopts[n + 1] = (struct option){NULL, 0, NULL, 0};
        sopts[si++] = 'h';
        if (props) {
                sopts[si++] = 'X';
                sopts[si++] = ':';
        }
        sopts[si] = '\0';

        /* 4. command line (the config file's option is set again: harmless) */
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

/* A string value as it may be shown: URL passwords and registered secrets
 * masked. */
static json_t *config_shown(const char *v)
{
        char buf[2048];
        kf_redact_url(v, buf, sizeof(buf));
        kf_redact_secrets(buf);
        return json_string(buf);
}

int kf_config_print(FILE *fp, const kf_opt_t *opts, const void *conf, const kf_props_t *props,
                    char *errstr, size_t errstr_size)
{
        json_t *root = json_object(), *kafka = json_object();
        int rc = -1;

        if (!root || !kafka)
                goto oom;
        for (const kf_opt_t *o = opts; o->name; o++) {
                const char *field = (const char *)conf + o->offset;
                json_t *v = NULL;
                switch (o->type) {
                case KF_OPT_CONFIG:
                case KF_OPT_ACTION:
                        continue;
                case KF_OPT_STR:
                        v = *(char *const *)field ? config_shown(*(char *const *)field)
                                                  : json_null();
                        break;
                case KF_OPT_INT:
                        v = json_integer(*(const int64_t *)field);
                        break;
                case KF_OPT_BOOL:
                        v = json_boolean(*(const int *)field);
                        break;
                case KF_OPT_LOG:
                        v = json_string(kf_log_level_name((kf_log_level_t) * (const int *)field));
                        break;
                }
                if (!v || json_object_set_new(root, o->name, v))
                        goto oom;
        }
        for (int i = 0; props && i < props->cnt; i++) {
                json_t *v = kf_prop_is_secret(props->keys[i]) ? json_string(KF_REDACTED)
                                                              : config_shown(props->vals[i]);
                if (!v || json_object_set_new(kafka, props->keys[i], v))
                        goto oom;
        }
        if (props && json_object_set(root, "kafka", kafka))
                goto oom;
        if (json_dumpf(root, fp, JSON_INDENT(2) | JSON_PRESERVE_ORDER) || fputc('\n', fp) == EOF) {
                kf_errf(errstr, errstr_size, "cannot write the configuration");
                goto out;
        }
        rc = 0;
        goto out;
oom:
        kf_errf(errstr, errstr_size, "out of memory");
out:
        json_decref(root);
        json_decref(kafka);
        return rc;
}

void kf_config_free(const kf_opt_t *opts, void *conf, kf_props_t *props)
{
        for (const kf_opt_t *o = opts; o->name; o++) {
                if (o->type == KF_OPT_STR || o->type == KF_OPT_CONFIG) {
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
