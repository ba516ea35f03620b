/* top_pool.c - `kinfer top`'s samples of a pool: the workers' /metrics
 * through libcurl, the users' usage counters from Redis (top.h). */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_redis.h"
#include "kf_util.h"
#include "prom_text.h"
#include "top.h"

/* dst = a then b (NULL: nothing), cut to KT_REASON_MAX - 1 bytes. */
static void set_reason(char *dst, const char *a, const char *b)
{
        size_t n = 0;
        for (const char *s = a; s; s = s == a ? b : NULL)
                for (; *s && n < KT_REASON_MAX - 1; s++)
                        dst[n++] = *s;
        dst[n] = '\0';
}

/* "host:port" -> "http://host:port/metrics"; a URL without a path gets
 * "/metrics". */
static char *metrics_url(const char *u)
{
        const char *scheme = strstr(u, "://");
        const char *host = scheme ? scheme + 3 : u;
        int has_path = strchr(host, '/') != NULL;
        size_t n = strlen(u) + sizeof("http://") + sizeof("/metrics");
        char *out = malloc(n);
        if (out)
                snprintf(out, n, "%s%s%s", scheme ? "" : "http://", u, has_path ? "" : "/metrics");
        return out;
}

/* 0 if u can name a worker: not empty, no blanks or control bytes, and
 * http:// or https:// when it has a scheme; else -1 with errstr. */
static int url_ok(const char *u, char *errstr, size_t errstr_size)
{
        if (!*u || strlen(u) > 1000) {
                snprintf(errstr, errstr_size, "worker URL '%.200s' is empty or too long", u);
                return -1;
        }
        for (const unsigned char *c = (const unsigned char *)u; *c; c++)
                if (*c <= 0x20 || *c >= 0x7f) {
                        snprintf(errstr, errstr_size,
                                 "worker URL '%.200s' has blanks or control characters", u);
                        return -1;
                }
        if (strstr(u, "://") && strncmp(u, "http://", 7) && strncmp(u, "https://", 8)) {
                snprintf(errstr, errstr_size,
                         "worker URL '%.200s': only http:// and https:// are read", u);
                return -1;
        }
        return 0;
}

int kt_pool_init(kt_pool_t *p, char **urls, size_t n_urls, const char *redis_url,
                 const char *prefix, int timeout_ms, char *errstr, size_t errstr_size)
{
        memset(p, 0, sizeof(*p));
        p->timeout_ms = timeout_ms;
        p->discover = n_urls == 0;
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                snprintf(errstr, errstr_size, "libcurl failed to start");
                return -1;
        }
        if (kf_redis_url_parse(redis_url, &p->redis_url, errstr, errstr_size))
                return -1;
        if (!(p->prefix = strdup(prefix)) ||
            (n_urls && !(p->workers = calloc(n_urls, sizeof(*p->workers)))) ||
            !(p->multi = curl_multi_init()))
                goto oom;
        for (size_t i = 0; i < n_urls; i++, p->n_workers++) {
                if (url_ok(urls[i], errstr, errstr_size))
                        return -1;
                if (!(p->workers[i].url = metrics_url(urls[i])))
                        goto oom;
                set_reason(p->workers[i].reason, "not read yet", NULL);
        }
        set_reason(p->redis_reason, "not read yet", NULL);
        return 0;
oom:
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *opaque)
{
        kt_worker_t *w = opaque;
        size_t n = size * nmemb;
        char *nb;
        if (n > KT_BODY_MAX - w->body_len)
                return 0; /* curl reports CURLE_WRITE_ERROR: shown as too large */
        if (!(nb = realloc(w->body, w->body_len + n)))
                return 0;
        memcpy(nb + w->body_len, data, n);
        w->body = nb;
        w->body_len += n;
        return n;
}

