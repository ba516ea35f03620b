/* cmd_model.c - `kinfer model init|build|inspect`: create model files
 * (random weights for tests and benchmarks, exact weights from JSON) and
 * show what a file holds. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "kinfer.h"
#include "model.h"

#define O(f) offsetof(kc_conf_t, f)

static const kf_opt_t init_opts[] = {
    {"dims", 'd', NULL, KF_OPT_STR, O(dims), 0, 0, NULL, "D0,D1,..",
     "layer sizes, input first (required), e.g. 784,512,10"},
    {"act", 'a', NULL, KF_OPT_STR, O(acts), 0, 0, NULL, "A1,..",
     "activation per layer (default relu, identity for the last)"},
    {"seed", 's', NULL, KF_OPT_INT, O(seed), 0, INT64_MAX, "1", "N", "random seed"},
    {"out", 'o', NULL, KF_OPT_STR, O(out_path), 0, 0, NULL, "FILE", "where to write (required)"},
    {NULL},
};

static const kf_opt_t build_opts[] = {
    {"out", 'o', NULL, KF_OPT_STR, O(out_path), 0, 0, NULL, "FILE", "where to write (required)"},
    {NULL},
};

static const kf_opt_t inspect_opts[] = {{NULL}};

/* splitmix64: a small, well-known generator, so a seed gives the same model
 * on every machine. */
static uint64_t rng_next(uint64_t *s)
{
        uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
        z          = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z          = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s, float a)
{
        return (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0) * a;
}

static int write_model(const model_t *m, const char *path)
{
        char err[512], *buf;
        size_t len;
        FILE *fp;
        if (model_encode(m, &buf, &len, err, sizeof(err))) {
                kc_err("model: %s", err);
                return KC_EXIT_FAIL;
        }
        if (!(fp = fopen(path, "wb")) || fwrite(buf, 1, len, fp) != len || fclose(fp)) {
                kc_err("model: cannot write %s", path);
                free(buf);
                return KC_EXIT_FAIL;
        }
        free(buf);
        fprintf(stderr, "kinfer: wrote %s: model %s, %u layers, %u -> %u, %zu bytes\n", path,
                m->name, m->n_layers, m->input_dim, m->output_dim, len);
        return KC_EXIT_OK;
}

static int cmd_init(int argc, char **argv)
{
        kc_conf_t c = {0};
        uint32_t dims[MODEL_MAX_LAYERS + 1];
        model_act_t acts[MODEL_MAX_LAYERS];
        int nd = 0, na = 0, first, rc = KC_EXIT_USAGE;
        char err[512], *tok, *save = NULL, *copy = NULL;
        model_t *m = NULL;
        uint64_t seed;

        first = kc_parse(init_opts, &c, 0, argc, argv,
                         "model init NAME --dims D0,D1,... [--act A1,...] [--seed N] -o FILE\n\n"
                         "Writes an MLP with Xavier-uniform random weights (deterministic per "
                         "seed).");
        if (first != argc - 1 || !c.dims || !c.out_path) {
                kc_err("model init: need NAME, --dims and --out (see --help)");
                goto out;
        }
        copy = strdup(c.dims);
        for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                int64_t v;
                if (nd > MODEL_MAX_LAYERS || kf_parse_i64(tok, 1, MODEL_MAX_DIM, &v)) {
                        kc_err("model init: --dims '%s': '%s' is not a size in 1..%u "
                               "(or too many layers)",
                               c.dims, tok, MODEL_MAX_DIM);
                        goto out;
                }
                dims[nd++] = (uint32_t)v;
        }
        if (nd < 2) {
                kc_err("model init: --dims needs at least an input and an output size");
                goto out;
        }
        for (int i = 0; i < nd - 1; i++)
                acts[i] = i == nd - 2 ? MODEL_ACT_IDENTITY : MODEL_ACT_RELU;
        if (c.acts) {
                free(copy);
                copy = strdup(c.acts);
                save = NULL;
                for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                        int a = model_act_parse(tok, strlen(tok));
                        if (a < 0 || na >= nd - 1) {
                                kc_err("model init: --act '%s': '%s' is %s", c.acts, tok,
                                       a < 0 ? "not an activation (identity, relu, tanh, "
                                               "sigmoid, softmax)"
                                             : "one more than there are layers");
                                goto out;
                        }
                        acts[na++] = (model_act_t)a;
                }
                if (na != nd - 1) {
                        kc_err("model init: --act names %d activations for %d layers", na,
                               nd - 1);
                        goto out;
                }
        }
        if (!(m = model_new_mlp(argv[first], (uint32_t)(nd - 1), dims, acts, err, sizeof(err)))) {
                kc_err("model init: %s", err);
                goto out;
        }
        seed = (uint64_t)c.seed;
        for (uint32_t l = 0; l < m->n_layers; l++) {
                model_layer_t *L = &m->layers[l];
                float a          = sqrtf(6.0f / (float)(L->in + L->out));
                for (size_t i = 0; i < (size_t)L->in * L->out; i++)
                        L->W[i] = rng_uniform(&seed, a);
                for (uint32_t i = 0; i < L->out; i++)
                        L->b[i] = rng_uniform(&seed, 0.1f);
        }
        rc = write_model(m, c.out_path);
out:
        model_unref(m);
        free(copy);
        kf_config_free(init_opts, &c, NULL);
        return rc;
}

