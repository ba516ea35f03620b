/* stack.c - throwaway redis-server and kinfer-devbroker processes for integration tests,
 * each on a free loopback port in a private temp dir, plus spawning kinfer programs. */
#include "stack.h"
#include "stack_int.h"

#include "kf_util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KT_START_TIMEOUT_MS 10000 /* redis PING / devbroker bootstrap line */
#define KT_CMD_TIMEOUT_MS   10000 /* one devbroker control reply */
#define KT_STOP_TIMEOUT_MS  5000
#define KT_REDIS_ATTEMPTS   5 /* free ports can be taken between probe and bind */
#define KT_TAIL_LINES       200
#define KT_TAIL_BYTES       (256 * 1024)
#define KT_MAX_ARGS         64
#define KT_REPLY_MAX        1024

extern char **environ;

/* State kt_stack_t has no room for.  stack.h allows one stack per process, so it
 * lives here rather than in the public struct. */
static struct {
        char **redis_args; /* extra_args of kt_stack_start_redis, for restarts */
        int broker_in;     /* write end of the devbroker's stdin, or -1 */
        int broker_out;    /* read end of its stdout, or -1 */
        char rbuf[KT_REPLY_MAX];
        size_t rlen;
} priv = {.broker_in = -1, .broker_out = -1};

long long kt_now_ms(void)
{
        return kf_mono_us() / 1000;
}

void kt_sleep_ms(int ms)
{
        kf_sleep_us((int64_t)ms * 1000, NULL);
}

static void close_fd(int *fdp)
{
        if (*fdp >= 0)
                close(*fdp);
        *fdp = -1;
}

void kt_free_strv(char **v)
{
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}

static char **dup_strv(const char *const *v)
{
        size_t n = 0;
        char **copy;
        while (v && v[n])
                n++;
        if (!(copy = calloc(n + 1, sizeof(*copy))))
                return NULL;
        for (size_t i = 0; i < n; i++) {
                if (!(copy[i] = strdup(v[i]))) {
                        kt_free_strv(copy);
                        return NULL;
                }
        }
        return copy;
}

/* Exit status as kt_stack_run reports it: 0..255, or 128+signal. */
static int decode_status(int status)
{
        if (WIFEXITED(status))
                return WEXITSTATUS(status);
        if (WIFSIGNALED(status))
                return 128 + WTERMSIG(status);
        return -1;
}

/* Waits up to timeout_ms (< 0: forever) for pid.  Returns its kt status, or -2
 * if it is still running. */
int kt_wait_pid(pid_t pid, int timeout_ms)
{
        long long deadline = kt_now_ms() + timeout_ms;
        int status;
        for (;;) {
                pid_t r = waitpid(pid, &status, timeout_ms < 0 ? 0 : WNOHANG);
                if (r == pid)
                        return decode_status(status);
                if (r < 0 && errno != EINTR)
                        return -1; /* not our child (any more) */
                if (timeout_ms >= 0 && kt_now_ms() >= deadline)
                        return -2;
                if (r == 0)
                        kt_sleep_ms(5);
        }
}

/* Sends sig; for terminating signals waits for the exit (SIGKILL after
 * timeout_ms) and clears *pidp.  The kt_stack_kill contract. */
int kt_signal_proc(pid_t *pidp, int sig, int timeout_ms)
{
        int st;
        if (*pidp <= 0)
                return -1;
        if (kill(*pidp, sig) == -1 && errno != ESRCH)
                return -1;
        if (sig != SIGTERM && sig != SIGINT && sig != SIGKILL)
                return 0;
        /* A stopped process would only see SIGTERM once continued. */
        kill(*pidp, SIGCONT);
        st = kt_wait_pid(*pidp, timeout_ms);
        if (st == -2) {
                kill(*pidp, SIGKILL);
                st = kt_wait_pid(*pidp, -1);
        }
        *pidp = 0;
        return st;
}

/* Opens a child's log for appending: a restarted server keeps one log. */
int kt_open_log(const char *path)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0)
                fprintf(stderr, "stack: %s: %s\n", path, strerror(errno));
        return fd;
}