static int on_sample(const kp_sample_t *s, void *opaque)
{
        kt_worker_t *w = opaque;
        if (!strcmp(s->name, "kinfer_jobs_total")) {
                const char *code = kp_label(s, "code");
                w->jobs += s->value;
                if (code && !strcmp(code, "ok"))
                        w->ok += s->value;
                else
                        w->errors += s->value;
        } else if (!strcmp(s->name, "kinfer_messages_consumed_total"))
                w->consumed = s->value;
        else if (!strcmp(s->name, "kinfer_jobs_duplicate_total"))
                w->duplicates = s->value;
        else if (!strcmp(s->name, "kinfer_jobs_dead_lettered_total"))
                w->dead_lettered = s->value;
        else if (!strcmp(s->name, "kinfer_consumer_lag"))
                w->lag += s->value;
        else if (!strcmp(s->name, "kinfer_work_remaining_flops")) {
                w->work = s->value;
                w->have_work = 1;
        } else if (!strcmp(s->name, "kinfer_inflight_batches"))
                w->inflight = s->value;
        else if (!strcmp(s->name, "kinfer_assigned_partitions"))
                w->partitions = s->value;
        return 0;
}

/* Reads a finished transfer into w (its numbers, or down with a reason). */
static void take_body(kt_worker_t *w, CURL *e, CURLcode res, int64_t now_us)
{
        long status = 0;
        char err[200], code[16];
        double pj = w->jobs, pe = w->errors;
        int was_up = w->up;

        w->up = 0;
        w->have_rate = 0;
        if (res != CURLE_OK) {
                set_reason(w->reason,
                           res == CURLE_WRITE_ERROR ? "answer over 16 MiB or out of memory"
                                                    : curl_easy_strerror(res),
                           NULL);
                goto out;
        }
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200) {
                snprintf(code, sizeof(code), "HTTP %ld", status);
                set_reason(w->reason, code, NULL);
                goto out;
        }
        w->jobs = w->ok = w->errors = w->consumed = w->duplicates = w->dead_lettered = 0;
        w->lag = w->work = w->inflight = w->partitions = 0;
        w->have_work = 0;
        if (kp_parse(w->body ? w->body : "", w->body_len, on_sample, w, err, sizeof(err))) {
                set_reason(w->reason, "not Prometheus text: ", err);
                w->jobs = pj, w->errors = pe;
                goto out;
        }
        w->up = 1;
        /* A restarted worker counts from zero: no rate across it. */
        if (was_up && w->prev_us && now_us > w->prev_us && w->jobs >= w->prev_jobs &&
            w->errors >= w->prev_errors) {
                double dt = (double)(now_us - w->prev_us) / 1e6;
                w->jobs_rate = (w->jobs - w->prev_jobs) / dt;
                w->err_rate = (w->errors - w->prev_errors) / dt;
                w->have_rate = 1;
        }
        w->prev_jobs = w->jobs;
        w->prev_errors = w->errors;
        w->prev_us = now_us;
out:
        if (!w->up)
                w->prev_us = 0;
        free(w->body);
        w->body = NULL;
        w->body_len = 0;
}

