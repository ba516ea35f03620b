/* model_file.c - the kinfer-model file format, both kinds: decoding
 * (bounds-checked bytes, then every field, size and weight validated) and
 * encoding an MLP or an ensemble spec. */
#include "model.h"

#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "model_internal.h"
#include "mp_field.h"
#include "mp_pack.h"

/* A model file is a map holding an array of maps of scalars: depth 3.  A
 * little slack keeps a nested value in the wrong place a type error rather
 * than a depth error, which names the field. */
#define MODEL_MP_DEPTH 8

#define MODEL_QUOTE(s, len, q) mp_quote((s), (len), MODEL_QUOTE_MAX, (q), sizeof(q))

/* Returns 0 if every value is finite, else -1 naming the first bad one. */
static int model_check_finite(const float *v, size_t n, uint32_t layer, const char *what,
                              char *errstr, size_t errstr_size)
{
        for (size_t i = 0; i < n; i++) {
                if (isfinite(v[i]))
                        continue;
                return kf_errf(errstr, errstr_size, "layer %u: %s[%zu] is %s", layer, what, i,
                               isnan(v[i]) ? "NaN"
                               : v[i] > 0  ? "Inf"
                                           : "-Inf");
        }
        return 0;
}

/* The keys of one map of a model file (at most 8 names) into vals[],
 * refusing keys that are not strings, unknown or repeated; ctx prefixes
 * messages ("layer 2: "). */
static int model_map_fields(const msgpack_object *map, const char *const *names, size_t n_names,
                            const msgpack_object **vals, const char *ctx, char *errstr,
                            size_t errstr_size)
{
        const msgpack_object *k;
        uint32_t at = 0;
        char q[64];

        switch (mp_map_fields(&map->via.map, names, n_names, MP_MAP_STRICT, vals, &at)) {
        case MP_MAP_OK:
                return 0;
        case MP_MAP_KEY_NOT_STR:
                return kf_errf(errstr, errstr_size, "%skey %u is not a string", ctx, at);
        case MP_MAP_UNKNOWN:
                k = &map->via.map.ptr[at].key;
                return kf_errf(errstr, errstr_size, "%sunknown key \"%s\"", ctx,
                               MODEL_QUOTE(k->via.str.ptr, k->via.str.size, q));
        case MP_MAP_DUP:
        default:
                k = &map->via.map.ptr[at].key;
                return kf_errf(errstr, errstr_size, "%sduplicate key \"%s\"", ctx,
                               MODEL_QUOTE(k->via.str.ptr, k->via.str.size, q));
        }
}

/* A dimension: an unsigned integer in 1..MODEL_MAX_DIM. */
static int model_get_dim(const msgpack_object *o, const char *what, uint32_t *out, char *errstr,
                         size_t errstr_size)
{
        if (!o)
                return kf_errf(errstr, errstr_size, "missing %s", what);
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return kf_errf(errstr, errstr_size, "%s %lld out of range 1..%u", what,
                               (long long)o->via.i64, MODEL_MAX_DIM);
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return kf_errf(errstr, errstr_size, "%s must be an unsigned integer", what);
        if (o->via.u64 == 0 || o->via.u64 > MODEL_MAX_DIM)
                return kf_errf(errstr, errstr_size, "%s %llu out of range 1..%u", what,
                               (unsigned long long)o->via.u64, MODEL_MAX_DIM);
        *out = (uint32_t)o->via.u64;
        return 0;
}

/* A layer's or a member's act: a known activation's name. */
static int model_get_act(const msgpack_object *o, const char *what, uint32_t i, char *errstr,
                         size_t errstr_size)
{
        char q[64];
        int act =
            o->type == MSGPACK_OBJECT_STR ? model_act_parse(o->via.str.ptr, o->via.str.size) : -1;
        if (o->type != MSGPACK_OBJECT_STR)
                kf_errf(errstr, errstr_size, "%s %u: act must be a string", what, i);
        else if (act < 0)
                kf_errf(errstr, errstr_size, "%s %u: unknown activation \"%s\"", what, i,
                        MODEL_QUOTE(o->via.str.ptr, o->via.str.size, q));
        return act;
}

enum { F_FORMAT, F_V, F_NAME, F_KIND, F_INPUT_DIM, F_OUTPUT_DIM, F_LAYERS, F_MEMBERS, F__CNT };
static const char *const model_fields[F__CNT] = {"format",    "v",          "name",   "kind",
                                                 "input_dim", "output_dim", "layers", "members"};
