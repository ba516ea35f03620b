/* model_store_registry_build.c - turning registry entries into models:
 * a refresh reads a name's metadata and builds its active version; a build
 * fetches one version's blob, verifies it against the registry's SHA-256,
 * decodes it and, for an ensemble, resolves its members (building them too).
 * Runs on either thread (the loop thread for first use, the reloader for
 * changes), each with its own connection; the lock is taken only around
 * cache reads and swaps, never across Redis I/O or decoding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_log_limit.h"
#include "kf_util.h"
#include "model_store_registry_int.h"

/* Resolves one member of an ensemble: its serving model (no version) or
 * that version, built if needed.  On MSR_BUILT *out holds a new reference
 * and deps has what the member's build followed. */
static msr_res_t msr_member(msr_t *r, msr_conn_t *cn, const model_member_spec_t *ms,
                            msr_path_t *path, model_t **out, msr_deps_t *deps, char *errstr,
                            size_t errstr_size)
{
        mreg_version_t vd;
        msr_model_t *e;
        msr_ver_t *v, *nv = NULL;
        msr_res_t res;
        char vers[128];

        *out = NULL;
        for (int attempt = 0; attempt < 2; attempt++) {
                pthread_mutex_lock(&r->lock);
                e = msr_find(r, ms->model);
                if (!e) {
                        pthread_mutex_unlock(&r->lock);
                        if (attempt)
                                break;
                        res = msr_refresh(r, cn, ms->model, 0, path, errstr, errstr_size);
                        if (res == MSR_TRANSIENT)
                                return res;
                        continue;
                }
                if (!e->found) {
                        pthread_mutex_unlock(&r->lock);
                        kf_errf(errstr, errstr_size, "unknown model '%s'", ms->model);
                        return MSR_REFUSED;
                }
                if (ms->version == 0) {
                        if (!e->serving) {
                                kf_errf(errstr, errstr_size, "%s", e->serving_msg);
                                pthread_mutex_unlock(&r->lock);
                                return MSR_REFUSED;
                        }
                        *out = model_ref(e->serving);
                        v = msr_ver_of(e, e->serving);
                        res = (msr_deps_add(deps, ms->model) != 0 ||
                               (v && msr_deps_merge(deps, &v->deps) != 0))
                                  ? MSR_REFUSED
                                  : MSR_BUILT;
                        pthread_mutex_unlock(&r->lock);
                        if (res != MSR_BUILT)
                                kf_errf(errstr, errstr_size, "out of memory");
                        return res;
                }
                v = msr_find_ver(e, ms->version);
                if (v && v->model) {
                        *out = model_ref(v->model);
                        res = msr_deps_merge(deps, &v->deps) ? MSR_REFUSED : MSR_BUILT;
                        pthread_mutex_unlock(&r->lock);
                        return res;
                }
                if (v) {
                        kf_errf(errstr, errstr_size, "version %u cannot be loaded: %s", ms->version,
                                v->errmsg);
                        pthread_mutex_unlock(&r->lock);
                        return MSR_REFUSED;
                }
                if (!mreg_meta_version(&e->meta, ms->version)) {
                        mreg_meta_versions_str(&e->meta, vers, sizeof(vers));
                        pthread_mutex_unlock(&r->lock);
                        kf_errf(errstr, errstr_size, "no version %u (versions: %s)", ms->version,
                                vers);
                        return MSR_REFUSED;
                }
                if (msr_vdup(&vd, mreg_meta_version(&e->meta, ms->version)) != 0) {
                        pthread_mutex_unlock(&r->lock);
                        kf_errf(errstr, errstr_size, "out of memory");
                        return MSR_REFUSED;
                }
                pthread_mutex_unlock(&r->lock);

                res = msr_build(r, cn, ms->model, &vd, path, &nv, errstr, errstr_size);
                free(vd.members);
                if (res == MSR_TRANSIENT)
                        return res;
                if (res == MSR_MISSING) {
                        kf_errf(errstr, errstr_size, "version %u was removed", ms->version);
                        return MSR_REFUSED;
                }
                pthread_mutex_lock(&r->lock);
                e = msr_find(r, ms->model);
                if (e && mreg_meta_version(&e->meta, ms->version))
                        nv = msr_insert_ver(r, e, nv);
                if (nv->model) {
                        *out = model_ref(nv->model);
                        res = msr_deps_merge(deps, &nv->deps) ? MSR_REFUSED : MSR_BUILT;
                } else {
                        kf_errf(errstr, errstr_size, "version %u cannot be loaded: %s", ms->version,
                                nv->errmsg);
                        res = MSR_REFUSED;
                }
                if (!e || msr_find_ver(e, ms->version) != nv)
                        msr_ver_free(nv); /* not kept: the reference in *out lives on */
                pthread_mutex_unlock(&r->lock);
                return res;
        }
        kf_errf(errstr, errstr_size, "unknown model '%s'", ms->model);
        return MSR_REFUSED;
}

