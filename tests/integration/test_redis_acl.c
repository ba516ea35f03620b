/* test_redis_acl.c - kinfer on a Redis locked down with ACL users: the two
 * `user` lines of docs/security.md ("Redis: ACL users"), read from that file
 * so the documentation is what is tested, loaded into a real redis-server
 * through an aclfile.  As kinfer-admin the CLI pushes a model and sets a
 * quota; a worker running as kinfer-worker (credentials in its config file)
 * loads the model from the registry and processes jobs, results and usage
 * checked against y = (2 x0 + 1, 3 x1 + 1); as kinfer-worker nothing outside
 * its patterns can be read or written, not even from a script, and the
 * admin commands fail naming the refusal.  The test's own connection is the
 * `default` user, which the aclfile keeps (the harness pings with it);
 * production switches it off (the docs' third line). */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include "../harness/kt_job.h"
#include "../harness/stack.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define DOC "docs/security.md"
/* Passwords with the characters a URL parser could trip on. */
#define WORKER_PASS "wk:p@ss-7Q"
#define ADMIN_PASS  "adm/p@ss-9Z"
#define N_JOBS      6 /* per user */
#define QUOTA_JOBS  3 /* acl-u1's limit */

typedef struct at_s {
        kt_stack_t stack;
        char acl_dir[64], acl_file[128];
        char models[300];
        char wconf[400], aconf[400]; /* config files: worker, admin; wcli: the CLI as worker */
        char wcli[400];
        redisContext *c; /* the default user: the test's observer */
} at_t;

/* The line of DOC that starts with `user NAME `, its password placeholder
 * (`>CHANGE-ME-...`) replaced by pass.  Fails if DOC has no such line. */
static void doc_acl_line(const char *name, const char *pass, char *out, size_t size)
{
        FILE *fp = fopen(DOC, "r");
        char line[2048], want[64];
        snprintf(want, sizeof(want), "user %s ", name);
        assert_non_null(fp);
        while (fgets(line, sizeof(line), fp)) {
                char *ph, *end;
                if (strncmp(line, want, strlen(want)))
                        continue;
                fclose(fp);
                line[strcspn(line, "\n")] = '\0';
                if (!(ph = strstr(line, ">CHANGE-ME-")))
                        fail_msg("%s: the %s line has no >CHANGE-ME- password", DOC, name);
                end = ph + strcspn(ph, " ");
                snprintf(out, size, "%.*s>%s%s", (int)(ph - line), line, pass, end);
                return;
        }
        fclose(fp);
        fail_msg("%s has no line starting with '%s'", DOC, want);
}

static void write_text(const char *path, const char *text)
{
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        assert_int_equal(chmod(path, 0600), 0);
        fputs(text, fp);
        assert_int_equal(fclose(fp), 0);
}

/* A config file holding only the Redis URL of user:pass. */
static void write_conf(at_t *t, const char *path, const char *user, const char *pass)
{
        char text[512];
        snprintf(text, sizeof(text), "{\"redis\": \"redis://%s:%s@127.0.0.1:%d/0\"}\n", user, pass,
                 t->stack.redis_port);
        write_text(path, text);
}

