/* model_registry.c - the Redis model registry: key names, the metadata hash,
 * verified blob reads, and the Lua scripts that change it atomically. */
#include "model_registry.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_util.h"

int mreg_key_blob(char *buf, const char *prefix, const char *name, uint32_t version)
{
        int n = snprintf(buf, KF_KEY_MAX, "%smodel:%s:%u", prefix, name, version);
        return n < 0 || n >= KF_KEY_MAX ? -1 : n;
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

/* Maps an error reply of a registry script ("REFUSED why", "NOTFOUND why")
 * or of Redis itself to a return code and a message.  Redis busy for now
 * (loading its data after a restart, running a long script, a replica
 * without its master) is MREG_IO: like a lost connection, worth another
 * try, not a verdict on the model. */
static mreg_rc_t mreg_reply_error(const redisReply *r, char *errstr, size_t errstr_size)
{
        static const struct {
                const char *tag;
                mreg_rc_t rc;
        } tags[] = {{"REFUSED ", MREG_REFUSED}, {"NOTFOUND ", MREG_NOT_FOUND},
                    {"LOADING ", MREG_IO},      {"BUSY ", MREG_IO},
                    {"MASTERDOWN ", MREG_IO}};

        for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
                size_t tl = strlen(tags[i].tag);
                if (r->len >= tl && !memcmp(r->str, tags[i].tag, tl)) {
                        if (tags[i].rc == MREG_IO) /* Redis' own words, whole */
                                kf_errf(errstr, errstr_size, "registry: %.*s", (int)r->len,
                                        r->str);
                        else
                                kf_errf(errstr, errstr_size, "%.*s", (int)(r->len - tl),
                                        r->str + tl);
                        return tags[i].rc;
                }
        }
        kf_errf(errstr, errstr_size, "registry: %.*s", (int)r->len, r->str);
        return MREG_REFUSED;
}

static mreg_rc_t mreg_io_error(redisContext *c, const char *what, char *errstr, size_t errstr_size)
{
        kf_errf(errstr, errstr_size, "registry: %s: %s", what,
                c->errstr[0] ? c->errstr : "I/O error");
        return MREG_IO;
}

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

/* ---- changes: the scripts ----
 *
 * Every script gets ARGV[1] = key prefix, ARGV[2] = model name, and builds
 * the key names itself: which other models' metadata an ensemble check
 * reads is known only inside the script.  (So the registry needs one Redis,
 * not a cluster; kinfer's results and counters do too.)  A refusal is an
 * error reply "REFUSED why" or "NOTFOUND why", returned before any write.
 *
 * The prelude's helpers: resolve() is the version a member reference means
 * while root_v pictures itself active (pinned, else the member's active
 * version); walk() goes depth-first over the ensemble graph, a node met again
 * on its path being a cycle, with done[] keeping a shared sub-ensemble from
 * being walked once per path; check_dependents() makes active ensembles that
 * follow n (no version) fit n's new dims. */

