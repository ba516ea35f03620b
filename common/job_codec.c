/* job_codec.c - the v2 job message: untrusted msgpack in, a validated job_t
 * out (job_decode), and the reverse for producers (job_encode). */
#include "job.h"

#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "mp_field.h"
#include "mp_pack.h"

/* A job is a map > input > row or shape: 3 levels.  The slack lets unknown
 * fields carry a little structure without letting a message nest deep. */
#define JOB_MAX_DEPTH 8

#define NAME_CHARSET "[A-Za-z0-9._:-]"

const job_limits_t job_limits_default = {
    .max_message_bytes = (size_t)8 << 20,
    .max_rows = 65536,
    .max_cols = 65536,
    .max_elements = (uint64_t)16 << 20,
};

/* Top-level keys this worker reads; anything else is ignored. */
enum {
        F_V,
        F_ID,
        F_USER,
        F_MODEL,
        F_VERSION,
        F_INPUT,
        F_OUTPUT,
        F_DEADLINE,
        F_TTL,
        F_K,
        F_INBOX,
        F_RESULTS,
        F__CNT
};
static const char *const job_fields[F__CNT] = {
    [F_V] = "v",
    [F_ID] = "id",
    [F_USER] = "user",
    [F_MODEL] = "model",
    [F_VERSION] = "version",
    [F_INPUT] = "input",
    [F_OUTPUT] = "output",
    [F_DEADLINE] = "deadline",
    [F_TTL] = "ttl",
    [F_K] = "k",
    [F_INBOX] = "inbox",
    [F_RESULTS] = "results",
};

/* Keys of the {dtype, shape, data} input form. */
enum { I_DTYPE, I_SHAPE, I_DATA, I__CNT };
static const char *const input_fields[I__CNT] = {"dtype", "shape", "data"};

static const char *const output_names[] = {[JOB_OUTPUT_RAW] = "raw",
                                           [JOB_OUTPUT_SOFTMAX] = "softmax",
                                           [JOB_OUTPUT_ARGMAX] = "argmax",
                                           [JOB_OUTPUT_TOPK] = "topk"};

#define OUTPUT_CHOICES "\"raw\", \"softmax\", \"argmax\" or \"topk\""

/* Decoder state.  The first error is the one reported: later checks still run
 * (so id, user, model and ttl are filled for the error result) but cannot
 * overwrite it. */
typedef struct job_dec_s {
        const job_limits_t *lim;
        kf_err_t err;
        char *errstr;
        size_t errstr_size;
} job_dec_t;

__attribute__((format(printf, 3, 4))) static int dec_fail(job_dec_t *d, kf_err_t err,
                                                          const char *fmt, ...)
{
        va_list ap;

        if (d->err != KF_OK)
                return -1;
        d->err = err;
        if (d->errstr && d->errstr_size) {
                va_start(ap, fmt);
                vsnprintf(d->errstr, d->errstr_size, fmt, ap);
                va_end(ap);
        }
        return -1;
}

/* Untrusted text goes into error messages quoted, cut to 32 bytes, with
 * anything but printable ASCII shown as '?' (mp_quote), so a result never
 * carries control characters or broken UTF-8 from the request. */
#define QUOTE_MAX        32
#define QUOTE_BUF        (QUOTE_MAX + 4)
#define QUOTE(buf, p, n) mp_quote((p), (n), QUOTE_MAX, (buf), sizeof(buf))

static int name_char_ok(unsigned char c)
{
        /* Not isalnum(): the set must not depend on the locale. */
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == ':' || c == '-';
}

int job_name_valid(const char *s, size_t len, size_t maxlen)
{
        if (!s || len == 0 || len > maxlen)
                return 0;
        for (size_t i = 0; i < len; i++)
                if (!name_char_ok((unsigned char)s[i]))
                        return 0;
        return 1;
}

/* Any key twice, including keys this worker ignores: a producer that sends
 * one field twice has a bug we should not paper over by picking one. */
