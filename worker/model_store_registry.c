/* model_store_registry.c - the worker's models from the Redis registry: a
 * cache the loop thread reads under a mutex, kept current off the loop
 * thread by a reloader that follows the registry's change channel.
 *
 * Design.  Each model name has an entry: the registry metadata last read,
 * the versions built so far (model_t, or why it was refused) and `serving`,
 * the model jobs without a version get.  A refresh reads the metadata, builds
 * the active version if no build of the same blob (sha256) is cached, and
 * then, under the lock, swaps `serving`: a pointer exchange, so no job waits
 * for it, and jobs already holding a reference finish on the old model.  A
 * version that fails verification never becomes `serving`: the last good one
 * stays, and the refusal is logged.  The loop thread refreshes only names it
 * has never seen (first use) and versions it has not built (a pinned job);
 * everything else happens on the reloader, woken by PUBLISHed changes and by
 * a periodic check of each model's `seq` (a change missed while the
 * subscription was down is found there).  Refreshes race harmlessly: the
 * metadata with the higher seq wins, and an ensemble built while any model
 * swapped is rebuilt once more. */
#include "model_store_registry.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_keys.h"
#include "kf_log.h"
#include "kf_redis.h"
#include "kf_util.h"
#include "model_registry.h"

#define MSR_BACKOFF_MIN_MS    50
#define MSR_BACKOFF_MAX_MS    5000
#define MSR_ABSENT_RECHECK_US 1000000 /* an unknown name is asked again after 1 s */
#define MSR_FRESH_US          200000  /* a newer pinned version: re-read at most every 200 ms */
#define MSR_IDLE_US           (600LL * 1000000) /* a version nobody used for 10 min is dropped */
#define MSR_MAX_DEPS          256

/* Refresh flags. */
#define MSR_RETRY   1 /* build again what was refused (a change was announced) */
#define MSR_REBUILD 2 /* rebuild ensembles even if cached: a model they follow changed */

typedef enum {
        MSR_BUILT = 0,
        MSR_REFUSED,   /* verification or decoding failed: cached as such */
        MSR_MISSING,   /* the version is gone from the registry */
        MSR_TRANSIENT, /* Redis failed: nothing learnt, try again */
} msr_res_t;

typedef struct msr_conn_s {
        redisContext *c;
        int down; /* the last attempt failed (logged once) */
} msr_conn_t;

/* Names a build followed (an ensemble member without a version, at any
 * depth): when one of them changes, the build is redone. */
typedef struct msr_deps_s {
        char **names;
        uint32_t n;
} msr_deps_t;

typedef struct msr_ver_s {
        uint32_t version;
        char sha256[MREG_SHA256_HEX]; /* of the blob it was built from */
        model_t *model;               /* NULL: refused, errmsg says why */
        char errmsg[300];
        msr_deps_t deps;
        int64_t used_us;
        struct msr_ver_s *next;
} msr_ver_t;

typedef struct msr_model_s {
        char name[JOB_MODEL_MAX + 1];
        int found;        /* the registry has this name */
        mreg_meta_t meta; /* as last read */
        model_t *serving; /* what version-0 jobs get (own reference); NULL: see serving_err */
        kf_err_t serving_err;
        char serving_msg[300];
        msr_ver_t *vers;
        int64_t checked_us; /* last metadata read */
        int64_t fresh_us;   /* when a re-read did not find fresh_v ... */
        uint32_t fresh_v;   /* ... a pinned version newer than the metadata */
        int64_t used_us;
        struct msr_model_s *next;
} msr_model_t;

typedef struct msr_dirty_s {
        char name[JOB_MODEL_MAX + 1];
        int flags;
        struct msr_dirty_s *next;
} msr_dirty_t;

/* The path of ensembles being built, against cycles the registry did not
 * stop (a hand-edited hash) and unbounded nesting. */
typedef struct msr_path_s {
        const char *name[MODEL_MAX_DEPTH + 1];
        uint32_t version[MODEL_MAX_DEPTH + 1];
        int depth;
} msr_path_t;