enum { L_W, L_B, L_ACT, L__CNT };
static const char *const model_layer_fields[L__CNT] = {"W", "b", "act"};

/* ---- an ensemble file's members ---- */

enum { M_MODEL, M_VERSION, M_WEIGHT, M_ACT, M__CNT };
static const char *const model_member_fields[M__CNT] = {"model", "version", "weight", "act"};

void model_ens_spec_free(model_ens_spec_t *spec)
{
        if (!spec)
                return;
        free(spec->members);
        free(spec);
}

/* A weight: any msgpack number that is finite as a float32. */
static int model_member_weight(const msgpack_object *o, uint32_t i, double *out, char *errstr,
                               size_t errstr_size)
{
        double w;

        switch (o->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                w = (double)o->via.u64;
                break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                w = (double)o->via.i64;
                break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                w = o->via.f64;
                break;
        default:
                return kf_errf(errstr, errstr_size, "member %u: weight must be a number", i);
        }
        if (!isfinite(w) || fabs(w) > FLT_MAX)
                return kf_errf(errstr, errstr_size, "member %u: weight %g is not a finite float32",
                               i, w);
        *out = w;
        return 0;
}

/* The members array of an ensemble file (the header, name and dims already
 * validated).  Returns a spec or NULL with errstr. */
static model_ens_spec_t *model_ens_spec_from_object(const msgpack_object *members, const char *name,
                                                    size_t name_len, uint32_t input_dim,
                                                    uint32_t output_dim, uint64_t format_v,
                                                    char *errstr, size_t errstr_size)
{
        model_ens_spec_t *spec = NULL;
        uint32_t n;
        char q[64], ctx[32];

        if (!members) {
                kf_errf(errstr, errstr_size, "missing members");
                return NULL;
        }
        if (members->type != MSGPACK_OBJECT_ARRAY) {
                kf_errf(errstr, errstr_size, "members must be an array");
                return NULL;
        }
        n = members->via.array.size;
        if (n == 0 || n > MODEL_MAX_MEMBERS) {
                kf_errf(errstr, errstr_size, "%u members, expected 1..%d", n, MODEL_MAX_MEMBERS);
                return NULL;
        }
        if (!(spec = calloc(1, sizeof(*spec))) ||
            !(spec->members = calloc(n, sizeof(*spec->members)))) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        memcpy(spec->name, name, name_len); /* validated by the caller: <= JOB_MODEL_MAX */
        spec->name[name_len] = '\0';
        spec->input_dim = input_dim;
        spec->output_dim = output_dim;
        spec->n_members = n;

        for (uint32_t i = 0; i < n; i++) {
                const msgpack_object *mo = &members->via.array.ptr[i], *mf[M__CNT];
                model_member_spec_t *ms = &spec->members[i];
                int act;

                if (mo->type != MSGPACK_OBJECT_MAP) {
                        kf_errf(errstr, errstr_size, "member %u is not a map", i);
                        goto err;
                }
                snprintf(ctx, sizeof(ctx), "member %u: ", i);
                if (model_map_fields(mo, model_member_fields, M__CNT, mf, ctx, errstr,
                                     errstr_size) != 0)
                        goto err;
                if (!mf[M_MODEL]) {
                        kf_errf(errstr, errstr_size, "member %u: missing model", i);
                        goto err;
                }
                if (mf[M_MODEL]->type != MSGPACK_OBJECT_STR ||
                    !job_name_valid(mf[M_MODEL]->via.str.ptr, mf[M_MODEL]->via.str.size,
                                    JOB_MODEL_MAX)) {
                        kf_errf(errstr, errstr_size,
                                "member %u: model \"%s\" is not a name of 1..%d chars of "
                                "[A-Za-z0-9._:-]",
                                i,
                                mf[M_MODEL]->type == MSGPACK_OBJECT_STR
                                    ? MODEL_QUOTE(mf[M_MODEL]->via.str.ptr,
                                                  mf[M_MODEL]->via.str.size, q)
                                    : "(not a string)",
                                JOB_MODEL_MAX);
                        goto err;
                }
                memcpy(ms->model, mf[M_MODEL]->via.str.ptr, mf[M_MODEL]->via.str.size);
                ms->model[mf[M_MODEL]->via.str.size] = '\0';
                if (mf[M_VERSION]) {
                        if (mf[M_VERSION]->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                            mf[M_VERSION]->via.u64 > UINT32_MAX) {
                                kf_errf(errstr, errstr_size,
                                        "member %u: version must be an integer in 0..%u", i,
                                        UINT32_MAX);
                                goto err;
                        }
                        ms->version = (uint32_t)mf[M_VERSION]->via.u64;
                }
                if (!mf[M_WEIGHT]) {
                        kf_errf(errstr, errstr_size, "member %u: missing weight", i);
                        goto err;
                }
                if (model_member_weight(mf[M_WEIGHT], i, &ms->weight, errstr, errstr_size) != 0)
                        goto err;
                /* v1 readers refuse the key: a v1 file must not mean
                 * something else to a v2 reader. */
                if (mf[M_ACT] && format_v < 2) {
                        kf_errf(errstr, errstr_size,
                                "member %u: act needs model format v2 (the file is v%llu)", i,
                                (unsigned long long)format_v);
                        goto err;
                }
                act = mf[M_ACT] ? model_get_act(mf[M_ACT], "member", i, errstr, errstr_size)
                                : MODEL_ACT_IDENTITY;
                if (act < 0)
                        goto err;
                ms->act = (model_act_t)act;
                /* Pinned to an older version of itself is a blend of old and
                 * new; following its own active version never ends. */
                if (ms->version == 0 && !strcmp(ms->model, spec->name)) {
                        kf_errf(errstr, errstr_size,
                                "member %u: the ensemble '%s' cannot follow its own active "
                                "version (a cycle); pin a version",
                                i, spec->name);
                        goto err;
                }
        }
        return spec;
err:
        model_ens_spec_free(spec);
        return NULL;
}

