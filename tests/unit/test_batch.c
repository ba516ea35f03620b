/* test_batch.c - micro-batches (worker/batch.c): decoding messages into
 * jobs, and grouping the jobs of one model into stacked forward passes of
 * at most max_rows rows, each job getting its own rows of the output back.
 *
 * Linked with ld --wrap (see the Makefile): model_forward records each
 * stacked pass before doing it, rd_kafka_message_destroy counts destroyed
 * messages (plain structs here), and realloc can be made to fail. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdlib.h>
#include <string.h>

#include "../../worker/batch.h"
#include "kf_util.h"

int __real_model_forward(const model_t *m, const float *X, uint32_t rows, float *Y,
                         model_scratch_t *s);
int __wrap_model_forward(const model_t *m, const float *X, uint32_t rows, float *Y,
                         model_scratch_t *s);
void __wrap_rd_kafka_message_destroy(rd_kafka_message_t *rkm);
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);
model_t *__wrap_ms_store_get(ms_store_t *ms, const char *name, uint32_t version, kf_err_t *err,
                             char *errstr, size_t errstr_size);

static struct {
        const model_t *m;
        uint32_t rows;
} passes[64];
static int npasses, destroyed, fail_realloc;

int __wrap_model_forward(const model_t *m, const float *X, uint32_t rows, float *Y,
                         model_scratch_t *s)
{
        passes[npasses].m = m;
        passes[npasses++].rows = rows;
        return __real_model_forward(m, X, rows, Y, s);
}

void __wrap_rd_kafka_message_destroy(rd_kafka_message_t *rkm)
{
        (void)rkm;
        destroyed++;
}

void *__wrap_realloc(void *p, size_t n)
{
        return fail_realloc ? NULL : __real_realloc(p, n);
}

/* kw_batch_resolve is not tested here: the model store is not linked. */
model_t *__wrap_ms_store_get(ms_store_t *ms, const char *name, uint32_t version, kf_err_t *err,
                             char *errstr, size_t errstr_size)
{
        (void)ms, (void)name, (void)version, (void)errstr, (void)errstr_size;
        *err = KF_ERR_INTERNAL;
        return NULL;
}

/* y = a*x0 + b*x1: one linear layer 2 -> 1. */
static model_t *linear(float a, float b)
{
        const uint32_t dims[] = {2, 1};
        const model_act_t acts[] = {MODEL_ACT_IDENTITY};
        char err[256];
        model_t *m = model_new_mlp("lin", 1, dims, acts, err, sizeof(err));
        assert_non_null(m);
        m->layers[0].W[0] = a;
        m->layers[0].W[1] = b;
        return m;
}

/* Appends a NEW job of rows rows (row r of job id: x0 = id, x1 = r) on m. */
static void add_job(kw_batch_t *b, model_t *m, int id, uint32_t rows)
{
        kw_job_t *j;
        if (b->n == b->cap) {
                b->cap = b->cap ? b->cap * 2 : 8;
                b->jobs = __real_realloc(b->jobs, sizeof(*b->jobs) * (size_t)b->cap);
        }
        j = &b->jobs[b->n++];
        memset(j, 0, sizeof(*j));
        j->model = model_ref(m);
        j->job.rows = rows;
        j->job.cols = 2;
        j->job.input = malloc(sizeof(float) * 2 * rows);
        snprintf(j->job.id, sizeof(j->job.id), "%d", id);
        for (uint32_t r = 0; r < rows; r++) {
                j->job.input[2 * r] = (float)id;
                j->job.input[2 * r + 1] = (float)r;
        }
}

static int setup(void **state)
{
        (void)state;
        npasses = destroyed = fail_realloc = 0;
        return 0;
}

/* Jobs of two models, interleaved, max 5 rows a pass: the jobs of one
 * model are stacked in arrival order until the next would not fit. */
static void test_grouping(void **state)
{
        model_t *A = linear(1, 10), *B = linear(2, 0);
        kw_batch_t *b = calloc(1, sizeof(*b));
        kw_compute_ctx_t ctx = {0};
        /* A1 2 rows, B1 1, A2 3, A3 2, B2 1 */
        (void)state;
        add_job(b, A, 1, 2);
        add_job(b, B, 2, 1);
        add_job(b, A, 3, 3);
        add_job(b, A, 4, 2);
        add_job(b, B, 5, 1);
        kw_batch_compute(b, &ctx, 5);
        assert_int_equal(npasses, 3);
        assert_ptr_equal(passes[0].m, A); /* A1 + A2 = 5 rows; A3 would be 7 */
        assert_int_equal(passes[0].rows, 5);
        assert_ptr_equal(passes[1].m, B); /* B1 + B2 */
        assert_int_equal(passes[1].rows, 2);
        assert_ptr_equal(passes[2].m, A); /* A3 alone */
        assert_int_equal(passes[2].rows, 2);
        for (int i = 0; i < b->n; i++) {
                kw_job_t *j = &b->jobs[i];
                float a = j->model == A ? 1 : 2, c = j->model == A ? 10 : 0;
                assert_int_equal(j->state, KW_JOB_DONE);
                assert_int_equal(j->err, KF_OK);
                assert_int_equal(j->out_rows, j->job.rows);
                assert_int_equal(j->out_cols, 1);
                assert_null(j->job.input); /* freed once computed */
                assert_int_equal(j->flops, (uint64_t)4 * j->out_rows);
                for (uint32_t r = 0; r < j->out_rows; r++) /* its own rows back */
                        assert_true(j->output[r] == a * (float)atoi(j->job.id) + c * (float)r);
        }
        kw_batch_free(b);
        kw_compute_ctx_free(&ctx);
        model_unref(A);
        model_unref(B);
}

