/* model_store.h - where the worker finds models: a directory, loaded lazily.
 *
 * Layout: DIR/NAME.kmodel (version 1) or DIR/NAME/VERSION.kmodel (VERSION a
 * positive integer).  A job without a version gets the highest version on
 * disk.  A model is loaded on first use and kept; a name not found is looked
 * up again on the next job, so models dropped into the directory appear
 * without a restart.  Not thread-safe: owned by the worker's loop thread;
 * the models it returns are reference-counted and may travel elsewhere.
 * (The Redis model registry will implement this same interface.) */
#ifndef KW_MODEL_STORE_H
#define KW_MODEL_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kf_error.h"
#include "model.h"

typedef struct ms_store_s ms_store_t;

/* dir may be NULL: then every lookup fails with unknown_model. */
ms_store_t *ms_store_new(const char *dir);
void ms_store_destroy(ms_store_t *ms); /* accepts NULL */

/* Returns a new reference to the model (caller unrefs), or NULL with *err =
 * KF_ERR_UNKNOWN_MODEL (no such model or version; the message lists the
 * versions that exist) or KF_ERR_INTERNAL (the file exists but cannot be
 * loaded; the message says why, and it is logged). */
model_t *ms_store_get(ms_store_t *ms, const char *name, uint32_t version, kf_err_t *err,
                      char *errstr, size_t errstr_size);

#endif