/* ---- decoding ---- */

/* Validates the unpacked file and builds the model (or the ensemble spec)
 * from it.  Checks run in a fixed order (format tag first) so a file that is
 * not a model at all is reported as such, not as its first odd field. */
static int model_from_object(const msgpack_object *root, model_file_t *file, char *errstr,
                             size_t errstr_size)
{
        const msgpack_object *f[F__CNT], *lf[L__CNT];
        const msgpack_object *W[MODEL_MAX_LAYERS], *b[MODEL_MAX_LAYERS];
        uint32_t dims[MODEL_MAX_LAYERS + 1], output_dim, n_layers;
        model_act_t acts[MODEL_MAX_LAYERS];
        const msgpack_object *o;
        model_t *m = NULL;
        char q[64], ctx[32];

        if (root->type != MSGPACK_OBJECT_MAP) {
                kf_errf(errstr, errstr_size, "not a kinfer-model file: top level is not a map");
                return -1;
        }
        if (model_map_fields(root, model_fields, F__CNT, f, "", errstr, errstr_size) != 0)
                return -1;

        o = f[F_FORMAT];
        if (!o) {
                kf_errf(errstr, errstr_size, "not a kinfer-model file: no format tag");
                return -1;
        }
        if (o->type != MSGPACK_OBJECT_STR || !mp_str_eq(o, MODEL_FORMAT_NAME)) {
                kf_errf(errstr, errstr_size, "not a kinfer-model file: format is \"%s\"",
                        o->type == MSGPACK_OBJECT_STR
                            ? MODEL_QUOTE(o->via.str.ptr, o->via.str.size, q)
                            : "(not a string)");
                return -1;
        }

        o = f[F_V];
        if (!o) {
                kf_errf(errstr, errstr_size, "missing v (format version)");
                return -1;
        }
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                kf_errf(errstr, errstr_size, "unsupported model format v%lld",
                        (long long)o->via.i64);
                return -1;
        }
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                kf_errf(errstr, errstr_size, "v must be an unsigned integer");
                return -1;
        }
        if (o->via.u64 < 1 || o->via.u64 > MODEL_FORMAT_V_MAX) {
                kf_errf(errstr, errstr_size, "unsupported model format v%llu",
                        (unsigned long long)o->via.u64);
                return -1;
        }

        o = f[F_NAME];
        if (!o) {
                kf_errf(errstr, errstr_size, "missing name");
                return -1;
        }
        if (o->type != MSGPACK_OBJECT_STR) {
                kf_errf(errstr, errstr_size, "name must be a string");
                return -1;
        }
        if (!job_name_valid(o->via.str.ptr, o->via.str.size, JOB_MODEL_MAX)) {
                kf_errf(errstr, errstr_size,
                        "bad name \"%s\": must be 1..%d chars of [A-Za-z0-9._:-]",
                        MODEL_QUOTE(o->via.str.ptr, o->via.str.size, q), JOB_MODEL_MAX);
                return -1;
        }

        o = f[F_KIND];
        if (!o) {
                kf_errf(errstr, errstr_size, "missing kind");
                return -1;
        }
        if (o->type != MSGPACK_OBJECT_STR) {
                kf_errf(errstr, errstr_size, "kind must be a string");
                return -1;
        }
        if (mp_str_eq(o, "ensemble")) {
                if (f[F_LAYERS]) {
                        kf_errf(errstr, errstr_size,
                                "an ensemble has members, not layers (unknown key \"layers\")");
                        return -1;
                }
                if (model_get_dim(f[F_INPUT_DIM], "input_dim", &dims[0], errstr, errstr_size) !=
                        0 ||
                    model_get_dim(f[F_OUTPUT_DIM], "output_dim", &output_dim, errstr,
                                  errstr_size) != 0)
                        return -1;
                file->kind = MODEL_KIND_ENSEMBLE;
                file->ens = model_ens_spec_from_object(f[F_MEMBERS], f[F_NAME]->via.str.ptr,
                                                       f[F_NAME]->via.str.size, dims[0], output_dim,
                                                       f[F_V]->via.u64, errstr, errstr_size);
                return file->ens ? 0 : -1;
        }
        if (!mp_str_eq(o, "mlp")) {
                kf_errf(errstr, errstr_size,
                        "unknown kind \"%s\" (expected \"mlp\" or \"ensemble\")",
                        MODEL_QUOTE(o->via.str.ptr, o->via.str.size, q));
                return -1;
        }
        if (f[F_MEMBERS]) {
                kf_errf(errstr, errstr_size,
                        "an mlp has layers, not members (unknown key \"members\")");
                return -1;
        }

        if (model_get_dim(f[F_INPUT_DIM], "input_dim", &dims[0], errstr, errstr_size) != 0 ||
            model_get_dim(f[F_OUTPUT_DIM], "output_dim", &output_dim, errstr, errstr_size) != 0)
                return -1;

        o = f[F_LAYERS];
        if (!o) {
                kf_errf(errstr, errstr_size, "missing layers");
                return -1;
        }
        if (o->type != MSGPACK_OBJECT_ARRAY) {
                kf_errf(errstr, errstr_size, "layers must be an array");
                return -1;
        }
        n_layers = o->via.array.size;
        if (n_layers == 0 || n_layers > MODEL_MAX_LAYERS) {
                kf_errf(errstr, errstr_size, "%u layers, expected 1..%d", n_layers,
                        MODEL_MAX_LAYERS);
                return -1;
        }

        /* Sizes first, weights after: nothing is allocated until the whole
         * chain is known to be consistent. */
        for (uint32_t i = 0; i < n_layers; i++) {
                const msgpack_object *lo = &o->via.array.ptr[i];
                uint64_t in = dims[i], out, want;
                int act;

                if (lo->type != MSGPACK_OBJECT_MAP) {
                        kf_errf(errstr, errstr_size, "layer %u is not a map", i);
                        return -1;
                }
                snprintf(ctx, sizeof(ctx), "layer %u: ", i);
                if (model_map_fields(lo, model_layer_fields, L__CNT, lf, ctx, errstr,
                                     errstr_size) != 0)
                        return -1;
                for (int k = 0; k < L__CNT; k++) {
                        if (!lf[k]) {
                                kf_errf(errstr, errstr_size, "layer %u: missing %s", i,
                                        model_layer_fields[k]);
                                return -1;
                        }
                }
                if (lf[L_W]->type != MSGPACK_OBJECT_BIN || lf[L_B]->type != MSGPACK_OBJECT_BIN) {
                        kf_errf(errstr, errstr_size,
                                "layer %u: %s must be bin (float32 little-endian)", i,
                                lf[L_W]->type != MSGPACK_OBJECT_BIN ? "W" : "b");
                        return -1;
                }
                if ((act = model_get_act(lf[L_ACT], "layer", i, errstr, errstr_size)) < 0)
                        return -1;

                /* The layer's width comes from its bias; its input from the
                 * previous layer; W must then be exactly in x out. */
                if (lf[L_B]->via.bin.size % sizeof(float) != 0) {
                        kf_errf(errstr, errstr_size,
                                "layer %u: b has %u bytes, not a whole number of float32", i,
                                lf[L_B]->via.bin.size);
                        return -1;
                }
                out = lf[L_B]->via.bin.size / sizeof(float);
                if (out == 0 || out > MODEL_MAX_DIM) {
                        kf_errf(errstr, errstr_size,
                                "layer %u: b has %llu values, expected 1..%u outputs", i,
                                (unsigned long long)out, MODEL_MAX_DIM);
                        return -1;
                }
                want = in * out * sizeof(float);
                if (lf[L_W]->via.bin.size != want) {
                        kf_errf(errstr, errstr_size,
                                "layer %u: W has %u bytes, expected %llu (%llux%llu float32)", i,
                                lf[L_W]->via.bin.size, (unsigned long long)want,
                                (unsigned long long)in, (unsigned long long)out);
                        return -1;
                }
                dims[i + 1] = (uint32_t)out;
                acts[i] = (model_act_t)act;
                W[i] = lf[L_W];
                b[i] = lf[L_B];
        }
        if (dims[n_layers] != output_dim) {
                kf_errf(errstr, errstr_size, "layer %u outputs %u values but output_dim is %u",
                        n_layers - 1, dims[n_layers], output_dim);
                return -1;
        }

        m = model_alloc(f[F_NAME]->via.str.ptr, f[F_NAME]->via.str.size, n_layers, dims, acts,
                        errstr, errstr_size);
        if (!m)
                return -1;
        for (uint32_t i = 0; i < n_layers; i++) {
                model_layer_t *l = &m->layers[i];
                size_t nw = (size_t)l->in * l->out;
                mp_f32_le_read(l->W, W[i]->via.bin.ptr, nw);
                mp_f32_le_read(l->b, b[i]->via.bin.ptr, l->out);
                if (model_check_finite(l->W, nw, i, "W", errstr, errstr_size) != 0 ||
                    model_check_finite(l->b, l->out, i, "b", errstr, errstr_size) != 0) {
                        model_unref(m);
                        return -1;
                }
        }
        file->kind = MODEL_KIND_MLP;
        file->mlp = m;
        return 0;
}

