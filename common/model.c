/* model.c - the model_t itself: activations by name, allocating an MLP's
 * layers and weights, the reference count.  Below everything else model_*. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "model_internal.h"
#include "mp_field.h"

/* Every W and b starts on a cache line: what BLAS kernels load fastest. */
#define MODEL_ALIGN 64
/* Far beyond any model a worker can serve, and it keeps every size below
 * 2^32 so a single W always fits a msgpack bin32. */
#define MODEL_MAX_WEIGHT_BYTES ((uint64_t)4 << 30)

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

/* Declared in model_internal.h: the shared validation behind model_new_mlp
 * and the file decoder.  Bounding
 * every dim before multiplying keeps all sizes far from uint64 overflow
 * (64 layers * 2^20 * 2^20 * 4 < 2^49). */
model_t *model_alloc(const char *name, size_t name_len, uint32_t n_layers, const uint32_t *dims,
                     const model_act_t *acts, char *errstr, size_t errstr_size)
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
                        name ? mp_quote(name, name_len, MODEL_QUOTE_MAX, q, sizeof(q)) : "",
                        JOB_MODEL_MAX);
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
        a->version = version;
        a->input_dim = m->input_dim;
        a->output_dim = m->output_dim;
        a->n_layers = m->n_layers;
        a->layers = m->layers;
        a->max_width = m->max_width;
        a->flops_per_row = m->flops_per_row;
        a->weight_bytes = m->weight_bytes;
        a->refcnt = 1;
        a->kind = m->kind;
        a->n_members = m->n_members;
        a->members = m->members;
        a->alias_of = model_ref(m->alias_of ? m->alias_of : m);
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
