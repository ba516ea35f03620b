/* devbroker.c - kinfer-devbroker: librdkafka's in-memory mock Kafka cluster on loopback,
 * for development and tests, with a line-based fault-injection channel on stdin. */
#include "kf_log.h"
#include "kf_util.h"

#include <errno.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#define DB_MAX_TOPICS    64   /* --topic given more often than this is refused */
#define DB_MAX_WORDS     64   /* words in one control command */
#define DB_LINE_MAX      4096 /* longer control lines are refused, not truncated */
#define DB_MAX_PARTS     10000
#define DB_META_TIMEOUT  5000 /* ms for the metadata lookup of a topic we did not create */
#define DB_TICK_MS       200  /* how often the main loop looks at the stop flag */
#define DB_TOPIC_NAMELEN 249  /* Kafka's own limit */
#define DB_SETTLE_US     5000 /* quiet time between two mock commands, see mock_settle() */

static volatile sig_atomic_t stop_requested;

/* The topics this process created (at start and by create-topic).  Commands
 * that name a topic check here first because the mock silently auto-creates
 * any topic a command names, which would turn a typo into a new topic. */
typedef struct db_state_s {
        rd_kafka_mock_cluster_t *mcluster;
        int64_t last_cmd_us; /* kf_mono_us() when the previous command finished */
        int broker_cnt;
        char **topics;
        size_t topic_cnt, topic_cap;
} db_state_t;

typedef int (*db_cmd_fn)(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size);

typedef struct db_cmd_s {
        const char *name;
        int min_args, max_args; /* words after the command name; -1 = no limit */
        const char *usage;
        db_cmd_fn fn;
} db_cmd_t;

/* Kafka protocol request names for request-errors, so tests read well. */
static const struct {
        const char *name;
        int16_t key;
} api_names[] = {
    {"Produce", 0},          {"Fetch", 1},
    {"ListOffsets", 2},      {"Metadata", 3},
    {"OffsetCommit", 8},     {"OffsetFetch", 9},
    {"FindCoordinator", 10}, {"JoinGroup", 11},
    {"Heartbeat", 12},       {"LeaveGroup", 13},
    {"SyncGroup", 14},       {"ApiVersions", 18},
    {"InitProducerId", 22},  {"AddPartitionsToTxn", 24},
    {"AddOffsetsToTxn", 25}, {"EndTxn", 26},
    {"TxnOffsetCommit", 28},
};

static void on_signal(int sig)
{
        (void)sig;
        /* A second signal means the clean shutdown is stuck: leave now. */
        if (stop_requested)
                _exit(1);
        stop_requested = 1;
}

static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
        (void)rk;
        /* The cluster's own handle has no bootstrap.servers on purpose; its
         * warning about that would only mislead whoever reads the log. */
        if (!strcmp(fac, "CONFWARN") && strstr(buf, "bootstrap.servers"))
                return;
        if (level <= LOG_ERR)
                kf_error("rdkafka %s: %s", fac, buf);
        else if (level == LOG_WARNING)
                kf_warn("rdkafka %s: %s", fac, buf);
        else if (level <= LOG_INFO)
                kf_info("rdkafka %s: %s", fac, buf);
        else
                kf_debug("rdkafka %s: %s", fac, buf);
}

static int topic_name_valid(const char *name)
{
        size_t n = strlen(name);
        if (n == 0 || n > DB_TOPIC_NAMELEN || !strcmp(name, ".") || !strcmp(name, ".."))
                return 0;
        for (const char *p = name; *p; p++) {
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
                        return 0;
        }
        return 1;
}

static int topic_known(const db_state_t *st, const char *name)
{
        for (size_t i = 0; i < st->topic_cnt; i++)
                if (!strcmp(st->topics[i], name))
                        return 1;
        return 0;
}

