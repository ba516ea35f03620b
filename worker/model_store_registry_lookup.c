/* model_store_registry_lookup.c - ms_store_get for the registry: the
 * loop thread's answer for a job's model, from the cache when it can, else
 * by a refresh or build of what it has never seen. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_util.h"
#include "model_store_registry_int.h"

/* ---- the loop thread ---- */

/* The answer for version 0 from e (locked). */
static model_t *msr_serving(msr_model_t *e, kf_err_t *err, char *errstr, size_t errstr_size)
{
        if (e->serving) {
                msr_ver_t *v = msr_ver_of(e, e->serving);
                if (v)
                        v->used_us = e->used_us;
                *err = KF_OK;
                return model_ref(e->serving);
        }
        *err = e->serving_err ? e->serving_err : KF_ERR_UNKNOWN_MODEL;
        kf_errf(errstr, errstr_size, "%s",
                e->serving_msg[0] ? e->serving_msg : "model not available");
        return NULL;
}

model_t *msr_get(msr_t *r, const char *name, uint32_t version, kf_err_t *err, char *errstr,
                 size_t errstr_size)
{
        char why[300], vers[128];
        mreg_version_t vd;
        msr_model_t *e;
        msr_ver_t *v, *nv = NULL;
        model_t *m = NULL;
        msr_path_t path = {0};
        msr_res_t res;
        int64_t now = kf_mono_us();

        for (int attempt = 0; attempt < 3; attempt++) {
                pthread_mutex_lock(&r->lock);
                e = msr_find(r, name);
                if (e) {
                        msr_touch(r, e, now);
                        if (!e->found && now - e->checked_us < MSR_ABSENT_RECHECK_US) {
                                pthread_mutex_unlock(&r->lock);
                                *err = KF_ERR_UNKNOWN_MODEL;
                                kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                                return NULL;
                        }
                }
                if (e && e->found && version == 0) {
                        m = msr_serving(e, err, errstr, errstr_size);
                        pthread_mutex_unlock(&r->lock);
                        return m;
                }
                if (e && e->found) {
                        v = msr_find_ver(e, version);
                        if (v) {
                                v->used_us = now;
                                if (v->model) {
                                        *err = KF_OK;
                                        m = model_ref(v->model);
                                } else {
                                        *err = KF_ERR_INTERNAL;
                                        kf_errf(errstr, errstr_size,
                                                "model '%s' version %u cannot be loaded: %s", name,
                                                version, v->errmsg);
                                }
                                pthread_mutex_unlock(&r->lock);
                                return m;
                        }
                        if (mreg_meta_version(&e->meta, version)) {
                                int ok = msr_vdup(&vd, mreg_meta_version(&e->meta, version)) == 0;
                                pthread_mutex_unlock(&r->lock);
                                if (!ok)
                                        break;
                                res = msr_build(r, &r->fg, name, &vd, &path, &nv, why, sizeof(why));
                                free(vd.members);
                                if (res == MSR_TRANSIENT)
                                        goto unavailable;
                                if (res == MSR_MISSING) {
                                        *err = KF_ERR_UNKNOWN_MODEL;
                                        kf_errf(errstr, errstr_size,
                                                "model '%s' has no version %u (just removed)", name,
                                                version);
                                        return NULL;
                                }
                                pthread_mutex_lock(&r->lock);
                                e = msr_find(r, name);
                                if (e && mreg_meta_version(&e->meta, version))
                                        nv = msr_insert_ver(r, e, nv);
                                nv->used_us = now;
                                if (nv->model) {
                                        *err = KF_OK;
                                        m = model_ref(nv->model);
                                } else {
                                        *err = KF_ERR_INTERNAL;
                                        kf_errf(errstr, errstr_size,
                                                "model '%s' version %u cannot be loaded: %s", name,
                                                version, nv->errmsg);
                                }
                                if (!e || msr_find_ver(e, version) != nv)
                                        msr_ver_free(nv);
                                pthread_mutex_unlock(&r->lock);
                                return m;
                        }
                        /* Not (yet) known here: newer than our metadata? */
                        /* A version at most `next` was removed (or never
                         * finished); beyond it, the metadata is read again,
                         * but not for every job pinning a version that
                         * does not exist. */
                        if (version <= e->meta.next || attempt > 0 ||
                            (now - e->fresh_us < MSR_FRESH_US && version >= e->fresh_v)) {
                                if (attempt > 0 && version > e->meta.next) {
                                        e->fresh_us = now;
                                        e->fresh_v = version;
                                }
                                mreg_meta_versions_str(&e->meta, vers, sizeof(vers));
                                pthread_mutex_unlock(&r->lock);
                                *err = KF_ERR_UNKNOWN_MODEL;
                                kf_errf(errstr, errstr_size,
                                        "model '%s' has no version %u (versions: %s)", name,
                                        version, vers);
                                return NULL;
                        }
                }
                pthread_mutex_unlock(&r->lock);
                if (attempt == 2)
                        break;
                /* First use of the name (or a version newer than we know). */
                if (msr_refresh(r, &r->fg, name, 0, &path, why, sizeof(why)) == MSR_TRANSIENT)
                        goto unavailable;
                pthread_mutex_lock(&r->lock);
                e = msr_find(r, name);
                if (e && !e->found) {
                        pthread_mutex_unlock(&r->lock);
                        *err = KF_ERR_UNKNOWN_MODEL;
                        kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                        return NULL;
                }
                pthread_mutex_unlock(&r->lock);
        }
        *err = KF_ERR_INTERNAL;
        kf_errf(errstr, errstr_size, "model '%s': out of memory or registry changing too fast",
                name);
        return NULL;
unavailable:
        /* A lost connection (dropped by whoever saw the I/O error) means
         * Redis is away: no verdict, ask again later.  Anything else that
         * failed with the connection up (malformed metadata, no memory) is
         * the job's answer: waiting would not change it. */
        *err = r->fg.c ? KF_ERR_INTERNAL : KF_OK;
        kf_errf(errstr, errstr_size, "model '%s' cannot be loaded: model registry unavailable: %s",
                name, why);
        return NULL;
}