int model_file_decode(const void *buf, size_t len, model_file_t *out, char *errstr,
                      size_t errstr_size)
{
        msgpack_unpacked up;
        char err[256];
        int rc = -1;

        memset(out, 0, sizeof(*out));
        if (!buf || len == 0) {
                kf_errf(errstr, errstr_size, "not valid msgpack: empty");
                return -1;
        }
        /* msgpack-c reserves what a header declares before the bytes exist;
         * mp_unpack_one's bound check keeps a 5-byte file from reserving
         * gigabytes. */
        msgpack_unpacked_init(&up);
        switch (mp_unpack_one(buf, len, MODEL_MP_DEPTH, &up, err, sizeof(err))) {
        case MP_UNPACK_BAD:
                kf_errf(errstr, errstr_size, "not valid msgpack: %s", err);
                break;
        case MP_UNPACK_NOMEM:
                kf_errf(errstr, errstr_size, "out of memory unpacking %zu bytes", len);
                break;
        case MP_UNPACK_OK:
                rc = model_from_object(&up.data, out, errstr, errstr_size);
                break;
        }
        msgpack_unpacked_destroy(&up);
        return rc;
}

void model_file_clear(model_file_t *f)
{
        if (!f)
                return;
        model_unref(f->mlp);
        model_ens_spec_free(f->ens);
        memset(f, 0, sizeof(*f));
}

