/* result_json.c - reads jobs' results from Redis (protocol v2: one msgpack
 * value per job under the user's keys), renders them as JSON, and waits for
 * them on an inbox list. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kf_keys.h"
#include "kf_redis.h"
#include "kf_result.h"
#include "kf_util.h"
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

redisReply *kc_redis_cmd(redisContext *r, const char *fmt, ...)
{
        va_list ap;
        redisReply *rep;
        va_start(ap, fmt);
        rep = redisvCommand(r, fmt, ap);
        va_end(ap);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
                kc_err("redis: %s", rep ? rep->str : r->errstr);
                exit(KC_EXIT_CONN);
        }
        return rep;
}

static void redis_fail(redisContext *c, const redisReply *r, const char *what)
{
        kc_err("redis: %s: %s", what,
               r && r->type == REDIS_REPLY_ERROR ? r->str
               : c->errstr[0]                    ? c->errstr
                                                 : "error");
        exit(KC_EXIT_CONN);
}

/* The JSON form of a decoded result: status and id first, then the rest in
 * the protocol's order; output as a matrix of numbers. */
static json_t *result_to_json(const kf_result_t *r)
{
        json_t *o = json_object();

        json_object_set_new(o, "status", json_string(r->ok ? "ok" : "error"));
        json_object_set_new(o, "id", json_string(r->id));
        json_object_set_new(o, "user", json_string(r->user));
        if (r->model[0])
                json_object_set_new(o, "model", json_string(r->model));
        if (r->ok)
                json_object_set_new(o, "version", json_integer((json_int_t)r->version));
        json_object_set_new(o, "worker", json_string(r->worker));
        json_object_set_new(o, "source", json_string(r->source));
        json_object_set_new(o, "enqueued", json_integer((json_int_t)r->enqueued));
        json_object_set_new(o, "started", json_integer((json_int_t)r->started));
        json_object_set_new(o, "done", json_integer((json_int_t)r->done));
        if (r->has_window)
                json_object_set_new(o, "window", json_integer((json_int_t)r->window));
        if (!r->ok) {
                json_object_set_new(o, "error", json_string(r->error));
                json_object_set_new(o, "message", json_string(r->message));
                if (r->has_retry_after)
                        json_object_set_new(o, "retry_after",
                                            json_integer((json_int_t)r->retry_after));
                return o;
        }
        json_t *mat = json_array();
        json_object_set_new(o, "shape",
                            json_pack("[II]", (json_int_t)r->rows, (json_int_t)r->cols));
        for (uint32_t i = 0; i < r->rows; i++) {
                json_t *row = json_array();
                for (uint32_t j = 0; j < r->cols; j++) {
                        float v = r->output[(size_t)i * r->cols + j];
                        /* JSON has no NaN or Inf: null, visibly not a number */
                        json_array_append_new(row, isfinite(v) ? json_real(v) : json_null());
                }
                json_array_append_new(mat, row);
        }
        json_object_set_new(o, "output", mat);
        if (r->nonfinite)
                json_object_set_new(o, "nonfinite", json_integer((json_int_t)r->nonfinite));
        return o;
}

/* Renders a GET reply: the result's JSON, NULL if there is none, or an
 * object saying why a value could not be read. */
static json_t *reply_json(const redisReply *r, const char *user, const char *id)
{
        kf_result_t res;
        char err[256];
        json_t *o;

        if (r->type != REDIS_REPLY_STRING)
                return NULL;
        if (kf_result_decode(r->str, r->len, &res, err, sizeof(err))) {
                kf_result_clear(&res);
                return json_pack("{s:s,s:s,s:s,s:s,s:s}", "status", "unreadable", "id", id, "user",
                                 user, "error", "unreadable_result", "message", err);
        }
        o = result_to_json(&res);
        kf_result_clear(&res);
        return o;
}

json_t *kc_result_value_json(const void *buf, size_t len)
{
        kf_result_t res;
        char err[256];
        json_t *o;

        if (!buf || kf_result_decode(buf, len, &res, err, sizeof(err))) {
                if (buf)
                        kf_result_clear(&res);
                return json_pack("{s:s,s:s,s:s}", "status", "unreadable", "error",
                                 "unreadable_result", "message", buf ? err : "no value");
        }
        o = result_to_json(&res);
        kf_result_clear(&res);
        return o;
}

json_t *kc_result_json(redisContext *c, const kc_conf_t *conf, const char *user, const char *id)
{
        char key[KF_KEY_MAX];
        redisReply *r;
        json_t *o;

        if (kf_user_key(key, conf->prefix, user, KF_K_RESULT, id) < 0)
                return NULL;
        if (!(r = redisCommand(c, "GET %s", key)) || r->type == REDIS_REPLY_ERROR)
                redis_fail(c, r, "GET");
        o = reply_json(r, user, id);
        freeReplyObject(r);
        return o;
}

/* Waiting state of kc_results_wait. */
typedef struct waiter_s {
        redisContext *c;
        const kc_conf_t *conf;
        const char *user;
        char *const *ids;
        json_t **res;   /* per id: its result once read, until handed to cb */
        json_t *index;  /* id -> its first position, to match inbox elements */
        size_t n, next; /* next: the first result not yet handed to cb */
        size_t pending; /* ids from next on whose result was not read yet */
        kc_result_cb *cb;
        void *opaque;
} waiter_t;

/* Keeps result o (may be NULL: not there yet) of id i. */
static void got(waiter_t *w, size_t i, json_t *o)
{
        if (!o || w->res[i]) {
                json_decref(o);
                return;
        }
        w->res[i] = o;
        w->pending--;
}

