/* queue.h - a blocking FIFO of batches between the worker's threads.
 *
 * Unbounded by itself: the loop thread bounds the pipeline by counting the
 * batches in flight (worker.c).  kw_queue_close() wakes every waiter; a
 * closed, empty queue pops NULL.  Thread-safe. */
#ifndef KW_QUEUE_H
#define KW_QUEUE_H

#include <pthread.h>

#include "batch.h"

typedef struct kw_queue_s {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        kw_batch_t *head, *tail;
        int closed;
} kw_queue_t;

void kw_queue_init(kw_queue_t *q);
void kw_queue_destroy(kw_queue_t *q); /* the queue must be empty */
void kw_queue_push(kw_queue_t *q, kw_batch_t *b);
/* Waits for a batch; NULL once the queue is closed and empty. */
kw_batch_t *kw_queue_pop(kw_queue_t *q);
void kw_queue_close(kw_queue_t *q);

#endif