model_t *model_decode(const void *buf, size_t len, char *errstr, size_t errstr_size)
{
        model_file_t f;

        if (model_file_decode(buf, len, &f, errstr, errstr_size) != 0)
                return NULL;
        if (f.kind != MODEL_KIND_MLP) {
                kf_errf(errstr, errstr_size,
                        "model '%s' is an ensemble: it needs its members, which only the "
                        "model registry can resolve",
                        f.ens->name);
                model_file_clear(&f);
                return NULL;
        }
        return f.mlp;
}

model_t *model_load_file(const char *path, char *errstr, size_t errstr_size)
{
        model_t *m;
        char *buf, err[512];
        size_t len;

        if (kf_file_read(path, MODEL_MAX_FILE_BYTES, &buf, &len, errstr, errstr_size) != 0)
                return NULL;
        m = model_decode(buf, len, err, sizeof(err));
        if (!m)
                kf_errf(errstr, errstr_size, "%s: %s", path, err);
        free(buf);
        return m;
}

/* ---- encoding ---- */

/* The invariants decode enforces, checked again so model_encode never writes
 * a file that model_decode would refuse. */
static int model_check(const model_t *m, char *errstr, size_t errstr_size)
{
        size_t name_len = strnlen(m->name, sizeof(m->name));
        if (!job_name_valid(m->name, name_len, JOB_MODEL_MAX))
                return kf_errf(errstr, errstr_size,
                               "bad name: must be 1..%d chars of "
                               "[A-Za-z0-9._:-]",
                               JOB_MODEL_MAX);
        if (m->n_layers == 0 || m->n_layers > MODEL_MAX_LAYERS || !m->layers)
                return kf_errf(errstr, errstr_size, "%u layers, expected 1..%d", m->n_layers,
                               MODEL_MAX_LAYERS);
        if (m->input_dim == 0 || m->input_dim > MODEL_MAX_DIM || m->output_dim == 0 ||
            m->output_dim > MODEL_MAX_DIM)
                return kf_errf(errstr, errstr_size,
                               "input_dim %u or output_dim %u out of range "
                               "1..%u",
                               m->input_dim, m->output_dim, MODEL_MAX_DIM);
        for (uint32_t i = 0; i < m->n_layers; i++) {
                const model_layer_t *l = &m->layers[i];
                uint32_t in = i ? m->layers[i - 1].out : m->input_dim;
                if (l->in != in || l->out == 0 || l->out > MODEL_MAX_DIM)
                        return kf_errf(errstr, errstr_size,
                                       "layer %u is %ux%u, does not chain from %u inputs", i, l->in,
                                       l->out, in);
                if ((unsigned)l->act >= MODEL_ACT__CNT)
                        return kf_errf(errstr, errstr_size, "layer %u: unknown activation %d", i,
                                       (int)l->act);
                if (!l->W || !l->b)
                        return kf_errf(errstr, errstr_size, "layer %u: no weights", i);
                if (model_check_finite(l->W, (size_t)l->in * l->out, i, "W", errstr, errstr_size) !=
                        0 ||
                    model_check_finite(l->b, l->out, i, "b", errstr, errstr_size) != 0)
                        return -1;
        }
        if (m->layers[m->n_layers - 1].out != m->output_dim)
                return kf_errf(errstr, errstr_size,
                               "layer %u outputs %u values but output_dim "
                               "is %u",
                               m->n_layers - 1, m->layers[m->n_layers - 1].out, m->output_dim);
        return 0;
}