static int check_dup_keys(job_dec_t *d, const msgpack_object_map *map, const char *where)
{
        char q[QUOTE_BUF];
        uint32_t at;
        int rc = mp_map_find_dup(map, &at);

        if (rc < 0)
                return dec_fail(d, KF_ERR_INTERNAL, "out of memory checking %u keys of %s",
                                map->size, where);
        if (rc > 0) {
                const msgpack_object_str *k = &map->ptr[at].key.via.str;
                return dec_fail(d, KF_ERR_BAD_REQUEST, "duplicate key \"%s\" in %s",
                                QUOTE(q, k->ptr, k->size), where);
        }
        return 0;
}

/* Points val[i] at the value of key names[i], NULL when absent.  Keys must be
 * strings.  A known key given twice is left NULL, so a duplicated 'id' is
 * never used for the error result either.  Unknown keys are ignored unless
 * strict: the job map may grow optional fields, the f32 input map has exactly
 * its three keys (an ignored "order" or "endian" would misread the data). */
static int scan_keys(job_dec_t *d, const msgpack_object_map *map, const char *where,
                     const char *const *names, size_t nnames, int strict,
                     const msgpack_object **val)
{
        char q[QUOTE_BUF];
        uint32_t at = 0;

        switch (mp_map_fields(map, names, nnames, MP_MAP_DUP_NULL | (strict ? MP_MAP_STRICT : 0),
                              val, &at)) {
        case MP_MAP_KEY_NOT_STR:
                return dec_fail(d, KF_ERR_BAD_REQUEST, "%s key #%u must be a string, got %s", where,
                                at, mp_type_name(&map->ptr[at].key));
        case MP_MAP_UNKNOWN:
                return dec_fail(
                    d, KF_ERR_BAD_REQUEST, "unknown key \"%s\" in %s",
                    QUOTE(q, map->ptr[at].key.via.str.ptr, map->ptr[at].key.via.str.size), where);
        default: /* MP_MAP_DUP does not come with MP_MAP_DUP_NULL */
                break;
        }
        return check_dup_keys(d, map, where);
}

static int dec_name(job_dec_t *d, const msgpack_object *o, const char *field, size_t maxlen,
                    char *dst)
{
        size_t n;

        if (!o)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "missing required field '%s'", field);
        if (o->type != MSGPACK_OBJECT_STR)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field '%s' must be a string of 1..%zu chars of " NAME_CHARSET
                                ", got %s",
                                field, maxlen, mp_type_name(o));
        n = o->via.str.size;
        if (n == 0 || n > maxlen)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field '%s' must be a string of 1..%zu chars of " NAME_CHARSET
                                ", got %zu chars",
                                field, maxlen, n);
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)o->via.str.ptr[i];
                if (!name_char_ok(c))
                        return dec_fail(
                            d, KF_ERR_BAD_REQUEST,
                            "field '%s' must be a string of 1..%zu chars of " NAME_CHARSET
                            ", got byte 0x%02x at position %zu",
                            field, maxlen, c, i);
        }
        memcpy(dst, o->via.str.ptr, n);
        dst[n] = '\0';
        return 0;
}

/* An unsigned integer field within [min, max]. */
static int dec_uint(job_dec_t *d, const msgpack_object *o, const char *field, uint64_t min,
                    uint64_t max, uint64_t *out)
{
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "field '%s' must be in %llu..%llu, got %lld",
                                field, (unsigned long long)min, (unsigned long long)max,
                                (long long)o->via.i64);
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field '%s' must be an unsigned integer, got %s", field,
                                mp_type_name(o));
        if (o->via.u64 < min || o->via.u64 > max)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "field '%s' must be in %llu..%llu, got %llu",
                                field, (unsigned long long)min, (unsigned long long)max,
                                (unsigned long long)o->via.u64);
        *out = o->via.u64;
        return 0;
}