#define MREG_LUA_PRELUDE                                                                           \
        "local P, NAME = ARGV[1], ARGV[2]\n"                                                       \
        "local function mkey(n) return P .. 'model-meta:' .. n end\n"                              \
        "local function bkey(n, v) return P .. 'model:' .. n .. ':' .. v end\n"                    \
        "local function hget(n, f) return redis.call('HGET', mkey(n), f) end\n"                    \
        "local function num(x) return tonumber(x) or 0 end\n"                                      \
        "local function exists(n) return redis.call('EXISTS', mkey(n)) == 1 end\n"                 \
        "local function has(n, v) return redis.call('HEXISTS', mkey(n), v .. ':sha256') == 1 "     \
        "end\n"                                                                                    \
        "local function refuse(m) return redis.error_reply('REFUSED ' .. m) end\n"                 \
        "local function notfound(m) return redis.error_reply('NOTFOUND ' .. m) end\n"              \
        "local function versions(n)\n"                                                             \
        "  local t = {}\n"                                                                         \
        "  for _, f in ipairs(redis.call('HKEYS', mkey(n))) do\n"                                  \
        "    local v = string.match(f, '^(%d+):sha256$')\n"                                        \
        "    if v then t[#t + 1] = tonumber(v) end\n"                                              \
        "  end\n"                                                                                  \
        "  table.sort(t)\n"                                                                        \
        "  return t\n"                                                                             \
        "end\n"                                                                                    \
        "local function vlist(n)\n"                                                                \
        "  local t = versions(n)\n"                                                                \
        "  if #t == 0 then return 'none' end\n"                                                    \
        "  return table.concat(t, ', ')\n"                                                         \
        "end\n"                                                                                    \
        "local function need_version(n, v)\n"                                                      \
        "  if not exists(n) then return notfound(\"unknown model '\" .. n .. \"'\") end\n"         \
        "  if not has(n, v) then return notfound(\"model '\" .. n .. \"' has no version \" .. v "  \
        ".. ' (versions: ' .. vlist(n) .. ')') end\n"                                              \
        "  return nil\n"                                                                           \
        "end\n"                                                                                    \
        "local function members_of(n, v)\n"                                                        \
        "  if hget(n, v .. ':kind') ~= 'ensemble' then return nil end\n"                           \
        "  local ok, t = pcall(cjson.decode, hget(n, v .. ':members') or '')\n"                    \
        "  if ok and type(t) == 'table' then return t end\n"                                       \
        "  return {}\n"                                                                            \
        "end\n"                                                                                    \
        "local function resolve(root, root_v, m)\n"                                                \
        "  local v = num(m.version)\n"                                                             \
        "  if v ~= 0 then return v end\n"                                                          \
        "  if m.model == root then return root_v end\n"                                            \
        "  return num(hget(m.model, 'active'))\n"                                                  \
        "end\n"                                                                                    \
        "local function check_members(root, root_v, members, din, dout)\n"                         \
        "  for _, m in ipairs(members) do\n"                                                       \
        "    local v = resolve(root, root_v, m)\n"                                                 \
        "    if not exists(m.model) then\n"                                                        \
        "      return \"member '\" .. m.model .. \"' is not in the registry\"\n"                   \
        "    end\n"                                                                                \
        "    if v == 0 then\n"                                                                     \
        "      return \"member '\" .. m.model .. \"' has no active version: pin a version or \" "  \
        ".. 'activate one'\n"                                                                      \
        "    end\n"                                                                                \
        "    if not has(m.model, v) then\n"                                                        \
        "      return \"member '\" .. m.model .. \"' has no version \" .. v .. ' (versions: ' .. " \
        "vlist(m.model) .. ')'\n"                                                                  \
        "    end\n"                                                                                \
        "    local mi = hget(m.model, v .. ':input_dim') or '?'\n"                                 \
        "    local mo = hget(m.model, v .. ':output_dim') or '?'\n"                                \
        "    if mi ~= din or mo ~= dout then\n"                                                    \
        "      return \"member '\" .. m.model .. \"' version \" .. v .. ' is ' .. mi .. '->' .. "  \
        "mo .. ', the ensemble is ' .. din .. '->' .. dout\n"                                      \
        "    end\n"                                                                                \
        "  end\n"                                                                                  \
        "  return nil\n"                                                                           \
        "end\n"                                                                                    \
        "local function walk(root, root_v, root_members, n, v, path, done)\n"                      \
        "  local key = n .. ' v' .. v\n"                                                           \
        "  for i = 1, #path do\n"                                                                  \
        "    if path[i] == key then\n"                                                             \
        "      return 'cycle: ' .. table.concat(path, ' -> ') .. ' -> ' .. key\n"                  \
        "    end\n"                                                                                \
        "  end\n"                                                                                  \
        "  if done[key] then return nil end\n"                                                     \
        "  local members = nil\n"                                                                  \
        "  if n == root and v == root_v and root_members then members = root_members\n"            \
        "  else members = members_of(n, v) end\n"                                                  \
        "  if not members then done[key] = true return nil end\n"                                  \
        "  if #path >= 8 then\n"                                                                   \
        "    return 'ensembles nested more than 8 deep: ' .. table.concat(path, ' -> ') .. "       \
        "' -> ' .. key\n"                                                                          \
        "  end\n"                                                                                  \
        "  path[#path + 1] = key\n"                                                                \
        "  for _, m in ipairs(members) do\n"                                                       \
        "    local mv = resolve(root, root_v, m)\n"                                                \
        "    if mv ~= 0 then\n"                                                                    \
        "      local err = walk(root, root_v, root_members, m.model, mv, path, done)\n"            \
        "      if err then return err end\n"                                                       \
        "    end\n"                                                                                \
        "  end\n"                                                                                  \
        "  path[#path] = nil\n"                                                                    \
        "  done[key] = true\n"                                                                     \
        "  return nil\n"                                                                           \
        "end\n"                                                                                    \
        "local function check_dependents(n, v, din, dout)\n"                                       \
        "  for _, e in ipairs(redis.call('SMEMBERS', P .. 'model-names')) do\n"                    \
        "    local a = num(hget(e, 'active'))\n"                                                   \
        "    local ms = nil\n"                                                                     \
        "    if e ~= n and a ~= 0 then ms = members_of(e, a) end\n"                                \
        "    for _, m in ipairs(ms or {}) do\n"                                                    \
        "      if m.model == n and num(m.version) == 0 then\n"                                     \
        "        local ei = hget(e, a .. ':input_dim') or '?'\n"                                   \
        "        local eo = hget(e, a .. ':output_dim') or '?'\n"                                  \
        "        if ei ~= din or eo ~= dout then\n"                                                \
        "          return \"ensemble '\" .. e .. \"' version \" .. a .. \" follows '\" .. n .. "   \
        "\"' and is \" .. ei .. '->' .. eo .. \", but '\" .. n .. \"' version \" .. v .. "         \
        "' is ' .. din .. '->' .. dout .. ' (--force to activate it anyway)'\n"                    \
        "        end\n"                                                                            \
        "      end\n"                                                                              \
        "    end\n"                                                                                \
        "  end\n"                                                                                  \
        "  return nil\n"                                                                           \
        "end\n"                                                                                    \
        "local function check_activation(n, v, din, dout, members, force)\n"                       \
        "  local err = nil\n"                                                                      \
        "  if members then\n"                                                                      \
        "    err = check_members(n, v, members, din, dout)\n"                                      \
        "    if not err then err = walk(n, v, members, n, v, {}, {}) end\n"                        \
        "  end\n"                                                                                  \
        "  if not err and force ~= '1' then err = check_dependents(n, v, din, dout) end\n"         \
        "  return err\n"                                                                           \
        "end\n"                                                                                    \
        "local function set_active(n, v)\n"                                                        \
        "  local cur = num(hget(n, 'active'))\n"                                                   \
        "  if cur == v then return cur end\n"                                                      \
        "  if cur ~= 0 then\n"                                                                     \
        "    local h = {}\n"                                                                       \
        "    for x in string.gmatch(hget(n, 'history') or '', '%d+') do h[#h + 1] = x end\n"       \
        "    h[#h + 1] = tostring(cur)\n"                                                          \
        "    while #h > 32 do table.remove(h, 1) end\n"                                            \
        "    redis.call('HSET', mkey(n), 'history', table.concat(h, ','))\n"                       \
        "  end\n"                                                                                  \
        "  redis.call('HSET', mkey(n), 'active', v)\n"                                             \
        "  return cur\n"                                                                           \
        "end\n"                                                                                    \
        "local function announce(ev, n, v)\n"                                                      \
        "  redis.call('HINCRBY', mkey(n), 'seq', 1)\n"                                             \
        "  redis.call('PUBLISH', P .. 'models', ev .. ' ' .. n .. ' ' .. v)\n"                     \
        "end\n"