/* Builds an ensemble from its spec: resolves every member, then
 * model_ens_build.  Fills v->model or v->errmsg. */
static msr_res_t msr_build_ensemble(msr_t *r, msr_conn_t *cn, const model_ens_spec_t *spec,
                                    const mreg_version_t *vd, msr_path_t *path, msr_ver_t *v)
{
        model_t *resolved[MODEL_MAX_MEMBERS] = {NULL};
        msr_res_t res = MSR_BUILT;
        char why[300];

        for (int i = 0; i < path->depth; i++) {
                if (!strcmp(path->name[i], spec->name) && path->version[i] == vd->version) {
                        kf_errf(v->errmsg, sizeof(v->errmsg),
                                "ensemble '%s' version %u contains itself (a cycle)", spec->name,
                                vd->version);
                        return MSR_REFUSED;
                }
        }
        if (path->depth >= MODEL_MAX_DEPTH) {
                kf_errf(v->errmsg, sizeof(v->errmsg), "ensembles nested more than %d deep",
                        MODEL_MAX_DEPTH);
                return MSR_REFUSED;
        }
        path->name[path->depth] = spec->name;
        path->version[path->depth] = vd->version;
        path->depth++;
        for (uint32_t i = 0; i < spec->n_members && res == MSR_BUILT; i++) {
                res = msr_member(r, cn, &spec->members[i], path, &resolved[i], &v->deps, why,
                                 sizeof(why));
                if (res == MSR_REFUSED)
                        kf_errf(v->errmsg, sizeof(v->errmsg), "member %u ('%s'%s): %s", i,
                                spec->members[i].model, spec->members[i].version ? ", pinned" : "",
                                why);
                else if (res == MSR_TRANSIENT)
                        kf_strlcpy(v->errmsg, why, sizeof(v->errmsg));
        }
        path->depth--;
        if (res == MSR_BUILT) {
                v->model = model_ens_build(spec, resolved, why, sizeof(why));
                if (v->model)
                        v->model->version = vd->version;
                else {
                        kf_strlcpy(v->errmsg, why, sizeof(v->errmsg));
                        res = MSR_REFUSED;
                }
        }
        for (uint32_t i = 0; i < spec->n_members; i++)
                model_unref(resolved[i]);
        return res;
}

/* Fetches, verifies and decodes one version; an ensemble's members are
 * resolved too.  *out is a new build (model or errmsg) unless TRANSIENT or
 * MISSING. */
/* A build of vd sharing the weights of a cached build of the same blob
 * (same name and sha256, so already fetched and verified), or NULL if there
 * is none: a rollback pushed as a new version, or versions pinned by jobs
 * that hold one blob, cost one copy of the weights and no fetch. */
