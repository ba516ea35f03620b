/* kf_redact.h - keeps secrets out of every message kinfer prints.
 *
 * Two kinds of secret reach kinfer: the password of a Redis URL
 * (KINFER_REDIS, --redis) and the values of secret librdkafka properties
 * (-X sasl.password=..., ssl.key.password, ...).  Both are redacted twice:
 *
 * 1. Where kinfer builds a message from them, it prints the redacted form:
 *    kf_redact_url() for URLs, "***" for the value of any property that
 *    kf_prop_is_secret() names.
 * 2. Every such value is registered when it is parsed (kf_redis_url_parse,
 *    kf_props_add call kf_secret_add), and every line kf_log writes
 *    (librdkafka's own log lines go through it too, see kf_kafka.h) and the
 *    CLI's error lines are scrubbed of registered values
 *    (kf_redact_secrets).  This catches text kinfer does not build, such
 *    as librdkafka quoting a property value in a log line. */
#ifndef KF_REDACT_H
#define KF_REDACT_H

#include <stddef.h>

#define KF_REDACTED "***"

/* Registered secrets shorter than this are not scrubbed from free text:
 * replacing every "ab" would garble every line.  (Redaction of URLs and
 * properties, rule 1, does not depend on the length.) */
#define KF_SECRET_MIN 4

/* How many distinct secrets a process registers; more are ignored. */
#define KF_SECRETS_MAX 32

/* 1 if a librdkafka property of this name holds a secret: its name
 * contains "password", "passwd", "secret", "key", "token" or "credential"
 * (any case), or it is "sasl.oauthbearer.config" (which holds client
 * secrets).  Errs on the side of hiding: ssl.key.location is hidden too. */
int kf_prop_is_secret(const char *name);

/* Copies url into buf (size bytes, truncated, always terminated) with the
 * password replaced by three stars: redis://user:PASS@host:6379/0 becomes
 * "redis://user:" "***" "@host:6379/0", and a password without a user
 * "redis://" "***" "@host".  Works on any text, well-formed or not,
 * since it is used for errors about bad URLs: the user:password part is
 * everything after "://" (or from the start, without a scheme) up to the
 * last '@'.  Text without '@' is copied as is.  Returns buf. */
const char *kf_redact_url(const char *url, char *buf, size_t size);

/* Copies src into dst (size bytes, truncated, always terminated) with each
 * occurrence of secret replaced by "***"; secret NULL or "" copies as is.
 * For text from elsewhere (a librdkafka or Redis error) that may quote the
 * value kinfer gave it.  Returns dst. */
char *kf_redact_value(char *dst, size_t size, const char *src, const char *secret);

/* Registers a secret: from now on kf_redact_secrets() replaces it.  Values
 * shorter than KF_SECRET_MIN are skipped, and so are those past
 * KF_SECRETS_MAX.  The value is copied and kept until exit.  Returns 0 if
 * it is registered (or was already), -1 if not.  Any thread. */
int kf_secret_add(const char *secret);

/* Replaces every registered secret in s, in place ("***" is never longer
 * than a registered secret, so s never grows).  Any thread; takes no lock. */
void kf_redact_secrets(char *s);

#endif
