/* kf_keys.h - the Redis key names of the wire contract (docs/protocol.md,
 * "Redis keys"): the one place that builds them.
 *
 * Every key starts with a configurable prefix (default "kinfer:"), so one
 * Redis can serve several kinfer deployments.  A user's keys carry the user
 * as a Redis Cluster hash tag right after the prefix:
 *   {prefix}{USER}:result:ID       string, job ID's result (msgpack map)
 *   {prefix}{USER}:inbox:NAME      list, ids of finished jobs
 *   {prefix}{USER}:charged:START   hash, charge records of one period
 *   {prefix}{USER}:usage           hash, lifetime counters
 *   {prefix}{USER}:usage:window:S  hash, one quota window's counters
 *   {prefix}{USER}:usage:models    hash, per-model counters (COUNTER:MODEL)
 *   {prefix}{USER}:quota           hash, the user's quota
 *   {prefix}{USER}:keys            hash, the user's signing keys (kf_sign.h)
 * and the pool's own keys have no brace after the prefix:
 *   {prefix}stats, {prefix}model:..., {prefix}model-meta:... (registry)
 *
 * Why no name can reach another user's key: users, ids, models and inbox
 * names are drawn from [A-Za-z0-9._:-] (no braces), so the user is exactly
 * what lies between the first '{' and the first '}'; what follows is a fixed
 * kind word and at most one variable part, always last.  The prefix is
 * restricted to the same set, so it can hold neither a brace (which would
 * move the hash tag) nor a glob character (SCAN patterns stay literal). */
#ifndef KF_KEYS_H
#define KF_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define KF_PREFIX_DEFAULT "kinfer:"
#define KF_PREFIX_MAX     64
#define KF_KEY_MAX        320 /* prefix + {64-char user} + kind + a 128-char id */

/* Kinds of per-user keys: the fixed words after "{USER}:".  The ones that
 * take a name end, with their ':', in a word no other kind begins with
 * ("result:", "inbox:", "charged:", "usage:window:"); the others never take
 * a name.  So a key names one (kind, name) pair. */
typedef enum {
        KF_K_RESULT,  /* + job id */
        KF_K_INBOX,   /* + inbox name */
        KF_K_CHARGED, /* + period start */
        KF_K_WINDOW,  /* + window start */
        KF_K_USAGE,   /* no name */
        KF_K_MODELS,  /* no name */
        KF_K_QUOTA,   /* no name */
        KF_K_KEYS,    /* no name: the user's signing keys, fields KEYID:attr */
} kf_kind_t;

/* 0 if prefix is 1..KF_PREFIX_MAX chars of [A-Za-z0-9._:-]; else -1 with
 * errstr saying why. */
int kf_prefix_valid(const char *prefix, char *errstr, size_t errstr_size);

/* Writes "{prefix}{kind}:{name}" (or "{prefix}{kind}" when name is NULL), a
 * pool-wide key, into buf of size KF_KEY_MAX.  Returns the length, or -1 if
 * it does not fit. */
int kf_key(char *buf, const char *prefix, const char *kind, const char *name);

/* Writes "{prefix}{kind}:{name}:{version}" (a model blob: "model"), the
 * same way.  The version is always last, so the name (which may hold ':')
 * is everything before the last ':': no (name, version) spells another's. */
int kf_key_version(char *buf, const char *prefix, const char *kind, const char *name,
                   uint32_t version);

/* Writes "{prefix}{" user "}:" kind's word, then ":" name for the kinds that
 * take one, into buf of size KF_KEY_MAX.  Returns the length, or -1 if user
 * or name is not a valid name, a name is missing or given where the kind
 * takes none, or it does not fit.  Every caller must check: a key that was
 * not built must not be used. */
int kf_user_key(char *buf, const char *prefix, const char *user, kf_kind_t kind, const char *name);

/* Writes "{prefix}{" user "}:", what every key of user starts with, for
 * worker/step.lua, which builds the keys whose names depend on the Redis
 * clock, the quota or a job (window, charge record, inbox) from it with
 * the kind words above.  Returns the length or -1 as kf_user_key. */
int kf_user_base(char *buf, const char *prefix, const char *user);

#endif
