/* model.c - the model_t lifecycle and the kinfer-model file format; decoding
 * bounds-checks the bytes, then validates every field, size and weight. */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kf_util.h"
#include "model_int.h"
#include "mp_pack.h"
#include "mp_bound.h"

/* Every W and b starts on a cache line: what BLAS kernels load fastest. */
#define MODEL_ALIGN 64
/* A model file is a map holding an array of maps of scalars: depth 3.  A
 * little slack keeps a nested value in the wrong place a type error rather
 * than a depth error, which names the field. */
#define MODEL_MP_DEPTH 8
/* Far beyond any model a worker can serve, and it keeps every size below
 * 2^32 so a single W always fits a msgpack bin32. */
#define MODEL_MAX_WEIGHT_BYTES ((uint64_t)4 << 30)
#define MODEL_MAX_FILE_BYTES   ((uint64_t)4 << 30)

static const char *const model_act_names[MODEL_ACT__CNT] = {
    [MODEL_ACT_IDENTITY] = "identity", [MODEL_ACT_RELU] = "relu",       [MODEL_ACT_TANH] = "tanh",
    [MODEL_ACT_SIGMOID] = "sigmoid",   [MODEL_ACT_SOFTMAX] = "softmax",
};

const char *model_act_name(model_act_t act)
{
        if ((unsigned)act >= MODEL_ACT__CNT)
                return "unknown";
        return model_act_names[act];
}

int model_act_parse(const char *name, size_t len)
{
        for (int i = 0; i < MODEL_ACT__CNT; i++) {
                if (strlen(model_act_names[i]) == len && memcmp(model_act_names[i], name, len) == 0)
                        return i;
        }
        return -1;
}

/* Copies a file-supplied string into out for an error message: at most 40
 * bytes, anything but printable ASCII replaced, so a hostile file cannot put
 * control characters or megabytes into a log line. */
