/* kf_kafka.h - librdkafka configuration shared by the worker and the CLI. */
#ifndef KF_KAFKA_H
#define KF_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "kf_config.h"

/* Builds a configuration with bootstrap.servers = brokers, then the given
 * defaults (NULL-terminated key, value pairs), then the user's -X
 * properties, which override both.  Returns a conf the caller owns (pass it
 * to rd_kafka_new, which takes ownership on success) or NULL with errstr
 * naming the property librdkafka refused (with its value, unless the
 * property is unknown or a secret: kf_prop_is_secret).  librdkafka's log
 * lines go to kf_log (one line format, secrets scrubbed); a program may
 * set its own log callback after this. */
rd_kafka_conf_t *kf_kafka_conf_new(const char *brokers, const char *const *defaults,
                                   const kf_props_t *props, char *errstr, size_t errstr_size);

/* Checks each -X property against librdkafka's table without creating a
 * client: a property named with one of strip_prefixes (a NULL-terminated
 * list, e.g. {"dlq.", "results.", NULL}; or NULL) is checked without it.  Returns 0, or -1 with
 * errstr naming the first property refused, as kf_kafka_conf_new would (so a program can refuse a
 * typo at start, before it connects anywhere). */
int kf_kafka_props_check(const kf_props_t *props, const char *const *strip_prefixes, char *errstr,
                         size_t errstr_size);

/* Whether a client-wide error (an error callback's err and reason) says
 * that Kafka refuses this client's security settings, which waiting cannot
 * mend: refused SASL credentials, a failed TLS handshake (the broker's
 * certificate not trusted), or, with mutual TLS, the broker refusing the
 * client's certificate (a TLS alert about it: missing, unknown CA, expired,
 * ...; librdkafka reports it as a transport error).  Returns NULL if not,
 * else what happened ("refused the credentials", "TLS handshake failed",
 * "refused the client certificate") with *check set to the settings to
 * look at.  Both static strings. */
const char *kf_kafka_refusal(int err, const char *reason, const char **check);

#endif
