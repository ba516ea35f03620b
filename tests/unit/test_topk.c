/* test_topk.c - the topk output: its layout (indices, then values), ties,
 * NaN, k at its bounds, the job field k in the codec, and the check of k
 * against a model's output_dim. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "model.h"

/* A slow, obviously right reference: k times, the best value not yet taken
 * (larger first, lower index among equals, NaN only after every number). */
static void ref_topk(const float *y, uint32_t cols, uint32_t k, float *out)
{
        int taken[64] = {0};
        for (uint32_t t = 0; t < k; t++) {
                int best = -1;
                for (uint32_t j = 0; j < cols; j++) {
                        if (taken[j])
                                continue;
                        if (best < 0 || (isnan(y[best]) && !isnan(y[j])) ||
                            (!isnan(y[j]) && y[j] > y[best]))
                                best = (int)j;
                }
                taken[best] = 1;
                out[t] = (float)best;
                out[k + t] = y[best];
        }
}

static void assert_same(const float *got, const float *want, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                if (memcmp(&got[i], &want[i], sizeof(float)) != 0 &&
                    !(isnan(got[i]) && isnan(want[i])))
                        fail_msg("output[%zu]: got %g, want %g", i, got[i], want[i]);
        }
}

static void test_layout_by_hand(void **state)
{
        /* two rows of 5: indices best first, then the values */
        const float Y[] = {0.1f,  0.9f,  -2.0f, 0.9f,  0.3f, /* tie at 1 and 3 */
                           -1.0f, -3.0f, -0.5f, -7.0f, -0.25f};
        const float want[] = {1, 3, 4, 0.9f,   0.9f,  0.3f, /* k = 3 */
                              4, 2, 0, -0.25f, -0.5f, -1.0f};
        float out[12];
        (void)state;

        assert_int_equal(model_output_cols_k(JOB_OUTPUT_TOPK, 3, 5), 6);
        model_postprocess_k(JOB_OUTPUT_TOPK, 3, Y, 2, 5, out);
        assert_same(out, want, 12);
}

static void test_against_reference(void **state)
{
        uint64_t s = 7;
        float Y[40 * 13], out[40 * 26], want[26];
        (void)state;

        for (int i = 0; i < 40 * 13; i++) {
                s = s * 6364136223846793005ULL + 1442695040888963407ULL;
                /* few distinct values: many ties */
                Y[i] = (float)((s >> 33) % 7) - 3.0f;
        }
        Y[5] = NAN;
        Y[13] = NAN;
        Y[14] = NAN;
        for (uint32_t k = 1; k <= 13; k++) {
                model_postprocess_k(JOB_OUTPUT_TOPK, k, Y, 40, 13, out);
                for (int r = 0; r < 40; r++) {
                        ref_topk(Y + r * 13, 13, k, want);
                        assert_same(out + (size_t)r * 2 * k, want, 2 * k);
                }
        }
}

/* ---- many random rows against a full sort ----------------------------- */

/* One entry of the brute-force reference: a value and its column. */
typedef struct {
        float v;
        uint32_t i;
} ref_ent_t;

/* qsort order of the documented ranking: numbers before NaN, the larger
 * number first, the lower column first among equals (-0 == +0). */
static int ref_cmp(const void *pa, const void *pb)
{
        const ref_ent_t *a = pa, *b = pb;
        int an = isnan(a->v) != 0, bn = isnan(b->v) != 0;

        if (an != bn)
                return an - bn;
        if (!an && a->v > b->v)
                return -1;
        if (!an && a->v < b->v)
                return 1;
        return (a->i > b->i) - (a->i < b->i);
}

/* The reference: sort the whole row, keep the first k. */
static void ref_sorted_topk(const float *y, uint32_t cols, uint32_t k, ref_ent_t *ent, float *out)
{
        for (uint32_t j = 0; j < cols; j++) {
                ent[j].v = y[j];
                ent[j].i = j;
        }
        qsort(ent, cols, sizeof(*ent), ref_cmp);
        for (uint32_t t = 0; t < k; t++) {
                out[t] = (float)ent[t].i;
                out[k + t] = ent[t].v;
        }
}

static uint64_t rng_next(uint64_t *s)
{
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        return *s >> 33;
}

/* A value drawn to make ties, NaN, infinities and signed zeros common: the
 * cases where a heap is easiest to get wrong. */
