/* test_mlp.c - the MLP forward pass and output post-processing, against
 * values worked out by hand and against a naive double-precision reference. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* Builds a model whose weights are given as literals (NULL: left zero). */
static model_t *mk(uint32_t n_layers, const uint32_t *dims, const model_act_t *acts,
                   const float *const *W, const float *const *b)
{
        char err[256];
        model_t *m = model_new_mlp("t", n_layers, dims, acts, err, sizeof(err));
        if (!m)
                print_error("model_new_mlp: %s\n", err);
        assert_non_null(m);
        for (uint32_t i = 0; i < n_layers; i++) {
                if (W && W[i])
                        memcpy(m->layers[i].W, W[i], (size_t)dims[i] * dims[i + 1] * sizeof(float));
                if (b && b[i])
                        memcpy(m->layers[i].b, b[i], dims[i + 1] * sizeof(float));
        }
        return m;
}

static void forward_ok(const model_t *m, const float *X, uint32_t rows, float *Y,
                       model_scratch_t *s)
{
        assert_int_equal(model_forward(m, X, rows, Y, s), 0);
}

static void assert_near(double got, double want, double tol)
{
        if (!(fabs(got - want) <= tol))
                print_error("got %.9g, want %.9g (tolerance %g)\n", got, want, tol);
        assert_true(fabs(got - want) <= tol);
}

/* ---- (a) tiny models, expected values worked out by hand --------------- */

/* relu(x.W1 + b1) with W1 = [[1,1],[1,1]], b1 = [0,-1] gives h = (s, s-1)
 * clipped at 0 for s = x1+x2; then y = h1 - 2*h2:
 * s=0: 0;  s=1: 1 - 0 = 1;  s=2: 2 - 2*1 = 0.  That is XOR. */
static void test_xor(void **state)
{
        (void)state;
        static const float W1[] = {1, 1, 1, 1}, b1[] = {0, -1};
        static const float W2[] = {1, -2}, b2[] = {0};
        const float *W[] = {W1, W2}, *b[] = {b1, b2};
        const uint32_t dims[] = {2, 2, 1};
        const model_act_t acts[] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY};
        const float X[] = {0, 0, 0, 1, 1, 0, 1, 1};
        const float want[] = {0, 1, 1, 0};
        float Y[4] = {-9, -9, -9, -9};
        model_scratch_t s = {0};
        model_t *m = mk(2, dims, acts, W, b);

        forward_ok(m, X, 4, Y, &s);
        for (int r = 0; r < 4; r++)
                assert_near(Y[r], want[r], 1e-6);
        /* one row at a time through the same scratch */
        for (int r = 0; r < 4; r++) {
                forward_ok(m, X + 2 * r, 1, Y, &s);
                assert_near(Y[0], want[r], 1e-6);
        }
        model_scratch_free(&s);
        model_unref(m);
}

/* F = 1.8 C + 32: -40 -> -40, 0 -> 32, 100 -> 212, 37 -> 98.6 */
static void test_celsius_to_fahrenheit(void **state)
{
        (void)state;
        static const float W1[] = {1.8f}, b1[] = {32.0f};
        const float *W[] = {W1}, *b[] = {b1};
        const uint32_t dims[] = {1, 1};
        const model_act_t acts[] = {MODEL_ACT_IDENTITY};
        const float X[] = {-40, 0, 100, 37};
        float Y[4];
        model_scratch_t s = {0};
        model_t *m = mk(1, dims, acts, W, b);

        forward_ok(m, X, 4, Y, &s);
        assert_near(Y[0], -40.0, 1e-4);
        assert_near(Y[1], 32.0, 1e-6);
        assert_near(Y[2], 212.0, 1e-4);
        assert_near(Y[3], 98.6, 1e-4);
        /* a one-layer model needs no scratch */
        assert_null(s.a);
        model_scratch_free(&s);
        model_unref(m);
}

/* A 1->1 layer with W = 1, b = 0 is just the activation. */
static void run_unit_act(model_act_t act, const float *x, const double *want, int n, double tol)
{
        static const float one[] = {1.0f}, zero[] = {0.0f};
        const float *W[] = {one}, *b[] = {zero};
        const uint32_t dims[] = {1, 1};
        const model_act_t acts[] = {act};
        float Y[16];
        model_scratch_t s = {0};
        model_t *m = mk(1, dims, acts, W, b);

        assert_true(n <= 16);
        forward_ok(m, x, (uint32_t)n, Y, &s);
        for (int i = 0; i < n; i++) {
                assert_false(isnan(Y[i]));
                assert_near(Y[i], want[i], tol);
        }
        model_scratch_free(&s);
        model_unref(m);
}