static int topic_remember(db_state_t *st, const char *name)
{
        char *copy;
        if (topic_known(st, name))
                return 0;
        if (st->topic_cnt == st->topic_cap) {
                size_t cap = st->topic_cap ? st->topic_cap * 2 : 8;
                char **grown = realloc(st->topics, cap * sizeof(*grown));
                if (!grown)
                        return -1;
                st->topics = grown;
                st->topic_cap = cap;
        }
        if (!(copy = strdup(name)))
                return -1;
        st->topics[st->topic_cnt++] = copy;
        return 0;
}

/* Asks the cluster itself whether a topic exists: clients may have auto-created it
 * (producers do by default).  A throwaway client keeps the dummy handle that owns
 * the cluster free of broker connections, whose reconnect noise would fill the log
 * whenever a test takes a broker down. */
static int topic_exists_in_cluster(db_state_t *st, const char *name, char *errstr,
                                   size_t errstr_size)
{
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_t *rk = NULL;
        rd_kafka_resp_err_t err;
        char cerr[256];
        int found = -1;

        if (rd_kafka_conf_set(conf, "bootstrap.servers",
                              rd_kafka_mock_cluster_bootstraps(st->mcluster), cerr,
                              sizeof(cerr)) != RD_KAFKA_CONF_OK ||
            rd_kafka_conf_set(conf, "log_level", "3", cerr, sizeof(cerr)) != RD_KAFKA_CONF_OK) {
                kf_errf(errstr, errstr_size, "metadata client: %s", cerr);
                rd_kafka_conf_destroy(conf);
                goto cleanup;
        }
        rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
        if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, cerr, sizeof(cerr)))) {
                kf_errf(errstr, errstr_size, "metadata client: %s", cerr);
                rd_kafka_conf_destroy(conf);
                goto cleanup;
        }
        err = rd_kafka_metadata(rk, 1, NULL, &md, DB_META_TIMEOUT);
        if (err) {
                kf_errf(errstr, errstr_size, "metadata request failed: %s", rd_kafka_err2str(err));
                goto cleanup;
        }
        found = 0;
        for (int i = 0; i < md->topic_cnt; i++) {
                if (!strcmp(md->topics[i].topic, name) && !md->topics[i].err) {
                        found = 1;
                        break;
                }
        }
cleanup:
        if (md)
                rd_kafka_metadata_destroy(md);
        if (rk)
                rd_kafka_destroy(rk);
        return found;
}

/* 0 if the topic exists (remembering it), -1 with errstr otherwise. */
static int require_topic(db_state_t *st, const char *name, char *errstr, size_t errstr_size)
{
        int r;
        if (topic_known(st, name))
                return 0;
        r = topic_exists_in_cluster(st, name, errstr, errstr_size);
        if (r < 0)
                return -1;
        if (r == 0)
                return kf_errf(errstr, errstr_size, "unknown topic '%s' (create-topic it first)",
                               name);
        topic_remember(st, name);
        return 0;
}

static int parse_int(const char *s, int64_t min, int64_t max, const char *what, int64_t *out,
                     char *errstr, size_t errstr_size)
{
        if (kf_parse_i64(s, min, max, out))
                return kf_errf(errstr, errstr_size, "bad %s '%s' (want %lld..%lld)", what, s,
                               (long long)min, (long long)max);
        return 0;
}

/* Broker ids are 1..broker_cnt; -1 means every broker (the mock supports it). */
static int parse_broker_id(const db_state_t *st, const char *s, int32_t *idp, char *errstr,
                           size_t errstr_size)
{
        int64_t v;
        if (parse_int(s, -1, st->broker_cnt, "broker id", &v, errstr, errstr_size) || v == 0)
                return kf_errf(errstr, errstr_size,
                               "bad broker id '%s' (want 1..%d, or -1 for all)", s, st->broker_cnt);
        *idp = (int32_t)v;
        return 0;
}

static int parse_apikey(const char *s, int16_t *keyp, char *errstr, size_t errstr_size)
{
        int64_t v;
        if (!kf_parse_i64(s, 0, INT16_MAX, &v)) {
                *keyp = (int16_t)v;
                return 0;
        }
        for (size_t i = 0; i < sizeof(api_names) / sizeof(api_names[0]); i++) {
                if (!strcasecmp(api_names[i].name, s)) {
                        *keyp = api_names[i].key;
                        return 0;
                }
        }
        return kf_errf(errstr, errstr_size, "bad API key '%s' (a number, or e.g. Produce, Fetch)",
                       s);
}

