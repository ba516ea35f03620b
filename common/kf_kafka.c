/* kf_kafka.c - one place where kinfer's librdkafka defaults meet the user's
 * -X overrides. */
#include "kf_kafka.h"

#include "kf_util.h"

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, char *errstr,
                    size_t errstr_size)
{
        char err[512];
        if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK)
                return kf_errf(errstr, errstr_size, "kafka property %s=%s: %s", k, v, err);
        return 0;
}

rd_kafka_conf_t *kf_kafka_conf_new(const char *brokers, const char *const *defaults,
                                   const kf_props_t *props, char *errstr, size_t errstr_size)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();

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
