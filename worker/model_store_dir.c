/* model_store_dir.c - the model store's directory backend (offline mode,
 * see model_store.h): models loaded lazily from DIR/NAME.kmodel or
 * DIR/NAME/VERSION.kmodel and cached, a name's versions rescanned at most
 * every MS_RESCAN_US.  Names are found through a uthash table (Debian's
 * uthash-dev, header only; out of memory while adding is an error, never an
 * abort); what is kept is bounded as model_store.h says. */
#include "model_store_dir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kf_log.h"
#include "kf_util.h"

#define HASH_NONFATAL_OOM        1
#define uthash_nonfatal_oom(elt) ((elt)->hh_oom = 1)
#include <uthash.h>
#include <utlist.h>

/* How long "which version is active" is trusted before the directory is
 * read again: new versions show up within this delay, and a hot path of
 * thousands of jobs per second does not readdir() for each. */
#define MS_RESCAN_US 2000000

/* One version loaded (or refused: a corrupt file is reported once, not
 * re-read for every job; replace it under a new version to recover). */
typedef struct msd_ver_s {
        uint32_t version;
        model_t *model; /* NULL if loading failed: errmsg says why */
        char errmsg[256];
        int64_t used_us;
        struct msd_ver_s *next;
} msd_ver_t;

/* One model name asked for. */
typedef struct msd_name_s {
        char name[JOB_MODEL_MAX + 1];
        uint32_t highest;   /* what version-0 jobs get; 0 = none on disk */
        int64_t checked_us; /* when highest was scanned (0 = never) */
        msd_ver_t *vers;
        int64_t used_us;
        UT_hash_handle hh; /* in d->names */
        int hh_oom;
        /* Names with nothing on disk and nothing loaded, LRU first: at most
         * MS_UNKNOWN_MAX are kept. */
        struct msd_name_s *uprev, *unext;
        int in_unknown;
} msd_name_t;

struct msd_s {
        char *dir;           /* NULL: every lookup is unknown_model */
        msd_name_t *names;   /* uthash head */
        msd_name_t *unknown; /* utlist */
        size_t n_unknown;
        uint64_t budget; /* bytes of weights of versions other than the highest */
        uint64_t evicted;
};

msd_t *msd_new(const char *dir)
{
        msd_t *d = calloc(1, sizeof(*d));
        if (!d)
                return NULL;
        if (dir && !(d->dir = strdup(dir))) {
                free(d);
                return NULL;
        }
        d->budget = MS_BUDGET_DEFAULT;
        return d;
}

static void msd_remove(msd_t *d, msd_name_t *n)
{
        if (n->in_unknown) {
                DL_DELETE2(d->unknown, n, uprev, unext);
                d->n_unknown--;
        }
        HASH_DEL(d->names, n);
        for (msd_ver_t *v = n->vers, *vn; v; v = vn) {
                vn = v->next;
                model_unref(v->model);
                free(v);
        }
        free(n);
}

void msd_destroy(msd_t *d)
{
        msd_name_t *n, *tmp;
        if (!d)
                return;
        HASH_ITER(hh, d->names, n, tmp)
        msd_remove(d, n);
        free(d->dir);
        free(d);
}

/* After a lookup of n: a name with nothing on disk and nothing loaded joins
 * the unknown ones (at the back), and the oldest beyond MS_UNKNOWN_MAX go. */
static void msd_settle_unknown(msd_t *d, msd_name_t *n)
{
        int unknown = !n->vers && !n->highest;
        if (n->in_unknown) {
                DL_DELETE2(d->unknown, n, uprev, unext);
                d->n_unknown--;
                n->in_unknown = 0;
        }
        if (unknown) {
                DL_APPEND2(d->unknown, n, uprev, unext);
                d->n_unknown++;
                n->in_unknown = 1;
        }
        while (d->n_unknown > MS_UNKNOWN_MAX && d->unknown != n)
                msd_remove(d, d->unknown);
}

