/* cmd_top.c - `kinfer top`: a live terminal view of a running pool (jobs/s,
 * errors, lag and work remaining, each worker's share, the busiest users),
 * redrawn every --interval-ms with ncurses, or one frame as text (--once). */
#include <curses.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "kinfer.h"
#include "top.h"

typedef struct top_conf_s {
        kc_conf_t kc;
        char *metrics;       /* comma-separated worker URLs */
        int64_t interval_ms; /* between samples */
        int64_t timeout_ms;  /* per scrape, per Redis command */
        int64_t users;       /* user rows; 0 = as many as fit (--once: 20) */
        int once;
} top_conf_t;

#define O(f)  offsetof(top_conf_t, f)
#define OC(f) offsetof(top_conf_t, kc.f)

static const kf_opt_t top_opts[] = {
    {"redis", 'r', "KINFER_REDIS", KF_OPT_STR, OC(redis_url), 0, 0, "redis://127.0.0.1:6379/0",
     "URL", "redis://[user:password@]host:port[/db] (the usage counters)"},
    {"prefix", 0, "KINFER_PREFIX", KF_OPT_STR, OC(prefix), 0, 0, "kinfer:", "STR",
     "prefix of every Redis key"},
    {"metrics", 'm', "KINFER_TOP_METRICS", KF_OPT_STR, O(metrics), 0, 0, NULL, "URL,...",
     "the workers' --http addresses (host:port or URLs), comma-separated"},
    {"interval-ms", 'i', NULL, KF_OPT_INT, O(interval_ms), 100, 3600000, "2000", "MS",
     "time between samples; rates are over it"},
    {"timeout-ms", 0, NULL, KF_OPT_INT, O(timeout_ms), 50, 60000, "1000", "MS",
     "longest wait for a worker's /metrics or a Redis reply"},
    {"users", 'n', NULL, KF_OPT_INT, O(users), 0, 100000, "0", "N",
     "show the N busiest users (0: as many as fit; --once: 20)"},
    {"once", 0, NULL, KF_OPT_BOOL, O(once), 0, 0, "0", NULL,
     "print one frame as text (two samples --interval-ms apart) and exit: 0 if every worker "
     "and Redis answered, 1 if not"},
    {NULL},
};

static const char synopsis[] =
    "top [OPTION]... [WORKER_URL]...\n\n"
    "A live view of a running pool: results per second and the error rate, the\n"
    "consumer lag and the work it stands for, each worker's totals and share, and\n"
    "the busiest users (their usage counters in Redis, by jobs per second).\n"
    "Workers are read from their /metrics (kinfer-worker --http): the ones given\n"
    "as arguments or --metrics, or else every worker whose heartbeat record is in\n"
    "Redis (PREFIXworker:ID, written by workers with --http).  A worker that does\n"
    "not answer is shown as down.\n"
    "Keys: q quits.  Rates need two samples: '-' until then.";

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
        (void)sig;
        stop_flag = 1;
}

/* Every URL of --metrics (comma-separated) and of the arguments. */
static char **collect_urls(const top_conf_t *tc, int first, int argc, char **argv, size_t *n)
{
        size_t cap = (size_t)(argc - first) + 1;
        char **urls, *list = tc->metrics ? strdup(tc->metrics) : NULL, *save = NULL;
        if (tc->metrics && !list)
                return NULL;
        for (const char *s = list; s && *s; s++)
                cap += *s == ',';
        if (!(urls = calloc(cap, sizeof(*urls)))) {
                free(list);
                return NULL;
        }
        *n = 0;
        for (char *t = list ? strtok_r(list, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
                if (*t && !(urls[(*n)++] = strdup(t)))
                        goto oom;
        for (int i = first; i < argc; i++)
                if (!(urls[(*n)++] = strdup(argv[i])))
                        goto oom;
        free(list);
        return urls;
oom:
        for (size_t i = 0; i < *n; i++)
                free(urls[i]);
        free(urls);
        free(list);
        return NULL;
}

static void print_line(int i, const char *text, void *opaque)
{
        (void)i;
        (void)opaque;
        puts(text);
}

static void draw_line(int i, const char *text, void *opaque)
{
        (void)opaque;
        if (i < LINES)
                mvaddnstr(i, 0, text, COLS);
}

/* Rows left for users below the header (5 lines), the workers (2 + n) and
 * the users' heading and "... more" line. */
static int fitting_users(const kt_pool_t *p, int64_t asked)
{
        int room = LINES - 5 - 2 - (int)p->n_workers - 2;
        if (asked > 0)
                return (int)asked;
        return room > 1 ? room : 1;
}

static void draw(const kt_pool_t *p, const top_conf_t *tc)
{
        erase();
        kt_view_render(p, COLS, fitting_users(p, tc->users), (double)tc->interval_ms / 1000.0,
                       draw_line, NULL);
        refresh();
}

static int run_live(kt_pool_t *p, const top_conf_t *tc)
{
        int64_t next;

        if (!initscr()) {
                kc_err("top: cannot start the terminal (is TERM set?); --once prints text");
                return KC_EXIT_FAIL;
        }
        cbreak();
        noecho();
        keypad(stdscr, TRUE);
        curs_set(0);
        kt_pool_sample(p);
        draw(p, tc);
        next = kf_mono_us() / 1000 + tc->interval_ms;
        while (!stop_flag) {
                int64_t now = kf_mono_us() / 1000;
                int ch;
                if (now >= next) {
                        kt_pool_sample(p);
                        draw(p, tc);
                        next = now + tc->interval_ms;
                        continue;
                }
                timeout((int)(next - now));
                ch = getch();
                if (ch == 'q' || ch == 'Q')
                        break;
                if (ch == KEY_RESIZE || ch == 12 /* ^L */)
                        draw(p, tc); /* the same numbers, laid out for the new size */
        }
        endwin();
        return KC_EXIT_OK;
}

static int run_once(kt_pool_t *p, const top_conf_t *tc)
{
        int rc = KC_EXIT_OK;
        kt_pool_sample(p);
        kf_sleep_us(tc->interval_ms * 1000, &stop_flag);
        kt_pool_sample(p);
        kt_view_render(p, 0, tc->users ? (int)tc->users : 20, (double)tc->interval_ms / 1000.0,
                       print_line, NULL);
        for (size_t i = 0; i < p->n_workers; i++)
                if (!p->workers[i].up)
                        rc = KC_EXIT_FAIL;
        if (!p->redis_up)
                rc = KC_EXIT_FAIL;
        return rc;
}

int kc_cmd_top(int argc, char **argv)
{
        top_conf_t tc = {0};
        kt_pool_t pool;
        char err[512], **urls;
        size_t n = 0;
        int rc = KC_EXIT_USAGE, first = kc_parse(top_opts, &tc.kc, 0, argc, argv, synopsis);
        struct sigaction sa = {.sa_handler = on_signal};

        memset(&pool, 0, sizeof(pool));
        if (!(urls = collect_urls(&tc, first, argc, argv, &n))) {
                kc_err("top: out of memory");
                goto out;
        }
        if (kt_pool_init(&pool, urls, n, tc.kc.redis_url, tc.kc.prefix, (int)tc.timeout_ms, err,
                         sizeof(err))) {
                kc_err("top: %s", err);
                goto out;
        }
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        rc = tc.once ? run_once(&pool, &tc) : run_live(&pool, &tc);
out:
        kt_pool_free(&pool);
        for (size_t i = 0; urls && i < n; i++)
                free(urls[i]);
        free(urls);
        kf_config_free(top_opts, &tc, NULL);
        return rc;
}