static void test_activations_by_hand(void **state)
{
        (void)state;
        /* relu */
        run_unit_act(MODEL_ACT_RELU, (const float[]){-3, -0.5f, 0, 0.25f, 7},
                     (const double[]){0, 0, 0, 0.25, 7}, 5, 0);
        /* identity leaves values alone */
        run_unit_act(MODEL_ACT_IDENTITY, (const float[]){-3, 1e30f}, (const double[]){-3, 1e30f}, 2,
                     0);
        /* tanh(0.5) = 0.46211715726, tanh(1) = 0.76159415596,
         * tanh(-2) = -0.96402758008; tanh saturates at +-1 */
        run_unit_act(MODEL_ACT_TANH, (const float[]){0, 0.5f, 1, -2, 50, -50},
                     (const double[]){0, 0.46211715726, 0.76159415596, -0.96402758008, 1, -1}, 6,
                     1e-6);
        /* sigmoid(0) = 1/2, sigmoid(2) = 1/(1+e^-2) = 0.88079707798,
         * sigmoid(-2) = 0.11920292202; the extremes must not become NaN */
        run_unit_act(MODEL_ACT_SIGMOID, (const float[]){0, 2, -2, 100, -100, 1000, -1000},
                     (const double[]){0.5, 0.88079707798, 0.11920292202, 1, 0, 1, 0}, 7, 1e-6);
}

/* e^-100 = 3.72e-44: a stable sigmoid returns that (a float subnormal), not
 * 0/0 or a negative number. */
static void test_sigmoid_tiny(void **state)
{
        (void)state;
        static const float one[] = {1.0f}, zero[] = {0.0f};
        const float *W[] = {one}, *b[] = {zero};
        const uint32_t dims[] = {1, 1};
        const model_act_t acts[] = {MODEL_ACT_SIGMOID};
        const float X[] = {-100.0f, -88.0f};
        float Y[2];
        model_scratch_t s = {0};
        model_t *m = mk(1, dims, acts, W, b);

        forward_ok(m, X, 2, Y, &s);
        assert_true(Y[0] > 0.0f && Y[0] < 1e-43f);
        /* e^-88 = 6.0546e-39 */
        assert_near(Y[1] / 6.0546e-39, 1.0, 1e-3);
        model_unref(m);
}

/* softmax(1,2,3) = e^k / (e + e^2 + e^3):
 * 0.09003057317, 0.24472847105, 0.66524095577.  With W = [[1,0,1],[0,1,1]]
 * and b = 0, x = (1,2) gives logits (1,2,3); x = (1000,999) gives logits
 * (1000, 999, 1999): a naive exp overflows, the stable one gives (0,0,1);
 * x = (1000, 1000) gives (1000, 1000, 2000) -> (0, 0, 1) too, and
 * x = (-1000, -1000) gives (-1000, -1000, -2000) -> (1/2, 1/2, 0). */
static void test_softmax_layer_by_hand(void **state)
{
        (void)state;
        static const float W1[] = {1, 0, 1, 0, 1, 1}, b1[] = {0, 0, 0};
        const float *W[] = {W1}, *b[] = {b1};
        const uint32_t dims[] = {2, 3};
        const model_act_t acts[] = {MODEL_ACT_SOFTMAX};
        const float X[] = {1, 2, 1000, 999, -1000, -1000, 0, 0};
        const double want[] = {0.09003057317, 0.24472847105, 0.66524095577, 0, 0, 1, 0.5, 0.5, 0,
                               1.0 / 3,       1.0 / 3,       1.0 / 3};
        float Y[12];
        model_scratch_t s = {0};
        model_t *m = mk(1, dims, acts, W, b);

        forward_ok(m, X, 4, Y, &s);
        for (int i = 0; i < 12; i++) {
                assert_false(isnan(Y[i]));
                assert_near(Y[i], want[i], 1e-6);
        }
        model_unref(m);
}