/* Accepts a number or a librdkafka error name such as NOT_COORDINATOR (with or
 * without the RD_KAFKA_RESP_ERR_ prefix).  Only broker-side codes (>= -1) make sense
 * here: they are sent to clients on the wire; librdkafka's internal negative codes
 * are not protocol errors. */
static int parse_errcode(const char *s, rd_kafka_resp_err_t *errp, char *errstr, size_t errstr_size)
{
        const struct rd_kafka_err_desc *descs;
        size_t cnt;
        int64_t v;

        if (!kf_parse_i64(s, -1, INT16_MAX, &v)) {
                *errp = (rd_kafka_resp_err_t)v;
                return 0;
        }
        if (!strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18))
                s += 18;
        rd_kafka_get_err_descs(&descs, &cnt);
        for (size_t i = 0; i < cnt; i++) {
                if (descs[i].name && descs[i].code >= -1 && !strcasecmp(descs[i].name, s)) {
                        *errp = descs[i].code;
                        return 0;
                }
        }
        return kf_errf(errstr, errstr_size,
                       "bad error code '%s' (a Kafka error number, or a name like "
                       "NOT_COORDINATOR)",
                       s);
}

static int mock_result(rd_kafka_resp_err_t err, char *errstr, size_t errstr_size)
{
        if (err)
                return kf_errf(errstr, errstr_size, "%s (%s)", rd_kafka_err2str(err),
                               rd_kafka_err2name(err));
        return 0;
}

static int cmd_ping(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        (void)st;
        (void)argc;
        (void)argv;
        (void)errstr;
        (void)errstr_size;
        return 0;
}

static int cmd_broker_updown(db_state_t *st, int argc, char **argv, char *errstr,
                             size_t errstr_size)
{
        int32_t id;
        (void)argc;
        if (parse_broker_id(st, argv[1], &id, errstr, errstr_size))
                return -1;
        if (!strcmp(argv[0], "broker-down"))
                return mock_result(rd_kafka_mock_broker_set_down(st->mcluster, id), errstr,
                                   errstr_size);
        return mock_result(rd_kafka_mock_broker_set_up(st->mcluster, id), errstr, errstr_size);
}

static int cmd_rtt(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        int32_t id;
        int64_t ms;
        (void)argc;
        if (parse_broker_id(st, argv[1], &id, errstr, errstr_size) ||
            parse_int(argv[2], 0, 3600 * 1000, "rtt", &ms, errstr, errstr_size))
                return -1;
        return mock_result(rd_kafka_mock_broker_set_rtt(st->mcluster, id, (int)ms), errstr,
                           errstr_size);
}

static int cmd_leader(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        int64_t part;
        int32_t id;
        (void)argc;
        if (parse_int(argv[2], 0, DB_MAX_PARTS - 1, "partition", &part, errstr, errstr_size) ||
            parse_broker_id(st, argv[3], &id, errstr, errstr_size) ||
            require_topic(st, argv[1], errstr, errstr_size))
                return -1;
        /* -1 leaves the partition leaderless, which clients see as LEADER_NOT_AVAILABLE. */
        return mock_result(
            rd_kafka_mock_partition_set_leader(st->mcluster, argv[1], (int32_t)part, id), errstr,
            errstr_size);
}

static int cmd_coordinator(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        const char *type;
        int32_t id;
        (void)argc;
        if (!strcmp(argv[1], "group"))
                type = "group";
        else if (!strcmp(argv[1], "txn") || !strcmp(argv[1], "transaction"))
                type = "transaction";
        else
                return kf_errf(errstr, errstr_size, "bad coordinator type '%s' (group or txn)",
                               argv[1]);
        if (parse_broker_id(st, argv[3], &id, errstr, errstr_size))
                return -1;
        if (id == -1)
                return kf_errf(errstr, errstr_size, "a coordinator is one broker, not -1");
        return mock_result(rd_kafka_mock_coordinator_set(st->mcluster, type, argv[2], id), errstr,
                           errstr_size);
}