static msr_ver_t *msr_alias(msr_t *r, const char *name, const mreg_version_t *vd)
{
        msr_ver_t *v = NULL;
        msr_model_t *e;

        if (vd->kind != MODEL_KIND_MLP)
                return NULL;
        pthread_mutex_lock(&r->lock);
        e = msr_find(r, name);
        for (msr_ver_t *w = e ? e->vers : NULL; w; w = w->next) {
                model_t *m = w->model;
                if (!m || m->kind != MODEL_KIND_MLP || strcmp(w->sha256, vd->sha256) ||
                    m->input_dim != vd->input_dim || m->output_dim != vd->output_dim)
                        continue;
                if (!(v = calloc(1, sizeof(*v))))
                        break;
                if (!(v->model = model_alias(m, vd->version))) {
                        free(v);
                        v = NULL;
                        break;
                }
                v->version = vd->version;
                kf_strlcpy(v->sha256, vd->sha256, sizeof(v->sha256));
                kf_info("model %s v%u: the same blob as version %u, sharing its weights", name,
                        vd->version, w->version);
                break;
        }
        pthread_mutex_unlock(&r->lock);
        return v;
}

msr_res_t msr_build(msr_t *r, msr_conn_t *cn, const char *name, const mreg_version_t *vd,
                    msr_path_t *path, msr_ver_t **out, char *errstr, size_t errstr_size)
{
        model_file_t f = {0};
        msr_ver_t *v;
        redisContext *c;
        char *buf = NULL, why[300];
        size_t len = 0;
        msr_res_t res = MSR_BUILT;
        mreg_rc_t rc;
        uint32_t din, dout;

        *out = NULL;
        if ((*out = msr_alias(r, name, vd)))
                return MSR_BUILT;
        if (!(c = msr_conn(r, cn, errstr, errstr_size)))
                return MSR_TRANSIENT;
        rc = mreg_blob_get(c, r->prefix, name, vd, &buf, &len, why, sizeof(why));
        if (rc == MREG_IO) {
                msr_conn_drop(cn);
                kf_errf(errstr, errstr_size, "%s", why);
                return MSR_TRANSIENT;
        }
        if (rc == MREG_NOT_FOUND) {
                kf_errf(errstr, errstr_size, "%s", why);
                return MSR_MISSING;
        }
        if (!(v = calloc(1, sizeof(*v)))) {
                free(buf);
                kf_errf(errstr, errstr_size, "out of memory");
                return MSR_TRANSIENT;
        }
        v->version = vd->version;
        kf_strlcpy(v->sha256, vd->sha256, sizeof(v->sha256));
        if (rc != MREG_OK) {
                kf_strlcpy(v->errmsg, why, sizeof(v->errmsg));
                res = MSR_REFUSED;
                goto done;
        }
        if (mreg_blob_decode(buf, len, name, &f, why, sizeof(why)) != 0) {
                kf_strlcpy(v->errmsg, why, sizeof(v->errmsg));
                res = MSR_REFUSED;
                goto done;
        }
        din = f.kind == MODEL_KIND_MLP ? f.mlp->input_dim : f.ens->input_dim;
        dout = f.kind == MODEL_KIND_MLP ? f.mlp->output_dim : f.ens->output_dim;
        if (f.kind != vd->kind || din != vd->input_dim || dout != vd->output_dim) {
                kf_errf(v->errmsg, sizeof(v->errmsg),
                        "the blob is a %s %u->%u, the registry says %s %u->%u",
                        f.kind == MODEL_KIND_MLP ? "mlp" : "ensemble", din, dout,
                        vd->kind == MODEL_KIND_MLP ? "mlp" : "ensemble", vd->input_dim,
                        vd->output_dim);
                res = MSR_REFUSED;
                goto done;
        }
        if (f.kind == MODEL_KIND_MLP) {
                v->model = f.mlp;
                f.mlp = NULL;
                v->model->version = vd->version;
        } else {
                res = msr_build_ensemble(r, cn, f.ens, vd, path, v);
                if (res == MSR_TRANSIENT) {
                        kf_errf(errstr, errstr_size, "%s", v->errmsg);
                        msr_ver_free(v);
                        v = NULL;
                        goto done;
                }
        }
done:
        free(buf);
        model_file_clear(&f);
        if (v && v->model)
                kf_info("model %s v%u loaded from the registry: %s %u->%u, %zu bytes of weights, "
                        "sha256 %.12s",
                        name, vd->version, v->model->kind == MODEL_KIND_MLP ? "mlp" : "ensemble",
                        v->model->input_dim, v->model->output_dim, v->model->weight_bytes,
                        vd->sha256);
        else if (v)
                kf_error("model %s v%u refused: %s", name, vd->version, v->errmsg);
        *out = v;
        return res;
}

