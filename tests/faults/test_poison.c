/* test_poison.c - every kind of bad message mixed into good traffic,
 * produced straight to Kafka (not through the CLI, which refuses to make
 * them).  A message with a readable job id and user must get an error result
 * (protocol v2: kinfer:{USER}:result:ID) with the right code and message,
 * announced on its inbox; one without an address (not msgpack, lengths that
 * lie, no or bad id, no or bad user, over the size limit) must be copied to
 * the dead-letter topic with its key, value and the kinfer.* headers; the
 * good jobs around them all get correct results, and no partition stalls. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faults.h"

#define WAIT_MS   120000
#define MAX_BYTES 2048 /* the workers' --max-message-bytes: "over size" stays small */

/* ---- building messages ------------------------------------------------ */

static void kv_str(fx_msg_t *m, const char *k, const char *v)
{
        fx_msg_str(m, k);
        fx_msg_str(m, v);
}

static void kv_uint(fx_msg_t *m, const char *k, uint64_t v)
{
        fx_msg_str(m, k);
        msgpack_pack_uint64(&m->pk, v);
}

/* "input": {dtype f32, shape [rows, cols], data: n floats}. */
static void kv_input_f32(fx_msg_t *m, uint64_t rows, uint64_t cols, const float *data, size_t n)
{
        fx_msg_str(m, "input");
        msgpack_pack_map(&m->pk, 3);
        kv_str(m, "dtype", "f32");
        fx_msg_str(m, "shape");
        msgpack_pack_array(&m->pk, 2);
        msgpack_pack_uint64(&m->pk, rows);
        msgpack_pack_uint64(&m->pk, cols);
        fx_msg_str(m, "data");
        fx_msg_f32(m, data, n);
}

/* A job's map header and its v (2), id, user, model and inbox (n_more keys
 * follow). */
static void job_head(fx_msg_t *m, fx_t *fx, const fx_job_t *job, int n_more)
{
        fx_msg_init(m);
        msgpack_pack_map(&m->pk, 5 + (uint32_t)n_more);
        kv_uint(m, "v", 2);
        kv_str(m, "id", job->id);
        kv_str(m, "user", fx_user(fx, job->user));
        kv_str(m, "model", "mlp");
        kv_str(m, "inbox", FX_INBOX);
}

/* A fresh job slot with an id, a user and the inbox, like a good job's. */
static fx_job_t *new_job(fx_t *fx, const char *what, int k)
{
        fx_job_t *job = fx_add_raw(fx);
        snprintf(job->id, sizeof(job->id), "%s-%s-%d", fx->tag, what, k);
        job->user = k % fx->n_users;
        job->inbox = 1;
        job->rows = 1 + k % FX_MAXROWS;
        for (int v = 0; v < job->rows * FX_IN; v++)
                job->x[v] = (float)((k * 37 + v * 11) % 200) / 50.0f - 2.0f;
        return job;
}

/* ---- the poison ------------------------------------------------------- */

/* Good jobs in forms the fixture does not use: the rows form with every
 * number type, and unknown keys (ignored by the contract). */
static void add_good_variants(fx_t *fx, int k)
{
        fx_job_t *job = new_job(fx, "rows", k);
        fx_msg_t m;

        job_head(&m, fx, job, 1);
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, (size_t)job->rows);
        for (int r = 0; r < job->rows; r++) {
                msgpack_pack_array(&m.pk, FX_IN);
                for (int c = 0; c < FX_IN; c++) {
                        float x = job->x[r * FX_IN + c];
                        if (c % 3 == 0)
                                msgpack_pack_double(&m.pk, x);
                        else if (c % 3 == 1)
                                msgpack_pack_float(&m.pk, x);
                        else if (x == truncf(x) && x < 0)
                                msgpack_pack_int64(&m.pk, (int64_t)x);
                        else if (x == truncf(x))
                                msgpack_pack_uint64(&m.pk, (uint64_t)x);
                        else
                                msgpack_pack_float(&m.pk, x);
                }
        }
        fx_msg_take(&m, job);

        job = new_job(fx, "extra", k);
        job_head(&m, fx, job, 3);
        kv_input_f32(&m, (uint64_t)job->rows, FX_IN, job->x, (size_t)job->rows * FX_IN);
        fx_msg_str(&m, "x-trace");
        msgpack_pack_map(&m.pk, 1);
        fx_msg_str(&m, "spans");
        msgpack_pack_array(&m.pk, 3);
        msgpack_pack_nil(&m.pk);
        msgpack_pack_true(&m.pk);
        msgpack_pack_double(&m.pk, NAN); /* not input: the contract ignores it */
        kv_str(&m, "comment", "ignored by workers");
        fx_msg_take(&m, job);
}