static int dec_v(job_dec_t *d, const msgpack_object *o)
{
        if (!o)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "missing required field 'v'");
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == 1)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "protocol version 1 is no longer accepted: this worker speaks "
                                "v=%d, where results and counters are scoped by user "
                                "(docs/protocol.md, \"What changed from version 1\")",
                                JOB_PROTOCOL_VERSION);
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 != JOB_PROTOCOL_VERSION)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "unsupported protocol version %llu (this worker speaks v=%d)",
                                (unsigned long long)o->via.u64, JOB_PROTOCOL_VERSION);
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field 'v' must be an unsigned integer (%d), got %s",
                                JOB_PROTOCOL_VERSION, mp_type_name(o));
        return 0;
}

static int dec_output(job_dec_t *d, const msgpack_object *o, job_output_t *out)
{
        char q[QUOTE_BUF];

        if (o->type != MSGPACK_OBJECT_STR)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field 'output' must be " OUTPUT_CHOICES ", got %s",
                                mp_type_name(o));
        for (size_t i = 0; i < sizeof(output_names) / sizeof(output_names[0]); i++) {
                if (mp_str_eq(o, output_names[i])) {
                        *out = (job_output_t)i;
                        return 0;
                }
        }
        return dec_fail(d, KF_ERR_BAD_REQUEST,
                        "field 'output' must be " OUTPUT_CHOICES ", got \"%s\"",
                        QUOTE(q, o->via.str.ptr, o->via.str.size));
}

/* 'results': where the result goes, "both" (the default: Redis, and the
 * result topic when the worker has one) or "stream" (the result topic
 * only, docs/protocol.md "Result topic"). */
static int dec_results(job_dec_t *d, const msgpack_object *o, int *stream_only)
{
        char q[QUOTE_BUF];

        if (o->type != MSGPACK_OBJECT_STR)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field 'results' must be \"both\" or \"stream\", got %s",
                                mp_type_name(o));
        if (mp_str_eq(o, "both") || mp_str_eq(o, "stream")) {
                *stream_only = mp_str_eq(o, "stream");
                return 0;
        }
        return dec_fail(d, KF_ERR_BAD_REQUEST,
                        "field 'results' must be \"both\" or \"stream\", got \"%s\"",
                        QUOTE(q, o->via.str.ptr, o->via.str.size));
}

/* Rejects what a model cannot compute with: NaN, infinities, and doubles
 * that would become infinities as float32 (the conversion itself would be
 * undefined behaviour for them). */
static int check_value(job_dec_t *d, double x, uint32_t r, uint32_t c)
{
        if (isnan(x))
                return dec_fail(d, KF_ERR_BAD_REQUEST, "input[%u][%u] is NaN", r, c);
        if (isinf(x))
                return dec_fail(d, KF_ERR_BAD_REQUEST, "input[%u][%u] is %sInf", r, c,
                                x > 0 ? "+" : "-");
        if (fabs(x) > FLT_MAX)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "input[%u][%u] = %g is not finite as float32 (max %g)", r, c, x,
                                (double)FLT_MAX);
        return 0;
}

static int dec_number(job_dec_t *d, const msgpack_object *o, uint32_t r, uint32_t c, float *out)
{
        switch (o->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                *out = (float)o->via.u64; /* every uint64 is within float32 range */
                return 0;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                *out = (float)o->via.i64;
                return 0;
        case MSGPACK_OBJECT_FLOAT32: /* msgpack-c widens float32 to via.f64 */
        case MSGPACK_OBJECT_FLOAT64:
                if (check_value(d, o->via.f64, r, c))
                        return -1;
                *out = (float)o->via.f64;
                return 0;
        default:
                return dec_fail(d, KF_ERR_BAD_REQUEST, "input[%u][%u] must be a number, got %s", r,
                                c, mp_type_name(o));
        }
}

/* Limits come before any allocation.  rows and cols are each checked against
 * a 32-bit limit before they are multiplied, so the product cannot overflow
 * whatever the message declares. */
