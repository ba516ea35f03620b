/* cli.c - what every kinfer subcommand shares: its error lines and its
 * option parsing (kinfer.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "kf_keys.h"
#include "kf_redact.h"
#include "kinfer.h"

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
