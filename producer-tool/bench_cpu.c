/* bench_cpu.c - CPU time of processes and of the whole machine over a window,
 * read from /proc, for `kinfer bench`'s cost per job and its load check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "kf_util.h"

/* utime + stime of pid (fields 14 and 15 of /proc/PID/stat, counted after
 * the ')' that ends the command name, which may hold spaces), or for pid 0
 * the machine's busy time (user nice system irq softirq steal of /proc/stat).
 * -1 if unreadable. */
static int64_t kc_cpu_ticks(pid_t pid)
{
        char path[64], buf[1024], *p;
        long long v[8] = {0};
        size_t n;
        FILE *fp;

        snprintf(path, sizeof(path), pid ? "/proc/%d/stat" : "/proc/stat", (int)pid);
        if (!(fp = fopen(path, "r")))
                return -1;
        n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        if (!pid) {
                if (sscanf(buf, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2],
                           &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
                        return -1;
                return v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        }
        if (!(p = strrchr(buf, ')')) ||
            sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &v[0], &v[1]) !=
                2)
                return -1;
        return v[0] + v[1];
}

int kc_cpu_init(kc_cpu_t *cpu, const char *pids, char *errstr, size_t errstr_size)
{
        char *copy, *tok, *save = NULL;
        int rc = 0;

        memset(cpu, 0, sizeof(*cpu));
        kf_strlcpy(cpu->p[0].name, "machine", sizeof(cpu->p[0].name));
        cpu->p[1].pid = getpid();
        kf_strlcpy(cpu->p[1].name, "kinfer-bench", sizeof(cpu->p[1].name));
        cpu->n = 2;
        if (!pids)
                return 0;
        if (!(copy = strdup(pids)))
                return kf_errf(errstr, errstr_size, "out of memory");
        for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                kc_cpu_proc_t *c = &cpu->p[cpu->n];
                char path[64];
                int64_t pid;
                FILE *fp;
                if (cpu->n >= KC_CPU_MAX_PIDS + 2 || kf_parse_i64(tok, 1, INT32_MAX, &pid) ||
                    kc_cpu_ticks((pid_t)pid) < 0) {
                        rc = kf_errf(errstr, errstr_size,
                                     "'%s' is not a running process (or more than %d)", tok,
                                     KC_CPU_MAX_PIDS);
                        break;
                }
                c->pid = (pid_t)pid;
                snprintf(path, sizeof(path), "/proc/%d/comm", (int)c->pid);
                if (!(fp = fopen(path, "r")) || !fgets(c->name, sizeof(c->name), fp))
                        snprintf(c->name, sizeof(c->name), "%d", (int)c->pid);
                if (fp)
                        fclose(fp);
                c->name[strcspn(c->name, "\n")] = '\0';
                cpu->n++;
        }
        free(copy);
        return rc;
}

void kc_cpu_sample(kc_cpu_t *cpu, int end)
{
        for (int i = 0; i < cpu->n; i++) {
                int64_t t = kc_cpu_ticks(cpu->p[i].pid);
                if (end)
                        cpu->p[i].t1 = t;
                else
                        cpu->p[i].t0 = t;
        }
        if (end)
                cpu->t1_us = kf_mono_us();
        else
                cpu->t0_us = kf_mono_us();
}

json_t *kc_cpu_json(const kc_cpu_t *cpu, double jobs)
{
        double hz = (double)sysconf(_SC_CLK_TCK);
        double win = (double)(cpu->t1_us - cpu->t0_us) / 1e6;
        double rest = 0;
        json_t *o;

        if (!(win > 0) || !(jobs > 0) || cpu->n == 0)
                return NULL;
        o = json_object();
        json_object_set_new(o, "window_s", kc_bench_real(win));
        for (int i = 0; i < cpu->n; i++) {
                const kc_cpu_proc_t *c = &cpu->p[i];
                double secs;
                if (c->t0 < 0 || c->t1 < 0)
                        continue;
                secs = (double)(c->t1 - c->t0) / hz;
                rest += i ? -secs : secs; /* p[0] is the machine */
                json_object_set_new(o, c->name,
                                    json_pack("{s:o,s:o}", "cores", kc_bench_real(secs / win),
                                              "us_per_job", kc_bench_real(secs * 1e6 / jobs)));
        }
        if (rest < 0) /* tick rounding */
                rest = 0;
        json_object_set_new(o, "other",
                            json_pack("{s:o,s:o}", "cores", kc_bench_real(rest / win), "us_per_job",
                                      kc_bench_real(rest * 1e6 / jobs)));
        return o;
}
