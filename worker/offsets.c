/* offsets.c - per partition, a ring of in-flight offsets in consumption
 * order; the done prefix is popped and its end stored as the offset, never
 * past the partition's block (a message lost to the tracker). */
#include "offsets.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_log_limit.h"

#define NO_LIMIT INT64_MAX

typedef struct part_s {
        char *topic;
        int32_t partition;
        int64_t *off; /* ring of in-flight offsets, increasing */
        uint8_t *done;
        size_t head, len, cap;
        int64_t limit;  /* the lowest offset lost to the tracker: nothing past
                         * it is stored; NO_LIMIT if none */
        int64_t stored; /* the offset stored last, -1 before the first */
        struct part_s *next;
} part_t;

struct kw_offsets_s {
        pthread_mutex_t lock;
        rd_kafka_t *rk;
        part_t *parts;
        int blocked; /* a lost message's partition state could not be made:
                      * no partition stores anything until kw_offsets_forget */
};

kw_offsets_t *kw_offsets_new(rd_kafka_t *rk)
{
        kw_offsets_t *t = calloc(1, sizeof(*t));
        if (!t)
                return NULL;
        pthread_mutex_init(&t->lock, NULL);
        t->rk = rk;
        return t;
}

static void parts_free(kw_offsets_t *t)
{
        for (part_t *p = t->parts, *n; p; p = n) {
                n = p->next;
                free(p->topic);
                free(p->off);
                free(p->done);
                free(p);
        }
        t->parts = NULL;
        t->blocked = 0;
}

void kw_offsets_destroy(kw_offsets_t *t)
{
        if (!t)
                return;
        parts_free(t);
        pthread_mutex_destroy(&t->lock);
        free(t);
}

static part_t *part_get(kw_offsets_t *t, const char *topic, int32_t partition, int create)
{
        part_t *p;
        for (p = t->parts; p; p = p->next)
                if (p->partition == partition && !strcmp(p->topic, topic))
                        return p;
        if (!create || !(p = calloc(1, sizeof(*p))))
                return NULL;
        if (!(p->topic = strdup(topic))) {
                free(p);
                return NULL;
        }
        p->partition = partition;
        p->limit = NO_LIMIT;
        p->stored = -1;
        p->next = t->parts;
        t->parts = p;
        return p;
}

static int part_grow(part_t *p)
{
        size_t ncap = p->cap ? p->cap * 2 : 1024;
        int64_t *no = malloc(ncap * sizeof(*no));
        uint8_t *nd = malloc(ncap);
        if (!no || !nd) {
                free(no);
                free(nd);
                return -1;
        }
        for (size_t i = 0; i < p->len; i++) { /* unroll the ring */
                no[i] = p->off[(p->head + i) % p->cap];
                nd[i] = p->done[(p->head + i) % p->cap];
        }
        free(p->off);
        free(p->done);
        p->off = no;
        p->done = nd;
        p->head = 0;
        p->cap = ncap;
        return 0;
}

/* Blocks the partition at a message lost to the tracker; allocates only
 * the partition's state, and without it blocks every partition.  Called
 * with the lock held. */
static void block(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset,
                  const char *why)
{
        part_t *p = part_get(t, topic, partition, 1);
        if (!p) {
                t->blocked = 1;
                kf_error_limited(
                    "lost message without memory",
                    "message %s/%d/%lld lost (%s), and no memory to remember it: no "
                    "offset of any partition is stored until the next rebalance, which "
                    "redelivers it",
                    topic, (int)partition, (long long)offset, why);
                return;
        }
        if (offset < p->limit)
                p->limit = offset;
        kf_error_limited(
            "lost message",
            "message %s/%d/%lld lost (%s): no offset of %s/%d past %lld is stored until "
            "the next rebalance, which redelivers it",
            topic, (int)partition, (long long)offset, why, topic, (int)partition,
            (long long)p->limit);
}

int kw_offsets_add(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset)
{
        int rc = -1;
        part_t *p;
        pthread_mutex_lock(&t->lock);
        if ((p = part_get(t, topic, partition, 1)) && (p->len < p->cap || part_grow(p) == 0)) {
                size_t at = (p->head + p->len) % p->cap;
                p->off[at] = offset;
                p->done[at] = 0;
                p->len++;
                rc = 0;
        } else {
                block(t, topic, partition, offset, "out of memory tracking its offset");
        }
        pthread_mutex_unlock(&t->lock);
        return rc;
}

void kw_offsets_lost(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset,
                     const char *why)
{
        pthread_mutex_lock(&t->lock);
        block(t, topic, partition, offset, why);
        pthread_mutex_unlock(&t->lock);
}

int kw_offsets_done(kw_offsets_t *t, const char *topic, int32_t partition, int64_t offset)
{
        size_t lo = 0, hi, popped = 0;
        int64_t store = -1;
        part_t *p;
        int rc = -1;

        pthread_mutex_lock(&t->lock);
        if (!(p = part_get(t, topic, partition, 0)))
                goto out;
        hi = p->len;
        while (lo < hi) { /* binary search: offsets are increasing */
                size_t mid = (lo + hi) / 2;
                if (p->off[(p->head + mid) % p->cap] < offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo == p->len || p->off[(p->head + lo) % p->cap] != offset)
                goto out;
        p->done[(p->head + lo) % p->cap] = 1;
        while (p->len && p->done[p->head]) {
                store = p->off[p->head] + 1;
                p->head = (p->head + 1) % p->cap;
                p->len--;
                popped++;
        }
        rc = 0;
        /* Everything below the popped prefix is done; past a lost message
         * (the limit) it does not count, since the lost one is not. */
        if (store > p->limit)
                store = p->limit;
        if (popped && store > p->stored && !t->blocked) {
                rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
                rd_kafka_resp_err_t err;
                rd_kafka_topic_partition_list_add(l, topic, partition)->offset = store;
                err = rd_kafka_offsets_store(t->rk, l);
                if (err) /* the partition was revoked meanwhile: its next owner
                          * re-reads these jobs, and the step makes them no-ops */
                        kf_warn("storing offset %s/%d/%lld: %s", topic, (int)partition,
                                (long long)store, rd_kafka_err2str(err));
                else
                        p->stored = store;
                rd_kafka_topic_partition_list_destroy(l);
        }
out:
        pthread_mutex_unlock(&t->lock);
        return rc;
}

rd_kafka_topic_partition_list_t *kw_offsets_positions(kw_offsets_t *t)
{
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
        pthread_mutex_lock(&t->lock);
        for (part_t *p = t->parts; l && p; p = p->next)
                if (p->stored >= 0)
                        rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
                            p->stored;
        pthread_mutex_unlock(&t->lock);
        return l;
}

void kw_offsets_forget(kw_offsets_t *t)
{
        pthread_mutex_lock(&t->lock);
        parts_free(t);
        pthread_mutex_unlock(&t->lock);
}