/* A file name on PATH, or NULL. Caller frees. */
static char *find_on_path(const char *name)
{
        const char *path = getenv("PATH");
        char buf[1024];
        if (!path || !*path)
                path = "/usr/local/bin:/usr/bin:/bin";
        while (*path) {
                size_t n = strcspn(path, ":");
                if (n && n + strlen(name) + 2 < sizeof(buf)) {
                        snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, name);
                        if (access(buf, X_OK) == 0)
                                return strdup(buf);
                }
                path += n;
                if (*path == ':')
                        path++;
        }
        return NULL;
}

/* The environment a child gets: ours without any inherited KINFER_BROKERS /
 * KINFER_REDIS (a developer's shell must never point a test at a real cluster),
 * then this stack's servers, then extra_env, which wins.  Caller frees. */
char **kt_build_env(const kt_stack_t *s, const char *const *extra_env)
{
        size_t n = 0, extra = 0, k = 0;
        char **env;
        char buf[700];

        while (environ[n])
                n++;
        while (extra_env && extra_env[extra])
                extra++;
        if (!(env = calloc(n + extra + 3, sizeof(*env))))
                return NULL;
        for (size_t i = 0; i < n; i++) {
                const char *e = environ[i];
                size_t keylen = strcspn(e, "=");
                int drop = (keylen == 14 && !strncmp(e, "KINFER_BROKERS", 14)) ||
                           (keylen == 12 && !strncmp(e, "KINFER_REDIS", 12));
                for (size_t j = 0; !drop && j < extra; j++)
                        drop = !strncmp(extra_env[j], e, keylen) && extra_env[j][keylen] == '=';
                if (!drop && !(env[k++] = strdup(e)))
                        goto oom;
        }
        if (s->brokers[0]) {
                snprintf(buf, sizeof(buf), "KINFER_BROKERS=%s", s->brokers);
                if (!(env[k++] = strdup(buf)))
                        goto oom;
        }
        if (s->redis_port) {
                snprintf(buf, sizeof(buf), "KINFER_REDIS=%s", s->redis_url);
                if (!(env[k++] = strdup(buf)))
                        goto oom;
        }
        for (size_t j = 0; j < extra; j++)
                if (!(env[k++] = strdup(extra_env[j])))
                        goto oom;
        return env;
oom:
        kt_free_strv(env);
        return NULL;
}

/* Forks and execs path with fds 0/1/2 from in/out/err.  Everything the child
 * needs is prepared before fork: the test process runs librdkafka threads, so
 * the child may only make async-signal-safe calls until exec.  An exec failure
 * comes back through a close-on-exec pipe, so a missing binary is an error
 * here and not a mysterious exit status 127 later.  Returns the pid or -1. */
pid_t kt_spawn_child(const char *path, char *const *argv, char *const *envp, int in, int out,
                     int err)
{
        pid_t parent = getpid();
        int errpipe[2];
        int child_errno = 0;
        ssize_t n;
        pid_t pid;

        if (pipe2(errpipe, O_CLOEXEC) == -1) {
                fprintf(stderr, "stack: pipe: %s\n", strerror(errno));
                return -1;
        }
        pid = fork();
        if (pid == -1) {
                fprintf(stderr, "stack: fork: %s\n", strerror(errno));
                close(errpipe[0]);
                close(errpipe[1]);
                return -1;
        }
        if (pid == 0) {
                /* If the test dies, its servers must not outlive it. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent)
                        _exit(127);
                /* Undo the test's SIGPIPE=ignore (see kt_stack_init): programs
                 * expect the default. */
                signal(SIGPIPE, SIG_DFL);
                if (dup2(in, 0) == -1 || dup2(out, 1) == -1 || dup2(err, 2) == -1)
                        goto fail;
                /* Nothing else of ours leaks in: librdkafka's pipes are not all
                 * close-on-exec.  Best effort (kernel >= 5.11). */
                close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
                execve(path, argv, envp);
        fail:
                child_errno = errno;
                n = write(errpipe[1], &child_errno, sizeof(child_errno));
                (void)n;
                _exit(127);
        }
        close(errpipe[1]);
        do
                n = read(errpipe[0], &child_errno, sizeof(child_errno));
        while (n == -1 && errno == EINTR);
        close(errpipe[0]);
        if (n == (ssize_t)sizeof(child_errno)) {
                fprintf(stderr, "stack: cannot run %s: %s\n", path, strerror(child_errno));
                waitpid(pid, NULL, 0);
                return -1;
        }
        return pid;
}

