/* cmd_submit.c - `kinfer submit`: encodes jobs, produces them with an
 * idempotent producer, checks every delivery report, optionally waits. */
#include <openssl/crypto.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_kafka.h"
#include "kf_util.h"
#include "kinfer.h"
#include "signer.h"

#define O(f) offsetof(kc_conf_t, f)

static const kf_opt_t submit_opts[] = {
    KC_OPTS_CONN,
    {"model", 'm', NULL, KF_OPT_STR, O(model), 0, 0, NULL, "NAME", "model to run (required)"},
    {"user", 'u', "KINFER_USER", KF_OPT_STR, O(user), 0, 0, NULL, "ID",
     "user the jobs are charged to (required)"},
    {"version", 'V', NULL, KF_OPT_INT, O(version), 0, UINT32_MAX, "0", "N",
     "pin a model version (0 = the active one)"},
    {"output", 'o', NULL, KF_OPT_STR, O(output), 0, 0, "raw", "MODE",
     "raw, softmax, argmax or topk"},
    {"k", 'k', NULL, KF_OPT_INT, O(k), 0, 1 << 20, "0", "K",
     "with --output topk: how many of each row's largest values"},
    {"ttl", 0, NULL, KF_OPT_INT, O(ttl), 1, JOB_TTL_MAX, "86400", "S", "result lifetime"},
    {"deadline-ms", 0, NULL, KF_OPT_INT, O(deadline_ms), 0, 1LL << 40, "0", "MS",
     "expire jobs not started within MS ms of submission (0 = never)"},
    {"file", 'f', NULL, KF_OPT_STR, O(file), 0, 0, NULL, "PATH",
     "read jobs from a JSON-lines or CSV file ('-' = stdin)"},
    {"format", 0, NULL, KF_OPT_STR, O(format), 0, 0, NULL, "FMT",
     "jsonl or csv (default: from the file name)"},
    {"rows-per-job", 0, NULL, KF_OPT_INT, O(rows_per_job), 1, 1 << 24, "1", "N",
     "CSV: lines per job"},
    {"encoding", 0, NULL, KF_OPT_STR, O(encoding), 0, 0, "f32", "ENC",
     "input encoding: f32 (binary) or rows (msgpack arrays)"},
    {"id", 0, NULL, KF_OPT_STR, O(id), 0, 0, NULL, "ID", "job id (single job only)"},
    {"id-prefix", 0, NULL, KF_OPT_STR, O(id_prefix), 0, 0, NULL, "STR",
     "prefix of generated job ids (default: the user)"},
    {"inbox", 0, NULL, KF_OPT_STR, O(inbox), 0, 0, NULL, "NAME",
     "the inbox the jobs announce themselves on (default: a new one per run, which "
     "`kinfer wait` finds from the ids)"},
    {"wait", 'w', NULL, KF_OPT_BOOL, O(wait), 0, 0, "0", NULL,
     "wait for the results and print them as JSON lines"},
    {"timeout", 0, NULL, KF_OPT_INT, O(timeout_s), 0, 30LL * 86400, "60", "S",
     "--wait: give up after S seconds in all (0 = never)"},
    {"key-file", 0, "KINFER_KEY_FILE", KF_OPT_STR, O(key_file), 0, 0, NULL, "FILE",
     "sign every job with this key file (from `kinfer key create`; its user must be --user)"},
    {NULL},
};

typedef struct submit_s {
        kc_conf_t *conf;
        rd_kafka_t *rk;
        job_encoding_t enc;
        job_output_t output;
        char run[17]; /* random part of generated ids */
        char inbox[JOB_INBOX_MAX + 1];
        char **ids;  /* every job's id, in submission order */
        int *failed; /* per job: delivery failed */
        size_t n, cap;
        size_t delivered, nfailed;
        int refused;        /* Kafka refused the security settings (kf_kafka_refusal) */
        kc_signer_t signer; /* with --key-file */
        int sign;
} submit_t;

