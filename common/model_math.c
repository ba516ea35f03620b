/* model_math.c - forward passes: an MLP's (one cblas_sgemm per layer over
 * all rows, the activations) and an ensemble's (its members' weighted sum);
 * and the row-wise post-processing of job outputs. */
#include "model.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"

#define MODEL_SCRATCH_ALIGN 64

/* The loops below run over a multiple of 8 columns first, then a scalar
 * tail: GCC's -O2 vectorizer only takes loops that need no epilogue, and a
 * plain `for (j < cols)` ReLU stayed a scalar compare-and-branch loop that
 * cost a quarter of a 784-512-512-10 forward pass. */
#define MODEL_VEC 8

/* y[r] += b for every row, and the ReLU (NaN becomes 0) in the same pass
 * when relu: the ReLU is only ever applied here. */
static void model_add_bias(float *restrict y, const float *restrict b, size_t rows, uint32_t cols,
                           int relu)
{
        size_t m = cols & ~(size_t)(MODEL_VEC - 1);
        for (size_t r = 0; r < rows; r++, y += cols) {
                size_t j = 0;
                if (relu) {
                        for (; j < m; j++) {
                                float v = y[j] + b[j];
                                y[j] = v > 0.0f ? v : 0.0f;
                        }
                        for (; j < cols; j++) {
                                float v = y[j] + b[j];
                                y[j] = v > 0.0f ? v : 0.0f;
                        }
                } else {
                        for (; j < m; j++)
                                y[j] += b[j];
                        for (; j < cols; j++)
                                y[j] += b[j];
                }
        }
}

static void model_tanh(float *x, size_t n)
{
        for (size_t i = 0; i < n; i++)
                x[i] = tanhf(x[i]);
}

static void model_sigmoid(float *x, size_t n)
{
        /* Only ever exponentiate -|x|: expf(-x) for a large negative x
         * overflows to Inf, and e/(1+e) would then be Inf/Inf = NaN. */
        for (size_t i = 0; i < n; i++) {
                if (x[i] >= 0.0f) {
                        x[i] = 1.0f / (1.0f + expf(-x[i]));
                } else {
                        float e = expf(x[i]);
                        x[i] = e / (1.0f + e);
                }
        }
}

/* Softmax of one row in place.  Subtracting the row maximum keeps every
 * exponent <= 0, so nothing overflows however large the logits are. */
static void model_softmax_row(float *x, uint32_t n)
{
        double sum = 0.0;
        float max, inv;

        if (n == 0)
                return;
        max = x[0];
        for (uint32_t j = 1; j < n; j++) {
                if (x[j] > max)
                        max = x[j];
        }
        if (isinf(max)) {
                /* An overflowed logit: the limit of softmax gives the +Inf
                 * entries equal shares; a row of -Inf has no limit, so it
                 * is spread evenly rather than turned into NaN. */
                uint32_t cnt = 0;
                for (uint32_t j = 0; j < n; j++)
                        cnt += x[j] == max;
                for (uint32_t j = 0; j < n; j++)
                        x[j] = x[j] == max ? 1.0f / (float)cnt : 0.0f;
                return;
        }
        for (uint32_t j = 0; j < n; j++) {
                x[j] = expf(x[j] - max);
                sum += x[j];
        }
        inv = (float)(1.0 / sum);
        for (uint32_t j = 0; j < n; j++)
                x[j] *= inv;
}

static void model_activate(model_act_t act, float *x, size_t rows, uint32_t cols)
{
        size_t n = rows * cols;
        switch (act) {
        case MODEL_ACT_TANH:
                model_tanh(x, n);
                break;
        case MODEL_ACT_SIGMOID:
                model_sigmoid(x, n);
                break;
        case MODEL_ACT_SOFTMAX:
                for (size_t r = 0; r < rows; r++)
                        model_softmax_row(x + r * cols, cols);
                break;
        case MODEL_ACT_RELU: /* a layer's is fused with its bias (model_add_bias);
                              * this is an ensemble member's act */
                for (size_t i = 0; i < n; i++)
                        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
                break;
        case MODEL_ACT_IDENTITY:
        default:
                break;
        }
}

