/* fuzz_model_decode.c - libFuzzer target for model_decode (common/model.c):
 * arbitrary bytes in; on success the model is checked for what the rest of
 * the worker relies on:
 *   - the layer dims chain (in_0 = input_dim, in_{i+1} = out_i, last out =
 *     output_dim), max_width, flops_per_row, every weight finite;
 *   - model_encode -> model_decode gives back the same model, bit for bit;
 *   - model_forward on one row of zeros runs (ASan watches its scratch) and,
 *     when the weights are small enough that no value can overflow float32,
 *     its output is finite.
 * On failure the message must be set; an ensemble file (which model_decode
 * refuses) must encode and decode back to the same members and acts.
 * Built and run by `make fuzz`. */
#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "fuzz_model_decode: %s: ", #cond);                         \
                        fprintf(stderr, __VA_ARGS__);                                              \
                        fputc('\n', stderr);                                                       \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        (void)argc;
        (void)argv;
        openblas_set_num_threads(1); /* as the worker runs it by default */
        return 0;
}

static float max_abs(const float *v, size_t n)
{
        float m = 0;
        for (size_t i = 0; i < n; i++)
                if (fabsf(v[i]) > m)
                        m = fabsf(v[i]);
        return m;
}

static void check_same(const model_t *a, const model_t *b)
{
        CHECK(!strcmp(a->name, b->name) && a->input_dim == b->input_dim &&
                  a->output_dim == b->output_dim && a->n_layers == b->n_layers,
              "model header changed in a round trip");
        for (uint32_t i = 0; i < a->n_layers; i++) {
                const model_layer_t *x = &a->layers[i], *y = &b->layers[i];
                CHECK(x->in == y->in && x->out == y->out && x->act == y->act,
                      "layer %u changed in a round trip", i);
                CHECK(!memcmp(x->W, y->W, (size_t)x->in * x->out * sizeof(float)) &&
                          !memcmp(x->b, y->b, x->out * sizeof(float)),
                      "layer %u weights changed in a round trip", i);
        }
}

static void check_model(const model_t *m)
{
        uint64_t flops = 0;
        uint32_t width = m->input_dim;
        /* An upper bound on |value| after each layer for a zero input row:
         * |x.W + b| <= in * |x|max * |W|max + |b|max, and no activation
         * grows it (tanh, sigmoid and softmax bound it by 1). */
        double bound = 0;

        CHECK(job_name_valid(m->name, strlen(m->name), JOB_MODEL_MAX), "bad name '%s'", m->name);
        CHECK(m->n_layers >= 1 && m->n_layers <= MODEL_MAX_LAYERS, "%u layers", m->n_layers);
        CHECK(m->layers[0].in == m->input_dim, "layer 0 in %u != input_dim %u", m->layers[0].in,
              m->input_dim);
        CHECK(m->layers[m->n_layers - 1].out == m->output_dim, "last out %u != output_dim %u",
              m->layers[m->n_layers - 1].out, m->output_dim);
        CHECK(m->refcnt == 1, "refcnt %d", m->refcnt);
        for (uint32_t i = 0; i < m->n_layers; i++) {
                const model_layer_t *l = &m->layers[i];
                size_t nw = (size_t)l->in * l->out;
                CHECK(i == 0 || l->in == m->layers[i - 1].out, "layer %u in %u != previous out %u",
                      i, l->in, m->layers[i - 1].out);
                CHECK(l->in >= 1 && l->out >= 1 && l->in <= MODEL_MAX_DIM &&
                          l->out <= MODEL_MAX_DIM,
                      "layer %u is %ux%u", i, l->in, l->out);
                CHECK((unsigned)l->act < MODEL_ACT__CNT, "layer %u act %d", i, (int)l->act);
                for (size_t k = 0; k < nw; k++)
                        CHECK(isfinite(l->W[k]), "layer %u W[%zu] = %g", i, k, (double)l->W[k]);
                for (size_t k = 0; k < l->out; k++)
                        CHECK(isfinite(l->b[k]), "layer %u b[%zu] = %g", i, k, (double)l->b[k]);
                flops += 2 * (uint64_t)l->in * l->out;
                if (l->out > width)
                        width = l->out;
                bound = (double)l->in * bound * max_abs(l->W, nw) + max_abs(l->b, l->out);
                if (l->act == MODEL_ACT_TANH || l->act == MODEL_ACT_SIGMOID ||
                    l->act == MODEL_ACT_SOFTMAX)
                        bound = bound < 1 ? bound : 1;
                if (!(bound < 1e30))
                        bound = INFINITY; /* no finiteness promise past this layer */
        }
        CHECK(m->flops_per_row == flops, "flops_per_row %llu, layers say %llu",
              (unsigned long long)m->flops_per_row, (unsigned long long)flops);
        CHECK(m->max_width == width, "max_width %u, layers say %u", m->max_width, width);

        {
                float *x = calloc(m->input_dim, sizeof(float));
                float *y = malloc(m->output_dim * sizeof(float));
                model_scratch_t s = {0};
                CHECK(x && y, "out of memory");
                CHECK(model_forward(m, x, 1, y, &s) == 0, "model_forward failed");
                if (isfinite(bound))
                        for (uint32_t k = 0; k < m->output_dim; k++)
                                CHECK(isfinite(y[k]), "output[%u] = %g though |values| <= %g", k,
                                      (double)y[k], bound);
                model_scratch_free(&s);
                free(x);
                free(y);
        }
}

/* An ensemble file (model_decode refuses those): encode -> decode gives
 * back the same members, acts and all. */
static void check_ensemble(const uint8_t *data, size_t size)
{
        model_file_t f, g;
        char err[512], *buf = NULL;
        size_t len = 0;

        if (model_file_decode(data, size, &f, err, sizeof(err)) != 0)
                return;
        if (f.kind == MODEL_KIND_ENSEMBLE) {
                CHECK(model_ens_encode(f.ens, &buf, &len, err, sizeof(err)) == 0,
                      "model_ens_encode refused a decoded ensemble: %s", err);
                CHECK(model_file_decode(buf, len, &g, err, sizeof(err)) == 0,
                      "re-decoding an encoded ensemble failed: %s", err);
                CHECK(g.kind == MODEL_KIND_ENSEMBLE && g.ens->n_members == f.ens->n_members,
                      "ensemble members changed");
                for (uint32_t i = 0; i < f.ens->n_members; i++) {
                        const model_member_spec_t *a = &f.ens->members[i], *b = &g.ens->members[i];
                        CHECK(!strcmp(a->model, b->model) && a->version == b->version &&
                                  a->weight == b->weight && a->act == b->act,
                              "member %u changed", i);
                }
                model_file_clear(&g);
                free(buf);
        }
        model_file_clear(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char err[512];
        model_t *m;

        memset(err, 'x', sizeof(err));
        m = model_decode(data, size, err, sizeof(err));
        if (!m) {
                CHECK(memchr(err, '\0', sizeof(err)) != NULL, "errstr not terminated");
                CHECK(err[0] != '\0', "refused without a message");
                check_ensemble(data, size);
                return 0;
        }
        check_model(m);
        {
                char *buf = NULL;
                size_t len = 0;
                model_t *again;
                CHECK(model_encode(m, &buf, &len, err, sizeof(err)) == 0,
                      "model_encode refused a decoded model: %s", err);
                again = model_decode(buf, len, err, sizeof(err));
                CHECK(again != NULL, "re-decoding an encoded model failed: %s", err);
                check_same(m, again);
                model_unref(again);
                free(buf);
        }
        model_unref(m);
        return 0;
}