static int check_limits(job_dec_t *d, uint64_t rows, uint64_t cols)
{
        const job_limits_t *lim = d->lim;

        if (rows > lim->max_rows)
                return dec_fail(d, KF_ERR_TOO_LARGE, "input has %llu rows, limit max_rows is %u",
                                (unsigned long long)rows, lim->max_rows);
        if (cols > lim->max_cols)
                return dec_fail(d, KF_ERR_TOO_LARGE, "input has %llu columns, limit max_cols is %u",
                                (unsigned long long)cols, lim->max_cols);
        if (rows * cols > lim->max_elements)
                return dec_fail(d, KF_ERR_TOO_LARGE,
                                "input has %llux%llu = %llu values, limit max_elements is %llu",
                                (unsigned long long)rows, (unsigned long long)cols,
                                (unsigned long long)(rows * cols),
                                (unsigned long long)lim->max_elements);
        return 0;
}

static float *alloc_input(job_dec_t *d, uint32_t rows, uint32_t cols)
{
        float *in = malloc((size_t)rows * cols * sizeof(*in));

        if (!in)
                dec_fail(d, KF_ERR_INTERNAL, "out of memory for a %ux%u input", rows, cols);
        return in;
}

/* input as [[x, ...], ...]: every declared count is checked (limits, then
 * ragged rows) before the floats are allocated. */
static int dec_input_rows(job_dec_t *d, const msgpack_object_array *a, job_t *job)
{
        const msgpack_object *row0;
        uint32_t rows = a->size, cols;
        float *in;

        if (rows == 0)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field 'input' has no rows; a job needs at least 1 row");
        if (check_limits(d, rows, 1))
                return -1;
        row0 = &a->ptr[0];
        if (row0->type != MSGPACK_OBJECT_ARRAY)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "input row 0 must be an array of numbers, got %s",
                                mp_type_name(row0));
        cols = row0->via.array.size;
        if (cols == 0)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "input row 0 is empty; rows need at least 1 value");
        if (check_limits(d, rows, cols))
                return -1;
        for (uint32_t r = 1; r < rows; r++) {
                const msgpack_object *row = &a->ptr[r];
                if (row->type != MSGPACK_OBJECT_ARRAY)
                        return dec_fail(d, KF_ERR_BAD_REQUEST,
                                        "input row %u must be an array of numbers, got %s", r,
                                        mp_type_name(row));
                if (row->via.array.size != cols)
                        return dec_fail(d, KF_ERR_BAD_REQUEST,
                                        "input row %u has %u values, row 0 has %u", r,
                                        row->via.array.size, cols);
        }

        in = alloc_input(d, rows, cols);
        if (!in)
                return -1;
        for (uint32_t r = 0; r < rows; r++) {
                const msgpack_object *v = a->ptr[r].via.array.ptr;
                for (uint32_t c = 0; c < cols; c++) {
                        if (dec_number(d, &v[c], r, c, &in[(size_t)r * cols + c])) {
                                free(in);
                                return -1;
                        }
                }
        }
        job->input = in;
        job->rows = rows;
        job->cols = cols;
        return 0;
}

