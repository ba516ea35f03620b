/* chain.c - a result message mapped to the next stage's job (chain.h). */
#include "chain.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "kf_result.h"
#include "kf_util.h"

int kw_chain_map(const void *val, size_t len, const char *model, char **out, size_t *outlen,
                 char *why, size_t why_size)
{
        kf_result_t r;
        job_t job;
        char err[512];
        float zero = 0;
        int rc = -1;

        *out = NULL;
        *outlen = 0;
        memset(&r, 0, sizeof(r));
        memset(&job, 0, sizeof(job));
        if (!val || kf_result_decode(val, len, &r, err, sizeof(err))) {
                kf_errf(why, why_size, "chained: not a kinfer result message: %s",
                        val ? err : "no value");
                goto out;
        }
        if (!r.user[0] || !r.id[0]) {
                kf_errf(why, why_size, "chained: the result message has no id or user");
                goto out;
        }
        if (strlen(r.id) + 1 + strlen(model) > JOB_ID_MAX) {
                kf_errf(why, why_size, "chained: id '%s:%s' of user %s would be over %d characters",
                        r.id, model, r.user, JOB_ID_MAX);
                goto out;
        }
        /* fits: checked above */
        memcpy(job.id, r.id, strlen(r.id));
        job.id[strlen(r.id)] = ':';
        memcpy(job.id + strlen(r.id) + 1, model, strlen(model) + 1);
        kf_strlcpy(job.user, r.user, sizeof(job.user));
        kf_strlcpy(job.model, model, sizeof(job.model));
        job.ttl_s = JOB_TTL_DEFAULT;
        if (r.ok && r.output && r.rows && r.cols) {
                job.input = r.output;
                job.rows = r.rows;
                job.cols = r.cols;
                rc = 0;
        } else {
                job.input = &zero;
                job.rows = job.cols = 1;
                if (r.ok)
                        kf_errf(why, why_size, "chained: upstream result %s has an empty output",
                                r.id);
                else
                        kf_errf(why, why_size,
                                "chained: upstream result %s of model '%s' is an error (%s: %s)",
                                r.id, r.model, r.error, r.message);
                rc = 1;
        }
        if (job_encode(&job, JOB_ENC_F32, out, outlen, err, sizeof(err))) {
                kf_errf(why, why_size, "chained: %s", err);
                rc = -1;
        }
out:
        kf_result_clear(&r);
        return rc;
}