static float rng_value(uint64_t *s, int style)
{
        uint64_t r = rng_next(s);

        switch (style) {
        case 0: /* few distinct values: long runs of ties */
                return (float)(r % 5) - 2.0f;
        case 1: /* mostly distinct */
                return (float)(int64_t)(r % 2000001) / 1000.0f - 1000.0f;
        case 2: /* a third NaN, the rest few small values */
                return r % 3 == 0 ? NAN : (float)(r % 4);
        default: /* the special values, mixed */
                switch (r % 8) {
                case 0:
                        return NAN;
                case 1:
                        return INFINITY;
                case 2:
                        return -INFINITY;
                case 3:
                        return 0.0f;
                case 4:
                        return -0.0f;
                case 5:
                        return FLT_MAX;
                case 6:
                        return -FLT_MAX;
                default:
                        return (float)(r % 3);
                }
        }
}

static void test_random_rows_against_full_sort(void **state)
{
        const uint32_t widths[] = {1, 2, 3, 4, 5, 7, 8, 16, 31, 64, 100, 257, 1000};
        const uint32_t rows = 24;
        uint64_t s = 12345;
        size_t checked = 0;
        (void)state;

        for (size_t w = 0; w < sizeof(widths) / sizeof(widths[0]); w++) {
                uint32_t cols = widths[w];
                uint32_t ks[] = {1, 2, cols / 2, cols - 1, cols};
                float *Y = malloc(sizeof(float) * rows * cols);
                float *out = malloc(sizeof(float) * rows * 2 * cols);
                float *want = malloc(sizeof(float) * 2 * cols);
                ref_ent_t *ent = malloc(sizeof(*ent) * cols);

                assert_non_null(Y);
                assert_non_null(out);
                assert_non_null(want);
                assert_non_null(ent);
                for (uint32_t r = 0; r < rows; r++) {
                        int style = (int)(r % 5);
                        for (uint32_t j = 0; j < cols; j++) {
                                float *y = &Y[(size_t)r * cols + j];
                                /* style 4: strictly ascending, every value
                                 * displaces the heap's root */
                                *y = style == 4 ? (float)j : rng_value(&s, style);
                        }
                }
                for (size_t t = 0; t < sizeof(ks) / sizeof(ks[0]); t++) {
                        uint32_t k = ks[t];
                        if (k < 1 || k > cols)
                                continue;
                        model_postprocess_k(JOB_OUTPUT_TOPK, k, Y, rows, cols, out);
                        for (uint32_t r = 0; r < rows; r++) {
                                const float *got = out + (size_t)r * 2 * k;
                                ref_sorted_topk(Y + (size_t)r * cols, cols, k, ent, want);
                                /* bit for bit: which zero, which NaN column */
                                for (uint32_t c = 0; c < 2 * k; c++) {
                                        if (memcmp(&got[c], &want[c], sizeof(float)) != 0)
                                                fail_msg("cols %u k %u row %u: out[%u] = %g, "
                                                         "want %g",
                                                         cols, k, r, c, (double)got[c],
                                                         (double)want[c]);
                                }
                                checked++;
                        }
                }
                free(ent);
                free(want);
                free(out);
                free(Y);
        }
        assert_true(checked > 1000);
}

static void test_nan_and_bounds(void **state)
{
        const float Y[] = {NAN, 1.0f, NAN, -INFINITY};
        float out[8];
        (void)state;

        /* NaN never ranks above a number, even -Inf */
        model_postprocess_k(JOB_OUTPUT_TOPK, 2, Y, 1, 4, out);
        assert_true(out[0] == 1.0f && out[1] == 3.0f);
        assert_true(out[2] == 1.0f && out[3] == -INFINITY);
        /* k = cols: a full ranking, NaNs last in index order */
        model_postprocess_k(JOB_OUTPUT_TOPK, 4, Y, 1, 4, out);
        assert_true(out[0] == 1 && out[1] == 3 && out[2] == 0 && out[3] == 2);
        /* k beyond cols or 0 is clamped (the worker refuses such jobs first) */
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_TOPK, 9, 4), 8);
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_TOPK, 0, 4), 2);
        /* other modes ignore k */
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_ARGMAX, 3, 4), 1);
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_RAW, 3, 4), 4);
        assert_int_equal(model_output_cols_k(JOB_OUTPUT_SOFTMAX, 3, 4), 4);
}

/* ---- the job field --------------------------------------------------- */

static char *pack_job(const char *output, int64_t k, size_t *len)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        const float x[2] = {1, 2};

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 5 + (output != NULL) + (k != INT64_MIN));
        msgpack_pack_str_with_body(&pk, "v", 1);
        msgpack_pack_uint32(&pk, 2);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_str_with_body(&pk, "j1", 2);
        msgpack_pack_str_with_body(&pk, "user", 4);
        msgpack_pack_str_with_body(&pk, "u", 1);
        msgpack_pack_str_with_body(&pk, "model", 5);
        msgpack_pack_str_with_body(&pk, "m", 1);
        msgpack_pack_str_with_body(&pk, "input", 5);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_float(&pk, x[0]);
        msgpack_pack_float(&pk, x[1]);
        if (output) {
                msgpack_pack_str_with_body(&pk, "output", 6);
                msgpack_pack_str_with_body(&pk, output, strlen(output));
        }
        if (k != INT64_MIN) {
                msgpack_pack_str_with_body(&pk, "k", 1);
                msgpack_pack_int64(&pk, k);
        }
        *len = sb.size;
        return sb.data;
}

