/* test_offsets.c - the offset tracker (worker/offsets.c), the heart of
 * at-least-once: what it stores when jobs finish in order, out of order,
 * with gaps, after a revoke, and when memory runs out.
 *
 * Linked with -Wl,--wrap (see the Makefile): rd_kafka_offsets_store is
 * replaced by a recorder, so no broker or consumer handle is needed, and
 * malloc, calloc, realloc and strdup can be made to fail on demand, so the
 * production object is tested as the worker links it, without test hooks. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/offsets.h"

/* --- allocation failure on demand --------------------------------------- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static int fail_allocs; /* while set, every wrapped allocation fails */
static int failed;      /* allocations refused so far */

void *__wrap_malloc(size_t n)
{
        if (fail_allocs) {
                failed++;
                return NULL;
        }
        return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
        if (fail_allocs) {
                failed++;
                return NULL;
        }
        return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
        if (fail_allocs) {
                failed++;
                return NULL;
        }
        return __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
        if (fail_allocs) {
                failed++;
                return NULL;
        }
        return __real_strdup(s);
}

/* --- rd_kafka_offsets_store, recorded ----------------------------------- */

rd_kafka_resp_err_t __wrap_rd_kafka_offsets_store(rd_kafka_t *rk,
                                                  rd_kafka_topic_partition_list_t *offsets);

#define MAX_STORES 100000
static struct {
        char topic[64];
        int32_t partition;
        int64_t offset;
} stores[MAX_STORES];
static int nstores;