/* ARGV[3] blob, [4] sha256, [5] kind, [6] input_dim, [7] output_dim,
 * [8] layers, [9] members JSON ("" for an mlp), [10] activate, [11] force.
 * Returns the new version. */
static const char mreg_push_lua[] = MREG_LUA_PRELUDE
    "local mk = mkey(NAME)\n"
    "local v = num(hget(NAME, 'next')) + 1\n"
    "if #versions(NAME) >= 4096 then\n"
    "  return refuse(\"model '\" .. NAME .. \"' has 4096 versions: rm some first\")\n"
    "end\n"
    "local members = nil\n"
    "if ARGV[5] == 'ensemble' then members = cjson.decode(ARGV[9]) end\n"
    "local err = nil\n"
    "if members then\n"
    "  err = check_members(NAME, v, members, ARGV[6], ARGV[7])\n"
    "  if not err then err = walk(NAME, v, members, NAME, v, {}, {}) end\n"
    "end\n"
    "if not err and ARGV[10] == '1' and ARGV[11] ~= '1' then\n"
    "  err = check_dependents(NAME, v, ARGV[6], ARGV[7])\n"
    "end\n"
    "if err then return refuse(err) end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('SET', bkey(NAME, v), ARGV[3])\n"
    "redis.call('HSET', mk, 'next', v, v .. ':size', string.len(ARGV[3]), v .. ':sha256', "
    "ARGV[4], v .. ':kind', ARGV[5], v .. ':input_dim', ARGV[6], v .. ':output_dim', ARGV[7], "
    "v .. ':created', now)\n"
    "if members then redis.call('HSET', mk, v .. ':members', ARGV[9])\n"
    "else redis.call('HSET', mk, v .. ':layers', ARGV[8]) end\n"
    "if redis.call('HEXISTS', mk, 'active') == 0 then redis.call('HSET', mk, 'active', 0) end\n"
    "redis.call('SADD', P .. 'model-names', NAME)\n"
    "announce('push', NAME, v)\n"
    "if ARGV[10] == '1' then\n"
    "  set_active(NAME, v)\n"
    "  announce('activate', NAME, v)\n"
    "end\n"
    "return v\n";