static int cmd_request_errors(db_state_t *st, int argc, char **argv, char *errstr,
                              size_t errstr_size)
{
        rd_kafka_resp_err_t errs[DB_MAX_WORDS];
        int16_t key;
        if (parse_apikey(argv[1], &key, errstr, errstr_size))
                return -1;
        for (int i = 2; i < argc; i++)
                if (parse_errcode(argv[i], &errs[i - 2], errstr, errstr_size))
                        return -1;
        rd_kafka_mock_push_request_errors_array(st->mcluster, key, (size_t)(argc - 2), errs);
        return 0;
}

static int cmd_clear_errors(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        int16_t key;
        (void)argc;
        if (parse_apikey(argv[1], &key, errstr, errstr_size))
                return -1;
        rd_kafka_mock_clear_request_errors(st->mcluster, key);
        return 0;
}

static int cmd_topic_error(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        rd_kafka_resp_err_t err;
        (void)argc;
        if (parse_errcode(argv[2], &err, errstr, errstr_size) ||
            require_topic(st, argv[1], errstr, errstr_size))
                return -1;
        /* 0 (NO_ERROR) clears it again. */
        rd_kafka_mock_topic_set_error(st->mcluster, argv[1], err);
        return 0;
}

/* Which versions of a request the brokers announce in ApiVersions; -1 -1
 * announces none, as a broker too old for the request would (e.g.
 * InitProducerId: Kafka < 0.11, no idempotent producer).  Clients see it on
 * their next connection. */
static int cmd_api_version(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        int64_t lo, hi;
        int16_t key;
        (void)argc;
        if (parse_apikey(argv[1], &key, errstr, errstr_size) ||
            parse_int(argv[2], -1, INT16_MAX, "min version", &lo, errstr, errstr_size) ||
            parse_int(argv[3], -1, INT16_MAX, "max version", &hi, errstr, errstr_size))
                return -1;
        if ((lo < 0) != (hi < 0) || lo > hi)
                return kf_errf(errstr, errstr_size,
                               "bad version range %lld..%lld (MIN <= MAX, or -1 -1 for none)",
                               (long long)lo, (long long)hi);
        return mock_result(
            rd_kafka_mock_set_apiversion(st->mcluster, key, (int16_t)lo, (int16_t)hi), errstr,
            errstr_size);
}

static int create_topic(db_state_t *st, const char *name, int partitions, char *errstr,
                        size_t errstr_size)
{
        /* Like a real cluster's default: three copies when there are enough brokers. */
        int rf = st->broker_cnt < 3 ? st->broker_cnt : 3;
        if (!topic_name_valid(name))
                return kf_errf(errstr, errstr_size, "bad topic name '%s' (1..%d of [a-zA-Z0-9._-])",
                               name, DB_TOPIC_NAMELEN);
        if (mock_result(rd_kafka_mock_topic_create(st->mcluster, name, partitions, rf), errstr,
                        errstr_size))
                return -1;
        if (topic_remember(st, name))
                return kf_errf(errstr, errstr_size, "out of memory");
        kf_info("created topic %s: %d partitions, replication factor %d", name, partitions, rf);
        return 0;
}

static int cmd_create_topic(db_state_t *st, int argc, char **argv, char *errstr, size_t errstr_size)
{
        int64_t parts;
        (void)argc;
        if (parse_int(argv[2], 1, DB_MAX_PARTS, "partition count", &parts, errstr, errstr_size))
                return -1;
        return create_topic(st, argv[1], (int)parts, errstr, errstr_size);
}

