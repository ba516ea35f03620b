/* signer.c - key files and signature headers of the client (signer.h). */
#include "signer.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_keys.h"
#include "kf_util.h"

#define KEYFILE_MAX (64 * 1024)

static const char *field(json_t *o, const char *name)
{
        json_t *v = json_object_get(o, name);
        return json_is_string(v) ? json_string_value(v) : NULL;
}

int kc_signer_parse(const char *text, size_t len, kc_signer_t *s, char *errstr, size_t errstr_size)
{
        json_error_t jerr;
        json_t *o;
        const char *user, *kid, *alg, *secret;
        int rc = -1;

        memset(s, 0, sizeof(*s));
        if (len > KEYFILE_MAX)
                return kf_errf(errstr, errstr_size, "a key file has at most %d bytes", KEYFILE_MAX);
        o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!o || !json_is_object(o)) {
                kf_errf(errstr, errstr_size, "not one JSON object (line %d)", o ? 1 : jerr.line);
                goto out;
        }
        user = field(o, "user");
        kid = field(o, "key_id");
        alg = field(o, "alg");
        secret = field(o, "secret");
        if (!user || !job_name_valid(user, strlen(user), JOB_USER_MAX)) {
                kf_errf(errstr, errstr_size, "\"user\" is missing or not a valid user id");
                goto out;
        }
        if (!kid || !kf_sign_kid_valid(kid, strlen(kid))) {
                kf_errf(errstr, errstr_size,
                        "\"key_id\" is missing or not a key id ('k' and 16 lowercase hex)");
                goto out;
        }
        if (!alg || (s->alg = kf_sign_alg_parse(alg, strlen(alg))) == KF_SIGN_NONE) {
                kf_errf(errstr, errstr_size, "\"alg\" is missing or not hmac-sha256 or ed25519");
                goto out;
        }
        if (!secret || kf_hex_decode(secret, strlen(secret), s->secret, KF_SIGN_KEY_LEN)) {
                kf_errf(errstr, errstr_size, "\"secret\" is missing or not 64 hex digits");
                goto out;
        }
        kf_strlcpy(s->user, user, sizeof(s->user));
        kf_strlcpy(s->kid, kid, sizeof(s->kid));
        rc = 0;
out:
        if (rc)
                OPENSSL_cleanse(s, sizeof(*s));
        json_decref(o); /* jansson does not wipe the secret's copy: short-lived */
        return rc;
}

int kc_signer_load(const char *path, kc_signer_t *s, char *errstr, size_t errstr_size)
{
        char *text = NULL, err[256];
        size_t len = 0;
        int rc;
        if (kf_file_read(path, KEYFILE_MAX, &text, &len, err, sizeof(err)))
                return kf_errf(errstr, errstr_size, "key file %s", err);
        rc = kc_signer_parse(text, len, s, err, sizeof(err));
        OPENSSL_cleanse(text, len);
        free(text);
        return rc ? kf_errf(errstr, errstr_size, "key file %s: %s", path, err) : 0;
}

char *kc_signer_format(const kc_signer_t *s)
{
        char hex[2 * KF_SIGN_KEY_LEN + 1], *out;
        size_t n = 256 + sizeof(hex);
        kf_hex_encode(s->secret, KF_SIGN_KEY_LEN, hex);
        if ((out = malloc(n)))
                snprintf(out, n,
                         "{\"user\": \"%s\", \"key_id\": \"%s\", \"alg\": \"%s\", \"secret\": "
                         "\"%s\"}\n",
                         s->user, s->kid, kf_sign_alg_name(s->alg), hex);
        OPENSSL_cleanse(hex, sizeof(hex));
        return out;
}

rd_kafka_headers_t *kc_signer_headers(const kc_signer_t *s, const void *value, size_t len,
                                      char *errstr, size_t errstr_size)
{
        unsigned char sig[KF_SIGN_SIG_MAX];
        char hex[2 * KF_SIGN_SIG_MAX + 1];
        size_t n = kf_sign_sig_len(s->alg);
        rd_kafka_headers_t *hdrs;
        if (kf_sign(s->alg, s->secret, value, len, sig, errstr, errstr_size))
                return NULL;
        kf_hex_encode(sig, n, hex);
        if (!(hdrs = rd_kafka_headers_new(3))) {
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        rd_kafka_header_add(hdrs, KF_SIGN_HDR_SIG, -1, hex, (ssize_t)(2 * n));
        rd_kafka_header_add(hdrs, KF_SIGN_HDR_KID, -1, s->kid, -1);
        rd_kafka_header_add(hdrs, KF_SIGN_HDR_ALG, -1, kf_sign_alg_name(s->alg), -1);
        return hdrs;
}

int kc_key_new(kf_sign_alg_t alg, const char *user, kc_signer_t *s,
               unsigned char pub[KF_SIGN_KEY_LEN], char *errstr, size_t errstr_size)
{
        memset(s, 0, sizeof(*s));
        if (!job_name_valid(user, strlen(user), JOB_USER_MAX))
                return kf_errf(errstr, errstr_size, "'%s' is not a valid user id", user);
        if (kf_sign_keygen(alg, s->kid, s->secret, pub, errstr, errstr_size))
                return -1;
        s->alg = alg;
        kf_strlcpy(s->user, user, sizeof(s->user));
        return 0;
}

int kc_key_store(redisContext *r, const char *prefix, const kc_signer_t *s,
                 const unsigned char pub[KF_SIGN_KEY_LEN], char *errstr, size_t errstr_size)
{
        char key[KF_KEY_MAX], hex[2 * KF_SIGN_KEY_LEN + 1];
        redisReply *rep;
        int rc = 0;
        if (kf_user_key(key, prefix, s->user, KF_K_KEYS, NULL) < 0)
                return kf_errf(errstr, errstr_size, "cannot build the keys key of user %s",
                               s->user);
        kf_hex_encode(pub, KF_SIGN_KEY_LEN, hex);
        rep = redisCommand(r, "HSET %s %s:alg %s %s:state active %s:created %lld %s:key %s", key,
                           s->kid, kf_sign_alg_name(s->alg), s->kid, s->kid, (long long)kf_now_ms(),
                           s->kid, hex);
        if (!rep || rep->type == REDIS_REPLY_ERROR)
                rc = kf_errf(errstr, errstr_size, "redis: %s", rep ? rep->str : r->errstr);
        freeReplyObject(rep);
        OPENSSL_cleanse(hex, sizeof(hex));
        return rc;
}
