/* model_store_dir.h - the model store's directory backend (private to
 * model_store.c, which dispatches to it; see model_store.h for the
 * contract).  Loop thread only: no locking. */
#ifndef KW_MODEL_STORE_DIR_H
#define KW_MODEL_STORE_DIR_H

#include <stddef.h>
#include <stdint.h>

#include "kf_error.h"
#include "model.h"
#include "model_store.h"

typedef struct msd_s msd_t;

/* dir may be NULL: then every lookup fails with unknown_model.  NULL only
 * when out of memory. */
msd_t *msd_new(const char *dir);
void msd_destroy(msd_t *d); /* accepts NULL */

void msd_set_budget(msd_t *d, uint64_t bytes);
void msd_stats(msd_t *d, ms_store_stats_t *st);

/* ms_store_get for a directory. */
model_t *msd_get(msd_t *d, const char *name, uint32_t version, kf_err_t *err, char *errstr,
                 size_t errstr_size);

#endif