static void scrape_all(kt_pool_t *p)
{
        CURLM *m = p->multi;
        CURL **easy = calloc(p->n_workers ? p->n_workers : 1, sizeof(*easy));
        int running = 0;
        CURLMsg *msg;
        int left;

        if (!easy) {
                for (size_t i = 0; i < p->n_workers; i++)
                        p->workers[i].up = 0;
                return;
        }
        for (size_t i = 0; i < p->n_workers; i++) {
                kt_worker_t *w = &p->workers[i];
                CURL *e = curl_easy_init();
                if (!e) {
                        w->up = 0;
                        set_reason(w->reason, "out of memory", NULL);
                        continue;
                }
                curl_easy_setopt(e, CURLOPT_URL, w->url);
                curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
                curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
                curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
                curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->timeout_ms);
                curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
                curl_easy_setopt(e, CURLOPT_WRITEDATA, w);
                curl_easy_setopt(e, CURLOPT_PRIVATE, w);
                curl_easy_setopt(e, CURLOPT_USERAGENT, "kinfer-top");
                if (curl_multi_add_handle(m, e) != CURLM_OK) {
                        curl_easy_cleanup(e);
                        w->up = 0;
                        set_reason(w->reason, "libcurl refused the transfer", NULL);
                        continue;
                }
                easy[i] = e;
        }
        do {
                if (curl_multi_perform(m, &running) != CURLM_OK)
                        break;
                if (running && curl_multi_poll(m, NULL, 0, 100, NULL) != CURLM_OK)
                        break;
        } while (running);
        while ((msg = curl_multi_info_read(m, &left))) {
                kt_worker_t *w = NULL;
                if (msg->msg != CURLMSG_DONE)
                        continue;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&w);
                take_body(w, msg->easy_handle, msg->data.result, kf_mono_us());
        }
        for (size_t i = 0; i < p->n_workers; i++) {
                if (!easy[i])
                        continue;
                if (p->workers[i].body) { /* never finished (multi failed) */
                        free(p->workers[i].body);
                        p->workers[i].body = NULL;
                        p->workers[i].body_len = 0;
                }
                curl_multi_remove_handle(m, easy[i]);
                curl_easy_cleanup(easy[i]);
        }
        free(easy);
}

/* ---- Redis: the users' usage counters ---- */

static void redis_down(kt_pool_t *p, const char *why)
{
        p->redis_up = 0;
        set_reason(p->redis_reason, why, NULL);
        if (p->redis) {
                redisFree(p->redis);
                p->redis = NULL;
        }
}

static long long counter(const redisReply *v)
{
        char *end;
        long long n;
        if (v->type != REDIS_REPLY_STRING)
                return v->type == REDIS_REPLY_NIL ? 0 : -1; /* a missing field is 0 */
        n = strtoll(v->str, &end, 10);
        return end == v->str || *end || n < 0 ? -1 : n;
}

/* The user of key "<prefix>{USER}:usage", or NULL if key is not one.  A
 * user part holding a NUL byte is skipped: no worker writes one (users are
 * [A-Za-z0-9._:-]), and it could not be named in a command again. */
static char *user_of(const kt_pool_t *p, const char *key, size_t len)
{
        size_t pl = strlen(p->prefix);
        const char *u, *close;
        if (len < pl + 2 || memcmp(key, p->prefix, pl) || key[pl] != '{')
                return NULL;
        u = key + pl + 1;
        close = memchr(u, '}', len - pl - 1);
        if (!close || close == u || memchr(u, '\0', (size_t)(close - u)) ||
            (size_t)(key + len - close) != sizeof("}:usage") - 1 ||
            memcmp(close, "}:usage", sizeof("}:usage") - 1))
                return NULL;
        return strndup(u, (size_t)(close - u));
}