static int setup(void **state)
{
        at_t *t = calloc(1, sizeof(*t));
        char worker[2048], admin[2048], acl[4400];
        const char *args[] = {"--aclfile", NULL, NULL};

        assert_non_null(t);
        /* The aclfile must exist before redis-server starts, so outside
         * the stack's directory (made by kt_stack_init, but removed only by
         * kt_stack_stop: fine too, yet a private dir keeps it simple). */
        snprintf(t->acl_dir, sizeof(t->acl_dir), "/tmp/kinfer-acl-XXXXXX");
        assert_non_null(mkdtemp(t->acl_dir));
        snprintf(t->acl_file, sizeof(t->acl_file), "%s/users.acl", t->acl_dir);
        doc_acl_line("kinfer-worker", WORKER_PASS, worker, sizeof(worker));
        doc_acl_line("kinfer-admin", ADMIN_PASS, admin, sizeof(admin));
        snprintf(acl, sizeof(acl), "user default on nopass ~* &* +@all\n%s\n%s\n", worker, admin);
        write_text(t->acl_file, acl);
        args[1] = t->acl_file;

        assert_int_equal(kt_stack_init(&t->stack), 0);
        assert_int_equal(kt_stack_start_redis(&t->stack, args), 0);
        assert_int_equal(kt_stack_start_broker(&t->stack, 1, 2), 0);
        assert_int_equal(kt_stack_models_dir(&t->stack, t->models, sizeof(t->models)), 0);
        assert_int_equal(kt_write_lin_model(t->models), 0);
        t->c = kt_stack_redis(&t->stack);
        assert_non_null(t->c);
        snprintf(t->wconf, sizeof(t->wconf), "%s/worker.json", t->stack.dir);
        snprintf(t->aconf, sizeof(t->aconf), "%s/admin.json", t->stack.dir);
        snprintf(t->wcli, sizeof(t->wcli), "%s/worker-cli.json", t->stack.dir);
        write_conf(t, t->wconf, "kinfer-worker", WORKER_PASS);
        write_conf(t, t->wcli, "kinfer-worker", WORKER_PASS);
        write_conf(t, t->aconf, "kinfer-admin", ADMIN_PASS);
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        at_t *t = *state;
        redisFree(t->c);
        kt_stack_stop(&t->stack);
        unlink(t->acl_file);
        rmdir(t->acl_dir);
        free(t);
        return 0;
}

/* kt_stack_run without the stack's KINFER_REDIS (see cli). */
static int run_no_env(at_t *t, const char *const *argv, char **out)
{
        char saved[sizeof(t->stack.redis_url)];
        int rc;
        memcpy(saved, t->stack.redis_url, sizeof(saved));
        t->stack.redis_url[0] = '\0';
        rc = kt_stack_run(&t->stack, argv, NULL, out, 30000);
        memcpy(t->stack.redis_url, saved, sizeof(saved));
        return rc;
}

/* Runs the CLI with its Redis settings from conf only: the stack's
 * KINFER_REDIS (no credentials) would override the file, so it is blanked
 * (an empty variable counts as unset).  Returns the exit status; stderr is
 * in the stack's run.log. */
static int cli(at_t *t, const char *conf, const char *const *args, char **out)
{
        const char *argv[16] = {"kinfer"};
        int n = 1;
        for (int i = 0; args[i]; i++)
                argv[n++] = args[i];
        argv[n++] = "--config";
        argv[n++] = conf;
        argv[n] = NULL;
        return run_no_env(t, argv, out);
}

/* Whether a line of the file at path holds text. */
static int log_has(const char *path, const char *text)
{
        char line[4096];
        FILE *fp;
        int found = 0;
        if (!(fp = fopen(path, "r")))
                return 0;
        while (!found && fgets(line, sizeof(line), fp))
                found = strstr(line, text) != NULL;
        fclose(fp);
        return found;
}

/* Whether the stack's run.log (the CLI's stderr) holds text. */
static int run_log_has(at_t *t, const char *text)
{
        char path[400];
        snprintf(path, sizeof(path), "%s/run.log", t->stack.dir);
        return log_has(path, text);
}

/* Waits up to 30 s for a line of slot's log holding text. */
static void wait_worker_log(at_t *t, int slot, const char *text)
{
        long long deadline = kt_now_ms() + 30000;
        while (!log_has(t->stack.procs[slot].log, text)) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&t->stack);
                        fail_msg("%s: no log line with '%s' within 30 s", t->stack.procs[slot].name,
                                 text);
                }
                kt_sleep_ms(50);
        }
}

static long long hget_ll(redisContext *c, const char *key, const char *field)
{
        redisReply *r = redisCommand(c, "HGET %s %s", key, field);
        long long v = -1;
        if (r && r->type == REDIS_REPLY_STRING)
                v = atoll(r->str);
        freeReplyObject(r);
        return v;
}

