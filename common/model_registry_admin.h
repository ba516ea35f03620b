/* model_registry_admin.h - changing the model registry (the `kinfer` CLI's
 * side; the layout, the types and the reads are model_registry_read.h).
 *
 * Every change is one Lua script (common/registry_*.lua, atomic: two
 * operators pushing at once get two versions; a refused change writes
 * nothing).  Like the reads, functions take a hiredis context the caller
 * owns, keep no state, and return an mreg_rc_t (MREG_IO: drop the
 * context). */
#ifndef KF_MODEL_REGISTRY_ADMIN_H
#define KF_MODEL_REGISTRY_ADMIN_H

#include "model_registry_read.h"

/* Stores blob as a new version of name: validated first (mreg_blob_decode;
 * an ensemble's members must exist, have its dims, and form no cycle).  The
 * registry assigns the version (*version).  With activate it also becomes
 * the active version.  force skips the check that ensembles following name
 * still fit its dims. */
mreg_rc_t mreg_push(redisContext *c, const char *prefix, const char *name, const void *blob,
                    size_t len, int activate, int force, uint32_t *version, char *errstr,
                    size_t errstr_size);

/* Makes version the active one; the one it replaces goes onto the history.
 * Refused if it would close a cycle, or (unless force) if an ensemble that
 * follows name expects other dims.  *previous (may be NULL) gets the
 * version that was active (0 = none). */
mreg_rc_t mreg_activate(redisContext *c, const char *prefix, const char *name, uint32_t version,
                        int force, uint32_t *previous, char *errstr, size_t errstr_size);

/* Makes the most recent earlier active version that still exists the
 * active one again, and forgets it from the history (so a second rollback
 * goes one further back).  *from and *to (may be NULL) get the versions. */
mreg_rc_t mreg_rollback(redisContext *c, const char *prefix, const char *name, int force,
                        uint32_t *from, uint32_t *to, char *errstr, size_t errstr_size);

/* Deletes one version.  Refused for the active version and for a version
 * an ensemble pins, unless force (then an active version leaves the model
 * with none).  Its number is never given out again. */
mreg_rc_t mreg_rm(redisContext *c, const char *prefix, const char *name, uint32_t version,
                  int force, char *errstr, size_t errstr_size);

/* Every model name, sorted; free with mreg_names_free. */
mreg_rc_t mreg_names(redisContext *c, const char *prefix, char ***names, size_t *n, char *errstr,
                     size_t errstr_size);
void mreg_names_free(char **names, size_t n);

#endif
