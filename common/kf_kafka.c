/* kf_kafka.c - one place where kinfer's librdkafka defaults meet the user's
 * -X overrides, and where librdkafka's log lines join kinfer's. */
#include "kf_kafka.h"

#include <string.h>

#include "kf_log.h"
#include "kf_redact.h"
#include "kf_util.h"

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, char *errstr,
                    size_t errstr_size)
{
        char err[512], clean[512];
        rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, k, v, err, sizeof(err));

        if (res == RD_KAFKA_CONF_OK)
                return 0;
        /* An unknown name may be a secret's name mistyped (sasl.passwrod):
         * its value is never shown, and is not needed to fix the name. */
        if (res == RD_KAFKA_CONF_UNKNOWN)
                return kf_errf(errstr, errstr_size, "kafka property %s: %s", k, err);
        if (kf_prop_is_secret(k))
                return kf_errf(errstr, errstr_size, "kafka property %s=" KF_REDACTED ": %s", k,
                               kf_redact_value(clean, sizeof(clean), err, v));
        return kf_errf(errstr, errstr_size, "kafka property %s=%s: %s", k, v, err);
}

/* librdkafka's log lines, in kinfer's line format and through kf_log's
 * scrubbing: librdkafka quotes some property values in them (an unparsable
 * sasl.oauthbearer.config, for one).  Written whatever kinfer's log level:
 * librdkafka already filtered them by its own log_level and -X debug, as
 * when it printed them itself.  Any librdkafka thread calls this. */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
        /* syslog levels: 0-3 errors, 4 warning, 5 notice (CONFWARN and the
         * like), 6 info, 7 debug. */
        kf_log_level_t lvl = level <= 3   ? KF_LOG_ERROR
                             : level <= 5 ? KF_LOG_WARN
                             : level == 6 ? KF_LOG_INFO
                                          : KF_LOG_DEBUG;
        kf_log_write(lvl, "kafka %s %s: %s", rd_kafka_name(rk), fac, buf);
}

rd_kafka_conf_t *kf_kafka_conf_new(const char *brokers, const char *const *defaults,
                                   const kf_props_t *props, char *errstr, size_t errstr_size)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();

        rd_kafka_conf_set_log_cb(conf, kafka_log);
        if (conf_set(conf, "bootstrap.servers", brokers, errstr, errstr_size))
                goto err;
        for (int i = 0; defaults && defaults[i]; i += 2)
                if (conf_set(conf, defaults[i], defaults[i + 1], errstr, errstr_size))
                        goto err;
        for (int i = 0; props && i < props->cnt; i++)
                if (conf_set(conf, props->keys[i], props->vals[i], errstr, errstr_size))
                        goto err;
        return conf;
err:
        rd_kafka_conf_destroy(conf);
        return NULL;
}

int kf_kafka_props_check(const kf_props_t *props, const char *const *strip_prefixes, char *errstr,
                         size_t errstr_size)
{
        for (int i = 0; props && i < props->cnt; i++) {
                const char *k = props->keys[i];
                rd_kafka_conf_t *conf = rd_kafka_conf_new();
                int rc;
                for (int p = 0; strip_prefixes && strip_prefixes[p]; p++) {
                        size_t pl = strlen(strip_prefixes[p]);
                        if (!strncmp(k, strip_prefixes[p], pl)) {
                                k += pl;
                                break;
                        }
                }
                rc = conf_set(conf, k, props->vals[i], errstr, errstr_size);
                rd_kafka_conf_destroy(conf);
                if (rc)
                        return -1;
        }
        return 0;
}

const char *kf_kafka_refusal(int err, const char *reason, const char **check)
{
        /* OpenSSL's names of the TLS alerts a server sends about a client's
         * certificate (RFC 8446 6.2), as they end up in librdkafka's
         * reason: "...: SSL routines::sslv3 alert bad certificate: ...". */
        static const char *const cert_alerts[] = {
            "alert bad certificate",
            "alert certificate required",
            "alert unknown ca",
            "alert certificate unknown",
            "alert certificate expired",
            "alert certificate revoked",
            "alert unsupported certificate",
            "alert access denied",
            NULL,
        };
        if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION) {
                *check = "sasl.username, sasl.password and sasl.mechanism";
                return "refused the credentials";
        }
        if (err == RD_KAFKA_RESP_ERR__SSL) {
                *check = "security.protocol, ssl.ca.location and the broker address";
                return "TLS handshake failed";
        }
        if (err == RD_KAFKA_RESP_ERR__TRANSPORT && reason && strstr(reason, "SSL routines"))
                for (int i = 0; cert_alerts[i]; i++)
                        if (strstr(reason, cert_alerts[i])) {
                                *check = "ssl.certificate.location, ssl.key.location and the CA "
                                         "the broker trusts for clients";
                                return "refused the client certificate";
                        }
        return NULL;
}