void model_scratch_free(model_scratch_t *s)
{
        if (!s)
                return;
        free(s->a);
        free(s->b);
        free(s->e);
        s->a = NULL;
        s->b = NULL;
        s->e = NULL;
        s->cap = 0;
        s->ecap = 0;
}

/* Makes a and b hold at least n floats each.  Old contents are not kept: a
 * forward pass never reads scratch it has not written in the same call. */
static int model_scratch_reserve(model_scratch_t *s, size_t n)
{
        void *a = NULL, *b = NULL;

        if (s->cap >= n)
                return 0;
        if (n > SIZE_MAX / sizeof(float))
                return -1;
        free(s->a);
        free(s->b);
        s->a = s->b = NULL;
        s->cap = 0;
        if (posix_memalign(&a, MODEL_SCRATCH_ALIGN, n * sizeof(float)) != 0)
                return -1;
        if (posix_memalign(&b, MODEL_SCRATCH_ALIGN, n * sizeof(float)) != 0) {
                free(a);
                return -1;
        }
        s->a = a;
        s->b = b;
        s->cap = n;
        return 0;
}

/* out = act(in . W + b) for `rows` rows: one sgemm (beta = 0), then one
 * pass adding the bias, fused with the activation when it is a ReLU. */
static void model_layer_forward(const model_layer_t *l, const float *in, int rows, float *out)
{
        int relu = l->act == MODEL_ACT_RELU;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, (int)l->out, (int)l->in, 1.0f,
                    in, (int)l->in, l->W, (int)l->out, 0.0f, out, (int)l->out);
        model_add_bias(out, l->b, (size_t)rows, l->out, relu);
        if (!relu)
                model_activate(l->act, out, (size_t)rows, l->out);
}

/* An ensemble's forward pass: each member once over all rows, then the
 * weighted sum into Y (the members' outputs go through scratch e). */
static int model_ens_forward(const model_t *m, const float *X, uint32_t rows, float *Y,
                             model_scratch_t *s);

int model_forward(const model_t *m, const float *X, uint32_t rows, float *Y, model_scratch_t *s)
{
        uint32_t hidden = 0;
        /* cblas takes int dimensions; more rows than that (never reached
         * under the job limits) are done in slices. */
        uint32_t slice = rows < (uint32_t)INT_MAX ? rows : (uint32_t)INT_MAX;

        if (rows == 0)
                return 0;
        if (m->kind == MODEL_KIND_ENSEMBLE)
                return model_ens_forward(m, X, rows, Y, s);
        /* Scratch holds the hidden layers only: X and Y belong to the
         * caller, so input_dim and output_dim need no space here. */
        for (uint32_t i = 0; i + 1 < m->n_layers; i++) {
                if (m->layers[i].out > hidden)
                        hidden = m->layers[i].out;
        }
        if (hidden && model_scratch_reserve(s, (size_t)slice * hidden) != 0)
                return -1;

        for (uint32_t done = 0; done < rows; done += slice) {
                int r = (int)(rows - done < slice ? rows - done : slice);
                const float *in = X + (size_t)done * m->input_dim;
                for (uint32_t i = 0; i < m->n_layers; i++) {
                        float *out = i + 1 == m->n_layers ? Y + (size_t)done * m->output_dim
                                     : (i & 1)            ? s->b
                                                          : s->a;
                        model_layer_forward(&m->layers[i], in, r, out);
                        in = out;
                }
        }
        return 0;
}

