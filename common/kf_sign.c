/* kf_sign.c - signature arithmetic of signed jobs (see kf_sign.h): HMAC-SHA256
 * and Ed25519 with OpenSSL's libcrypto, key ids, hex. */
#include "kf_sign.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

#include "kf_util.h"

const char *kf_sign_alg_name(kf_sign_alg_t alg)
{
        return alg == KF_SIGN_HMAC ? "hmac-sha256" : alg == KF_SIGN_ED25519 ? "ed25519" : "";
}

kf_sign_alg_t kf_sign_alg_parse(const char *s, size_t len)
{
        if (len == 11 && !memcmp(s, "hmac-sha256", 11))
                return KF_SIGN_HMAC;
        if (len == 7 && !memcmp(s, "ed25519", 7))
                return KF_SIGN_ED25519;
        return KF_SIGN_NONE;
}

size_t kf_sign_sig_len(kf_sign_alg_t alg)
{
        return alg == KF_SIGN_HMAC ? 32 : alg == KF_SIGN_ED25519 ? 64 : 0;
}

static int hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int kf_sign_kid_valid(const char *s, size_t len)
{
        if (len != KF_SIGN_KID_LEN || s[0] != 'k')
                return 0;
        for (size_t i = 1; i < len; i++) /* lowercase only: one spelling per id */
                if (hexval(s[i]) < 0 || (s[i] >= 'A' && s[i] <= 'F'))
                        return 0;
        return 1;
}

void kf_hex_encode(const unsigned char *in, size_t n, char *out)
{
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[in[i] >> 4];
                out[2 * i + 1] = digits[in[i] & 15];
        }
        out[2 * n] = '\0';
}

int kf_hex_decode(const char *s, size_t len, unsigned char *out, size_t n)
{
        if (len != 2 * n)
                return -1;
        for (size_t i = 0; i < n; i++) {
                int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -1;
                out[i] = (unsigned char)(hi << 4 | lo);
        }
        return 0;
}

/* The Ed25519 public key of a 32-byte seed. */
static int ed25519_public(const unsigned char seed[KF_SIGN_KEY_LEN],
                          unsigned char pub[KF_SIGN_KEY_LEN])
{
        size_t plen = KF_SIGN_KEY_LEN;
        EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, KF_SIGN_KEY_LEN);
        int rc = pk && EVP_PKEY_get_raw_public_key(pk, pub, &plen) == 1 && plen == KF_SIGN_KEY_LEN
                     ? 0
                     : -1;
        EVP_PKEY_free(pk);
        return rc;
}

int kf_sign_keygen(kf_sign_alg_t alg, char kid[KF_SIGN_KID_LEN + 1],
                   unsigned char secret[KF_SIGN_KEY_LEN], unsigned char pub[KF_SIGN_KEY_LEN],
                   char *errstr, size_t errstr_size)
{
        unsigned char id[8];
        if (alg != KF_SIGN_HMAC && alg != KF_SIGN_ED25519)
                return kf_errf(errstr, errstr_size, "unknown signature algorithm");
        if (RAND_bytes(id, sizeof(id)) != 1 || RAND_bytes(secret, KF_SIGN_KEY_LEN) != 1)
                return kf_errf(errstr, errstr_size, "the system's random generator failed");
        kid[0] = 'k';
        kf_hex_encode(id, sizeof(id), kid + 1);
        if (alg == KF_SIGN_HMAC) {
                memcpy(pub, secret, KF_SIGN_KEY_LEN);
                return 0;
        }
        if (ed25519_public(secret, pub))
                return kf_errf(errstr, errstr_size, "cannot derive an Ed25519 public key");
        return 0;
}

int kf_sign(kf_sign_alg_t alg, const unsigned char secret[KF_SIGN_KEY_LEN], const void *msg,
            size_t len, unsigned char sig[KF_SIGN_SIG_MAX], char *errstr, size_t errstr_size)
{
        if (alg == KF_SIGN_HMAC) {
                unsigned int n = 0;
                if (!HMAC(EVP_sha256(), secret, KF_SIGN_KEY_LEN, msg, len, sig, &n) || n != 32)
                        return kf_errf(errstr, errstr_size, "HMAC-SHA256 failed");
                return 0;
        }
        if (alg == KF_SIGN_ED25519) {
                size_t n = 64;
                int ok = 0;
                EVP_PKEY *pk =
                    EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, secret, KF_SIGN_KEY_LEN);
                EVP_MD_CTX *ctx = EVP_MD_CTX_new();
                ok = pk && ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, pk) == 1 &&
                     EVP_DigestSign(ctx, sig, &n, msg, len) == 1 && n == 64;
                EVP_MD_CTX_free(ctx);
                EVP_PKEY_free(pk);
                return ok ? 0 : kf_errf(errstr, errstr_size, "Ed25519 signing failed");
        }
        return kf_errf(errstr, errstr_size, "unknown signature algorithm");
}

int kf_verify_key_init(kf_verify_key_t *k, kf_sign_alg_t alg,
                       const unsigned char material[KF_SIGN_KEY_LEN], char *errstr,
                       size_t errstr_size)
{
        memset(k, 0, sizeof(*k));
        k->alg = alg;
        memcpy(k->material, material, KF_SIGN_KEY_LEN);
        if (alg == KF_SIGN_HMAC)
                return 0;
        if (alg != KF_SIGN_ED25519)
                return kf_errf(errstr, errstr_size, "unknown signature algorithm");
        k->pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, material, KF_SIGN_KEY_LEN);
        if (!k->pkey)
                return kf_errf(errstr, errstr_size, "not a valid Ed25519 public key");
        return 0;
}

void kf_verify_key_clear(kf_verify_key_t *k)
{
        if (!k)
                return;
        EVP_PKEY_free(k->pkey);
        OPENSSL_cleanse(k->material, sizeof(k->material));
        k->pkey = NULL;
        k->alg = KF_SIGN_NONE;
}

int kf_verify(const kf_verify_key_t *k, const void *msg, size_t len, const unsigned char *sig,
              size_t siglen)
{
        if (k->alg == KF_SIGN_HMAC) {
                unsigned char mac[32];
                unsigned int n = 0;
                if (siglen != 32 ||
                    !HMAC(EVP_sha256(), k->material, KF_SIGN_KEY_LEN, msg, len, mac, &n) || n != 32)
                        return 0;
                return CRYPTO_memcmp(mac, sig, 32) == 0;
        }
        if (k->alg == KF_SIGN_ED25519 && k->pkey && siglen == 64) {
                EVP_MD_CTX *ctx = EVP_MD_CTX_new();
                int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
                         EVP_DigestVerify(ctx, sig, siglen, msg, len) == 1;
                EVP_MD_CTX_free(ctx);
                return ok;
        }
        return 0;
}