static uint64_t msd_ver_bytes(const msd_name_t *n, const msd_ver_t *v)
{
        return v->model && v->version != n->highest ? v->model->weight_bytes : 0;
}

/* Drops the least recently used loaded versions other than each name's
 * highest while they hold more than the budget, never keep. */
static void msd_budget(msd_t *d, const msd_ver_t *keep)
{
        for (;;) {
                msd_name_t *n, *tmp, *lru_n = NULL;
                msd_ver_t *lru = NULL, **pp;
                uint64_t total = 0;

                HASH_ITER(hh, d->names, n, tmp)
                {
                        for (msd_ver_t *v = n->vers; v; v = v->next) {
                                uint64_t bytes = msd_ver_bytes(n, v);
                                total += bytes;
                                if (bytes && v != keep && (!lru || v->used_us < lru->used_us)) {
                                        lru = v;
                                        lru_n = n;
                                }
                        }
                }
                if (total <= d->budget || !lru)
                        return;
                for (pp = &lru_n->vers; *pp != lru; pp = &(*pp)->next)
                        ;
                *pp = lru->next;
                kf_info("model %s v%u: dropped from the cache (%.1f MiB of versions other than "
                        "the highest, budget %.1f MiB); loaded again when a job asks for it",
                        lru_n->name, lru->version, (double)total / 1048576.0,
                        (double)d->budget / 1048576.0);
                model_unref(lru->model);
                free(lru);
                d->evicted++;
        }
}

void msd_set_budget(msd_t *d, uint64_t bytes)
{
        d->budget = bytes;
        msd_budget(d, NULL);
}

void msd_stats(msd_t *d, ms_store_stats_t *st)
{
        msd_name_t *n, *tmp;
        memset(st, 0, sizeof(*st));
        HASH_ITER(hh, d->names, n, tmp)
        {
                st->names++;
                st->unknown_names += n->in_unknown;
                for (msd_ver_t *v = n->vers; v; v = v->next) {
                        st->builds++;
                        if (!v->model)
                                continue;
                        if (v->version == n->highest)
                                st->serving_bytes += v->model->weight_bytes;
                        else
                                st->cached_bytes += v->model->weight_bytes;
                }
        }
        st->evicted = d->evicted;
}

/* The versions of one name found on disk, ascending. */
typedef struct ms_vers_s {
        uint32_t *v; /* owned; NULL while n == 0 */
        size_t n, cap;
} ms_vers_t;

static void ms_vers_free(ms_vers_t *vl)
{
        free(vl->v);
        memset(vl, 0, sizeof(*vl));
}

static int ms_vers_add(ms_vers_t *vl, uint32_t v)
{
        if (vl->n == vl->cap) {
                size_t cap = vl->cap ? vl->cap * 2 : 16;
                uint32_t *grown = realloc(vl->v, cap * sizeof(*grown));
                if (!grown)
                        return -1;
                vl->v = grown;
                vl->cap = cap;
        }
        vl->v[vl->n++] = v;
        return 0;
}

static int ms_u32_cmp(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        return x < y ? -1 : x > y;
}

/* The version a directory entry "VERSION.kmodel" names, or 0.  Only the
 * canonical spelling counts ("7.kmodel", not "07.kmodel" or "+7.kmodel"):
 * the file opened for version v is always "v.kmodel", so a version found
 * under another spelling could be listed but never loaded. */
static uint32_t ms_entry_version(const char *fname)
{
        const char *dot = strrchr(fname, '.');
        size_t len = dot ? (size_t)(dot - fname) : 0;
        char num[16];
        int64_t v;

        if (!dot || strcmp(dot, ".kmodel") || len == 0 || len >= sizeof(num) || fname[0] == '0')
                return 0;
        for (size_t i = 0; i < len; i++)
                if (fname[i] < '0' || fname[i] > '9')
                        return 0;
        memcpy(num, fname, len);
        num[len] = '\0';
        return kf_parse_i64(num, 1, UINT32_MAX, &v) == 0 ? (uint32_t)v : 0;
}