rd_kafka_resp_err_t __wrap_rd_kafka_offsets_store(rd_kafka_t *rk,
                                                  rd_kafka_topic_partition_list_t *offsets)
{
        (void)rk;
        for (int i = 0; i < offsets->cnt; i++) {
                assert_true(nstores < MAX_STORES);
                strncpy(stores[nstores].topic, offsets->elems[i].topic,
                        sizeof(stores[nstores].topic) - 1);
                stores[nstores].partition = offsets->elems[i].partition;
                stores[nstores].offset = offsets->elems[i].offset;
                nstores++;
        }
        return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* The highest offset stored for a partition, -1 if none. */
static int64_t stored(const char *topic, int32_t partition)
{
        int64_t max = -1;
        for (int i = 0; i < nstores; i++)
                if (stores[i].partition == partition && !strcmp(stores[i].topic, topic) &&
                    stores[i].offset > max)
                        max = stores[i].offset;
        return max;
}

/* The last offset stored for a partition, -1 if none. */
static int64_t last_stored(const char *topic, int32_t partition)
{
        for (int i = nstores - 1; i >= 0; i--)
                if (stores[i].partition == partition && !strcmp(stores[i].topic, topic))
                        return stores[i].offset;
        return -1;
}

static int setup(void **state)
{
        (void)state;
        nstores = 0;
        fail_allocs = 0;
        failed = 0;
        return 0;
}

/* --- out of memory ------------------------------------------------------ */

/* The ring of a partition is full (1024 offsets) and cannot grow when
 * offset 1024 is consumed: that message is lost to the tracker, so no
 * offset past it may ever be stored, whatever finishes later. */
static void test_oom_growing_ring(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        assert_non_null(t);
        for (int64_t o = 0; o < 1024; o++)
                assert_int_equal(kw_offsets_add(t, "jobs", 0, o), 0);
        fail_allocs = 1;
        assert_int_equal(kw_offsets_add(t, "jobs", 0, 1024), -1);
        fail_allocs = 0;
        assert_true(failed > 0);
        for (int64_t o = 1025; o < 1100; o++)
                kw_offsets_add(t, "jobs", 0, o);
        for (int64_t o = 0; o < 1100; o++)
                kw_offsets_done(t, "jobs", 0, o);
        assert_true(stored("jobs", 0) <= 1024);
        kw_offsets_destroy(t);
}

/* The first message of a partition cannot even get the partition's state:
 * nothing of that partition past it may be stored. */
static void test_oom_new_partition(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        assert_non_null(t);
        fail_allocs = 1;
        assert_int_equal(kw_offsets_add(t, "jobs", 3, 500), -1);
        fail_allocs = 0;
        for (int64_t o = 501; o < 600; o++)
                kw_offsets_add(t, "jobs", 3, o);
        for (int64_t o = 501; o < 600; o++)
                kw_offsets_done(t, "jobs", 3, o);
        assert_true(stored("jobs", 3) <= 500);
        kw_offsets_destroy(t);
}

/* The block holds for any order of completion, and only for its partition:
 * another partition goes on storing. */
static void test_oom_blocks_only_its_partition(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        for (int64_t o = 0; o < 1024; o++) {
                kw_offsets_add(t, "jobs", 0, o);
                kw_offsets_add(t, "jobs", 1, o);
        }
        fail_allocs = 1;
        assert_int_equal(kw_offsets_add(t, "jobs", 0, 1024), -1);
        fail_allocs = 0;
        kw_offsets_add(t, "jobs", 1, 1024);
        for (int64_t o = 1025; o < 3000; o++) {
                kw_offsets_add(t, "jobs", 0, o);
                kw_offsets_add(t, "jobs", 1, o);
        }
        for (int64_t o = 2999; o >= 0; o--) { /* backwards: one store at the end */
                kw_offsets_done(t, "jobs", 0, o);
                kw_offsets_done(t, "jobs", 1, o);
        }
        assert_int_equal(stored("jobs", 0), 1024); /* everything below it is done */
        assert_int_equal(stored("jobs", 1), 3000);
        kw_offsets_destroy(t);
}

/* A message lost before it was tracked (kw_offsets_lost): the same block,
 * also when later offsets of the partition are tracked already, and the
 * lowest of two losses wins. */
static void test_lost_blocks(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        for (int64_t o = 10; o < 20; o++)
                kw_offsets_add(t, "jobs", 0, o);
        kw_offsets_lost(t, "jobs", 0, 25, "test");
        kw_offsets_lost(t, "jobs", 0, 22, "test");
        kw_offsets_lost(t, "jobs", 0, 30, "test");
        for (int64_t o = 23; o < 40; o++)
                kw_offsets_add(t, "jobs", 0, o);
        for (int64_t o = 10; o < 15; o++)
                kw_offsets_done(t, "jobs", 0, o);
        assert_int_equal(last_stored("jobs", 0), 15); /* below the loss: stored */
        for (int64_t o = 15; o < 40; o++)
                kw_offsets_done(t, "jobs", 0, o);
        assert_int_equal(stored("jobs", 0), 22);
        /* a partition never tracked before: blocked from its first message */
        kw_offsets_lost(t, "jobs", 5, 100, "test");
        for (int64_t o = 101; o < 110; o++)
                kw_offsets_add(t, "jobs", 5, o);
        for (int64_t o = 101; o < 110; o++)
                kw_offsets_done(t, "jobs", 5, o);
        assert_true(stored("jobs", 5) <= 100);
        kw_offsets_destroy(t);
}

/* Out of memory even for the state of the lost message's partition: every
 * partition stops storing, until kw_offsets_forget. */
static void test_lost_without_memory_blocks_all(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        kw_offsets_add(t, "jobs", 1, 0);
        fail_allocs = 1;
        kw_offsets_lost(t, "jobs", 0, 7, "test");
        fail_allocs = 0;
        kw_offsets_add(t, "jobs", 0, 8);
        kw_offsets_done(t, "jobs", 0, 8);
        kw_offsets_done(t, "jobs", 1, 0);
        assert_int_equal(nstores, 0);
        kw_offsets_forget(t);
        kw_offsets_add(t, "jobs", 1, 1);
        kw_offsets_done(t, "jobs", 1, 1);
        assert_int_equal(last_stored("jobs", 1), 2);
        kw_offsets_destroy(t);
}

/* A revoke (kw_offsets_forget) ends a block: the next owner starts at the
 * committed offset, which is at most the lost one. */
static void test_forget_clears_block(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        kw_offsets_lost(t, "jobs", 0, 5, "test");
        kw_offsets_add(t, "jobs", 0, 6);
        kw_offsets_done(t, "jobs", 0, 6);
        assert_true(stored("jobs", 0) <= 5);
        kw_offsets_forget(t);
        kw_offsets_add(t, "jobs", 0, 5);
        kw_offsets_add(t, "jobs", 0, 6);
        kw_offsets_done(t, "jobs", 0, 5);
        kw_offsets_done(t, "jobs", 0, 6);
        assert_int_equal(last_stored("jobs", 0), 7);
        kw_offsets_destroy(t);
}

/* --- normal operation ---------------------------------------------------- */

/* In order: each done message stores the offset after it. */
static void test_in_order(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        for (int64_t o = 100; o < 105; o++)
                assert_int_equal(kw_offsets_add(t, "jobs", 2, o), 0);
        for (int64_t o = 100; o < 105; o++) {
                assert_int_equal(kw_offsets_done(t, "jobs", 2, o), 0);
                assert_int_equal(last_stored("jobs", 2), o + 1);
        }
        assert_int_equal(nstores, 5);
        assert_string_equal(stores[0].topic, "jobs");
        assert_int_equal(stores[0].partition, 2);
        kw_offsets_destroy(t);
}

/* Out of order: nothing is stored while an earlier message is not done;
 * then the whole done prefix at once. */
static void test_out_of_order(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        for (int64_t o = 0; o < 6; o++)
                kw_offsets_add(t, "jobs", 0, o);
        kw_offsets_done(t, "jobs", 0, 3);
        kw_offsets_done(t, "jobs", 0, 1);
        kw_offsets_done(t, "jobs", 0, 5);
        assert_int_equal(nstores, 0);
        kw_offsets_done(t, "jobs", 0, 0);
        assert_int_equal(nstores, 1);
        assert_int_equal(last_stored("jobs", 0), 2); /* 0 and 1 done, 2 not */
        kw_offsets_done(t, "jobs", 0, 2);
        assert_int_equal(last_stored("jobs", 0), 4);
        kw_offsets_done(t, "jobs", 0, 4);
        assert_int_equal(last_stored("jobs", 0), 6);
        assert_int_equal(nstores, 3);
        kw_offsets_destroy(t);
}

/* Gaps between offsets (compaction, transaction markers): the stored
 * offset is the one after the last done message. */
static void test_gaps(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        kw_offsets_add(t, "jobs", 0, 10);
        kw_offsets_add(t, "jobs", 0, 20);
        kw_offsets_add(t, "jobs", 0, 35);
        kw_offsets_done(t, "jobs", 0, 20);
        assert_int_equal(nstores, 0);
        kw_offsets_done(t, "jobs", 0, 10);
        assert_int_equal(last_stored("jobs", 0), 21);
        /* an offset in a gap, or never added, is not tracked */
        assert_int_equal(kw_offsets_done(t, "jobs", 0, 30), -1);
        assert_int_equal(kw_offsets_done(t, "jobs", 0, 36), -1);
        assert_int_equal(kw_offsets_done(t, "jobs", 9, 35), -1);
        assert_int_equal(kw_offsets_done(t, "other", 0, 35), -1);
        assert_int_equal(nstores, 1);
        assert_int_equal(kw_offsets_done(t, "jobs", 0, 35), 0);
        assert_int_equal(last_stored("jobs", 0), 36);
        kw_offsets_destroy(t);
}

/* Done twice (a redelivered copy in the same tracker): no second store. */
static void test_done_twice(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        kw_offsets_add(t, "jobs", 0, 1);
        kw_offsets_add(t, "jobs", 0, 2);
        kw_offsets_done(t, "jobs", 0, 2);
        kw_offsets_done(t, "jobs", 0, 2);
        assert_int_equal(nstores, 0);
        kw_offsets_done(t, "jobs", 0, 1);
        assert_int_equal(kw_offsets_done(t, "jobs", 0, 1), -1); /* popped already */
        assert_int_equal(nstores, 1);
        assert_int_equal(last_stored("jobs", 0), 3);
        kw_offsets_destroy(t);
}

/* Partitions and topics are tracked apart. */
static void test_partitions_apart(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        kw_offsets_add(t, "jobs", 0, 5);
        kw_offsets_add(t, "jobs", 1, 5);
        kw_offsets_add(t, "other", 0, 5);
        kw_offsets_add(t, "jobs", 0, 6);
        kw_offsets_done(t, "jobs", 0, 6);
        kw_offsets_done(t, "other", 0, 5);
        assert_int_equal(nstores, 1);
        assert_string_equal(stores[0].topic, "other");
        kw_offsets_done(t, "jobs", 1, 5);
        assert_int_equal(last_stored("jobs", 1), 6);
        assert_int_equal(stored("jobs", 0), -1);
        kw_offsets_done(t, "jobs", 0, 5);
        assert_int_equal(last_stored("jobs", 0), 7);
        kw_offsets_destroy(t);
}

/* After a revoke nothing of the old state is stored, and the partition
 * starts over when it comes back. */
static void test_revoke(void **state)
{
        kw_offsets_t *t = kw_offsets_new(NULL);
        (void)state;
        kw_offsets_add(t, "jobs", 0, 1);
        kw_offsets_add(t, "jobs", 0, 2);
        kw_offsets_done(t, "jobs", 0, 2);
        kw_offsets_forget(t);
        /* the abandoned batch's write finishes late: not tracked, not stored */
        assert_int_equal(kw_offsets_done(t, "jobs", 0, 1), -1);
        assert_int_equal(nstores, 0);
        kw_offsets_add(t, "jobs", 0, 1);
        kw_offsets_done(t, "jobs", 0, 1);
        assert_int_equal(last_stored("jobs", 0), 2);
        kw_offsets_destroy(t);
}

/* Many offsets in flight: the ring wraps and grows (past its first 1024)
 * with the done prefix popped in between, in random completion order;
 * whatever is stored is the end of a done prefix, never past an offset not
 * yet done, and everything is stored at the end. */
static void test_ring_wraps_and_grows(void **state)
{
        enum { N = 5000 };
        static int64_t order[N];
        static uint8_t done[N];
        kw_offsets_t *t = kw_offsets_new(NULL);
        uint64_t x = 88172645463325252ULL;
        int64_t next = 0, added = 0;
        (void)state;
        memset(done, 0, sizeof(done));
        /* add in windows of up to 1500 ahead, finish in random order */
        while (next < N) {
                while (added < N && added < next + 1500)
                        assert_int_equal(kw_offsets_add(t, "jobs", 0, added++), 0);
                int64_t n = 0;
                for (int64_t i = next; i < added; i++)
                        if (!done[i])
                                order[n++] = i;
                for (int64_t i = n - 1; i > 0; i--) { /* shuffle */
                        int64_t k, tmp;
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        k = (int64_t)(x % (uint64_t)(i + 1));
                        tmp = order[i];
                        order[i] = order[k];
                        order[k] = tmp;
                }
                for (int64_t i = 0; i < n / 2 + 1 && i < n; i++) {
                        int64_t o = order[i];
                        int64_t s;
                        assert_int_equal(kw_offsets_done(t, "jobs", 0, o), 0);
                        done[o] = 1;
                        s = last_stored("jobs", 0);
                        for (int64_t k = 0; k < s; k++)
                                if (!done[k])
                                        fail_msg("stored %lld with %lld not done", (long long)s,
                                                 (long long)k);
                }
                while (next < N && done[next])
                        next++;
        }
        assert_int_equal(last_stored("jobs", 0), N);
        kw_offsets_destroy(t);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup(test_oom_growing_ring, setup),
            cmocka_unit_test_setup(test_oom_new_partition, setup),
            cmocka_unit_test_setup(test_oom_blocks_only_its_partition, setup),
            cmocka_unit_test_setup(test_lost_blocks, setup),
            cmocka_unit_test_setup(test_lost_without_memory_blocks_all, setup),
            cmocka_unit_test_setup(test_forget_clears_block, setup),
            cmocka_unit_test_setup(test_in_order, setup),
            cmocka_unit_test_setup(test_out_of_order, setup),
            cmocka_unit_test_setup(test_gaps, setup),
            cmocka_unit_test_setup(test_done_twice, setup),
            cmocka_unit_test_setup(test_partitions_apart, setup),
            cmocka_unit_test_setup(test_revoke, setup),
            cmocka_unit_test_setup(test_ring_wraps_and_grows, setup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