/* Resolves argv[0]: a bare name is a kinfer binary in bindir. */
static void resolve_prog(const kt_stack_t *s, const char *name, char *buf, size_t size)
{
        if (strchr(name, '/'))
                snprintf(buf, size, "%s", name);
        else
                snprintf(buf, size, "%s/%s", s->bindir, name);
}

int kt_stack_init(kt_stack_t *s)
{
        const char *tmp = getenv("TMPDIR");
        const char *bin = getenv("KINFER_BIN");

        memset(s, 0, sizeof(*s));
        s->bindir = bin && *bin ? bin : "build";
        if (!tmp || !*tmp)
                tmp = "/tmp";
        snprintf(s->dir, sizeof(s->dir), "%s/kinfer-test-XXXXXX", tmp);
        if (!mkdtemp(s->dir)) {
                fprintf(stderr, "stack: mkdtemp %s: %s\n", s->dir, strerror(errno));
                s->dir[0] = '\0';
                return -1;
        }
        /* A dead devbroker must turn a control write into an error, not kill
         * the test with SIGPIPE. */
        signal(SIGPIPE, SIG_IGN);
        return 0;
}

/* A loopback port nobody listened on a moment ago.  Another process may take it
 * before our server binds, so callers retry on a start failure. */
int kt_free_port(void)
{
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sin);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int port = -1;
        if (fd < 0)
                return -1;
        if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
            getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
                port = ntohs(sin.sin_port);
        close(fd);
        return port;
}

/* 1 if the server answering on the port is the redis we started (a PING alone
 * could be answered by someone else's redis that won the port race). */
