/* test_job_codec.c - unit tests for job_decode/job_encode: every field, both
 * input forms, round trips, and every class of bad or hostile message. */
/* cmocka.h needs these first, in this order. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

/* Messages under test are built here with msgpack_packer or as raw bytes,
 * never with job_encode, so the decoder is not graded by its own encoder. */
typedef struct msg_s {
        msgpack_sbuffer sb;
        msgpack_packer pk;
} msg_t;

static void msg_init(msg_t *m)
{
        msgpack_sbuffer_init(&m->sb);
        msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void msg_free(msg_t *m)
{
        msgpack_sbuffer_destroy(&m->sb);
}

static void raw(msg_t *m, const char *bytes, size_t n)
{
        if (n) /* msgpack-c memcpy()s even 0 bytes into a NULL buffer */
                msgpack_sbuffer_write(&m->sb, bytes, n);
}
#define RAW(m, lit) raw((m), (lit), sizeof(lit) - 1)

static void s(msg_t *m, const char *str)
{
        msgpack_pack_str_with_body(&m->pk, str, strlen(str));
}

static void kv_s(msg_t *m, const char *key, const char *val)
{
        s(m, key);
        s(m, val);
}

static void kv_u(msg_t *m, const char *key, uint64_t val)
{
        s(m, key);
        msgpack_pack_uint64(&m->pk, val);
}

/* rows x cols input; value r*10+c, alternating int and float64 encodings. */
static void rows_input(msg_t *m, uint32_t rows, uint32_t cols)
{
        s(m, "input");
        msgpack_pack_array(&m->pk, rows);
        for (uint32_t r = 0; r < rows; r++) {
                msgpack_pack_array(&m->pk, cols);
                for (uint32_t c = 0; c < cols; c++) {
                        if ((r + c) % 2)
                                msgpack_pack_double(&m->pk, r * 10.0 + c);
                        else
                                msgpack_pack_uint32(&m->pk, r * 10 + c);
                }
        }
}

/* A valid job {v, id, user, model, input: 2x3} minus the key `skip`, in a
 * map sized for `extra` more entries the test appends. */
static void base(msg_t *m, const char *skip, uint32_t extra)
{
        static const char *const keys[] = {"v", "id", "user", "model", "input"};
        uint32_t n = 5 + extra;

        for (size_t i = 0; i < 5; i++)
                if (skip && strcmp(skip, keys[i]) == 0)
                        n--;
        msg_init(m);
        msgpack_pack_map(&m->pk, n);
        if (!skip || strcmp(skip, "v"))
                kv_u(m, "v", 2);
        if (!skip || strcmp(skip, "id"))
                kv_s(m, "id", "job-1");
        if (!skip || strcmp(skip, "user"))
                kv_s(m, "user", "alice");
        if (!skip || strcmp(skip, "model"))
                kv_s(m, "model", "iris");
        if (!skip || strcmp(skip, "input"))
                rows_input(m, 2, 3);
}

static char err[512];

static kf_err_t dec_lim(msg_t *m, const job_limits_t *lim, job_t *job)
{
        kf_err_t rc;

        strcpy(err, "stale");            /* success must clear it */
        memset(job, 0xa5, sizeof(*job)); /* decode must not trust what it is given */
        rc = job_decode(m->sb.data, m->sb.size, lim, job, err, sizeof(err));
        msg_free(m);
        if (rc != KF_OK)
                assert_null(job->input);
        return rc;
}

static kf_err_t dec(msg_t *m, job_t *job)
{
        return dec_lim(m, NULL, job);
}

static kf_err_t dec_bytes(const char *bytes, size_t n, const job_limits_t *lim, job_t *job)
{
        msg_t m;
        msg_init(&m);
        raw(&m, bytes, n);
        return dec_lim(&m, lim, job);
}
#define DEC_BYTES(lit, lim, job) dec_bytes((lit), sizeof(lit) - 1, (lim), (job))

/* Evaluates call once (it decodes), then checks the code and that the
 * message contains sub. */
#define assert_err(call, code, sub)                                                                \
        do {                                                                                       \
                kf_err_t rc_ = (call);                                                             \
                if (rc_ != (code))                                                                 \
                        fail_msg("got %s (%s), want %s", kf_err_name(rc_), err,                    \
                                 kf_err_name(code));                                               \
                if (!strstr(err, (sub)))                                                           \
                        fail_msg("error \"%s\" lacks \"%s\"", err, (sub));                         \
        } while (0)

/* --- valid jobs ---------------------------------------------------------- */

static void test_minimal_job_defaults(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 0);
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_string_equal(err, "");
        assert_string_equal(job.id, "job-1");
        assert_string_equal(job.user, "alice");
        assert_string_equal(job.model, "iris");
        assert_int_equal(job.version, 0);
        assert_int_equal(job.rows, 2);
        assert_int_equal(job.cols, 3);
        for (uint32_t r = 0; r < 2; r++)
                for (uint32_t c = 0; c < 3; c++)
                        assert_true(job.input[r * 3 + c] == (float)(r * 10 + c));
        assert_int_equal(job.output, JOB_OUTPUT_RAW);
        assert_int_equal(job.deadline_ms, 0);
        assert_int_equal(job.ttl_s, JOB_TTL_DEFAULT);
        job_clear(&job);
        assert_null(job.input);
        assert_string_equal(job.id, "");
        assert_int_equal(job.ttl_s, JOB_TTL_DEFAULT);
}

/* A whole job as bytes written by hand: the decoder read against the spec,
 * not against any packer. */
static void test_hand_written_bytes(void **state)
{
        job_t job;
        (void)state;
        assert_int_equal(DEC_BYTES("\x86"
                                   "\xa1v\x02"
                                   "\xa2id\xa2j1"
                                   "\xa4user\xa1u"
                                   "\xa5model\xa1m"
                                   "\xa3ttl\xcd\x0e\x10" /* 3600 */
                                   "\xa5input\x91\x92\xff\xcb\x40\x04\x00\x00\x00\x00\x00\x00",
                                   NULL, &job),
                         KF_OK);
        assert_string_equal(job.id, "j1");
        assert_string_equal(job.user, "u");
        assert_string_equal(job.model, "m");
        assert_int_equal(job.ttl_s, 3600);
        assert_int_equal(job.rows, 1);
        assert_int_equal(job.cols, 2);
        assert_true(job.input[0] == -1.0f);
        assert_true(job.input[1] == 2.5f);
        job_clear(&job);
}

