/* cmd_bench.c - `kinfer bench`: a load generator that drains a backlog or runs
 * an open loop and reports throughput and end-to-end latency; its compute
 * mode (bench_compute.c) times the same forward passes without queue or Redis.
 * This file holds the options, their check against the mode, and the
 * dispatch: a drain or open run is bench_run.c's (bench_run.h tells its
 * parts).
 *
 * It speaks protocol v2 (docs/protocol.md) like any client: every job names
 * the run's inbox ("bench-RUN", one list per user), so the Redis cost it
 * measures includes the worker's inbox push (one per user per batch); results
 * are read with GET and kf_result_decode(); completion is learnt from the
 * users' usage counters. */
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "bench_run.h"
#include "kf_util.h"
#include "kinfer.h"
#include "model.h"

#define O(f)  offsetof(kc_bench_conf_t, f)
#define OK(f) offsetof(kc_bench_conf_t, kc.f)

static const kf_opt_t bench_opts[] = {
    KC_OPTS_CONN,
    {"mode", 0, NULL, KF_OPT_STR, O(mode), 0, 0, "drain", "MODE",
     "drain (publish --jobs, time until all are done), open (--rate for --duration) or "
     "compute (forward passes only)"},
    {"model", 'm', NULL, KF_OPT_STR, OK(model), 0, 0, NULL, "NAME",
     "model the jobs name (default: the --model-file's name)"},
    {"model-file", 'M', NULL, KF_OPT_STR, O(model_file), 0, 0, NULL, "FILE",
     "model file: gives the input columns (compute: the model itself)"},
    {"cols", 0, NULL, KF_OPT_INT, O(cols), 0, 65536, "0", "N",
     "input columns, when there is no --model-file"},
    {"user", 'u', NULL, KF_OPT_STR, OK(user), 0, 0, "bench", "ID",
     "base of the user names: ID-0, ID-3, ... (chosen to cover the partitions evenly)"},
    {"users", 0, NULL, KF_OPT_INT, O(users), 0, 100000, "0", "N",
     "spread the jobs over N users (0 = one per partition of the topic)"},
    {"rows-per-job", 0, NULL, KF_OPT_INT, OK(rows_per_job), 1, 65536, "1", "N",
     "input rows of each job"},
    {"jobs", 'n', NULL, KF_OPT_INT, O(jobs), 1, 100000000, "10000", "N",
     "drain, compute: number of jobs"},
    {"rate", 0, NULL, KF_OPT_INT, O(rate), 0, 10000000, "0", "R", "open: jobs per second"},
    {"duration", 0, NULL, KF_OPT_INT, O(duration), 0, 86400, "10", "S",
     "open: seconds of publishing"},
    {"pause-pid", 0, NULL, KF_OPT_INT, O(pause_pid), 0, INT32_MAX, "0", "PID",
     "drain: SIGSTOP this process (a worker) while publishing, SIGCONT when the whole backlog "
     "is in, and time from then"},
    {"cpu-pids", 0, NULL, KF_OPT_STR, O(cpu_pids), 0, 0, NULL, "PID,..",
     "report the CPU time these processes (worker, broker, redis) used while the jobs ran"},
    {"ttl", 0, NULL, KF_OPT_INT, OK(ttl), 1, JOB_TTL_MAX, "3600", "S", "result lifetime"},
    {"timeout", 0, NULL, KF_OPT_INT, OK(timeout_s), 1, 86400, "60", "S",
     "give up when no job completes for S seconds"},
    {"probes", 0, NULL, KF_OPT_INT, O(probes), 0, 1000000, "1000", "N",
     "open: also time when the results of N jobs, evenly spread, become visible (popped from "
     "the run's inboxes with BLMPOP, Redis >= 7.0; 0 = none)"},
    {"charge-horizon", 0, "KINFER_CHARGE_HORIZON", KF_OPT_INT, O(horizon), 60, 2592000, "3600", "S",
     "the workers' --charge-horizon: where the run's charge records are (memory report, "
     "deletion)"},
    {"keep", 0, NULL, KF_OPT_BOOL, O(keep), 0, 0, "0", NULL,
     "keep the run's results, inboxes and charge records (default: deleted once read)"},
    {"batch-rows", 0, NULL, KF_OPT_INT, O(batch_rows), 1, 1 << 20, "256", "N",
     "compute: rows per forward pass (match the worker's --batch-max-rows)"},
    {"threads", 0, NULL, KF_OPT_INT, O(threads), 1, 256, "1", "N",
     "compute: threads computing in parallel (match the worker's --compute-threads)"},
    {"blas-threads", 0, NULL, KF_OPT_INT, O(blas_threads), 1, 256, "1", "N",
     "compute: OpenBLAS threads per call (match the worker's --blas-threads)"},
    {"seed", 's', NULL, KF_OPT_INT, OK(seed), 0, INT64_MAX, "1", "N", "seed of the random inputs"},
    {"quiet", 'q', NULL, KF_OPT_BOOL, OK(quiet), 0, 0, "0", NULL, "no progress bar"},
    {"sign", 0, NULL, KF_OPT_STR, O(sign), 0, 0, NULL, "ALG",
     "drain, open: sign every job (hmac or ed25519) with a key made for each user at the "
     "start (for workers with --require-signatures)"},
    {NULL},
};