/* Jobs with a readable id and user that break one rule each: an error
 * result, announced on their inbox (docs/protocol.md, "Job message"). */
static int add_error_jobs(fx_t *fx)
{
        const float nan_row[FX_IN] = {1, 2, NAN, 4, 5, 6, 7, 8};
        float row[FX_IN] = {1, 2, 3, 4, 5, 6, 7, 8};
        int k = 0;
        fx_job_t *job;
        fx_msg_t m;

#define BEGIN(what, code, message)                                                                 \
        job = new_job(fx, what, k++);                                                              \
        job->want_error = code;                                                                    \
        job->want_message = message
#define END() fx_msg_take(&m, job)

        BEGIN("v-str", "bad_request", "field 'v' must be an unsigned integer");
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_str(&m, "v", "2");
        kv_str(&m, "id", job->id);
        kv_str(&m, "user", fx_user(fx, job->user));
        kv_str(&m, "model", "mlp");
        kv_str(&m, "inbox", FX_INBOX);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        END();

        /* A version from the future. */
        BEGIN("v3", "bad_request", "^unsupported protocol version 3 (this worker speaks v=2)");
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_uint(&m, "v", 3);
        kv_str(&m, "id", job->id);
        kv_str(&m, "user", fx_user(fx, job->user));
        kv_str(&m, "model", "mlp");
        kv_str(&m, "inbox", FX_INBOX);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        END();

        /* A job still queued in the old format: an error result in the v2
         * layout, under its user, that a v2 client can read. */
        BEGIN("v1", "bad_request", "^protocol version 1 is no longer accepted");
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_uint(&m, "v", 1);
        kv_str(&m, "id", job->id);
        kv_str(&m, "user", fx_user(fx, job->user));
        kv_str(&m, "model", "mlp");
        kv_str(&m, "inbox", FX_INBOX);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        END();

        /* No readable model: the result has none, no per-model counter. */
        BEGIN("model-array", "bad_request", "field 'model' must be a string");
        job->model = "";
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", job->id);
        kv_str(&m, "user", fx_user(fx, job->user));
        fx_msg_str(&m, "model");
        msgpack_pack_array(&m.pk, 1);
        fx_msg_str(&m, "mlp");
        kv_str(&m, "inbox", FX_INBOX);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        END();

        BEGIN("input-str", "bad_request", "input");
        job_head(&m, fx, job, 1);
        kv_str(&m, "input", "1,2,3,4,5,6,7,8");
        END();

        BEGIN("output-bad", "bad_request", "field 'output'");
        job_head(&m, fx, job, 2);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        kv_str(&m, "output", "logits");
        END();

        /* An invalid ttl: the result lives the default 86400 s. */
        BEGIN("ttl-zero", "bad_request", "field 'ttl'");
        job_head(&m, fx, job, 2);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        kv_uint(&m, "ttl", 0);
        END();

        BEGIN("version-neg", "bad_request", "field 'version'");
        job_head(&m, fx, job, 2);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        fx_msg_str(&m, "version");
        msgpack_pack_int(&m.pk, -1);
        END();

        BEGIN("nan-f32", "bad_request", NULL);
        job_head(&m, fx, job, 1);
        kv_input_f32(&m, 1, FX_IN, nan_row, FX_IN);
        END();

        BEGIN("inf-f64", "bad_request", NULL);
        job_head(&m, fx, job, 1);
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, 1);
        msgpack_pack_array(&m.pk, FX_IN);
        for (int c = 0; c < FX_IN; c++)
                msgpack_pack_double(&m.pk, c == 5 ? INFINITY : c);
        END();

        BEGIN("ninf-f32", "bad_request", NULL);
        job_head(&m, fx, job, 1);
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, 1);
        msgpack_pack_array(&m.pk, FX_IN);
        for (int c = 0; c < FX_IN; c++)
                msgpack_pack_float(&m.pk, c == 0 ? -INFINITY : (float)c);
        END();

        BEGIN("f64-over-f32", "bad_request", NULL);
        job_head(&m, fx, job, 1);
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, 1);
        msgpack_pack_array(&m.pk, FX_IN);
        for (int c = 0; c < FX_IN; c++)
                msgpack_pack_double(&m.pk, c == 3 ? 1e39 : c);
        END();

        BEGIN("ragged", "bad_request", "input row 1 has 3 values, row 0 has 8");
        job_head(&m, fx, job, 1);
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, 2);
        msgpack_pack_array(&m.pk, FX_IN);
        for (int c = 0; c < FX_IN; c++)
                msgpack_pack_int(&m.pk, c);
        msgpack_pack_array(&m.pk, 3);
        for (int c = 0; c < 3; c++)
                msgpack_pack_int(&m.pk, c);
        END();

        BEGIN("no-rows", "bad_request", NULL);
        job_head(&m, fx, job, 1);
        fx_msg_str(&m, "input");
        msgpack_pack_array(&m.pk, 0);
        END();

        /* 10^9 rows declared in the f32 form: refused before allocating. */
        BEGIN("rows-1e9", "too_large", NULL);
        job_head(&m, fx, job, 1);
        kv_input_f32(&m, 1000000000ULL, FX_IN, row, FX_IN);
        END();

        BEGIN("short-data", "bad_request", NULL);
        job_head(&m, fx, job, 1);
        kv_input_f32(&m, 2, FX_IN, row, 3);
        END();

        /* A non-string key after the id and user: the address is readable. */
        BEGIN("int-key", "bad_request", "must be a string");
        job_head(&m, fx, job, 2);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        msgpack_pack_int(&m.pk, 42);
        msgpack_pack_int(&m.pk, 43);
        END();

        /* The model is readable, so the error is counted for it. */
        BEGIN("model-unknown", "unknown_model", NULL);
        job->model = "nosuch";
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", job->id);
        kv_str(&m, "user", fx_user(fx, job->user));
        kv_str(&m, "model", "nosuch");
        kv_str(&m, "inbox", FX_INBOX);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        END();

        BEGIN("version-7", "unknown_model", NULL);
        job_head(&m, fx, job, 2);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        kv_uint(&m, "version", 7);
        END();

        BEGIN("five-cols", "shape_mismatch", NULL);
        job_head(&m, fx, job, 1);
        kv_input_f32(&m, 1, 5, row, 5);
        END();

        BEGIN("expired", "expired", NULL);
        job_head(&m, fx, job, 2);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        kv_uint(&m, "deadline", 1); /* 1970 */
        END();
