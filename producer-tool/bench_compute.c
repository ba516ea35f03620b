/* bench_compute.c - the compute-only limit of `kinfer bench`: the worker's
 * forward passes with no queue or Redis around them; and its random inputs. */
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "kf_util.h"
#include "kinfer.h"

/* Input buffers of at most this many bytes are cycled through, so the timed
 * loop does not run on one cache-hot batch. */
#define KC_COMPUTE_POOL_BYTES (64u << 20)

void kc_bench_random(uint64_t *state, float *x, size_t n)
{
        for (size_t i = 0; i < n; i++)
                x[i] = (float)kf_splitmix64_pm1(state);
}

/* One compute thread's share: rows of the total, in batches, reading the
 * shared input pool from its own starting batch. */
typedef struct kc_compute_part_s {
        const model_t *m;
        const float *pool; /* npool batches of per floats, shared, read-only */
        size_t npool, per;
        uint32_t batch;
        size_t first; /* pool batch this thread starts at */
        uint64_t rows;
        pthread_barrier_t *start; /* all parts warmed up: the clock starts */
        volatile sig_atomic_t *stop;
        int failed; /* out of memory */
} kc_compute_part_t;

static void *kc_compute_main(void *arg)
{
        kc_compute_part_t *p = arg;
        model_scratch_t s = {0};
        float *Y = malloc((size_t)p->batch * p->m->output_dim * sizeof(float));

        /* Warm-up: OpenBLAS starts its threads, scratch is allocated. */
        if (!Y || model_forward(p->m, p->pool, p->batch, Y, &s))
                p->failed = 1;
        pthread_barrier_wait(p->start);
        for (uint64_t done = 0, k = p->first; !p->failed && done < p->rows && !*p->stop; k++) {
                uint32_t r = p->rows - done < p->batch ? (uint32_t)(p->rows - done) : p->batch;
                if (model_forward(p->m, p->pool + (k % p->npool) * p->per, r, Y, &s))
                        p->failed = 1;
                done += r;
        }
        model_scratch_free(&s);
        free(Y);
        return NULL;
}

int kc_bench_compute(const model_t *m, const kc_compute_t *cc, volatile sig_atomic_t *stop)
{
        uint64_t total = cc->jobs * cc->rows_per_job, seed = cc->seed;
        uint32_t batch = cc->batch_rows < total ? cc->batch_rows : (uint32_t)total;
        int nthreads = cc->threads > 0 ? cc->threads : 1, started = 0, failed = 0;
        size_t per = (size_t)batch * m->input_dim, npool;
        kc_compute_part_t *parts = NULL;
        pthread_t *tids = NULL;
        pthread_barrier_t start;
        float *pool = NULL;
        kc_cpu_t cpu;
        json_t *o, *cj;
        int64_t t0, t1;
        double secs, rows_s;
        char err[256];
        int rc = KC_EXIT_FAIL;

        if (kc_cpu_init(&cpu, cc->cpu_pids, err, sizeof(err))) {
                kc_err("bench: --cpu-pids: %s", err);
                return KC_EXIT_USAGE;
        }
        npool = KC_COMPUTE_POOL_BYTES / (per * sizeof(float));
        if (npool < 1)
                npool = 1;
        if ((uint64_t)npool * batch > total)
                npool = (size_t)((total + batch - 1) / batch);
        if (!(pool = malloc(npool * per * sizeof(float))) ||
            !(parts = calloc((size_t)nthreads, sizeof(*parts))) ||
            !(tids = calloc((size_t)nthreads, sizeof(*tids)))) {
                kc_err("bench: out of memory");
                goto out;
        }
        kc_bench_random(&seed, pool, npool * per);
        openblas_set_num_threads(cc->blas_threads);
        pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
        for (int i = 0; i < nthreads; i++) {
                kc_compute_part_t *p = &parts[i];
                *p = (kc_compute_part_t){m,
                                         pool,
                                         npool,
                                         per,
                                         batch,
                                         (size_t)i * npool / nthreads,
                                         total / nthreads + ((uint64_t)i < total % nthreads),
                                         &start,
                                         stop,
                                         0};
                if (pthread_create(&tids[i], NULL, kc_compute_main, p)) {
                        kc_err("bench: cannot start compute thread %d", i + 1);
                        /* the barrier never opens without every thread */
                        exit(KC_EXIT_FAIL);
                }
                started++;
        }
        pthread_barrier_wait(&start);
        kc_cpu_sample(&cpu, 0);
        t0 = kf_mono_us();
        for (int i = 0; i < started; i++) {
                pthread_join(tids[i], NULL);
                failed |= parts[i].failed;
        }
        t1 = kf_mono_us();
        kc_cpu_sample(&cpu, 1);
        pthread_barrier_destroy(&start);
        if (failed) {
                kc_err("bench: out of memory");
                goto out;
        }
        if (*stop)
                goto out;

        secs = (double)(t1 - t0) / 1e6;
        rows_s = secs > 0 ? (double)total / secs : 0;
        o = json_object();
        json_object_set_new(o, "mode", json_string("compute"));
        json_object_set_new(o, "model", json_string(m->name));
        json_object_set_new(o, "cols", json_integer(m->input_dim));
        json_object_set_new(o, "rows_per_job", json_integer(cc->rows_per_job));
        json_object_set_new(o, "jobs", json_integer((json_int_t)cc->jobs));
        json_object_set_new(o, "rows", json_integer((json_int_t)total));
        json_object_set_new(o, "batch_rows", json_integer(batch));
        json_object_set_new(o, "threads", json_integer(nthreads));
        json_object_set_new(o, "blas_threads", json_integer(cc->blas_threads));
        json_object_set_new(o, "elapsed_s", kc_bench_real(secs));
        json_object_set_new(o, "jobs_per_s", kc_bench_real(rows_s / (double)cc->rows_per_job));
        json_object_set_new(o, "rows_per_s", kc_bench_real(rows_s));
        json_object_set_new(o, "gflops", kc_bench_real(rows_s * (double)m->flops_per_row / 1e9));
        if ((cj = kc_cpu_json(&cpu, (double)cc->jobs)))
                json_object_set_new(o, "cpu", cj);
        kc_print_json(o);
        fflush(stdout);
        json_decref(o);
        rc = KC_EXIT_OK;
out:
        free(tids);
        free(parts);
        free(pool);
        return rc;
}
