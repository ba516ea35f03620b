/* model_store_registry_cache.c - the registry store's cache: per model name
 * the metadata last read, the builds kept, the model served; what changes
 * when metadata changes (msr_settle) and which builds a change makes stale.
 * Every function here is called with the store's lock held. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_util.h"
#include "model_store_registry_int.h"

#include <utlist.h>

/* ---- small helpers ---- */

void msr_deps_free(msr_deps_t *d)
{
        for (uint32_t i = 0; i < d->n; i++)
                free(d->names[i]);
        free(d->names);
        d->names = NULL;
        d->n = 0;
}

int msr_deps_has(const msr_deps_t *d, const char *name)
{
        for (uint32_t i = 0; i < d->n; i++)
                if (!strcmp(d->names[i], name))
                        return 1;
        return 0;
}

int msr_deps_add(msr_deps_t *d, const char *name)
{
        char **nn;
        if (msr_deps_has(d, name))
                return 0;
        if (d->n >= MSR_MAX_DEPS || !(nn = realloc(d->names, (d->n + 1) * sizeof(*nn))))
                return -1;
        d->names = nn;
        if (!(d->names[d->n] = strdup(name)))
                return -1;
        d->n++;
        return 0;
}

int msr_deps_merge(msr_deps_t *d, const msr_deps_t *from)
{
        for (uint32_t i = 0; i < from->n; i++)
                if (msr_deps_add(d, from->names[i]) != 0)
                        return -1;
        return 0;
}

void msr_ver_free(msr_ver_t *v)
{
        if (!v)
                return;
        model_unref(v->model);
        msr_deps_free(&v->deps);
        free(v);
}

int msr_vdup(mreg_version_t *dst, const mreg_version_t *src)
{
        *dst = *src;
        dst->members = NULL;
        if (src->members && !(dst->members = strdup(src->members)))
                return -1;
        return 0;
}

/* ---- the cache (caller holds the lock) ---- */

msr_model_t *msr_find(msr_t *r, const char *name)
{
        msr_model_t *e;
        HASH_FIND_STR(r->models, name, e);
        return e;
}

msr_model_t *msr_add(msr_t *r, const char *name)
{
        msr_model_t *e = calloc(1, sizeof(*e));
        if (!e)
                return NULL;
        kf_strlcpy(e->name, name, sizeof(e->name));
        e->used_us = kf_mono_us();
        HASH_ADD_STR(r->models, name, e);
        if (e->hh_oom) {
                free(e);
                return NULL;
        }
        return e;
}

void msr_remove(msr_t *r, msr_model_t *e)
{
        if (e->in_unknown) {
                DL_DELETE2(r->unknown, e, uprev, unext);
                r->n_unknown--;
        }
        HASH_DEL(r->models, e);
        for (msr_ver_t *v = e->vers, *vn; v; v = vn) {
                vn = v->next;
                msr_ver_free(v);
        }
        model_unref(e->serving);
        mreg_meta_free(&e->meta);
        free(e);
}

void msr_set_found(msr_t *r, msr_model_t *e, int found)
{
        e->found = found;
        if (found && e->in_unknown) {
                DL_DELETE2(r->unknown, e, uprev, unext);
                r->n_unknown--;
                e->in_unknown = 0;
        } else if (!found && !e->in_unknown) {
                DL_APPEND2(r->unknown, e, uprev, unext);
                r->n_unknown++;
                e->in_unknown = 1;
        }
        /* Every distinct name a job makes up would otherwise stay: bounded,
         * so memory is, and the table stays small for the names that exist. */
        while (r->n_unknown > MS_UNKNOWN_MAX && r->unknown != e)
                msr_remove(r, r->unknown);
}

void msr_touch(msr_t *r, msr_model_t *e, int64_t now)
{
        e->used_us = now;
        if (e->in_unknown && e->unext) { /* to the back of the LRU list */
                DL_DELETE2(r->unknown, e, uprev, unext);
                DL_APPEND2(r->unknown, e, uprev, unext);
        }
}

/* Whether v is a build the budget covers: a loaded MLP not being served.
 * An ensemble's weights are its members', which are builds of their own. */
