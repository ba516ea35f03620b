/* cmd_key.c - `kinfer key create|rotate|revoke|list`: a user's signing keys
 * in Redis (P{U}:keys, docs/protocol.md "Signed jobs").  A secret is printed
 * once, when its key is made, and never stored on this side again. */
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kf_keys.h"
#include "kf_sign.h"
#include "kf_util.h"
#include "kinfer.h"
#include "signer.h"

#define O(f) offsetof(kc_conf_t, f)

static const kf_opt_t create_opts[] = {
    KC_OPTS_CONN,
    {"alg", 0, NULL, KF_OPT_STR, O(key_alg), 0, 0, NULL, "ALG",
     "hmac (HMAC-SHA256, the default for create) or ed25519 (the store keeps only the public "
     "key)"},
    {"out", 'o', NULL, KF_OPT_STR, O(out_path), 0, 0, NULL, "FILE",
     "write the key file (with its secret) to FILE, created with mode 0600, instead of stdout"},
    {NULL},
};

static const kf_opt_t list_opts[] = {
    KC_OPTS_CONN,
    {"json", 0, NULL, KF_OPT_BOOL, O(json), 0, 0, "0", NULL, "one JSON object per key"},
    {NULL},
};

static const kf_opt_t revoke_opts[] = {KC_OPTS_CONN, {NULL}};

/* Revokes a key atomically: refused for a key id the user does not have;
 * its material (an HMAC secret) is deleted, never to be used again. */
static const char revoke_lua[] =
    "if redis.call('HEXISTS', KEYS[1], ARGV[1] .. ':alg') == 0 then return 0 end\n"
    "if redis.call('HGET', KEYS[1], ARGV[1] .. ':state') == 'revoked' then return 2 end\n"
    "redis.call('HSET', KEYS[1], ARGV[1] .. ':state', 'revoked', ARGV[1] .. ':revoked', "
    "ARGV[2])\n"
    "redis.call('HDEL', KEYS[1], ARGV[1] .. ':key')\n"
    "return 1\n";

/* The user argument (exactly one after the options, or two for revoke) and
 * its keys hash. */
static int user_key(const kc_conf_t *c, int first, int argc, char **argv, int nargs,
                    const char *what, char *key)
{
        if (argc - first != nargs ||
            !job_name_valid(argv[first], strlen(argv[first]), JOB_USER_MAX) ||
            kf_user_key(key, c->prefix, argv[first], KF_K_KEYS, NULL) < 0) {
                kc_err("key %s: give %s (a user is 1..64 chars of [A-Za-z0-9._:-])", what,
                       nargs == 1 ? "exactly one user id" : "a user id and a key id");
                return -1;
        }
        return 0;
}

/* The newest active key's algorithm, or NONE if the user has none. */
static kf_sign_alg_t newest_alg(redisContext *r, const char *key)
{
        redisReply *rep = kc_redis_cmd(r, "HGETALL %s", key);
        kf_sign_alg_t alg = KF_SIGN_NONE;
        long long best = -1;
        for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
                const char *f = rep->element[i]->str;
                char kid[KF_SIGN_KID_LEN + 1];
                redisReply *st, *cr, *al;
                if (strlen(f) != KF_SIGN_KID_LEN + 4 || strcmp(f + KF_SIGN_KID_LEN, ":alg"))
                        continue;
                memcpy(kid, f, KF_SIGN_KID_LEN);
                kid[KF_SIGN_KID_LEN] = '\0';
                st = kc_redis_cmd(r, "HGET %s %s:state", key, kid);
                cr = kc_redis_cmd(r, "HGET %s %s:created", key, kid);
                al = rep->element[i + 1];
                if (st->type == REDIS_REPLY_STRING && !strcmp(st->str, "active") &&
                    cr->type == REDIS_REPLY_STRING && atoll(cr->str) > best) {
                        best = atoll(cr->str);
                        alg = kf_sign_alg_parse(al->str, al->len);
                }
                freeReplyObject(st);
                freeReplyObject(cr);
        }
        freeReplyObject(rep);
        return alg;
}

/* Writes the key file: to FILE (new, 0600) or stdout. */
static int write_keyfile(const char *path, const char *text)
{
        int fd;
        size_t len = strlen(text);
        if (!path) {
                fputs(text, stdout);
                return fflush(stdout) ? -1 : 0;
        }
        if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600)) < 0) {
                kc_err("key: cannot create %s (it must not exist yet): %m", path);
                return -1;
        }
        if (write(fd, text, len) != (ssize_t)len || close(fd)) {
                kc_err("key: cannot write %s: %m", path);
                return -1;
        }
        return 0;
}

