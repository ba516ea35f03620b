/* cmd_tail.c - `kinfer tail`: result messages of a result topic (the
 * worker's --results-topic) as JSON lines on stdout, for humans and shell
 * pipelines.  Reads as a consumer of a fresh group of its own that commits
 * nothing, read_committed (only results of committed transactions). */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_kafka.h"
#include "kf_util.h"
#include "kinfer.h"

#define O(f) offsetof(kc_conf_t, f)

static const kf_opt_t tail_opts[] = {
    /* Not KC_OPTS_CONN's --config: this file may hold only tail's own
     * options and "kafka" (a key it does not know is an error). */
    {"config", 0, NULL, KF_OPT_CONFIG, O(config_file), 0, 0, NULL, "FILE",
     "a JSON config file: these options' long names, \"kafka\": -X properties (secrets)"},
    {"brokers", 'b', "KINFER_BROKERS", KF_OPT_STR, O(brokers), 0, 0, "localhost:9092", "LIST",
     "Kafka bootstrap servers"},
    {"topic", 't', "KINFER_RESULTS_TOPIC", KF_OPT_STR, O(topic), 0, 0, "kinfer.results", "NAME",
     "the result topic"},
    {"from-beginning", 0, NULL, KF_OPT_BOOL, O(from_beginning), 0, 0, "0", NULL,
     "start at the oldest result kept (default: only results that arrive from now on)"},
    {"max", 'n', NULL, KF_OPT_INT, O(max_messages), 0, INT64_MAX, "0", "N",
     "exit after N results (0 = never)"},
    {"timeout", 0, NULL, KF_OPT_INT, O(timeout_s), 0, 86400 * 365, "0", "S",
     "exit after S seconds without a result (0 = never)"},
    {NULL},
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
        (void)sig;
        stop = 1;
}

int kc_cmd_tail(int argc, char **argv)
{
        kc_conf_t c = {0};
        rd_kafka_conf_t *kconf;
        rd_kafka_t *rk;
        rd_kafka_topic_partition_list_t *topics;
        rd_kafka_resp_err_t err;
        char group[128], errstr[512];
        int64_t n = 0, idle_since = kf_mono_us();
        int rc = KC_EXIT_OK;
        const char *defaults[] = {"group.id",
                                  group,
                                  "enable.auto.commit",
                                  "false",
                                  "auto.offset.reset",
                                  NULL,
                                  "isolation.level",
                                  "read_committed",
                                  "enable.partition.eof",
                                  "false",
                                  NULL};

        if (kc_parse(tail_opts, &c, 1, argc, argv,
                     "tail [--topic T] [--from-beginning] [--max N] [--timeout S]") < argc) {
                kc_err("tail takes no arguments");
                return KC_EXIT_USAGE;
        }
        /* a group of its own: never takes partitions from another reader */
        snprintf(group, sizeof(group), "kinfer-tail-%d-%llx", (int)getpid(),
                 (unsigned long long)kf_now_ms());
        defaults[5] = c.from_beginning ? "earliest" : "latest";
        if (!(kconf = kf_kafka_conf_new(c.brokers, defaults, &c.props, errstr, sizeof(errstr)))) {
                kc_err("tail: %s", errstr);
                kf_config_free(tail_opts, &c, &c.props);
                return KC_EXIT_USAGE;
        }
        if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, sizeof(errstr)))) {
                rd_kafka_conf_destroy(kconf);
                kc_err("tail: %s", errstr);
                kf_config_free(tail_opts, &c, &c.props);
                return KC_EXIT_CONN;
        }
        rd_kafka_poll_set_consumer(rk);
        topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, c.topic, RD_KAFKA_PARTITION_UA);
        err = rd_kafka_subscribe(rk, topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (err) {
                kc_err("tail: subscribing to %s: %s", c.topic, rd_kafka_err2str(err));
                rc = KC_EXIT_CONN;
                goto out;
        }
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        signal(SIGPIPE, SIG_IGN);
        while (!stop && (!c.max_messages || n < c.max_messages)) {
                rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, 200);
                json_t *o;
                if (!rkm) {
                        if (c.timeout_s && kf_mono_us() - idle_since > c.timeout_s * 1000000)
                                break;
                        continue;
                }
                if (rkm->err) {
                        kc_err("tail: %s", rd_kafka_message_errstr(rkm));
                        if (rkm->err == RD_KAFKA_RESP_ERR__FATAL ||
                            rkm->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
                                rc = KC_EXIT_CONN;
                                stop = 1;
                        }
                        rd_kafka_message_destroy(rkm);
                        continue;
                }
                idle_since = kf_mono_us();
                o = kc_result_value_json(rkm->payload, rkm->len);
                if (!strcmp(json_string_value(json_object_get(o, "status")), "unreadable"))
                        json_object_set_new(
                            o, "source",
                            json_sprintf("%s/%d/%lld", rd_kafka_topic_name(rkm->rkt),
                                         (int)rkm->partition, (long long)rkm->offset));
                kc_print_json(o);
                fflush(stdout);
                json_decref(o);
                rd_kafka_message_destroy(rkm);
                n++;
        }
out:
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        kf_config_free(tail_opts, &c, &c.props);
        return rc;
}
