/* kt_kafka.c - a genuine Apache Kafka broker for the harness: one node in
 * KRaft combined mode (deploy/kafka/node.sh, the jars from Maven Central),
 * started, killed and restarted on the same data directory, and readiness
 * and topic creation checked with librdkafka's admin API (see stack.h). */
#include "stack.h"
#include "stack_int.h"

#include <librdkafka/rdkafka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A JVM start is about 2 s here, a restart after SIGKILL about 6 s (the
 * controller waits out the dead broker's session, 4 s in node.sh); a slow,
 * shared CI machine gets a generous margin. */
#define KK_START_TIMEOUT_MS 90000
#define KK_STOP_TIMEOUT_MS  30000 /* a clean (SIGTERM) shutdown */
#define KK_ATTEMPTS         3     /* a port may be taken between probe and bind */
#define KK_NODE_ID          1     /* node.id in node.sh */

static const char *const kk_topics[] = {
    "kinfer.jobs", "kinfer.dlq", "kinfer.results", /* the result topic (test_real_stream.c) */
    "kinfer.results2",                             /* a chained stage's result topic */
};
#define KK_N_TOPICS ((int)(sizeof(kk_topics) / sizeof(kk_topics[0])))

/* The Kafka node of this process's stack (stack.h: one stack per process). */
static struct {
        int port, cport;   /* client and controller listeners, 0 = none */
        int tls_port;      /* the SASL_SSL listener (kt_stack_start_kafka_secure), 0 = none */
        int mtls_port;     /* its mutual-TLS (SSL) listener, 0 = none */
        char tls_dir[400]; /* its certificates and users file */
        int partitions;
        char dir[400];  /* its configuration and data: node.sh DIR */
        char node[512]; /* deploy/kafka/node.sh */
        char jars[512];
        char last_err[512]; /* librdkafka's last complaint, shown on a timeout */
} kk;

/* The harness's admin client sees connection refused until the broker
 * listens; that is expected, so it is kept for the timeout message only. */
static void kk_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
        (void)rk;
        (void)level;
        snprintf(kk.last_err, sizeof(kk.last_err), "%s: %s", fac, buf);
}

static rd_kafka_t *kk_admin_new(const kt_stack_t *s)
{
        static const char *const props[] = {"reconnect.backoff.ms",
                                            "50",
                                            "reconnect.backoff.max.ms",
                                            "500",
                                            "socket.connection.setup.timeout.ms",
                                            "5000",
                                            NULL};
        char err[512];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_t *rk;

        if (rd_kafka_conf_set(conf, "bootstrap.servers", s->brokers, err, sizeof(err)))
                goto fail;
        for (int i = 0; props[i]; i += 2)
                if (rd_kafka_conf_set(conf, props[i], props[i + 1], err, sizeof(err)))
                        goto fail;
        rd_kafka_conf_set_log_cb(conf, kk_log);
        if ((rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err))))
                return rk; /* rd_kafka_new took conf */
        fprintf(stderr, "stack: kafka admin client: %s\n", err);
        return NULL;
fail:
        fprintf(stderr, "stack: kafka admin client: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
}

/* One CreateTopics round for the kinfer topics.  Returns 1 when every topic
 * exists now (created, or already there after an earlier round whose answer
 * was lost), 0 to try again (the broker is not up yet), -1 on a refusal that
 * retrying cannot fix (message on stderr). */
