/* test_ensemble.c - ensemble files (decoding, refusals, encoding), building
 * ensembles from members (flattening, dimension checks, references) and
 * their forward pass against a plain double-precision reference. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* ---- hand-packed ensemble files (msgpack-c directly, not kinfer's encoder) */

typedef struct tmember_s {
        const char *model; /* NULL omits */
        int64_t version;   /* < 0 omits */
        double weight;
        int omit_weight;
        const char *extra_key; /* an unknown key, or NULL */
        const char *act;       /* NULL omits */
} tmember_t;

typedef struct tens_s {
        const char *name, *kind;
        int64_t input_dim, output_dim;
        int n_members; /* < 0: members is a string, not an array */
        const tmember_t *members;
        int with_layers; /* also a "layers" key */
        int v;           /* format version; 0 writes 1 */
} tens_t;

static void pk_str(msgpack_packer *pk, const char *s)
{
        msgpack_pack_str_with_body(pk, s, strlen(s));
}

static char *pack_ens(const tens_t *t, size_t *len)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7 + t->with_layers);
        pk_str(&pk, "format");
        pk_str(&pk, "kinfer-model");
        pk_str(&pk, "v");
        msgpack_pack_uint32(&pk, t->v ? (uint32_t)t->v : 1);
        pk_str(&pk, "name");
        pk_str(&pk, t->name);
        pk_str(&pk, "kind");
        pk_str(&pk, t->kind ? t->kind : "ensemble");
        pk_str(&pk, "input_dim");
        msgpack_pack_int64(&pk, t->input_dim);
        pk_str(&pk, "output_dim");
        msgpack_pack_int64(&pk, t->output_dim);
        pk_str(&pk, "members");
        if (t->n_members < 0) {
                pk_str(&pk, "not an array");
        } else {
                msgpack_pack_array(&pk, (size_t)t->n_members);
                for (int i = 0; i < t->n_members; i++) {
                        const tmember_t *m = &t->members[i];
                        msgpack_pack_map(&pk, (m->model != NULL) + (m->version >= 0) +
                                                  !m->omit_weight + (m->extra_key != NULL) +
                                                  (m->act != NULL));
                        if (m->model) {
                                pk_str(&pk, "model");
                                pk_str(&pk, m->model);
                        }
                        if (m->version >= 0) {
                                pk_str(&pk, "version");
                                msgpack_pack_int64(&pk, m->version);
                        }
                        if (!m->omit_weight) {
                                pk_str(&pk, "weight");
                                /* whole weights as integers: the file may use any number */
                                if (m->weight == floor(m->weight) && fabs(m->weight) < 1e6)
                                        msgpack_pack_int64(&pk, (int64_t)m->weight);
                                else
                                        msgpack_pack_double(&pk, m->weight);
                        }
                        if (m->extra_key) {
                                pk_str(&pk, m->extra_key);
                                msgpack_pack_nil(&pk);
                        }
                        if (m->act) {
                                pk_str(&pk, "act");
                                pk_str(&pk, m->act);
                        }
                }
        }
        if (t->with_layers) {
                pk_str(&pk, "layers");
                msgpack_pack_array(&pk, 0);
        }
        *len = sb.size;
        return sb.data;
}

static void expect_file_refused(const tens_t *t, const char *want)
{
        model_file_t f;
        char err[512] = "";
        size_t len;
        char *buf = pack_ens(t, &len);
        int rc = model_file_decode(buf, len, &f, err, sizeof(err));
        if (rc == 0 || !strstr(err, want))
                print_error("expected a refusal containing \"%s\", got rc %d \"%s\"\n", want, rc,
                            err);
        assert_int_not_equal(rc, 0);
        assert_non_null(strstr(err, want));
        free(buf);
}

