/* model_registry_read.c - the model registry as the workers read it: key
 * names, the metadata hash, and verified blob reads (model_registry_read.h). */
#include "model_registry_read.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_util.h"
#include "model_registry_internal.h"

int mreg_key_blob(char *buf, const char *prefix, const char *name, uint32_t version)
{
        return kf_key_version(buf, prefix, "model", name, version);
}

int mreg_key_meta(char *buf, const char *prefix, const char *name)
{
        return kf_key(buf, prefix, "model-meta", name);
}

int mreg_key_names(char *buf, const char *prefix)
{
        return kf_key(buf, prefix, "model-names", NULL);
}

int mreg_channel(char *buf, const char *prefix)
{
        return kf_key(buf, prefix, "models", NULL);
}

void mreg_sha256_hex(const void *buf, size_t len, char out[MREG_SHA256_HEX])
{
        static const char hex[] = "0123456789abcdef";
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;

        /* EVP_Digest fails only when out of memory: report a digest that
         * matches nothing rather than garbage. */
        if (EVP_Digest(buf, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32) {
                memset(out, '-', 64);
                out[64] = '\0';
                return;
        }
        for (unsigned int i = 0; i < 32; i++) {
                out[2 * i] = hex[md[i] >> 4];
                out[2 * i + 1] = hex[md[i] & 15];
        }
        out[64] = '\0';
}

/* ---- metadata ---- */

void mreg_meta_free(mreg_meta_t *meta)
{
        if (!meta)
                return;
        for (uint32_t i = 0; i < meta->n_versions; i++)
                free(meta->versions[i].members);
        free(meta->versions);
        memset(meta, 0, sizeof(*meta));
}

const mreg_version_t *mreg_meta_version(const mreg_meta_t *meta, uint32_t version)
{
        for (uint32_t i = 0; i < meta->n_versions; i++)
                if (meta->versions[i].version == version)
                        return &meta->versions[i];
        return NULL;
}

void mreg_meta_versions_str(const mreg_meta_t *meta, char *buf, size_t size)
{
        size_t o = 0;

        if (size == 0)
                return;
        buf[0] = '\0';
        if (meta->n_versions == 0) {
                kf_strlcpy(buf, "none", size);
                return;
        }
        for (uint32_t i = 0; i < meta->n_versions && o + 16 < size; i++)
                o += (size_t)snprintf(buf + o, size - o, "%s%u", i ? ", " : "",
                                      meta->versions[i].version);
        if (meta->n_versions && o + 16 >= size && o + 4 < size)
                kf_strlcpy(buf + o, "...", size - o);
}

/* A whole decimal number in [0, max] from a counted string. */
static int mreg_parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
        char tmp[24];
        char *end;
        unsigned long long v;

        if (len == 0 || len >= sizeof(tmp) || s[0] == '-' || s[0] == '+' || s[0] == ' ')
                return -1;
        memcpy(tmp, s, len);
        tmp[len] = '\0';
        errno = 0;
        v = strtoull(tmp, &end, 10);
        if (errno || *end || v > max)
                return -1;
        *out = v;
        return 0;
}

/* The entry for version v, added (zeroed, kept sorted) if new. */
static mreg_version_t *mreg_meta_slot(mreg_meta_t *meta, uint32_t v)
{
        uint32_t i;
        mreg_version_t *nv;

        for (i = 0; i < meta->n_versions; i++) {
                if (meta->versions[i].version == v)
                        return &meta->versions[i];
                if (meta->versions[i].version > v)
                        break;
        }
        if (meta->n_versions >= MREG_MAX_VERSIONS)
                return NULL;
        nv = realloc(meta->versions, (meta->n_versions + 1) * sizeof(*nv));
        if (!nv)
                return NULL;
        meta->versions = nv;
        memmove(&nv[i + 1], &nv[i], (meta->n_versions - i) * sizeof(*nv));
        memset(&nv[i], 0, sizeof(nv[i]));
        nv[i].version = v;
        meta->n_versions++;
        return &nv[i];
}