static int kk_create_topics(rd_kafka_t *rk, int timeout_ms)
{
        rd_kafka_NewTopic_t *nt[KK_N_TOPICS] = {NULL};
        rd_kafka_AdminOptions_t *opts = NULL;
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
        rd_kafka_event_t *ev = NULL;
        char err[512];
        int rc = 0;

        for (int i = 0; i < KK_N_TOPICS; i++)
                if (!(nt[i] = rd_kafka_NewTopic_new(kk_topics[i], kk.partitions, 1, err,
                                                    sizeof(err)))) {
                        fprintf(stderr, "stack: kafka topic %s: %s\n", kk_topics[i], err);
                        rc = -1;
                        goto cleanup;
                }
        opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
        rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, err, sizeof(err));
        rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, err, sizeof(err));
        rd_kafka_CreateTopics(rk, nt, KK_N_TOPICS, opts, q);
        ev = rd_kafka_queue_poll(q, timeout_ms + 2000);
        if (!ev || rd_kafka_event_error(ev))
                goto cleanup; /* not answered: not up yet */
        {
                size_t n = 0;
                const rd_kafka_topic_result_t **res =
                    rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
                int done = 0;
                for (size_t i = 0; i < n; i++) {
                        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[i]);
                        if (e == RD_KAFKA_RESP_ERR_NO_ERROR ||
                            e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                                done++;
                        } else if (e == RD_KAFKA_RESP_ERR_INVALID_PARTITIONS ||
                                   e == RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR ||
                                   e == RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION ||
                                   e == RD_KAFKA_RESP_ERR_POLICY_VIOLATION) {
                                fprintf(stderr, "stack: kafka refused topic %s: %s\n",
                                        rd_kafka_topic_result_name(res[i]),
                                        rd_kafka_topic_result_error_string(res[i]));
                                rc = -1;
                                goto cleanup;
                        }
                }
                rc = done == KK_N_TOPICS;
        }
cleanup:
        if (ev)
                rd_kafka_event_destroy(ev);
        if (opts)
                rd_kafka_AdminOptions_destroy(opts);
        rd_kafka_NewTopic_destroy_array(nt, KK_N_TOPICS);
        rd_kafka_queue_destroy(q);
        return rc;
}

/* 1 if the broker answers a metadata request and every partition of the
 * kinfer topics is there and led by our node, else 0. */
