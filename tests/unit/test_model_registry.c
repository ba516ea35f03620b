/* test_model_registry.c - what the registry client decides without a
 * server: key names, SHA-256, the metadata hash parser, and the refusal of
 * corrupt, truncated or misnamed blobs before anything is loaded. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "model.h"
#include "model_registry.h"

static void test_keys(void **state)
{
        char k[KF_KEY_MAX];
        (void)state;

        assert_int_equal(mreg_key_blob(k, "kinfer:", "mlp", 3), 18);
        assert_string_equal(k, "kinfer:model:mlp:3");
        mreg_key_blob(k, "kinfer:", "a:1", 2);
        assert_string_equal(k, "kinfer:model:a:1:2"); /* the version is the last field */
        mreg_key_meta(k, "p/", "a:1");
        assert_string_equal(k, "p/model-meta:a:1"); /* never a blob key */
        mreg_key_names(k, "kinfer:");
        assert_string_equal(k, "kinfer:model-names");
        mreg_channel(k, "kinfer:");
        assert_string_equal(k, "kinfer:models");
}

static void test_sha256(void **state)
{
        char hex[MREG_SHA256_HEX];
        (void)state;

        /* FIPS 180-2 test vectors */
        mreg_sha256_hex("abc", 3, hex);
        assert_string_equal(hex,
                            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        mreg_sha256_hex("", 0, hex);
        assert_string_equal(hex,
                            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        mreg_sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
        assert_string_equal(hex,
                            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* HGETALL-style pairs from a NULL-terminated list of C strings. */
static int parse(mreg_meta_t *m, const char *const *kv, char *err, size_t errsize)
{
        size_t n = 0, lens[64];
        while (kv[n])
                n++;
        for (size_t i = 0; i < n; i++)
                lens[i] = strlen(kv[i]);
        return mreg_meta_parse(m, "mlp", n, kv, lens, err, errsize);
}

#define SHA_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SHA_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static void test_meta_parse(void **state)
{
        const char *const kv[] = {"5:sha256",
                                  SHA_B,
                                  "active",
                                  "5",
                                  "2:size",
                                  "1234",
                                  "future",
                                  "ignored",
                                  "2:sha256",
                                  SHA_A,
                                  "2:kind",
                                  "mlp",
                                  "5:kind",
                                  "ensemble",
                                  "5:members",
                                  "[{\"model\":\"a\",\"version\":0,\"weight\":1}]",
                                  "5:size",
                                  "99",
                                  "2:input_dim",
                                  "8",
                                  "2:output_dim",
                                  "4",
                                  "2:layers",
                                  "3",
                                  "2:created",
                                  "1795419200519",
                                  "next",
                                  "7",
                                  "seq",
                                  "12",
                                  "history",
                                  "1,2",
                                  "3:size",
                                  "7", /* no sha256: not a version */
                                  "2:unknown",
                                  "x",
                                  NULL};
        char err[256], list[64];
        mreg_meta_t m;
        const mreg_version_t *v;
        (void)state;

        assert_int_equal(parse(&m, kv, err, sizeof(err)), 0);
        assert_string_equal(m.name, "mlp");
        assert_int_equal(m.active, 5);
        assert_int_equal(m.next, 7);
        assert_int_equal(m.seq, 12);
        assert_int_equal(m.n_history, 2);
        assert_int_equal(m.history[0], 1);
        assert_int_equal(m.history[1], 2);
        assert_int_equal(m.n_versions, 2);
        assert_int_equal(m.versions[0].version, 2); /* ascending */
        assert_int_equal(m.versions[1].version, 5);
        v = mreg_meta_version(&m, 2);
        assert_non_null(v);
        assert_int_equal(v->size, 1234);
        assert_string_equal(v->sha256, SHA_A);
        assert_int_equal(v->kind, MODEL_KIND_MLP);
        assert_int_equal(v->input_dim, 8);
        assert_int_equal(v->output_dim, 4);
        assert_int_equal(v->layers, 3);
        assert_int_equal(v->created_ms, 1795419200519LL);
        assert_null(v->members);
        v = mreg_meta_version(&m, 5);
        assert_int_equal(v->kind, MODEL_KIND_ENSEMBLE);
        assert_string_equal(v->members, "[{\"model\":\"a\",\"version\":0,\"weight\":1}]");
        assert_null(mreg_meta_version(&m, 3));
        mreg_meta_versions_str(&m, list, sizeof(list));
        assert_string_equal(list, "2, 5");
        mreg_meta_free(&m);
        mreg_meta_free(&m); /* twice is harmless */
        mreg_meta_versions_str(&m, list, sizeof(list));
        assert_string_equal(list, "none");
}

static void test_meta_malformed(void **state)
{
        static const struct {
                const char *kv[5];
                const char *want;
        } cases[] = {
            {{"active", "two", NULL}, "field active = 'two' is malformed"},
            {{"next", "-1", NULL}, "field next = '-1' is malformed"},
            {{"active", "4294967296", NULL}, "field active = '4294967296' is malformed"},
            {{"history", "1,,2", NULL}, "field history = '1,,2' is malformed"},
            {{"1:sha256", "abc", NULL}, "version 1: sha256 has 3 chars, not 64"},
            {{"1:kind", "cnn", NULL}, "version 1: unknown kind 'cnn'"},
            {{"1:size", "12k", NULL}, "version 1: size is not a number"},
            {{"1:input_dim", "5000000000", NULL}, "version 1: input_dim too large"},
        };
        (void)state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char err[256] = "";
                mreg_meta_t m;
                if (parse(&m, cases[i].kv, err, sizeof(err)) != -1 || !strstr(err, cases[i].want))
                        fail_msg("case %zu: want \"%s\", got \"%s\"", i, cases[i].want, err);
                assert_int_equal(m.n_versions, 0); /* freed on error */
        }
}

/* A small valid MLP file, through kinfer's encoder. */
static char *good_blob(const char *name, size_t *len)
{
        const uint32_t dims[] = {3, 4, 2};
        const model_act_t acts[] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY};
        char err[256], *buf;
        model_t *m = model_new_mlp(name, 2, dims, acts, err, sizeof(err));
        assert_non_null(m);
        for (uint32_t i = 0; i < 12; i++)
                m->layers[0].W[i] = (float)i / 10.0f;
        assert_int_equal(model_encode(m, &buf, len, err, sizeof(err)), 0);
        model_unref(m);
        return buf;
}

static void test_blob_verify(void **state)
{
        size_t len;
        char *blob = good_blob("mlp", &len), err[256];
        mreg_version_t v = {.version = 1};
        (void)state;

        v.size = len;
        mreg_sha256_hex(blob, len, v.sha256);
        assert_int_equal(mreg_blob_verify(blob, len, &v, err, sizeof(err)), 0);

        /* Every truncation is caught by its size, before the hash. */
        for (size_t n = 0; n < len; n++) {
                err[0] = '\0';
                assert_int_equal(mreg_blob_verify(blob, n, &v, err, sizeof(err)), -1);
                assert_non_null(strstr(err, ": truncated"));
        }
        /* Every flipped byte is caught by the hash. */
        for (size_t i = 0; i < len; i++) {
                blob[i] ^= 0x20;
                err[0] = '\0';
                assert_int_equal(mreg_blob_verify(blob, len, &v, err, sizeof(err)), -1);
                assert_non_null(strstr(err, "corrupt"));
                blob[i] ^= 0x20;
        }
        v.size = len - 1; /* longer than the registry says */
        assert_int_equal(mreg_blob_verify(blob, len, &v, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "registry says"));
        assert_null(strstr(err, "truncated"));
        free(blob);
}

/* What verification cannot see (a blob stored with its own checksum) is
 * still refused by decoding, with the reason, never loaded. */
static void test_blob_decode(void **state)
{
        size_t len;
        char *blob = good_blob("mlp", &len), err[256];
        model_file_t f;
        float nan = NAN;
        char *p;
        (void)state;

        assert_int_equal(mreg_blob_decode(blob, len, "mlp", &f, err, sizeof(err)), 0);
        assert_int_equal(f.kind, MODEL_KIND_MLP);
        assert_int_equal(f.mlp->input_dim, 3);
        model_file_clear(&f);

        assert_int_equal(mreg_blob_decode(blob, len, "other", &f, err, sizeof(err)), -1);
        assert_string_equal(err, "the file names its model 'mlp', not 'other'");

        for (size_t n = 0; n < len; n++) {
                err[0] = '\0';
                assert_int_equal(mreg_blob_decode(blob, n, "mlp", &f, err, sizeof(err)), -1);
                assert_true(err[0] != '\0');
        }
        /* A NaN weight in place of W[1] of layer 0 (0.1f). */
        {
                float w = 0.1f;
                p = memmem(blob, len, &w, sizeof(w));
                assert_non_null(p);
                memcpy(p, &nan, sizeof(nan));
                assert_int_equal(mreg_blob_decode(blob, len, "mlp", &f, err, sizeof(err)), -1);
                assert_string_equal(err, "layer 0: W[1] is NaN");
        }
        free(blob);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_keys),        cmocka_unit_test(test_sha256),
            cmocka_unit_test(test_meta_parse),  cmocka_unit_test(test_meta_malformed),
            cmocka_unit_test(test_blob_verify), cmocka_unit_test(test_blob_decode),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