static void test_all_optional_fields(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 6);
        kv_u(&m, "version", 7);
        kv_s(&m, "output", "softmax");
        kv_u(&m, "deadline", 1700000000123ULL);
        kv_u(&m, "ttl", 3600);
        /* unknown keys are ignored, whatever they hold */
        s(&m, "trace");
        msgpack_pack_map(&m.pk, 1);
        kv_s(&m, "span", "abc");
        s(&m, "priority");
        msgpack_pack_nil(&m.pk);
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.version, 7);
        assert_int_equal(job.output, JOB_OUTPUT_SOFTMAX);
        assert_int_equal(job.deadline_ms, 1700000000123LL);
        assert_int_equal(job.ttl_s, 3600);
        job_clear(&job);
}

static void test_output_modes(void **state)
{
        static const struct {
                const char *name;
                job_output_t out;
        } modes[] = {{"raw", JOB_OUTPUT_RAW},
                     {"softmax", JOB_OUTPUT_SOFTMAX},
                     {"argmax", JOB_OUTPUT_ARGMAX}};
        (void)state;
        for (size_t i = 0; i < 3; i++) {
                msg_t m;
                job_t job;
                base(&m, NULL, 1);
                kv_s(&m, "output", modes[i].name);
                assert_int_equal(dec(&m, &job), KF_OK);
                assert_int_equal(job.output, modes[i].out);
                job_clear(&job);
        }
}

static void test_version_and_ttl_bounds(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 2);
        kv_u(&m, "version", UINT32_MAX);
        kv_u(&m, "ttl", JOB_TTL_MAX);
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.version, UINT32_MAX);
        assert_int_equal(job.ttl_s, JOB_TTL_MAX);
        job_clear(&job);

        base(&m, NULL, 2);
        kv_u(&m, "version", 0); /* 0 = the active version, like absent */
        kv_u(&m, "ttl", 1);
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.version, 0);
        assert_int_equal(job.ttl_s, 1);
        job_clear(&job);
}

/* int, uint, float32 and float64 are all numbers; all become float32. */
static void test_number_encodings(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, "input", 1);
        s(&m, "input");
        msgpack_pack_array(&m.pk, 1);
        msgpack_pack_array(&m.pk, 7);
        msgpack_pack_uint8(&m.pk, 5);
        msgpack_pack_int8(&m.pk, -3);
        msgpack_pack_int64(&m.pk, -100000);
        msgpack_pack_uint64(&m.pk, UINT64_MAX);
        msgpack_pack_float(&m.pk, 0.25f);
        msgpack_pack_double(&m.pk, -1e30);
        msgpack_pack_double(&m.pk, 3e38); /* under FLT_MAX: fine */
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.cols, 7);
        assert_true(job.input[0] == 5.0f);
        assert_true(job.input[1] == -3.0f);
        assert_true(job.input[2] == -100000.0f);
        assert_true(job.input[3] == (float)UINT64_MAX);
        assert_true(job.input[4] == 0.25f);
        assert_true(job.input[5] == (float)-1e30);
        assert_true(job.input[6] == 3e38f);
        job_clear(&job);
}

/* input {dtype, shape, data} with data written as little-endian bytes by hand:
 * 1.0 = 3f800000, -2.5 = c0200000, 0.5 = 3f000000, 100 = 42c80000. */
static void test_f32_form(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83" /* keys in any order */
                "\xa4"
                "data\xc4\x10"
                "\x00\x00\x80\x3f"
                "\x00\x00\x20\xc0"
                "\x00\x00\x00\x3f"
                "\x00\x00\xc8\x42"
                "\xa5"
                "shape\x92\x02\x02"
                "\xa5"
                "dtype\xa3"
                "f32");
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.rows, 2);
        assert_int_equal(job.cols, 2);
        assert_true(job.input[0] == 1.0f);
        assert_true(job.input[1] == -2.5f);
        assert_true(job.input[2] == 0.5f);
        assert_true(job.input[3] == 100.0f);
        job_clear(&job);
}

static void f32_input(msg_t *m, uint64_t rows, uint64_t cols, const char *data, size_t n)
{
        s(m, "input");
        msgpack_pack_map(&m->pk, 3);
        kv_s(m, "dtype", "f32");
        s(m, "shape");
        msgpack_pack_array(&m->pk, 2);
        msgpack_pack_uint64(&m->pk, rows);
        msgpack_pack_uint64(&m->pk, cols);
        s(m, "data");
        msgpack_pack_bin_with_body(&m->pk, data, n);
}

/* --- encoder ------------------------------------------------------------- */

static void fill_job(job_t *job, uint32_t rows, uint32_t cols)
{
        memset(job, 0, sizeof(*job));
        strcpy(job->id, "req:2024-01.x_1");
        strcpy(job->user, "bob");
        strcpy(job->model, "mnist-mlp");
        job->rows = rows;
        job->cols = cols;
        job->input = malloc((size_t)rows * cols * sizeof(float));
        assert_non_null(job->input);
        for (size_t i = 0; i < (size_t)rows * cols; i++)
                job->input[i] = (float)i * 0.37f - 3.0f;
        job->input[0] = -FLT_MAX;
        job->input[1] = FLT_MIN / 2; /* subnormal survives both forms */
        job->output = JOB_OUTPUT_RAW;
        job->ttl_s = JOB_TTL_DEFAULT;
}

static void roundtrip(job_encoding_t enc, int with_optionals)
{
        job_t in, outj;
        char *buf;
        size_t len;
        kf_err_t rc;

        fill_job(&in, 3, 4);
        if (with_optionals) {
                in.version = 12;
                in.output = JOB_OUTPUT_ARGMAX;
                in.deadline_ms = 1800000000000LL;
                in.ttl_s = 60;
        }
        assert_int_equal(job_encode(&in, enc, &buf, &len, err, sizeof(err)), 0);
        /* the map holds 5 keys plus only the optionals that differ from defaults */
        assert_int_equal((unsigned char)buf[0], 0x80 | (with_optionals ? 9 : 5));
        rc = job_decode(buf, len, NULL, &outj, err, sizeof(err));
        if (rc != KF_OK)
                fail_msg("decode of encoded job failed: %s", err);
        assert_string_equal(outj.id, in.id);
        assert_string_equal(outj.user, in.user);
        assert_string_equal(outj.model, in.model);
        assert_int_equal(outj.version, in.version);
        assert_int_equal(outj.rows, 3);
        assert_int_equal(outj.cols, 4);
        assert_memory_equal(outj.input, in.input, 12 * sizeof(float));
        assert_int_equal(outj.output, in.output);
        assert_int_equal(outj.deadline_ms, in.deadline_ms);
        assert_int_equal(outj.ttl_s, in.ttl_s);
        free(buf);
        job_clear(&outj);
        job_clear(&in);
}