#undef BEGIN
#undef END
        return k;
}

/* Messages without an address (no readable id or user): copied to the DLQ,
 * with a kinfer.reason containing `reason` (fx_job_t.want_message). */
static void dlq_msg(fx_t *fx, int *k, const char *code, const char *reason, const void *bytes,
                    size_t n)
{
        fx_job_t *job = fx_add_dlq(fx, k, code, bytes, n);
        job->want_message = reason;
}

static void dlq_msg_take(fx_t *fx, int *k, const char *code, const char *reason, fx_msg_t *m)
{
        dlq_msg(fx, k, code, reason, m->sb.data, m->sb.size);
        msgpack_sbuffer_destroy(&m->sb);
}

#define NOT_MSGPACK "^not valid msgpack"
#define BAD_ID      "^field 'id' must be a string of 1..128 chars"
#define BAD_USER    "^field 'user' must be a string of 1..64 chars"

/* A v2 job with a valid id but a user packed by `user` (NULL: no user key):
 * no address, so no result is possible. */
static void dlq_userless(fx_t *fx, int *k, const char *reason, void (*user)(fx_msg_t *))
{
        float row[FX_IN] = {1, 2, 3, 4, 5, 6, 7, 8};
        char id[64];
        fx_msg_t m;

        snprintf(id, sizeof(id), "%s-userless-%d", fx->tag, *k);
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, user ? 6 : 5);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", id);
        if (user)
                user(&m);
        kv_str(&m, "model", "mlp");
        kv_str(&m, "inbox", FX_INBOX);
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        dlq_msg_take(fx, k, "bad_request", reason, &m);
}

