/* kf_quota.h - the grammar of quota settings (docs/protocol.md, "Quotas"),
 * shared by the worker's pre-check and `kinfer quota`.  worker/step.lua
 * applies the same rule in Lua; the three must agree, or a value the CLI
 * accepts could mean "the default" to the step that decides.
 *
 * A value is a decimal integer: ASCII digits only, no sign, no spaces, no
 * exponent, within the field's range. */
#ifndef KF_QUOTA_H
#define KF_QUOTA_H

#include <stddef.h>
#include <stdint.h>

#define KF_QUOTA_COUNT_MAX  1000000000000000LL /* jobs, rows: 0..10^15 */
#define KF_QUOTA_WINDOW_MAX 31622400LL         /* window: 1..366 days, in seconds */

/* The fields of {prefix}{USER}:quota, in this order. */
typedef enum { KF_QUOTA_JOBS, KF_QUOTA_ROWS, KF_QUOTA_WINDOW, KF_QUOTA__CNT } kf_quota_field_t;

extern const char *const kf_quota_field_names[KF_QUOTA__CNT];

/* Parses s (len bytes, need not be terminated) as a value of field f.
 * Returns 0 and *out, or -1 with errstr naming the field, the value and the
 * rule. */
int kf_quota_parse(kf_quota_field_t f, const char *s, size_t len, int64_t *out, char *errstr,
                   size_t errstr_size);

#endif
