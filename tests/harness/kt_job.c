/* kt_job.c - hand-packed jobs and models for tests, and a producer that
 * checks every delivery report (see kt_job.h). */
#include "kt_job.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void pk_str(msgpack_packer *pk, const char *s)
{
        msgpack_pack_str(pk, strlen(s));
        msgpack_pack_str_body(pk, s, strlen(s));
}

void kt_job_pack(msgpack_sbuffer *sb, const char *id, const char *user, const char *model,
                 const float *x, int rows, int cols, const char *extra_key,
                 unsigned long long extra_val)
{
        msgpack_packer pk;
        msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, extra_key ? 6 : 5);
        pk_str(&pk, "v");
        msgpack_pack_uint8(&pk, 2);
        pk_str(&pk, "id");
        pk_str(&pk, id);
        pk_str(&pk, "user");
        pk_str(&pk, user);
        pk_str(&pk, "model");
        pk_str(&pk, model);
        pk_str(&pk, "input");
        msgpack_pack_array(&pk, (size_t)rows);
        for (int r = 0; r < rows; r++) {
                msgpack_pack_array(&pk, (size_t)cols);
                for (int c = 0; c < cols; c++)
                        msgpack_pack_double(&pk, x[r * cols + c]);
        }
        if (extra_key) {
                pk_str(&pk, extra_key);
                msgpack_pack_uint64(&pk, extra_val);
        }
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        int *failed = opaque;
        (void)rk;
        if (rkm->err) {
                (*failed)++;
                fprintf(stderr, "kt_produce: delivery failed: %s\n", rd_kafka_err2str(rkm->err));
        }
}

int kt_produce(const char *brokers, const char *topic, const kt_msg_t *msgs, int n)
{
        char err[512];
        int failed = 0;
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_t *rk;

        if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof(err)) ||
            rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof(err)) ||
            rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof(err))) {
                fprintf(stderr, "kt_produce: %s\n", err);
                rd_kafka_conf_destroy(conf);
                return n;
        }
        rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
        rd_kafka_conf_set_opaque(conf, &failed);
        if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)))) {
                fprintf(stderr, "kt_produce: %s\n", err);
                rd_kafka_conf_destroy(conf);
                return n;
        }
        for (int i = 0; i < n; i++) {
                rd_kafka_resp_err_t e;
                do {
                        e = rd_kafka_producev(
                            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(msgs[i].partition),
                            RD_KAFKA_V_KEY(msgs[i].key, msgs[i].key ? strlen(msgs[i].key) : 0),
                            RD_KAFKA_V_VALUE((void *)msgs[i].val, msgs[i].len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
                        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                                rd_kafka_poll(rk, 50);
                } while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
                if (e) {
                        fprintf(stderr, "kt_produce: %s\n", rd_kafka_err2str(e));
                        failed++;
                }
        }
        while (rd_kafka_outq_len(rk) > 0)
                rd_kafka_flush(rk, 1000);
        rd_kafka_destroy(rk);
        return failed;
}

int kt_write_model(const char *path, const char *name, int n_layers, const int *dims,
                   const char *const *acts, const float *const *W, const float *const *b)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        FILE *fp;
        int rc = -1;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7);
        pk_str(&pk, "format");
        pk_str(&pk, "kinfer-model");
        pk_str(&pk, "v");
        msgpack_pack_uint8(&pk, 1); /* the model file format, not the protocol */
        pk_str(&pk, "name");
        pk_str(&pk, name);
        pk_str(&pk, "kind");
        pk_str(&pk, "mlp");
        pk_str(&pk, "input_dim");
        msgpack_pack_uint32(&pk, (uint32_t)dims[0]);
        pk_str(&pk, "output_dim");
        msgpack_pack_uint32(&pk, (uint32_t)dims[n_layers]);
        pk_str(&pk, "layers");
        msgpack_pack_array(&pk, (size_t)n_layers);
        for (int l = 0; l < n_layers; l++) {
                size_t wn = (size_t)dims[l] * (size_t)dims[l + 1] * 4;
                msgpack_pack_map(&pk, 3);
                pk_str(&pk, "W");
                msgpack_pack_bin(&pk, wn);
                msgpack_pack_bin_body(&pk, W[l], wn); /* x86_64: little-endian already */
                pk_str(&pk, "b");
                msgpack_pack_bin(&pk, (size_t)dims[l + 1] * 4);
                msgpack_pack_bin_body(&pk, b[l], (size_t)dims[l + 1] * 4);
                pk_str(&pk, "act");
                pk_str(&pk, acts[l]);
        }
        if ((fp = fopen(path, "wb"))) {
                if (fwrite(sb.data, 1, sb.size, fp) == sb.size)
                        rc = 0;
                if (fclose(fp))
                        rc = -1;
        }
        msgpack_sbuffer_destroy(&sb);
        return rc;
}

int kt_result_get(redisContext *c, const char *user, const char *id, kf_result_t *r)
{
        redisReply *rep = redisCommand(c, "GET kinfer:{%s}:result:%s", user, id);
        char err[256];
        int rc;

        memset(r, 0, sizeof(*r));
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
                fprintf(stderr, "kt_result_get: redis: %s\n", rep ? rep->str : c->errstr);
                freeReplyObject(rep);
                return -1;
        }
        if (rep->type != REDIS_REPLY_STRING) {
                freeReplyObject(rep);
                return 0;
        }
        rc = kf_result_decode(rep->str, rep->len, r, err, sizeof(err)) ? -1 : 1;
        if (rc < 0)
                fprintf(stderr, "kt_result_get: %s/%s: %s\n", user, id, err);
        freeReplyObject(rep);
        return rc;
}

long long kt_usage(redisContext *c, const char *user, const char *window, const char *field)
{
        redisReply *rep;
        long long v = 0;
        char *end;

        if (!window)
                rep = redisCommand(c, "HGET kinfer:{%s}:usage %s", user, field);
        else if (!strcmp(window, "models"))
                rep = redisCommand(c, "HGET kinfer:{%s}:usage:models %s", user, field);
        else
                rep = redisCommand(c, "HGET kinfer:{%s}:usage:window:%s %s", user, window, field);
        if (!rep)
                return -1;
        if (rep->type == REDIS_REPLY_STRING) {
                v = strtoll(rep->str, &end, 10);
                if (*end)
                        v = -1;
        } else if (rep->type != REDIS_REPLY_NIL) {
                v = -1;
        }
        freeReplyObject(rep);
        return v;
}

int kt_write_lin_model(const char *dir)
{
        static const float W[] = {2, 0, 0, 3}, b[] = {1, 1};
        const float *Ws[] = {W}, *bs[] = {b};
        const int dims[] = {2, 2};
        const char *acts[] = {"identity"};
        char path[600];
        snprintf(path, sizeof(path), "%s/lin.kmodel", dir);
        return kt_write_model(path, "lin", 1, dims, acts, Ws, bs);
}