static void user_int(fx_msg_t *m)
{
        fx_msg_str(m, "user");
        msgpack_pack_int(&m->pk, 7);
}

static void user_nil(fx_msg_t *m)
{
        fx_msg_str(m, "user");
        msgpack_pack_nil(&m->pk);
}

static void user_chars(fx_msg_t *m)
{
        kv_str(m, "user", "alice{bob}"); /* braces would break the key's hash tag */
}

static void user_long(fx_msg_t *m)
{
        char u[66];
        memset(u, 'u', 65);
        u[65] = '\0';
        kv_str(m, "user", u); /* 65 chars */
}

static void user_empty(fx_msg_t *m)
{
        kv_str(m, "user", "");
}

static int add_dlq_messages(fx_t *fx)
{
        static const unsigned char never_used[] = {0xc1};
        static const unsigned char array32[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02};
        static const unsigned char map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 0x02};
        static const unsigned char str32_id[] = {0x81, 0xa2, 'i',  'd', 0xdb, 0xff,
                                                 0xff, 0xff, 0xff, 'a', 'b',  'c'};
        static const unsigned char bin32_data[] = {0x82, 0xa2, 'i',  'd',  0xa3, 'x', 'y',
                                                   'z',  0xa5, 'i',  'n',  'p',  'u', 't',
                                                   0xc6, 0xff, 0xff, 0xff, 0xff, 0x00};
        static const char not_msgpack[] = "{\"v\":2,\"id\":\"json-is-not-msgpack\"}";
        float row[FX_IN] = {1, 2, 3, 4, 5, 6, 7, 8};
        char long_id[140], *big;
        fx_job_t *job;
        fx_msg_t m;
        int k = 0;

        dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, never_used, sizeof(never_used));
        dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, array32, sizeof(array32));
        dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, map32, sizeof(map32));
        dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, str32_id, sizeof(str32_id));
        dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, bin32_data, sizeof(bin32_data));
        dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, not_msgpack, strlen(not_msgpack));
        dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, "", 0); /* an empty value */
        job = fx_add_raw(fx);                               /* no value at all (a tombstone) */
        job->dlq = 1;
        job->want_error = "bad_request";
        job->want_message = NOT_MSGPACK;
        job->null_value = 1;
        snprintf(job->key, sizeof(job->key), "%s-dlq-key-%d", fx->tag, k++);

        /* A good job cut in half. */
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 5);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", "poison-truncated");
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "model", "mlp");
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        m.sb.size /= 2;
        dlq_msg_take(fx, &k, "bad_request", NOT_MSGPACK, &m);

        /* Nested deeper than any job may be. */
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 2);
        kv_str(&m, "id", "poison-deep");
        fx_msg_str(&m, "x");
        for (int d = 0; d < 40; d++)
                msgpack_pack_array(&m.pk, 1);
        msgpack_pack_nil(&m.pk);
        dlq_msg_take(fx, &k, "bad_request", NOT_MSGPACK, &m);

        /* Valid msgpack, but no usable id. */
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 4);
        kv_uint(&m, "v", 2);
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "model", "mlp");
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        dlq_msg_take(fx, &k, "bad_request", "^missing required field 'id'", &m);

        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 5);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", "spaces and ! are not id chars");
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "model", "mlp");
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        dlq_msg_take(fx, &k, "bad_request", BAD_ID, &m);

        memset(long_id, 'a', 129);
        long_id[129] = '\0';
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 5);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", long_id);
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "model", "mlp");
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        dlq_msg_take(fx, &k, "bad_request", BAD_ID, &m); /* 129 chars */

        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 5);
        kv_uint(&m, "v", 2);
        fx_msg_str(&m, "id");
        msgpack_pack_uint64(&m.pk, 12345);
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "model", "mlp");
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        dlq_msg_take(fx, &k, "bad_request", BAD_ID, &m); /* id is a number */

        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", "poison-dup-a");
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "id", "poison-dup-b");
        kv_str(&m, "model", "mlp");
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        dlq_msg_take(fx, &k, "bad_request", "^duplicate key \"id\"", &m); /* id given twice */

        fx_msg_init(&m);
        msgpack_pack_array(&m.pk, 3);
        msgpack_pack_int(&m.pk, 1);
        fx_msg_str(&m, "id");
        fx_msg_str(&m, "poison-array");
        dlq_msg_take(fx, &k, "bad_request", "^job must be a msgpack map", &m); /* not a map */

        /* A readable id but no readable user: no address either (v2). */
        dlq_userless(fx, &k, "^missing required field 'user'", NULL);
        dlq_userless(fx, &k, BAD_USER, user_int);
        dlq_userless(fx, &k, BAD_USER, user_nil);
        dlq_userless(fx, &k, BAD_USER, user_chars);
        dlq_userless(fx, &k, BAD_USER, user_long);
        dlq_userless(fx, &k, BAD_USER, user_empty);
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", "poison-user-twice");
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "model", "mlp");
        kv_str(&m, "user", fx_user(fx, 1));
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        dlq_msg_take(fx, &k, "bad_request", "^duplicate key \"user\"", &m); /* user given twice */

        /* Over --max-message-bytes: refused before decoding, so even a
         * readable id and user do not count. */
        fx_msg_init(&m);
        msgpack_pack_map(&m.pk, 6);
        kv_uint(&m, "v", 2);
        kv_str(&m, "id", "poison-oversize");
        kv_str(&m, "user", fx_user(fx, 0));
        kv_str(&m, "model", "mlp");
        kv_input_f32(&m, 1, FX_IN, row, FX_IN);
        big = malloc(3 * MAX_BYTES);
        assert_non_null(big);
        memset(big, 'p', 3 * MAX_BYTES - 1);
        big[3 * MAX_BYTES - 1] = '\0';
        kv_str(&m, "padding", big);
        dlq_msg_take(fx, &k, "too_large", "limit max_message_bytes is 2048", &m);
        memset(big, 0xff, 2 * MAX_BYTES);
        dlq_msg(fx, &k, "too_large", "limit max_message_bytes is 2048", big, 2 * MAX_BYTES);
        free(big);
        return k;
}