static void test_decode_ensemble(void **state)
{
        const tmember_t mem[] = {
            {"a", -1, 0.5, 0, NULL}, {"b.v2", 7, -2, 0, NULL}, {"c:x", 0, 1e-3, 0, NULL}};
        const tens_t t = {"ens", NULL, 5, 3, 3, mem, 0};
        model_file_t f;
        char err[256];
        size_t len;
        char *buf = pack_ens(&t, &len);
        (void)state;

        assert_int_equal(model_file_decode(buf, len, &f, err, sizeof(err)), 0);
        assert_int_equal(f.kind, MODEL_KIND_ENSEMBLE);
        assert_null(f.mlp);
        assert_non_null(f.ens);
        assert_string_equal(f.ens->name, "ens");
        assert_int_equal(f.ens->input_dim, 5);
        assert_int_equal(f.ens->output_dim, 3);
        assert_int_equal(f.ens->n_members, 3);
        assert_string_equal(f.ens->members[0].model, "a");
        assert_int_equal(f.ens->members[0].version, 0);
        assert_true(f.ens->members[0].weight == 0.5);
        assert_string_equal(f.ens->members[1].model, "b.v2");
        assert_int_equal(f.ens->members[1].version, 7);
        assert_true(f.ens->members[1].weight == -2.0);
        assert_string_equal(f.ens->members[2].model, "c:x");
        assert_int_equal(f.ens->members[2].version, 0);
        assert_true(f.ens->members[2].weight == 1e-3);
        model_file_clear(&f);
        model_file_clear(&f); /* cleared twice is harmless */

        /* model_decode wants weights it can run: an ensemble is refused, by name. */
        err[0] = '\0';
        assert_null(model_decode(buf, len, err, sizeof(err)));
        assert_non_null(strstr(err, "'ens' is an ensemble"));
        free(buf);
}

static void test_ensemble_refused(void **state)
{
        tmember_t ok = {"a", -1, 1.0, 0, NULL};
        tmember_t many[MODEL_MAX_MEMBERS + 1];
        tens_t t = {"ens", NULL, 4, 2, 1, &ok, 0};
        tmember_t m;
        (void)state;

        for (int i = 0; i <= MODEL_MAX_MEMBERS; i++)
                many[i] = ok;
        t.n_members = -1;
        expect_file_refused(&t, "members must be an array");
        t.n_members = 0;
        expect_file_refused(&t, "0 members, expected 1..64");
        t.members = many;
        t.n_members = MODEL_MAX_MEMBERS + 1;
        expect_file_refused(&t, "65 members, expected 1..64");
        t.n_members = 1;
        t.members = &m;

        m = ok;
        m.model = NULL;
        expect_file_refused(&t, "member 0: missing model");
        m = ok;
        m.model = "bad name";
        expect_file_refused(&t, "member 0: model \"bad name\" is not a name");
        m = ok;
        m.version = -1;
        m.extra_key = "w";
        expect_file_refused(&t, "member 0: unknown key \"w\"");
        m = ok;
        m.omit_weight = 1;
        expect_file_refused(&t, "member 0: missing weight");
        m = ok;
        m.weight = NAN;
        expect_file_refused(&t, "member 0: weight nan is not a finite float32");
        m = ok;
        m.weight = 1e39; /* finite as a double, not as a float32 */
        expect_file_refused(&t, "is not a finite float32");
        m = ok;
        m.model = "ens"; /* follows its own active version: a cycle */
        expect_file_refused(&t, "cannot follow its own active version");
        m.version = 3; /* pinned to an older version of itself: a blend, allowed */
        {
                model_file_t f;
                char err[256];
                size_t len;
                char *buf = pack_ens(&t, &len);
                assert_int_equal(model_file_decode(buf, len, &f, err, sizeof(err)), 0);
                assert_int_equal(f.ens->members[0].version, 3);
                model_file_clear(&f);
                free(buf);
        }

        m = ok;
        t.with_layers = 1;
        expect_file_refused(&t, "an ensemble has members, not layers");
        t.with_layers = 0;
        t.kind = "mlp";
        expect_file_refused(&t, "an mlp has layers, not members");
        t.kind = "stack";
        expect_file_refused(&t, "unknown kind \"stack\" (expected \"mlp\" or \"ensemble\")");
        t.kind = NULL;
        t.input_dim = 0;
        expect_file_refused(&t, "input_dim 0 out of range");
        t.input_dim = 4;
        t.output_dim = (int64_t)MODEL_MAX_DIM + 1;
        expect_file_refused(&t, "output_dim 1048577 out of range");
}