/* Asserts r is Redis' ACL refusal: NOPERM, or from inside a script its
 * "can't access" error. */
static void want_noperm(redisContext *conn, const char *what, redisReply *r)
{
        if (!r)
                fail_msg("%s: no reply (%s)", what, conn->errstr);
        if (r->type != REDIS_REPLY_ERROR ||
            (!strstr(r->str, "NOPERM") && !strstr(r->str, "can't access")))
                fail_msg(
                    "%s as kinfer-worker: want an ACL refusal, got type %d '%s'", what, r->type,
                    r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STRING ? r->str : "");
        freeReplyObject(r);
}

static void produce(at_t *t, const char *user)
{
        kt_msg_t msgs[N_JOBS];
        msgpack_sbuffer bufs[N_JOBS];
        for (int i = 0; i < N_JOBS; i++) {
                char id[64];
                float x[2] = {(float)i, (float)(-2 * i)};
                snprintf(id, sizeof(id), "%s-%d", user, i);
                msgpack_sbuffer_init(&bufs[i]);
                kt_job_pack(&bufs[i], id, user, "lin", x, 1, 2, NULL, 0);
                msgs[i] = (kt_msg_t){user, bufs[i].data, bufs[i].size, -1};
        }
        assert_int_equal(kt_produce(t->stack.brokers, "kinfer.jobs", msgs, N_JOBS), 0);
        for (int i = 0; i < N_JOBS; i++)
                msgpack_sbuffer_destroy(&bufs[i]);
}

/* Waits for every job of user to have a result; returns how many are ok,
 * checking each ok output and that the others are quota_exceeded. */
static int check_results(at_t *t, const char *user)
{
        long long deadline = kt_now_ms() + 60000;
        int ok = 0;
        for (int i = 0; i < N_JOBS; i++) {
                char id[64];
                kf_result_t r;
                int got;
                snprintf(id, sizeof(id), "%s-%d", user, i);
                while ((got = kt_result_get(t->c, user, id, &r)) == 0 && kt_now_ms() < deadline)
                        kt_sleep_ms(50);
                if (got != 1) {
                        kt_stack_fail(&t->stack);
                        fail_msg("job %s: no result within 60 s", id);
                }
                if (r.ok) {
                        assert_int_equal(r.rows * r.cols, 2);
                        if (r.output[0] != 2.0f * i + 1 || r.output[1] != 3.0f * (-2 * i) + 1)
                                fail_msg("job %s: output (%g, %g), want (%d, %d)", id, r.output[0],
                                         r.output[1], 2 * i + 1, -6 * i + 1);
                        ok++;
                } else if (strcmp(r.error, "quota_exceeded")) {
                        kt_stack_fail(&t->stack);
                        fail_msg("job %s: %s: %s", id, r.error, r.message);
                }
                kf_result_clear(&r);
        }
        return ok;
}