/* Reads the counters of the users in names[0..n) (one pipeline). */
static int read_users(kt_pool_t *p, char **names, size_t n, int64_t now_us)
{
        for (size_t i = 0; i < n; i++)
                if (redisAppendCommand(p->redis, "HMGET %s{%s}:usage jobs rows flops errors",
                                       p->prefix, names[i]) != REDIS_OK)
                        return -1;
        for (size_t i = 0; i < n; i++) {
                redisReply *r = NULL;
                kt_user_t *u;
                if (redisGetReply(p->redis, (void **)&r) != REDIS_OK)
                        return -1;
                HASH_FIND_STR(p->users, names[i], u);
                if (!u) {
                        if (!(u = calloc(1, sizeof(*u)))) {
                                freeReplyObject(r);
                                return -1;
                        }
                        u->name = names[i];
                        names[i] = NULL;
                        HASH_ADD_KEYPTR(hh, p->users, u->name, strlen(u->name), u);
                }
                u->gen = p->gen;
                if (r->type == REDIS_REPLY_ARRAY && r->elements == 4) {
                        u->jobs = counter(r->element[0]);
                        u->rows = counter(r->element[1]);
                        u->flops = counter(r->element[2]);
                        u->errors = counter(r->element[3]);
                } else
                        u->jobs = u->rows = u->flops = u->errors = -1; /* not a hash */
                freeReplyObject(r);
                u->have_rate = 0;
                if (u->prev_us && now_us > u->prev_us && u->jobs >= u->prev_jobs &&
                    u->errors >= u->prev_errors && u->prev_jobs >= 0 && u->prev_errors >= 0) {
                        double dt = (double)(now_us - u->prev_us) / 1e6;
                        u->jobs_rate = (double)(u->jobs - u->prev_jobs) / dt;
                        u->err_rate = (double)(u->errors - u->prev_errors) / dt;
                        u->have_rate = 1;
                }
                u->prev_jobs = u->jobs;
                u->prev_errors = u->errors;
                u->prev_us = now_us;
        }
        return 0;
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The workers' heartbeat records (P"worker:"ID, written by workers with
 * --http: worker/advertise.h) become the list of workers; a worker seen
 * before keeps its numbers, for its rates.  A record whose value is no
 * usable URL is skipped: anyone who can write Redis can write one.  -1 if
 * Redis failed (the list is kept). */
static int discover(kt_pool_t *p)
{
        char pattern[256], cursor[32] = "0", err[256];
        char **urls = NULL;
        size_t n = 0, cap = 0;
        kt_worker_t *ws;
        int rc = -1;

        snprintf(pattern, sizeof(pattern), "%sworker:*", p->prefix);
        do {
                redisReply *r =
                    redisCommand(p->redis, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
                if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
                    r->element[0]->type != REDIS_REPLY_STRING ||
                    r->element[1]->type != REDIS_REPLY_ARRAY) {
                        freeReplyObject(r);
                        goto out;
                }
                snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
                for (size_t i = 0; i < r->element[1]->elements; i++)
                        if (r->element[1]->element[i]->type == REDIS_REPLY_STRING)
                                redisAppendCommand(p->redis, "GET %b",
                                                   r->element[1]->element[i]->str,
                                                   r->element[1]->element[i]->len);
                for (size_t i = 0; i < r->element[1]->elements; i++) {
                        redisReply *v = NULL;
                        if (r->element[1]->element[i]->type != REDIS_REPLY_STRING)
                                continue;
                        if (redisGetReply(p->redis, (void **)&v) != REDIS_OK) {
                                freeReplyObject(r);
                                goto out;
                        }
                        if (v->type == REDIS_REPLY_STRING && strlen(v->str) == v->len &&
                            !url_ok(v->str, err, sizeof(err)) && n < KT_WORKERS_MAX) {
                                if (n == cap) {
                                        char **nu =
                                            realloc(urls, (cap ? 2 * cap : 16) * sizeof(*urls));
                                        if (!nu) {
                                                freeReplyObject(v);
                                                freeReplyObject(r);
                                                goto out;
                                        }
                                        urls = nu;
                                        cap = cap ? 2 * cap : 16;
                                }
                                if ((urls[n] = metrics_url(v->str)))
                                        n++;
                        }
                        freeReplyObject(v);
                }
                freeReplyObject(r);
        } while (strcmp(cursor, "0"));
        if (n > 1)
                qsort(urls, n, sizeof(*urls), cmp_str);
        if (!(ws = calloc(n ? n : 1, sizeof(*ws))))
                goto out;
        for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j < p->n_workers; j++)
                        if (p->workers[j].url && !strcmp(p->workers[j].url, urls[i])) {
                                ws[i] = p->workers[j];
                                p->workers[j].url = NULL;
                                break;
                        }
                if (!ws[i].url) {
                        ws[i].url = urls[i];
                        urls[i] = NULL;
                        set_reason(ws[i].reason, "not read yet", NULL);
                }
        }
        for (size_t j = 0; j < p->n_workers; j++) {
                free(p->workers[j].url);
                free(p->workers[j].body);
        }
        free(p->workers);
        p->workers = ws;
        p->n_workers = n;
        rc = 0;