static int model_ens_forward(const model_t *m, const float *X, uint32_t rows, float *Y,
                             model_scratch_t *s)
{
        size_t n = (size_t)rows * m->output_dim;

        if (s->ecap < n) {
                void *e = NULL;
                if (posix_memalign(&e, 64, n * sizeof(float)) != 0)
                        return -1;
                free(s->e);
                s->e = e;
                s->ecap = n;
        }
        /* Members are MLPs (build flattens nested ensembles), so their
         * forward passes use scratch a and b but never e. */
        for (uint32_t i = 0; i < m->n_members; i++) {
                const float w = m->members[i].weight;
                float *e = s->e;
                if (model_forward(m->members[i].model, X, rows, e, s) != 0)
                        return -1;
                if (m->members[i].act != MODEL_ACT_IDENTITY)
                        model_activate(m->members[i].act, e, rows, m->output_dim);
                if (i == 0) {
                        for (size_t k = 0; k < n; k++)
                                Y[k] = w * e[k];
                } else {
                        for (size_t k = 0; k < n; k++)
                                Y[k] += w * e[k];
                }
        }
        return 0;
}

uint32_t model_output_cols_k(job_output_t mode, uint32_t k, uint32_t cols)
{
        switch (mode) {
        case JOB_OUTPUT_ARGMAX:
                return 1;
        case JOB_OUTPUT_TOPK:
                return 2 * (k < 1 ? 1 : k > cols ? cols : k);
        default:
                return cols;
        }
}

/* topk keeps column indices as float32 (in the output itself, below), which
 * is exact, so ties still break by index, only up to 2^24 columns. */
_Static_assert(MODEL_MAX_DIM <= (1u << 24), "topk indices must be exact as float32");

/* Whether (a, ia) ranks before (b, ib) among a row's values: the larger
 * first, NaN after every number, and the lower index first among equals
 * (NaNs are equal among themselves, and so are -0 and +0).  Indices are
 * distinct, so this is a strict total order: a heap needs one. */
static int model_topk_before(float a, float ia, float b, float ib)
{
        int na = isnan(a) != 0, nb = isnan(b) != 0;

        if (na != nb)
                return nb;
        if (!na && a != b)
                return a > b;
        return ia < ib;
}

/* Restores the heap below slot i of a heap of n entries whose root is the
 * entry ranking last (the one a better newcomer evicts). */
static void model_topk_sift(float *idx, float *val, uint32_t i, uint32_t n)
{
        for (;;) {
                uint32_t c = 2 * i + 1; /* no overflow: n <= MODEL_MAX_DIM = 2^20 */
                float ti, tv;

                if (c >= n)
                        return;
                if (c + 1 < n && model_topk_before(val[c], idx[c], val[c + 1], idx[c + 1]))
                        c++; /* the child that ranks last */
                if (!model_topk_before(val[i], idx[i], val[c], idx[c]))
                        return;
                ti = idx[i];
                tv = val[i];
                idx[i] = idx[c];
                val[i] = val[c];
                idx[c] = ti;
                val[c] = tv;
                i = c;
        }
}

/* The k best of one row: a heap of the k best seen so far, rooted at the
 * one ranking last, then sorted in place (a heapsort that moves the last
 * ranking entry to the end each step).  O(cols * log k): the sorted
 * insertion it replaces was O(cols * k), seconds per row with k near a wide
 * output.  The heap lives in out itself (indices in its first k floats,
 * values in the next k), so a row needs no memory of its own. */
static void model_topk_row(const float *y, uint32_t cols, uint32_t k, float *out)
{
        float *idx = out, *val = out + k;

        for (uint32_t j = 0; j < k; j++) {
                idx[j] = (float)j;
                val[j] = y[j];
        }
        for (uint32_t i = k / 2; i-- > 0;)
                model_topk_sift(idx, val, i, k);
        for (uint32_t j = k; j < cols; j++) {
                /* j is above every kept index, so a tie never gets in: only
                 * a larger number, or any number over a NaN root.  This is
                 * model_topk_before() spelt out for the loop most values
                 * leave at once. */
                if (!(y[j] > val[0] || (isnan(val[0]) && !isnan(y[j]))))
                        continue;
                idx[0] = (float)j;
                val[0] = y[j];
                model_topk_sift(idx, val, 0, k);
        }
        for (uint32_t n = k; n > 1; n--) {
                float ti = idx[0], tv = val[0];

                idx[0] = idx[n - 1];
                val[0] = val[n - 1];
                idx[n - 1] = ti;
                val[n - 1] = tv;
                model_topk_sift(idx, val, 0, n - 1);
        }
}

