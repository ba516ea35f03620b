/* kf_stats.c - sorting and nearest-rank percentiles of measured samples
 * (latencies, throughputs); see kf_stats.h for the definitions. */
#include "kf_stats.h"

#include <math.h>
#include <stdlib.h>

static int kf_stats_cmp(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
}

void kf_stats_sort(double *v, size_t n)
{
        if (n > 1)
                qsort(v, n, sizeof(*v), kf_stats_cmp);
}

double kf_stats_percentile(const double *v, size_t n, double p)
{
        double rank;
        size_t idx;

        if (n == 0)
                return 0.0;
        if (!(p > 0.0)) /* also catches NaN */
                return v[0];
        if (p >= 100.0)
                return v[n - 1];
        /* rank = ceil(p/100 * n), 1-based.  In double, p/100 * n can land a
         * hair above an integer (7/100 * 100 is 7.000000000000001); shaving
         * a relative epsilon keeps p7 of 100 samples at rank 7, not 8. */
        rank = ceil(p / 100.0 * (double)n * (1.0 - 1e-12));
        idx = rank < 1.0 ? 0 : (size_t)rank - 1;
        return v[idx < n ? idx : n - 1];
}
