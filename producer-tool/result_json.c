/* result_json.c - reads a job's result hash from Redis and renders it as
 * one JSON object; waits for results with BLPOP on the done list. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_redis.h"
#include "kinfer.h"

redisContext *kc_redis(const kc_conf_t *conf)
{
        kf_redis_url_t u;
        char err[512];
        redisContext *c;
        if (kf_redis_url_parse(conf->redis_url, &u, err, sizeof(err))) {
                kc_err("%s", err);
                exit(KC_EXIT_USAGE);
        }
        if (!(c = kf_redis_connect(&u, 10000, err, sizeof(err)))) {
                kc_err("%s", err);
                exit(KC_EXIT_CONN);
        }
        return c;
}

static void redis_fail(redisContext *c, const char *what)
{
        kc_err("redis: %s: %s", what, c->errstr[0] ? c->errstr : "error reply");
        exit(KC_EXIT_CONN);
}

/* Integer fields of the result hash, rendered as JSON numbers. */
static int field_is_int(const char *k)
{
        static const char *const ints[] = {"version", "enqueued", "started", "done",
                                           "window",  "retry_after", NULL};
        for (int i = 0; ints[i]; i++)
                if (!strcmp(k, ints[i]))
                        return 1;
        return 0;
}

json_t *kc_result_json(redisContext *c, const kc_conf_t *conf, const char *id)
{
        char key[KF_KEY_MAX];
        const redisReply *shape = NULL, *output = NULL;
        redisReply *r;
        json_t *o;

        if (kf_key(key, conf->prefix, "result", id) < 0)
                return NULL;
        if (!(r = redisCommand(c, "HGETALL %s", key)))
                redis_fail(c, "HGETALL");
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
                freeReplyObject(r);
                return NULL;
        }
        o = json_object();
        /* status and id first, whatever order the hash keeps its fields in */
        json_object_set_new(o, "status", json_null());
        json_object_set_new(o, "id", json_string(id));
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
                const char *k        = r->element[i]->str;
                const redisReply *v = r->element[i + 1];
                if (!strcmp(k, "output"))
                        output = v;
                else if (!strcmp(k, "shape"))
                        shape = v;
                else if (field_is_int(k))
                        json_object_set_new(o, k, json_integer(strtoll(v->str, NULL, 10)));
                else
                        json_object_set_new(o, k, json_stringn(v->str, v->len));
        }
        if (shape) {
                unsigned rows = 0, cols = 0;
                json_t *mat;
                if (sscanf(shape->str, "%u,%u", &rows, &cols) != 2)
                        rows = cols = 0;
                json_object_set_new(o, "shape", json_pack("[ii]", rows, cols));
                if (output && (size_t)rows * cols * 4 == output->len) {
                        mat = json_array();
                        for (unsigned i = 0; i < rows; i++) {
                                json_t *row = json_array();
                                for (unsigned j = 0; j < cols; j++) {
                                        float f;
                                        memcpy(&f, output->str + ((size_t)i * cols + j) * 4, 4);
                                        json_array_append_new(row, json_real(f));
                                }
                                json_array_append_new(mat, row);
                        }
                        json_object_set_new(o, "output", mat);
                } else if (output) {
                        json_object_set_new(o, "output_error",
                                            json_string("output size does not match shape"));
                }
        }
        freeReplyObject(r);
        return o;
}

json_t *kc_result_wait(redisContext *c, const kc_conf_t *conf, const char *id, int64_t timeout_s)
{
        char key[KF_KEY_MAX];
        redisReply *r;
        json_t *o = kc_result_json(c, conf, id);

        if (o)
                return o;
        if (kf_key(key, conf->prefix, "done", id) < 0)
                return NULL;
        /* hiredis' own socket timeout must not cut the blocking call short. */
        redisSetTimeout(c, (struct timeval){timeout_s ? timeout_s + 5 : 0, 0});
        r = redisCommand(c, "BLPOP %s %lld", key, (long long)timeout_s);
        redisSetTimeout(c, (struct timeval){10, 0});
        if (!r)
                redis_fail(c, "BLPOP");
        freeReplyObject(r);
        /* Timeout or not: the result hash is the truth (the done element may
         * have been taken by another waiter). */
        return kc_result_json(c, conf, id);
}

void kc_print_json(json_t *j)
{
        char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        if (s) {
                puts(s);
                free(s);
        }
}