static int kk_topics_led(rd_kafka_t *rk, int timeout_ms)
{
        const struct rd_kafka_metadata *md = NULL;
        int ok = 0;

        if (rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
                return 0;
        for (int t = 0; t < KK_N_TOPICS; t++)
                for (int i = 0; i < md->topic_cnt; i++) {
                        const struct rd_kafka_metadata_topic *mt = &md->topics[i];
                        int led = 0;
                        if (strcmp(mt->topic, kk_topics[t]) || mt->err ||
                            mt->partition_cnt != kk.partitions)
                                continue;
                        for (int p = 0; p < mt->partition_cnt; p++)
                                led += !mt->partitions[p].err &&
                                       mt->partitions[p].leader == KK_NODE_ID;
                        ok += led == kk.partitions;
                }
        rd_kafka_metadata_destroy(md);
        return ok == KK_N_TOPICS;
}

/* Waits until the broker serves the kinfer topics, creating them first when
 * `create`.  Returns 0; -1 if the JVM exited (*exited set) or a topic was
 * refused; -2 on timeout.  Messages on stderr. */
static int kk_wait_ready(kt_stack_t *s, int create, int *exited)
{
        long long start = kt_now_ms(), deadline = start + KK_START_TIMEOUT_MS;
        rd_kafka_t *rk = kk_admin_new(s);
        int created = !create, rc = -2;

        *exited = 0;
        if (!rk)
                return -1;
        kk.last_err[0] = '\0';
        while (kt_now_ms() < deadline) {
                int st = kt_wait_pid(s->broker.pid, 0);
                if (st != -2) {
                        fprintf(stderr,
                                "stack: kafka exited with status %d while starting "
                                "(log: %s)\n",
                                st, s->broker.log);
                        s->broker.pid = 0;
                        *exited = 1;
                        rc = -1;
                        break;
                }
                if (!created) {
                        int r = kk_create_topics(rk, 3000);
                        if (r < 0) {
                                rc = -1;
                                break;
                        }
                        created = r;
                }
                if (created && kk_topics_led(rk, 2000)) {
                        rc = 0;
                        break;
                }
                kt_sleep_ms(100);
        }
        if (rc == -2)
                fprintf(stderr,
                        "stack: kafka at %s did not serve %s and %s within %d ms (last "
                        "client message: %s; log: %s)\n",
                        s->brokers, kk_topics[0], kk_topics[1], KK_START_TIMEOUT_MS,
                        kk.last_err[0] ? kk.last_err : "none", s->broker.log);
        else if (rc == 0)
                fprintf(stderr, "stack: kafka at %s ready in %lld ms\n", s->brokers,
                        kt_now_ms() - start);
        rd_kafka_destroy(rk);
        return rc;
}

/* Spawns node.sh on kk's dir and ports; the JVM replaces it (same pid). */
static int kk_spawn(kt_stack_t *s)
{
        char port[16], cport[16];
        char *argv[] = {"/bin/bash", kk.node, kk.dir, port, cport, kk.jars, NULL};
        char **envp = NULL;
        char tls[6][480];
        const char *extra[] = {tls[0], tls[1], tls[2], tls[3], tls[4], tls[5], NULL};
        int nullfd = -1, logfd = -1, rc = -1;
        pid_t pid;

        snprintf(port, sizeof(port), "%d", kk.port);
        snprintf(cport, sizeof(cport), "%d", kk.cport);
        /* node.sh's locked-down listener (read at its first run only). */
        snprintf(tls[0], sizeof(tls[0]), "KINFER_KAFKA_SASL_SSL_PORT=%d", kk.tls_port);
        snprintf(tls[1], sizeof(tls[1]), "KINFER_KAFKA_KEYSTORE=%s/broker.p12", kk.tls_dir);
        snprintf(tls[2], sizeof(tls[2]), "KINFER_KAFKA_KEYSTORE_PASSWORD_FILE=%s/broker.pass",
                 kk.tls_dir);
        snprintf(tls[3], sizeof(tls[3]), "KINFER_KAFKA_USERS_FILE=%s/users", kk.tls_dir);
        snprintf(tls[4], sizeof(tls[4]), "KINFER_KAFKA_SSL_PORT=%d", kk.mtls_port);
        snprintf(tls[5], sizeof(tls[5]), "KINFER_KAFKA_CLIENT_CA=%s/ca.pem", kk.tls_dir);
        if ((nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0 ||
            (logfd = kt_open_log(s->broker.log)) < 0 ||
            !(envp = kt_build_env(s, kk.tls_port ? extra : NULL)))
                goto cleanup;
        dprintf(logfd, "==== stack: %s %s %s %s %s\n", kk.node, kk.dir, port, cport, kk.jars);
        if ((pid = kt_spawn_child(argv[0], argv, envp, nullfd, logfd, logfd)) < 0)
                goto cleanup;
        s->broker.pid = pid;
        rc = 0;
cleanup:
        if (nullfd >= 0)
                close(nullfd);
        if (logfd >= 0)
                close(logfd);
        kt_free_strv(envp);
        return rc;
}

int kt_stack_start_kafka(kt_stack_t *s, int partitions)
{
        const char *node = getenv("KINFER_KAFKA_NODE");
        const char *jars = getenv("KINFER_KAFKA_JARS");
        struct stat st;

        if (s->broker.pid || kk.port) {
                fprintf(stderr, "stack: a broker is already running\n");
                return -1;
        }
        if (partitions < 1) {
                fprintf(stderr, "stack: start_kafka: %d partitions\n", partitions);
                return -1;
        }
        snprintf(kk.node, sizeof(kk.node), "%s", node && *node ? node : "deploy/kafka/node.sh");
        if (jars && *jars)
                snprintf(kk.jars, sizeof(kk.jars), "%s", jars);
        else
                snprintf(kk.jars, sizeof(kk.jars), "%s/kafka/jars", s->bindir);
        if (access(kk.node, R_OK)) {
                fprintf(stderr,
                        "stack: %s: %s (KINFER_KAFKA_NODE; run the tests from the "
                        "source tree)\n",
                        kk.node, strerror(errno));
                return -1;
        }
        if (stat(kk.jars, &st) || !S_ISDIR(st.st_mode)) {
                fprintf(stderr,
                        "stack: no Kafka jars in %s (KINFER_KAFKA_JARS): run `make "
                        "kafka-jars`\n",
                        kk.jars);
                return -1;
        }
        kk.partitions = partitions;
        snprintf(s->broker.name, sizeof(s->broker.name), "kafka");
        snprintf(s->broker.log, sizeof(s->broker.log), "%s/kafka.log", s->dir);

        for (int attempt = 0; attempt < KK_ATTEMPTS; attempt++) {
                int exited = 0, r;
                /* A fresh directory per attempt: node.sh wrote the ports of a
                 * failed one into its server.properties. */
                if (attempt)
                        snprintf(kk.dir, sizeof(kk.dir), "%s/kafka.%d", s->dir, attempt);
                else
                        snprintf(kk.dir, sizeof(kk.dir), "%s/kafka", s->dir);
                if (mkdir(kk.dir, 0755)) {
                        fprintf(stderr, "stack: mkdir %s: %s\n", kk.dir, strerror(errno));
                        break;
                }
                kk.port = kt_free_port();
                do
                        kk.cport = kt_free_port();
                while (kk.cport == kk.port);
                if (kk.port < 0 || kk.cport < 0)
                        break;
                if (kk.tls_port) {
                        do
                                kk.tls_port = kt_free_port();
                        while (kk.tls_port == kk.port || kk.tls_port == kk.cport);
                        if (kk.tls_port < 0)
                                break;
                        snprintf(s->kafka_tls_brokers, sizeof(s->kafka_tls_brokers), "127.0.0.1:%d",
                                 kk.tls_port);
                        do
                                kk.mtls_port = kt_free_port();
                        while (kk.mtls_port == kk.port || kk.mtls_port == kk.cport ||
                               kk.mtls_port == kk.tls_port);
                        if (kk.mtls_port < 0)
                                break;
                        snprintf(s->kafka_mtls_brokers, sizeof(s->kafka_mtls_brokers),
                                 "127.0.0.1:%d", kk.mtls_port);
                }
                snprintf(s->brokers, sizeof(s->brokers), "127.0.0.1:%d", kk.port);
                if (kk_spawn(s))
                        break;
                if ((r = kk_wait_ready(s, 1, &exited)) == 0)
                        return 0;
                if (s->broker.pid)
                        kt_signal_proc(&s->broker.pid, SIGKILL, 0);
                if (!exited)
                        break; /* a timeout or a refused topic: not a port race */
                fprintf(stderr, "stack: kafka exited at start on ports %d/%d, retrying\n", kk.port,
                        kk.cport);
        }
        fprintf(stderr, "stack: could not start kafka (log: %s)\n", s->broker.log);
        kk.port = kk.cport = kk.tls_port = kk.mtls_port = 0;
        s->brokers[0] = s->kafka_tls_brokers[0] = s->kafka_mtls_brokers[0] = '\0';
        return -1;
}

int kt_stack_start_kafka_secure(kt_stack_t *s, int partitions, const char *const *users)
{
        const char *certs = getenv("KINFER_KAFKA_CERTS");
        char script[512], path[600];
        FILE *fp;
        int rc;

        if (s->broker.pid || kk.port) {
                fprintf(stderr, "stack: a broker is already running\n");
                return -1;
        }
        snprintf(script, sizeof(script), "%s",
                 certs && *certs ? certs : "tests/harness/kafka-certs.sh");
        snprintf(kk.tls_dir, sizeof(kk.tls_dir), "%s/kafka-tls", s->dir);
        if (mkdir(kk.tls_dir, 0700)) {
                fprintf(stderr, "stack: mkdir %s: %s\n", kk.tls_dir, strerror(errno));
                return -1;
        }
        {
                const char *argv[] = {"/bin/bash", script, kk.tls_dir, NULL};
                if ((rc = kt_stack_run(s, argv, NULL, NULL, 60000)) != 0) {
                        fprintf(stderr, "stack: %s %s: exit %d (see %s/certs.log)\n", script,
                                kk.tls_dir, rc, kk.tls_dir);
                        return -1;
                }
        }
        snprintf(path, sizeof(path), "%s/users", kk.tls_dir);
        if (!(fp = fopen(path, "w"))) {
                fprintf(stderr, "stack: %s: %s\n", path, strerror(errno));
                return -1;
        }
        for (int i = 0; users && users[i] && users[i + 1]; i += 2)
                fprintf(fp, "%s %s\n", users[i], users[i + 1]);
        if (fclose(fp)) {
                fprintf(stderr, "stack: %s: %s\n", path, strerror(errno));
                return -1;
        }
        snprintf(s->kafka_ca, sizeof(s->kafka_ca), "%s/ca.pem", kk.tls_dir);
        snprintf(s->kafka_other_ca, sizeof(s->kafka_other_ca), "%s/other-ca.pem", kk.tls_dir);
        snprintf(s->kafka_tls_dir, sizeof(s->kafka_tls_dir), "%s", kk.tls_dir);
        kk.tls_port = 1; /* chosen for real with the other ports */
        if ((rc = kt_stack_start_kafka(s, partitions)))
                kk.tls_port = 0;
        return rc;
}

int kt_stack_kill_kafka(kt_stack_t *s, int sig)
{
        if (!kk.port || !s->broker.pid) {
                fprintf(stderr, "stack: kill_kafka: kafka is not running\n");
                return -1;
        }
        return kt_signal_proc(&s->broker.pid, sig, KK_STOP_TIMEOUT_MS);
}

int kt_stack_restart_kafka(kt_stack_t *s)
{
        int exited = 0;
        if (!kk.port) {
                fprintf(stderr, "stack: restart_kafka before start_kafka\n");
                return -1;
        }
        if (s->broker.pid) {
                fprintf(stderr, "stack: restart_kafka: kafka is still running\n");
                return -1;
        }
        /* The same ports and data: clients reconnect to the address they had
         * and must find every acknowledged message and committed offset. */
        if (kk_spawn(s))
                return -1;
        if (kk_wait_ready(s, 0, &exited)) {
                if (s->broker.pid)
                        kt_signal_proc(&s->broker.pid, SIGKILL, 0);
                return -1;
        }
        return 0;
}

int kt_stack_kafka_topic_config(kt_stack_t *s, const char *topic, const char *key,
                                const char *value)
{
        rd_kafka_ConfigResource_t *res = NULL;
        rd_kafka_AdminOptions_t *opts = NULL;
        rd_kafka_queue_t *q = NULL;
        rd_kafka_event_t *ev = NULL;
        rd_kafka_t *rk;
        char err[512];
        int rc = -1;

        if (!kk.port || !s->broker.pid) {
                fprintf(stderr, "stack: kafka_topic_config: kafka is not running\n");
                return -1;
        }
        if (!(rk = kk_admin_new(s)))
                return -1;
        q = rd_kafka_queue_new(rk);
        /* AlterConfigs (librdkafka 2.0.2 has no incremental one) replaces the
         * topic's dynamic configuration with this one key. */
        res = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
        if (rd_kafka_ConfigResource_set_config(res, key, value)) {
                fprintf(stderr, "stack: kafka_topic_config %s: cannot set %s\n", topic, key);
                goto cleanup;
        }
        opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ALTERCONFIGS);
        rd_kafka_AdminOptions_set_request_timeout(opts, 10000, err, sizeof(err));
        rd_kafka_AlterConfigs(rk, &res, 1, opts, q);
        if (!(ev = rd_kafka_queue_poll(q, 15000)) || rd_kafka_event_error(ev)) {
                fprintf(stderr, "stack: kafka_topic_config %s %s=%s: %s\n", topic, key, value,
                        ev ? rd_kafka_event_error_string(ev) : "no answer in 15 s");
                goto cleanup;
        }
        {
                size_t n = 0;
                const rd_kafka_ConfigResource_t **r = rd_kafka_AlterConfigs_result_resources(
                    rd_kafka_event_AlterConfigs_result(ev), &n);
                if (n != 1 || rd_kafka_ConfigResource_error(r[0])) {
                        fprintf(stderr, "stack: kafka_topic_config %s %s=%s: %s\n", topic, key,
                                value,
                                n ? rd_kafka_ConfigResource_error_string(r[0]) : "no result");
                        goto cleanup;
                }
        }
        rc = 0;
cleanup:
        if (ev)
                rd_kafka_event_destroy(ev);
        if (opts)
                rd_kafka_AdminOptions_destroy(opts);
        if (res)
                rd_kafka_ConfigResource_destroy(res);
        rd_kafka_queue_destroy(q);
        rd_kafka_destroy(rk);
        return rc;
}

void kt_kafka_forget(void)
{
        memset(&kk, 0, sizeof(kk));
}