static void test_roundtrip_f32(void **state)
{
        (void)state;
        roundtrip(JOB_ENC_F32, 0);
        roundtrip(JOB_ENC_F32, 1);
}

static void test_roundtrip_rows(void **state)
{
        (void)state;
        roundtrip(JOB_ENC_ROWS, 0);
        roundtrip(JOB_ENC_ROWS, 1);
}

/* The encoder's exact bytes, against the same map packed by hand in the
 * documented key order. */
static void test_encode_exact_bytes(void **state)
{
        job_t job;
        msg_t m;
        char *buf;
        size_t len;
        (void)state;

        memset(&job, 0, sizeof(job));
        strcpy(job.id, "a");
        strcpy(job.user, "b");
        strcpy(job.model, "c");
        job.version = 3;
        job.rows = 1;
        job.cols = 2;
        job.input = (float[]){1.0f, -2.5f};
        job.output = JOB_OUTPUT_SOFTMAX;
        job.deadline_ms = 99;
        job.ttl_s = 10;

        msg_init(&m);
        msgpack_pack_map(&m.pk, 9);
        kv_u(&m, "v", 2);
        kv_s(&m, "id", "a");
        kv_s(&m, "user", "b");
        kv_s(&m, "model", "c");
        kv_u(&m, "version", 3);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\x01\x02\xa4"
                "data\xc4\x08"
                "\x00\x00\x80\x3f\x00\x00\x20\xc0");
        kv_s(&m, "output", "softmax");
        kv_u(&m, "deadline", 99);
        kv_u(&m, "ttl", 10);
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(len, m.sb.size);
        assert_memory_equal(buf, m.sb.data, len);
        free(buf);
        msg_free(&m);

        msg_init(&m);
        msgpack_pack_map(&m.pk, 9);
        kv_u(&m, "v", 2);
        kv_s(&m, "id", "a");
        kv_s(&m, "user", "b");
        kv_s(&m, "model", "c");
        kv_u(&m, "version", 3);
        s(&m, "input");
        RAW(&m, "\x91\x92\xca\x3f\x80\x00\x00\xca\xc0\x20\x00\x00"); /* float32 is big-endian */
        kv_s(&m, "output", "softmax");
        kv_u(&m, "deadline", 99);
        kv_u(&m, "ttl", 10);
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(len, m.sb.size);
        assert_memory_equal(buf, m.sb.data, len);
        free(buf);
        msg_free(&m);
}

static void test_encode_rejects(void **state)
{
        job_t job;
        char *buf = (char *)&buf;
        size_t len = 1;
        (void)state;

        fill_job(&job, 1, 2);
        strcpy(job.id, "has space");
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err)), -1);
        assert_null(buf);
        assert_int_equal(len, 0);
        assert_non_null(strstr(err, "'id'"));
        strcpy(job.id, "ok");

        job.user[0] = '\0';
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "'user'"));
        strcpy(job.user, "ok");

        memset(job.model, 'm', sizeof(job.model)); /* not even terminated */
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "'model'"));
        strcpy(job.model, "ok");

        job.input[1] = NAN;
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "input[0][1] is NaN"));
        job.input[1] = 0;

        job.ttl_s = JOB_TTL_MAX + 1;
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "'ttl'"));
        job.ttl_s = 0; /* a zero-initialised job: means the default, not written */
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal((unsigned char)buf[0], 0x85);
        free(buf);
        job.version = 1; /* any nonzero version is written */
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal((unsigned char)buf[0], 0x86);
        {
                job_t back;
                assert_int_equal(job_decode(buf, len, NULL, &back, err, sizeof(err)), KF_OK);
                assert_int_equal(back.version, 1);
                job_clear(&back);
        }
        free(buf);

        job.rows = 0;
        assert_int_equal(job_encode(&job, JOB_ENC_ROWS, &buf, &len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "input"));
        job_clear(&job);
}

/* --- malformed messages --------------------------------------------------- */

static void test_not_msgpack(void **state)
{
        job_t job;
        (void)state;
        assert_err(DEC_BYTES("\xc1", NULL, &job), KF_ERR_BAD_REQUEST,
                   "not valid msgpack: at byte 0: invalid type byte 0xc1");
        assert_string_equal(job.id, "");
        assert_err(DEC_BYTES("", NULL, &job), KF_ERR_BAD_REQUEST, "not valid msgpack");
        assert_err(dec_bytes("{\"v\":1}", 7, NULL, &job), KF_ERR_BAD_REQUEST, "not valid msgpack");
        job_clear(&job);
}

static void test_truncated(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 0);
        m.sb.size--; /* drop the last value byte */
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "not valid msgpack");
        assert_string_equal(job.id, "");
        /* and every shorter prefix */
        for (size_t n = 0; n < 40; n++) {
                base(&m, NULL, 0);
                m.sb.size = n;
                assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "not valid msgpack");
        }
        job_clear(&job);
}

static void test_trailing_bytes(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 0);
        RAW(&m, "\xc0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "1 trailing bytes");
        job_clear(&job);
}

static void test_top_level_not_map(void **state)
{
        job_t job;
        (void)state;
        assert_err(DEC_BYTES("\x92\x01\x02", NULL, &job), KF_ERR_BAD_REQUEST,
                   "job must be a msgpack map, got array");
        assert_err(DEC_BYTES("\xa2id", NULL, &job), KF_ERR_BAD_REQUEST,
                   "job must be a msgpack map, got string");
        assert_err(DEC_BYTES("\x07", NULL, &job), KF_ERR_BAD_REQUEST,
                   "job must be a msgpack map, got integer");
        assert_err(DEC_BYTES("\xc0", NULL, &job), KF_ERR_BAD_REQUEST, "got nil");
        job_clear(&job);
}