/* Hands the results that are ready, in order, to the callback. */
static void deliver(waiter_t *w)
{
        while (w->next < w->n && w->res[w->next]) {
                w->cb(w->next, w->res[w->next], w->opaque);
                json_decref(w->res[w->next]);
                w->res[w->next] = NULL;
                w->next++;
        }
}

/* GETs every pending result in one pipelined round. */
static void fetch_pending(waiter_t *w)
{
        size_t *sent = malloc(sizeof(*sent) * (w->n + 1)), ns = 0;
        if (!sent) {
                kc_err("out of memory");
                exit(KC_EXIT_FAIL);
        }
        for (size_t i = w->next; i < w->n; i++) {
                char key[KF_KEY_MAX];
                if (w->res[i] ||
                    kf_user_key(key, w->conf->prefix, w->user, KF_K_RESULT, w->ids[i]) < 0)
                        continue;
                redisAppendCommand(w->c, "GET %s", key);
                sent[ns++] = i;
        }
        for (size_t k = 0; k < ns; k++) {
                redisReply *r;
                if (redisGetReply(w->c, (void **)&r) != REDIS_OK || !r ||
                    r->type == REDIS_REPLY_ERROR)
                        redis_fail(w->c, r, "GET");
                got(w, sent[k], reply_json(r, w->user, w->ids[sent[k]]));
                freeReplyObject(r);
        }
        free(sent);
}

size_t kc_results_wait(redisContext *c, const kc_conf_t *conf, const char *user, const char *inbox,
                       char **ids, size_t n, int64_t timeout_s, kc_result_cb *cb, void *opaque)
{
        waiter_t w = {c, conf, user, ids, NULL, json_object(), n, 0, n, cb, opaque};
        int64_t until = timeout_s ? kf_now_ms() + timeout_s * 1000 : 0;
        char key[KF_KEY_MAX];
        size_t missing;

        w.res = calloc(n + 1, sizeof(*w.res));
        if (!w.res || !w.index) {
                kc_err("out of memory");
                exit(KC_EXIT_FAIL);
        }
        for (size_t i = n; i-- > 0;) /* the first position of an id given twice */
                json_object_set_new(w.index, ids[i], json_integer((json_int_t)i));
        if (inbox && kf_user_key(key, conf->prefix, user, KF_K_INBOX, inbox) < 0)
                inbox = NULL;
        fetch_pending(&w);
        deliver(&w);
        while (w.pending) {
                int64_t left_ms = until ? until - kf_now_ms() : 5000;
                /* An inbox is a hint: another waiter may take an id we need,
                 * so at most every 5 s the results are read again. */
                int64_t slice = left_ms < 5000 ? left_ms : 5000;
                redisReply *r;
                if (slice <= 0)
                        break;
                if (!inbox) { /* ids not announced anywhere: read again in a while */
                        struct timespec ts = {0, 200 * 1000 * 1000};
                        nanosleep(&ts, NULL);
                        fetch_pending(&w);
                        deliver(&w);
                        continue;
                }
                /* hiredis' own socket timeout must not cut the blocking call short. */
                redisSetTimeout(c, (struct timeval){slice / 1000 + 5, 0});
                r = redisCommand(c, "BLPOP %s %.3f", key, (double)slice / 1000.0);
                redisSetTimeout(c, (struct timeval){10, 0});
                if (!r || r->type == REDIS_REPLY_ERROR)
                        redis_fail(c, r, "BLPOP");
                if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
                        const redisReply *id = r->element[1];
                        json_t *at = json_object_getn(w.index, id->str, id->len);
                        size_t i = at ? (size_t)json_integer_value(at) : n;
                        if (i >= w.next && i < n && !w.res[i])
                                got(&w, i, kc_result_json(c, conf, user, ids[i]));
                } else { /* a timeout slice: look at the results themselves */
                        fetch_pending(&w);
                }
                freeReplyObject(r);
                deliver(&w);
        }
        missing = w.pending;
        /* What never came, in order, as NULL; then what came after it. */
        for (size_t i = w.next; i < n; i++) {
                cb(i, w.res[i], opaque);
                json_decref(w.res[i]);
        }
        json_decref(w.index);
        free(w.res);
        return missing;
}

void kc_print_json(json_t *j)
{
        char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        if (s) {
                puts(s);
                free(s);
        }
}

void kc_inbox_name(const char *run, char *buf)
{
        snprintf(buf, JOB_INBOX_MAX + 1, "kinfer-%s", run);
}

int kc_inbox_from_id(const char *id, char *buf)
{
        /* ids made by submit: PREFIX-RUN-N, RUN 16 lowercase hex digits */
        const char *last = strrchr(id, '-');
        const char *run = last && last - id >= 17 ? last - 16 : NULL;
        if (!run || run[-1] != '-' || !last[1] ||
            strspn(last + 1, "0123456789") != strlen(last + 1))
                return -1;
        for (int i = 0; i < 16; i++)
                if (!strchr("0123456789abcdef", run[i]))
                        return -1;
        snprintf(buf, JOB_INBOX_MAX + 1, "kinfer-%.16s", run);
        return 0;
}

void kc_print_result(size_t i, json_t *res, void *opaque)
{
        kc_printer_t *p = opaque;
        const char *status = res ? json_string_value(json_object_get(res, "status")) : NULL;
        if (!res) {
                kc_err("job %s: no result before the timeout", p->ids[i]);
                p->rc = KC_EXIT_FAIL;
                return;
        }
        kc_print_json(res);
        if (!status || strcmp(status, "ok") || json_object_get(res, "nonfinite"))
                p->rc = KC_EXIT_FAIL;
}