/* ---- the case --------------------------------------------------------- */

/* Poison interleaved with good jobs on every partition, two workers. */
static void test_poison_mixed_into_good_traffic(void **state)
{
        fx_t *fx = *state;
        const char *limit[] = {"--max-message-bytes", "2048", NULL};
        const char *const names[] = {"poison-w1", "poison-w2"};
        int w[2], n_err, n_dlq, n_good;
        int i = 0;

        fx_setup(fx, "poison", 1, 4, 4, NULL);
        /* Good jobs first in each stretch, then a poison message, so every
         * bad one sits between good ones on its partition. */
        fx_add_good(fx, 100);
        n_err = add_error_jobs(fx);
        fx_add_good(fx, 100);
        n_dlq = add_dlq_messages(fx);
        fx_add_good(fx, 100);
        for (int k = 0; k < 4; k++)
                add_good_variants(fx, k);
        fx_add_good(fx, 100);
        n_good = fx->n_jobs - n_err - n_dlq;
        print_message("%d good jobs, %d with an address (id and user) but bad, %d without "
                      "one\n",
                      n_good, n_err, n_dlq);
        /* Interleave: shuffle deterministically so poison is spread out. */
        for (i = fx->n_jobs - 1; i > 0; i--) {
                int j = (int)((unsigned)(i * 2654435761u) % (unsigned)(i + 1));
                fx_job_t tmp = fx->jobs[i];
                fx->jobs[i] = fx->jobs[j];
                fx->jobs[j] = tmp;
        }

        w[0] = fx_worker(fx, names[0], limit);
        w[1] = fx_worker(fx, names[1], limit);
        fx_stream_start(fx, 0, fx->n_jobs, 200);
        fx_stream_join(fx);
        fx_wait_all(fx, WAIT_MS);
        fx_check(fx);
        fx_check_dlq(fx, n_dlq, names, 2, 0);
        fx_finish(fx, w, 2);
}