struct msr_s {
        kf_redis_url_t url;
        char prefix[KF_KEY_MAX];
        char channel[KF_KEY_MAX];
        int timeout_ms, resync_ms;
        pthread_mutex_t lock; /* guards models, dirty, gen */
        msr_model_t *models;
        msr_dirty_t *dirty;
        uint64_t gen;      /* bumped whenever some model's serving version changes */
        uint64_t ann;      /* bumped for every change announced on the channel */
        msr_conn_t fg;     /* the loop thread's connection */
        msr_conn_t bg;     /* the reloader's command connection */
        redisContext *sub; /* the reloader's subscription */
        int sub_down;
        int wake[2]; /* a byte written wakes the reloader */
        int stop;    /* atomic */
        pthread_t thread;
        int started;
};

/* ---- small helpers ---- */

static void msr_deps_free(msr_deps_t *d)
{
        for (uint32_t i = 0; i < d->n; i++)
                free(d->names[i]);
        free(d->names);
        d->names = NULL;
        d->n = 0;
}

static int msr_deps_has(const msr_deps_t *d, const char *name)
{
        for (uint32_t i = 0; i < d->n; i++)
                if (!strcmp(d->names[i], name))
                        return 1;
        return 0;
}

static int msr_deps_add(msr_deps_t *d, const char *name)
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

static int msr_deps_merge(msr_deps_t *d, const msr_deps_t *from)
{
        for (uint32_t i = 0; i < from->n; i++)
                if (msr_deps_add(d, from->names[i]) != 0)
                        return -1;
        return 0;
}

static void msr_ver_free(msr_ver_t *v)
{
        if (!v)
                return;
        model_unref(v->model);
        msr_deps_free(&v->deps);
        free(v);
}

static int msr_vdup(mreg_version_t *dst, const mreg_version_t *src)
{
        *dst = *src;
        dst->members = NULL;
        if (src->members && !(dst->members = strdup(src->members)))
                return -1;
        return 0;
}

static void msr_wake(msr_t *r)
{
        char b = 1;
        if (write(r->wake[1], &b, 1) < 0) {
                /* full pipe: the reloader is being woken already */
        }
}

/* A connected context for cn, connecting if needed; NULL with errstr. */
static redisContext *msr_conn(msr_t *r, msr_conn_t *cn, char *errstr, size_t errstr_size)
{
        if (cn->c)
                return cn->c;
        cn->c = kf_redis_connect(&r->url, r->timeout_ms, errstr, errstr_size);
        if (!cn->c) {
                if (!cn->down)
                        kf_warn("model registry: %s", errstr);
                cn->down = 1;
                return NULL;
        }
        if (cn->down)
                kf_info("model registry: connected to %s:%d again", r->url.host, r->url.port);
        cn->down = 0;
        return cn->c;
}

static void msr_conn_drop(msr_conn_t *cn)
{
        if (cn->c)
                redisFree(cn->c);
        cn->c = NULL;
}

/* ---- the cache (caller holds the lock) ---- */

static msr_model_t *msr_find(msr_t *r, const char *name)
{
        for (msr_model_t *e = r->models; e; e = e->next)
                if (!strcmp(e->name, name))
                        return e;
        return NULL;
}

static msr_ver_t *msr_find_ver(msr_model_t *e, uint32_t version)
{
        for (msr_ver_t *v = e->vers; v; v = v->next)
                if (v->version == version)
                        return v;
        return NULL;
}

static msr_ver_t *msr_ver_of(msr_model_t *e, const model_t *m)
{
        for (msr_ver_t *v = e->vers; v; v = v->next)
                if (v->model == m)
                        return v;
        return NULL;
}

static void msr_set_serving(msr_model_t *e, model_t *m)
{
        if (e->serving == m)
                return;
        model_unref(e->serving);
        e->serving = model_ref(m);
}