static void test_missing_required(void **state)
{
        static const char *const req[] = {"v", "id", "user", "model", "input"};
        char want[64];
        (void)state;
        for (size_t i = 0; i < 5; i++) {
                msg_t m;
                job_t job;
                base(&m, req[i], 0);
                snprintf(want, sizeof(want), "missing required field '%s'", req[i]);
                assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, want);
                /* the id is still there for the error result, unless it or the
                 * user (the result's address is both) is what is missing */
                assert_string_equal(job.id, i == 1 || i == 2 ? "" : "job-1");
                job_clear(&job);
        }
}

/* One key of the base job replaced with a value of the wrong type. */
typedef void (*pack_fn)(msgpack_packer *pk);
static void pk_str_1(msgpack_packer *pk)
{
        msgpack_pack_str_with_body(pk, "1", 1);
}
static void pk_int_5(msgpack_packer *pk)
{
        msgpack_pack_uint8(pk, 5);
}
static void pk_neg(msgpack_packer *pk)
{
        msgpack_pack_int8(pk, -1);
}
static void pk_nil(msgpack_packer *pk)
{
        msgpack_pack_nil(pk);
}
static void pk_arr(msgpack_packer *pk)
{
        msgpack_pack_array(pk, 0);
}
static void pk_map(msgpack_packer *pk)
{
        msgpack_pack_map(pk, 0);
}
static void pk_true(msgpack_packer *pk)
{
        msgpack_pack_true(pk);
}
static void pk_dbl(msgpack_packer *pk)
{
        msgpack_pack_double(pk, 1.0);
}
static void pk_bin(msgpack_packer *pk)
{
        msgpack_pack_bin_with_body(pk, "ab", 2);
}
static void pk_zero(msgpack_packer *pk)
{
        msgpack_pack_uint8(pk, 0);
}
static void pk_big(msgpack_packer *pk)
{
        msgpack_pack_uint64(pk, (uint64_t)UINT32_MAX + 1);
}
static void pk_ttl_over(msgpack_packer *pk)
{
        msgpack_pack_uint32(pk, JOB_TTL_MAX + 1);
}
static void pk_u64max(msgpack_packer *pk)
{
        msgpack_pack_uint64(pk, UINT64_MAX);
}
static void pk_bad_out(msgpack_packer *pk)
{
        msgpack_pack_str_with_body(pk, "probs\n", 6);
}

static void test_wrong_types(void **state)
{
        static const struct {
                const char *key;
                pack_fn val;
                const char *want;
        } cases[] = {
            {"v", pk_str_1, "field 'v' must be an unsigned integer (2), got string"},
            {"v", pk_neg, "field 'v' must be an unsigned integer (2), got negative integer"},
            {"v", pk_dbl, "field 'v' must be an unsigned integer (2), got float64"},
            {"id", pk_int_5, "field 'id' must be a string of 1..128 chars"},
            {"user", pk_arr,
             "field 'user' must be a string of 1..64 chars of [A-Za-z0-9._:-], "
             "got array"},
            {"model", pk_nil,
             "field 'model' must be a string of 1..64 chars of [A-Za-z0-9._:-], "
             "got nil"},
            {"version", pk_str_1, "field 'version' must be an unsigned integer, got string"},
            {"version", pk_neg, "field 'version' must be in 0..4294967295, got -1"},
            {"version", pk_big, "field 'version' must be in 0..4294967295, got 4294967296"},
            {"input", pk_str_1,
             "field 'input' must be an array of rows or a {dtype, shape, "
             "data} map, got string"},
            {"input", pk_bin, "field 'input' must be an array of rows"},
            {"output", pk_int_5,
             "field 'output' must be \"raw\", \"softmax\", \"argmax\" or \"topk\", "
             "got integer"},
            {"output", pk_bad_out, "got \"probs?\""},
            {"deadline", pk_true, "field 'deadline' must be an unsigned integer, got boolean"},
            {"deadline", pk_neg, "field 'deadline' must be in 0..9223372036854775807, got -1"},
            {"deadline", pk_u64max, "field 'deadline' must be in 0..9223372036854775807"},
            {"ttl", pk_map, "field 'ttl' must be an unsigned integer, got map"},
            {"ttl", pk_zero, "field 'ttl' must be in 1..2592000, got 0"},
            {"ttl", pk_ttl_over, "field 'ttl' must be in 1..2592000, got 2592001"},
        };
        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const char *k = cases[i].key;
                int required = !strcmp(k, "v") || !strcmp(k, "id") || !strcmp(k, "user") ||
                               !strcmp(k, "model") || !strcmp(k, "input");
                msg_t m;
                job_t job;
                base(&m, required ? k : NULL, 1);
                s(&m, k);
                cases[i].val(&m.pk);
                assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, cases[i].want);
                assert_string_equal(job.id, strcmp(k, "id") && strcmp(k, "user") ? "job-1" : "");
                job_clear(&job);
        }
}

static kf_err_t one_field(const char *key, const char *val, job_t *job)
{
        msg_t m;
        base(&m, key, 1);
        kv_s(&m, key, val);
        return dec(&m, job);
}

static void test_name_charset_and_length(void **state)
{
        char long_id[140], long_user[80];
        job_t job;
        (void)state;

        assert_err(one_field("id", "a b", &job), KF_ERR_BAD_REQUEST,
                   "field 'id' must be a string of 1..128 chars of [A-Za-z0-9._:-], got byte "
                   "0x20 at position 1");
        /* id bad: no id, but user and model still filled */
        assert_string_equal(job.id, "");
        assert_string_equal(job.user, "alice");
        assert_string_equal(job.model, "iris");
        job_clear(&job);

        assert_err(one_field("id", "caf\xc3\xa9", &job), KF_ERR_BAD_REQUEST,
                   "got byte 0xc3 at position 3");
        assert_string_equal(job.id, "");
        job_clear(&job);

        assert_err(one_field("id", "", &job), KF_ERR_BAD_REQUEST,
                   "field 'id' must be a string of 1..128 chars of [A-Za-z0-9._:-], got 0 chars");
        job_clear(&job);

        memset(long_id, 'x', 128);
        long_id[128] = '\0';
        assert_int_equal(one_field("id", long_id, &job), KF_OK);
        assert_string_equal(job.id, long_id);
        job_clear(&job);
        long_id[128] = 'x';
        long_id[129] = '\0';
        assert_err(one_field("id", long_id, &job), KF_ERR_BAD_REQUEST, "got 129 chars");
        assert_string_equal(job.id, "");
        job_clear(&job);

        memset(long_user, 'u', 70);
        long_user[70] = '\0';
        assert_err(one_field("user", long_user, &job), KF_ERR_BAD_REQUEST,
                   "field 'user' must be a string of 1..64 chars of [A-Za-z0-9._:-], got 70 chars");
        /* a bad user leaves no address for a result: no id either (v2) */
        assert_string_equal(job.id, "");
        assert_string_equal(job.user, "");
        assert_string_equal(job.model, "iris");
        job_clear(&job);

        assert_err(one_field("model", "../etc", &job), KF_ERR_BAD_REQUEST,
                   "field 'model' must be a string of 1..64 chars of [A-Za-z0-9._:-], got byte "
                   "0x2f at position 2");
        assert_string_equal(job.id, "job-1");
        job_clear(&job);

        /* every class of allowed char */
        assert_int_equal(one_field("user", "A-Z.a_z:0-9", &job), KF_OK);
        assert_string_equal(job.user, "A-Z.a_z:0-9");
        job_clear(&job);
}