/* create and rotate: a new key; rotate keeps the others active. */
static int key_make(int argc, char **argv, int rotate)
{
        kc_conf_t c = {0};
        kc_signer_t s;
        unsigned char pub[KF_SIGN_KEY_LEN];
        char key[KF_KEY_MAX], err[256], *text = NULL;
        redisContext *r = NULL;
        int rc = KC_EXIT_USAGE;
        int first = kc_parse(
            create_opts, &c, 0, argc, argv,
            rotate ? "key rotate USER [--alg hmac|ed25519] [-o FILE]\n\nMakes a new key for USER "
                     "and prints its key file, secret included, once.\nThe user's other keys "
                     "stay valid: switch clients to the new key, then\n`kinfer key revoke` the "
                     "old one.  --alg defaults to the newest active key's."
                   : "key create USER [--alg hmac|ed25519] [-o FILE]\n\nMakes a signing key "
                     "for USER and prints its key file, secret included,\nonce: it is never "
                     "shown again.  Give it to `kinfer submit --key-file`.");

        memset(&s, 0, sizeof(s));
        if (user_key(&c, first, argc, argv, 1, rotate ? "rotate" : "create", key))
                goto out;
        if (c.key_alg && !strcmp(c.key_alg, "hmac"))
                s.alg = KF_SIGN_HMAC;
        else if (c.key_alg && !strcmp(c.key_alg, "ed25519"))
                s.alg = KF_SIGN_ED25519;
        else if (c.key_alg) {
                kc_err("key: --alg '%s': expected hmac or ed25519", c.key_alg);
                goto out;
        }
        r = kc_redis(&c);
        if (!s.alg && rotate && (s.alg = newest_alg(r, key)) == KF_SIGN_NONE) {
                kc_err("key rotate: user %s has no active key to rotate; use kinfer key create",
                       argv[first]);
                rc = KC_EXIT_FAIL;
                goto out;
        }
        if (!s.alg)
                s.alg = KF_SIGN_HMAC;
        if (kc_key_new(s.alg, argv[first], &s, pub, err, sizeof(err))) {
                kc_err("key: %s", err);
                rc = KC_EXIT_FAIL;
                goto out;
        }
        if (!(text = kc_signer_format(&s))) {
                kc_err("key: out of memory");
                rc = KC_EXIT_FAIL;
                goto out;
        }
        /* the key file first: a key whose secret could not be handed out
         * must not exist */
        if (write_keyfile(c.out_path, text)) {
                rc = KC_EXIT_FAIL;
                goto out;
        }
        if (kc_key_store(r, c.prefix, &s, pub, err, sizeof(err))) {
                kc_err("key: %s (the key file printed is not valid)", err);
                rc = KC_EXIT_CONN;
                goto out;
        }
        fprintf(stderr,
                "kinfer: key %s (%s) of user %s created%s; its secret is shown this once%s\n",
                s.kid, kf_sign_alg_name(s.alg), argv[first],
                rotate ? "; the user's other keys stay valid until revoked" : "",
                c.out_path ? " (in the file)" : "");
        rc = KC_EXIT_OK;
out:
        if (text) {
                OPENSSL_cleanse(text, strlen(text));
                free(text);
        }
        OPENSSL_cleanse(&s, sizeof(s));
        OPENSSL_cleanse(pub, sizeof(pub));
        if (r)
                redisFree(r);
        kf_config_free(create_opts, &c, NULL);
        return rc;
}

static int key_revoke(int argc, char **argv)
{
        kc_conf_t c = {0};
        char key[KF_KEY_MAX], now[24];
        redisContext *r;
        redisReply *rep;
        int rc = KC_EXIT_USAGE;
        int first = kc_parse(revoke_opts, &c, 0, argc, argv,
                             "key revoke USER KEYID\n\nRevokes one of USER's keys: workers "
                             "refuse jobs signed with it within\ntheir --key-cache-ms (5 s by "
                             "default).  Its secret is deleted; a revoked\nkey cannot be "
                             "restored.");
        if (user_key(&c, first, argc, argv, 2, "revoke", key))
                goto out;
        if (!kf_sign_kid_valid(argv[first + 1], strlen(argv[first + 1]))) {
                kc_err("key revoke: '%s' is not a key id ('k' and 16 lowercase hex digits)",
                       argv[first + 1]);
                goto out;
        }
        r = kc_redis(&c);
        snprintf(now, sizeof(now), "%lld", (long long)kf_now_ms());
        rep = kc_redis_cmd(r, "EVAL %s 1 %s %s %s", revoke_lua, key, argv[first + 1], now);
        if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) {
                kc_err("key revoke: user %s has no key %s", argv[first], argv[first + 1]);
                rc = KC_EXIT_FAIL;
        } else {
                fprintf(stderr, "kinfer: key %s of user %s %s\n", argv[first + 1], argv[first],
                        rep->integer == 2 ? "was already revoked" : "revoked");
                rc = KC_EXIT_OK;
        }
        freeReplyObject(rep);
        redisFree(r);