/* Waits until kinfer:stats undecodable reaches n: that many DLQ copies were
 * acknowledged (the worker counts them after the broker's ack). */
static void wait_undecodable(fx_t *fx, long long n)
{
        long long deadline = kt_now_ms() + WAIT_MS;
        while (fx_undecodable(fx) < n) {
                if (kt_now_ms() > deadline) {
                        kt_stack_fail(&fx->stack);
                        fail_msg("kinfer:stats undecodable stayed below %lld", n);
                }
                fx_sleep_ms(50);
        }
}

/* Id-less messages (every tenth message) in a stream while the worker is
 * SIGKILLed twice: the DLQ copy is acknowledged before the source offset is
 * stored, so each message is on the DLQ at least once, however the crashes
 * fall; redelivery may copy one twice. */
static void test_dlq_across_sigkill(void **state)
{
        fx_t *fx = *state;
        const char *const names[] = {"dlqkill-w1", "dlqkill-w2", "dlqkill-w3"};
        static const unsigned char never_used[] = {0xc1};
        int w, n_dlq = 0, k = 0;

        fx_setup(fx, "dlqkill", 1, 4, 4, NULL);
        fx->redelivered_dlq = 1;
        for (int i = 0; i < 12000; i++) {
                if (i % 10 == 9) {
                        fx_msg_t m;
                        switch (k % 3) {
                        case 0:
                                dlq_msg(fx, &k, "bad_request", NOT_MSGPACK, never_used,
                                        sizeof(never_used));
                                break;
                        case 1: /* no id */
                                fx_msg_init(&m);
                                msgpack_pack_map(&m.pk, 2);
                                kv_uint(&m, "v", 2);
                                kv_str(&m, "user", fx_user(fx, 0));
                                dlq_msg_take(fx, &k, "bad_request", "^missing required field 'id'",
                                             &m);
                                break;
                        default: /* over the size limit */
                                fx_msg_init(&m);
                                for (int b = 0; b < 300; b++)
                                        msgpack_pack_uint64(&m.pk, UINT64_MAX);
                                dlq_msg_take(fx, &k, "too_large", "limit max_message_bytes is 2048",
                                             &m);
                                break;
                        }
                } else {
                        fx_add_good(fx, 1);
                }
        }
        fx_stream_start(fx, 0, fx->n_jobs, 150);

        w = fx_worker(fx, names[0], (const char *[]){"--max-message-bytes", "2048", NULL});
        wait_undecodable(fx, 5);
        assert_int_equal(kt_stack_kill(&fx->stack, w, SIGKILL, 5000), 128 + SIGKILL);
        print_message("kill 1: %lld copies acknowledged, %d messages produced\n",
                      fx_undecodable(fx), fx_produced(fx));
        w = fx_worker(fx, names[1], (const char *[]){"--max-message-bytes", "2048", NULL});
        wait_undecodable(fx, fx_undecodable(fx) + 30);
        assert_int_equal(kt_stack_kill(&fx->stack, w, SIGKILL, 5000), 128 + SIGKILL);
        print_message("kill 2: %lld copies acknowledged, %d messages produced\n",
                      fx_undecodable(fx), fx_produced(fx));
        w = fx_worker(fx, names[2], (const char *[]){"--max-message-bytes", "2048", NULL});
        fx_wait_results(fx, fx->n_jobs, fx_count_results(fx, fx_produced(fx)) + 300, WAIT_MS);
        fx_stream_stop(fx);
        for (int i = 0; i < fx->n_jobs; i++)
                n_dlq += fx->jobs[i].dlq;
        fx_wait_all(fx, WAIT_MS);
        wait_undecodable(fx, n_dlq);
        fx_check(fx);
        fx_check_dlq(fx, n_dlq, names, 3, 1);
        fx_finish(fx, &w, 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_poison_mixed_into_good_traffic, fx_state_setup,
                                            fx_state_teardown),
            cmocka_unit_test_setup_teardown(test_dlq_across_sigkill, fx_state_setup,
                                            fx_state_teardown),
        };
        return fx_run(tests);
}