/* x = 1 -> tanh(0.5 x) = 0.46211715726 -> sigmoid(2 h - 0.92423431452)
 * = sigmoid(0) = 0.5.  x = 0 -> h = 0 -> sigmoid(-0.92423431452)
 * = 1/(1 + e^0.92423431452) = 1/(1 + 2.51994) = 0.28409591 */
static void test_two_layer_chain_by_hand(void **state)
{
        (void)state;
        static const float W1[] = {0.5f}, b1[] = {0};
        static const float W2[] = {2.0f}, b2[] = {-0.92423431452f};
        const float *W[] = {W1, W2}, *b[] = {b1, b2};
        const uint32_t dims[] = {1, 1, 1};
        const model_act_t acts[] = {MODEL_ACT_TANH, MODEL_ACT_SIGMOID};
        const float X[] = {1, 0};
        float Y[2];
        model_scratch_t s = {0};
        model_t *m = mk(2, dims, acts, W, b);

        forward_ok(m, X, 2, Y, &s);
        assert_near(Y[0], 0.5, 1e-6);
        assert_near(Y[1], 0.28409591, 1e-6);
        model_scratch_free(&s);
        model_unref(m);
}

/* Bias is added once per row, not once per batch or per column: 2 rows of
 * x = (1, 2) through W = [[1,10],[100,1000]], b = (0.5, -0.5) give
 * (1 + 200 + 0.5, 10 + 2000 - 0.5) = (201.5, 2009.5) in both rows. */
static void test_bias_and_layout(void **state)
{
        (void)state;
        static const float W1[] = {1, 10, 100, 1000}, b1[] = {0.5f, -0.5f};
        const float *W[] = {W1}, *b[] = {b1};
        const uint32_t dims[] = {2, 2};
        const model_act_t acts[] = {MODEL_ACT_IDENTITY};
        const float X[] = {1, 2, 1, 2, 0, 0};
        float Y[6];
        model_scratch_t s = {0};
        model_t *m = mk(1, dims, acts, W, b);

        forward_ok(m, X, 3, Y, &s);
        assert_near(Y[0], 201.5, 1e-4);
        assert_near(Y[1], 2009.5, 1e-4);
        assert_near(Y[2], 201.5, 1e-4);
        assert_near(Y[3], 2009.5, 1e-4);
        assert_near(Y[4], 0.5, 0);
        assert_near(Y[5], -0.5, 0);
        model_unref(m);
}

static void test_zero_rows(void **state)
{
        (void)state;
        const uint32_t dims[] = {3, 4, 2};
        const model_act_t acts[] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY};
        float X[3] = {1, 2, 3}, Y[2] = {42, 43};
        model_scratch_t s = {0};
        model_t *m = mk(2, dims, acts, NULL, NULL);

        assert_int_equal(model_forward(m, X, 0, Y, &s), 0);
        assert_true(Y[0] == 42 && Y[1] == 43);
        model_scratch_free(&s);
        model_scratch_free(&s); /* twice is fine */
        model_scratch_free(NULL);
        model_unref(m);
}

