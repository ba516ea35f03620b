/* model_store.c - the worker's model lookup: from the registry
 * (model_store_registry.c), or lazily from a directory, cached, rescanning a
 * name's versions at most every MS_RESCAN_US. */
#include "model_store.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kf_log.h"
#include "kf_util.h"
#include "model_store_registry.h"

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

struct ms_store_s {
        msr_t *reg; /* registry mode; NULL in directory mode */
        char *dir;
        ms_entry_t *entries;
        ms_active_t *active;
};

ms_store_t *ms_store_new_registry(const char *redis_url, const char *prefix, int timeout_ms,
                                  int resync_ms, char *errstr, size_t errstr_size)
{
        ms_store_t *ms = calloc(1, sizeof(*ms));
        if (!ms) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        if (!(ms->reg = msr_new(redis_url, prefix, timeout_ms, resync_ms, errstr, errstr_size))) {
                free(ms);
                return NULL;
        }
        return ms;
}

ms_store_t *ms_store_new(const char *dir)
{
        ms_store_t *ms = calloc(1, sizeof(*ms));
        if (!ms)
                return NULL;
        if (dir && !(ms->dir = strdup(dir))) {
                free(ms);
                return NULL;
        }
        return ms;
}

void ms_store_destroy(ms_store_t *ms)
{
        if (!ms)
                return;
        msr_destroy(ms->reg);
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

/* Lists the versions of name on disk, ascending, into vers (at most max).
 * Returns the count. */
static int ms_scan(const ms_store_t *ms, const char *name, uint32_t *vers, int max)
{
        char path[4096];
        struct stat st;
        struct dirent *de;
        DIR *d;
        int n = 0;

        snprintf(path, sizeof(path), "%s/%s", ms->dir, name);
        if ((d = opendir(path))) {
                while ((de = readdir(d)) && n < max) {
                        int64_t v;
                        char num[32];
                        const char *dot = strrchr(de->d_name, '.');
                        size_t len      = dot ? (size_t)(dot - de->d_name) : 0;
                        if (!dot || strcmp(dot, ".kmodel") || len == 0 || len >= sizeof(num))
                                continue;
                        memcpy(num, de->d_name, len);
                        num[len] = '\0';
                        if (kf_parse_i64(num, 1, UINT32_MAX, &v) == 0)
                                vers[n++] = (uint32_t)v;
                }
                closedir(d);
        }
        if (n == 0) {
                snprintf(path, sizeof(path), "%s/%s.kmodel", ms->dir, name);
                if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
                        vers[n++] = 1;
        }
        for (int i = 1; i < n; i++) /* insertion sort: a handful of versions */
                for (int j = i; j > 0 && vers[j - 1] > vers[j]; j--) {
                        uint32_t t  = vers[j];
                        vers[j]     = vers[j - 1];
                        vers[j - 1] = t;
                }
        return n;
}

static void ms_versions_str(const uint32_t *vers, int n, char *buf, size_t size)
{
        size_t o = 0;
        buf[0]   = '\0';
        for (int i = 0; i < n && o + 12 < size; i++)
                o += (size_t)snprintf(buf + o, size - o, "%s%u", i ? ", " : "", vers[i]);
}

static ms_active_t *ms_active_get(ms_store_t *ms, const char *name)
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

model_t *ms_store_get(ms_store_t *ms, const char *name, uint32_t version, kf_err_t *err,
                      char *errstr, size_t errstr_size)
{
        uint32_t vers[256];
        char path[4096], list[256];
        int nvers = -1;
        ms_entry_t *e;

        if (ms->reg)
                return msr_get(ms->reg, name, version, err, errstr, errstr_size);
        if (!ms->dir) {
                *err = KF_ERR_UNKNOWN_MODEL;
                kf_errf(errstr, errstr_size,
                        "unknown model '%s': this worker has no model directory", name);
                return NULL;
        }

        if (version == 0) {
                ms_active_t *a = ms_active_get(ms, name);
                int64_t now    = kf_mono_us();
                if (!a) {
                        *err = KF_ERR_INTERNAL;
                        kf_errf(errstr, errstr_size, "out of memory");
                        return NULL;
                }
                if (a->version == 0 || now - a->checked_us > MS_RESCAN_US) {
                        nvers         = ms_scan(ms, name, vers, 256);
                        a->version    = nvers ? vers[nvers - 1] : 0;
                        a->checked_us = now;
                }
                if (a->version == 0) {
                        *err = KF_ERR_UNKNOWN_MODEL;
                        kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                        return NULL;
                }
                version = a->version;
        }

        for (e = ms->entries; e; e = e->next)
                if (e->version == version && !strcmp(e->name, name))
                        break;
        if (!e) {
                model_t *m;
                char why[256];
                snprintf(path, sizeof(path), "%s/%s/%u.kmodel", ms->dir, name, version);
                if (access(path, F_OK) != 0 && version == 1)
                        snprintf(path, sizeof(path), "%s/%s.kmodel", ms->dir, name);
                if (access(path, F_OK) != 0) {
                        if (nvers < 0)
                                nvers = ms_scan(ms, name, vers, 256);
                        ms_versions_str(vers, nvers, list, sizeof(list));
                        *err = KF_ERR_UNKNOWN_MODEL;
                        if (nvers)
                                kf_errf(errstr, errstr_size,
                                        "model '%s' has no version %u (versions: %s)", name,
                                        version, list);
                        else
                                kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                        return NULL;
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
                        return NULL;
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
                return NULL;
        }
        *err = KF_OK;
        return model_ref(e->model);
}