int model_encode(const model_t *m, char **out, size_t *outlen, char *errstr, size_t errstr_size)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        int rc = 0;

        if (!m || !out || !outlen)
                return kf_errf(errstr, errstr_size, "model_encode: NULL argument");
        if (model_check(m, errstr, errstr_size) != 0)
                return -1;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc |= msgpack_pack_map(&pk, 7); /* every field of an mlp: all but members */
        rc |= mp_pack_kv_str(&pk, "format", MODEL_FORMAT_NAME);
        rc |= mp_pack_kv_u64(&pk, "v", MODEL_FORMAT_V);
        rc |= mp_pack_kv_str(&pk, "name", m->name);
        rc |= mp_pack_kv_str(&pk, "kind", "mlp");
        rc |= mp_pack_kv_u64(&pk, "input_dim", m->input_dim);
        rc |= mp_pack_kv_u64(&pk, "output_dim", m->output_dim);
        rc |= mp_pack_cstr(&pk, "layers");
        rc |= msgpack_pack_array(&pk, m->n_layers);
        for (uint32_t i = 0; i < m->n_layers && rc == 0; i++) {
                const model_layer_t *l = &m->layers[i];
                rc |= msgpack_pack_map(&pk, L__CNT);
                rc |= mp_pack_cstr(&pk, "W");
                rc |= mp_pack_f32_le(&pk, l->W, (size_t)l->in * l->out);
                rc |= mp_pack_cstr(&pk, "b");
                rc |= mp_pack_f32_le(&pk, l->b, l->out);
                rc |= mp_pack_kv_str(&pk, "act", model_act_name(l->act));
        }
        if (rc != 0) {
                msgpack_sbuffer_destroy(&sb);
                return kf_errf(errstr, errstr_size, "out of memory encoding model %s", m->name);
        }
        /* sbuffer grows its data with realloc, so the caller can free() it. */
        *out = sb.data;
        *outlen = sb.size;
        return 0;
}