const char *model_quote(const char *s, size_t len, char *out, size_t outsize)
{
        size_t n = len < 40 ? len : 40, o = 0;
        for (size_t i = 0; i < n && o + 1 < outsize; i++)
                out[o++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        if (n < len && o + 4 < outsize) {
                memcpy(out + o, "...", 3);
                o += 3;
        }
        out[o] = '\0';
        return out;
}

static void model_free(model_t *m)
{
        if (!m)
                return;
        if (m->alias_of) { /* the layers and members are the other model's */
                model_unref(m->alias_of);
                free(m);
                return;
        }
        /* All weights live in one block that starts at layers[0].W. */
        if (m->layers)
                free(m->layers[0].W);
        free(m->layers);
        for (uint32_t i = 0; m->members && i < m->n_members; i++)
                model_unref(m->members[i].model);
        free(m->members);
        free(m);
}

static size_t model_round_up(size_t n)
{
        return (n + MODEL_ALIGN - 1) & ~(size_t)(MODEL_ALIGN - 1);
}

/* Allocates a model with zeroed weights for the chain dims[0..n_layers];
 * the shared validation behind model_new_mlp and model_decode.  Bounding
 * every dim before multiplying keeps all sizes far from uint64 overflow
 * (64 layers * 2^20 * 2^20 * 4 < 2^49). */
static model_t *model_alloc(const char *name, size_t name_len, uint32_t n_layers,
                            const uint32_t *dims, const model_act_t *acts, char *errstr,
                            size_t errstr_size)
{
        model_t *m = NULL;
        uint64_t wbytes = 0, padded = 0, flops = 0;
        uint32_t max_width = 0;
        void *blk = NULL;
        size_t off = 0;
        char q[64];

        if (!name || !job_name_valid(name, name_len, JOB_MODEL_MAX)) {
                kf_errf(errstr, errstr_size,
                        "bad name \"%s\": must be 1..%d chars of [A-Za-z0-9._:-]",
                        name ? model_quote(name, name_len, q, sizeof(q)) : "", JOB_MODEL_MAX);
                return NULL;
        }
        if (n_layers == 0 || n_layers > MODEL_MAX_LAYERS) {
                kf_errf(errstr, errstr_size, "%u layers, expected 1..%d", n_layers,
                        MODEL_MAX_LAYERS);
                return NULL;
        }
        if (!dims || !acts) {
                kf_errf(errstr, errstr_size, "no layer sizes or activations given");
                return NULL;
        }
        for (uint32_t i = 0; i <= n_layers; i++) {
                if (dims[i] == 0 || dims[i] > MODEL_MAX_DIM) {
                        kf_errf(errstr, errstr_size, "layer size %u (dims[%u]) out of range 1..%u",
                                dims[i], i, MODEL_MAX_DIM);
                        return NULL;
                }
                if (dims[i] > max_width)
                        max_width = dims[i];
        }
        for (uint32_t i = 0; i < n_layers; i++) {
                uint64_t w = (uint64_t)dims[i] * dims[i + 1] * sizeof(float);
                uint64_t b = (uint64_t)dims[i + 1] * sizeof(float);
                if ((unsigned)acts[i] >= MODEL_ACT__CNT) {
                        kf_errf(errstr, errstr_size, "layer %u: unknown activation %d", i,
                                (int)acts[i]);
                        return NULL;
                }
                wbytes += w + b;
                padded += model_round_up(w) + model_round_up(b);
                flops += 2 * (uint64_t)dims[i] * dims[i + 1];
        }
        if (wbytes > MODEL_MAX_WEIGHT_BYTES || padded > SIZE_MAX) {
                kf_errf(errstr, errstr_size,
                        "weights would take %llu bytes, more than the 4 GiB limit",
                        (unsigned long long)wbytes);
                return NULL;
        }

        m = calloc(1, sizeof(*m));
        if (!m)
                goto oom;
        m->layers = calloc(n_layers, sizeof(*m->layers));
        if (!m->layers)
                goto oom;
        if (posix_memalign(&blk, MODEL_ALIGN, (size_t)padded) != 0) {
                blk = NULL; /* unspecified after a failure */
                goto oom;
        }
        memset(blk, 0, (size_t)padded);
        for (uint32_t i = 0; i < n_layers; i++) {
                model_layer_t *l = &m->layers[i];
                l->in = dims[i];
                l->out = dims[i + 1];
                l->act = acts[i];
                l->W = (float *)((char *)blk + off);
                off += model_round_up((size_t)l->in * l->out * sizeof(float));
                l->b = (float *)((char *)blk + off);
                off += model_round_up((size_t)l->out * sizeof(float));
        }
        memcpy(m->name, name, name_len);
        m->name[name_len] = '\0';
        m->input_dim = dims[0];
        m->output_dim = dims[n_layers];
        m->n_layers = n_layers;
        m->max_width = max_width;
        m->flops_per_row = flops;
        m->weight_bytes = (size_t)wbytes;
        m->refcnt = 1;
        return m;

oom:
        free(blk); /* never reached after the layers took it over */
        model_free(m);
        kf_errf(errstr, errstr_size, "out of memory allocating %llu bytes of weights",
                (unsigned long long)padded);
        return NULL;
}

model_t *model_new_mlp(const char *name, uint32_t n_layers, const uint32_t *dims,
                       const model_act_t *acts, char *errstr, size_t errstr_size)
{
        /* strnlen: a name longer than the limit is refused without reading
         * an unterminated string to its end. */
        return model_alloc(name, name ? strnlen(name, JOB_MODEL_MAX + 1) : 0, n_layers, dims, acts,
                           errstr, errstr_size);
}

/* Reads n little-endian float32 values; the source is a msgpack bin with no
 * alignment guarantee, hence memcpy rather than a cast. */
static void model_read_f32(float *dst, const char *src, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(dst, src, n * sizeof(float));
#else
        for (size_t i = 0; i < n; i++) {
                const unsigned char *p = (const unsigned char *)src + 4 * i;
                uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24;
                memcpy(&dst[i], &u, sizeof(u));
        }
#endif
}

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

int model_key_is(const msgpack_object *k, const char *name)
{
        return k->via.str.size == strlen(name) &&
               memcmp(k->via.str.ptr, name, k->via.str.size) == 0;
}

/* Looks up the keys of a map in `names` (at most 8) into vals[], refusing
 * keys that are not strings, unknown or repeated.  ctx prefixes messages. */
int model_map_fields(const msgpack_object *map, const char *const *names, size_t n_names,
                     const msgpack_object **vals, const char *ctx, char *errstr, size_t errstr_size)
{
        char q[64];
        for (size_t i = 0; i < n_names; i++)
                vals[i] = NULL;
        for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object *k = &map->via.map.ptr[i].key;
                size_t j;
                if (k->type != MSGPACK_OBJECT_STR)
                        return kf_errf(errstr, errstr_size, "%skey %u is not a string", ctx, i);
                for (j = 0; j < n_names; j++) {
                        if (model_key_is(k, names[j]))
                                break;
                }
                if (j == n_names)
                        return kf_errf(errstr, errstr_size, "%sunknown key \"%s\"", ctx,
                                       model_quote(k->via.str.ptr, k->via.str.size, q, sizeof(q)));
                if (vals[j])
                        return kf_errf(errstr, errstr_size, "%sduplicate key \"%s\"", ctx,
                                       names[j]);
                vals[j] = &map->via.map.ptr[i].val;
        }
        return 0;
}