static void msr_mark_dirty(msr_t *r, const char *name, int flags)
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
static void msr_invalidate_dependents(msr_t *r, const char *name)
{
        for (msr_model_t *e = r->models; e; e = e->next) {
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

/* ---- building ---- */

static msr_res_t msr_refresh(msr_t *r, msr_conn_t *cn, const char *name, int flags,
                             msr_path_t *path, char *errstr, size_t errstr_size);
static msr_res_t msr_build(msr_t *r, msr_conn_t *cn, const char *name, const mreg_version_t *vd,
                           msr_path_t *path, msr_ver_t **out, char *errstr, size_t errstr_size);

/* Inserts a new build into e unless one for the same blob is there; a
 * refused build never replaces a good one.  Returns the build kept. */
static msr_ver_t *msr_insert_ver(msr_model_t *e, msr_ver_t *nv)
{
        msr_ver_t **pp;
        for (pp = &e->vers; *pp; pp = &(*pp)->next) {
                msr_ver_t *old = *pp;
                if (old->version != nv->version)
                        continue;
                if ((old->model && !nv->model && !strcmp(old->sha256, nv->sha256))) {
                        msr_ver_free(nv);
                        return old;
                }
                nv->next = old->next;
                *pp = nv;
                msr_ver_free(old);
                return nv;
        }
        nv->next = e->vers;
        e->vers = nv;
        return nv;
}

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
                        nv = msr_insert_ver(e, nv);
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
static msr_res_t msr_build(msr_t *r, msr_conn_t *cn, const char *name, const mreg_version_t *vd,
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

/* Under the lock: the state after an update of e, and whether serving
 * changed (then dependents are invalidated). */
static void msr_settle(msr_t *r, msr_model_t *e)
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
}

/* Reads name's metadata and brings its entry up to date (see the top of the
 * file).  MSR_TRANSIENT when Redis failed: the entry is left as it was. */
static msr_res_t msr_refresh(msr_t *r, msr_conn_t *cn, const char *name, int flags,
                             msr_path_t *path, char *errstr, size_t errstr_size)
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
                kf_error("model %s: %s", name, errstr);
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
        if (!e && (e = calloc(1, sizeof(*e)))) {
                kf_strlcpy(e->name, name, sizeof(e->name));
                e->used_us = kf_mono_us();
                e->next = r->models;
                r->models = e;
        }
        if (!e) {
                pthread_mutex_unlock(&r->lock);
                msr_ver_free(nv);
                mreg_meta_free(&meta);
                kf_errf(errstr, errstr_size, "out of memory");
                return MSR_TRANSIENT;
        }
        mreg_meta_free(&e->meta);
        e->meta = meta;
        e->found = found;
        e->checked_us = kf_mono_us();
        if (nv && nv->model && nv->model->kind == MODEL_KIND_ENSEMBLE && r->gen != gen0)
                msr_mark_dirty(r, name, MSR_REBUILD); /* a member may have moved meanwhile */
        else if (r->ann != ann0)
                msr_mark_dirty(r, name, 0); /* a change announced meanwhile may be newer */
        if (nv)
                msr_insert_ver(e, nv);
        msr_settle(r, e);
        wake = r->dirty != NULL;
        pthread_mutex_unlock(&r->lock);
        if (wake)
                msr_wake(r);
        return MSR_BUILT;
}

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
                        e->used_us = now;
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
                                        nv = msr_insert_ver(e, nv);
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

/* ---- the reloader ---- */

static int msr_stopping(msr_t *r)
{
        return __atomic_load_n(&r->stop, __ATOMIC_ACQUIRE);
}

/* Waits up to ms for a wake-up byte (drained) or stop; 1 if woken. */
static int msr_sleep(msr_t *r, int ms)
{
        struct pollfd p = {r->wake[0], POLLIN, 0};
        char buf[64];
        int n = poll(&p, 1, ms);
        if (n > 0 && (p.revents & POLLIN)) {
                while (read(r->wake[0], buf, sizeof(buf)) > 0)
                        ;
                return 1;
        }
        return 0;
}

/* Every cached name is checked: a changed seq (or a name that appeared)
 * is refreshed.  Also drops versions nobody used for MSR_IDLE_US. */
static void msr_resync(msr_t *r)
{
        char(*names)[JOB_MODEL_MAX + 1] = NULL;
        uint64_t *seqs = NULL;
        int *found = NULL;
        size_t n = 0, i;
        redisContext *c;
        char err[256], key[KF_KEY_MAX];
        int64_t now = kf_mono_us();

        pthread_mutex_lock(&r->lock);
        for (msr_model_t *e = r->models; e; e = e->next)
                n++;
        names = calloc(n ? n : 1, sizeof(*names));
        seqs = calloc(n ? n : 1, sizeof(*seqs));
        found = calloc(n ? n : 1, sizeof(*found));
        if (names && seqs && found) {
                i = 0;
                for (msr_model_t **pp = &r->models; *pp;) {
                        msr_model_t *e = *pp;
                        /* Idle versions (not serving) go; unknown names nobody asks
                         * for go too. */
                        for (msr_ver_t **vp = &e->vers; *vp;) {
                                msr_ver_t *v = *vp;
                                if ((!v->model || v->model != e->serving) &&
                                    now - v->used_us > MSR_IDLE_US) {
                                        *vp = v->next;
                                        msr_ver_free(v);
                                } else {
                                        vp = &v->next;
                                }
                        }
                        if (!e->found && now - e->used_us > MSR_IDLE_US) {
                                *pp = e->next;
                                mreg_meta_free(&e->meta);
                                free(e);
                                continue;
                        }
                        kf_strlcpy(names[i], e->name, sizeof(names[i]));
                        seqs[i] = e->meta.seq;
                        found[i] = e->found;
                        i++;
                        pp = &e->next;
                }
                n = i;
        } else {
                n = 0;
        }
        pthread_mutex_unlock(&r->lock);

        /* A context unused since Redis went away fails only on first use:
         * then one more try on a fresh connection. */
        for (int attempt = 0; n && attempt < 2; attempt++) {
                size_t got = 0;
                if (!(c = msr_conn(r, &r->bg, err, sizeof(err))))
                        break;
                for (i = 0; i < n; i++) {
                        mreg_key_meta(key, r->prefix, names[i]);
                        redisAppendCommand(c, "HGET %s seq", key);
                }
                for (i = 0; i < n; i++, got++) {
                        redisReply *rep = NULL;
                        int changed;
                        if (redisGetReply(c, (void **)&rep) != REDIS_OK || !rep) {
                                msr_conn_drop(&r->bg);
                                break;
                        }
                        /* An error reply (LOADING after a restart): refresh
                         * to be sure; the refresh retries until it can. */
                        changed = rep->type == REDIS_REPLY_NIL ? found[i]
                                  : rep->type == REDIS_REPLY_STRING
                                      ? !found[i] || strtoull(rep->str, NULL, 10) != seqs[i]
                                      : 1;
                        if (changed) {
                                pthread_mutex_lock(&r->lock);
                                msr_mark_dirty(r, names[i], 0);
                                pthread_mutex_unlock(&r->lock);
                        }
                        freeReplyObject(rep);
                }
                if (got == n)
                        break;
        }
        free(names);
        free(seqs);
        free(found);
}

/* Takes the dirty list and refreshes each name; a name that failed for
 * Redis' sake goes back on the list.  Returns -1 if Redis failed. */
static int msr_process_dirty(msr_t *r)
{
        msr_dirty_t *d, *next;
        char err[300];
        int rc = 0;

        pthread_mutex_lock(&r->lock);
        d = r->dirty;
        r->dirty = NULL;
        pthread_mutex_unlock(&r->lock);
        for (; d; d = next) {
                msr_path_t path = {0};
                next = d->next;
                if (rc == 0 && !msr_stopping(r) &&
                    msr_refresh(r, &r->bg, d->name, d->flags, &path, err, sizeof(err)) ==
                        MSR_TRANSIENT) {
                        kf_debug("model %s: refresh postponed: %s", d->name, err);
                        rc = -1;
                }
                if (rc != 0) {
                        pthread_mutex_lock(&r->lock);
                        msr_mark_dirty(r, d->name, d->flags);
                        pthread_mutex_unlock(&r->lock);
                }
                free(d);
        }
        return rc;
}

/* Handles one message of the change channel: "EVENT NAME VERSION". */
static void msr_on_message(msr_t *r, const redisReply *rep)
{
        const redisReply *payload;
        char name[JOB_MODEL_MAX + 1];
        const char *p, *sp;
        size_t len;

        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
            rep->element[0]->type != REDIS_REPLY_STRING || strcmp(rep->element[0]->str, "message"))
                return;
        payload = rep->element[2];
        if (payload->type != REDIS_REPLY_STRING)
                return;
        p = memchr(payload->str, ' ', payload->len);
        if (!p)
                return;
        p++;
        sp = memchr(p, ' ', payload->len - (size_t)(p - payload->str));
        len = sp ? (size_t)(sp - p) : payload->len - (size_t)(p - payload->str);
        if (!job_name_valid(p, len, JOB_MODEL_MAX))
                return;
        memcpy(name, p, len);
        name[len] = '\0';
        kf_debug("model registry: %.*s", (int)payload->len, payload->str);
        pthread_mutex_lock(&r->lock);
        r->ann++;
        if (msr_find(r, name))
                msr_mark_dirty(r, name, MSR_RETRY);
        pthread_mutex_unlock(&r->lock);
}

