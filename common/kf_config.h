/* kf_config.h - table-driven configuration: flags, environment, defaults.
 *
 * A program describes its settings once, as an array of kf_opt_t (name,
 * type, bounds, default, environment variable, help), the way redis lists
 * its static_configs[].  kf_config_parse() then applies, in order of
 * increasing precedence: the default, the config file (if the table has a
 * KF_OPT_CONFIG option and it is given), the environment variable, the
 * command-line flag.  Every value goes through the same validator, so a bad
 * KINFER_* variable or config key is refused with the same message as a
 * bad flag, naming where it came from.
 *
 * The config file is one JSON object whose keys are the options' long
 * names ("brokers", "batch-max-jobs"), with strings, whole numbers or
 * booleans as values (null: a string option unset), and "kafka":
 * {property: value} for -X properties (ignored by a program that takes
 * none, so one file serves every subcommand of the CLI).
 * An unknown key is an error.  kf_config_print writes the effective
 * configuration in the same format, secrets masked, so its output can be
 * a config file (with the secrets filled in).
 * librdkafka properties pass through untouched as `-X key=value` (like kcat).
 * Not thread-safe: parse once in main() before starting threads. */
#ifndef KF_CONFIG_H
#define KF_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
        KF_OPT_STR,    /* char * (malloc'd copy, freed by kf_config_free); NULL if no default */
        KF_OPT_INT,    /* int64_t within [min, max] */
        KF_OPT_BOOL,   /* int: flag alone sets 1; env/"=" accepts 1/0/true/false/yes/no */
        KF_OPT_LOG,    /* int: a kf_log level name (error|warn|info|debug) */
        KF_OPT_CONFIG, /* char *: a config file, read at its precedence (see above) */
        KF_OPT_ACTION, /* int: a flag asking for something else than running (--print-config):
                        * like KF_OPT_BOOL, but neither in config files nor printed */
} kf_opt_type_t;

typedef struct kf_opt_s {
        const char *name; /* long flag without "--", e.g. "brokers" */
        int short_flag;   /* single-char flag or 0 */
        const char *env;  /* environment variable or NULL */
        kf_opt_type_t type;
        size_t offset;    /* offsetof(program config struct, field) */
        int64_t min, max; /* KF_OPT_INT bounds */
        const char *def;  /* default, as text; parsed like user input; NULL = none */
        const char *arg;  /* argument name shown in --help, e.g. "URL" */
        const char *help; /* one line */
} kf_opt_t;

/* librdkafka properties collected from -X key=value, in order. */
typedef struct kf_props_s {
        int cnt;
        char **keys, **vals; /* owned */
} kf_props_t;

/* Return values of kf_config_parse. */
#define KF_CONFIG_OK   0
#define KF_CONFIG_HELP 1  /* --help was given: print usage and exit 0 */
#define KF_CONFIG_ERR  -1 /* errstr names the flag or variable and the problem */

/* Applies defaults, environment and argv (getopt_long, permuting: positional
 * arguments are collected after the options and returned via *first_arg as
 * an index into argv).  conf points to the program's struct; opts ends with
 * an entry whose name is NULL.  props may be NULL if -X is not accepted. */
int kf_config_parse(const kf_opt_t *opts, void *conf, kf_props_t *props, int argc, char **argv,
                    int *first_arg, char *errstr, size_t errstr_size);

/* Prints one line per option: flag, argument, help, [env VAR] (default X). */
void kf_config_usage(FILE *fp, const kf_opt_t *opts);

/* Writes the effective configuration as a JSON object (see above): every
 * option but KF_OPT_CONFIG ones, then "kafka" with the -X properties.  A
 * secret is never written: URL passwords become "***" (kf_redact_url), so
 * do the values of secret properties (kf_prop_is_secret) and any
 * registered secret (kf_redact_secrets).  Returns 0, or -1 with errstr. */
int kf_config_print(FILE *fp, const kf_opt_t *opts, const void *conf, const kf_props_t *props,
                    char *errstr, size_t errstr_size);

/* Frees the strings kf_config_parse stored in conf and props. */
void kf_config_free(const kf_opt_t *opts, void *conf, kf_props_t *props);

/* Frees a property list (kf_config_free does this for the parsed one). */
void kf_props_free(kf_props_t *props);

/* Adds one "key=value" property; -1 with errstr if there is no '='.  The
 * value of a secret property (kf_prop_is_secret) is registered with
 * kf_secret_add, so no log line shows it. */
int kf_props_add(kf_props_t *props, const char *kv, char *errstr, size_t errstr_size);

#endif
