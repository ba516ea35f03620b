/* test_chain.c - worker/chain.c: a result message (msgpack packed here by
 * hand from docs/protocol.md, "Result") mapped to the next stage's job, read
 * back with job_decode: output becomes input, the user stays, the id gains
 * ":MODEL"; an error result, a foreign message and an id that would grow
 * past 128 characters are refused as the header says. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/chain.h"
#include "job.h"

static void s(msgpack_packer *pk, const char *str)
{
        msgpack_pack_str(pk, strlen(str));
        msgpack_pack_str_body(pk, str, strlen(str));
}

/* A v2 result of user alice: ok with a 2x3 output, or an error. */
static void result(msgpack_sbuffer *sb, const char *id, int ok)
{
        msgpack_packer pk;
        const float out[6] = {1.5f, -2.0f, 0.25f, 3.0f, 4.0f, -0.5f};
        unsigned char le[24];
        msgpack_sbuffer_init(sb);
        msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, ok ? 14 : 12);
        s(&pk, "v");
        msgpack_pack_uint32(&pk, 2);
        s(&pk, "status");
        s(&pk, ok ? "ok" : "error");
        s(&pk, "id");
        s(&pk, id);
        s(&pk, "user");
        s(&pk, "alice");
        s(&pk, "model");
        s(&pk, "embed");
        s(&pk, "worker");
        s(&pk, "w1");
        s(&pk, "source");
        s(&pk, "kinfer.jobs/0/7");
        s(&pk, "enqueued");
        msgpack_pack_uint64(&pk, 1700000000000ULL);
        s(&pk, "started");
        msgpack_pack_uint64(&pk, 1700000000001ULL);
        s(&pk, "done");
        msgpack_pack_uint64(&pk, 1700000000002ULL);
        if (ok) {
                s(&pk, "version");
                msgpack_pack_uint32(&pk, 3);
                s(&pk, "shape");
                msgpack_pack_array(&pk, 2);
                msgpack_pack_uint32(&pk, 2);
                msgpack_pack_uint32(&pk, 3);
                s(&pk, "output");
                for (int i = 0; i < 6; i++) { /* little-endian float32, by hand */
                        uint32_t u;
                        memcpy(&u, &out[i], 4);
                        for (int k = 0; k < 4; k++)
                                le[i * 4 + k] = (unsigned char)(u >> (8 * k));
                }
                msgpack_pack_bin(&pk, sizeof(le));
                msgpack_pack_bin_body(&pk, le, sizeof(le));
                s(&pk, "window");
                msgpack_pack_uint32(&pk, 1699999200);
        } else {
                s(&pk, "error");
                s(&pk, "shape_mismatch");
                s(&pk, "message");
                s(&pk, "input has 5 columns");
        }
}

static void test_ok_result_becomes_job(void **state)
{
        msgpack_sbuffer sb;
        char *job_bytes, why[256], err[256];
        size_t len;
        job_t job = {0};
        (void)state;
        result(&sb, "a-1", 1);
        assert_int_equal(kw_chain_map(sb.data, sb.size, "cls", &job_bytes, &len, why, sizeof(why)),
                         0);
        assert_int_equal(job_decode(job_bytes, len, NULL, &job, err, sizeof(err)), KF_OK);
        assert_string_equal(job.id, "a-1:cls");
        assert_string_equal(job.user, "alice");
        assert_string_equal(job.model, "cls");
        assert_int_equal(job.rows, 2);
        assert_int_equal(job.cols, 3);
        assert_true(job.input[0] == 1.5f && job.input[1] == -2.0f && job.input[5] == -0.5f);
        assert_int_equal(job.stream_only, 0);
        job_clear(&job);
        free(job_bytes);
        msgpack_sbuffer_destroy(&sb);
}

static void test_error_result_stays_an_error(void **state)
{
        msgpack_sbuffer sb;
        char *job_bytes, why[256];
        size_t len;
        (void)state;
        result(&sb, "a-2", 0);
        assert_int_equal(kw_chain_map(sb.data, sb.size, "cls", &job_bytes, &len, why, sizeof(why)),
                         1);
        assert_non_null(job_bytes); /* addressed: a-2:cls gets the error result */
        assert_non_null(strstr(why, "a-2"));
        assert_non_null(strstr(why, "shape_mismatch: input has 5 columns"));
        free(job_bytes);
        msgpack_sbuffer_destroy(&sb);
}

static void test_no_address(void **state)
{
        msgpack_sbuffer sb;
        char *job_bytes = (char *)"x", why[256], id[130];
        size_t len;
        (void)state;
        /* not a result at all */
        assert_int_equal(kw_chain_map("\xc1", 1, "cls", &job_bytes, &len, why, sizeof(why)), -1);
        assert_null(job_bytes);
        assert_non_null(strstr(why, "not a kinfer result message"));
        assert_int_equal(kw_chain_map(NULL, 0, "cls", &job_bytes, &len, why, sizeof(why)), -1);
        /* an id that would be 129 characters once ":cls" is added */
        memset(id, 'i', 125);
        id[125] = '\0';
        result(&sb, id, 1);
        assert_int_equal(kw_chain_map(sb.data, sb.size, "cls", &job_bytes, &len, why, sizeof(why)),
                         -1);
        assert_null(job_bytes);
        assert_non_null(strstr(why, "over 128 characters"));
        msgpack_sbuffer_destroy(&sb);
        /* 124 + 4 = 128: fits */
        id[124] = '\0';
        result(&sb, id, 1);
        assert_int_equal(kw_chain_map(sb.data, sb.size, "cls", &job_bytes, &len, why, sizeof(why)),
                         0);
        free(job_bytes);
        msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_ok_result_becomes_job),
            cmocka_unit_test(test_error_result_stays_an_error),
            cmocka_unit_test(test_no_address),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