static int dec_shape(job_dec_t *d, const msgpack_object *o, uint64_t *rows, uint64_t *cols)
{
        const char *expect = "field 'input.shape' must be [rows, cols] of 2 positive integers";
        const msgpack_object *e;

        if (!o)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "missing required field 'input.shape'");
        if (o->type != MSGPACK_OBJECT_ARRAY)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "%s, got %s", expect, mp_type_name(o));
        if (o->via.array.size != 2)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "%s, got an array of %u", expect,
                                o->via.array.size);
        e = o->via.array.ptr;
        for (int i = 0; i < 2; i++) {
                if (e[i].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                        return dec_fail(d, KF_ERR_BAD_REQUEST, "%s, got %lld %s", expect,
                                        (long long)e[i].via.i64, i ? "cols" : "rows");
                if (e[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                        return dec_fail(d, KF_ERR_BAD_REQUEST, "%s, got %s for %s", expect,
                                        mp_type_name(&e[i]), i ? "cols" : "rows");
                if (e[i].via.u64 == 0)
                        return dec_fail(d, KF_ERR_BAD_REQUEST, "%s, got 0 %s", expect,
                                        i ? "cols" : "rows");
        }
        *rows = e[0].via.u64;
        *cols = e[1].via.u64;
        return 0;
}

/* input as {dtype: "f32", shape: [rows, cols], data: <bin>}: the shape is
 * checked against the limits and the bin's real size before anything is
 * allocated, so a declared 10^9 x 10^9 costs nothing. */
static int dec_input_f32(job_dec_t *d, const msgpack_object_map *map, job_t *job)
{
        const msgpack_object *val[I__CNT] = {NULL};
        const msgpack_object *dtype, *data;
        char q[QUOTE_BUF];
        uint64_t rows = 0, cols = 0, need;
        float *in;

        if (scan_keys(d, map, "input", input_fields, I__CNT, 1, val))
                return -1;
        dtype = val[I_DTYPE];
        if (!dtype)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "missing required field 'input.dtype'");
        if (dtype->type != MSGPACK_OBJECT_STR)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field 'input.dtype' must be the string \"f32\", got %s",
                                mp_type_name(dtype));
        if (!mp_str_eq(dtype, "f32"))
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "input.dtype \"%s\" is not supported (this worker reads \"f32\")",
                                QUOTE(q, dtype->via.str.ptr, dtype->via.str.size));
        if (dec_shape(d, val[I_SHAPE], &rows, &cols) || check_limits(d, rows, cols))
                return -1;

        data = val[I_DATA];
        if (!data)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "missing required field 'input.data'");
        if (data->type != MSGPACK_OBJECT_BIN)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                "field 'input.data' must be bin (little-endian float32), got %s",
                                mp_type_name(data));
        /* rows and cols fit in 32 bits here, so rows * cols fits in 64, but
         * need = 4 * that may not: compare by division first. */
        need = rows * cols;
        if (need > data->via.bin.size / 4 || need * 4 != data->via.bin.size)
                return dec_fail(d, KF_ERR_BAD_REQUEST,
                                need <= UINT64_MAX / 4
                                    ? "input.data has %u bytes, shape %llux%llu needs %llu"
                                    : "input.data has %u bytes, shape %llux%llu needs more than "
                                      "%llu",
                                data->via.bin.size, (unsigned long long)rows,
                                (unsigned long long)cols,
                                need <= UINT64_MAX / 4 ? (unsigned long long)(need * 4)
                                                       : (unsigned long long)UINT64_MAX);

        in = alloc_input(d, (uint32_t)rows, (uint32_t)cols);
        if (!in)
                return -1;
        mp_f32_le_read(in, data->via.bin.ptr, (size_t)need);
        for (uint64_t i = 0; i < need; i++) {
                if (check_value(d, in[i], (uint32_t)(i / cols), (uint32_t)(i % cols))) {
                        free(in);
                        return -1;
                }
        }
        job->input = in;
        job->rows = (uint32_t)rows;
        job->cols = (uint32_t)cols;
        return 0;
}

static int dec_input(job_dec_t *d, const msgpack_object *o, job_t *job)
{
        if (!o)
                return dec_fail(d, KF_ERR_BAD_REQUEST, "missing required field 'input'");
        if (o->type == MSGPACK_OBJECT_ARRAY)
                return dec_input_rows(d, &o->via.array, job);
        if (o->type == MSGPACK_OBJECT_MAP)
                return dec_input_f32(d, &o->via.map, job);
        return dec_fail(d, KF_ERR_BAD_REQUEST,
                        "field 'input' must be an array of rows or a {dtype, shape, data} map, "
                        "got %s",
                        mp_type_name(o));
}

