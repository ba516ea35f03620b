/* fuzz_result_decode.c - libFuzzer target for kf_result_decode
 * (common/kf_result.c), which reads result values from Redis for the CLI:
 * arbitrary bytes in; besides "no crash, no leak, no huge allocation" every
 * input must give either an error with a message, or a result whose
 * strings are terminated within their buffers, whose id and user are set,
 * and whose output holds exactly rows x cols values (ok) or nothing (error).
 * Built and run by `make fuzz`. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_result.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "fuzz_result_decode: %s: ", #cond);                        \
                        fprintf(stderr, __VA_ARGS__);                                              \
                        fputc('\n', stderr);                                                       \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

#define TERMINATED(field) (memchr((field), '\0', sizeof(field)) != NULL)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        kf_result_t r;
        char err[256] = "";
        volatile float sink = 0;

        if (kf_result_decode(data, size, &r, err, sizeof(err))) {
                CHECK(err[0] != '\0', "error without a message");
                kf_result_clear(&r);
                return 0;
        }
        CHECK(TERMINATED(r.id) && TERMINATED(r.user) && TERMINATED(r.model) &&
                  TERMINATED(r.worker) && TERMINATED(r.source) && TERMINATED(r.error) &&
                  TERMINATED(r.message),
              "an unterminated string");
        CHECK(r.id[0] && r.user[0], "a result without id or user");
        if (r.ok) {
                CHECK(r.output != NULL, "ok without output");
                /* every value readable: ASan catches a short buffer */
                for (size_t i = 0; i < (size_t)r.rows * r.cols; i++)
                        sink += r.output[i];
        } else {
                CHECK(r.output == NULL, "error result with output");
                CHECK(r.error[0] != '\0', "error result without a code");
        }
        (void)sink;
        kf_result_clear(&r);
        return 0;
}
