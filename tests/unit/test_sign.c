/* test_sign.c - signature arithmetic (common/kf_sign.c) against references
 * computed elsewhere: RFC 8032's Ed25519 test vector 1, and an HMAC-SHA256
 * computed with Python's stdlib hmac; hex, key ids; and the client's key
 * file reader (producer-tool/signer.c) on good and hostile files. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../producer-tool/signer.h"
#include "kf_sign.h"

/* RFC 8032, 7.1, TEST 1: seed, public key, signature of the empty message. */
static const char rfc_seed[] = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
static const char rfc_pub[] = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
static const char rfc_sig[] =
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf"
    "9b46bd25bf5f0595bbe24655141438e7a100b";
/* python3: hmac.new(bytes(range(32)), b'kinfer signed job', hashlib.sha256).hexdigest() */
static const char hmac_ref[] = "e0082cb8eae1078c9ed432270141bf352d61d13bd9fd6c9a6f684ce6aded284f";

static void unhex(const char *s, unsigned char *out, size_t n)
{
        assert_int_equal(kf_hex_decode(s, strlen(s), out, n), 0);
}

static void test_ed25519_rfc8032(void **state)
{
        unsigned char seed[32], pub[32], sig[64], ref[64];
        char hex[129], err[128];
        kf_verify_key_t k;
        (void)state;
        unhex(rfc_seed, seed, 32);
        unhex(rfc_pub, pub, 32);
        unhex(rfc_sig, ref, 64);
        assert_int_equal(kf_sign(KF_SIGN_ED25519, seed, "", 0, sig, err, sizeof(err)), 0);
        kf_hex_encode(sig, 64, hex);
        assert_string_equal(hex, rfc_sig);
        assert_int_equal(kf_verify_key_init(&k, KF_SIGN_ED25519, pub, err, sizeof(err)), 0);
        assert_int_equal(kf_verify(&k, "", 0, ref, 64), 1);
        ref[10] ^= 1;
        assert_int_equal(kf_verify(&k, "", 0, ref, 64), 0);
        ref[10] ^= 1;
        assert_int_equal(kf_verify(&k, "x", 1, ref, 64), 0);
        assert_int_equal(kf_verify(&k, "", 0, ref, 63), 0);
        kf_verify_key_clear(&k);
}

static void test_hmac_reference(void **state)
{
        unsigned char key[32], sig[64], ref[32];
        const char *msg = "kinfer signed job";
        char hex[65], err[128];
        kf_verify_key_t k;
        (void)state;
        for (int i = 0; i < 32; i++)
                key[i] = (unsigned char)i;
        assert_int_equal(kf_sign(KF_SIGN_HMAC, key, msg, strlen(msg), sig, err, sizeof(err)), 0);
        kf_hex_encode(sig, 32, hex);
        assert_string_equal(hex, hmac_ref);
        unhex(hmac_ref, ref, 32);
        assert_int_equal(kf_verify_key_init(&k, KF_SIGN_HMAC, key, err, sizeof(err)), 0);
        assert_int_equal(kf_verify(&k, msg, strlen(msg), ref, 32), 1);
        ref[31] ^= 0x80;
        assert_int_equal(kf_verify(&k, msg, strlen(msg), ref, 32), 0);
        ref[31] ^= 0x80;
        assert_int_equal(kf_verify(&k, msg, strlen(msg) - 1, ref, 32), 0);
        assert_int_equal(kf_verify(&k, msg, strlen(msg), ref, 31), 0);
        kf_verify_key_clear(&k);
}

static void test_keygen_round_trip(void **state)
{
        char kid[KF_SIGN_KID_LEN + 1], err[128];
        unsigned char secret[32], pub[32], sig[64];
        kf_verify_key_t k;
        (void)state;
        for (int alg = KF_SIGN_HMAC; alg <= KF_SIGN_ED25519; alg++) {
                assert_int_equal(kf_sign_keygen(alg, kid, secret, pub, err, sizeof(err)), 0);
                assert_true(kf_sign_kid_valid(kid, strlen(kid)));
                assert_int_equal(kf_sign(alg, secret, "abc", 3, sig, err, sizeof(err)), 0);
                assert_int_equal(kf_verify_key_init(&k, alg, pub, err, sizeof(err)), 0);
                assert_int_equal(kf_verify(&k, "abc", 3, sig, kf_sign_sig_len(alg)), 1);
                kf_verify_key_clear(&k);
        }
        assert_int_not_equal(kf_sign_keygen(KF_SIGN_NONE, kid, secret, pub, err, sizeof(err)), 0);
}

