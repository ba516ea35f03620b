/* kf_keys.h - the Redis key names of the wire contract (docs/protocol.md).
 *
 * Every key starts with a configurable prefix (default "kinfer:"), so one
 * Redis can serve several kinfer deployments:
 *   {prefix}result:{id}   hash, the job's result
 *   {prefix}done:{id}     list, one element pushed when the result exists
 *   {prefix}usage:{user}  hash, the user's lifetime counters
 *   {prefix}stats         hash, pool-wide counters (e.g. undecodable messages) */
#ifndef KF_KEYS_H
#define KF_KEYS_H

#include <stddef.h>

#define KF_PREFIX_DEFAULT "kinfer:"
#define KF_KEY_MAX        256 /* prefix (<= 64) + kind + a 128-char id */

/* Writes "{prefix}{kind}:{name}" (or "{prefix}{kind}" when name is NULL)
 * into buf of size KF_KEY_MAX.  Returns the length, or -1 if it does not
 * fit (never for valid ids and a prefix of at most 64 chars). */
int kf_key(char *buf, const char *prefix, const char *kind, const char *name);

#endif