static kf_err_t decode(const char *output, int64_t k, job_t *job, char *err, size_t errsize)
{
        size_t len;
        char *buf = pack_job(output, k, &len);
        kf_err_t rc = job_decode(buf, len, NULL, job, err, errsize);
        free(buf);
        return rc;
}

static void test_codec(void **state)
{
        job_t job = {0}, back = {0};
        char err[256], *buf;
        size_t len;
        (void)state;

        assert_int_equal(decode("topk", 3, &job, err, sizeof(err)), KF_OK);
        assert_int_equal(job.output, JOB_OUTPUT_TOPK);
        assert_int_equal(job.k, 3);
        /* the encoder writes k, and decoding that gives the same job */
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(job_decode(buf, len, NULL, &back, err, sizeof(err)), KF_OK);
        assert_int_equal(back.output, JOB_OUTPUT_TOPK);
        assert_int_equal(back.k, 3);
        free(buf);
        job_clear(&back);
        job_clear(&job);

        assert_int_equal(decode("topk", INT64_MIN, &job, err, sizeof(err)), KF_ERR_BAD_REQUEST);
        assert_non_null(strstr(err, "output \"topk\" needs field 'k'"));
        job_clear(&job);
        assert_int_equal(decode("topk", 0, &job, err, sizeof(err)), KF_ERR_BAD_REQUEST);
        assert_non_null(strstr(err, "field 'k' must be in 1..1048576, got 0"));
        job_clear(&job);
        assert_int_equal(decode("topk", -2, &job, err, sizeof(err)), KF_ERR_BAD_REQUEST);
        assert_non_null(strstr(err, "field 'k' must be in 1..1048576, got -2"));
        job_clear(&job);
        assert_int_equal(decode("top5", 5, &job, err, sizeof(err)), KF_ERR_BAD_REQUEST);
        assert_non_null(strstr(err, "\"argmax\" or \"topk\", got \"top5\""));
        job_clear(&job);
        /* k with another output is ignored (but still type-checked) */
        assert_int_equal(decode("argmax", 4, &job, err, sizeof(err)), KF_OK);
        assert_int_equal(job.output, JOB_OUTPUT_ARGMAX);
        assert_int_equal(job.k, 0);
        job_clear(&job);
        assert_int_equal(decode(NULL, 1LL << 21, &job, err, sizeof(err)), KF_ERR_BAD_REQUEST);
        job_clear(&job);

        /* the encoder refuses a topk job without a usable k */
        assert_int_equal(decode("topk", 2, &job, err, sizeof(err)), KF_OK);
        job.k = 0;
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "topk needs k in 1..1048576, got 0"));
        job_clear(&job);
}

static void test_check_job(void **state)
{
        const uint32_t dims[] = {2, 4};
        const model_act_t acts[] = {MODEL_ACT_IDENTITY};
        char err[256];
        model_t *m = model_new_mlp("m", 1, dims, acts, err, sizeof(err));
        job_t job = {0};
        kf_err_t e;
        (void)state;

        assert_non_null(m);
        m->version = 7;
        job.cols = 2;
        job.output = JOB_OUTPUT_TOPK;
        job.k = 4;
        assert_int_equal(model_check_job(m, &job, &e, err, sizeof(err)), 0);
        assert_int_equal(e, KF_OK);
        job.k = 5;
        assert_int_equal(model_check_job(m, &job, &e, err, sizeof(err)), -1);
        assert_int_equal(e, KF_ERR_BAD_REQUEST);
        assert_string_equal(err, "k = 5, but model 'm' version 7 has 4 outputs (k must be 1..4)");
        job.cols = 3;
        assert_int_equal(model_check_job(m, &job, &e, err, sizeof(err)), -1);
        assert_int_equal(e, KF_ERR_SHAPE_MISMATCH);
        assert_string_equal(err, "input has 3 columns, model 'm' version 7 expects 2");
        model_unref(m);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_layout_by_hand),
            cmocka_unit_test(test_against_reference),
            cmocka_unit_test(test_nan_and_bounds),
            cmocka_unit_test(test_random_rows_against_full_sort),
            cmocka_unit_test(test_codec),
            cmocka_unit_test(test_check_job),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