/* The fields an error result needs are filled even when the input is bad. */
static void test_identity_filled_on_error(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, "input", 2);
        kv_u(&m, "ttl", 120);
        s(&m, "input");
        msgpack_pack_array(&m.pk, 0);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "field 'input' has no rows");
        assert_string_equal(job.id, "job-1");
        assert_string_equal(job.user, "alice");
        assert_string_equal(job.model, "iris");
        assert_int_equal(job.ttl_s, 120);
        assert_int_equal(job.rows, 0);
        job_clear(&job);
}

/* ttl and model are kept when user, checked before them, is bad. */
static void test_ttl_filled_after_earlier_error(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, "user", 2);
        kv_s(&m, "user", "no spaces please");
        kv_u(&m, "ttl", 300);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "field 'user'");
        assert_string_equal(job.id, ""); /* no user, no address (v2) */
        assert_string_equal(job.user, "");
        assert_string_equal(job.model, "iris");
        assert_int_equal(job.ttl_s, 300);
        job_clear(&job);
}

static void test_unsupported_version(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, "v", 1);
        kv_u(&m, "v", 3);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "unsupported protocol version 3 (this worker speaks v=2)");
        assert_string_equal(job.id, "job-1");
        job_clear(&job);
        /* v1 is refused by name, with where to read what changed; its
         * address is kept so the client gets an error result. */
        base(&m, "v", 1);
        kv_u(&m, "v", 1);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "protocol version 1 is no longer accepted: this worker speaks v=2, where "
                   "results and counters are scoped by user");
        assert_string_equal(job.id, "job-1");
        assert_string_equal(job.user, "alice");
        job_clear(&job);
        base(&m, "v", 1);
        kv_u(&m, "v", 0);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "unsupported protocol version 0");
        job_clear(&job);
}

static void test_duplicate_keys(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 1);
        kv_s(&m, "id", "job-2");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "duplicate key \"id\" in job");
        assert_string_equal(job.id, ""); /* which one? neither */
        job_clear(&job);

        base(&m, NULL, 1);
        kv_s(&m, "user", "alice");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "duplicate key \"user\"");
        assert_string_equal(job.id, ""); /* which user? neither, so no address */
        job_clear(&job);

        /* unknown keys too, even among many (the sorted path) */
        base(&m, NULL, 40);
        for (int i = 0; i < 39; i++) {
                char k[16];
                snprintf(k, sizeof(k), "x%d", i);
                kv_u(&m, k, 1);
        }
        kv_u(&m, "x17", 2);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "duplicate key \"x17\"");
        job_clear(&job);

        /* empty keys are keys too (and msgpack-c may give them a NULL ptr) */
        base(&m, NULL, 2);
        kv_u(&m, "", 1);
        kv_u(&m, "", 2);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "duplicate key \"\" in job");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x84\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\x01\x01\xa4"
                "data\xc4\x04\0\0\0\0"
                "\xa5"
                "dtype\xa3"
                "f32");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "duplicate key \"dtype\" in input");
        job_clear(&job);
}

static void test_non_string_key(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 1);
        msgpack_pack_uint8(&m.pk, 7);
        msgpack_pack_nil(&m.pk);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "job key #5 must be a string, got integer");
        job_clear(&job);
}

/* --- input ---------------------------------------------------------------- */

static void test_ragged_and_empty_rows(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x94\x94\x01\x02\x03\x04\x94\x01\x02\x03\x04\x94\x01\x02\x03\x04"
                "\x95\x01\x02\x03\x04\x05");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "input row 3 has 5 values, row 0 has 4");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x91\x90");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "input row 0 is empty");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x92\x91\x01\x01");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "input row 1 must be an array of numbers, got integer");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x91\xa1x");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "input row 0 must be an array of numbers, got string");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x91\x92\x01\xa1x");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "input[0][1] must be a number, got string");
        job_clear(&job);
}

/* A bad value at row 2, column 5 of an otherwise valid 3x6 input. */
static void bad_value_at_2_5(msg_t *m, void (*pack_bad)(msgpack_packer *))
{
        base(m, "input", 1);
        s(m, "input");
        msgpack_pack_array(&m->pk, 3);
        for (int r = 0; r < 3; r++) {
                msgpack_pack_array(&m->pk, 6);
                for (int c = 0; c < 6; c++) {
                        if (r == 2 && c == 5)
                                pack_bad(&m->pk);
                        else
                                msgpack_pack_float(&m->pk, 1.5f);
                }
        }
}
static void pk_nan64(msgpack_packer *pk)
{
        msgpack_pack_double(pk, NAN);
}
static void pk_nan32(msgpack_packer *pk)
{
        msgpack_pack_float(pk, NAN);
}
static void pk_pinf(msgpack_packer *pk)
{
        msgpack_pack_double(pk, INFINITY);
}
static void pk_ninf(msgpack_packer *pk)
{
        msgpack_pack_float(pk, -INFINITY);
}
static void pk_huge64(msgpack_packer *pk)
{
        msgpack_pack_double(pk, 1e39);
}
static void pk_nhuge64(msgpack_packer *pk)
{
        msgpack_pack_double(pk, -DBL_MAX);
}

