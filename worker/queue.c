/* queue.c - the mutex + condition variable FIFO of queue.h. */
#include "queue.h"

#include <stddef.h>

void kw_queue_init(kw_queue_t *q)
{
        pthread_mutex_init(&q->lock, NULL);
        pthread_cond_init(&q->cond, NULL);
        q->head = q->tail = NULL;
        q->closed = 0;
}

void kw_queue_destroy(kw_queue_t *q)
{
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->cond);
}

void kw_queue_push(kw_queue_t *q, kw_batch_t *b)
{
        b->next = NULL;
        pthread_mutex_lock(&q->lock);
        if (q->tail)
                q->tail->next = b;
        else
                q->head = b;
        q->tail = b;
        pthread_cond_signal(&q->cond);
        pthread_mutex_unlock(&q->lock);
}

kw_batch_t *kw_queue_pop(kw_queue_t *q)
{
        kw_batch_t *b;

        pthread_mutex_lock(&q->lock);
        while (!q->head && !q->closed)
                pthread_cond_wait(&q->cond, &q->lock);
        if ((b = q->head)) {
                q->head = b->next;
                if (!q->head)
                        q->tail = NULL;
                b->next = NULL;
        }
        pthread_mutex_unlock(&q->lock);
        return b;
}

void kw_queue_close(kw_queue_t *q)
{
        pthread_mutex_lock(&q->lock);
        q->closed = 1;
        pthread_cond_broadcast(&q->cond);
        pthread_mutex_unlock(&q->lock);
}