/* ARGV[3] version, [4] force.  Returns the version that was active. */
static const char mreg_activate_lua[] =
    MREG_LUA_PRELUDE "local v = num(ARGV[3])\n"
                     "local nf = need_version(NAME, v)\n"
                     "if nf then return nf end\n"
                     "local err = check_activation(NAME, v, hget(NAME, v .. ':input_dim'), "
                     "hget(NAME, v .. ':output_dim'), members_of(NAME, v), ARGV[4])\n"
                     "if err then return refuse(err) end\n"
                     "local prev = set_active(NAME, v)\n"
                     "if prev ~= v then announce('activate', NAME, v) end\n"
                     "return prev\n";

/* ARGV[3] force.  Returns {from, to}. */
static const char mreg_rollback_lua[] = MREG_LUA_PRELUDE
    "if not exists(NAME) then return notfound(\"unknown model '\" .. NAME .. \"'\") end\n"
    "local cur = num(hget(NAME, 'active'))\n"
    "local h = {}\n"
    "for x in string.gmatch(hget(NAME, 'history') or '', '%d+') do h[#h + 1] = x end\n"
    "while #h > 0 do\n"
    "  local v = tonumber(table.remove(h))\n"
    "  if v ~= cur and has(NAME, v) then\n"
    "    local err = check_activation(NAME, v, hget(NAME, v .. ':input_dim'), "
    "hget(NAME, v .. ':output_dim'), members_of(NAME, v), ARGV[3])\n"
    "    if err then return refuse('cannot roll back to version ' .. v .. ': ' .. err) end\n"
    "    redis.call('HSET', mkey(NAME), 'history', table.concat(h, ','), 'active', v)\n"
    "    announce('rollback', NAME, v)\n"
    "    return {cur, v}\n"
    "  end\n"
    "end\n"
    "return refuse(\"model '\" .. NAME .. \"' has no earlier active version to roll back to\")\n";

