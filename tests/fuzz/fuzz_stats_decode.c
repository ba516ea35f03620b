/* fuzz_stats_decode.c - libFuzzer target for kw_lag_parse (worker/lag.c),
 * which reads the consumer lag from librdkafka's statistics JSON: arbitrary
 * bytes in; besides "no crash, no leak, no huge allocation", an error must
 * leave no entries, and every entry must be within bounds: at most max, a
 * partition >= 0, a lag >= 0, the topic asked for.  The work-remaining sum
 * over them must be finite and not negative.  Built and run by `make fuzz`. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/lag.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "fuzz_stats_decode: %s\n", #cond);                         \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

#define MAX 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        kw_lag_t lags[MAX];
        kw_costs_t *costs = kw_costs_new();
        char err[256] = "";
        size_t n = 99;
        double work;
        int rc =
            kw_lag_parse((const char *)data, size, "kinfer.jobs", lags, MAX, &n, err, sizeof(err));

        CHECK(costs);
        CHECK(n <= MAX);
        CHECK(rc == 0 || (rc == -1 && n == 0 && err[0]));
        for (size_t i = 0; i < n; i++) {
                CHECK(lags[i].partition >= 0);
                CHECK(lags[i].lag >= 0);
                CHECK(!strcmp(lags[i].topic, "kinfer.jobs"));
                kw_costs_observe(costs, lags[i].partition, (double)(i * 1000));
        }
        work = kw_costs_remaining(costs, lags, n);
        CHECK(isfinite(work) && work >= 0);
        kw_costs_free(costs);
        return 0;
}
