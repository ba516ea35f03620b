/* kf_sign.c - signature arithmetic of signed jobs (see kf_sign.h): HMAC-SHA256
 * with OpenSSL's libcrypto (a keyed EVP_MAC context per key, copied per
 * message: a third of what HMAC() costs, which fetches SHA-256 and keys it
 * again each time), Ed25519 with libsodium (its verification takes half the
 * time of OpenSSL 3.0's on this machine: docs/security.md), key ids, hex. */
#include "kf_sign.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <sodium.h>
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

/* The Ed25519 public key of a 32-byte seed (libsodium's secret key is the
 * seed and the public key, 64 bytes). */
static int ed25519_keypair(const unsigned char seed[KF_SIGN_KEY_LEN],
                           unsigned char pub[KF_SIGN_KEY_LEN], unsigned char sk[64])
{
        if (sodium_init() < 0)
                return -1;
        return crypto_sign_seed_keypair(pub, sk, seed) == 0 ? 0 : -1;
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
        unsigned char sk[64];
        int rc = ed25519_keypair(secret, pub, sk);
        sodium_memzero(sk, sizeof(sk));
        return rc ? kf_errf(errstr, errstr_size, "cannot derive an Ed25519 public key") : 0;
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
                unsigned char pub[KF_SIGN_KEY_LEN], sk[64];
                int ok = ed25519_keypair(secret, pub, sk) == 0 &&
                         crypto_sign_detached(sig, NULL, msg, len, sk) == 0;
                sodium_memzero(sk, sizeof(sk));
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
        if (alg == KF_SIGN_HMAC) {
                EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
                OSSL_PARAM params[] = {
                    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                    OSSL_PARAM_construct_end()};
                EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
                EVP_MAC_free(mac); /* the context keeps its own reference */
                if (!ctx || EVP_MAC_init(ctx, material, KF_SIGN_KEY_LEN, params) != 1) {
                        EVP_MAC_CTX_free(ctx);
                        return kf_errf(errstr, errstr_size, "cannot key HMAC-SHA256");
                }
                k->mac = ctx;
                return 0;
        }
        if (alg != KF_SIGN_ED25519)
                return kf_errf(errstr, errstr_size, "unknown signature algorithm");
        if (sodium_init() < 0)
                return kf_errf(errstr, errstr_size, "libsodium cannot start");
        return 0;
}

void kf_verify_key_clear(kf_verify_key_t *k)
{
        if (!k)
                return;
        EVP_MAC_CTX_free(k->mac);
        OPENSSL_cleanse(k->material, sizeof(k->material));
        k->mac = NULL;
        k->alg = KF_SIGN_NONE;
}

int kf_verify(const kf_verify_key_t *k, const void *msg, size_t len, const unsigned char *sig,
              size_t siglen)
{
        if (k->alg == KF_SIGN_HMAC && k->mac) {
                unsigned char mac[32];
                size_t n = 0;
                int ok;
                EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(k->mac); /* keyed, nothing absorbed */
                ok = siglen == 32 && ctx && EVP_MAC_update(ctx, msg, len) == 1 &&
                     EVP_MAC_final(ctx, mac, &n, sizeof(mac)) == 1 && n == 32 &&
                     CRYPTO_memcmp(mac, sig, 32) == 0;
                EVP_MAC_CTX_free(ctx);
                return ok;
        }
        if (k->alg == KF_SIGN_ED25519 && siglen == 64)
                return crypto_sign_verify_detached(sig, msg, len, k->material) == 0;
        return 0;
}