static void test_worker_and_admin_users(void **state)
{
        at_t *t = *state;
        char path[400], saved[sizeof(t->stack.redis_url)], *out = NULL;
        const char *push[] = {"model", "push", path, "--activate", NULL};
        const char *quota[] = {"quota", "set", "acl-u1", "--jobs", "3", NULL};
        const char *usage[] = {"usage", "acl-u1", NULL};
        char http[32];
        const char *wargv[] = {"kinfer-worker",
                               "--worker-id",
                               "acl-w1",
                               "--config",
                               t->wconf,
                               "--http",
                               http,
                               "-X",
                               "session.timeout.ms=6000",
                               NULL};
        redisContext *w;
        redisReply *r;
        int slot;

        snprintf(path, sizeof(path), "%s/lin.kmodel", t->models);
        freeReplyObject(redisCommand(t->c, "SET other:key keep"));

        /* The admin user: the registry and quotas. */
        if (cli(t, t->aconf, push, NULL) || cli(t, t->aconf, quota, NULL)) {
                kt_stack_fail(&t->stack);
                fail_msg("kinfer model push / quota set as kinfer-admin failed (run.log)");
        }
        /* The same as the worker user: refused, and the message says so. */
        {
                const char *quota2[] = {"quota", "set", "acl-u1", "--jobs", "1000000", NULL};
                const char *key2[] = {"key", "create", "acl-u1", NULL};
                int rc1 = cli(t, t->wcli, quota2, NULL), rc2 = cli(t, t->wcli, push, NULL);
                int rc3 = cli(t, t->wcli, key2, NULL);
                if (rc1 == 0 || rc2 == 0 || rc3 == 0 || !run_log_has(t, "NOPERM")) {
                        kt_stack_fail(&t->stack);
                        fail_msg("as kinfer-worker: quota set exit %d, model push exit %d, key "
                                 "create exit %d, want all refused with NOPERM (run.log)",
                                 rc1, rc2, rc3);
                }
                r = redisCommand(t->c, "HGET kinfer:{acl-u1}:quota jobs");
                assert_non_null(r);
                assert_string_equal(r->str, "3");
                freeReplyObject(r);
        }

        /* The worker user: loads the model from the registry, follows its
         * channel, runs the step script with the quota pre-check. */
        memcpy(saved, t->stack.redis_url, sizeof(saved));
        t->stack.redis_url[0] = '\0';
        snprintf(http, sizeof(http), "127.0.0.1:%d", kt_free_port());
        slot = kt_stack_spawn(&t->stack, "acl-w1", wargv, NULL);
        memcpy(t->stack.redis_url, saved, sizeof(saved));
        assert_true(slot >= 0);
        produce(t, "acl-u1");
        produce(t, "acl-u2");
        {
                /* Not msgpack: no result possible, a dead-letter copy and
                 * kinfer:stats undecodable (the worker's HINCRBY there). */
                static const unsigned char junk[] = {0xc1};
                kt_msg_t m = {"junk", junk, sizeof(junk), -1};
                assert_int_equal(kt_produce(t->stack.brokers, "kinfer.jobs", &m, 1), 0);
        }
        assert_int_equal(check_results(t, "acl-u1"), QUOTA_JOBS);
        assert_int_equal(check_results(t, "acl-u2"), N_JOBS);
        assert_int_equal(kt_usage(t->c, "acl-u1", NULL, "jobs"), QUOTA_JOBS);
        assert_int_equal(kt_usage(t->c, "acl-u2", NULL, "jobs"), N_JOBS);
        assert_int_equal(kt_usage(t->c, "acl-u2", NULL, "rows"), N_JOBS);
        {
                long long deadline = kt_now_ms() + 30000, n = 0;
                while (kt_now_ms() < deadline &&
                       (n = hget_ll(t->c, "kinfer:stats", "undecodable")) < 1)
                        kt_sleep_ms(50);
                assert_int_equal(n, 1);
        }
        /* The rest of the admin's registry commands, while the worker
         * follows them over the channel and loads version 2 under its own
         * user: push and activate, list, roll back, remove. */
        {
                const char *list[] = {"model", "list", NULL};
                const char *rollback[] = {"model", "rollback", "lin", NULL};
                const char *rm[] = {"model", "rm", "lin", "2", NULL};
                if (cli(t, t->aconf, push, NULL)) {
                        kt_stack_fail(&t->stack);
                        fail_msg("kinfer model push (version 2) as kinfer-admin failed");
                }
                wait_worker_log(t, slot, "model lin: serving version 2");
                if (cli(t, t->aconf, list, NULL) || cli(t, t->aconf, rollback, NULL)) {
                        kt_stack_fail(&t->stack);
                        fail_msg("kinfer model list / rollback as kinfer-admin failed");
                }
                wait_worker_log(t, slot, "model lin: serving version 1");
                if (cli(t, t->aconf, rm, NULL)) {
                        kt_stack_fail(&t->stack);
                        fail_msg("kinfer model rm lin 2 as kinfer-admin failed");
                }
        }
        /* Signed jobs: the admin makes acl-u3 a key (kinfer key), a job
         * signed with it is verified by the worker, which reads
         * kinfer:{acl-u3}:keys under its own user. */
        {
                char kf[400], *id;
                const char *create[] = {"key", "create", "acl-u3", "-o", kf, NULL};
                const char *submit[] = {"submit",     "--model", "lin",  "--user", "acl-u3",
                                        "--key-file", kf,        "3,-1", NULL};
                long long deadline = kt_now_ms() + 30000;
                kf_result_t res;
                int got;
                snprintf(kf, sizeof(kf), "%s/acl-u3.key", t->stack.dir);
                if (cli(t, t->aconf, create, NULL) || cli(t, t->aconf, submit, &out)) {
                        kt_stack_fail(&t->stack);
                        fail_msg("kinfer key create / a signed submit as kinfer-admin failed");
                }
                id = strtok(out, "\n");
                assert_non_null(id);
                while ((got = kt_result_get(t->c, "acl-u3", id, &res)) == 0 &&
                       kt_now_ms() < deadline)
                        kt_sleep_ms(50);
                assert_int_equal(got, 1);
                if (!res.ok || res.output[0] != 7.0f || res.output[1] != -2.0f)
                        fail_msg("signed job %s: %s %s (%g, %g), want ok (7, -2)", id,
                                 res.ok ? "ok" : res.error, res.ok ? "" : res.message,
                                 res.ok ? res.output[0] : 0.0, res.ok ? res.output[1] : 0.0);
                kf_result_clear(&res);
                free(out);
                out = NULL;
        }
        /* Nothing it needs was refused on the way (a refused SUBSCRIBE, say,
         * would only be a warning, the registry then polled). */
        if (!log_has(t->stack.procs[slot].log, "model registry: following") ||
            log_has(t->stack.procs[slot].log, "NOPERM") ||
            log_has(t->stack.procs[slot].log, "no permissions")) {
                kt_stack_fail(&t->stack);
                fail_msg("acl-w1's log shows an ACL refusal, or no subscription to the registry");
        }

        /* With --http it advertises itself (kinfer:worker:ID), and the
         * admin's kinfer top finds it there (SCAN, GET) and reads usage;
         * top has no config file: the URL comes from KINFER_REDIS. */
        r = redisCommand(t->c, "EXISTS kinfer:worker:acl-w1");
        assert_true(r && r->type == REDIS_REPLY_INTEGER);
        if (r->integer != 1)
                fail_msg("kinfer:worker:acl-w1 was not written under the worker's ACL user");
        freeReplyObject(r);
        {
                const char *top[] = {"kinfer", "top", "--once", "--interval-ms", "200", NULL};
                int rc;
                memcpy(saved, t->stack.redis_url, sizeof(saved));
                snprintf(t->stack.redis_url, sizeof(t->stack.redis_url),
                         "redis://kinfer-admin:%s@127.0.0.1:%d/0", ADMIN_PASS, t->stack.redis_port);
                rc = kt_stack_run(&t->stack, top, NULL, &out, 30000);
                memcpy(t->stack.redis_url, saved, sizeof(saved));
                if (rc != 0 || !out || !strstr(out, "workers 1/1 up") || !strstr(out, "acl-u1") ||
                    strstr(out, ADMIN_PASS))
                        fail_msg("kinfer top --once as kinfer-admin: exit %d:\n%s", rc,
                                 out ? out : "");
                free(out);
                out = NULL;
        }

        /* The admin reads usage. */
        assert_int_equal(cli(t, t->aconf, usage, &out), 0);
        if (!out || !strstr(out, "jobs 3 "))
                fail_msg("kinfer usage acl-u1 as kinfer-admin: %s", out ? out : "(nothing)");
        free(out);

        /* As kinfer-worker, by hand: nothing outside its patterns. */
        w = redisConnect("127.0.0.1", t->stack.redis_port);
        assert_true(w && !w->err);
        r = redisCommand(w, "AUTH %s %s", "kinfer-worker", WORKER_PASS);
        assert_true(r && r->type == REDIS_REPLY_STATUS);
        freeReplyObject(r);
        want_noperm(w, "GET other:key", redisCommand(w, "GET other:key"));
        want_noperm(w, "SET other:key", redisCommand(w, "SET other:key x"));
        want_noperm(w, "DEL other:key", redisCommand(w, "DEL other:key"));
        want_noperm(w, "GET kinfer2:x", redisCommand(w, "GET kinfer2:{acl-u2}:result:x"));
        /* (A quota is writable to it: docs/security.md says why.) */
        want_noperm(w, "HSET model-meta", redisCommand(w, "HSET kinfer:model-meta:lin active 9"));
        want_noperm(w, "SET a model blob", redisCommand(w, "SET kinfer:model:lin:1 junk"));
        want_noperm(w, "PUBLISH kinfer:models",
                    redisCommand(w, "PUBLISH kinfer:models %s", "activate lin 9"));
        want_noperm(w, "EVAL", redisCommand(w, "EVAL %s 0", "return 1"));
        want_noperm(w, "KEYS", redisCommand(w, "KEYS *"));
        want_noperm(w, "FLUSHALL", redisCommand(w, "FLUSHALL"));
        want_noperm(w, "CONFIG GET", redisCommand(w, "CONFIG GET maxmemory"));
        {
                /* SCRIPT LOAD is allowed (the step needs it): a script loaded
                 * with it still runs with the user's permissions. */
                char sha[48];
                r = redisCommand(w, "SCRIPT LOAD %s", "return redis.call('SET','other:key','x')");
                assert_true(r && r->type == REDIS_REPLY_STRING);
                snprintf(sha, sizeof(sha), "%s", r->str);
                freeReplyObject(r);
                want_noperm(w, "EVALSHA of a script writing other:key",
                            redisCommand(w, "EVALSHA %s 0", sha));
        }
        /* What it may do: read a result under the prefix. */
        r = redisCommand(w, "GET kinfer:{acl-u2}:result:acl-u2-0");
        assert_true(r && r->type == REDIS_REPLY_STRING);
        freeReplyObject(r);
        redisFree(w);
        r = redisCommand(t->c, "GET other:key");
        assert_true(r && r->type == REDIS_REPLY_STRING);
        assert_string_equal(r->str, "keep");
        freeReplyObject(r);

        assert_int_equal(kt_stack_kill(&t->stack, slot, SIGTERM, 20000), 0);
        r = redisCommand(t->c, "EXISTS kinfer:worker:acl-w1");
        assert_true(r && r->type == REDIS_REPLY_INTEGER);
        if (r->integer != 0)
                fail_msg("kinfer:worker:acl-w1 was not deleted at exit under the worker's user");
        freeReplyObject(r);

        /* Secrets: never in the worker's log or --print-config, nor in the
         * CLI's refusal of a wrong password, which still names the user. */
        if (log_has(t->stack.procs[slot].log, WORKER_PASS))
                fail_msg("acl-w1's log shows its Redis password");
        {
                const char *pc[] = {"kinfer-worker", "--config", t->wconf, "--print-config", NULL};
                char bad[400];
                const char *usage2[] = {"usage", "acl-u1", NULL};
                assert_int_equal(run_no_env(t, pc, &out), 0);
                if (strstr(out, WORKER_PASS) || !strstr(out, "redis://kinfer-worker:***@"))
                        fail_msg("--print-config does not mask the Redis password: %s", out);
                free(out);
                out = NULL;
                snprintf(bad, sizeof(bad), "%s/bad.json", t->stack.dir);
                write_conf(t, bad, "kinfer-admin", "Wrong-adm1n-pass");
                assert_int_equal(cli(t, bad, usage2, NULL), 3);
                if (!run_log_has(t, "WRONGPASS") || run_log_has(t, "Wrong-adm1n-pass") ||
                    run_log_has(t, ADMIN_PASS) || run_log_has(t, WORKER_PASS))
                        fail_msg("a refused Redis password: run.log must say WRONGPASS and show "
                                 "no password");
        }
        t->stack.failed = 0;
}