static int msr_ver_cached(const msr_model_t *e, const msr_ver_t *v)
{
        return v->model && v->model != e->serving && v->model->kind == MODEL_KIND_MLP;
}

uint64_t msr_cached_bytes(const msr_model_t *e)
{
        const model_t *serving = e->serving ? model_weights_owner(e->serving) : NULL;
        uint64_t total = 0;
        /* Builds of one blob share one copy of the weights (model_alias):
         * each copy counts once, and not at all if it is the serving one. */
        for (const msr_ver_t *v = e->vers; v; v = v->next) {
                const model_t *owner;
                int seen = 0;
                if (!msr_ver_cached(e, v))
                        continue;
                owner = model_weights_owner(v->model);
                for (const msr_ver_t *w = e->vers; w != v && !seen; w = w->next)
                        seen = msr_ver_cached(e, w) && model_weights_owner(w->model) == owner;
                if (!seen && owner != serving)
                        total += owner->weight_bytes;
        }
        return total;
}

void msr_budget(msr_t *r, const msr_ver_t *keep)
{
        for (;;) {
                msr_model_t *e, *tmp, *lru_e = NULL;
                msr_ver_t *lru = NULL, **pp;
                uint64_t total = 0;

                HASH_ITER(hh, r->models, e, tmp)
                {
                        total += msr_cached_bytes(e);
                        for (msr_ver_t *v = e->vers; v; v = v->next) {
                                if (msr_ver_cached(e, v) && v != keep &&
                                    (!lru || v->used_us < lru->used_us)) {
                                        lru = v;
                                        lru_e = e;
                                }
                        }
                }
                if (total <= r->budget || !lru)
                        return;
                for (pp = &lru_e->vers; *pp != lru; pp = &(*pp)->next)
                        ;
                *pp = lru->next;
                kf_info("model %s v%u: dropped from the cache (%.1f MiB of versions not being "
                        "served, budget %.1f MiB); built again when a job asks for it",
                        lru_e->name, lru->version, (double)total / 1048576.0,
                        (double)r->budget / 1048576.0);
                msr_ver_free(lru);
                r->evicted++;
        }
}

msr_ver_t *msr_find_ver(msr_model_t *e, uint32_t version)
{
        for (msr_ver_t *v = e->vers; v; v = v->next)
                if (v->version == version)
                        return v;
        return NULL;
}

msr_ver_t *msr_ver_of(msr_model_t *e, const model_t *m)
{
        for (msr_ver_t *v = e->vers; v; v = v->next)
                if (v->model == m)
                        return v;
        return NULL;
}

void msr_set_serving(msr_model_t *e, model_t *m)
{
        if (e->serving == m)
                return;
        model_unref(e->serving);
        e->serving = model_ref(m);
}

void msr_mark_dirty(msr_t *r, const char *name, int flags)
{
        msr_dirty_t *d;
        for (d = r->dirty; d; d = d->next) {
                if (!strcmp(d->name, name)) {
                        d->flags |= flags;
                        return;
                }
        }
        if (!(d = calloc(1, sizeof(*d))))
                return; /* the periodic check will get to it */
        kf_strlcpy(d->name, name, sizeof(d->name));
        d->flags = flags;
        d->next = r->dirty;
        r->dirty = d;
}

/* name's serving model changed: every build that followed it is stale.
 * Serving builds are rebuilt by the reloader (until then they keep serving);
 * other stale builds are dropped, and rebuilt by the reloader if they are
 * of the active version, else when a job asks for them. */
void msr_invalidate_dependents(msr_t *r, const char *name)
{
        for (msr_model_t *e = r->models; e; e = e->hh.next) {
                msr_ver_t **pp = &e->vers;
                while (*pp) {
                        msr_ver_t *v = *pp;
                        if (!msr_deps_has(&v->deps, name)) {
                                pp = &v->next;
                                continue;
                        }
                        if (v->model && v->model == e->serving) {
                                msr_mark_dirty(r, e->name, MSR_REBUILD);
                                pp = &v->next;
                                continue;
                        }
                        /* An active version refused for a member's sake may
                         * build now: the reloader tries again. */
                        if (e->found && v->version == e->meta.active)
                                msr_mark_dirty(r, e->name, 0);
                        *pp = v->next;
                        msr_ver_free(v);
                }
        }
}