/* Every field at its default, without freeing: job may hold garbage. */
static void job_reset(job_t *job)
{
        memset(job, 0, sizeof(*job));
        job->output = JOB_OUTPUT_RAW;
        job->ttl_s = JOB_TTL_DEFAULT;
}

void job_clear(job_t *job)
{
        if (!job)
                return;
        free(job->input);
        job_reset(job);
}

kf_err_t job_decode(const void *buf, size_t len, const job_limits_t *lim, job_t *job, char *errstr,
                    size_t errstr_size)
{
        job_dec_t d = {lim ? lim : &job_limits_default, KF_OK, errstr, errstr_size};
        const msgpack_object *val[F__CNT] = {NULL};
        const msgpack_object *top;
        msgpack_unpacked up;
        char why[160];
        uint64_t u;

        job_reset(job);
        if (errstr && errstr_size)
                errstr[0] = '\0';
        if (len > d.lim->max_message_bytes) {
                dec_fail(&d, KF_ERR_TOO_LARGE,
                         "message is %zu bytes, limit max_message_bytes is %zu", len,
                         d.lim->max_message_bytes);
                return d.err;
        }
        /* msgpack-c would reserve memory for whatever lengths the message
         * declares; mp_unpack_one only hands it bytes whose every length has
         * been checked. */
        msgpack_unpacked_init(&up);
        switch (mp_unpack_one(buf, len, JOB_MAX_DEPTH, &up, why, sizeof(why))) {
        case MP_UNPACK_NOMEM:
                dec_fail(&d, KF_ERR_INTERNAL, "out of memory unpacking a %zu-byte job", len);
                goto out;
        case MP_UNPACK_BAD:
                dec_fail(&d, KF_ERR_BAD_REQUEST, "not valid msgpack: %s", why);
                goto out;
        case MP_UNPACK_OK:
                break;
        }
        top = &up.data;
        if (top->type != MSGPACK_OBJECT_MAP) {
                dec_fail(&d, KF_ERR_BAD_REQUEST, "job must be a msgpack map, got %s",
                         mp_type_name(top));
                goto out;
        }

        scan_keys(&d, &top->via.map, "job", job_fields, F__CNT, 0, val);
        dec_v(&d, val[F_V]);
        /* What an error result is addressed and labelled with: filled when
         * valid even if an earlier field already failed. */
        dec_name(&d, val[F_ID], "id", JOB_ID_MAX, job->id);
        dec_name(&d, val[F_USER], "user", JOB_USER_MAX, job->user);
        dec_name(&d, val[F_MODEL], "model", JOB_MODEL_MAX, job->model);
        if (val[F_TTL] && dec_uint(&d, val[F_TTL], "ttl", 1, JOB_TTL_MAX, &u) == 0)
                job->ttl_s = (uint32_t)u;
        if (val[F_INBOX])
                dec_name(&d, val[F_INBOX], "inbox", JOB_INBOX_MAX, job->inbox);
        /* A result is addressed by user and id (docs/protocol.md, "Redis
         * keys"): without a readable user there is no address, so the
         * message is undecodable like one without an id. */
        if (!job->user[0])
                job->id[0] = '\0';
        if (val[F_VERSION] && dec_uint(&d, val[F_VERSION], "version", 0, UINT32_MAX, &u) == 0)
                job->version = (uint32_t)u;
        if (val[F_OUTPUT])
                dec_output(&d, val[F_OUTPUT], &job->output);
        if (val[F_RESULTS])
                dec_results(&d, val[F_RESULTS], &job->stream_only);
        if (val[F_DEADLINE] && dec_uint(&d, val[F_DEADLINE], "deadline", 0, INT64_MAX, &u) == 0)
                job->deadline_ms = (int64_t)u;
        /* k belongs to topk: required there, ignored (once its type is
         * checked) with any other output.  Whether k fits the model's
         * output_dim is known only once the model is (model_check_job). */
        if (val[F_K] && dec_uint(&d, val[F_K], "k", 1, JOB_K_MAX, &u) == 0 &&
            job->output == JOB_OUTPUT_TOPK)
                job->k = (uint32_t)u;
        if (job->output == JOB_OUTPUT_TOPK && !val[F_K])
                dec_fail(&d, KF_ERR_BAD_REQUEST,
                         "output \"topk\" needs field 'k' (how many of each row's largest "
                         "values, 1..output_dim)");
        /* Last, and only for an otherwise valid job: it is the one that allocates. */
        if (d.err == KF_OK)
                dec_input(&d, val[F_INPUT], job);

out:
        msgpack_unpacked_destroy(&up);
        if (d.err != KF_OK) {
                free(job->input);
                job->input = NULL;
                job->rows = job->cols = 0;
        }
        return d.err;
}

