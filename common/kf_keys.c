/* kf_keys.c - builds the Redis key names listed in kf_keys.h. */
#include "kf_keys.h"

#include <stdio.h>
#include <string.h>

#include "job.h"
#include "kf_util.h"

int kf_prefix_valid(const char *prefix, char *errstr, size_t errstr_size)
{
        size_t n = strnlen(prefix, KF_PREFIX_MAX + 1);

        if (!job_name_valid(prefix, n, KF_PREFIX_MAX))
                return kf_errf(errstr, errstr_size,
                               "key prefix must be 1..%d chars of [A-Za-z0-9._:-] (no braces: "
                               "they would move the users' hash tags), got %zu%s chars",
                               KF_PREFIX_MAX, n, n > KF_PREFIX_MAX ? "+" : "");
        return 0;
}

int kf_key(char *buf, const char *prefix, const char *kind, const char *name)
{
        int n = name ? snprintf(buf, KF_KEY_MAX, "%s%s:%s", prefix, kind, name)
                     : snprintf(buf, KF_KEY_MAX, "%s%s", prefix, kind);
        return n < 0 || n >= KF_KEY_MAX ? -1 : n;
}

int kf_key_version(char *buf, const char *prefix, const char *kind, const char *name,
                   uint32_t version)
{
        int n = snprintf(buf, KF_KEY_MAX, "%s%s:%s:%u", prefix, kind, name, version);
        return n < 0 || n >= KF_KEY_MAX ? -1 : n;
}

static const struct {
        const char *word;
        int named;
} kinds[] = {
    [KF_K_RESULT] = {"result", 1},   [KF_K_INBOX] = {"inbox", 1},
    [KF_K_CHARGED] = {"charged", 1}, [KF_K_WINDOW] = {"usage:window", 1},
    [KF_K_USAGE] = {"usage", 0},     [KF_K_MODELS] = {"usage:models", 0},
    [KF_K_QUOTA] = {"quota", 0},     [KF_K_KEYS] = {"keys", 0},
};

int kf_user_key(char *buf, const char *prefix, const char *user, kf_kind_t kind, const char *name)
{
        int n;

        if ((unsigned)kind >= sizeof(kinds) / sizeof(kinds[0]) || !kinds[kind].named != !name)
                return -1;
        /* The longest name of any kind: a job id. */
        if (!job_name_valid(user, strnlen(user, JOB_USER_MAX + 1), JOB_USER_MAX) ||
            (name && !job_name_valid(name, strnlen(name, JOB_ID_MAX + 1), JOB_ID_MAX)))
                return -1;
        n = name ? snprintf(buf, KF_KEY_MAX, "%s{%s}:%s:%s", prefix, user, kinds[kind].word, name)
                 : snprintf(buf, KF_KEY_MAX, "%s{%s}:%s", prefix, user, kinds[kind].word);
        return n < 0 || n >= KF_KEY_MAX ? -1 : n;
}

int kf_user_base(char *buf, const char *prefix, const char *user)
{
        int n;
        if (!job_name_valid(user, strnlen(user, JOB_USER_MAX + 1), JOB_USER_MAX))
                return -1;
        n = snprintf(buf, KF_KEY_MAX, "%s{%s}:", prefix, user);
        return n < 0 || n >= KF_KEY_MAX ? -1 : n;
}