/* (Re)subscribes; returns 0 or -1. */
static int msr_subscribe(msr_t *r)
{
        char err[256];
        redisReply *rep;

        if (!(r->sub = kf_redis_connect(&r->url, r->timeout_ms, err, sizeof(err)))) {
                if (!r->sub_down)
                        kf_warn("model registry: cannot subscribe to changes: %s; retrying", err);
                r->sub_down = 1;
                return -1;
        }
        rep = redisCommand(r->sub, "SUBSCRIBE %s", r->channel);
        if (!rep || rep->type != REDIS_REPLY_ARRAY) {
                if (!r->sub_down)
                        kf_warn("model registry: SUBSCRIBE %s failed: %s", r->channel,
                                r->sub->errstr[0] ? r->sub->errstr : "unexpected reply");
                r->sub_down = 1;
                if (rep)
                        freeReplyObject(rep);
                redisFree(r->sub);
                r->sub = NULL;
                return -1;
        }
        freeReplyObject(rep);
        kf_info("model registry: following %s%s", r->channel,
                r->sub_down ? " again; checking every cached model" : "");
        r->sub_down = 0;
        return 0;
}

static void *msr_thread(void *arg)
{
        msr_t *r = arg;
        int backoff = MSR_BACKOFF_MIN_MS, dirty;
        int64_t next_resync = kf_mono_us() + (int64_t)r->resync_ms * 1000, retry_at = 0;

        while (!msr_stopping(r)) {
                struct pollfd p[2];
                int64_t now, wait_us;

                if (!r->sub) {
                        if (msr_subscribe(r) != 0) {
                                msr_sleep(r, backoff);
                                backoff = backoff * 2 > MSR_BACKOFF_MAX_MS ? MSR_BACKOFF_MAX_MS
                                                                           : backoff * 2;
                                continue;
                        }
                        backoff = MSR_BACKOFF_MIN_MS;
                        retry_at = 0;
                        /* Changes may have been missed while unsubscribed. */
                        msr_resync(r);
                }
                now = kf_mono_us();
                pthread_mutex_lock(&r->lock);
                dirty = r->dirty != NULL;
                pthread_mutex_unlock(&r->lock);
                if (dirty && now >= retry_at) {
                        if (msr_process_dirty(r) != 0) {
                                /* Redis failed: retry with backoff, but keep
                                 * reading the subscription meanwhile. */
                                retry_at = now + (int64_t)backoff * 1000;
                                backoff = backoff * 2 > MSR_BACKOFF_MAX_MS ? MSR_BACKOFF_MAX_MS
                                                                           : backoff * 2;
                        } else {
                                backoff = MSR_BACKOFF_MIN_MS;
                                retry_at = 0;
                        }
                        continue;
                }
                if (now >= next_resync) {
                        msr_resync(r);
                        next_resync = now + (int64_t)r->resync_ms * 1000;
                        continue;
                }
                wait_us = next_resync - now;
                if (dirty && retry_at - now < wait_us)
                        wait_us = retry_at - now;
                p[0] = (struct pollfd){r->wake[0], POLLIN, 0};
                p[1] = (struct pollfd){r->sub->fd, POLLIN, 0};
                if (poll(p, 2, (int)(wait_us / 1000) + 1) <= 0)
                        continue;
                if (p[0].revents & POLLIN)
                        msr_sleep(r, 0); /* drains */
                if (p[1].revents & (POLLIN | POLLERR | POLLHUP)) {
                        void *rep = NULL;
                        if (redisBufferRead(r->sub) != REDIS_OK) {
                                kf_warn("model registry: change subscription lost: %s",
                                        r->sub->errstr[0] ? r->sub->errstr : "connection closed");
                                redisFree(r->sub);
                                r->sub = NULL;
                                r->sub_down = 1;
                                continue;
                        }
                        while (redisGetReplyFromReader(r->sub, &rep) == REDIS_OK && rep) {
                                msr_on_message(r, rep);
                                freeReplyObject(rep);
                                rep = NULL;
                        }
                }
        }
        return NULL;
}

