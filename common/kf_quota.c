/* kf_quota.c - parses quota settings (kf_quota.h). */
#include "kf_quota.h"

#include "kf_util.h"

const char *const kf_quota_field_names[KF_QUOTA__CNT] = {"jobs", "rows", "window"};

int kf_quota_parse(kf_quota_field_t f, const char *s, size_t len, int64_t *out, char *errstr,
                   size_t errstr_size)
{
        int64_t lo = f == KF_QUOTA_WINDOW ? 1 : 0;
        int64_t hi = f == KF_QUOTA_WINDOW ? KF_QUOTA_WINDOW_MAX : KF_QUOTA_COUNT_MAX;
        int64_t v = 0;

        /* 16 digits hold every valid value; more cannot be in range and
         * could overflow the accumulation. */
        if (len == 0 || len > 16)
                goto bad;
        for (size_t i = 0; i < len; i++) {
                if (s[i] < '0' || s[i] > '9')
                        goto bad;
                v = v * 10 + (s[i] - '0');
        }
        if (v < lo || v > hi)
                goto bad;
        *out = v;
        return 0;
bad:
        return kf_errf(errstr, errstr_size,
                       "quota %s \"%.*s\" is not a decimal integer in %lld..%lld (digits only)",
                       kf_quota_field_names[f], (int)(len > 40 ? 40 : len), s, (long long)lo,
                       (long long)hi);
}