/* Reads name's metadata and brings its entry up to date (see the top of the
 * file).  MSR_TRANSIENT when Redis failed: the entry is left as it was. */
msr_res_t msr_refresh(msr_t *r, msr_conn_t *cn, const char *name, int flags, msr_path_t *path,
                      char *errstr, size_t errstr_size)
{
        mreg_meta_t meta;
        mreg_version_t vd = {0};
        msr_ver_t *nv = NULL;
        msr_model_t *e;
        redisContext *c;
        uint64_t gen0, ann0;
        msr_res_t res = MSR_BUILT;
        mreg_rc_t rc;
        int found, need = 0, wake;

        if (!(c = msr_conn(r, cn, errstr, errstr_size)))
                return MSR_TRANSIENT;
        pthread_mutex_lock(&r->lock);
        ann0 = r->ann;
        pthread_mutex_unlock(&r->lock);
        rc = mreg_meta_get(c, r->prefix, name, &meta, errstr, errstr_size);
        if (rc == MREG_IO) {
                msr_conn_drop(cn);
                return MSR_TRANSIENT;
        }
        if (rc == MREG_REFUSED) {
                /* per model name a job names: a producer can send many */
                kf_error_limited("model registry read refused", "model %s: %s", name, errstr);
                return MSR_TRANSIENT;
        }
        found = rc == MREG_OK;

        pthread_mutex_lock(&r->lock);
        gen0 = r->gen;
        if (found && meta.active) {
                const mreg_version_t *mv = mreg_meta_version(&meta, meta.active);
                msr_ver_t *v;
                e = msr_find(r, name);
                v = e ? msr_find_ver(e, meta.active) : NULL;
                need = !mv                                   ? 0
                       : !v || strcmp(v->sha256, mv->sha256) ? 1
                       : v->model ? (flags & MSR_REBUILD) && v->model->kind == MODEL_KIND_ENSEMBLE
                                  : (flags & MSR_RETRY) != 0;
                if (need && msr_vdup(&vd, mv) != 0)
                        need = 0;
        }
        pthread_mutex_unlock(&r->lock);

        if (need) {
                res = msr_build(r, cn, name, &vd, path, &nv, errstr, errstr_size);
                free(vd.members);
                if (res == MSR_TRANSIENT) {
                        mreg_meta_free(&meta);
                        return res;
                }
        }

        pthread_mutex_lock(&r->lock);
        e = msr_find(r, name);
        if (e && e->found && found && meta.seq < e->meta.seq) {
                /* Someone applied newer metadata meanwhile. */
                pthread_mutex_unlock(&r->lock);
                msr_ver_free(nv);
                mreg_meta_free(&meta);
                return MSR_BUILT;
        }
        if (!e && !(e = msr_add(r, name))) {
                pthread_mutex_unlock(&r->lock);
                msr_ver_free(nv);
                mreg_meta_free(&meta);
                kf_errf(errstr, errstr_size, "out of memory");
                return MSR_TRANSIENT;
        }
        mreg_meta_free(&e->meta);
        e->meta = meta;
        msr_set_found(r, e, found);
        e->checked_us = kf_mono_us();
        if (nv && nv->model && nv->model->kind == MODEL_KIND_ENSEMBLE && r->gen != gen0)
                msr_mark_dirty(r, name, MSR_REBUILD); /* a member may have moved meanwhile */
        else if (r->ann != ann0)
                msr_mark_dirty(r, name, 0); /* a change announced meanwhile may be newer */
        if (nv)
                msr_insert_ver(r, e, nv);
        msr_settle(r, e);
        wake = r->dirty != NULL;
        pthread_mutex_unlock(&r->lock);
        if (wake)
                msr_wake(r);
        return MSR_BUILT;
}