static int pk_input(msgpack_packer *pk, const job_t *job, job_encoding_t enc)
{
        int rc = mp_pack_cstr(pk, "input");

        if (enc == JOB_ENC_F32) {
                rc |= msgpack_pack_map(pk, 3);
                rc |= mp_pack_kv_str(pk, "dtype", "f32");
                rc |= mp_pack_cstr(pk, "shape");
                rc |= msgpack_pack_array(pk, 2);
                rc |= msgpack_pack_uint32(pk, job->rows);
                rc |= msgpack_pack_uint32(pk, job->cols);
                rc |= mp_pack_cstr(pk, "data");
                return rc | mp_pack_f32_le(pk, job->input, (size_t)job->rows * job->cols);
        }
        rc |= msgpack_pack_array(pk, job->rows);
        for (uint32_t r = 0; r < job->rows && rc == 0; r++) {
                const float *row = job->input + (size_t)r * job->cols;
                rc |= msgpack_pack_array(pk, job->cols);
                for (uint32_t c = 0; c < job->cols; c++)
                        rc |= msgpack_pack_float(pk, row[c]);
        }
        return rc;
}

/* Refuses what job_decode would refuse, so a producer learns of a bad job
 * before it is queued rather than from an error result. */
static int enc_check(const job_t *job, job_encoding_t enc, char *errstr, size_t errstr_size)
{
        static const struct {
                const char *field;
                size_t off, max;
        } names[] = {
            {"id", offsetof(job_t, id), JOB_ID_MAX},
            {"user", offsetof(job_t, user), JOB_USER_MAX},
            {"model", offsetof(job_t, model), JOB_MODEL_MAX},
        };
        uint64_t n;

        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                const char *s = (const char *)job + names[i].off;
                if (!job_name_valid(s, strnlen(s, names[i].max + 1), names[i].max))
                        return kf_errf(
                            errstr, errstr_size,
                            "field '%s' must be a string of 1..%zu chars of " NAME_CHARSET,
                            names[i].field, names[i].max);
        }
        if (job->inbox[0] &&
            !job_name_valid(job->inbox, strnlen(job->inbox, JOB_INBOX_MAX + 1), JOB_INBOX_MAX))
                return kf_errf(errstr, errstr_size,
                               "field 'inbox' must be a string of 1..%d chars of " NAME_CHARSET,
                               JOB_INBOX_MAX);
        if (enc != JOB_ENC_F32 && enc != JOB_ENC_ROWS)
                return kf_errf(errstr, errstr_size, "unknown input encoding %d", (int)enc);
        if ((unsigned)job->output > JOB_OUTPUT_TOPK)
                return kf_errf(errstr, errstr_size, "unknown output mode %d", (int)job->output);
        if (job->output == JOB_OUTPUT_TOPK && (job->k < 1 || job->k > JOB_K_MAX))
                return kf_errf(errstr, errstr_size, "output topk needs k in 1..%u, got %u",
                               JOB_K_MAX, job->k);
        if (job->ttl_s > JOB_TTL_MAX)
                return kf_errf(errstr, errstr_size, "field 'ttl' must be in 1..%u, got %u",
                               JOB_TTL_MAX, job->ttl_s);
        if (job->deadline_ms < 0)
                return kf_errf(errstr, errstr_size,
                               "field 'deadline' must not be negative, got %lld",
                               (long long)job->deadline_ms);
        if (!job->input || job->rows == 0 || job->cols == 0)
                return kf_errf(errstr, errstr_size,
                               "input must have at least 1 row and 1 column, got %ux%u%s",
                               job->rows, job->cols, job->input ? "" : " and no data");
        n = (uint64_t)job->rows * job->cols;
        if (enc == JOB_ENC_F32 && n > UINT32_MAX / 4)
                return kf_errf(errstr, errstr_size,
                               "input %ux%u is too large for one f32 bin (at most %u values)",
                               job->rows, job->cols, UINT32_MAX / 4);
        for (uint64_t i = 0; i < n; i++) {
                float f = job->input[i];
                if (!isfinite(f))
                        return kf_errf(errstr, errstr_size, "input[%llu][%llu] is %s",
                                       (unsigned long long)(i / job->cols),
                                       (unsigned long long)(i % job->cols),
                                       isnan(f) ? "NaN"
                                       : f > 0  ? "+Inf"
                                                : "-Inf");
        }
        return 0;
}