/* ARGV[3] version, [4] force.  Returns 1 if it was the active version. */
static const char mreg_rm_lua[] = MREG_LUA_PRELUDE
    "local v = num(ARGV[3])\n"
    "local nf = need_version(NAME, v)\n"
    "if nf then return nf end\n"
    "local mk = mkey(NAME)\n"
    "local cur = num(hget(NAME, 'active'))\n"
    "if ARGV[4] ~= '1' then\n"
    "  if v == cur then\n"
    "    return refuse('version ' .. v .. \" is the active version of '\" .. NAME .. \"': \" .. "
    "'activate another first, or --force')\n"
    "  end\n"
    "  for _, e in ipairs(redis.call('SMEMBERS', P .. 'model-names')) do\n"
    "    for _, u in ipairs(versions(e)) do\n"
    "      for _, m in ipairs(members_of(e, u) or {}) do\n"
    "        if m.model == NAME and num(m.version) == v then\n"
    "          return refuse('version ' .. v .. \" of '\" .. NAME .. \"' is a pinned member of '\" "
    ".. e .. \"' version \" .. u .. ' (--force to remove it anyway)')\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', bkey(NAME, v))\n"
    "local pre = v .. ':'\n"
    "for _, f in ipairs(redis.call('HKEYS', mk)) do\n"
    "  if string.sub(f, 1, string.len(pre)) == pre then redis.call('HDEL', mk, f) end\n"
    "end\n"
    "local h = {}\n"
    "for x in string.gmatch(hget(NAME, 'history') or '', '%d+') do\n"
    "  if tonumber(x) ~= v then h[#h + 1] = x end\n"
    "end\n"
    "redis.call('HSET', mk, 'history', table.concat(h, ','))\n"
    "if v == cur then redis.call('HSET', mk, 'active', 0) end\n"
    "announce('rm', NAME, v)\n"
    "if v == cur then return 1 end\n"
    "return 0\n";

/* EVAL script with ARGV = prefix, name, extra[0..n_extra).  Returns the reply
 * (caller frees) or NULL with *rc and errstr set. */
static redisReply *mreg_eval(redisContext *c, const char *script, const char *prefix,
                             const char *name, int n_extra, const char *const *extra,
                             const size_t *extra_len, mreg_rc_t *rc, char *errstr,
                             size_t errstr_size)
{
        const char *argv[16];
        size_t lens[16];
        int argc = 0;
        redisReply *r;

        argv[argc] = "EVAL";
        lens[argc++] = 4;
        argv[argc] = script;
        lens[argc++] = strlen(script);
        argv[argc] = "0";
        lens[argc++] = 1;
        argv[argc] = prefix;
        lens[argc++] = strlen(prefix);
        argv[argc] = name;
        lens[argc++] = strlen(name);
        for (int i = 0; i < n_extra; i++) {
                argv[argc] = extra[i];
                lens[argc++] = extra_len ? extra_len[i] : strlen(extra[i]);
        }
        if (!(r = redisCommandArgv(c, argc, argv, lens))) {
                *rc = mreg_io_error(c, "EVAL", errstr, errstr_size);
                return NULL;
        }
        if (r->type == REDIS_REPLY_ERROR) {
                *rc = mreg_reply_error(r, errstr, errstr_size);
                freeReplyObject(r);
                return NULL;
        }
        *rc = MREG_OK;
        return r;
}

static int mreg_name_ok(const char *name, char *errstr, size_t errstr_size)
{
        if (!name || !job_name_valid(name, strnlen(name, JOB_MODEL_MAX + 1), JOB_MODEL_MAX))
                return kf_errf(errstr, errstr_size,
                               "'%s' is not a model name: 1..%d chars of [A-Za-z0-9._:-]",
                               name ? name : "", JOB_MODEL_MAX);
        return 0;
}