/* One "{v}:{attr}" field. */
static int mreg_meta_version_field(mreg_meta_t *meta, const char *f, size_t flen, const char *val,
                                   size_t vlen, char *errstr, size_t errstr_size)
{
        const char *colon = memchr(f, ':', flen);
        const char *attr;
        size_t alen;
        uint64_t v, x;
        mreg_version_t *mv;

        if (!colon || mreg_parse_u64(f, (size_t)(colon - f), UINT32_MAX, &v) != 0 || v == 0)
                return 0; /* not a version field: ignored */
        attr = colon + 1;
        alen = flen - (size_t)(colon - f) - 1;
#define ATTR_IS(s) (alen == sizeof(s) - 1 && !memcmp(attr, s, alen))
        if (!ATTR_IS("size") && !ATTR_IS("sha256") && !ATTR_IS("kind") && !ATTR_IS("input_dim") &&
            !ATTR_IS("output_dim") && !ATTR_IS("created") && !ATTR_IS("layers") &&
            !ATTR_IS("members"))
                return 0;
        if (!(mv = mreg_meta_slot(meta, (uint32_t)v)))
                return kf_errf(errstr, errstr_size,
                               "model '%s': too many versions or out of memory", meta->name);
        if (ATTR_IS("sha256")) {
                if (vlen != 64)
                        return kf_errf(errstr, errstr_size,
                                       "model '%s' version %u: sha256 has %zu chars, not 64",
                                       meta->name, mv->version, vlen);
                memcpy(mv->sha256, val, 64);
                mv->sha256[64] = '\0';
        } else if (ATTR_IS("kind")) {
                if (vlen == 3 && !memcmp(val, "mlp", 3))
                        mv->kind = MODEL_KIND_MLP;
                else if (vlen == 8 && !memcmp(val, "ensemble", 8))
                        mv->kind = MODEL_KIND_ENSEMBLE;
                else
                        return kf_errf(errstr, errstr_size,
                                       "model '%s' version %u: unknown kind '%.*s'", meta->name,
                                       mv->version, (int)(vlen > 20 ? 20 : vlen), val);
        } else if (ATTR_IS("members")) {
                free(mv->members);
                if (!(mv->members = malloc(vlen + 1)))
                        return kf_errf(errstr, errstr_size, "out of memory");
                memcpy(mv->members, val, vlen);
                mv->members[vlen] = '\0';
        } else {
                if (mreg_parse_u64(val, vlen, INT64_MAX, &x) != 0)
                        return kf_errf(errstr, errstr_size,
                                       "model '%s' version %u: %.*s is not a number", meta->name,
                                       mv->version, (int)alen, attr);
                if (ATTR_IS("size"))
                        mv->size = x;
                else if (ATTR_IS("created"))
                        mv->created_ms = (int64_t)x;
                else if (x > UINT32_MAX)
                        return kf_errf(errstr, errstr_size, "model '%s' version %u: %.*s too large",
                                       meta->name, mv->version, (int)alen, attr);
                else if (ATTR_IS("input_dim"))
                        mv->input_dim = (uint32_t)x;
                else if (ATTR_IS("output_dim"))
                        mv->output_dim = (uint32_t)x;
                else
                        mv->layers = (uint32_t)x;
        }
#undef ATTR_IS
        return 0;
}