out:
        for (size_t i = 0; i < n; i++)
                free(urls[i]);
        free(urls);
        return rc;
}

static int redis_connect(kt_pool_t *p)
{
        char err[512];
        if (!p->redis &&
            !(p->redis = kf_redis_connect(&p->redis_url, p->timeout_ms, err, sizeof(err)))) {
                redis_down(p, err);
                return -1;
        }
        return 0;
}

static void sample_redis(kt_pool_t *p)
{
        char err[512], pattern[256], cursor[32] = "0";
        size_t seen = 0;
        kt_user_t *u, *tmp;

        p->gen++;
        p->users_unread = 0;
        if (redis_connect(p))
                return;
        snprintf(pattern, sizeof(pattern), "%s{*}:usage", p->prefix);
        do {
                redisReply *r =
                    redisCommand(p->redis, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
                char **names;
                size_t n = 0;
                int rc;
                if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
                    r->element[0]->type != REDIS_REPLY_STRING ||
                    r->element[1]->type != REDIS_REPLY_ARRAY) {
                        snprintf(err, sizeof(err), "SCAN: %s",
                                 r && r->type == REDIS_REPLY_ERROR ? r->str
                                 : p->redis->errstr[0]             ? p->redis->errstr
                                                                   : "unexpected reply");
                        freeReplyObject(r);
                        redis_down(p, err);
                        return;
                }
                snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
                names = calloc(r->element[1]->elements + 1, sizeof(*names));
                for (size_t i = 0; names && i < r->element[1]->elements; i++) {
                        const redisReply *k = r->element[1]->element[i];
                        if (k->type != REDIS_REPLY_STRING)
                                continue;
                        if (seen >= KT_USERS_MAX) {
                                p->users_unread++;
                                continue;
                        }
                        if ((names[n] = user_of(p, k->str, k->len))) {
                                n++;
                                seen++;
                        }
                }
                freeReplyObject(r);
                rc = names ? read_users(p, names, n, kf_mono_us()) : -1;
                for (size_t i = 0; names && i < n; i++)
                        free(names[i]);
                free(names);
                if (rc) {
                        redis_down(p, p->redis->errstr[0] ? p->redis->errstr : "out of memory");
                        return;
                }
        } while (strcmp(cursor, "0"));
        p->redis_up = 1;
        /* Users whose usage key is gone (deleted by hand, another prefix). */
        HASH_ITER(hh, p->users, u, tmp)
        {
                if (u->gen != p->gen) {
                        HASH_DEL(p->users, u);
                        free(u->name);
                        free(u);
                }
        }
        p->n_users = HASH_COUNT(p->users);
}

void kt_pool_sample(kt_pool_t *p)
{
        if (p->discover && !redis_connect(p) && discover(p))
                redis_down(p, p->redis->errstr[0] ? p->redis->errstr : "SCAN of worker records");
        scrape_all(p);
        sample_redis(p);
}

void kt_pool_free(kt_pool_t *p)
{
        kt_user_t *u, *tmp;
        if (!p)
                return;
        for (size_t i = 0; i < p->n_workers; i++) {
                free(p->workers[i].url);
                free(p->workers[i].body);
        }
        free(p->workers);
        HASH_ITER(hh, p->users, u, tmp)
        {
                HASH_DEL(p->users, u);
                free(u->name);
                free(u);
        }
        if (p->redis)
                redisFree(p->redis);
        if (p->multi)
                curl_multi_cleanup(p->multi);
        free(p->prefix);
        curl_global_cleanup();
        memset(p, 0, sizeof(*p));
}