/* The members of an ensemble as the JSON the scripts read. */
static char *mreg_members_json(const model_ens_spec_t *spec)
{
        size_t cap = 64 + (size_t)spec->n_members * (JOB_MODEL_MAX + 80), o = 0;
        char *s = malloc(cap);

        if (!s)
                return NULL;
        o += (size_t)snprintf(s + o, cap - o, "[");
        for (uint32_t i = 0; i < spec->n_members; i++)
                o += (size_t)snprintf(s + o, cap - o,
                                      "%s{\"model\":\"%s\",\"version\":%u,\"weight\":%.17g}",
                                      i ? "," : "", spec->members[i].model,
                                      spec->members[i].version, spec->members[i].weight);
        snprintf(s + o, cap - o, "]");
        return s;
}

mreg_rc_t mreg_push(redisContext *c, const char *prefix, const char *name, const void *blob,
                    size_t len, int activate, int force, uint32_t *version, char *errstr,
                    size_t errstr_size)
{
        char sha[MREG_SHA256_HEX], din[16], dout[16], layers[16], err[512];
        const char *extra[9];
        size_t extra_len[9];
        model_file_t f;
        char *members = NULL;
        redisReply *r;
        mreg_rc_t rc;

        if (mreg_name_ok(name, errstr, errstr_size) != 0)
                return MREG_REFUSED;
        if (len > MREG_MAX_BLOB) {
                kf_errf(errstr, errstr_size, "%zu bytes: more than Redis' 512 MiB string limit",
                        len);
                return MREG_REFUSED;
        }
        if (mreg_blob_decode(blob, len, name, &f, err, sizeof(err)) != 0) {
                kf_errf(errstr, errstr_size, "refused: %s", err);
                return MREG_REFUSED;
        }
        mreg_sha256_hex(blob, len, sha);
        if (f.kind == MODEL_KIND_MLP) {
                snprintf(din, sizeof(din), "%u", f.mlp->input_dim);
                snprintf(dout, sizeof(dout), "%u", f.mlp->output_dim);
                snprintf(layers, sizeof(layers), "%u", f.mlp->n_layers);
        } else {
                snprintf(din, sizeof(din), "%u", f.ens->input_dim);
                snprintf(dout, sizeof(dout), "%u", f.ens->output_dim);
                snprintf(layers, sizeof(layers), "0");
                if (!(members = mreg_members_json(f.ens))) {
                        model_file_clear(&f);
                        kf_errf(errstr, errstr_size, "out of memory");
                        return MREG_REFUSED;
                }
        }
        extra[0] = blob;
        extra_len[0] = len;
        extra[1] = sha;
        extra[2] = f.kind == MODEL_KIND_MLP ? "mlp" : "ensemble";
        extra[3] = din;
        extra[4] = dout;
        extra[5] = layers;
        extra[6] = members ? members : "";
        extra[7] = activate ? "1" : "0";
        extra[8] = force ? "1" : "0";
        for (int i = 1; i < 9; i++)
                extra_len[i] = strlen(extra[i]);
        r = mreg_eval(c, mreg_push_lua, prefix, name, 9, extra, extra_len, &rc, errstr,
                      errstr_size);
        if (r) {
                if (r->type == REDIS_REPLY_INTEGER && r->integer > 0 && r->integer <= UINT32_MAX) {
                        if (version)
                                *version = (uint32_t)r->integer;
                } else {
                        kf_errf(errstr, errstr_size, "registry: push: unexpected reply");
                        rc = MREG_IO;
                }
                freeReplyObject(r);
        }
        free(members);
        model_file_clear(&f);
        return rc;
}

mreg_rc_t mreg_activate(redisContext *c, const char *prefix, const char *name, uint32_t version,
                        int force, uint32_t *previous, char *errstr, size_t errstr_size)
{
        char v[16];
        const char *extra[2] = {v, force ? "1" : "0"};
        redisReply *r;
        mreg_rc_t rc;

        if (mreg_name_ok(name, errstr, errstr_size) != 0)
                return MREG_REFUSED;
        snprintf(v, sizeof(v), "%u", version);
        if (!(r = mreg_eval(c, mreg_activate_lua, prefix, name, 2, extra, NULL, &rc, errstr,
                            errstr_size)))
                return rc;
        if (r->type != REDIS_REPLY_INTEGER) {
                kf_errf(errstr, errstr_size, "registry: activate: unexpected reply");
                rc = MREG_IO;
        } else if (previous) {
                *previous = (uint32_t)r->integer;
        }
        freeReplyObject(r);
        return rc;
}