void model_postprocess_k(job_output_t mode, uint32_t k, const float *Y, uint32_t rows,
                         uint32_t cols, float *out)
{
        switch (mode) {
        case JOB_OUTPUT_SOFTMAX:
                memcpy(out, Y, (size_t)rows * cols * sizeof(float));
                for (uint32_t r = 0; r < rows; r++)
                        model_softmax_row(out + (size_t)r * cols, cols);
                break;
        case JOB_OUTPUT_ARGMAX:
                for (uint32_t r = 0; r < rows; r++) {
                        const float *y = Y + (size_t)r * cols;
                        uint32_t best = 0;
                        /* Strictly greater keeps the first of equal maxima;
                         * a NaN never wins over a number. */
                        for (uint32_t j = 1; j < cols; j++) {
                                if (y[j] > y[best] || (isnan(y[best]) && !isnan(y[j])))
                                        best = j;
                        }
                        out[r] = (float)best;
                }
                break;
        case JOB_OUTPUT_TOPK:
                k = k < 1 ? 1 : k > cols ? cols : k;
                for (uint32_t r = 0; r < rows; r++)
                        model_topk_row(Y + (size_t)r * cols, cols, k, out + (size_t)r * 2 * k);
                break;
        case JOB_OUTPUT_RAW:
        default:
                memcpy(out, Y, (size_t)rows * cols * sizeof(float));
                break;
        }
}

int model_outputs_distribution(const model_t *m)
{
        double sum = 0;
        if (m->kind == MODEL_KIND_MLP)
                return m->n_layers && m->layers[m->n_layers - 1].act == MODEL_ACT_SOFTMAX;
        /* An ensemble's output is a distribution when it is a convex
         * combination of distributions. */
        for (uint32_t i = 0; i < m->n_members; i++) {
                if (m->members[i].weight < 0 ||
                    (m->members[i].act != MODEL_ACT_SOFTMAX &&
                     (m->members[i].act != MODEL_ACT_IDENTITY ||
                      !model_outputs_distribution(m->members[i].model))))
                        return 0;
                sum += m->members[i].weight;
        }
        return m->n_members && fabs(sum - 1.0) <= 1e-5;
}

int model_check_job(const model_t *m, const job_t *job, kf_err_t *err, char *errstr,
                    size_t errstr_size)
{
        if (job->cols != m->input_dim) {
                *err = KF_ERR_SHAPE_MISMATCH;
                return kf_errf(errstr, errstr_size,
                               "input has %u columns, model '%s' version %u expects %u", job->cols,
                               m->name, m->version, m->input_dim);
        }
        if (job->output == JOB_OUTPUT_TOPK && (job->k < 1 || job->k > m->output_dim)) {
                *err = KF_ERR_BAD_REQUEST;
                return kf_errf(errstr, errstr_size,
                               "k = %u, but model '%s' version %u has %u outputs (k must be "
                               "1..%u)",
                               job->k, m->name, m->version, m->output_dim, m->output_dim);
        }
        if (job->output == JOB_OUTPUT_SOFTMAX && model_outputs_distribution(m)) {
                /* A second softmax would flatten the probabilities (0.9998
                 * becomes 0.23 over ten classes), silently. */
                *err = KF_ERR_BAD_REQUEST;
                return kf_errf(errstr, errstr_size,
                               "output softmax: model '%s' version %u already outputs "
                               "probabilities (it ends in softmax); a second softmax would "
                               "flatten them: ask for raw, argmax or topk",
                               m->name, m->version);
        }
        *err = KF_OK;
        return 0;
}
