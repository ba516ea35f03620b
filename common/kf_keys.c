/* kf_keys.c - builds the Redis key names listed in kf_keys.h. */
#include "kf_keys.h"

#include <stdio.h>

int kf_key(char *buf, const char *prefix, const char *kind, const char *name)
{
        int n = name ? snprintf(buf, KF_KEY_MAX, "%s%s:%s", prefix, kind, name)
                     : snprintf(buf, KF_KEY_MAX, "%s%s", prefix, kind);
        return n < 0 || n >= KF_KEY_MAX ? -1 : n;
}