static void test_non_finite_rows(void **state)
{
        static const struct {
                void (*fn)(msgpack_packer *);
                const char *want;
        } cases[] = {
            {pk_nan64, "input[2][5] is NaN"},
            {pk_nan32, "input[2][5] is NaN"},
            {pk_pinf, "input[2][5] is +Inf"},
            {pk_ninf, "input[2][5] is -Inf"},
            {pk_huge64, "input[2][5] = 1e+39 is not finite as float32"},
            {pk_nhuge64, "input[2][5] = -1.79769e+308 is not finite as float32"},
        };
        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                msg_t m;
                job_t job;
                bad_value_at_2_5(&m, cases[i].fn);
                assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, cases[i].want);
                assert_int_equal(job.rows, 0);
                assert_string_equal(job.id, "job-1");
                job_clear(&job);
        }
}

static void test_non_finite_f32(void **state)
{
        static const struct {
                const char bytes[5];
                const char *want;
        } cases[] = {
            {"\x00\x00\xc0\x7f", "input[1][0] is NaN"},
            {"\x00\x00\x80\x7f", "input[1][0] is +Inf"},
            {"\x00\x00\x80\xff", "input[1][0] is -Inf"},
        };
        (void)state;
        for (size_t i = 0; i < 3; i++) {
                char data[16] = {0};
                msg_t m;
                job_t job;
                memcpy(data + 8, cases[i].bytes, 4); /* element 2 of 2x2 = [1][0] */
                base(&m, "input", 1);
                f32_input(&m, 2, 2, data, sizeof(data));
                assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, cases[i].want);
                job_clear(&job);
        }
}

static void test_f32_form_errors(void **state)
{
        msg_t m;
        job_t job;
        char data[16] = {0};
        (void)state;

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f64\xa5"
                "shape\x92\x01\x01\xa4"
                "data\xc4\x08"
                "\0\0\0\0\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "input.dtype \"f64\" is not supported (this worker reads \"f32\")");
        assert_string_equal(job.id, "job-1");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\x01\xa5"
                "shape\x92\x01\x01\xa4"
                "data\xc4\x04\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "field 'input.dtype' must be the string \"f32\", got integer");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x82\xa5"
                "shape\x92\x01\x01\xa4"
                "data\xc4\x04\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "missing required field 'input.dtype'");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x82\xa5"
                "dtype\xa3"
                "f32\xa4"
                "data\xc4\x04\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "missing required field 'input.shape'");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x82\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\x01\x01");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "missing required field 'input.data'");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\x01\x01\xa4"
                "data\xa4"
                "abcd");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "field 'input.data' must be bin (little-endian float32), got string");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x93\x01\x01\x01\xa4"
                "data\xc4\x04"
                "\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "field 'input.shape' must be [rows, cols] of 2 positive integers, got an "
                   "array of 3");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\x01\x00\xa4"
                "data\xc4\x00");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "got 0 cols");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\xff\x01\xa4"
                "data\xc4\x00");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "got -1 rows");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\xcb\x3f\xf0\0\0\0\0\0\0\x01\xa4"
                "data\xc4\x04\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "got float64 for rows");
        job_clear(&job);

        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\xa3"
                "2x2\xa4"
                "data\xc4\x04\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "input.shape' must be [rows, cols]");
        job_clear(&job);

        /* unlike the job map, the input map has exactly its three keys */
        base(&m, "input", 1);
        s(&m, "input");
        RAW(&m, "\x84\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\x01\x01\xa4"
                "data\xc4\x04\0\0\0\0"
                "\xa5"
                "order\xa1"
                "F");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "unknown key \"order\" in input");
        job_clear(&job);

        base(&m, "input", 1);
        f32_input(&m, 2, 2, data, 12);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "input.data has 12 bytes, shape 2x2 needs 16");
        job_clear(&job);

        base(&m, "input", 1);
        f32_input(&m, 2, 2, data, 16);
        assert_int_equal(dec(&m, &job), KF_OK);
        job_clear(&job);
}

/* --- hostile sizes and limits --------------------------------------------- */

/* The base job's first four fields, then raw bytes for "input" or a field. */
static void prefix(msg_t *m)
{
        msg_init(m);
        msgpack_pack_map(&m->pk, 5);
        kv_u(m, "v", 2);
        kv_s(m, "id", "job-1");
        kv_s(m, "user", "alice");
        kv_s(m, "model", "iris");
}

/* 5-byte headers declaring 4G elements or bytes, with a few bytes after: the
 * unpacker would reserve tens of GB for them.  They must fail, on the bounds
 * check, instead of allocating. */
static void test_huge_declared_lengths(void **state)
{
        msg_t m;
        job_t job;
        (void)state;

        prefix(&m);
        s(&m, "input");
        RAW(&m, "\xdd\xff\xff\xff\xff\x91\x01");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "not valid msgpack: at byte 41: array declares 4294967295 elements but only 2 "
                   "bytes remain");
        job_clear(&job);

        prefix(&m);
        s(&m, "input");
        RAW(&m, "\x91\xdd\xff\xff\xff\xff\x01");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "array declares 4294967295 elements");
        job_clear(&job);

        assert_err(DEC_BYTES("\xdd\xff\xff\xff\xff\x01\x02\x03", NULL, &job), KF_ERR_BAD_REQUEST,
                   "array declares 4294967295");
        assert_err(DEC_BYTES("\xdf\xff\xff\xff\xff\xa1v\x01", NULL, &job), KF_ERR_BAD_REQUEST,
                   "map declares 4294967295 entries");
        job_clear(&job);

        msg_init(&m);
        msgpack_pack_map(&m.pk, 1);
        s(&m, "id");
        RAW(&m, "\xdb\xff\xff\xff\xff"
                "abc");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "str declares 4294967295 bytes");
        job_clear(&job);

        prefix(&m);
        s(&m, "input");
        RAW(&m, "\x83\xa5"
                "dtype\xa3"
                "f32\xa5"
                "shape\x92\x01\x01\xa4"
                "data\xc6\xff\xff\xff\xff"
                "\0\0\0\0");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "bin declares 4294967295 bytes");
        job_clear(&job);

        prefix(&m);
        s(&m, "input");
        RAW(&m, "\xdf\xff\xff\xff\xff\xa1x");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "map declares 4294967295 entries");
        job_clear(&job);
}

/* 10^9 x 10^9 declared in a few bytes: too large, decided from the shape
 * alone; and with limits raised to the maximum, the size check must not
 * overflow (4 * rows * cols does not fit in 64 bits for the last case). */
