/* cmd_model.c - `kinfer model init|build|inspect`: create model files
 * (random weights for tests and benchmarks, exact weights or an ensemble
 * from JSON) and show what a file holds; registry subcommands go on to
 * cmd_registry.c. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "kinfer.h"
#include "model.h"
#include "model_registry.h"

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

/* Uniform in [-a, a), from splitmix64: a seed gives the same model on
 * every machine. */
static float rng_uniform(uint64_t *s, float a)
{
        return (float)kf_splitmix64_pm1(s) * a;
}

static int write_blob(const char *path, const char *buf, size_t len)
{
        FILE *fp = fopen(path, "wb");
        if (!fp || fwrite(buf, 1, len, fp) != len) {
                if (fp)
                        fclose(fp);
                kc_err("model: cannot write %s", path);
                return KC_EXIT_FAIL;
        }
        if (fclose(fp)) {
                kc_err("model: cannot write %s", path);
                return KC_EXIT_FAIL;
        }
        return KC_EXIT_OK;
}

static int write_model(const model_t *m, const char *path)
{
        char err[512], *buf;
        size_t len;
        int rc;

        if (model_encode(m, &buf, &len, err, sizeof(err))) {
                kc_err("model: %s", err);
                return KC_EXIT_FAIL;
        }
        rc = write_blob(path, buf, len);
        free(buf);
        if (rc == KC_EXIT_OK)
                fprintf(stderr, "kinfer: wrote %s: model %s, %u layers, %u -> %u, %zu bytes\n",
                        path, m->name, m->n_layers, m->input_dim, m->output_dim, len);
        return rc;
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
                        kc_err("model init: --act names %d activations for %d layers", na, nd - 1);
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
                float a = sqrtf(6.0f / (float)(L->in + L->out));
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

/* {"name": N, "kind": "ensemble", "input_dim": I, "output_dim": O,
 *  "members": [{"model": M, "version": V (optional), "weight": W,
 *                "act": A (optional: applied to the member's output first)}, ...]} */
static int build_ensemble(json_t *doc, const char *spec_path, const char *out_path)
{
        model_ens_spec_t spec = {0};
        json_t *members = json_object_get(doc, "members"), *mj;
        json_int_t din = json_integer_value(json_object_get(doc, "input_dim"));
        json_int_t dout = json_integer_value(json_object_get(doc, "output_dim"));
        const char *name = json_string_value(json_object_get(doc, "name"));
        char err[512], *buf = NULL;
        size_t len, i;
        int rc = KC_EXIT_USAGE;

        if (!name || strlen(name) > JOB_MODEL_MAX || din < 1 || din > MODEL_MAX_DIM || dout < 1 ||
            dout > MODEL_MAX_DIM || json_array_size(members) == 0 ||
            json_array_size(members) > MODEL_MAX_MEMBERS) {
                kc_err("model build: %s: an ensemble needs \"name\", \"input_dim\", "
                       "\"output_dim\" and 1..%d \"members\"",
                       spec_path, MODEL_MAX_MEMBERS);
                return rc;
        }
        kf_strlcpy(spec.name, name, sizeof(spec.name));
        spec.input_dim = (uint32_t)din;
        spec.output_dim = (uint32_t)dout;
        spec.n_members = (uint32_t)json_array_size(members);
        if (!(spec.members = calloc(spec.n_members, sizeof(*spec.members))))
                return KC_EXIT_FAIL;
        json_array_foreach(members, i, mj)
        {
                const char *m = json_string_value(json_object_get(mj, "model"));
                json_t *v = json_object_get(mj, "version"), *w = json_object_get(mj, "weight");
                json_t *a = json_object_get(mj, "act");
                int act = MODEL_ACT_IDENTITY;
                if (a && (!json_is_string(a) ||
                          (act = model_act_parse(json_string_value(a),
                                                 strlen(json_string_value(a)))) < 0)) {
                        kc_err("model build: %s: member %zu: \"act\" must be one of identity, "
                               "relu, tanh, sigmoid, softmax",
                               spec_path, i);
                        goto out;
                }
                if (!m || strlen(m) > JOB_MODEL_MAX || !json_is_number(w) ||
                    (v && (!json_is_integer(v) || json_integer_value(v) < 0 ||
                           json_integer_value(v) > UINT32_MAX))) {
                        kc_err("model build: %s: member %zu needs \"model\" (a name), "
                               "\"weight\" (a number) and optionally \"version\"",
                               spec_path, i);
                        goto out;
                }
                kf_strlcpy(spec.members[i].model, m, sizeof(spec.members[i].model));
                spec.members[i].version = v ? (uint32_t)json_integer_value(v) : 0;
                spec.members[i].weight = json_number_value(w);
                spec.members[i].act = (model_act_t)act;
        }
        if (model_ens_encode(&spec, &buf, &len, err, sizeof(err)) != 0) {
                kc_err("model build: %s: %s", spec_path, err);
                goto out;
        }
        rc = write_blob(out_path, buf, len);
        if (rc == KC_EXIT_OK)
                fprintf(stderr,
                        "kinfer: wrote %s: ensemble %s of %u members, %u -> %u, %zu bytes\n",
                        out_path, spec.name, spec.n_members, spec.input_dim, spec.output_dim, len);
out:
        free(buf);
        free(spec.members);
        return rc;
}

/* {"name": N, "layers": [{"W": [[..in rows, each out wide..]], "b": [..], "act": A}]},
 * or an ensemble (build_ensemble). */
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

        first =
            kc_parse(build_opts, &c, 0, argc, argv,
                     "model build SPEC.json -o FILE\n\nWrites a model from exact weights: "
                     "{\"name\": N, \"layers\": [{\"W\": [[...]], \"b\": [...],\n\"act\": "
                     "\"relu\"}, ...]} with W given as in rows of out values; or an "
                     "ensemble:\n{\"name\": N, \"kind\": \"ensemble\", \"input_dim\": I, "
                     "\"output_dim\": O, \"members\":\n[{\"model\": M, \"version\": V, "
                     "\"weight\": W, \"act\": A}, ...]} (no version: the member's active one; act, "
                     "optional, is applied to the member's output before it is weighted: "
                     "softmax averages probabilities of members that output logits).  The "
                     "output is the sum of weight x act(member(x)).");
        if (first != argc - 1 || !c.out_path) {
                kc_err("model build: need SPEC.json and --out (see --help)");
                goto out;
        }
        if (!(doc = json_load_file(argv[first], 0, &jerr))) {
                kc_err("model build: %s:%d: %s", argv[first], jerr.line, jerr.text);
                goto out;
        }
        if (json_is_string(json_object_get(doc, "kind")) &&
            !strcmp(json_string_value(json_object_get(doc, "kind")), "ensemble")) {
                rc = build_ensemble(doc, argv[first], c.out_path);
                goto out;
        }
        layers = json_object_get(doc, "layers");
        nl = json_array_size(layers);
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
                acts[li] = (model_act_t)a;
        }
        if (!(m = model_new_mlp(json_string_value(json_object_get(doc, "name")), (uint32_t)nl, dims,
                                acts, err, sizeof(err)))) {
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
        char err[512], sha[MREG_SHA256_HEX];
        model_file_t f;
        json_t *o, *arr;
        size_t len = 0;
        char *buf;
        int first = kc_parse(inspect_opts, &c, 0, argc, argv,
                             "model inspect FILE\n\nValidates a model file and prints what it "
                             "holds as JSON.");
        if (first != argc - 1) {
                kc_err("model inspect: give one model file");
                return KC_EXIT_USAGE;
        }
        /* Not model_load_file: that refuses ensembles. */
        if (kf_file_read(argv[first], MODEL_MAX_FILE_BYTES, &buf, &len, err, sizeof(err)) != 0) {
                kc_err("model inspect: %s", err);
                return KC_EXIT_FAIL;
        }
        if (model_file_decode(buf, len, &f, err, sizeof(err)) != 0) {
                kc_err("model inspect: %s: %s", argv[first], err);
                free(buf);
                return KC_EXIT_FAIL;
        }
        mreg_sha256_hex(buf, len, sha);
        free(buf);
        arr = json_array();
        if (f.kind == MODEL_KIND_MLP) {
                const model_t *m = f.mlp;
                for (uint32_t l = 0; l < m->n_layers; l++)
                        json_array_append_new(arr, json_pack("{s:i,s:i,s:s}", "in", m->layers[l].in,
                                                             "out", m->layers[l].out, "act",
                                                             model_act_name(m->layers[l].act)));
                o = json_pack("{s:s,s:s,s:i,s:i,s:o,s:I,s:I,s:I,s:s}", "name", m->name, "kind",
                              "mlp", "input_dim", m->input_dim, "output_dim", m->output_dim,
                              "layers", arr, "flops_per_row", (json_int_t)m->flops_per_row,
                              "weight_bytes", (json_int_t)m->weight_bytes, "size", (json_int_t)len,
                              "sha256", sha);
        } else {
                const model_ens_spec_t *e = f.ens;
                for (uint32_t i = 0; i < e->n_members; i++)
                        json_array_append_new(arr, json_pack("{s:s,s:i,s:f,s:s}", "model",
                                                             e->members[i].model, "version",
                                                             (json_int_t)e->members[i].version,
                                                             "weight", e->members[i].weight, "act",
                                                             model_act_name(e->members[i].act)));
                o = json_pack("{s:s,s:s,s:i,s:i,s:o,s:I,s:s}", "name", e->name, "kind", "ensemble",
                              "input_dim", e->input_dim, "output_dim", e->output_dim, "members",
                              arr, "size", (json_int_t)len, "sha256", sha);
        }
        kc_print_json(o);
        json_decref(o);
        model_file_clear(&f);
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
        if (argc >= 2 && (!strcmp(argv[1], "push") || !strcmp(argv[1], "list") ||
                          !strcmp(argv[1], "show") || !strcmp(argv[1], "activate") ||
                          !strcmp(argv[1], "rollback") || !strcmp(argv[1], "rm")))
                return kc_cmd_registry(argc - 1, argv + 1);
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
                printf("Usage: kinfer model SUBCOMMAND [OPTION]... (each takes --help)\n\n"
                       "Model files:\n"
                       "  init      write a model file with random weights (for trying things)\n"
                       "  build     write a model file from exact weights given as JSON\n"
                       "  inspect   show what a model file holds\n"
                       "The model registry in Redis (docs/models.md):\n"
                       "  push      store a model file as a new version (--activate to serve it)\n"
                       "  list      the models and their active versions\n"
                       "  show      one model's versions\n"
                       "  activate  serve a version\n"
                       "  rollback  serve the version served before\n"
                       "  rm        remove a version, or a model\n");
                return KC_EXIT_OK;
        }
        kc_err("model: expected a subcommand: init, build, inspect (files), or push, list, show, "
               "activate, rollback, rm (the registry); see kinfer model --help");
        return KC_EXIT_USAGE;
}