static const db_cmd_t commands[] = {
    {"ping", 0, 0, "ping", cmd_ping},
    {"broker-down", 1, 1, "broker-down ID", cmd_broker_updown},
    {"broker-up", 1, 1, "broker-up ID", cmd_broker_updown},
    {"rtt", 2, 2, "rtt ID MS", cmd_rtt},
    {"leader", 3, 3, "leader TOPIC PARTITION BROKER_ID", cmd_leader},
    {"coordinator", 3, 3, "coordinator group|txn KEY BROKER_ID", cmd_coordinator},
    {"request-errors", 2, -1, "request-errors APIKEY ERRCODE [ERRCODE...]", cmd_request_errors},
    {"clear-errors", 1, 1, "clear-errors APIKEY", cmd_clear_errors},
    {"topic-error", 2, 2, "topic-error TOPIC ERRCODE", cmd_topic_error},
    {"create-topic", 2, 2, "create-topic NAME PARTITIONS", cmd_create_topic},
    {"api-version", 3, 3, "api-version APIKEY MIN MAX", cmd_api_version},
};

#define DB_NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* librdkafka 2.0.2's mock thread serves its command queue before it drains the
 * queue's wake-up pipe, so a command sent right after the previous one finished
 * can have its wake-up byte swallowed and sit until the thread's 1 s poll timeout
 * (commands piped back to back took ~1 s every other one).  Leaving the thread a
 * few milliseconds to finish draining makes each command take microseconds again. */
static void mock_settle(db_state_t *st)
{
        int64_t idle = kf_mono_us() - st->last_cmd_us;
        if (idle >= 0 && idle < DB_SETTLE_US)
                kf_sleep_us(DB_SETTLE_US - idle, NULL);
}

/* Runs one control line and writes exactly one reply line, so a test can pair
 * each command with its answer.  Blank lines and # comments get no reply. */
static void handle_line(db_state_t *st, char *line)
{
        char *argv[DB_MAX_WORDS + 1];
        char errstr[512] = "";
        char *save = NULL;
        const db_cmd_t *cmd = NULL;
        int argc = 0;
        char shown[128];
        int r = -1;
        char *w;

        /* Logged whole, so a test's log shows which broker went down when. */
        kf_strlcpy(shown, line, sizeof(shown));
        shown[strcspn(shown, "\r")] = '\0';
        for (w = strtok_r(line, " \t\r", &save); w; w = strtok_r(NULL, " \t\r", &save)) {
                if (argc == DB_MAX_WORDS) {
                        kf_errf(errstr, sizeof(errstr), "too many words (max %d)", DB_MAX_WORDS);
                        goto reply;
                }
                argv[argc++] = w;
        }
        argv[argc] = NULL;
        if (argc == 0 || argv[0][0] == '#')
                return;

        for (size_t i = 0; i < DB_NCOMMANDS; i++)
                if (!strcmp(commands[i].name, argv[0]))
                        cmd = &commands[i];
        if (!cmd) {
                int n = snprintf(errstr, sizeof(errstr), "unknown command '%.64s' (try:", argv[0]);
                for (size_t i = 0; i < DB_NCOMMANDS && n > 0 && (size_t)n < sizeof(errstr); i++)
                        n += snprintf(errstr + n, sizeof(errstr) - (size_t)n, "%s %s", i ? "," : "",
                                      commands[i].name);
                if (n > 0 && (size_t)n < sizeof(errstr))
                        snprintf(errstr + n, sizeof(errstr) - (size_t)n, ")");
                goto reply;
        }
        if (argc - 1 < cmd->min_args || (cmd->max_args >= 0 && argc - 1 > cmd->max_args)) {
                kf_errf(errstr, sizeof(errstr), "usage: %s", cmd->usage);
                goto reply;
        }
        mock_settle(st);
        r = cmd->fn(st, argc, argv, errstr, sizeof(errstr));
        st->last_cmd_us = kf_mono_us();

reply:
        if (r == 0) {
                kf_info("command '%s': ok", shown);
                fputs("ok\n", stdout);
        } else {
                kf_warn("command '%s': error: %s", shown, errstr);
                printf("error: %s\n", errstr);
        }
        /* The reader is a test waiting for this line: never leave it in a buffer. */
        fflush(stdout);
}