mreg_rc_t mreg_rollback(redisContext *c, const char *prefix, const char *name, int force,
                        uint32_t *from, uint32_t *to, char *errstr, size_t errstr_size)
{
        const char *extra[1] = {force ? "1" : "0"};
        redisReply *r;
        mreg_rc_t rc;

        if (mreg_name_ok(name, errstr, errstr_size) != 0)
                return MREG_REFUSED;
        if (!(r = mreg_eval(c, mreg_rollback_lua, prefix, name, 1, extra, NULL, &rc, errstr,
                            errstr_size)))
                return rc;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_INTEGER ||
            r->element[1]->type != REDIS_REPLY_INTEGER) {
                kf_errf(errstr, errstr_size, "registry: rollback: unexpected reply");
                rc = MREG_IO;
        } else {
                if (from)
                        *from = (uint32_t)r->element[0]->integer;
                if (to)
                        *to = (uint32_t)r->element[1]->integer;
        }
        freeReplyObject(r);
        return rc;
}

mreg_rc_t mreg_rm(redisContext *c, const char *prefix, const char *name, uint32_t version,
                  int force, char *errstr, size_t errstr_size)
{
        char v[16];
        const char *extra[2] = {v, force ? "1" : "0"};
        redisReply *r;
        mreg_rc_t rc;

        if (mreg_name_ok(name, errstr, errstr_size) != 0)
                return MREG_REFUSED;
        snprintf(v, sizeof(v), "%u", version);
        if (!(r = mreg_eval(c, mreg_rm_lua, prefix, name, 2, extra, NULL, &rc, errstr,
                            errstr_size)))
                return rc;
        freeReplyObject(r);
        return rc;
}

static int mreg_strcmp(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

mreg_rc_t mreg_names(redisContext *c, const char *prefix, char ***names, size_t *n, char *errstr,
                     size_t errstr_size)
{
        char key[KF_KEY_MAX];
        redisReply *r;
        char **out;
        size_t cnt = 0;

        *names = NULL;
        *n = 0;
        mreg_key_names(key, prefix);
        if (!(r = redisCommand(c, "SMEMBERS %s", key)))
                return mreg_io_error(c, "SMEMBERS", errstr, errstr_size);
        if (r->type != REDIS_REPLY_ARRAY) {
                mreg_rc_t rc = r->type == REDIS_REPLY_ERROR
                                   ? mreg_reply_error(r, errstr, errstr_size)
                                   : MREG_IO;
                if (rc == MREG_IO)
                        kf_errf(errstr, errstr_size, "registry: SMEMBERS: unexpected reply");
                freeReplyObject(r);
                return rc;
        }
        if (!(out = calloc(r->elements ? r->elements : 1, sizeof(*out)))) {
                freeReplyObject(r);
                kf_errf(errstr, errstr_size, "out of memory");
                return MREG_REFUSED;
        }
        for (size_t i = 0; i < r->elements; i++) {
                if (r->element[i]->type != REDIS_REPLY_STRING)
                        continue;
                if (!(out[cnt] = strdup(r->element[i]->str))) {
                        mreg_names_free(out, cnt);
                        freeReplyObject(r);
                        kf_errf(errstr, errstr_size, "out of memory");
                        return MREG_REFUSED;
                }
                cnt++;
        }
        freeReplyObject(r);
        qsort(out, cnt, sizeof(*out), mreg_strcmp);
        *names = out;
        *n = cnt;
        return MREG_OK;
}

void mreg_names_free(char **names, size_t n)
{
        for (size_t i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
}
