/* bench.h - the parts of `kinfer bench` (cmd_bench.c) that stand on their own:
 * CPU accounting of processes from /proc (bench_cpu.c), the probe that times
 * when results become visible (bench_probe.c, one thread of its own), and
 * random inputs and the compute-only limit (bench_compute.c, its own compute
 * threads).  A drain or open run, which uses them, is bench_run.h's.
 * Everything else runs on the calling thread, like the CLI. */
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

/* bench_probe.c: when results become visible to a client.  Every job of a
 * run names the run's inbox, so the worker pushes the job's id onto its
 * user's list {prefix}{USER}:inbox:NAME when it writes the result.  A thread
 * with its own Redis connection pops the lists of the users that have a
 * sampled job announced and not yet seen (BLMPOP, Redis >= 7.0), and notes
 * the wall-clock instant the id of each sampled job (every every-th index)
 * arrives.  The worker's `done` field is when the result was computed; a
 * result is visible only once the worker has written it, which a pipelined
 * worker may do later. */
typedef struct kc_probe_s kc_probe_t;

/* Announce a sampled job this long before publishing it: the thread changes
 * the lists it watches at least every 20 ms, and an id that arrives on a list
 * not watched yet is seen late. */
#define KC_PROBE_LEAD_US 25000

/* Gives in *idx the index of the job whose id is id (len bytes, not
 * terminated); returns 0, or -1 if it is not an id of this run.  Called from
 * the probe thread: it must only read what does not change while it runs. */
typedef int(kc_probe_idx_fn)(const char *id, size_t len, const void *opaque, size_t *idx);

/* Starts the thread for jobs 0..n_jobs-1, sampling jobs 0, every, 2*every..,
 * whose ids arrive on the inbox named inbox of users[0..n_users-1]; idx_of
 * (with opaque) maps ids to indexes.  Connects like kc_redis (exits 3 if Redis
 * is unreachable).  Returns NULL when out of memory, an inbox key cannot be
 * built, or the thread cannot start. */
kc_probe_t *kc_probe_start(const kc_conf_t *conf, char (*users)[JOB_USER_MAX + 1], size_t n_users,
                           const char *inbox, size_t n_jobs, size_t every, kc_probe_idx_fn *idx_of,
                           const void *opaque);

/* Announces sampled job idx, whose id will arrive on the inbox of
 * users[user]: the thread watches that list until the id has come.  Call it
 * at least KC_PROBE_LEAD_US before publishing the job.  Ignores an index that
 * is not sampled, and one announced before.  Called from the publishing
 * thread. */
void kc_probe_add(kc_probe_t *p, size_t idx, size_t user);

/* Lets the thread pop until expect sampled jobs were seen (the announced
 * sampled jobs that were delivered; 0: stop at once) or wait_us has passed,
 * then stops it.  Returns 0, or -1 if its Redis connection failed. */
int kc_probe_finish(kc_probe_t *p, size_t expect, int64_t wait_us);

/* After kc_probe_finish: the Unix us job idx's id was first popped, 0 if
 * never or idx is not sampled; and whether more users had a job pending than
 * one BLMPOP watches (they were watched in turns: instants are late, upper
 * bounds). */
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