/* Reads whatever stdin has and runs the complete lines.  Returns 0 at EOF. */
static int read_commands(db_state_t *st, char *buf, size_t *lenp, int *overlongp)
{
        ssize_t n = read(STDIN_FILENO, buf + *lenp, DB_LINE_MAX - *lenp);
        char *nl;

        if (n < 0)
                return errno == EINTR || errno == EAGAIN ? 1 : 0;
        if (n == 0) {
                /* A last command without its newline still counts. */
                if (*lenp && !*overlongp) {
                        buf[*lenp] = '\0';
                        handle_line(st, buf);
                }
                *lenp = 0;
                return 0;
        }
        *lenp += (size_t)n;
        while ((nl = memchr(buf, '\n', *lenp))) {
                size_t linelen = (size_t)(nl - buf);
                *nl = '\0';
                if (*overlongp) {
                        /* The tail of a refused line: its reply was already sent. */
                        *overlongp = 0;
                } else {
                        handle_line(st, buf);
                }
                memmove(buf, nl + 1, *lenp - linelen - 1);
                *lenp -= linelen + 1;
        }
        if (*lenp == DB_LINE_MAX) {
                if (!*overlongp) {
                        printf("error: line longer than %d bytes\n", DB_LINE_MAX - 1);
                        fflush(stdout);
                }
                *overlongp = 1;
                *lenp = 0;
        }
        return 1;
}

static void usage(FILE *fp)
{
        fprintf(fp, "usage: kinfer-devbroker [--brokers N] [--partitions P] [--topic NAME]...\n"
                    "                        [--debug CONTEXTS] [--help]\n"
                    "\n"
                    "Runs librdkafka's in-memory mock Kafka cluster on 127.0.0.1 (random ports)\n"
                    "for development and tests; NOT for production.  Prints the bootstrap server\n"
                    "list as the first line on stdout, then reads control commands from stdin,\n"
                    "one per line, answering each with 'ok' or 'error: <reason>'.  Runs until\n"
                    "SIGINT/SIGTERM (stdin EOF does not stop it).\n"
                    "\n"
                    "  -b, --brokers N      brokers, ids 1..N (default 1)\n"
                    "  -p, --partitions P   partitions per topic (default 4)\n"
                    "  -t, --topic NAME     create this topic (repeatable; default kinfer.jobs\n"
                    "                       and kinfer.dlq)\n"
                    "  -d, --debug CTX      librdkafka debug contexts for the mock, e.g. mock\n"
                    "  -h, --help           this text\n"
                    "\n"
                    "Commands: ping | broker-down ID | broker-up ID | rtt ID MS |\n"
                    "  leader TOPIC PARTITION BROKER_ID | coordinator group|txn KEY BROKER_ID |\n"
                    "  request-errors APIKEY ERRCODE... | clear-errors APIKEY |\n"
                    "  topic-error TOPIC ERRCODE | create-topic NAME PARTITIONS\n"
                    "Broker ID -1 means all brokers.  Details: docs/devbroker.md\n");
}