/* Only NEW jobs with a model are computed; a job larger than max_rows on
 * its own still gets a pass of its own. */
static void test_skips_and_large(void **state)
{
        model_t *A = linear(1, 1);
        kw_batch_t *b = calloc(1, sizeof(*b));
        kw_compute_ctx_t ctx = {0};
        (void)state;
        add_job(b, A, 1, 1);
        add_job(b, A, 2, 1);
        add_job(b, A, 3, 9);
        add_job(b, A, 4, 1);
        b->jobs[1].state = KW_JOB_DONE; /* an error result already */
        model_unref(b->jobs[3].model);
        b->jobs[3].model = NULL; /* waits for the registry */
        kw_batch_compute(b, &ctx, 4);
        assert_int_equal(npasses, 2);
        assert_int_equal(passes[0].rows, 1);
        assert_int_equal(passes[1].rows, 9);
        assert_null(b->jobs[1].output);
        assert_int_equal(b->jobs[3].state, KW_JOB_NEW);
        assert_null(b->jobs[3].output);
        kw_batch_free(b);
        kw_compute_ctx_free(&ctx);
        model_unref(A);
}

/* kw_batch_add: a job that decodes is NEW and counts its rows; one that does
 * not is DONE with its error; one past its deadline is DONE as expired. */
static void test_add(void **state)
{
        kw_batch_t *b = calloc(1, sizeof(*b));
        job_limits_t lim = {1 << 20, 1000, 1000, 1000000};
        rd_kafka_message_t msgs[3];
        job_t job;
        char *buf, err[256];
        size_t len;
        float in[4] = {1, 2, 3, 4};
        (void)state;
        memset(msgs, 0, sizeof(msgs));
        memset(&job, 0, sizeof(job));
        strcpy(job.id, "j1");
        strcpy(job.user, "alice");
        strcpy(job.model, "lin");
        job.rows = 2;
        job.cols = 2;
        job.input = in;
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err)), 0);
        msgs[0].payload = buf;
        msgs[0].len = len;
        assert_int_equal(kw_batch_add(b, &msgs[0], &lim), 0);
        msgs[1].payload = "not msgpack";
        msgs[1].len = 11;
        assert_int_equal(kw_batch_add(b, &msgs[1], &lim), 0);
        job.deadline_ms = kf_now_ms() - 1000;
        free(buf);
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err)), 0);
        msgs[2].payload = buf;
        msgs[2].len = len;
        assert_int_equal(kw_batch_add(b, &msgs[2], &lim), 0);
        assert_int_equal(b->n, 3);
        assert_int_equal(b->rows, 2);
        assert_int_equal(b->jobs[0].state, KW_JOB_NEW);
        assert_string_equal(b->jobs[0].job.user, "alice");
        assert_int_equal(b->jobs[1].state, KW_JOB_DONE);
        assert_int_equal(b->jobs[1].err, KF_ERR_BAD_REQUEST);
        assert_int_equal(b->jobs[2].state, KW_JOB_DONE);
        assert_int_equal(b->jobs[2].err, KF_ERR_EXPIRED);
        assert_null(b->jobs[2].job.input);
        kw_batch_free(b);
        assert_int_equal(destroyed, 3); /* the batch owned them */
        free(buf);
}

/* Out of memory growing the job array: nothing added, and the message is
 * still the caller's (not destroyed), who must not lose it silently. */
static void test_add_oom_keeps_message(void **state)
{
        kw_batch_t *b = calloc(1, sizeof(*b));
        job_limits_t lim = {1 << 20, 1000, 1000, 1000000};
        rd_kafka_message_t msg;
        (void)state;
        memset(&msg, 0, sizeof(msg));
        msg.payload = "x";
        msg.len = 1;
        fail_realloc = 1;
        assert_int_equal(kw_batch_add(b, &msg, &lim), -1);
        fail_realloc = 0;
        assert_int_equal(b->n, 0);
        assert_int_equal(destroyed, 0);
        kw_batch_free(b);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup(test_grouping, setup),
            cmocka_unit_test_setup(test_skips_and_large, setup),
            cmocka_unit_test_setup(test_add, setup),
            cmocka_unit_test_setup(test_add_oom_keeps_message, setup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