/* ---- (b) random MLPs against a naive double-precision reference -------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double rnd_unit(void) /* uniform in [-1, 1) */
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (double)(rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

static void ref_act(model_act_t act, double *v, uint32_t n)
{
        double max, sum = 0;
        switch (act) {
        case MODEL_ACT_RELU:
                for (uint32_t j = 0; j < n; j++)
                        v[j] = v[j] < 0 ? 0 : v[j];
                break;
        case MODEL_ACT_TANH:
                for (uint32_t j = 0; j < n; j++)
                        v[j] = tanh(v[j]);
                break;
        case MODEL_ACT_SIGMOID:
                for (uint32_t j = 0; j < n; j++)
                        v[j] = 1.0 / (1.0 + exp(-v[j]));
                break;
        case MODEL_ACT_SOFTMAX:
                max = v[0];
                for (uint32_t j = 1; j < n; j++)
                        max = v[j] > max ? v[j] : max;
                for (uint32_t j = 0; j < n; j++) {
                        v[j] = exp(v[j] - max);
                        sum += v[j];
                }
                for (uint32_t j = 0; j < n; j++)
                        v[j] /= sum;
                break;
        default:
                break;
        }
}

/* One row through the model with plain loops in double. */
static void ref_forward_row(const model_t *m, const float *x, double *y)
{
        double *cur = malloc(m->max_width * sizeof(double));
        double *nxt = malloc(m->max_width * sizeof(double));
        assert_non_null(cur);
        assert_non_null(nxt);
        for (uint32_t k = 0; k < m->input_dim; k++)
                cur[k] = x[k];
        for (uint32_t i = 0; i < m->n_layers; i++) {
                const model_layer_t *l = &m->layers[i];
                double *t;
                for (uint32_t j = 0; j < l->out; j++) {
                        double acc = l->b[j];
                        for (uint32_t k = 0; k < l->in; k++)
                                acc += cur[k] * (double)l->W[(size_t)k * l->out + j];
                        nxt[j] = acc;
                }
                ref_act(l->act, nxt, l->out);
                t = cur;
                cur = nxt;
                nxt = t;
        }
        memcpy(y, cur, m->output_dim * sizeof(double));
        free(cur);
        free(nxt);
}

static model_t *random_model(uint32_t n_layers, const uint32_t *dims, const model_act_t *acts)
{
        model_t *m = mk(n_layers, dims, acts, NULL, NULL);
        for (uint32_t i = 0; i < n_layers; i++) {
                model_layer_t *l = &m->layers[i];
                /* 1/sqrt(in) keeps activations O(1) however wide the layer */
                double scale = 2.0 / sqrt((double)l->in);
                for (size_t k = 0; k < (size_t)l->in * l->out; k++)
                        l->W[k] = (float)(rnd_unit() * scale);
                for (uint32_t k = 0; k < l->out; k++)
                        l->b[k] = (float)(rnd_unit() * 0.5);
        }
        return m;
}

static void check_against_reference(const model_t *m, uint32_t rows, model_scratch_t *s)
{
        float *X = malloc((size_t)rows * m->input_dim * sizeof(float));
        float *Y = malloc((size_t)rows * m->output_dim * sizeof(float));
        double *R = malloc(m->output_dim * sizeof(double));
        double worst = 0;

        assert_non_null(X);
        assert_non_null(Y);
        assert_non_null(R);
        for (size_t k = 0; k < (size_t)rows * m->input_dim; k++)
                X[k] = (float)(rnd_unit() * 2.0);
        for (size_t k = 0; k < (size_t)rows * m->output_dim; k++)
                Y[k] = NAN; /* every output must be written */
        forward_ok(m, X, rows, Y, s);
        for (uint32_t r = 0; r < rows; r++) {
                ref_forward_row(m, X + (size_t)r * m->input_dim, R);
                for (uint32_t j = 0; j < m->output_dim; j++) {
                        double got = Y[(size_t)r * m->output_dim + j];
                        double err = fabs(got - R[j]) / fmax(fabs(R[j]), 1.0);
                        if (!(err <= 1e-5))
                                print_error("%u-layer model, %u rows: row %u col %u: got %.9g, "
                                            "reference %.9g\n",
                                            m->n_layers, rows, r, j, got, R[j]);
                        assert_true(err <= 1e-5);
                        worst = err > worst ? err : worst;
                }
        }
        free(X);
        free(Y);
        free(R);
}

static void test_random_against_reference(void **state)
{
        (void)state;
        static const uint32_t d0[] = {3, 5, 2}, d1[] = {16, 32, 4}, d2[] = {784, 64, 10},
                              d3[] = {8, 16, 16, 16, 3}, d4[] = {5, 7}, d5[] = {10, 20, 1},
                              d6[] = {12, 40, 6, 30, 9, 2},
                              /* widths of 8k + a tail: the bias/ReLU pass
                               * runs 8 at a time, then the rest */
            d7[] = {13, 21, 11};
        static const model_act_t a0[] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY},
                                 a1[] = {MODEL_ACT_TANH, MODEL_ACT_SOFTMAX},
                                 a2[] = {MODEL_ACT_RELU, MODEL_ACT_SOFTMAX},
                                 a3[] = {MODEL_ACT_SIGMOID, MODEL_ACT_RELU, MODEL_ACT_TANH,
                                         MODEL_ACT_IDENTITY},
                                 a4[] = {MODEL_ACT_SIGMOID},
                                 a5[] = {MODEL_ACT_RELU, MODEL_ACT_SIGMOID},
                                 a6[] = {MODEL_ACT_SOFTMAX, MODEL_ACT_TANH, MODEL_ACT_RELU,
                                         MODEL_ACT_SIGMOID, MODEL_ACT_IDENTITY},
                                 a7[] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY};
        static const struct {
                uint32_t n;
                const uint32_t *dims;
                const model_act_t *acts;
        } shapes[] = {{2, d0, a0}, {2, d1, a1}, {2, d2, a2}, {4, d3, a3},
                      {1, d4, a4}, {2, d5, a5}, {5, d6, a6}, {2, d7, a7}};
        static const uint32_t rows[] = {1, 7, 128};
        /* one scratch for everything: it must grow and be reused correctly
         * across models of different widths */
        model_scratch_t s = {0};

        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
                model_t *m = random_model(shapes[i].n, shapes[i].dims, shapes[i].acts);
                for (size_t r = 0; r < 3; r++)
                        check_against_reference(m, rows[r], &s);
                check_against_reference(m, 3, &s); /* smaller after larger */
                model_unref(m);
        }
        model_scratch_free(&s);
}

