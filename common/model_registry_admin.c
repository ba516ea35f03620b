/* model_registry_admin.c - changing the model registry (the CLI's side,
 * model_registry_admin.h): push, activate, rollback and rm, each one Lua
 * script run with EVAL, and the list of names. */
#include "model_registry_admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_util.h"
#include "model_registry_internal.h"

/* The scripts: common/registry_prelude.lua (helpers every change uses) in
 * front of each change's own file, made C strings at build time (see the
 * Makefile), as worker/step.lua is.  The prelude must stay first in each:
 * no include sorting here. */
/* clang-format off */
static const char mreg_push_lua[] =
#include "registry_prelude_lua.h"
#include "registry_push_lua.h"
    ;
static const char mreg_activate_lua[] =
#include "registry_prelude_lua.h"
#include "registry_activate_lua.h"
    ;
static const char mreg_rollback_lua[] =
#include "registry_prelude_lua.h"
#include "registry_rollback_lua.h"
    ;
static const char mreg_rm_lua[] =
#include "registry_prelude_lua.h"
#include "registry_rm_lua.h"
    ;
/* clang-format on */

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
        size_t cap = 64 + (size_t)spec->n_members * (JOB_MODEL_MAX + 100), o = 0;
        char *s = malloc(cap);

        if (!s)
                return NULL;
        o += (size_t)snprintf(s + o, cap - o, "[");
        for (uint32_t i = 0; i < spec->n_members; i++)
                o +=
                    (size_t)snprintf(s + o, cap - o,
                                     "%s{\"model\":\"%s\",\"version\":%u,\"weight\":%.17g,"
                                     "\"act\":\"%s\"}",
                                     i ? "," : "", spec->members[i].model, spec->members[i].version,
                                     spec->members[i].weight, model_act_name(spec->members[i].act));
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

/* Runs a change script whose ARGV[3] is a version and ARGV[4] force, for a
 * valid model name.  Returns the reply (caller frees) or NULL with *rc. */
static redisReply *mreg_eval_version(redisContext *c, const char *script, const char *prefix,
                                     const char *name, uint32_t version, int force, mreg_rc_t *rc,
                                     char *errstr, size_t errstr_size)
{
        char v[16];
        const char *extra[2] = {v, force ? "1" : "0"};

        if (mreg_name_ok(name, errstr, errstr_size) != 0) {
                *rc = MREG_REFUSED;
                return NULL;
        }
        snprintf(v, sizeof(v), "%u", version);
        return mreg_eval(c, script, prefix, name, 2, extra, NULL, rc, errstr, errstr_size);
}

mreg_rc_t mreg_activate(redisContext *c, const char *prefix, const char *name, uint32_t version,
                        int force, uint32_t *previous, char *errstr, size_t errstr_size)
{
        mreg_rc_t rc;
        redisReply *r = mreg_eval_version(c, mreg_activate_lua, prefix, name, version, force, &rc,
                                          errstr, errstr_size);

        if (!r)
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
        mreg_rc_t rc;
        redisReply *r = mreg_eval_version(c, mreg_rm_lua, prefix, name, version, force, &rc, errstr,
                                          errstr_size);

        if (r)
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