static void test_encode_round_trip(void **state)
{
        model_member_spec_t mem[2] = {{"left", 0, 0.25}, {"right", 9, -3.5}};
        model_ens_spec_t spec = {"both", 6, 2, 2, mem};
        model_file_t f;
        char err[256], *buf;
        size_t len;
        (void)state;

        assert_int_equal(model_ens_encode(&spec, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(model_file_decode(buf, len, &f, err, sizeof(err)), 0);
        assert_int_equal(f.kind, MODEL_KIND_ENSEMBLE);
        assert_string_equal(f.ens->name, "both");
        assert_int_equal(f.ens->input_dim, 6);
        assert_int_equal(f.ens->output_dim, 2);
        assert_int_equal(f.ens->n_members, 2);
        for (int i = 0; i < 2; i++) {
                assert_string_equal(f.ens->members[i].model, mem[i].model);
                assert_int_equal(f.ens->members[i].version, mem[i].version);
                assert_true(f.ens->members[i].weight == mem[i].weight);
        }
        model_file_clear(&f);
        free(buf);

        /* What decode would refuse is not written. */
        mem[1].weight = INFINITY;
        assert_int_equal(model_ens_encode(&spec, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "member 1: weight inf"));
        mem[1].weight = 1;
        strcpy(mem[0].model, "both");
        assert_int_equal(model_ens_encode(&spec, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "cannot follow its own active version"));
        strcpy(mem[0].model, "left");
        spec.n_members = 0;
        assert_int_equal(model_ens_encode(&spec, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "0 members"));
}

/* ---- building and the forward pass ------------------------------------ */

static uint64_t rng = 12345;
static double rnd(void) /* uniform in [-1, 1) */
{
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

static model_t *random_mlp(const char *name, uint32_t n_layers, const uint32_t *dims,
                           const model_act_t *acts)
{
        char err[256];
        model_t *m = model_new_mlp(name, n_layers, dims, acts, err, sizeof(err));
        assert_non_null(m);
        for (uint32_t l = 0; l < n_layers; l++) {
                for (size_t i = 0; i < (size_t)dims[l] * dims[l + 1]; i++)
                        m->layers[l].W[i] = (float)(rnd() * 0.8);
                for (uint32_t i = 0; i < dims[l + 1]; i++)
                        m->layers[l].b[i] = (float)(rnd() * 0.2);
        }
        return m;
}

/* One row through an MLP in double, with plain loops. */
static void ref_mlp(const model_t *m, const float *x, double *y)
{
        double a[64], b[64];
        for (uint32_t i = 0; i < m->input_dim; i++)
                a[i] = x[i];
        for (uint32_t l = 0; l < m->n_layers; l++) {
                const model_layer_t *L = &m->layers[l];
                double mx = -INFINITY, sum = 0;
                for (uint32_t j = 0; j < L->out; j++) {
                        double s = L->b[j];
                        for (uint32_t i = 0; i < L->in; i++)
                                s += a[i] * L->W[(size_t)i * L->out + j];
                        switch (L->act) {
                        case MODEL_ACT_RELU:
                                s = s > 0 ? s : 0;
                                break;
                        case MODEL_ACT_TANH:
                                s = tanh(s);
                                break;
                        case MODEL_ACT_SIGMOID:
                                s = 1 / (1 + exp(-s));
                                break;
                        default:
                                break;
                        }
                        b[j] = s;
                        mx = s > mx ? s : mx;
                }
                if (L->act == MODEL_ACT_SOFTMAX) {
                        for (uint32_t j = 0; j < L->out; j++)
                                sum += (b[j] = exp(b[j] - mx));
                        for (uint32_t j = 0; j < L->out; j++)
                                b[j] /= sum;
                }
                memcpy(a, b, L->out * sizeof(double));
        }
        memcpy(y, a, m->output_dim * sizeof(double));
}

static void assert_close(double got, double want, const char *what, int row, int col)
{
        if (fabs(got - want) > 1e-5 * fmax(1.0, fabs(want)))
                fail_msg("%s row %d col %d: got %.9g, reference %.9g", what, row, col, got, want);
}

static model_ens_spec_t *spec_of(const char *name, uint32_t din, uint32_t dout, uint32_t n,
                                 const char *const *names, const double *w)
{
        model_ens_spec_t *s = calloc(1, sizeof(*s));
        assert_non_null(s);
        s->members = calloc(n, sizeof(*s->members));
        assert_non_null(s->members);
        strcpy(s->name, name);
        s->input_dim = din;
        s->output_dim = dout;
        s->n_members = n;
        for (uint32_t i = 0; i < n; i++) {
                strcpy(s->members[i].model, names[i]);
                s->members[i].weight = w[i];
        }
        return s;
}

/* Three MLPs of different shapes, weighted 0.5, -1.25, 2: the ensemble's
 * output is the weighted sum of the members' reference outputs, for a
 * stacked batch and row by row alike. */
static void test_forward_matches_reference(void **state)
{
        const uint32_t d1[] = {5, 7, 3}, d2[] = {5, 3}, d3[] = {5, 4, 4, 3};
        const model_act_t a1[] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY}, a2[] = {MODEL_ACT_TANH},
                          a3[] = {MODEL_ACT_SIGMOID, MODEL_ACT_TANH, MODEL_ACT_SOFTMAX};
        const char *names[] = {"m1", "m2", "m3"};
        const double w[] = {0.5, -1.25, 2.0};
        model_t *mem[3] = {random_mlp("m1", 2, d1, a1), random_mlp("m2", 1, d2, a2),
                           random_mlp("m3", 3, d3, a3)};
        model_ens_spec_t *spec = spec_of("ens", 5, 3, 3, names, w);
        model_scratch_t s = {0};
        enum { ROWS = 17 };
        float X[ROWS * 5], Y[ROWS * 3], Y1[3];
        char err[256];
        model_t *e;
        (void)state;

        e = model_ens_build(spec, mem, err, sizeof(err));
        if (!e)
                fail_msg("model_ens_build: %s", err);
        assert_int_equal(e->kind, MODEL_KIND_ENSEMBLE);
        assert_int_equal(e->n_members, 3);
        assert_int_equal(e->input_dim, 5);
        assert_int_equal(e->output_dim, 3);
        assert_int_equal(e->flops_per_row,
                         mem[0]->flops_per_row + mem[1]->flops_per_row + mem[2]->flops_per_row);
        for (int i = 0; i < ROWS * 5; i++)
                X[i] = (float)(rnd() * 3);
        assert_int_equal(model_forward(e, X, ROWS, Y, &s), 0);
        for (int r = 0; r < ROWS; r++) {
                double want[3] = {0, 0, 0}, y[3];
                for (int k = 0; k < 3; k++) {
                        ref_mlp(mem[k], X + r * 5, y);
                        for (int j = 0; j < 3; j++)
                                want[j] += w[k] * y[j];
                }
                for (int j = 0; j < 3; j++)
                        assert_close(Y[r * 3 + j], want[j], "stacked", r, j);
                /* one row alone, through the same scratch: the same numbers */
                assert_int_equal(model_forward(e, X + r * 5, 1, Y1, &s), 0);
                for (int j = 0; j < 3; j++)
                        assert_close(Y1[j], want[j], "single", r, j);
        }
        model_scratch_free(&s);
        model_unref(e);
        for (int k = 0; k < 3; k++)
                model_unref(mem[k]);
        model_ens_spec_free(spec);
}

/* E2 = 2 * E1 + 1 * A with E1 = 0.5 A + 0.5 B is 2 A + 1 B: nested
 * ensembles are flattened and a repeated MLP is computed once. */
static void test_nested_flattened(void **state)
{
        const uint32_t d[] = {3, 2};
        const model_act_t act[] = {MODEL_ACT_IDENTITY};
        model_t *A = random_mlp("A", 1, d, act), *B = random_mlp("B", 1, d, act);
        const char *n1[] = {"A", "B"}, *n2[] = {"E1", "A"};
        const double w1[] = {0.5, 0.5}, w2[] = {2.0, 1.0};
        model_ens_spec_t *s1 = spec_of("E1", 3, 2, 2, n1, w1), *s2 = spec_of("E2", 3, 2, 2, n2, w2);
        model_t *r1[2] = {A, B}, *E1, *E2, *r2[2];
        model_scratch_t s = {0};
        const float x[3] = {0.25f, -1.5f, 2.0f};
        double ya[2], yb[2];
        float y[2];
        char err[256];
        (void)state;

        assert_non_null(E1 = model_ens_build(s1, r1, err, sizeof(err)));
        r2[0] = E1;
        r2[1] = A;
        assert_non_null(E2 = model_ens_build(s2, r2, err, sizeof(err)));
        assert_int_equal(E2->n_members, 2);
        for (uint32_t i = 0; i < 2; i++) {
                const model_t *m = E2->members[i].model;
                assert_int_equal(m->kind, MODEL_KIND_MLP);
                assert_true(E2->members[i].weight == (m == A ? 2.0f : 1.0f));
        }
        assert_int_equal(E2->flops_per_row, A->flops_per_row + B->flops_per_row);
        assert_int_equal(model_forward(E2, x, 1, y, &s), 0);
        ref_mlp(A, x, ya);
        ref_mlp(B, x, yb);
        for (int j = 0; j < 2; j++)
                assert_close(y[j], 2 * ya[j] + yb[j], "nested", 0, j);

        /* References: the built ensembles hold the MLPs, not the caller. */
        assert_int_equal(A->refcnt, 3); /* ours, E1's, E2's */
        model_unref(E1);
        assert_int_equal(A->refcnt, 2);
        assert_int_equal(model_forward(E2, x, 1, y, &s), 0); /* E2 still works */
        model_unref(E2);
        assert_int_equal(A->refcnt, 1);
        assert_int_equal(B->refcnt, 1);
        model_scratch_free(&s);
        model_unref(A);
        model_unref(B);
        model_ens_spec_free(s1);
        model_ens_spec_free(s2);
}

/* output softmax on probabilities is refused: an MLP that ends in softmax,
 * or a convex combination of such members; anything else is computed. */
static void test_softmax_on_probabilities_refused(void **state)
{
        const uint32_t d[] = {3, 2};
        const model_act_t sm[] = {MODEL_ACT_SOFTMAX}, id[] = {MODEL_ACT_IDENTITY};
        model_t *p1 = random_mlp("p1", 1, d, sm), *p2 = random_mlp("p2", 1, d, sm),
                *raw = random_mlp("raw", 1, d, id), *e;
        const char *names[] = {"p1", "p2"}, *mixed[] = {"p1", "raw"};
        const double half[] = {0.5, 0.5}, over[] = {0.5, 0.6}, neg[] = {1.5, -0.5};
        model_t *rp[2] = {p1, p2}, *rm[2] = {p1, raw};
        job_t job = {0};
        kf_err_t err;
        char msg[256];
        (void)state;

        job.cols = 3;
        job.output = JOB_OUTPUT_SOFTMAX;
        assert_int_equal(model_check_job(p1, &job, &err, msg, sizeof(msg)), -1);
        assert_int_equal(err, KF_ERR_BAD_REQUEST);
        assert_non_null(strstr(msg, "model 'p1' version 0 already outputs probabilities"));
        assert_int_equal(model_check_job(raw, &job, &err, msg, sizeof(msg)), 0);
        job.output = JOB_OUTPUT_RAW; /* raw, argmax, topk of probabilities are fine */
        assert_int_equal(model_check_job(p1, &job, &err, msg, sizeof(msg)), 0);
        job.output = JOB_OUTPUT_SOFTMAX;

        {
                const double *ws[] = {half, over, neg, half};
                const char *const *ns[] = {names, names, names, mixed};
                model_t **rs[] = {rp, rp, rp, rm};
                const int want[] = {1, 0, 0, 0};
                for (int c = 0; c < 4; c++) {
                        model_ens_spec_t *spec = spec_of("E", 3, 2, 2, ns[c], ws[c]);
                        assert_non_null(e = model_ens_build(spec, rs[c], msg, sizeof(msg)));
                        if (model_outputs_distribution(e) != want[c])
                                fail_msg("ensemble case %d: distribution %d, want %d", c,
                                         model_outputs_distribution(e), want[c]);
                        assert_int_equal(model_check_job(e, &job, &err, msg, sizeof(msg)),
                                         want[c] ? -1 : 0);
                        model_unref(e);
                        model_ens_spec_free(spec);
                }
        }
        model_unref(p1);
        model_unref(p2);
        model_unref(raw);
}

static void test_build_refused(void **state)
{
        const uint32_t d_ok[] = {3, 2}, d_in[] = {4, 2}, d_out[] = {3, 5};
        const model_act_t act[] = {MODEL_ACT_IDENTITY};
        model_t *ok = random_mlp("ok", 1, d_ok, act), *in = random_mlp("wide", 1, d_in, act),
                *out = random_mlp("tall", 1, d_out, act);
        const char *names[] = {"ok", "wide"};
        const double w[] = {1, 1}, big[] = {3e38, 3e38};
        model_ens_spec_t *spec = spec_of("E", 3, 2, 2, names, w);
        model_t *r[2] = {ok, in}, *e;
        char err[256];
        (void)state;

        in->version = 4;
        assert_null(model_ens_build(spec, r, err, sizeof(err)));
        assert_string_equal(err, "member 1: model 'wide' version 4 is 4->2, the ensemble 'E' is "
                                 "3->2");
        strcpy(spec->members[1].model, "tall");
        r[1] = out;
        assert_null(model_ens_build(spec, r, err, sizeof(err)));
        assert_non_null(strstr(err, "model 'tall' version 0 is 3->5"));
        r[1] = NULL;
        assert_null(model_ens_build(spec, r, err, sizeof(err)));
        assert_non_null(strstr(err, "member 1 ('tall') is not resolved"));
        /* the same MLP twice: weights add up, and must stay a float32 */
        r[1] = ok;
        spec->members[0].weight = big[0];
        spec->members[1].weight = big[1];
        assert_null(model_ens_build(spec, r, err, sizeof(err)));
        assert_non_null(strstr(err, "add up to more than a float32 holds"));
        spec->members[0].weight = 0.75;
        spec->members[1].weight = 0.5;
        assert_non_null(e = model_ens_build(spec, r, err, sizeof(err)));
        assert_int_equal(e->n_members, 1);
        assert_true(e->members[0].weight == 1.25f);
        assert_int_equal(ok->refcnt, 2); /* refused builds took no references */
        model_unref(e);
        model_unref(ok);
        model_unref(in);
        model_unref(out);
        model_ens_spec_free(spec);
}

/* Format v2: a member's act.  Decoded from a hand-packed file, refused in
 * a v1 file (a v1 reader would refuse the key: the same bytes must not mean
 * two things) and when unknown; the encoder writes v2 only when it must. */
static void test_member_act_file(void **state)
{
        const tmember_t mem[] = {{"a", -1, 0.5, 0, NULL, "softmax"}, {"b", 3, 0.5, 0, NULL, NULL}};
        const tmember_t bad[] = {{"a", -1, 1, 0, NULL, "softplus"}};
        tens_t t = {"ens", NULL, 4, 2, 2, mem, 0, 2};
        model_member_spec_t ms[2] = {{"left", 0, 0.25, MODEL_ACT_IDENTITY},
                                     {"right", 9, 0.75, MODEL_ACT_SIGMOID}};
        model_ens_spec_t spec = {"both", 6, 2, 2, ms};
        msgpack_unpacked up;
        model_file_t f;
        char err[256], *buf;
        size_t len;
        (void)state;

        buf = pack_ens(&t, &len);
        assert_int_equal(model_file_decode(buf, len, &f, err, sizeof(err)), 0);
        assert_int_equal(f.ens->members[0].act, MODEL_ACT_SOFTMAX);
        assert_int_equal(f.ens->members[1].act, MODEL_ACT_IDENTITY);
        model_file_clear(&f);
        free(buf);

        t.v = 1;
        expect_file_refused(&t, "member 0: act needs model format v2 (the file is v1)");
        t.v = 3;
        expect_file_refused(&t, "unsupported model format v3");
        t.v = 2;
        t.members = bad;
        t.n_members = 1;
        expect_file_refused(&t, "member 0: unknown activation \"softplus\"");

        /* encode: an act makes the file v2, none keeps it v1 */
        for (int with = 1; with >= 0; with--) {
                ms[1].act = with ? MODEL_ACT_SIGMOID : MODEL_ACT_IDENTITY;
                assert_int_equal(model_ens_encode(&spec, &buf, &len, err, sizeof(err)), 0);
                msgpack_unpacked_init(&up);
                assert_int_equal(msgpack_unpack_next(&up, buf, len, NULL), MSGPACK_UNPACK_SUCCESS);
                for (uint32_t k = 0; k < up.data.via.map.size; k++) {
                        const msgpack_object_kv *kv = &up.data.via.map.ptr[k];
                        if (kv->key.via.str.size == 1 && kv->key.via.str.ptr[0] == 'v')
                                assert_int_equal(kv->val.via.u64, with ? 2 : 1);
                }
                msgpack_unpacked_destroy(&up);
                assert_int_equal(model_file_decode(buf, len, &f, err, sizeof(err)), 0);
                assert_int_equal(f.ens->members[0].act, MODEL_ACT_IDENTITY);
                assert_int_equal(f.ens->members[1].act, ms[1].act);
                model_file_clear(&f);
                free(buf);
        }
}

/* Soft voting: members that output logits, each softmaxed before the
 * weighted sum.  The same MLP with and without an act is two members; the
 * result is a distribution (a job's softmax is refused); an act on a nested
 * ensemble is refused, the acts of a nested ensemble's members are kept. */
static void test_member_act_forward(void **state)
{
        const uint32_t d[] = {4, 6, 3};
        const model_act_t a[] = {MODEL_ACT_TANH, MODEL_ACT_IDENTITY};
        model_t *A = random_mlp("A", 2, d, a), *B = random_mlp("B", 2, d, a);
        const char *n1[] = {"A", "B"}, *n2[] = {"A", "A"}, *n3[] = {"V", "B"};
        const double w1[] = {0.25, 0.75}, w2[] = {1, 1}, w3[] = {0.5, 0.5};
        model_ens_spec_t *s1 = spec_of("V", 4, 3, 2, n1, w1), *s2 = spec_of("AA", 4, 3, 2, n2, w2),
                         *s3 = spec_of("N", 4, 3, 2, n3, w3);
        model_t *r1[2] = {A, B}, *r2[2] = {A, A}, *r3[2], *V, *AA, *N;
        model_scratch_t s = {0};
        enum { ROWS = 9 };
        float X[ROWS * 4], Y[ROWS * 3];
        job_t job = {0};
        kf_err_t kerr;
        char err[256];
        (void)state;

        s1->members[0].act = MODEL_ACT_SOFTMAX;
        s1->members[1].act = MODEL_ACT_SOFTMAX;
        assert_non_null(V = model_ens_build(s1, r1, err, sizeof(err)));
        for (int i = 0; i < ROWS * 4; i++)
                X[i] = (float)(rnd() * 2);
        assert_int_equal(model_forward(V, X, ROWS, Y, &s), 0);
        for (int r = 0; r < ROWS; r++) {
                double want[3] = {0, 0, 0}, y[3], sum = 0;
                for (int k = 0; k < 2; k++) {
                        double mx = -INFINITY, z = 0;
                        ref_mlp(r1[k], X + r * 4, y);
                        for (int j = 0; j < 3; j++)
                                mx = fmax(mx, y[j]);
                        for (int j = 0; j < 3; j++)
                                z += exp(y[j] - mx);
                        for (int j = 0; j < 3; j++)
                                want[j] += w1[k] * exp(y[j] - mx) / z;
                }
                for (int j = 0; j < 3; j++) {
                        assert_close(Y[r * 3 + j], want[j], "soft vote", r, j);
                        sum += Y[r * 3 + j];
                }
                assert_close(sum, 1.0, "soft vote sum", r, 0);
        }
        assert_int_equal(model_outputs_distribution(V), 1);
        job.cols = 4;
        job.output = JOB_OUTPUT_SOFTMAX;
        assert_int_equal(model_check_job(V, &job, &kerr, err, sizeof(err)), -1);
        assert_int_equal(kerr, KF_ERR_BAD_REQUEST);

        /* A and softmax(A): two members, not one with weight 2 */
        s2->members[1].act = MODEL_ACT_SOFTMAX;
        assert_non_null(AA = model_ens_build(s2, r2, err, sizeof(err)));
        assert_int_equal(AA->n_members, 2);
        assert_int_equal(model_outputs_distribution(AA), 0);
        model_unref(AA);
        s2->members[1].act = MODEL_ACT_IDENTITY;
        assert_non_null(AA = model_ens_build(s2, r2, err, sizeof(err)));
        assert_int_equal(AA->n_members, 1);
        model_unref(AA);

        /* nested: V's acts survive the flattening; an act on V is refused */
        r3[0] = V;
        r3[1] = B;
        s3->members[1].act = MODEL_ACT_SOFTMAX;
        assert_non_null(N = model_ens_build(s3, r3, err, sizeof(err)));
        assert_int_equal(N->n_members, 2); /* softmax(A) 0.125, softmax(B) 0.375 + 0.5 */
        for (uint32_t i = 0; i < 2; i++) {
                assert_int_equal(N->members[i].act, MODEL_ACT_SOFTMAX);
                assert_true(N->members[i].weight == (N->members[i].model == A ? 0.125f : 0.875f));
        }
        assert_int_equal(model_outputs_distribution(N), 1);
        model_unref(N);
        s3->members[0].act = MODEL_ACT_SIGMOID;
        assert_null(model_ens_build(s3, r3, err, sizeof(err)));
        assert_non_null(strstr(err, "member 0: model 'V' version 0 is an ensemble; act "
                                    "\"sigmoid\" applies to an mlp member only"));

        model_scratch_free(&s);
        model_unref(V);
        model_unref(A);
        model_unref(B);
        model_ens_spec_free(s1);
        model_ens_spec_free(s2);
        model_ens_spec_free(s3);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_decode_ensemble),
            cmocka_unit_test(test_softmax_on_probabilities_refused),
            cmocka_unit_test(test_ensemble_refused),
            cmocka_unit_test(test_encode_round_trip),
            cmocka_unit_test(test_forward_matches_reference),
            cmocka_unit_test(test_nested_flattened),
            cmocka_unit_test(test_build_refused),
            cmocka_unit_test(test_member_act_file),
            cmocka_unit_test(test_member_act_forward),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