static void test_huge_shape(void **state)
{
        job_limits_t wide = {SIZE_MAX, UINT32_MAX, UINT32_MAX, UINT64_MAX};
        msg_t m;
        job_t job;
        (void)state;

        base(&m, "input", 1);
        f32_input(&m, 1000000000, 1000000000, "\0\0\0\0", 4);
        assert_err(dec(&m, &job), KF_ERR_TOO_LARGE,
                   "input has 1000000000 rows, limit max_rows is 65536");
        assert_string_equal(job.id, "job-1");
        job_clear(&job);

        base(&m, "input", 1);
        f32_input(&m, 1, UINT64_MAX, "\0\0\0\0", 4);
        assert_err(dec(&m, &job), KF_ERR_TOO_LARGE,
                   "input has 18446744073709551615 columns, limit max_cols is 65536");
        job_clear(&job);

        base(&m, "input", 1);
        f32_input(&m, 1000000000, 1000000000, "\0\0\0\0", 4);
        assert_err(dec_lim(&m, &wide, &job), KF_ERR_BAD_REQUEST,
                   "input.data has 4 bytes, shape 1000000000x1000000000 needs "
                   "4000000000000000000");
        job_clear(&job);

        base(&m, "input", 1);
        f32_input(&m, UINT32_MAX, UINT32_MAX, "\0\0\0\0", 4);
        assert_err(dec_lim(&m, &wide, &job), KF_ERR_BAD_REQUEST,
                   "shape 4294967295x4294967295 needs more than");
        job_clear(&job);

        /* 2^30 x 4: rows*cols*4 = 2^32, which a 32-bit size would wrap to 0 */
        base(&m, "input", 1);
        f32_input(&m, (uint64_t)1 << 30, 4, "", 0);
        assert_err(dec_lim(&m, &wide, &job), KF_ERR_BAD_REQUEST,
                   "input.data has 0 bytes, shape 1073741824x4 needs 17179869184");
        job_clear(&job);
}

static void test_max_message_bytes(void **state)
{
        job_limits_t lim = job_limits_default;
        msg_t m;
        job_t job;
        (void)state;

        base(&m, NULL, 0);
        lim.max_message_bytes = m.sb.size - 1;
        assert_err(dec_lim(&m, &lim, &job), KF_ERR_TOO_LARGE, "limit max_message_bytes is");
        job_clear(&job);

        base(&m, NULL, 0);
        lim.max_message_bytes = m.sb.size;
        assert_int_equal(dec_lim(&m, &lim, &job), KF_OK);
        job_clear(&job);

        /* checked before parsing: garbage over the limit is too_large */
        lim.max_message_bytes = 10;
        assert_err(DEC_BYTES("\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1", &lim, &job),
                   KF_ERR_TOO_LARGE, "message is 11 bytes, limit max_message_bytes is 10");
        job_clear(&job);
}

static void test_row_col_element_limits(void **state)
{
        job_limits_t lim = job_limits_default;
        msg_t m;
        job_t job;
        (void)state;

        lim.max_rows = 1;
        base(&m, NULL, 0); /* 2x3 */
        assert_err(dec_lim(&m, &lim, &job), KF_ERR_TOO_LARGE,
                   "input has 2 rows, limit max_rows is 1");
        assert_string_equal(job.id, "job-1");
        job_clear(&job);
        base(&m, "input", 1);
        f32_input(&m, 2, 3, "", 0); /* the shape decides, not the data */
        assert_err(dec_lim(&m, &lim, &job), KF_ERR_TOO_LARGE, "limit max_rows is 1");
        job_clear(&job);

        lim = job_limits_default;
        lim.max_cols = 2;
        base(&m, NULL, 0);
        assert_err(dec_lim(&m, &lim, &job), KF_ERR_TOO_LARGE,
                   "input has 3 columns, limit max_cols is 2");
        job_clear(&job);
        base(&m, "input", 1);
        f32_input(&m, 2, 3, "", 0);
        assert_err(dec_lim(&m, &lim, &job), KF_ERR_TOO_LARGE, "limit max_cols is 2");
        job_clear(&job);

        lim = job_limits_default;
        lim.max_elements = 5;
        base(&m, NULL, 0);
        assert_err(dec_lim(&m, &lim, &job), KF_ERR_TOO_LARGE,
                   "input has 2x3 = 6 values, limit max_elements is 5");
        job_clear(&job);
        base(&m, "input", 1);
        f32_input(&m, 2, 3, "", 0);
        assert_err(dec_lim(&m, &lim, &job), KF_ERR_TOO_LARGE, "limit max_elements is 5");
        job_clear(&job);

        lim.max_elements = 6; /* exactly at every limit is fine */
        lim.max_rows = 2;
        lim.max_cols = 3;
        base(&m, NULL, 0);
        assert_int_equal(dec_lim(&m, &lim, &job), KF_OK);
        job_clear(&job);

        /* rows over the default limit in the array form: 65537 x [0] */
        base(&m, "input", 1);
        s(&m, "input");
        msgpack_pack_array(&m.pk, 65537);
        for (int i = 0; i < 65537; i++)
                RAW(&m, "\x91\x00");
        assert_err(dec(&m, &job), KF_ERR_TOO_LARGE,
                   "input has 65537 rows, limit max_rows is 65536");
        job_clear(&job);
}

static void test_limits_default(void **state)
{
        (void)state;
        assert_int_equal(job_limits_default.max_message_bytes, 8u << 20);
        assert_int_equal(job_limits_default.max_rows, 65536);
        assert_int_equal(job_limits_default.max_cols, 65536);
        assert_int_equal(job_limits_default.max_elements, 16u << 20);
}

static void test_too_deep(void **state)
{
        msg_t m;
        job_t job;
        (void)state;
        base(&m, NULL, 1);
        s(&m, "x");
        RAW(&m, "\x91\x91\x91\x91\x91\x91\x91\x91\x01"); /* 1 + 8 levels > 8 */
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "nested deeper than 8 levels");
        job_clear(&job);
}