/* ---- (c) post-processing ----------------------------------------------- */

static void test_output_cols(void **state)
{
        (void)state;
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_RAW, 1, 7), 7);
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_SOFTMAX, 1, 7), 7);
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_ARGMAX, 1, 7), 1);
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_ARGMAX, 1, 1), 1);
}

static void test_postprocess_raw(void **state)
{
        (void)state;
        const float Y[] = {1.5f, -2.0f, 0.0f, 1e30f, -0.0f, 3.0f};
        float out[6];
        memset(out, 0xab, sizeof(out));
        model_postprocess_k(JOB_OUTPUT_RAW, 1, Y, 2, 3, out);
        assert_memory_equal(out, Y, sizeof(Y));
}

/* Rows: (1,2,3) -> 0.09003057317, 0.24472847105, 0.66524095577;
 * (0,0,0) -> 1/3 each; (-1000, 0, 1000) -> (0, 0, 1) without overflow;
 * (5, 5, 4) -> e/(2e+1) each = 0.42231879825, and 1/(2e+1) = 0.15536240350. */
static void test_postprocess_softmax(void **state)
{
        (void)state;
        const float Y[] = {1, 2, 3, 0, 0, 0, -1000, 0, 1000, 5, 5, 4};
        const double want[] = {
            0.09003057317, 0.24472847105, 0.66524095577, 1.0 / 3, 1.0 / 3, 1.0 / 3, 0, 0, 1,
            0.42231879825, 0.42231879825, 0.15536240350};
        float Ycopy[12], out[12];

        memcpy(Ycopy, Y, sizeof(Y));
        model_postprocess_k(JOB_OUTPUT_SOFTMAX, 1, Ycopy, 4, 3, out);
        assert_memory_equal(Ycopy, Y, sizeof(Y)); /* input untouched */
        for (int r = 0; r < 4; r++) {
                double sum = 0;
                for (int j = 0; j < 3; j++) {
                        assert_near(out[3 * r + j], want[3 * r + j], 1e-6);
                        sum += out[3 * r + j];
                }
                assert_near(sum, 1.0, 1e-6);
        }
}

static void test_postprocess_softmax_wide(void **state)
{
        (void)state;
        enum { COLS = 1000 };
        float *Y = malloc(COLS * sizeof(float)), *out = malloc(COLS * sizeof(float));
        double sum = 0;

        assert_non_null(Y);
        assert_non_null(out);
        /* all equal but one, which is ln(1000) larger: it gets half */
        for (int j = 0; j < COLS; j++)
                Y[j] = 80.0f;
        Y[500] = 80.0f + logf(999.0f);
        model_postprocess_k(JOB_OUTPUT_SOFTMAX, 1, Y, 1, COLS, out);
        for (int j = 0; j < COLS; j++)
                sum += out[j];
        assert_near(sum, 1.0, 1e-5);
        assert_near(out[500], 0.5, 1e-5);
        assert_near(out[0], 0.5 / 999, 1e-7);
        free(Y);
        free(out);
}

/* An overflowed logit (+Inf) takes the limit of softmax: the +Inf entries
 * share the mass, the rest get 0; a row of -Inf is spread evenly.  Neither
 * may become NaN, which would reach the client as garbage. */
