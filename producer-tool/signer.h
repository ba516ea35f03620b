/* signer.h - the client's side of signed jobs: a key file (what `kinfer key
 * create` prints once), read and checked, and the Kafka headers that sign
 * one message value (docs/protocol.md, "Signed jobs").
 *
 * Key file: one JSON object
 *   {"user": "alice", "key_id": "k0123456789abcdef",
 *    "alg": "hmac-sha256" | "ed25519", "secret": "<64 hex digits>"}
 * the secret being the HMAC key or the Ed25519 seed.  It is a secret: the
 * tool writes it 0600 and never prints it again. */
#ifndef KC_SIGNER_H
#define KC_SIGNER_H

#include <hiredis.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "job.h"
#include "kf_sign.h"

typedef struct kc_signer_s {
        char user[JOB_USER_MAX + 1];
        char kid[KF_SIGN_KID_LEN + 1];
        kf_sign_alg_t alg;
        unsigned char secret[KF_SIGN_KEY_LEN];
} kc_signer_t;

/* Parses a key file's text (len bytes, need not be NUL-terminated).
 * Returns 0, or -1 with errstr naming the field that is missing or wrong
 * (never quoting the secret). */
int kc_signer_parse(const char *text, size_t len, kc_signer_t *s, char *errstr, size_t errstr_size);

/* Reads and parses the key file at path (at most 64 KiB). */
int kc_signer_load(const char *path, kc_signer_t *s, char *errstr, size_t errstr_size);

/* The key file text for s (a JSON line, malloc'd; caller frees), or NULL
 * when out of memory. */
char *kc_signer_format(const kc_signer_t *s);

/* kc_key_new makes a new key of alg for user: fills s (secret included) and
 * pub (what the store keeps: the HMAC secret or the Ed25519 public key).
 * kc_key_store stores it in the user's hash of keys (P{U}:keys: algorithm,
 * state active, creation time, pub), one HSET.  The caller hands the secret
 * out first (`kinfer key create` writes the key file before storing).
 * Both return 0 or -1 with errstr. */
int kc_key_new(kf_sign_alg_t alg, const char *user, kc_signer_t *s,
               unsigned char pub[KF_SIGN_KEY_LEN], char *errstr, size_t errstr_size);
int kc_key_store(redisContext *r, const char *prefix, const kc_signer_t *s,
                 const unsigned char pub[KF_SIGN_KEY_LEN], char *errstr, size_t errstr_size);

/* New headers signing value (len bytes) with s: kinfer-sig, kinfer-key-id,
 * kinfer-sig-alg.  Returns them (the caller hands them to producev, which
 * takes them on success, or destroys them), or NULL with errstr. */
rd_kafka_headers_t *kc_signer_headers(const kc_signer_t *s, const void *value, size_t len,
                                      char *errstr, size_t errstr_size);

#endif
