/* results_size.c - packs the too_large error result that stands for a
 * result message too large to deliver.  See results_size.h. */
#include "results_size.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "kf_log.h"
#include "kf_result.h"
#include "mp_pack.h"

int kw_rts_replace(kw_job_t *j, const char *why, int level, const char *worker_id)
{
        kf_result_t r;
        char errstr[128], msg[1024], source[320];
        msgpack_sbuffer sb;
        msgpack_packer pk;
        const char *model;
        int rc = 0, got;

        free(j->rt_alt);
        j->rt_alt = NULL;
        j->rt_alt_len = 0;
        /* The result's own fields, so that the replacement names the same
         * decision (for a duplicate: the first worker, source and times). */
        memset(&r, 0, sizeof(r));
        got = kf_result_decode(j->rt_value, j->rt_len, &r, errstr, sizeof(errstr)) == 0;
        if (!got) { /* never expected: our own value; fall back on the job */
                kf_result_clear(&r);
                memset(&r, 0, sizeof(r));
                r.ok = 1;
                snprintf(r.id, sizeof(r.id), "%s", j->job.id);
                snprintf(r.user, sizeof(r.user), "%s", j->job.user);
                snprintf(r.model, sizeof(r.model), "%s", j->job.model);
                snprintf(r.worker, sizeof(r.worker), "%s", worker_id ? worker_id : "");
                snprintf(source, sizeof(source), "%s/%d/%lld", rd_kafka_topic_name(j->rkm->rkt),
                         (int)j->rkm->partition, (long long)j->rkm->offset);
                snprintf(r.source, sizeof(r.source), "%s", source);
                r.enqueued = r.started = (uint64_t)j->started_ms;
                r.done = (uint64_t)j->done_ms;
        }
        model = r.model;
        snprintf(msg, sizeof(msg),
                 "the %s result message of %zu bytes (value %zu bytes, with its key and "
                 "headers) cannot be delivered to the result topic: over %s. %s%s",
                 r.ok ? "ok" : r.error, j->rt_big_size, j->rt_len, why,
                 j->job.stream_only
                     ? "The job asked for results: \"stream\", so no copy of its result is "
                       "kept; it was computed and charged once"
                     : "The result is in Redis under this user and id until its ttl (kinfer get); "
                       "it was charged once",
                 level == 3   ? ". This error result carries none of the job's headers and is "
                                "keyed by the job id: with the job message's headers and key it "
                                "was over the limit too"
                 : level == 2 ? ". This error result carries none of the job's headers: with "
                                "them it was over the limit too"
                              : "");
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc |= msgpack_pack_map(&pk, (size_t)(11 + (model[0] != '\0')));
        rc |= mp_pack_kv_u64(&pk, "v", got ? r.v : JOB_PROTOCOL_VERSION);
        rc |= mp_pack_kv_str(&pk, "id", r.id);
        rc |= mp_pack_kv_str(&pk, "user", r.user);
        if (model[0])
                rc |= mp_pack_kv_str(&pk, "model", model);
        rc |= mp_pack_kv_str(&pk, "worker", r.worker);
        rc |= mp_pack_kv_str(&pk, "source", r.source);
        rc |= mp_pack_kv_u64(&pk, "enqueued", r.enqueued);
        rc |= mp_pack_kv_u64(&pk, "started", r.started);
        rc |= mp_pack_kv_u64(&pk, "done", r.done);
        rc |= mp_pack_kv_str(&pk, "status", "error");
        rc |= mp_pack_kv_str(&pk, "error", "too_large");
        rc |= mp_pack_kv_str(&pk, "message", msg);
        kf_result_clear(&r);
        if (rc || !(j->rt_alt = malloc(sb.size))) {
                msgpack_sbuffer_destroy(&sb);
                return -1;
        }
        memcpy(j->rt_alt, sb.data, sb.size);
        j->rt_alt_len = sb.size;
        msgpack_sbuffer_destroy(&sb);
        return 0;
}

int kw_rts_escalate(kw_job_t *j, const char *topic, const char *why, const char *worker_id,
                    int input_key)
{
        if (j->rt_level >= (input_key ? 3 : 2))
                return -1;
        if (j->rt_level == 0)
                j->rt_big_size = j->rt_msg_size;
        if (kw_rts_replace(j, why, j->rt_level + 1, worker_id))
                return -1;
        j->rt_level++;
        kf_warn("result topic %s: result of job %s of user %s (%s/%d/%lld), %zu bytes, is over "
                "%s: a too_large error result is sent in its place%s",
                topic, j->job.id, j->job.user, rd_kafka_topic_name(j->rkm->rkt),
                (int)j->rkm->partition, (long long)j->rkm->offset, j->rt_msg_size, why,
                j->rt_level == 3   ? ", without the job's headers, keyed by the job id"
                : j->rt_level == 2 ? ", without the job's headers"
                                   : "");
        return 0;
}

void kw_rts_broker_limit(char *buf, size_t size, rd_kafka_resp_err_t err)
{
        /* The topic's configuration is not read (DescribeConfigs may be
         * refused by ACLs, and changes at run time): the refusal is the
         * brokers' answer. */
        snprintf(buf, size,
                 "the brokers' limit (%s: the topic's max.message.bytes or the brokers' "
                 "message.max.bytes)",
                 rd_kafka_err2name(err));
}

size_t kw_rts_hdrs_size(const rd_kafka_headers_t *hdrs)
{
        const char *name;
        const void *val;
        size_t size, total = 0;
        for (size_t i = 0; hdrs && !rd_kafka_header_get_all(hdrs, i, &name, &val, &size); i++)
                total += strlen(name) + size;
        return total;
}
