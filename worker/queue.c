/* queue.c - the mutex + condition variable FIFO of queue.h. */
#include "queue.h"

#include <errno.h>
#include <time.h>

void kw_queue_init(kw_queue_t *q)
{
        pthread_condattr_t ca;
        pthread_mutex_init(&q->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&q->cond, &ca);
        pthread_condattr_destroy(&ca);
        q->head = q->tail = NULL;
        q->len            = 0;
        q->closed         = 0;
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
        q->len++;
        pthread_cond_signal(&q->cond);
        pthread_mutex_unlock(&q->lock);
}

kw_batch_t *kw_queue_pop(kw_queue_t *q, int timeout_ms)
{
        struct timespec until;
        kw_batch_t *b = NULL;

        if (timeout_ms >= 0) {
                clock_gettime(CLOCK_MONOTONIC, &until);
                until.tv_sec += timeout_ms / 1000;
                until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
                if (until.tv_nsec >= 1000000000L) {
                        until.tv_sec++;
                        until.tv_nsec -= 1000000000L;
                }
        }
        pthread_mutex_lock(&q->lock);
        while (!q->head && !q->closed) {
                if (timeout_ms < 0)
                        pthread_cond_wait(&q->cond, &q->lock);
                else if (pthread_cond_timedwait(&q->cond, &q->lock, &until) == ETIMEDOUT)
                        break;
        }
        if ((b = q->head)) {
                q->head = b->next;
                if (!q->head)
                        q->tail = NULL;
                q->len--;
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