static int redis_is_ours(const kt_stack_t *s, pid_t pid)
{
        struct timeval tv = {.tv_sec = 0, .tv_usec = 500 * 1000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", s->redis_port, tv);
        redisReply *r = NULL;
        char want[48];
        int ours = 0;

        if (!c || c->err)
                goto cleanup;
        redisSetTimeout(c, tv);
        r = redisCommand(c, "INFO server");
        snprintf(want, sizeof(want), "\nprocess_id:%d\r", (int)pid);
        ours = r && r->type == REDIS_REPLY_STRING && strstr(r->str, want);
cleanup:
        if (r)
                freeReplyObject(r);
        if (c)
                redisFree(c);
        return ours;
}

/* Starts redis-server on s->redis_port and waits until it answers.  Returns 0,
 * -1 if it exited (port taken?), -2 on a harder failure. */
static int redis_start_on_port(kt_stack_t *s)
{
        char *argv[KT_MAX_ARGS];
        char port[16];
        char *path = NULL;
        char **envp = NULL;
        int argc = 0, nullfd = -1, logfd = -1, rc = -2, st;
        long long deadline;
        pid_t pid;

        if (!(path = find_on_path("redis-server")) && access("/usr/bin/redis-server", X_OK) == 0)
                path = strdup("/usr/bin/redis-server");
        if (!path) {
                fprintf(stderr, "stack: redis-server not found (apt-get install redis-server)\n");
                goto cleanup;
        }
        snprintf(port, sizeof(port), "%d", s->redis_port);
        {
                char *base[] = {"redis-server",
                                "--port",
                                port,
                                "--bind",
                                "127.0.0.1",
                                "--save",
                                "",
                                "--appendonly",
                                "no",
                                "--dir",
                                s->dir,
                                "--daemonize",
                                "no",
                                "--protected-mode",
                                "no"};
                for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
                        argv[argc++] = base[i];
        }
        for (char **a = priv.redis_args; a && *a; a++) {
                if (argc == KT_MAX_ARGS - 1) {
                        fprintf(stderr, "stack: too many redis arguments\n");
                        goto cleanup;
                }
                argv[argc++] = *a;
        }
        argv[argc] = NULL;

        snprintf(s->redis.name, sizeof(s->redis.name), "redis");
        snprintf(s->redis.log, sizeof(s->redis.log), "%s/redis.log", s->dir);
        if ((nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0 ||
            (logfd = kt_open_log(s->redis.log)) < 0 || !(envp = kt_build_env(s, NULL)))
                goto cleanup;
        if ((pid = kt_spawn_child(path, argv, envp, nullfd, logfd, logfd)) < 0)
                goto cleanup;
        s->redis.pid = pid;

        deadline = kt_now_ms() + KT_START_TIMEOUT_MS;
        while (kt_now_ms() < deadline) {
                if ((st = kt_wait_pid(pid, 0)) != -2) {
                        s->redis.pid = 0;
                        rc = -1;
                        goto cleanup;
                }
                if (redis_is_ours(s, pid)) {
                        rc = 0;
                        goto cleanup;
                }
                kt_sleep_ms(20);
        }
        fprintf(stderr, "stack: redis-server did not answer on port %d within %d ms\n",
                s->redis_port, KT_START_TIMEOUT_MS);
        kt_signal_proc(&s->redis.pid, SIGKILL, 0);
cleanup:
        if (nullfd >= 0)
                close(nullfd);
        if (logfd >= 0)
                close(logfd);
        kt_free_strv(envp);
        free(path);
        return rc;
}

int kt_stack_start_redis(kt_stack_t *s, const char *const *extra_args)
{
        if (s->redis.pid) {
                fprintf(stderr, "stack: redis already running\n");
                return -1;
        }
        kt_free_strv(priv.redis_args);
        if (!(priv.redis_args = dup_strv(extra_args)))
                return -1;
        for (int attempt = 0; attempt < KT_REDIS_ATTEMPTS; attempt++) {
                int r;
                if ((s->redis_port = kt_free_port()) < 0)
                        break;
                snprintf(s->redis_url, sizeof(s->redis_url), "redis://127.0.0.1:%d/0",
                         s->redis_port);
                if ((r = redis_start_on_port(s)) == 0)
                        return 0;
                if (r == -2)
                        break;
                fprintf(stderr, "stack: redis-server exited at start on port %d, retrying\n",
                        s->redis_port);
        }
        fprintf(stderr, "stack: could not start redis-server (log: %s)\n", s->redis.log);
        s->redis_port = 0;
        s->redis_url[0] = '\0';
        return -1;
}

int kt_stack_restart_redis(kt_stack_t *s)
{
        int r;
        if (!s->redis_port) {
                fprintf(stderr, "stack: restart_redis before start_redis\n");
                return -1;
        }
        if (s->redis.pid)
                kt_signal_proc(&s->redis.pid, SIGTERM, KT_STOP_TIMEOUT_MS);
        /* The same port: clients under test reconnect to the address they had.
         * redis sets SO_REUSEADDR, so TIME_WAIT sockets do not block the bind. */
        r = redis_start_on_port(s);
        if (r)
                fprintf(stderr, "stack: could not restart redis-server on port %d (log: %s)\n",
                        s->redis_port, s->redis.log);
        return r ? -1 : 0;
}

int kt_stack_signal_redis(kt_stack_t *s, int sig)
{
        return kt_signal_proc(&s->redis.pid, sig, KT_STOP_TIMEOUT_MS);
}

redisContext *kt_stack_redis(kt_stack_t *s)
{
        /* Bounded, so a test talking to a SIGSTOPped redis fails instead of hanging. */
        struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
        redisContext *c;
        if (!s->redis_port)
                return NULL;
        c = redisConnectWithTimeout("127.0.0.1", s->redis_port, tv);
        if (!c)
                return NULL;
        if (c->err || redisSetTimeout(c, tv) != REDIS_OK) {
                redisFree(c);
                return NULL;
        }
        return c;
}

/* Reads one line from the devbroker's stdout into line (without the newline),
 * waiting until deadline.  Returns 0, or -1 on timeout, EOF or error. */
static int broker_read_line(char *line, size_t size, long long deadline)
{
        for (;;) {
                char *nl = memchr(priv.rbuf, '\n', priv.rlen);
                struct pollfd pfd = {.fd = priv.broker_out, .events = POLLIN};
                long long left;
                ssize_t n;

                if (nl) {
                        size_t len = (size_t)(nl - priv.rbuf);
                        snprintf(line, size, "%.*s", (int)len, priv.rbuf);
                        memmove(priv.rbuf, nl + 1, priv.rlen - len - 1);
                        priv.rlen -= len + 1;
                        return 0;
                }
                if (priv.rlen == sizeof(priv.rbuf) || priv.broker_out < 0)
                        return -1;
                left = deadline - kt_now_ms();
                if (left <= 0)
                        return -1;
                n = poll(&pfd, 1, (int)left);
                if (n < 0 && errno != EINTR)
                        return -1;
                if (n <= 0)
                        continue;
                n = read(priv.broker_out, priv.rbuf + priv.rlen, sizeof(priv.rbuf) - priv.rlen);
                if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
                        return -1;
                if (n > 0)
                        priv.rlen += (size_t)n;
        }
}

static void broker_close_pipes(void)
{
        close_fd(&priv.broker_in);
        close_fd(&priv.broker_out);
        priv.rlen = 0;
}

int kt_stack_start_broker(kt_stack_t *s, int n_brokers, int partitions)
{
        const char *which = getenv("KINFER_TEST_BROKER");
        char path[600], nb[16], np[16];
        char *argv[] = {"kinfer-devbroker", "--brokers", nb, "--partitions", np, NULL};
        int in[2] = {-1, -1}, out[2] = {-1, -1};
        char **envp = NULL;
        int logfd = -1, rc = -1;
        pid_t pid;

        if (s->broker.pid) {
                fprintf(stderr, "stack: devbroker already running\n");
                return -1;
        }
        /* Any suite on a genuine Kafka instead (stack.h); a test that needs
         * several brokers or the dev broker's commands cannot run there. */
        if (which && !strcmp(which, "kafka")) {
                if (n_brokers != 1) {
                        fprintf(stderr,
                                "stack: KINFER_TEST_BROKER=kafka runs one broker; this "
                                "test needs %d\n",
                                n_brokers);
                        return -1;
                }
                return kt_stack_start_kafka(s, partitions);
        }
        if (which && *which && strcmp(which, "dev")) {
                fprintf(stderr, "stack: KINFER_TEST_BROKER=%s: dev or kafka\n", which);
                return -1;
        }
        resolve_prog(s, "kinfer-devbroker", path, sizeof(path));
        snprintf(nb, sizeof(nb), "%d", n_brokers);
        snprintf(np, sizeof(np), "%d", partitions);
        snprintf(s->broker.name, sizeof(s->broker.name), "devbroker");
        snprintf(s->broker.log, sizeof(s->broker.log), "%s/devbroker.log", s->dir);
        if (pipe2(in, O_CLOEXEC) == -1 || pipe2(out, O_CLOEXEC) == -1) {
                fprintf(stderr, "stack: pipe: %s\n", strerror(errno));
                goto cleanup;
        }
        if ((logfd = kt_open_log(s->broker.log)) < 0 || !(envp = kt_build_env(s, NULL)))
                goto cleanup;
        if ((pid = kt_spawn_child(path, argv, envp, in[0], out[1], logfd)) < 0)
                goto cleanup;
        s->broker.pid = pid;
        priv.broker_in = in[1];
        priv.broker_out = out[0];
        in[1] = out[0] = -1;
        priv.rlen = 0;

        if (broker_read_line(s->brokers, sizeof(s->brokers), kt_now_ms() + KT_START_TIMEOUT_MS) ||
            !s->brokers[0]) {
                fprintf(stderr, "stack: devbroker gave no bootstrap line (log: %s)\n",
                        s->broker.log);
                s->brokers[0] = '\0';
                kt_signal_proc(&s->broker.pid, SIGKILL, 0);
                broker_close_pipes();
                goto cleanup;
        }
        rc = 0;
cleanup:
        close_fd(&in[0]);
        close_fd(&in[1]);
        close_fd(&out[0]);
        close_fd(&out[1]);
        close_fd(&logfd);
        kt_free_strv(envp);
        return rc;
}

int kt_stack_broker_cmd(kt_stack_t *s, const char *cmd)
{
        char line[KT_REPLY_MAX];
        size_t len = strlen(cmd), off = 0;

        if (!s->broker.pid || priv.broker_in < 0) {
                fprintf(stderr, "stack: broker_cmd '%s': devbroker not running\n", cmd);
                return -1;
        }
        /* Blank lines and comments get no reply; a newline would make two commands. */
        if (strchr(cmd, '\n') || !cmd[strspn(cmd, " \t")] || cmd[strspn(cmd, " \t")] == '#') {
                fprintf(stderr, "stack: broker_cmd: not one command: '%s'\n", cmd);
                return -1;
        }
        while (off <= len) {
                /* The command, then its newline, without building a copy. */
                const char *p = off < len ? cmd + off : "\n";
                size_t n = off < len ? len - off : 1;
                ssize_t w = write(priv.broker_in, p, n);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0) {
                        fprintf(stderr, "stack: broker_cmd '%s': write: %s\n", cmd,
                                strerror(errno));
                        return -1;
                }
                off += (size_t)w;
        }
        if (broker_read_line(line, sizeof(line), kt_now_ms() + KT_CMD_TIMEOUT_MS)) {
                fprintf(stderr, "stack: broker_cmd '%s': no reply from devbroker\n", cmd);
                return -1;
        }
        if (strcmp(line, "ok")) {
                fprintf(stderr, "stack: broker_cmd '%s': %s\n", cmd, line);
                return -1;
        }
        return 0;
}

int kt_stack_spawn(kt_stack_t *s, const char *name, const char *const *argv,
                   const char *const *extra_env)
{
        char path[600], logpath[sizeof(s->procs[0].log)];
        char **envp = NULL;
        int slot = -1, nullfd = -1, logfd = -1;
        kt_proc_t *p;
        pid_t pid;

        if (!name || !*name || strchr(name, '/') || strlen(name) >= sizeof(p->name) || !argv ||
            !argv[0]) {
                fprintf(stderr, "stack: spawn: bad name or argv\n");
                return -1;
        }
        /* A never-used slot first: a reaped one still has a log to dump. */
        for (int i = 0; i < KT_MAX_PROCS && slot < 0; i++)
                if (!s->procs[i].name[0])
                        slot = i;
        for (int i = 0; i < KT_MAX_PROCS && slot < 0; i++)
                if (!s->procs[i].pid)
                        slot = i;
        if (slot < 0) {
                fprintf(stderr, "stack: spawn %s: all %d slots busy\n", name, KT_MAX_PROCS);
                return -1;
        }
        p = &s->procs[slot];
        /* Via a local: gcc cannot tell that name does not point into *s. */
        snprintf(logpath, sizeof(logpath), "%s/%s.log", s->dir, name);
        kf_strlcpy(p->log, logpath, sizeof(p->log));
        kf_strlcpy(p->name, name, sizeof(p->name));
        resolve_prog(s, argv[0], path, sizeof(path));

        if ((nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0 ||
            (logfd = kt_open_log(p->log)) < 0 || !(envp = kt_build_env(s, extra_env)))
                goto cleanup;
        /* execve's argv is char *const[] for historical reasons; it is not written. */
        pid = kt_spawn_child(path, (char *const *)argv, envp, nullfd, logfd, logfd);
        if (pid > 0)
                p->pid = pid;
cleanup:
        close_fd(&nullfd);
        close_fd(&logfd);
        kt_free_strv(envp);
        return p->pid ? slot : -1;
}

int kt_stack_kill(kt_stack_t *s, int slot, int sig, int timeout_ms)
{
        if (slot < 0 || slot >= KT_MAX_PROCS)
                return -1;
        return kt_signal_proc(&s->procs[slot].pid, sig, timeout_ms);
}

int kt_stack_wait(kt_stack_t *s, int slot, int timeout_ms)
{
        int st;
        if (slot < 0 || slot >= KT_MAX_PROCS || !s->procs[slot].pid)
                return -1;
        st = kt_wait_pid(s->procs[slot].pid, timeout_ms);
        if (st == -2)
                return -1;
        s->procs[slot].pid = 0;
        return st;
}

/* Appends what a run's stderr is about to receive to <dir>/run.log. */
static int run_log_open(kt_stack_t *s, const char *const *argv)
{
        char path[600];
        int fd;
        snprintf(path, sizeof(path), "%s/run.log", s->dir);
        if ((fd = kt_open_log(path)) < 0)
                return -1;
        dprintf(fd, "==== run:");
        for (const char *const *a = argv; *a; a++)
                dprintf(fd, " %s", *a);
        dprintf(fd, "\n");
        return fd;
}

int kt_stack_run(kt_stack_t *s, const char *const *argv, const char *stdin_path, char **out,
                 int timeout_ms)
{
        char path[600];
        char **envp = NULL;
        char *buf = NULL;
        size_t len = 0, cap = 0;
        int pipefd[2] = {-1, -1};
        int infd = -1, errfd = -1, rc = -1, eof = 0, st = -2;
        long long deadline = kt_now_ms() + timeout_ms;
        pid_t pid = 0;

        if (out)
                *out = NULL;
        if (!argv || !argv[0])
                return -1;
        resolve_prog(s, argv[0], path, sizeof(path));
        if ((infd = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
                fprintf(stderr, "stack: run: %s: %s\n", stdin_path, strerror(errno));
                goto cleanup;
        }
        if (pipe2(pipefd, O_CLOEXEC) == -1 || (errfd = run_log_open(s, argv)) < 0 ||
            !(envp = kt_build_env(s, NULL)))
                goto cleanup;
        if ((pid = kt_spawn_child(path, (char *const *)argv, envp, infd, pipefd[1], errfd)) < 0) {
                pid = 0;
                goto cleanup;
        }
        close_fd(&pipefd[1]); /* or we would never see EOF */

        /* Until the output ends and the child is reaped; a grandchild holding
         * the pipe open counts as still running. */
        while (!eof || st == -2) {
                struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
                int wait = 20;
                if (timeout_ms > 0 && kt_now_ms() >= deadline) {
                        fprintf(stderr, "stack: run %s: timed out after %d ms\n", argv[0],
                                timeout_ms);
                        goto cleanup;
                }
                if (!eof && poll(&pfd, 1, wait) > 0) {
                        ssize_t n;
                        if (cap - len < 4096) {
                                char *grown = realloc(buf, cap ? cap * 2 : 8192);
                                if (!grown)
                                        goto cleanup;
                                buf = grown;
                                cap = cap ? cap * 2 : 8192;
                        }
                        n = read(pipefd[0], buf + len, cap - len - 1);
                        if (n > 0)
                                len += (size_t)n;
                        else if (n == 0 || (errno != EINTR && errno != EAGAIN))
                                eof = 1;
                } else if (eof) {
                        kt_sleep_ms(wait);
                }
                if (st == -2 && (st = kt_wait_pid(pid, 0)) != -2)
                        pid = 0;
        }
        rc = st;
        if (out) {
                if (!buf && !(buf = malloc(1))) {
                        rc = -1;
                        goto cleanup;
                }
                buf[len] = '\0';
                *out = buf;
                buf = NULL;
        }
cleanup:
        if (pid > 0)
                kt_signal_proc(&pid, SIGKILL, 0);
        close_fd(&pipefd[0]);
        close_fd(&pipefd[1]);
        close_fd(&infd);
        close_fd(&errfd);
        kt_free_strv(envp);
        free(buf);
        return rc;
}

void kt_stack_fail(kt_stack_t *s)
{
        s->failed = 1;
}

/* Prints the last KT_TAIL_LINES lines of one log. */
static void dump_one(const char *name, const char *path)
{
        char *buf = NULL;
        const char *start;
        long size, from;
        size_t n;
        int lines = 0;
        FILE *fp = fopen(path, "r");

        if (!fp)
                return;
        fseek(fp, 0, SEEK_END);
        size = ftell(fp);
        from = size > KT_TAIL_BYTES ? size - KT_TAIL_BYTES : 0;
        if (size < 0 || fseek(fp, from, SEEK_SET) || !(buf = malloc((size_t)(size - from) + 1)))
                goto cleanup;
        n = fread(buf, 1, (size_t)(size - from), fp);
        buf[n] = '\0';
        start = buf + n;
        /* Walk back over KT_TAIL_LINES newlines, not counting a final one. */
        while (start > buf) {
                if (start[-1] == '\n' && start != buf + n && ++lines == KT_TAIL_LINES)
                        break;
                start--;
        }
        fprintf(stderr, "==== %s: %s (last %d lines) ====\n", name, path, KT_TAIL_LINES);
        fputs(start, stderr);
        if (n && buf[n - 1] != '\n')
                fputc('\n', stderr);
cleanup:
        free(buf);
        fclose(fp);
}

void kt_stack_dump_logs(kt_stack_t *s)
{
        char path[600];
        if (!s->dir[0])
                return;
        for (int i = 0; i < KT_MAX_PROCS; i++) {
                int seen = 0;
                if (!s->procs[i].name[0])
                        continue;
                /* Two spawns under one name share a log: print it once. */
                for (int j = 0; j < i && !seen; j++)
                        seen = !strcmp(s->procs[j].log, s->procs[i].log);
                if (!seen)
                        dump_one(s->procs[i].name, s->procs[i].log);
        }
        snprintf(path, sizeof(path), "%s/run.log", s->dir);
        dump_one("kt_stack_run stderr", path);
        if (s->broker.log[0])
                dump_one(s->broker.name, s->broker.log);
        if (s->redis.log[0])
                dump_one(s->redis.name, s->redis.log);
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
        (void)sb;
        (void)ftw;
        if ((type == FTW_DP ? rmdir(path) : unlink(path)) == -1)
                fprintf(stderr, "stack: remove %s: %s\n", path, strerror(errno));
        return 0;
}

void kt_stack_stop(kt_stack_t *s)
{
        const char *keep = getenv("KINFER_KEEP");
        long long deadline = kt_now_ms() + KT_STOP_TIMEOUT_MS;

        /* Programs first, all at once, so they can still reach the servers
         * while they shut down cleanly. */
        for (int i = 0; i < KT_MAX_PROCS; i++) {
                if (s->procs[i].pid) {
                        kill(s->procs[i].pid, SIGTERM);
                        kill(s->procs[i].pid, SIGCONT);
                }
        }
        for (int i = 0; i < KT_MAX_PROCS; i++) {
                if (s->procs[i].pid) {
                        long long left = deadline - kt_now_ms();
                        int st = kt_wait_pid(s->procs[i].pid, left > 0 ? (int)left : 0);
                        if (st == -2) {
                                fprintf(stderr, "stack: %s (pid %d) ignored SIGTERM for %d ms\n",
                                        s->procs[i].name, (int)s->procs[i].pid, KT_STOP_TIMEOUT_MS);
                                kt_signal_proc(&s->procs[i].pid, SIGKILL, 0);
                        }
                        s->procs[i].pid = 0;
                }
        }
        if (s->broker.pid)
                kt_signal_proc(&s->broker.pid, SIGTERM, KT_STOP_TIMEOUT_MS);
        broker_close_pipes();
        kt_kafka_forget();
        if (s->redis.pid)
                kt_signal_proc(&s->redis.pid, SIGTERM, KT_STOP_TIMEOUT_MS);
        kt_free_strv(priv.redis_args);
        priv.redis_args = NULL;

        if (!s->dir[0])
                return;
        if (s->failed) {
                kt_stack_dump_logs(s);
                fprintf(stderr, "stack: test failed; kept %s\n", s->dir);
        } else if (keep && *keep && strcmp(keep, "0")) {
                fprintf(stderr, "stack: KINFER_KEEP set; kept %s\n", s->dir);
        } else {
                nftw(s->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        }
        /* A second stop (e.g. a teardown after an explicit stop) is a no-op. */
        s->dir[0] = '\0';
}

int kt_stack_models_dir(kt_stack_t *s, char *out, size_t size)
{
        int n = snprintf(out, size, "%s/models", s->dir);
        if (n < 0 || (size_t)n >= size || (mkdir(out, 0755) && errno != EEXIST)) {
                fprintf(stderr, "kt_stack_models_dir: %s: %s\n", out, strerror(errno));
                return -1;
        }
        return 0;
}
