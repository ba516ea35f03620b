/* kf_stats.h - summary statistics of measured samples: sorting and
 * percentiles, as used for latency reports (kinfer bench).
 *
 * Percentiles use the nearest-rank definition: the p-th percentile of n
 * samples is the smallest sample such that at least p% of the samples are
 * less than or equal to it, so it is always one of the measured values
 * (p50 of {1,2,3,4} is 2, p100 is the maximum, p0 the minimum). */
#ifndef KF_STATS_H
#define KF_STATS_H

#include <stddef.h>

/* Sorts v ascending in place (NaN values are not allowed). */
void kf_stats_sort(double *v, size_t n);

/* The nearest-rank p-th percentile (0 <= p <= 100; values outside are
 * clamped) of v[0..n-1], which must be sorted ascending.  Returns 0.0 when
 * n is 0. */
double kf_stats_percentile(const double *v, size_t n, double p);

#endif