int model_ens_encode(const model_ens_spec_t *spec, char **out, size_t *outlen, char *errstr,
                     size_t errstr_size)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        int rc = 0, with_acts = 0;

        if (!spec || !out || !outlen)
                return kf_errf(errstr, errstr_size, "model_ens_encode: NULL argument");
        if (!job_name_valid(spec->name, strnlen(spec->name, sizeof(spec->name)), JOB_MODEL_MAX))
                return kf_errf(errstr, errstr_size,
                               "bad name: must be 1..%d chars of [A-Za-z0-9._:-]", JOB_MODEL_MAX);
        if (spec->input_dim == 0 || spec->input_dim > MODEL_MAX_DIM || spec->output_dim == 0 ||
            spec->output_dim > MODEL_MAX_DIM)
                return kf_errf(errstr, errstr_size,
                               "input_dim %u or output_dim %u out of range 1..%u", spec->input_dim,
                               spec->output_dim, MODEL_MAX_DIM);
        if (spec->n_members == 0 || spec->n_members > MODEL_MAX_MEMBERS || !spec->members)
                return kf_errf(errstr, errstr_size, "%u members, expected 1..%d", spec->n_members,
                               MODEL_MAX_MEMBERS);
        for (uint32_t i = 0; i < spec->n_members; i++) {
                const model_member_spec_t *ms = &spec->members[i];
                if (!job_name_valid(ms->model, strnlen(ms->model, sizeof(ms->model)),
                                    JOB_MODEL_MAX))
                        return kf_errf(errstr, errstr_size, "member %u: bad model name", i);
                if ((unsigned)ms->act >= MODEL_ACT__CNT)
                        return kf_errf(errstr, errstr_size, "member %u: unknown activation %d", i,
                                       (int)ms->act);
                if (ms->act != MODEL_ACT_IDENTITY)
                        with_acts = 1;
                if (!isfinite(ms->weight) || fabs(ms->weight) > FLT_MAX)
                        return kf_errf(errstr, errstr_size,
                                       "member %u: weight %g is not a finite float32", i,
                                       ms->weight);
                if (ms->version == 0 && !strcmp(ms->model, spec->name))
                        return kf_errf(errstr, errstr_size,
                                       "member %u: the ensemble '%s' cannot follow its own "
                                       "active version (a cycle); pin a version",
                                       i, spec->name);
        }

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc |= msgpack_pack_map(&pk, 7);
        rc |= mp_pack_kv_str(&pk, "format", MODEL_FORMAT_NAME);
        /* v1 when it can be: older workers keep reading ensembles without acts. */
        rc |= mp_pack_kv_u64(&pk, "v", with_acts ? 2 : MODEL_FORMAT_V);
        rc |= mp_pack_kv_str(&pk, "name", spec->name);
        rc |= mp_pack_kv_str(&pk, "kind", "ensemble");
        rc |= mp_pack_kv_u64(&pk, "input_dim", spec->input_dim);
        rc |= mp_pack_kv_u64(&pk, "output_dim", spec->output_dim);
        rc |= mp_pack_cstr(&pk, "members");
        rc |= msgpack_pack_array(&pk, spec->n_members);
        for (uint32_t i = 0; i < spec->n_members && rc == 0; i++) {
                const model_member_spec_t *ms = &spec->members[i];
                int has_act = ms->act != MODEL_ACT_IDENTITY;
                rc |= msgpack_pack_map(&pk, 2u + (ms->version ? 1u : 0u) + (has_act ? 1u : 0u));
                rc |= mp_pack_kv_str(&pk, "model", ms->model);
                if (ms->version)
                        rc |= mp_pack_kv_u64(&pk, "version", ms->version);
                rc |= mp_pack_cstr(&pk, "weight");
                rc |= msgpack_pack_double(&pk, ms->weight);
                if (has_act)
                        rc |= mp_pack_kv_str(&pk, "act", model_act_name(ms->act));
        }
        if (rc != 0) {
                msgpack_sbuffer_destroy(&sb);
                return kf_errf(errstr, errstr_size, "out of memory encoding ensemble %s",
                               spec->name);
        }
        *out = sb.data;
        *outlen = sb.size;
        return 0;
}