/* A worker whose ACL user may not read the signing keys (the documented
 * line without its keys pattern, set at run time): a signed job waits,
 * and the log names the refusal, instead of being answered unauthorized as
 * if the key record were malformed; once the pattern is granted the same
 * job is computed. */
static void test_keys_unreadable_wait(void **state)
{
        at_t *t = *state;
        char path[400], kf[400], line[2048], saved[sizeof(t->stack.redis_url)], *out = NULL, *id,
                                                                                *tok, *save;
        const char *push[] = {"model", "push", path, "--activate", NULL};
        const char *create[] = {"key", "create", "acl-u4", "-o", kf, NULL};
        const char *submit[] = {"submit",     "--model", "lin",  "--user", "acl-u4",
                                "--key-file", kf,        "3,-1", NULL};
        const char *wargv[] = {
            "kinfer-worker",           "--worker-id", "acl-w2", "--config", t->wconf, "-X",
            "session.timeout.ms=6000", NULL};
        const char *av[64] = {"ACL", "SETUSER", "kinfer-worker", "resetkeys"};
        long long deadline;
        kf_result_t res;
        redisReply *r;
        int n = 4, slot, got;

        snprintf(path, sizeof(path), "%s/lin.kmodel", t->models);
        snprintf(kf, sizeof(kf), "%s/acl-u4.key", t->stack.dir);
        if (cli(t, t->aconf, push, NULL) || cli(t, t->aconf, create, NULL))
                fail_msg("kinfer model push / key create as kinfer-admin failed (run.log)");
        /* The worker's key patterns from the docs, but the keys one. */
        doc_acl_line("kinfer-worker", WORKER_PASS, line, sizeof(line));
        for (tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
                if ((tok[0] == '~' || tok[0] == '%') && !strstr(tok, ":keys") && n < 63)
                        av[n++] = tok;
        r = redisCommandArgv(t->c, n, av, NULL);
        assert_true(r && r->type == REDIS_REPLY_STATUS);
        freeReplyObject(r);

        memcpy(saved, t->stack.redis_url, sizeof(saved));
        t->stack.redis_url[0] = '\0';
        slot = kt_stack_spawn(&t->stack, "acl-w2", wargv, NULL);
        memcpy(t->stack.redis_url, saved, sizeof(saved));
        assert_true(slot >= 0);
        assert_int_equal(cli(t, t->aconf, submit, &out), 0);
        id = strtok(out, "\n");
        assert_non_null(id);

        wait_worker_log(t, slot, "signing keys unreadable");
        if (!log_has(t->stack.procs[slot].log, "NOPERM"))
                fail_msg("acl-w2 waits for the keys without naming the NOPERM refusal");
        kt_sleep_ms(1000); /* it must still be waiting, not answered */
        if ((got = kt_result_get(t->c, "acl-u4", id, &res)) != 0) {
                kt_stack_fail(&t->stack);
                fail_msg("job %s was answered (%s: %s) while its key was unreadable", id,
                         got == 1 && !res.ok ? res.error : "ok",
                         got == 1 && !res.ok ? res.message : "");
        }

        r = redisCommand(t->c, "ACL SETUSER kinfer-worker %s", "%R~kinfer:{*}:keys");
        assert_true(r && r->type == REDIS_REPLY_STATUS);
        freeReplyObject(r);
        deadline = kt_now_ms() + 30000;
        while ((got = kt_result_get(t->c, "acl-u4", id, &res)) == 0 && kt_now_ms() < deadline)
                kt_sleep_ms(50);
        assert_int_equal(got, 1);
        if (!res.ok || res.output[0] != 7.0f || res.output[1] != -2.0f)
                fail_msg("job %s once the keys are readable: %s, want ok (7, -2)", id,
                         res.ok ? "ok, other values" : res.message);
        kf_result_clear(&res);
        free(out);
        assert_int_equal(kt_stack_kill(&t->stack, slot, SIGTERM, 20000), 0);
        t->stack.failed = 0;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_worker_and_admin_users, setup, teardown),
            cmocka_unit_test_setup_teardown(test_keys_unreadable_wait, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