static volatile sig_atomic_t bench_stop;

static void bench_on_signal(int sig)
{
        (void)sig;
        bench_stop = 1;
}

/* Checks the options against the mode; returns 0 or -1 (reported). */
static int bench_check(kc_bench_t *b, const model_t *m)
{
        kc_bench_conf_t *bc = b->conf;
        kc_conf_t *c = &bc->kc;

        if (!strcmp(bc->mode, "drain"))
                b->mode = KC_BENCH_DRAIN;
        else if (!strcmp(bc->mode, "open"))
                b->mode = KC_BENCH_OPEN;
        else if (!strcmp(bc->mode, "compute"))
                b->mode = KC_BENCH_COMPUTE;
        else {
                kc_err("bench: --mode '%s': expected drain, open or compute", bc->mode);
                return -1;
        }
        if (b->mode == KC_BENCH_COMPUTE) {
                if (!m) {
                        kc_err("bench: --mode compute needs --model-file");
                        return -1;
                }
                return 0;
        }
        if (!c->model && m)
                c->model = strdup(m->name);
        b->cols = m ? m->input_dim : (uint32_t)bc->cols;
        if (!c->model || b->cols == 0) {
                kc_err("bench: give --model NAME and --cols N, or --model-file FILE");
                return -1;
        }
        if (!job_name_valid(c->model, strlen(c->model), JOB_MODEL_MAX) ||
            !job_name_valid(c->user, strlen(c->user), 40)) {
                kc_err("bench: --model (1..64) and --user (1..40) must be chars of "
                       "[A-Za-z0-9._:-]");
                return -1;
        }
        if (b->mode == KC_BENCH_OPEN) {
                if (bc->rate < 1 || bc->duration < 1) {
                        kc_err("bench: --mode open needs --rate R and --duration S (both >= 1)");
                        return -1;
                }
                b->n = (size_t)(bc->rate * bc->duration);
        } else {
                b->n = (size_t)bc->jobs;
        }
        if (bc->pause_pid && b->mode != KC_BENCH_DRAIN) {
                kc_err("bench: --pause-pid is for --mode drain");
                return -1;
        }
        return 0;
}

int kc_cmd_bench(int argc, char **argv)
{
        kc_bench_conf_t bc = {0};
        kc_bench_t b = {0};
        model_t *m = NULL;
        struct sigaction sa;
        char err[512];
        int first, rc = KC_EXIT_USAGE;

        first = kc_parse(bench_opts, &bc.kc, 1, argc, argv,
                         "bench [--mode drain|open|compute] (--model-file FILE | --model NAME "
                         "--cols N) [OPTION]...\n\n"
                         "Load generator.  drain: publishes --jobs jobs as fast as possible, "
                         "waits until\nall have results, reports jobs/s and latency (result "
                         "`done` minus produce\ntime).  open: publishes --rate jobs/s for "
                         "--duration s on a fixed schedule,\nwhatever completes.  compute: "
                         "times the same forward passes (--model-file) in\nbatches of "
                         "--batch-rows, with no queue or Redis.  Prints one JSON line;\nexit 1 "
                         "if any job failed, had an error result or no result.");
        b.conf = &bc;
        b.stop = &bench_stop;
        b.rng = (uint64_t)bc.kc.seed;
        b.bar = isatty(STDERR_FILENO) && !bc.kc.quiet;
        if (first < argc) {
                kc_err("bench: unexpected argument '%s'", argv[first]);
                goto out;
        }
        if (bc.model_file && !(m = model_load_file(bc.model_file, err, sizeof(err)))) {
                kc_err("bench: %s", err);
                rc = KC_EXIT_FAIL;
                goto out;
        }
        if (bench_check(&b, m))
                goto out;
        if (b.mode != KC_BENCH_COMPUTE && kc_cpu_init(&b.cpu, bc.cpu_pids, err, sizeof(err))) {
                kc_err("bench: --cpu-pids: %s", err);
                goto out;
        }
        kf_random_hex(b.run, 8);
        kc_bench_names(&b);

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = bench_on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        if (b.mode == KC_BENCH_COMPUTE) {
                kc_compute_t cc = {
                    .jobs = (uint64_t)bc.jobs,
                    .rows_per_job = (uint32_t)bc.kc.rows_per_job,
                    .batch_rows = (uint32_t)bc.batch_rows,
                    .threads = (int)bc.threads,
                    .blas_threads = (int)bc.blas_threads,
                    .seed = (uint64_t)bc.kc.seed,
                    .cpu_pids = bc.cpu_pids,
                };
                rc = kc_bench_compute(m, &cc, &bench_stop);
        } else {
                rc = kc_bench_run(&b);
        }
out:
        kc_bench_free(&b);
        model_unref(m);
        kf_config_free(bench_opts, &bc, &bc.kc.props);
        return rc;
}