int model_get_dim(const msgpack_object *o, const char *what, uint32_t *out, char *errstr,
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

enum { F_FORMAT, F_V, F_NAME, F_KIND, F_INPUT_DIM, F_OUTPUT_DIM, F_LAYERS, F_MEMBERS, F__CNT };
static const char *const model_fields[F__CNT] = {"format",    "v",          "name",   "kind",
                                                 "input_dim", "output_dim", "layers", "members"};
enum { L_W, L_B, L_ACT, L__CNT };
static const char *const model_layer_fields[L__CNT] = {"W", "b", "act"};

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
        if (o->type != MSGPACK_OBJECT_STR || !model_key_is(o, MODEL_FORMAT_NAME)) {
                kf_errf(errstr, errstr_size, "not a kinfer-model file: format is \"%s\"",
                        o->type == MSGPACK_OBJECT_STR
                            ? model_quote(o->via.str.ptr, o->via.str.size, q, sizeof(q))
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
        if (o->via.u64 != MODEL_FORMAT_V) {
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
                        model_quote(o->via.str.ptr, o->via.str.size, q, sizeof(q)), JOB_MODEL_MAX);
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
        if (model_key_is(o, "ensemble")) {
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
                                                       errstr, errstr_size);
                return file->ens ? 0 : -1;
        }
        if (!model_key_is(o, "mlp")) {
                kf_errf(errstr, errstr_size,
                        "unknown kind \"%s\" (expected \"mlp\" or \"ensemble\")",
                        model_quote(o->via.str.ptr, o->via.str.size, q, sizeof(q)));
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
                if (lf[L_ACT]->type != MSGPACK_OBJECT_STR) {
                        kf_errf(errstr, errstr_size, "layer %u: act must be a string", i);
                        return -1;
                }
                act = model_act_parse(lf[L_ACT]->via.str.ptr, lf[L_ACT]->via.str.size);
                if (act < 0) {
                        kf_errf(errstr, errstr_size, "layer %u: unknown activation \"%s\"", i,
                                model_quote(lf[L_ACT]->via.str.ptr, lf[L_ACT]->via.str.size, q,
                                            sizeof(q)));
                        return -1;
                }

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
                model_read_f32(l->W, W[i]->via.bin.ptr, nw);
                model_read_f32(l->b, b[i]->via.bin.ptr, l->out);
                if (model_check_finite(l->W, nw, i, "W", errstr, errstr_size) != 0 ||
                    model_check_finite(l->b, l->out, i, "b", errstr, errstr_size) != 0) {
                        model_free(m);
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
        msgpack_unpack_return ret;
        size_t off = 0;
        char err[256];
        int rc = -1;

        memset(out, 0, sizeof(*out));
        if (!buf || len == 0) {
                kf_errf(errstr, errstr_size, "not valid msgpack: empty");
                return -1;
        }
        /* msgpack-c reserves what a header declares before the bytes exist;
         * the bound check keeps a 5-byte file from reserving gigabytes. */
        if (mp_bound_check(buf, len, MODEL_MP_DEPTH, err, sizeof(err)) != 0) {
                kf_errf(errstr, errstr_size, "not valid msgpack: %s", err);
                return -1;
        }
        msgpack_unpacked_init(&up);
        ret = msgpack_unpack_next(&up, buf, len, &off);
        if (ret == MSGPACK_UNPACK_CONTINUE) {
                kf_errf(errstr, errstr_size, "not valid msgpack: truncated after %zu bytes", len);
                goto out;
        }
        if (ret == MSGPACK_UNPACK_NOMEM_ERROR) {
                kf_errf(errstr, errstr_size, "out of memory unpacking %zu bytes", len);
                goto out;
        }
        if (ret != MSGPACK_UNPACK_SUCCESS) {
                kf_errf(errstr, errstr_size, "not valid msgpack: parse error");
                goto out;
        }
        if (off != len) {
                kf_errf(errstr, errstr_size, "not valid msgpack: %zu trailing bytes after the map",
                        len - off);
                goto out;
        }
        rc = model_from_object(&up.data, out, errstr, errstr_size);
out:
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
        struct stat st;
        model_t *m = NULL;
        char *buf = NULL;
        size_t len = 0, cap;
        char err[512];
        int fd;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                kf_errf(errstr, errstr_size, "%s: cannot open: %s", path, strerror(errno));
                return NULL;
        }
        if (fstat(fd, &st) != 0) {
                kf_errf(errstr, errstr_size, "%s: cannot stat: %s", path, strerror(errno));
                goto out;
        }
        if (S_ISDIR(st.st_mode)) {
                kf_errf(errstr, errstr_size, "%s: is a directory", path);
                goto out;
        }
        if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > MODEL_MAX_FILE_BYTES) {
                kf_errf(errstr, errstr_size, "%s: %lld bytes, more than the 4 GiB limit", path,
                        (long long)st.st_size);
                goto out;
        }
        /* One byte past the stat size lets the final read see EOF without a
         * realloc; pipes and files that grow still work, within the limit. */
        cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 65536;
        buf = malloc(cap);
        if (!buf) {
                kf_errf(errstr, errstr_size, "%s: out of memory reading %zu bytes", path, cap);
                goto out;
        }
        for (;;) {
                ssize_t n;
                if (len == cap) {
                        char *nb;
                        if ((uint64_t)len > MODEL_MAX_FILE_BYTES) {
                                kf_errf(errstr, errstr_size, "%s: more than the 4 GiB limit", path);
                                goto out;
                        }
                        cap = (uint64_t)cap * 2 > MODEL_MAX_FILE_BYTES + 1
                                  ? (size_t)(MODEL_MAX_FILE_BYTES + 1)
                                  : cap * 2;
                        nb = realloc(buf, cap);
                        if (!nb) {
                                kf_errf(errstr, errstr_size, "%s: out of memory reading %zu bytes",
                                        path, cap);
                                goto out;
                        }
                        buf = nb;
                }
                n = read(fd, buf + len, cap - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        kf_errf(errstr, errstr_size, "%s: read failed: %s", path, strerror(errno));
                        goto out;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if ((uint64_t)len > MODEL_MAX_FILE_BYTES) {
                kf_errf(errstr, errstr_size, "%s: more than the 4 GiB limit", path);
                goto out;
        }
        m = model_decode(buf, len, err, sizeof(err));
        if (!m)
                kf_errf(errstr, errstr_size, "%s: %s", path, err);
out:
        close(fd);
        free(buf);
        return m;
}

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

model_t *model_ref(model_t *m)
{
        if (m)
                __atomic_add_fetch(&m->refcnt, 1, __ATOMIC_RELAXED);
        return m;
}

model_t *model_alias(model_t *m, uint32_t version)
{
        model_t *a = calloc(1, sizeof(*a));
        if (!a)
                return NULL;
        /* Field by field: m's refcnt may be changing on another thread. */
        memcpy(a->name, m->name, sizeof(a->name));
        a->version       = version;
        a->input_dim     = m->input_dim;
        a->output_dim    = m->output_dim;
        a->n_layers      = m->n_layers;
        a->layers        = m->layers;
        a->max_width     = m->max_width;
        a->flops_per_row = m->flops_per_row;
        a->weight_bytes  = m->weight_bytes;
        a->refcnt        = 1;
        a->kind          = m->kind;
        a->n_members     = m->n_members;
        a->members       = m->members;
        a->alias_of      = model_ref(m->alias_of ? m->alias_of : m);
        return a;
}

const model_t *model_weights_owner(const model_t *m)
{
        return m->alias_of ? m->alias_of : m;
}

void model_unref(model_t *m)
{
        /* Release orders this thread's reads of the model before the count
         * drops; acquire on the last one orders the free after everyone's. */
        if (m && __atomic_sub_fetch(&m->refcnt, 1, __ATOMIC_ACQ_REL) == 0)
                model_free(m);
}