/* Client-wide errors, served by rd_kafka_poll/flush on this thread.  Kafka
 * refusing the security settings (kf_kafka_refusal) before any job was
 * acknowledged cannot get better by waiting out message.timeout.ms: say
 * why and give up (nothing was sent, so nothing is lost or doubled).  Other
 * errors are librdkafka's to retry, as when it logged them itself. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
        submit_t *s = opaque;
        const char *check = NULL, *what = kf_kafka_refusal(err, reason, &check);
        (void)rk;
        if (!s->delivered && what) {
                if (!s->refused)
                        kc_err("submit: Kafka %s: %s; check %s (-X or the config file's \"kafka\")",
                               what, reason, check);
                s->refused = 1;
                return;
        }
        kc_err("kafka: %s: %s", rd_kafka_err2name(err), reason);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
        submit_t *s = opaque;
        size_t idx = (size_t)(uintptr_t)rkm->_private;
        (void)rk;
        if (rkm->err) {
                s->failed[idx] = 1;
                s->nfailed++;
                kc_err("job %s was not delivered: %s", s->ids[idx], rd_kafka_err2str(rkm->err));
        } else {
                s->delivered++;
        }
}

/* Encodes one job and hands it to librdkafka; returns 0 or -1. */
static int submit_one(const kc_matrix_t *m, void *opaque)
{
        submit_t *s = opaque;
        kc_conf_t *c = s->conf;
        job_t job;
        char id[JOB_ID_MAX + 1], err[512];
        char *buf;
        size_t len;
        rd_kafka_resp_err_t kerr;
        rd_kafka_headers_t *hdrs = NULL;

        if (c->id && s->n > 0) {
                kc_err("--id names a single job, but the input holds more than one");
                return -1;
        }
        if (c->id)
                kf_strlcpy(id, c->id, sizeof(id));
        else
                snprintf(id, sizeof(id), "%.64s-%s-%zu", c->id_prefix ? c->id_prefix : c->user,
                         s->run, s->n + 1);
        if (s->n == s->cap) {
                size_t nc = s->cap ? s->cap * 2 : 256;
                char **ni = realloc(s->ids, nc * sizeof(*ni));
                int *nf;
                if (!ni)
                        return -1;
                s->ids = ni;
                if (!(nf = realloc(s->failed, nc * sizeof(*nf))))
                        return -1;
                s->failed = nf;
                s->cap = nc;
        }

        memset(&job, 0, sizeof(job));
        kf_strlcpy(job.id, id, sizeof(job.id));
        kf_strlcpy(job.user, c->user, sizeof(job.user));
        kf_strlcpy(job.model, c->model, sizeof(job.model));
        job.version = (uint32_t)c->version;
        job.rows = m->rows;
        job.cols = m->cols;
        job.input = m->data; /* borrowed: not cleared below */
        job.output = s->output;
        job.k = (uint32_t)c->k;
        job.ttl_s = (uint32_t)c->ttl;
        job.deadline_ms = c->deadline_ms ? kf_now_ms() + c->deadline_ms : 0;
        kf_strlcpy(job.inbox, s->inbox, sizeof(job.inbox));
        if (job_encode(&job, s->enc, &buf, &len, err, sizeof(err))) {
                kc_err("job %zu: %s", s->n + 1, err);
                return -1;
        }
        /* the signature covers exactly these bytes, the message value */
        if (s->sign && !(hdrs = kc_signer_headers(&s->signer, buf, len, err, sizeof(err)))) {
                kc_err("job %s: cannot sign: %s", id, err);
                free(buf);
                return -1;
        }
        s->ids[s->n] = strdup(id);
        s->failed[s->n] = 0;
        for (;;) {
                kerr = rd_kafka_producev(
                    s->rk, RD_KAFKA_V_TOPIC(c->topic), RD_KAFKA_V_KEY(c->user, strlen(c->user)),
                    RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                    RD_KAFKA_V_HEADERS(hdrs), /* NULL: none; taken on success */
                    RD_KAFKA_V_OPAQUE((void *)(uintptr_t)s->n), RD_KAFKA_V_END);
                if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                        break;
                rd_kafka_poll(s->rk, 100); /* let deliveries drain the queue */
        }
        if (kerr) {
                kc_err("job %s: cannot produce: %s", id, rd_kafka_err2str(kerr));
                if (hdrs)
                        rd_kafka_headers_destroy(hdrs);
                free(buf);
                free(s->ids[s->n]);
                return -1;
        }
        s->n++;
        rd_kafka_poll(s->rk, 0);
        return 0;
}