static void test_name_valid(void **state)
{
        (void)state;
        assert_int_equal(job_name_valid("abc", 3, 64), 1);
        assert_int_equal(job_name_valid("a.b_c:d-E9", 10, 64), 1);
        assert_int_equal(job_name_valid("", 0, 64), 0);
        assert_int_equal(job_name_valid(NULL, 3, 64), 0);
        assert_int_equal(job_name_valid("abcd", 4, 3), 0);
        assert_int_equal(job_name_valid("a/b", 3, 64), 0);
        assert_int_equal(job_name_valid("a\0b", 3, 64), 0);
        assert_int_equal(job_name_valid("a b", 3, 64), 0);
        assert_int_equal(job_name_valid("ab\xff", 3, 64), 0);
}

static void test_clear_zeroed_and_null(void **state)
{
        job_t job;
        (void)state;
        memset(&job, 0, sizeof(job));
        job_clear(&job);
        assert_int_equal(job.ttl_s, JOB_TTL_DEFAULT);
        assert_int_equal(job.output, JOB_OUTPUT_RAW);
        job_clear(NULL);
        /* errstr is optional */
        assert_int_equal(job_decode("\xc1", 1, NULL, &job, NULL, 0), KF_ERR_BAD_REQUEST);
        job_clear(&job);
}

/* inbox (v2): optional, same charset as ids, checked after ttl; written by
 * the encoder only when set. */
static void test_inbox(void **state)
{
        msg_t m;
        job_t job;
        char *buf, ebuf[256];
        size_t len;
        (void)state;
        base(&m, NULL, 1);
        kv_s(&m, "inbox", "alice-run:7");
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_string_equal(job.inbox, "alice-run:7");
        /* round trip through the encoder */
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, ebuf, sizeof(ebuf)), 0);
        job_clear(&job);
        assert_int_equal(job_decode(buf, len, NULL, &job, ebuf, sizeof(ebuf)), KF_OK);
        assert_string_equal(job.inbox, "alice-run:7");
        free(buf);
        job_clear(&job);

        base(&m, NULL, 0);
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_string_equal(job.inbox, ""); /* absent: none */
        job_clear(&job);

        /* braces would let an inbox name pose as another user's hash tag */
        base(&m, NULL, 1);
        kv_s(&m, "inbox", "x}:result:y");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "field 'inbox' must be a string of 1..64 chars of [A-Za-z0-9._:-], got byte "
                   "0x7d at position 1");
        assert_string_equal(job.id, "job-1"); /* still addressable: an error result */
        job_clear(&job);

        base(&m, NULL, 1);
        kv_u(&m, "inbox", 5);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "field 'inbox' must be a string");
        job_clear(&job);

        /* the encoder refuses what the decoder would */
        memset(&job, 0, sizeof(job));
        strcpy(job.id, "a");
        strcpy(job.user, "b");
        strcpy(job.model, "c");
        strcpy(job.inbox, "{b}");
        job.rows = job.cols = 1;
        job.input = (float[]){1.0f};
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, ebuf, sizeof(ebuf)), -1);
        assert_non_null(strstr(ebuf, "field 'inbox'"));
}

/* results (docs/protocol.md, "Result topic"): "both" (the default) or
 * "stream"; anything else is bad_request naming the field, and the job
 * keeps its address for the error result. */
static void test_results_field(void **state)
{
        msg_t m;
        job_t job;
        char *buf, ebuf[256];
        size_t len;
        (void)state;
        base(&m, NULL, 1);
        kv_s(&m, "results", "stream");
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.stream_only, 1);
        assert_int_equal(job_encode(&job, JOB_ENC_F32, &buf, &len, ebuf, sizeof(ebuf)), 0);
        job_clear(&job);
        assert_int_equal(job_decode(buf, len, NULL, &job, ebuf, sizeof(ebuf)), KF_OK);
        assert_int_equal(job.stream_only, 1);
        free(buf);
        job_clear(&job);

        base(&m, NULL, 1);
        kv_s(&m, "results", "both");
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.stream_only, 0);
        job_clear(&job);

        base(&m, NULL, 0);
        assert_int_equal(dec(&m, &job), KF_OK);
        assert_int_equal(job.stream_only, 0);
        job_clear(&job);

        base(&m, NULL, 1);
        kv_s(&m, "results", "redis\"x");
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST,
                   "field 'results' must be \"both\" or \"stream\", got \"redis");
        assert_string_equal(job.id, "job-1");
        job_clear(&job);

        base(&m, NULL, 1);
        kv_u(&m, "results", 1);
        assert_err(dec(&m, &job), KF_ERR_BAD_REQUEST, "field 'results' must be");
        job_clear(&job);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_minimal_job_defaults),
            cmocka_unit_test(test_results_field),
            cmocka_unit_test(test_hand_written_bytes),
            cmocka_unit_test(test_all_optional_fields),
            cmocka_unit_test(test_output_modes),
            cmocka_unit_test(test_version_and_ttl_bounds),
            cmocka_unit_test(test_number_encodings),
            cmocka_unit_test(test_f32_form),
            cmocka_unit_test(test_roundtrip_f32),
            cmocka_unit_test(test_roundtrip_rows),
            cmocka_unit_test(test_encode_exact_bytes),
            cmocka_unit_test(test_encode_rejects),
            cmocka_unit_test(test_not_msgpack),
            cmocka_unit_test(test_truncated),
            cmocka_unit_test(test_trailing_bytes),
            cmocka_unit_test(test_top_level_not_map),
            cmocka_unit_test(test_missing_required),
            cmocka_unit_test(test_wrong_types),
            cmocka_unit_test(test_name_charset_and_length),
            cmocka_unit_test(test_identity_filled_on_error),
            cmocka_unit_test(test_ttl_filled_after_earlier_error),
            cmocka_unit_test(test_unsupported_version),
            cmocka_unit_test(test_duplicate_keys),
            cmocka_unit_test(test_non_string_key),
            cmocka_unit_test(test_ragged_and_empty_rows),
            cmocka_unit_test(test_non_finite_rows),
            cmocka_unit_test(test_non_finite_f32),
            cmocka_unit_test(test_f32_form_errors),
            cmocka_unit_test(test_huge_declared_lengths),
            cmocka_unit_test(test_huge_shape),
            cmocka_unit_test(test_max_message_bytes),
            cmocka_unit_test(test_row_col_element_limits),
            cmocka_unit_test(test_limits_default),
            cmocka_unit_test(test_too_deep),
            cmocka_unit_test(test_name_valid),
            cmocka_unit_test(test_clear_zeroed_and_null),
            cmocka_unit_test(test_inbox),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
