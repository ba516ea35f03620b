/* fuzz_chain_map.c - libFuzzer target for kw_chain_map (worker/chain.c),
 * which turns a result message read from Kafka into the next stage's job:
 * arbitrary bytes in; besides "no crash, no leak, no huge allocation" every
 * input must give either -1 with a reason and no job, or a job that
 * job_decode reads back with the chained model, an id ending ":cls" and a
 * user (rc 0: its input; rc 1: a reason for its error result).
 * Built and run by `make fuzz` (corpus: the result decoder's). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/chain.h"
#include "job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "fuzz_chain_map: %s\n", #cond);                            \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *out = NULL, why[512] = "", err[256];
        size_t len = 0, idlen;
        job_t job;
        int rc = kw_chain_map(data, size, "cls", &out, &len, why, sizeof(why));

        CHECK(rc >= -1 && rc <= 1);
        if (rc == -1) {
                CHECK(out == NULL && why[0]);
                return 0;
        }
        CHECK(out != NULL && len > 0);
        CHECK(rc == 0 || why[0]);
        memset(&job, 0, sizeof(job));
        CHECK(job_decode(out, len, NULL, &job, err, sizeof(err)) == KF_OK || rc == 0);
        if (job.id[0]) {
                idlen = strlen(job.id);
                CHECK(idlen > 4 && !strcmp(job.id + idlen - 4, ":cls"));
                CHECK(!strcmp(job.model, "cls") && job.user[0]);
        }
        job_clear(&job);
        free(out);
        return 0;
}
