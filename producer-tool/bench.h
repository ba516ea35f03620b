/* bench.h - the parts of `kinfer bench` (cmd_bench.c) that stand on their own:
 * CPU accounting of processes from /proc (bench_cpu.c), and random inputs and
 * the compute-only limit (bench_compute.c).  Single-threaded, like the CLI. */
#ifndef KC_BENCH_H
#define KC_BENCH_H

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kinfer.h"
#include "model.h"

#define KC_CPU_MAX_PIDS 8 /* processes named with --cpu-pids */

/* One process's CPU time (utime + stime), or with pid 0 the busy time of the
 * whole machine, at the start and the end of a window, in clock ticks; -1 if
 * it could not be read (the process went away). */
typedef struct kc_cpu_proc_s {
        pid_t pid;
        char name[32]; /* "machine", "kinfer-bench" or the process's comm */
        int64_t t0, t1;
} kc_cpu_proc_t;

/* The machine, this process, then the --cpu-pids processes, over one window. */
typedef struct kc_cpu_s {
        kc_cpu_proc_t p[KC_CPU_MAX_PIDS + 2];
        int n;
        int64_t t0_us, t1_us; /* the window, monotonic */
} kc_cpu_t;

/* Fills cpu with the machine, this process and the comma-separated pids
 * (NULL: none), each named after /proc/PID/comm.  Returns 0, or -1 with
 * errstr naming a pid that is not a running process. */
int kc_cpu_init(kc_cpu_t *cpu, const char *pids, char *errstr, size_t errstr_size);

/* Samples every process: the start (end = 0) or the end of the window. */
void kc_cpu_sample(kc_cpu_t *cpu, int end);

/* {"window_s": W, "<name>": {"cores": C, "us_per_job": U}, ..., "other": {..}}
 * where cores = CPU seconds / window seconds (2.0: two cores busy throughout)
 * and "other" is the machine minus every process listed: others' load, which
 * makes a measurement unreliable.  Returns a new object, or NULL when the
 * window or jobs is empty. */
json_t *kc_cpu_json(const kc_cpu_t *cpu, double jobs);

/* bench_probe.c: when results become visible to a client.  A thread with
 * its own Redis connection BLPOPs the done lists of the jobs added to it and
 * notes the wall-clock instant each list received its element.  The worker's
 * `done` field is when the result was computed; a result is visible only
 * once the worker has written it, which a pipelined worker may do later. */
typedef struct kc_probe_s kc_probe_t;

/* Starts the thread for jobs with indexes 0..n_jobs-1, at most max_probes of
 * them added.  Connects like kc_redis (exits 3 if Redis is unreachable).
 * Returns NULL when out of memory or the thread cannot start. */
kc_probe_t *kc_probe_start(const kc_conf_t *conf, size_t n_jobs, size_t max_probes);

/* Watches job idx (id: its job id) from now on; call after producing it.
 * Called from the publishing thread. */
void kc_probe_add(kc_probe_t *p, size_t idx, const char *id);

/* Lets the thread watch until every added job was seen or wait_us has
 * passed, then stops it.  Returns 0, or -1 if its Redis connection failed. */
int kc_probe_finish(kc_probe_t *p, int64_t wait_us);

/* After kc_probe_finish: the Unix us job idx's result was seen, 0 if never;
 * and whether more jobs were pending than one BLPOP watches (a backlog: their
 * instants are late, upper bounds). */
int64_t kc_probe_seen_us(const kc_probe_t *p, size_t idx);
int kc_probe_overflowed(const kc_probe_t *p);

void kc_probe_free(kc_probe_t *p); /* accepts NULL */

/* Fills x with n values uniform in [-1, 1) from a splitmix64 state (the same
 * seed gives the same inputs on every machine). */
void kc_bench_random(uint64_t *state, float *x, size_t n);

/* A number for the JSON report, rounded to 3 decimals so the line stays
 * readable. */
static inline json_t *kc_bench_real(double v)
{
        return json_real(round(v * 1000.0) / 1000.0);
}

/* What the compute-only limit runs: jobs x rows_per_job rows through
 * model_forward in batches of batch_rows, split over `threads` threads (as the
 * worker's compute threads), each call with blas_threads OpenBLAS threads. */
typedef struct kc_compute_s {
        uint64_t jobs;
        uint32_t rows_per_job;
        uint32_t batch_rows;
        int threads;
        int blas_threads;
        uint64_t seed;
        const char *cpu_pids; /* also report these processes' CPU time (NULL: none) */
} kc_compute_t;

/* Times the forward passes of model m and prints one JSON line on stdout
 * ({"mode":"compute", ..., "rows_per_s", "jobs_per_s", "gflops", "cpu"}).
 * The clock runs from when every thread has done one warm-up pass until the
 * last one finishes.  Stops early, printing nothing, once *stop is set.
 * Returns a KC_EXIT_ code. */
int kc_bench_compute(const model_t *m, const kc_compute_t *cc, volatile sig_atomic_t *stop);

#endif