static void test_names_hex_kids(void **state)
{
        unsigned char b[2];
        (void)state;
        assert_int_equal(kf_sign_alg_parse("hmac-sha256", 11), KF_SIGN_HMAC);
        assert_int_equal(kf_sign_alg_parse("ed25519", 7), KF_SIGN_ED25519);
        assert_int_equal(kf_sign_alg_parse("ed25519 ", 8), KF_SIGN_NONE);
        assert_int_equal(kf_sign_alg_parse("HMAC-SHA256", 11), KF_SIGN_NONE);
        assert_int_equal(kf_sign_alg_parse("hmac", 4), KF_SIGN_NONE);
        assert_int_equal(kf_hex_decode("0aFf", 4, b, 2), 0);
        assert_int_equal(b[0], 0x0a);
        assert_int_equal(b[1], 0xff);
        assert_int_equal(kf_hex_decode("0aF", 3, b, 2), -1);
        assert_int_equal(kf_hex_decode("0aFg", 4, b, 2), -1);
        assert_int_equal(kf_hex_decode("0a", 2, b, 2), -1);
        assert_true(kf_sign_kid_valid("k0123456789abcdef", 17));
        assert_false(kf_sign_kid_valid("k0123456789ABCDEF", 17));
        assert_false(kf_sign_kid_valid("k0123456789abcde", 16));
        assert_false(kf_sign_kid_valid("x0123456789abcdef", 17));
        assert_false(kf_sign_kid_valid("k0123456789abcd:f", 17));
}

static void test_keyfile(void **state)
{
        kc_signer_t s;
        char err[256];
        const char *good = "{\"user\": \"alice\", \"key_id\": \"k0123456789abcdef\", \"alg\": "
                           "\"ed25519\", \"secret\": \"9d61b19deffd5a60ba844af492ec2cc44449c5697b"
                           "326919703bac031cae7f60\"}";
        const char *bad[] = {
            "",
            "[]",
            "{\"user\": \"al{ice}\", \"key_id\": \"k0123456789abcdef\", \"alg\": \"ed25519\", "
            "\"secret\": \"" /* brace in the user */
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\"}",
            "{\"user\": \"alice\", \"key_id\": \"k0123\", \"alg\": \"ed25519\", \"secret\": "
            "\"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\"}",
            "{\"user\": \"alice\", \"key_id\": \"k0123456789abcdef\", \"alg\": \"rsa\", "
            "\"secret\": \"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\"}",
            "{\"user\": \"alice\", \"key_id\": \"k0123456789abcdef\", \"alg\": \"ed25519\", "
            "\"secret\": \"9d61\"}",
            "{\"user\": \"alice\", \"user\": \"bob\", \"key_id\": \"k0123456789abcdef\", \"alg\": "
            "\"ed25519\", \"secret\": "
            "\"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\"}",
        };
        (void)state;
        assert_int_equal(kc_signer_parse(good, strlen(good), &s, err, sizeof(err)), 0);
        assert_string_equal(s.user, "alice");
        assert_string_equal(s.kid, "k0123456789abcdef");
        assert_int_equal(s.alg, KF_SIGN_ED25519);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = '\0';
                assert_int_equal(kc_signer_parse(bad[i], strlen(bad[i]), &s, err, sizeof(err)), -1);
                assert_true(err[0] != '\0');
                assert_null(strstr(err, "9d61b19d")); /* the secret is never quoted */
        }
}

/* KINFER_SIGN_BENCH=N: the cost of one verification of a 1 KiB and a 64 KiB
 * value, N times each algorithm (docs/security.md quotes it); off by default. */
static void bench(long n)
{
        static unsigned char msg[65536];
        unsigned char secret[32], pub[32], sig[64];
        char kid[KF_SIGN_KID_LEN + 1], err[128];
        size_t lens[] = {1024, sizeof(msg)};
        for (int alg = KF_SIGN_HMAC; alg <= KF_SIGN_ED25519; alg++)
                for (size_t l = 0; l < 2; l++) {
                        kf_verify_key_t k;
                        struct timespec t0, t1;
                        int ok = 1;
                        kf_sign_keygen(alg, kid, secret, pub, err, sizeof(err));
                        kf_sign(alg, secret, msg, lens[l], sig, err, sizeof(err));
                        kf_verify_key_init(&k, alg, pub, err, sizeof(err));
                        clock_gettime(CLOCK_MONOTONIC, &t0);
                        for (long i = 0; i < n; i++)
                                ok &= kf_verify(&k, msg, lens[l], sig, kf_sign_sig_len(alg));
                        clock_gettime(CLOCK_MONOTONIC, &t1);
                        printf("verify %-11s %6zu bytes: %8.2f us (%s)\n", kf_sign_alg_name(alg),
                               lens[l],
                               ((double)(t1.tv_sec - t0.tv_sec) * 1e9 +
                                (double)(t1.tv_nsec - t0.tv_nsec)) /
                                   1e3 / (double)n,
                               ok ? "ok" : "FAILED");
                        kf_verify_key_clear(&k);
                }
}

int main(void)
{
        if (getenv("KINFER_SIGN_BENCH")) {
                bench(atol(getenv("KINFER_SIGN_BENCH")) > 0 ? atol(getenv("KINFER_SIGN_BENCH"))
                                                            : 10000);
                return 0;
        }
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_ed25519_rfc8032),   cmocka_unit_test(test_hmac_reference),
            cmocka_unit_test(test_keygen_round_trip), cmocka_unit_test(test_names_hex_kids),
            cmocka_unit_test(test_keyfile),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