static void test_postprocess_softmax_inf(void **state)
{
        (void)state;
        const float Y[] = {INFINITY,  0,         INFINITY, 1e30f,     -INFINITY, -INFINITY,
                           -INFINITY, -INFINITY, 5,        -INFINITY, 5,         -INFINITY};
        const double want[] = {0.5, 0, 0.5, 0, 0.25, 0.25, 0.25, 0.25, 0.5, 0, 0.5, 0};
        float out[12];

        model_postprocess_k(JOB_OUTPUT_SOFTMAX, 1, Y, 3, 4, out);
        for (int i = 0; i < 12; i++) {
                assert_false(isnan(out[i]));
                assert_near(out[i], want[i], 1e-7);
        }
}

static void test_postprocess_argmax(void **state)
{
        (void)state;
        const float Y[] = {
            1,         3,         3,         2,      /* tie: the first maximum, 1 */
            5,         5,         5,         5,      /* all equal: 0 */
            -1,        -2,        -3,        -0.5f,  /* negative values: 3 */
            0,         NAN,       2,         2,      /* a NaN never wins: 2 */
            NAN,       1,         3,         -1,     /* nor when it comes first: 2 */
            -INFINITY, -INFINITY, -INFINITY, -1e30f, /* 3 */
        };
        const float want[] = {1, 0, 3, 2, 2, 3};
        float out[6];

        memset(out, 0xab, sizeof(out));
        model_postprocess_k(JOB_OUTPUT_ARGMAX, 1, Y, 6, 4, out);
        for (int r = 0; r < 6; r++) {
                if (out[r] != want[r])
                        print_error("row %d: argmax %g, want %g\n", r, out[r], want[r]);
                assert_true(out[r] == want[r]);
        }
        /* a single column is always index 0 */
        model_postprocess_k(JOB_OUTPUT_ARGMAX, 1, (const float[]){7, -7}, 2, 1, out);
        assert_true(out[0] == 0 && out[1] == 0);
}

/* ---- (d) batch consistency --------------------------------------------- */

/* 64 rows at once equal 64 single-row passes.  Not bitwise: OpenBLAS may pick
 * a different kernel (and summation order) for one row than for 64, so the
 * bound is a few float ulps relative. */
static void test_batch_consistency(void **state)
{
        (void)state;
        static const uint32_t dims[] = {20, 48, 33, 5};
        static const model_act_t acts[] = {MODEL_ACT_TANH, MODEL_ACT_RELU, MODEL_ACT_SOFTMAX};
        enum { ROWS = 64 };
        model_t *m = random_model(3, dims, acts);
        model_scratch_t s = {0}, s1 = {0};
        float X[ROWS * 20], Y[ROWS * 5], y1[5];

        for (size_t k = 0; k < sizeof(X) / sizeof(X[0]); k++)
                X[k] = (float)(rnd_unit() * 3.0);
        forward_ok(m, X, ROWS, Y, &s);
        for (uint32_t r = 0; r < ROWS; r++) {
                forward_ok(m, X + r * 20, 1, y1, &s1);
                for (int j = 0; j < 5; j++)
                        assert_near(Y[r * 5 + j], y1[j], 1e-6 * fmax(fabs(y1[j]), 1.0));
        }
        /* and the batch result does not depend on what scratch held before */
        {
                float Y2[ROWS * 5];
                forward_ok(m, X, ROWS, Y2, &s1);
                assert_memory_equal(Y, Y2, sizeof(Y));
        }
        model_scratch_free(&s);
        model_scratch_free(&s1);
        model_unref(m);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_xor),
            cmocka_unit_test(test_celsius_to_fahrenheit),
            cmocka_unit_test(test_activations_by_hand),
            cmocka_unit_test(test_sigmoid_tiny),
            cmocka_unit_test(test_softmax_layer_by_hand),
            cmocka_unit_test(test_two_layer_chain_by_hand),
            cmocka_unit_test(test_bias_and_layout),
            cmocka_unit_test(test_zero_rows),
            cmocka_unit_test(test_random_against_reference),
            cmocka_unit_test(test_output_cols),
            cmocka_unit_test(test_postprocess_raw),
            cmocka_unit_test(test_postprocess_softmax),
            cmocka_unit_test(test_postprocess_softmax_wide),
            cmocka_unit_test(test_postprocess_softmax_inf),
            cmocka_unit_test(test_postprocess_argmax),
            cmocka_unit_test(test_batch_consistency),
        };
        /* One BLAS thread: results and timings stay reproducible and
         * valgrind does not have to follow OpenBLAS's thread pool. */
        openblas_set_num_threads(1);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
