/* lag.c - consumer lag from librdkafka's statistics, and the work it stands
 * for (see lag.h).  The document is parsed with jansson. */
#include "lag.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"

#define HASH_NONFATAL_OOM        1
#define uthash_nonfatal_oom(elt) ((elt)->hh_oom = 1)
#include <uthash.h>

#define COST_ALPHA 0.05 /* weight of each new job in the moving average */

/* An integer field of o, or -1 when missing or not an integer. */
static json_int_t int_field(const json_t *o, const char *name)
{
        const json_t *v = json_object_get(o, name);
        return json_is_integer(v) ? json_integer_value(v) : -1;
}

int kw_lag_parse(const char *json, size_t len, const char *topic, kw_lag_t *out, size_t max,
                 size_t *n, char *errstr, size_t errstr_size)
{
        json_error_t jerr;
        json_t *root = json_loadb(json, len, 0, &jerr), *parts, *p;
        const char *key;

        *n = 0;
        if (!root)
                return kf_errf(errstr, errstr_size, "statistics: not JSON: %s", jerr.text);
        if (!json_is_object(root)) {
                json_decref(root);
                return kf_errf(errstr, errstr_size, "statistics: not an object");
        }
        parts =
            json_object_get(json_object_get(json_object_get(root, "topics"), topic), "partitions");
        json_object_foreach(parts, key, p)
        { /* a NULL or non-object parts: no loop */
                json_int_t lag = int_field(p, "consumer_lag"), id = int_field(p, "partition");
                json_int_t hi = int_field(p, "hi_offset"), lo = int_field(p, "lo_offset");
                if (*n >= max)
                        break;
                if (!json_is_true(json_object_get(p, "desired")) || id < 0 || id > INT32_MAX)
                        continue; /* not ours, or the UA partition (-1) */
                /* Nothing committed on it yet: librdkafka says -1, but every
                 * message in it is waiting (auto.offset.reset=earliest). */
                if (lag < 0 && int_field(p, "committed_offset") < 0 && hi >= 0 && lo >= 0 &&
                    hi >= lo)
                        lag = hi - lo;
                if (lag < 0)
                        continue; /* not known yet (no watermarks) */
                kf_strlcpy(out[*n].topic, topic, sizeof(out[*n].topic));
                out[*n].partition = (int32_t)id;
                out[*n].lag = lag;
                (*n)++;
        }
        json_decref(root);
        return 0;
}

typedef struct cost_s {
        int32_t partition;
        double avg; /* flops per message */
        UT_hash_handle hh;
        int hh_oom;
} cost_t;

struct kw_costs_s {
        cost_t *by_part;
        size_t n;
};

kw_costs_t *kw_costs_new(void)
{
        return calloc(1, sizeof(kw_costs_t));
}

void kw_costs_free(kw_costs_t *c)
{
        cost_t *e, *tmp;
        if (!c)
                return;
        HASH_ITER(hh, c->by_part, e, tmp)
        {
                HASH_DEL(c->by_part, e);
                free(e);
        }
        free(c);
}

void kw_costs_observe(kw_costs_t *c, int32_t partition, double flops)
{
        cost_t *e;
        HASH_FIND_INT(c->by_part, &partition, e);
        if (!e) {
                if (c->n >= KW_LAG_MAX_PARTITIONS || !(e = calloc(1, sizeof(*e))))
                        return;
                e->partition = partition;
                e->avg = flops;
                HASH_ADD_INT(c->by_part, partition, e);
                if (e->hh_oom) {
                        free(e);
                        return;
                }
                c->n++;
                return;
        }
        e->avg += COST_ALPHA * (flops - e->avg);
}

double kw_costs_remaining(const kw_costs_t *c, const kw_lag_t *lags, size_t n)
{
        double all = 0, total = 0;
        const cost_t *e, *tmp;
        HASH_ITER(hh, c->by_part, e, tmp)
        all += e->avg;
        all = c->n ? all / (double)c->n : 0;
        for (size_t i = 0; i < n; i++) {
                int32_t p = lags[i].partition;
                HASH_FIND_INT(c->by_part, &p, e);
                total += (double)lags[i].lag * (e ? e->avg : all);
        }
        return total;
}