/* DIR/NAME followed by tail ("", ".kmodel", "/7.kmodel").  Returns 0, or
 * -1 if it does not fit: a cut path would name another file. */
static int ms_path(char *buf, size_t size, const char *dir, const char *name, const char *tail)
{
        int n = snprintf(buf, size, "%s/%s%s", dir, name, tail);
        return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* Fills vl with every version of name on disk, ascending.  There is no cap:
 * readdir() returns entries in the file system's order, so keeping only the
 * first N of them can miss the highest version.  Returns 0, or -1 with
 * errstr (out of memory, or the path does not fit). */
static int ms_scan(const msd_t *ms, const char *name, ms_vers_t *vl, char *errstr,
                   size_t errstr_size)
{
        char path[4096];
        struct stat st;
        struct dirent *de;
        DIR *d;
        int rc = 0;

        vl->n = 0;
        if (ms_path(path, sizeof(path), ms->dir, name, ""))
                return kf_errf(errstr, errstr_size, "model directory path too long");
        if ((d = opendir(path))) {
                while ((de = readdir(d))) {
                        uint32_t v = ms_entry_version(de->d_name);
                        if (v && ms_vers_add(vl, v)) {
                                rc = kf_errf(errstr, errstr_size, "out of memory");
                                break;
                        }
                }
                closedir(d);
                if (rc)
                        return rc;
        }
        if (vl->n == 0) {
                if (ms_path(path, sizeof(path), ms->dir, name, ".kmodel"))
                        return kf_errf(errstr, errstr_size, "model directory path too long");
                if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && ms_vers_add(vl, 1))
                        return kf_errf(errstr, errstr_size, "out of memory");
        }
        if (vl->n > 1) /* qsort's pointer must not be NULL, even for 0 items */
                qsort(vl->v, vl->n, sizeof(*vl->v), ms_u32_cmp);
        return 0;
}

/* "1, 2, 3" for an error message; a long list keeps its ends, since the
 * highest versions are the ones an operator is looking for. */
static void ms_versions_str(const ms_vers_t *vl, char *buf, size_t size)
{
        size_t o = 0, n = vl->n;
        buf[0] = '\0';
        for (size_t i = 0; i < n && o + 12 < size; i++) {
                if (n > 8 && i == 3) {
                        o += (size_t)snprintf(buf + o, size - o, ", ...");
                        i = n - 4; /* then the last three */
                        continue;
                }
                o += (size_t)snprintf(buf + o, size - o, "%s%u", i ? ", " : "", vl->v[i]);
        }
        if (n > 8 && o < size)
                snprintf(buf + o, size - o, "; %zu in all", n);
}

/* A model name the directory store can use: a job name (letters, digits,
 * '.', '_', ':', '-', so never a '/') that does not start with '.'.  The
 * charset allows "." and "..", which would make DIR/../7.kmodel a file
 * outside DIR; a leading '.' otherwise only names hidden entries. */
static int ms_dir_name_ok(const char *name)
{
        return job_name_valid(name, strnlen(name, JOB_MODEL_MAX + 1), JOB_MODEL_MAX) &&
               name[0] != '.';
}

static msd_name_t *msd_name_get(msd_t *d, const char *name)
{
        msd_name_t *n;
        HASH_FIND_STR(d->names, name, n);
        if (n || !(n = calloc(1, sizeof(*n))))
                return n;
        kf_strlcpy(n->name, name, sizeof(n->name));
        HASH_ADD_STR(d->names, name, n);
        if (n->hh_oom) {
                free(n);
                return NULL;
        }
        return n;
}