int mreg_meta_parse(mreg_meta_t *meta, const char *name, size_t n, const char *const *strs,
                    const size_t *lens, char *errstr, size_t errstr_size)
{
        memset(meta, 0, sizeof(*meta));
        kf_strlcpy(meta->name, name, sizeof(meta->name));
        for (size_t i = 0; i + 1 < n; i += 2) {
                const char *f = strs[i], *val = strs[i + 1];
                size_t flen = lens[i], vlen = lens[i + 1];
                uint64_t x;

#define FIELD_IS(s) (flen == sizeof(s) - 1 && !memcmp(f, s, flen))
                if (FIELD_IS("active") || FIELD_IS("next")) {
                        if (mreg_parse_u64(val, vlen, UINT32_MAX, &x) != 0)
                                goto bad_number;
                        if (FIELD_IS("active"))
                                meta->active = (uint32_t)x;
                        else
                                meta->next = (uint32_t)x;
                } else if (FIELD_IS("seq")) {
                        if (mreg_parse_u64(val, vlen, INT64_MAX, &x) != 0)
                                goto bad_number;
                        meta->seq = x;
                } else if (FIELD_IS("history")) {
                        size_t s = 0;
                        meta->n_history = 0;
                        while (s < vlen) {
                                size_t e = s;
                                while (e < vlen && val[e] != ',')
                                        e++;
                                if (mreg_parse_u64(val + s, e - s, UINT32_MAX, &x) != 0)
                                        goto bad_number;
                                if (meta->n_history == MREG_HISTORY_MAX) {
                                        memmove(meta->history, meta->history + 1,
                                                (MREG_HISTORY_MAX - 1) * sizeof(uint32_t));
                                        meta->n_history--;
                                }
                                meta->history[meta->n_history++] = (uint32_t)x;
                                s = e + 1;
                        }
                } else if (mreg_meta_version_field(meta, f, flen, val, vlen, errstr, errstr_size) !=
                           0) {
                        mreg_meta_free(meta);
                        return -1;
                }
#undef FIELD_IS
                continue;
        bad_number:
                kf_errf(errstr, errstr_size,
                        "model '%s': metadata field %.*s = '%.*s' is malformed", name,
                        (int)(flen > 40 ? 40 : flen), f, (int)(vlen > 40 ? 40 : vlen), val);
                mreg_meta_free(meta);
                return -1;
        }
        /* A version is what has a checksum: a field left over from a
         * half-written hash (never by the scripts) does not make one. */
        for (uint32_t i = 0; i < meta->n_versions;) {
                if (meta->versions[i].sha256[0]) {
                        i++;
                        continue;
                }
                free(meta->versions[i].members);
                memmove(&meta->versions[i], &meta->versions[i + 1],
                        (meta->n_versions - i - 1) * sizeof(meta->versions[0]));
                meta->n_versions--;
        }
        return 0;
}

/* ---- Redis replies (model_registry_internal.h) ---- */

/* Redis busy for now (loading its data after a restart, running a long
 * script, a replica without its master) is MREG_IO: like a lost
 * connection, worth another try, not a verdict on the model. */
mreg_rc_t mreg_reply_error(const redisReply *r, char *errstr, size_t errstr_size)
{
        static const struct {
                const char *tag;
                mreg_rc_t rc;
        } tags[] = {{"REFUSED ", MREG_REFUSED},
                    {"NOTFOUND ", MREG_NOT_FOUND},
                    {"LOADING ", MREG_IO},
                    {"BUSY ", MREG_IO},
                    {"MASTERDOWN ", MREG_IO}};

        for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
                size_t tl = strlen(tags[i].tag);
                if (r->len >= tl && !memcmp(r->str, tags[i].tag, tl)) {
                        if (tags[i].rc == MREG_IO) /* Redis' own words, whole */
                                kf_errf(errstr, errstr_size, "registry: %.*s", (int)r->len, r->str);
                        else
                                kf_errf(errstr, errstr_size, "%.*s", (int)(r->len - tl),
                                        r->str + tl);
                        return tags[i].rc;
                }
        }
        kf_errf(errstr, errstr_size, "registry: %.*s", (int)r->len, r->str);
        return MREG_REFUSED;
}

mreg_rc_t mreg_io_error(redisContext *c, const char *what, char *errstr, size_t errstr_size)
{
        kf_errf(errstr, errstr_size, "registry: %s: %s", what,
                c->errstr[0] ? c->errstr : "I/O error");
        return MREG_IO;
}

/* ---- reads ---- */