msr_ver_t *msr_insert_ver(msr_t *r, msr_model_t *e, msr_ver_t *nv)
{
        msr_ver_t **pp, *kept = nv;
        for (pp = &e->vers; *pp; pp = &(*pp)->next) {
                msr_ver_t *old = *pp;
                if (old->version != nv->version)
                        continue;
                if ((old->model && !nv->model && !strcmp(old->sha256, nv->sha256))) {
                        msr_ver_free(nv);
                        kept = old;
                } else {
                        nv->next = old->next;
                        *pp = nv;
                        msr_ver_free(old);
                }
                goto out;
        }
        nv->next = e->vers;
        e->vers = nv;
out:
        msr_budget(r, kept);
        return kept;
}

/* Under the lock: the state after an update of e, and whether serving
 * changed (then dependents are invalidated). */
void msr_settle(msr_t *r, msr_model_t *e)
{
        model_t *before = e->serving;
        uint32_t before_v = before ? before->version : 0;
        char vers[128];
        msr_ver_t *av = NULL;

        /* Builds of versions that are gone, or whose blob changed, go. */
        for (msr_ver_t **pp = &e->vers; *pp;) {
                msr_ver_t *v = *pp;
                const mreg_version_t *mv =
                    e->found ? mreg_meta_version(&e->meta, v->version) : NULL;
                if (mv && !strcmp(mv->sha256, v->sha256)) {
                        pp = &v->next;
                        continue;
                }
                if (v->model && v->model == e->serving)
                        msr_set_serving(e, NULL);
                *pp = v->next;
                msr_ver_free(v);
        }
        if (e->serving && (!e->found || !mreg_meta_version(&e->meta, e->serving->version)))
                msr_set_serving(e, NULL);

        mreg_meta_versions_str(&e->meta, vers, sizeof(vers));
        if (!e->found) {
                msr_set_serving(e, NULL);
                e->serving_err = KF_ERR_UNKNOWN_MODEL;
                kf_errf(e->serving_msg, sizeof(e->serving_msg), "unknown model '%s'", e->name);
        } else if (e->meta.active == 0) {
                msr_set_serving(e, NULL);
                e->serving_err = KF_ERR_UNKNOWN_MODEL;
                kf_errf(e->serving_msg, sizeof(e->serving_msg),
                        "model '%s' has no active version (versions: %s)", e->name, vers);
        } else if ((av = msr_find_ver(e, e->meta.active)) && av->model) {
                msr_set_serving(e, av->model);
        } else if (av) {
                /* Refused: the last good version (if any) keeps serving. */
                e->serving_err = KF_ERR_INTERNAL;
                kf_errf(e->serving_msg, sizeof(e->serving_msg),
                        "model '%s' version %u cannot be loaded: %s", e->name, e->meta.active,
                        av->errmsg);
        } else if (!mreg_meta_version(&e->meta, e->meta.active)) {
                e->serving_err = KF_ERR_INTERNAL;
                kf_errf(e->serving_msg, sizeof(e->serving_msg),
                        "model '%s': the active version %u is not in the registry (versions: %s)",
                        e->name, e->meta.active, vers);
        }
        if (e->serving != before) {
                r->gen++;
                if (e->serving && before && before_v == e->serving->version)
                        kf_info("model %s: version %u rebuilt (a model it follows changed)",
                                e->name, before_v);
                else if (e->serving)
                        kf_info("model %s: serving version %u%s (was %s%.0u)", e->name,
                                e->serving->version,
                                e->serving->version == e->meta.active ? "" : ", not the active one",
                                before ? "version " : "none", before_v);
                else if (before)
                        kf_warn("model %s: no longer serving version %u: %s", e->name, before_v,
                                e->serving_msg);
                msr_invalidate_dependents(r, e->name);
        } else if (e->serving && e->meta.active != e->serving->version && av && !av->model) {
                kf_warn("model %s: active version %u refused; still serving version %u", e->name,
                        e->meta.active, e->serving->version);
        }
        /* What stopped being served now counts against the budget. */
        msr_budget(r, NULL);
}
