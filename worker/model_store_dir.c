/* model_store_dir.c - the model store's directory backend (offline mode,
 * see model_store.h): models loaded lazily from DIR/NAME.kmodel or
 * DIR/NAME/VERSION.kmodel and cached, a name's versions rescanned at most
 * every MS_RESCAN_US. */
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

/* How long "which version is active" is trusted before the directory is
 * read again: new versions show up within this delay, and a hot path of
 * thousands of jobs per second does not readdir() for each. */
#define MS_RESCAN_US 2000000

typedef struct ms_entry_s {
        char name[JOB_MODEL_MAX + 1];
        uint32_t version;
        model_t *model; /* NULL if loading failed: errmsg says why */
        char errmsg[256];
        struct ms_entry_s *next;
} ms_entry_t;

typedef struct ms_active_s {
        char name[JOB_MODEL_MAX + 1];
        uint32_t version; /* 0 = not found */
        int64_t checked_us;
        struct ms_active_s *next;
} ms_active_t;

struct msd_s {
        char *dir; /* NULL: every lookup is unknown_model */
        ms_entry_t *entries;
        ms_active_t *active;
};

msd_t *msd_new(const char *dir)
{
        msd_t *ms = calloc(1, sizeof(*ms));
        if (!ms)
                return NULL;
        if (dir && !(ms->dir = strdup(dir))) {
                free(ms);
                return NULL;
        }
        return ms;
}

void msd_destroy(msd_t *ms)
{
        if (!ms)
                return;
        for (ms_entry_t *e = ms->entries, *n; e; e = n) {
                n = e->next;
                model_unref(e->model);
                free(e);
        }
        for (ms_active_t *a = ms->active, *n; a; a = n) {
                n = a->next;
                free(a);
        }
        free(ms->dir);
        free(ms);
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
                vl->v   = grown;
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
        size_t len      = dot ? (size_t)(dot - fname) : 0;
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
        buf[0]   = '\0';
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

static ms_active_t *ms_active_get(msd_t *ms, const char *name)
{
        ms_active_t *a;
        for (a = ms->active; a; a = a->next)
                if (!strcmp(a->name, name))
                        return a;
        if (!(a = calloc(1, sizeof(*a))))
                return NULL;
        kf_strlcpy(a->name, name, sizeof(a->name));
        a->next    = ms->active;
        ms->active = a;
        return a;
}

model_t *msd_get(msd_t *ms, const char *name, uint32_t version, kf_err_t *err, char *errstr,
                 size_t errstr_size)
{
        ms_vers_t vl = {0};
        char path[4096], list[256];
        int scanned = 0;
        model_t *ret = NULL;
        ms_entry_t *e;

        if (!ms->dir) {
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

        if (version == 0) {
                ms_active_t *a = ms_active_get(ms, name);
                int64_t now    = kf_mono_us();
                if (!a) {
                        *err = KF_ERR_INTERNAL;
                        kf_errf(errstr, errstr_size, "out of memory");
                        goto out;
                }
                if (a->version == 0 || now - a->checked_us > MS_RESCAN_US) {
                        if (ms_scan(ms, name, &vl, errstr, errstr_size)) {
                                *err = KF_ERR_INTERNAL;
                                goto out;
                        }
                        scanned       = 1;
                        a->version    = vl.n ? vl.v[vl.n - 1] : 0;
                        a->checked_us = now;
                }
                if (a->version == 0) {
                        *err = KF_ERR_UNKNOWN_MODEL;
                        kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                        goto out;
                }
                version = a->version;
        }

        for (e = ms->entries; e; e = e->next)
                if (e->version == version && !strcmp(e->name, name))
                        break;
        if (!e) {
                model_t *m;
                char why[256], tail[32];
                snprintf(tail, sizeof(tail), "/%u.kmodel", version);
                if (ms_path(path, sizeof(path), ms->dir, name, tail) ||
                    (access(path, F_OK) != 0 && version == 1 &&
                     ms_path(path, sizeof(path), ms->dir, name, ".kmodel"))) {
                        *err = KF_ERR_INTERNAL;
                        kf_errf(errstr, errstr_size, "model directory path too long");
                        goto out;
                }
                if (access(path, F_OK) != 0) {
                        if (!scanned && ms_scan(ms, name, &vl, errstr, errstr_size)) {
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
                if (!(e = calloc(1, sizeof(*e)))) {
                        model_unref(m);
                        *err = KF_ERR_INTERNAL;
                        kf_errf(errstr, errstr_size, "out of memory");
                        goto out;
                }
                kf_strlcpy(e->name, name, sizeof(e->name));
                e->version = version;
                e->model   = m;
                if (m) {
                        m->version = version;
                        kf_info("loaded model %s v%u from %s (%u layers, %u->%u, %zu bytes)",
                                name, version, path, m->n_layers, m->input_dim, m->output_dim,
                                m->weight_bytes);
                } else {
                        /* Cached as failed: a corrupt file is reported once, not
                         * re-read for every job.  Replace the file under a new
                         * version to recover. */
                        kf_strlcpy(e->errmsg, why, sizeof(e->errmsg));
                        kf_error("cannot load model %s v%u: %s", name, version, why);
                }
                e->next     = ms->entries;
                ms->entries = e;
        }
        if (!e->model) {
                *err = KF_ERR_INTERNAL;
                kf_errf(errstr, errstr_size, "model '%s' version %u cannot be loaded: %s", name,
                        version, e->errmsg);
                goto out;
        }
        *err = KF_OK;
        ret  = model_ref(e->model);
out:
        ms_vers_free(&vl);
        return ret;
}