/* {"name": N, "layers": [{"W": [[..in rows, each out wide..]], "b": [..], "act": A}]} */
static int cmd_build(int argc, char **argv)
{
        kc_conf_t c = {0};
        json_error_t jerr;
        json_t *doc = NULL, *layers, *L;
        uint32_t dims[MODEL_MAX_LAYERS + 1];
        model_act_t acts[MODEL_MAX_LAYERS];
        model_t *m = NULL;
        char err[512];
        size_t nl, li;
        int first, rc = KC_EXIT_USAGE;

        first = kc_parse(build_opts, &c, 0, argc, argv,
                         "model build SPEC.json -o FILE\n\nWrites a model from exact weights: "
                         "{\"name\": N, \"layers\": [{\"W\": [[...]], \"b\": [...],\n\"act\": "
                         "\"relu\"}, ...]} with W given as in rows of out values.");
        if (first != argc - 1 || !c.out_path) {
                kc_err("model build: need SPEC.json and --out (see --help)");
                goto out;
        }
        if (!(doc = json_load_file(argv[first], 0, &jerr))) {
                kc_err("model build: %s:%d: %s", argv[first], jerr.line, jerr.text);
                goto out;
        }
        layers = json_object_get(doc, "layers");
        nl     = json_array_size(layers);
        if (!json_is_string(json_object_get(doc, "name")) || nl == 0 || nl > MODEL_MAX_LAYERS) {
                kc_err("model build: %s: need \"name\" and 1..%d \"layers\"", argv[first],
                       MODEL_MAX_LAYERS);
                goto out;
        }
        json_array_foreach(layers, li, L)
        {
                json_t *W = json_object_get(L, "W"), *b = json_object_get(L, "b");
                const char *act = json_string_value(json_object_get(L, "act"));
                int a = act ? model_act_parse(act, strlen(act)) : MODEL_ACT_IDENTITY;
                if (json_array_size(W) == 0 || json_array_size(b) == 0 || a < 0 ||
                    json_array_size(json_array_get(W, 0)) != json_array_size(b) ||
                    (li > 0 && json_array_size(W) != dims[li])) {
                        kc_err("model build: %s: layer %zu: W must be [in][out], b [out], act a "
                               "known activation, in = previous out",
                               argv[first], li);
                        goto out;
                }
                dims[li] = (uint32_t)json_array_size(W);
                dims[li + 1] = (uint32_t)json_array_size(b);
                acts[li]     = (model_act_t)a;
        }
        if (!(m = model_new_mlp(json_string_value(json_object_get(doc, "name")), (uint32_t)nl,
                                dims, acts, err, sizeof(err)))) {
                kc_err("model build: %s", err);
                goto out;
        }
        json_array_foreach(layers, li, L)
        {
                json_t *W = json_object_get(L, "W"), *b = json_object_get(L, "b"), *row;
                size_t i, j;
                model_layer_t *ml = &m->layers[li];
                json_array_foreach(W, i, row)
                {
                        if (json_array_size(row) != ml->out) {
                                kc_err("model build: layer %zu: W row %zu has %zu values, "
                                       "expected %u",
                                       li, i, json_array_size(row), ml->out);
                                goto out;
                        }
                        for (j = 0; j < ml->out; j++)
                                ml->W[i * ml->out + j] =
                                    (float)json_number_value(json_array_get(row, j));
                }
                for (j = 0; j < ml->out; j++)
                        ml->b[j] = (float)json_number_value(json_array_get(b, j));
        }
        rc = write_model(m, c.out_path);
out:
        json_decref(doc);
        model_unref(m);
        kf_config_free(build_opts, &c, NULL);
        return rc;
}

static int cmd_inspect(int argc, char **argv)
{
        kc_conf_t c = {0};
        char err[512];
        model_t *m;
        json_t *o, *layers;
        int first = kc_parse(inspect_opts, &c, 0, argc, argv,
                             "model inspect FILE\n\nValidates a model file and prints what it "
                             "holds as JSON.");
        if (first != argc - 1) {
                kc_err("model inspect: give one model file");
                return KC_EXIT_USAGE;
        }
        if (!(m = model_load_file(argv[first], err, sizeof(err)))) {
                kc_err("model inspect: %s", err);
                return KC_EXIT_FAIL;
        }
        layers = json_array();
        for (uint32_t l = 0; l < m->n_layers; l++)
                json_array_append_new(layers, json_pack("{s:i,s:i,s:s}", "in", m->layers[l].in,
                                                        "out", m->layers[l].out, "act",
                                                        model_act_name(m->layers[l].act)));
        o = json_pack("{s:s,s:i,s:i,s:o,s:I,s:I}", "name", m->name, "input_dim", m->input_dim,
                      "output_dim", m->output_dim, "layers", layers, "flops_per_row",
                      (json_int_t)m->flops_per_row, "weight_bytes", (json_int_t)m->weight_bytes);
        kc_print_json(o);
        json_decref(o);
        model_unref(m);
        return KC_EXIT_OK;
}

int kc_cmd_model(int argc, char **argv)
{
        if (argc >= 2 && !strcmp(argv[1], "init"))
                return cmd_init(argc - 1, argv + 1);
        if (argc >= 2 && !strcmp(argv[1], "build"))
                return cmd_build(argc - 1, argv + 1);
        if (argc >= 2 && !strcmp(argv[1], "inspect"))
                return cmd_inspect(argc - 1, argv + 1);
        kc_err("model: expected a subcommand: init, build or inspect");
        return KC_EXIT_USAGE;
}