int main(int argc, char **argv)
{
        static const struct option long_opts[] = {
            {"brokers", required_argument, NULL, 'b'}, {"partitions", required_argument, NULL, 'p'},
            {"topic", required_argument, NULL, 't'},   {"debug", required_argument, NULL, 'd'},
            {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
        };
        const char *topics[DB_MAX_TOPICS];
        const char *debug = NULL;
        int ntopics = 0;
        int64_t brokers = 1, partitions = 4;
        db_state_t st = {0};
        rd_kafka_conf_t *conf = NULL;
        rd_kafka_t *rk = NULL;
        char errstr[512];
        char line[DB_LINE_MAX];
        size_t linelen = 0;
        int overlong = 0;
        int stdin_open = 1;
        int rc = 1;
        struct sigaction sa;
        int opt;

        kf_log_init("kinfer-devbroker", KF_LOG_INFO);

        while ((opt = getopt_long(argc, argv, "b:p:t:d:h", long_opts, NULL)) != -1) {
                switch (opt) {
                case 'b':
                        if (kf_parse_i64(optarg, 1, 64, &brokers)) {
                                kf_error("--brokers: want 1..64, got '%s'", optarg);
                                return 2;
                        }
                        break;
                case 'p':
                        if (kf_parse_i64(optarg, 1, DB_MAX_PARTS, &partitions)) {
                                kf_error("--partitions: want 1..%d, got '%s'", DB_MAX_PARTS,
                                         optarg);
                                return 2;
                        }
                        break;
                case 't':
                        if (ntopics == DB_MAX_TOPICS) {
                                kf_error("--topic: at most %d topics", DB_MAX_TOPICS);
                                return 2;
                        }
                        if (!topic_name_valid(optarg)) {
                                kf_error("--topic: bad topic name '%s'", optarg);
                                return 2;
                        }
                        topics[ntopics++] = optarg;
                        break;
                case 'd':
                        debug = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                kf_error("unexpected argument '%s' (see --help)", argv[optind]);
                return 2;
        }
        if (ntopics == 0) {
                topics[ntopics++] = "kinfer.jobs";
                topics[ntopics++] = "kinfer.dlq";
        }
        if (debug)
                kf_log_threshold = KF_LOG_DEBUG;

        /* No SA_RESTART: the signal must cut the poll() below short. */
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        /* A test that stops reading our replies must not kill the cluster under the
         * other clients; the failed write is enough. */
        signal(SIGPIPE, SIG_IGN);

        /* The mock cluster needs an rd_kafka_t for its threads and logging; this
         * producer never produces and never connects anywhere. */
        conf = rd_kafka_conf_new();
        rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
        if (debug &&
            rd_kafka_conf_set(conf, "debug", debug, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
                kf_error("--debug: %s", errstr);
                rc = 2;
                goto cleanup;
        }
        if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr)))) {
                kf_error("rd_kafka_new: %s", errstr);
                goto cleanup;
        }
        conf = NULL; /* owned by rk now */

        st.broker_cnt = (int)brokers;
        if (!(st.mcluster = rd_kafka_mock_cluster_new(rk, st.broker_cnt))) {
                kf_error("could not create the mock cluster (%d brokers)", st.broker_cnt);
                goto cleanup;
        }
        for (int i = 0; i < ntopics; i++) {
                mock_settle(&st);
                if (create_topic(&st, topics[i], (int)partitions, errstr, sizeof(errstr))) {
                        kf_error("topic %s: %s", topics[i], errstr);
                        goto cleanup;
                }
                st.last_cmd_us = kf_mono_us();
        }

        kf_info("mock cluster up: %d broker(s), bootstrap %s", st.broker_cnt,
                rd_kafka_mock_cluster_bootstraps(st.mcluster));
        printf("%s\n", rd_kafka_mock_cluster_bootstraps(st.mcluster));
        fflush(stdout);

        while (!stop_requested) {
                struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
                /* After EOF there is nothing to wait for but the signal: stdin may be
                 * /dev/null when the broker runs as a plain background server. */
                int n = poll(&pfd, stdin_open ? 1 : 0, DB_TICK_MS);
                if (n < 0 && errno != EINTR) {
                        kf_error("poll: %s", strerror(errno));
                        goto cleanup;
                }
                if (n > 0 && stdin_open && !read_commands(&st, line, &linelen, &overlong)) {
                        kf_info("stdin closed; running until SIGINT/SIGTERM");
                        stdin_open = 0;
                }
        }
        kf_info("shutting down");
        rc = 0;

cleanup:
        if (st.mcluster)
                rd_kafka_mock_cluster_destroy(st.mcluster);
        if (rk)
                rd_kafka_destroy(rk);
        if (conf)
                rd_kafka_conf_destroy(conf);
        for (size_t i = 0; i < st.topic_cnt; i++)
                free(st.topics[i]);
        free(st.topics);
        return rc;
}