mreg_rc_t mreg_meta_get(redisContext *c, const char *prefix, const char *name, mreg_meta_t *meta,
                        char *errstr, size_t errstr_size)
{
        char key[KF_KEY_MAX];
        const char **strs = NULL;
        size_t *lens = NULL;
        redisReply *r;
        mreg_rc_t rc = MREG_OK;

        memset(meta, 0, sizeof(*meta));
        if (mreg_key_meta(key, prefix, name) < 0) {
                kf_errf(errstr, errstr_size, "model name '%s' too long for a key", name);
                return MREG_REFUSED;
        }
        if (!(r = redisCommand(c, "HGETALL %s", key)))
                return mreg_io_error(c, "HGETALL", errstr, errstr_size);
        if (r->type == REDIS_REPLY_ERROR) {
                rc = mreg_reply_error(r, errstr, errstr_size);
                goto out;
        }
        if (r->type != REDIS_REPLY_ARRAY) {
                kf_errf(errstr, errstr_size, "registry: HGETALL %s: unexpected reply", key);
                rc = MREG_IO;
                goto out;
        }
        if (r->elements == 0) {
                kf_errf(errstr, errstr_size, "unknown model '%s'", name);
                rc = MREG_NOT_FOUND;
                goto out;
        }
        strs = malloc(r->elements * sizeof(*strs));
        lens = malloc(r->elements * sizeof(*lens));
        if (!strs || !lens) {
                kf_errf(errstr, errstr_size, "out of memory");
                rc = MREG_REFUSED;
                goto out;
        }
        for (size_t i = 0; i < r->elements; i++) {
                strs[i] = r->element[i]->str ? r->element[i]->str : "";
                lens[i] = r->element[i]->str ? r->element[i]->len : 0;
        }
        if (mreg_meta_parse(meta, name, r->elements, strs, lens, errstr, errstr_size) != 0)
                rc = MREG_REFUSED;
out:
        free(strs);
        free(lens);
        freeReplyObject(r);
        return rc;
}

/* ---- blobs ---- */

int mreg_blob_verify(const void *buf, size_t len, const mreg_version_t *v, char *errstr,
                     size_t errstr_size)
{
        char sha[MREG_SHA256_HEX];

        if ((uint64_t)len != v->size)
                return kf_errf(errstr, errstr_size,
                               "blob has %zu bytes, the registry says %" PRIu64 "%s", len, v->size,
                               (uint64_t)len < v->size ? ": truncated" : "");
        mreg_sha256_hex(buf, len, sha);
        if (strcmp(sha, v->sha256) != 0)
                return kf_errf(errstr, errstr_size,
                               "blob sha256 is %.16s..., the registry says %.16s...: corrupt", sha,
                               v->sha256);
        return 0;
}

int mreg_blob_decode(const void *buf, size_t len, const char *name, model_file_t *out, char *errstr,
                     size_t errstr_size)
{
        const char *inside;

        if (model_file_decode(buf, len, out, errstr, errstr_size) != 0)
                return -1;
        inside = out->kind == MODEL_KIND_MLP ? out->mlp->name : out->ens->name;
        if (strcmp(inside, name) != 0) {
                kf_errf(errstr, errstr_size, "the file names its model '%s', not '%s'", inside,
                        name);
                model_file_clear(out);
                return -1;
        }
        return 0;
}

mreg_rc_t mreg_blob_get(redisContext *c, const char *prefix, const char *name,
                        const mreg_version_t *v, char **buf, size_t *len, char *errstr,
                        size_t errstr_size)
{
        char key[KF_KEY_MAX];
        redisReply *r;
        mreg_rc_t rc = MREG_OK;

        *buf = NULL;
        *len = 0;
        if (mreg_key_blob(key, prefix, name, v->version) < 0) {
                kf_errf(errstr, errstr_size, "model name '%s' too long for a key", name);
                return MREG_REFUSED;
        }
        if (!(r = redisCommand(c, "GET %s", key)))
                return mreg_io_error(c, "GET", errstr, errstr_size);
        if (r->type == REDIS_REPLY_ERROR) {
                rc = mreg_reply_error(r, errstr, errstr_size);
        } else if (r->type == REDIS_REPLY_NIL) {
                kf_errf(errstr, errstr_size, "model '%s' version %u: its blob %s is missing", name,
                        v->version, key);
                rc = MREG_NOT_FOUND;
        } else if (r->type != REDIS_REPLY_STRING) {
                kf_errf(errstr, errstr_size, "model '%s' version %u: %s is not a string", name,
                        v->version, key);
                rc = MREG_REFUSED;
        } else if (mreg_blob_verify(r->str, r->len, v, errstr, errstr_size) != 0) {
                rc = MREG_REFUSED;
        } else if (!(*buf = malloc(r->len ? r->len : 1))) {
                kf_errf(errstr, errstr_size, "out of memory for a %zu-byte blob", r->len);
                rc = MREG_REFUSED;
        } else {
                memcpy(*buf, r->str, r->len);
                *len = r->len;
        }
        freeReplyObject(r);
        return rc;
}
