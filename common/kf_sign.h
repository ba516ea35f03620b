/* kf_sign.h - signed jobs: the algorithms, the Kafka header names, the key
 * ids and the signature arithmetic (docs/protocol.md, "Signed jobs").
 *
 * What is signed is exactly the Kafka message value, byte for byte (the
 * msgpack job); the signature, the key id and the algorithm travel in three
 * message headers.  HMAC-SHA256 keys are a 32-byte secret both sides hold;
 * Ed25519 keys are a 32-byte seed the client holds and a 32-byte public key
 * the key store holds.  HMAC with OpenSSL's libcrypto, Ed25519 with
 * libsodium (kf_sign.c says why).
 *
 * Pure functions, no state: safe from any thread.  Errors are returned
 * with a message in the caller's buffer. */
#ifndef KF_SIGN_H
#define KF_SIGN_H

#include <stddef.h>
#include <stdint.h>

/* Kafka header names (values are ASCII, see docs/protocol.md). */
#define KF_SIGN_HDR_SIG "kinfer-sig"     /* the signature, lowercase hex */
#define KF_SIGN_HDR_KID "kinfer-key-id"  /* the key id */
#define KF_SIGN_HDR_ALG "kinfer-sig-alg" /* "hmac-sha256" or "ed25519" */

#define KF_SIGN_KEY_LEN 32 /* HMAC secret, Ed25519 seed and public key */
#define KF_SIGN_SIG_MAX 64 /* bytes: HMAC-SHA256 32, Ed25519 64 */
#define KF_SIGN_KID_LEN 17 /* "k" + 16 lowercase hex digits */

typedef enum {
        KF_SIGN_NONE = 0,
        KF_SIGN_HMAC,    /* "hmac-sha256" */
        KF_SIGN_ED25519, /* "ed25519" */
} kf_sign_alg_t;

/* "hmac-sha256", "ed25519" ("" for NONE). */
const char *kf_sign_alg_name(kf_sign_alg_t alg);

/* The algorithm named by the len bytes at s (exact match), or KF_SIGN_NONE. */
kf_sign_alg_t kf_sign_alg_parse(const char *s, size_t len);

/* Bytes of a signature of alg (32 or 64; 0 for NONE). */
size_t kf_sign_sig_len(kf_sign_alg_t alg);

/* 1 if the len bytes at s are a key id: "k" and 16 lowercase hex digits. */
int kf_sign_kid_valid(const char *s, size_t len);

/* Writes a fresh random key id (KF_SIGN_KID_LEN chars and a NUL) into kid
 * and a fresh secret (HMAC: 32 random bytes; Ed25519: a 32-byte seed) into
 * secret, and for Ed25519 the public key into pub (HMAC: pub = secret, the
 * store must hold the secret).  Returns 0 or -1 with errstr. */
int kf_sign_keygen(kf_sign_alg_t alg, char kid[KF_SIGN_KID_LEN + 1],
                   unsigned char secret[KF_SIGN_KEY_LEN], unsigned char pub[KF_SIGN_KEY_LEN],
                   char *errstr, size_t errstr_size);

/* Signs msg with secret (HMAC secret or Ed25519 seed) into sig, whose length
 * is kf_sign_sig_len(alg).  Returns 0 or -1 with errstr. */
int kf_sign(kf_sign_alg_t alg, const unsigned char secret[KF_SIGN_KEY_LEN], const void *msg,
            size_t len, unsigned char sig[KF_SIGN_SIG_MAX], char *errstr, size_t errstr_size);

/* A key as a verifier holds it: the HMAC secret (keyed into an OpenSSL
 * context once, not per job), or the Ed25519 public key.  One thread at a
 * time may use it. */
typedef struct kf_verify_key_s {
        kf_sign_alg_t alg;
        unsigned char material[KF_SIGN_KEY_LEN];
        void *mac; /* EVP_MAC_CTX * keyed with the HMAC secret, owned */
} kf_verify_key_t;

/* Fills k from the store's material (HMAC secret or Ed25519 public key).
 * Returns 0 or -1 with errstr.  kf_verify_key_clear it either way. */
int kf_verify_key_init(kf_verify_key_t *k, kf_sign_alg_t alg,
                       const unsigned char material[KF_SIGN_KEY_LEN], char *errstr,
                       size_t errstr_size);
void kf_verify_key_clear(kf_verify_key_t *k); /* accepts a zeroed one */

/* 1 if sig (siglen bytes) is k's signature of msg, else 0.  HMACs are
 * compared in constant time (CRYPTO_memcmp). */
int kf_verify(const kf_verify_key_t *k, const void *msg, size_t len, const unsigned char *sig,
              size_t siglen);

/* Lowercase hex of n bytes into out (2n+1 chars with the NUL). */
void kf_hex_encode(const unsigned char *in, size_t n, char *out);

/* Decodes exactly 2n hex digits (either case) at s into out[n].  Returns 0,
 * or -1 if len != 2n or a character is not a hex digit. */
int kf_hex_decode(const char *s, size_t len, unsigned char *out, size_t n);

#endif