out:
        kf_config_free(revoke_opts, &c, NULL);
        return rc;
}

/* "2026-11-28T13:30:00Z" of Unix ms text, or "-". */
static void iso(const char *ms, char *buf, size_t n)
{
        time_t t;
        struct tm tm;
        if (!ms) {
                kf_strlcpy(buf, "-", n);
                return;
        }
        t = (time_t)(atoll(ms) / 1000);
        gmtime_r(&t, &tm);
        strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int key_list(int argc, char **argv)
{
        kc_conf_t c = {0};
        char key[KF_KEY_MAX];
        redisContext *r;
        redisReply *rep;
        int rc = KC_EXIT_USAGE;
        int first = kc_parse(list_opts, &c, 0, argc, argv,
                             "key list USER [--json]\n\nLists USER's keys: id, algorithm, state, "
                             "when made and revoked.  Never a secret.");
        if (user_key(&c, first, argc, argv, 1, "list", key))
                goto out;
        r = kc_redis(&c);
        rep = kc_redis_cmd(r, "HGETALL %s", key);
        if (!c.json)
                printf("%-18s %-12s %-8s %-21s %s\n", "KEYID", "ALG", "STATE", "CREATED",
                       "REVOKED");
        for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
                const char *f = rep->element[i]->str;
                char kid[KF_SIGN_KID_LEN + 1], created[32], revoked[32];
                const char *alg = rep->element[i + 1]->str, *st = NULL, *cr = NULL, *rv = NULL;
                if (strlen(f) != KF_SIGN_KID_LEN + 4 || strcmp(f + KF_SIGN_KID_LEN, ":alg"))
                        continue;
                memcpy(kid, f, KF_SIGN_KID_LEN);
                kid[KF_SIGN_KID_LEN] = '\0';
                for (size_t k = 0; k + 1 < rep->elements; k += 2) {
                        const char *g = rep->element[k]->str;
                        if (strncmp(g, kid, KF_SIGN_KID_LEN) || g[KF_SIGN_KID_LEN] != ':')
                                continue;
                        if (!strcmp(g + KF_SIGN_KID_LEN, ":state"))
                                st = rep->element[k + 1]->str;
                        else if (!strcmp(g + KF_SIGN_KID_LEN, ":created"))
                                cr = rep->element[k + 1]->str;
                        else if (!strcmp(g + KF_SIGN_KID_LEN, ":revoked"))
                                rv = rep->element[k + 1]->str;
                }
                iso(cr, created, sizeof(created));
                iso(rv, revoked, sizeof(revoked));
                if (c.json) {
                        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "key_id", kid, "alg",
                                              alg, "state", st ? st : "?", "created", created,
                                              "revoked", revoked);
                        kc_print_json(o);
                        json_decref(o);
                } else {
                        printf("%-18s %-12s %-8s %-21s %s\n", kid, alg, st ? st : "?", created,
                               revoked);
                }
        }
        freeReplyObject(rep);
        redisFree(r);
        rc = KC_EXIT_OK;
out:
        kf_config_free(list_opts, &c, NULL);
        return rc;
}

int kc_cmd_key(int argc, char **argv)
{
        if (argc >= 2 && !strcmp(argv[1], "create"))
                return key_make(argc - 1, argv + 1, 0);
        if (argc >= 2 && !strcmp(argv[1], "rotate"))
                return key_make(argc - 1, argv + 1, 1);
        if (argc >= 2 && !strcmp(argv[1], "revoke"))
                return key_revoke(argc - 1, argv + 1);
        if (argc >= 2 && !strcmp(argv[1], "list"))
                return key_list(argc - 1, argv + 1);
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
                printf("Usage: kinfer key SUBCOMMAND USER [KEYID] [OPTION]... (each takes "
                       "--help)\n\n"
                       "  create   a new signing key for USER; its secret is printed once\n"
                       "  rotate   another key for USER; the others stay valid until revoked\n"
                       "  revoke   refuse jobs signed with USER's key KEYID from now on\n"
                       "  list     USER's keys: ids, algorithms, states, dates (no secret)\n");
                return KC_EXIT_OK;
        }
        kc_err("key: expected a subcommand: create, rotate, revoke or list; see kinfer key "
               "--help");
        return KC_EXIT_USAGE;
}