int kc_cmd_submit(int argc, char **argv)
{
        static const char *const pdefaults[] = {"enable.idempotence",
                                                "true", /* no duplicates or reordering on retries */
                                                "acks",
                                                "all",
                                                "linger.ms",
                                                "5",
                                                "message.timeout.ms",
                                                "30000",
                                                NULL};
        kc_conf_t c = {0};
        submit_t s = {0};
        rd_kafka_conf_t *kconf;
        char err[512];
        int first, rc = KC_EXIT_OK;

        first = kc_parse(submit_opts, &c, 1, argc, argv,
                         "submit --model NAME --user ID [OPTION]... [ROW]...\n\n"
                         "Submits one job whose rows are the arguments (\"1,2,3\" \"4,5,6\"; put "
                         "-- before\nrows that start with '-'), or one job per line of --file.  "
                         "Prints job ids,\nor with --wait the results as JSON lines.");
        s.conf = &c;
        if (!c.model || !c.user) {
                kc_err("submit: --model and --user are required (see kinfer submit --help)");
                rc = KC_EXIT_USAGE;
                goto out;
        }
        if (!job_name_valid(c.user, strlen(c.user), JOB_USER_MAX) ||
            !job_name_valid(c.model, strlen(c.model), JOB_MODEL_MAX)) {
                kc_err("submit: --user (1..64) and --model (1..64) must be chars of "
                       "[A-Za-z0-9._:-]");
                rc = KC_EXIT_USAGE;
                goto out;
        }
        if (!strcmp(c.output, "raw"))
                s.output = JOB_OUTPUT_RAW;
        else if (!strcmp(c.output, "softmax"))
                s.output = JOB_OUTPUT_SOFTMAX;
        else if (!strcmp(c.output, "argmax"))
                s.output = JOB_OUTPUT_ARGMAX;
        else if (!strcmp(c.output, "topk"))
                s.output = JOB_OUTPUT_TOPK;
        else {
                kc_err("submit: --output '%s': expected raw, softmax, argmax or topk", c.output);
                rc = KC_EXIT_USAGE;
                goto out;
        }
        if ((s.output == JOB_OUTPUT_TOPK) != (c.k != 0)) {
                kc_err("submit: --output topk needs --k, and --k goes with --output topk only");
                rc = KC_EXIT_USAGE;
                goto out;
        }
        if (!strcmp(c.encoding, "f32"))
                s.enc = JOB_ENC_F32;
        else if (!strcmp(c.encoding, "rows"))
                s.enc = JOB_ENC_ROWS;
        else {
                kc_err("submit: --encoding '%s': expected f32 or rows", c.encoding);
                rc = KC_EXIT_USAGE;
                goto out;
        }
        if ((c.file != NULL) == (first < argc)) {
                kc_err("submit: give input rows as arguments or --file, not %s",
                       c.file ? "both" : "neither");
                rc = KC_EXIT_USAGE;
                goto out;
        }
        if (c.key_file) {
                if (kc_signer_load(c.key_file, &s.signer, err, sizeof(err))) {
                        kc_err("submit: %s", err);
                        rc = KC_EXIT_USAGE;
                        goto out;
                }
                if (strcmp(s.signer.user, c.user)) {
                        kc_err("submit: the key file is user %s's, the jobs are --user %s's: a "
                               "worker would refuse them",
                               s.signer.user, c.user);
                        rc = KC_EXIT_USAGE;
                        goto out;
                }
                s.sign = 1;
        }
        kf_random_hex(s.run, 8);
        if (c.inbox && !job_name_valid(c.inbox, strlen(c.inbox), JOB_INBOX_MAX)) {
                kc_err("submit: --inbox must be 1..64 chars of [A-Za-z0-9._:-]");
                rc = KC_EXIT_USAGE;
                goto out;
        }
        if (c.inbox)
                kf_strlcpy(s.inbox, c.inbox, sizeof(s.inbox));
        else
                kc_inbox_name(s.run, s.inbox);

        if (!(kconf = kf_kafka_conf_new(c.brokers, pdefaults, &c.props, err, sizeof(err)))) {
                kc_err("%s", err);
                rc = KC_EXIT_USAGE;
                goto out;
        }
        rd_kafka_conf_set_dr_msg_cb(kconf, dr_cb);
        rd_kafka_conf_set_error_cb(kconf, error_cb);
        rd_kafka_conf_set_opaque(kconf, &s);
        if (!(s.rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, err, sizeof(err)))) {
                rd_kafka_conf_destroy(kconf);
                kc_err("%s", err);
                rc = KC_EXIT_CONN;
                goto out;
        }

        if (c.file) {
                if (kc_read_jobs(c.file, c.format, c.rows_per_job, submit_one, &s, err,
                                 sizeof(err))) {
                        kc_err("submit: %s", err);
                        rc = KC_EXIT_FAIL;
                }
        } else {
                kc_matrix_t m;
                if (kc_rows_from_args(argc - first, argv + first, &m, err, sizeof(err))) {
                        kc_err("submit: %s", err);
                        rc = KC_EXIT_USAGE;
                } else {
                        if (submit_one(&m, &s))
                                rc = KC_EXIT_FAIL;
                        free(m.data);
                }
        }
        /* Every job handed over must be acknowledged by the broker or
         * reported failed: wait for all delivery reports. */
        while (rd_kafka_outq_len(s.rk) > 0) {
                rd_kafka_flush(s.rk, 1000);
                if (s.refused) /* each then has a delivery report: failed */
                        rd_kafka_purge(s.rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        }
        if (s.nfailed) {
                kc_err("submit: %zu of %zu jobs were not delivered", s.nfailed, s.n);
                rc = KC_EXIT_FAIL;
        }

        if (c.wait) {
                redisContext *rc_redis = kc_redis(&c);
                char **ids = malloc(sizeof(*ids) * (s.n + 1));
                size_t n = 0;
                kc_printer_t wt = {ids, KC_EXIT_OK};
                if (!ids) {
                        kc_err("out of memory");
                        rc = KC_EXIT_FAIL;
                } else {
                        for (size_t i = 0; i < s.n; i++)
                                if (!s.failed[i])
                                        ids[n++] = s.ids[i];
                        kc_results_wait(rc_redis, &c, c.user, s.inbox, ids, n, c.timeout_s,
                                        kc_print_result, &wt);
                        if (wt.rc)
                                rc = wt.rc;
                }
                free(ids);
                redisFree(rc_redis);
        } else {
                for (size_t i = 0; i < s.n; i++)
                        if (!s.failed[i])
                                puts(s.ids[i]);
        }
        fflush(stdout);
out:
        if (s.rk)
                rd_kafka_destroy(s.rk);
        for (size_t i = 0; i < s.n; i++)
                free(s.ids[i]);
        free(s.ids);
        free(s.failed);
        OPENSSL_cleanse(&s.signer, sizeof(s.signer));
        kf_config_free(submit_opts, &c, &c.props);
        return rc;
}