model_t *msd_get(msd_t *d, const char *name, uint32_t version, kf_err_t *err, char *errstr,
                 size_t errstr_size)
{
        ms_vers_t vl = {0};
        char path[4096], list[256];
        int scanned = 0;
        int64_t now = kf_mono_us();
        model_t *ret = NULL;
        msd_name_t *n;
        msd_ver_t *v;

        if (!d->dir) {
                *err = KF_ERR_UNKNOWN_MODEL;
                kf_errf(errstr, errstr_size,
                        "unknown model '%s': this worker has no model directory", name);
                return NULL;
        }
        /* Before any path is built from it, and before it takes a cache slot. */
        if (!ms_dir_name_ok(name)) {
                *err = KF_ERR_UNKNOWN_MODEL;
                kf_errf(errstr, errstr_size,
                        "unknown model '%.*s': the name is not a plain name for the model "
                        "directory (letters, digits, '.', '_', ':', '-', not starting with '.')",
                        JOB_MODEL_MAX, name);
                return NULL;
        }
        if (!(n = msd_name_get(d, name))) {
                *err = KF_ERR_INTERNAL;
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        n->used_us = now;

        if (version == 0) {
                if (n->highest == 0 || now - n->checked_us > MS_RESCAN_US) {
                        uint32_t before = n->highest;
                        if (ms_scan(d, name, &vl, errstr, errstr_size)) {
                                *err = KF_ERR_INTERNAL;
                                goto out;
                        }
                        scanned = 1;
                        n->highest = vl.n ? vl.v[vl.n - 1] : 0;
                        n->checked_us = now;
                        if (before && n->highest != before)
                                msd_budget(d, NULL); /* `before` is no longer served */
                }
                if (n->highest == 0) {
                        *err = KF_ERR_UNKNOWN_MODEL;
                        kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                        goto out;
                }
                version = n->highest;
        }

        for (v = n->vers; v; v = v->next)
                if (v->version == version)
                        break;
        if (!v) {
                model_t *m;
                char why[256], tail[32];
                snprintf(tail, sizeof(tail), "/%u.kmodel", version);
                if (ms_path(path, sizeof(path), d->dir, name, tail) ||
                    (access(path, F_OK) != 0 && version == 1 &&
                     ms_path(path, sizeof(path), d->dir, name, ".kmodel"))) {
                        *err = KF_ERR_INTERNAL;
                        kf_errf(errstr, errstr_size, "model directory path too long");
                        goto out;
                }
                if (access(path, F_OK) != 0) {
                        if (!scanned && ms_scan(d, name, &vl, errstr, errstr_size)) {
                                *err = KF_ERR_INTERNAL;
                                goto out;
                        }
                        ms_versions_str(&vl, list, sizeof(list));
                        *err = KF_ERR_UNKNOWN_MODEL;
                        if (vl.n)
                                kf_errf(errstr, errstr_size,
                                        "model '%s' has no version %u (versions: %s)", name,
                                        version, list);
                        else
                                kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                        goto out;
                }
                m = model_load_file(path, why, sizeof(why));
                if (m && strcmp(m->name, name)) {
                        kf_errf(why, sizeof(why), "%s: the file names its model '%s', not '%s'",
                                path, m->name, name);
                        model_unref(m);
                        m = NULL;
                }
                if (!(v = calloc(1, sizeof(*v)))) {
                        model_unref(m);
                        *err = KF_ERR_INTERNAL;
                        kf_errf(errstr, errstr_size, "out of memory");
                        goto out;
                }
                v->version = version;
                v->model = m;
                if (m) {
                        m->version = version;
                        kf_info("loaded model %s v%u from %s (%u layers, %u->%u, %zu bytes)", name,
                                version, path, m->n_layers, m->input_dim, m->output_dim,
                                m->weight_bytes);
                } else {
                        kf_strlcpy(v->errmsg, why, sizeof(v->errmsg));
                        kf_error("cannot load model %s v%u: %s", name, version, why);
                }
                v->next = n->vers;
                n->vers = v;
        }
        v->used_us = now;
        if (!v->model) {
                *err = KF_ERR_INTERNAL;
                kf_errf(errstr, errstr_size, "model '%s' version %u cannot be loaded: %s", name,
                        version, v->errmsg);
                goto out;
        }
        *err = KF_OK;
        ret = model_ref(v->model);
        msd_budget(d, v);
out:
        msd_settle_unknown(d, n);
        ms_vers_free(&vl);
        return ret;
}