/* ---- lifetime ---- */

msr_t *msr_new(const char *redis_url, const char *prefix, int timeout_ms, int resync_ms,
               char *errstr, size_t errstr_size)
{
        msr_t *r = calloc(1, sizeof(*r));

        if (!r) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        r->wake[0] = r->wake[1] = -1;
        pthread_mutex_init(&r->lock, NULL);
        if (kf_redis_url_parse(redis_url, &r->url, errstr, errstr_size) != 0)
                goto err;
        if (strlen(prefix) > 64) {
                kf_errf(errstr, errstr_size, "key prefix longer than 64 chars");
                goto err;
        }
        kf_strlcpy(r->prefix, prefix, sizeof(r->prefix));
        mreg_channel(r->channel, prefix);
        r->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
        r->resync_ms = resync_ms > 0 ? resync_ms : 5000;
        if (pipe2(r->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
                kf_errf(errstr, errstr_size, "pipe: %s", strerror(errno));
                goto err;
        }
        if (pthread_create(&r->thread, NULL, msr_thread, r) != 0) {
                kf_errf(errstr, errstr_size, "cannot start the model reloader thread");
                goto err;
        }
        r->started = 1;
        return r;
err:
        msr_destroy(r);
        return NULL;
}

void msr_destroy(msr_t *r)
{
        if (!r)
                return;
        if (r->started) {
                __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
                msr_wake(r);
                pthread_join(r->thread, NULL);
        }
        for (msr_model_t *e = r->models, *en; e; e = en) {
                en = e->next;
                for (msr_ver_t *v = e->vers, *vn; v; v = vn) {
                        vn = v->next;
                        msr_ver_free(v);
                }
                model_unref(e->serving);
                mreg_meta_free(&e->meta);
                free(e);
        }
        for (msr_dirty_t *d = r->dirty, *dn; d; d = dn) {
                dn = d->next;
                free(d);
        }
        msr_conn_drop(&r->fg);
        msr_conn_drop(&r->bg);
        if (r->sub)
                redisFree(r->sub);
        if (r->wake[0] >= 0)
                close(r->wake[0]);
        if (r->wake[1] >= 0)
                close(r->wake[1]);
        pthread_mutex_destroy(&r->lock);
        free(r);
}
