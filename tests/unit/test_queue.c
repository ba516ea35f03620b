/* test_queue.c - the FIFO between the worker's threads (worker/queue.c):
 * order, blocking pops woken by a push, and close waking every waiter. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "../../worker/queue.h"

static void test_fifo(void **state)
{
        kw_queue_t q;
        kw_batch_t b[5];
        (void)state;
        memset(b, 0, sizeof(b));
        kw_queue_init(&q);
        kw_queue_push(&q, &b[0]);
        kw_queue_push(&q, &b[1]);
        assert_ptr_equal(kw_queue_pop(&q), &b[0]);
        kw_queue_push(&q, &b[2]);
        kw_queue_push(&q, &b[3]);
        assert_ptr_equal(kw_queue_pop(&q), &b[1]);
        assert_ptr_equal(kw_queue_pop(&q), &b[2]);
        assert_ptr_equal(kw_queue_pop(&q), &b[3]);
        assert_null(b[3].next);
        /* emptied and filled again: the tail was reset */
        kw_queue_push(&q, &b[4]);
        kw_queue_push(&q, &b[0]);
        assert_ptr_equal(kw_queue_pop(&q), &b[4]);
        /* closed: what is queued still comes out, then NULL */
        kw_queue_close(&q);
        assert_ptr_equal(kw_queue_pop(&q), &b[0]);
        assert_null(kw_queue_pop(&q));
        assert_null(kw_queue_pop(&q));
        kw_queue_destroy(&q);
}

typedef struct {
        kw_queue_t *q;
        kw_batch_t *got[100];
        atomic_int n;
} popper_t;

static void *popper(void *arg)
{
        popper_t *p = arg;
        kw_batch_t *b;
        while ((b = kw_queue_pop(p->q))) {
                p->got[atomic_load(&p->n)] = b;
                atomic_fetch_add(&p->n, 1);
        }
        return NULL;
}

static void nap(void)
{
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
}

/* Two threads waiting: pushes wake them, every batch comes out once, and
 * close wakes both when the queue is empty. */
static void test_threads(void **state)
{
        kw_queue_t q;
        kw_batch_t b[100];
        popper_t p[2];
        pthread_t t[2];
        int seen[100] = {0};
        (void)state;
        memset(b, 0, sizeof(b));
        kw_queue_init(&q);
        for (int i = 0; i < 2; i++) {
                memset(&p[i], 0, sizeof(p[i]));
                atomic_init(&p[i].n, 0);
                p[i].q = &q;
                assert_int_equal(pthread_create(&t[i], NULL, popper, &p[i]), 0);
        }
        nap(); /* both are waiting now */
        for (int i = 0; i < 100; i++) {
                kw_queue_push(&q, &b[i]);
                if (i % 10 == 0)
                        nap();
        }
        /* every batch comes out while the queue is open: a push wakes a
         * waiter, not only the close */
        for (int waited = 0; atomic_load(&p[0].n) + atomic_load(&p[1].n) < 100; waited++) {
                if (waited > 250)
                        fail_msg("only %d of 100 batches popped after 5 s",
                                 atomic_load(&p[0].n) + atomic_load(&p[1].n));
                nap();
        }
        kw_queue_close(&q);
        for (int i = 0; i < 2; i++)
                assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(atomic_load(&p[0].n) + atomic_load(&p[1].n), 100);
        for (int i = 0; i < 2; i++)
                for (int k = 0; k < atomic_load(&p[i].n); k++) {
                        int at = (int)(p[i].got[k] - b);
                        assert_int_equal(seen[at], 0);
                        seen[at] = 1;
                        if (k) /* each thread sees them in queue order */
                                assert_true(p[i].got[k] > p[i].got[k - 1]);
                }
        kw_queue_destroy(&q);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_fifo),
            cmocka_unit_test(test_threads),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