int job_encode(const job_t *job, job_encoding_t enc, char **out, size_t *outlen, char *errstr,
               size_t errstr_size)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        /* ttl 0 is what a zero-initialised job_t holds: treat it as the default. */
        int write_ttl = job->ttl_s != 0 && job->ttl_s != JOB_TTL_DEFAULT;
        size_t nkeys = 5 + (job->version != 0) + (job->output != JOB_OUTPUT_RAW) +
                       (job->output == JOB_OUTPUT_TOPK) + (job->deadline_ms != 0) + write_ttl +
                       (job->inbox[0] != '\0') + (job->stream_only != 0);
        int rc;

        *out = NULL;
        *outlen = 0;
        if (enc_check(job, enc, errstr, errstr_size))
                return -1;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc = msgpack_pack_map(&pk, nkeys);
        rc |= mp_pack_cstr(&pk, "v");
        rc |= msgpack_pack_uint32(&pk, JOB_PROTOCOL_VERSION);
        rc |= mp_pack_kv_str(&pk, "id", job->id);
        rc |= mp_pack_kv_str(&pk, "user", job->user);
        rc |= mp_pack_kv_str(&pk, "model", job->model);
        if (job->version != 0) {
                rc |= mp_pack_cstr(&pk, "version");
                rc |= msgpack_pack_uint32(&pk, job->version);
        }
        rc |= pk_input(&pk, job, enc);
        if (job->output != JOB_OUTPUT_RAW)
                rc |= mp_pack_kv_str(&pk, "output", output_names[job->output]);
        if (job->output == JOB_OUTPUT_TOPK) {
                rc |= mp_pack_cstr(&pk, "k");
                rc |= msgpack_pack_uint32(&pk, job->k);
        }
        if (job->deadline_ms != 0) {
                rc |= mp_pack_cstr(&pk, "deadline");
                rc |= msgpack_pack_uint64(&pk, (uint64_t)job->deadline_ms);
        }
        if (write_ttl) {
                rc |= mp_pack_cstr(&pk, "ttl");
                rc |= msgpack_pack_uint32(&pk, job->ttl_s);
        }
        if (job->inbox[0])
                rc |= mp_pack_kv_str(&pk, "inbox", job->inbox);
        if (job->stream_only)
                rc |= mp_pack_kv_str(&pk, "results", "stream");
        if (rc != 0) {
                msgpack_sbuffer_destroy(&sb);
                return kf_errf(errstr, errstr_size, "out of memory encoding job %s", job->id);
        }
        *outlen = sb.size;
        *out = msgpack_sbuffer_release(&sb);
        return 0;
}
