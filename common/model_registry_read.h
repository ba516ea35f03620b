/* model_registry_read.h - the model registry in Redis as the workers read
 * it (the CLI reads it the same way, and changes it through
 * model_registry_admin.h).  Layout (docs/models.md, docs/protocol.md "Model
 * registry"), {P} being the key prefix:
 *
 *   {P}model:{name}:{version}  string, the model file (blob) of one version
 *   {P}model-meta:{name}       hash, the model's metadata:
 *                                next     last version number assigned (never reused)
 *                                active   the active version, 0 = none
 *                                history  earlier active versions, oldest first ("1,3")
 *                                seq      bumped by every change of this model
 *                                {v}:size {v}:sha256 {v}:kind {v}:input_dim
 *                                {v}:output_dim {v}:created (Unix ms)
 *                                {v}:layers (mlp) {v}:members (ensemble, JSON)
 *   {P}model-names             set, every model name ever pushed
 *   channel {P}models          "EVENT NAME VERSION" after every change,
 *                              EVENT = push | activate | rollback | rm
 *
 * The metadata hash is not {P}model:{name}: names may contain ':', so that
 * key could be the blob of another model ("a:1" vs "a" version 1).
 *
 * Functions take a hiredis context the caller owns; none of them keeps
 * state, so any thread may call them with its own context.  They return an
 * mreg_rc_t; on MREG_IO the context saw an I/O or protocol error and must
 * not be used again. */
#ifndef KF_MODEL_REGISTRY_READ_H
#define KF_MODEL_REGISTRY_READ_H

#include <hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define MREG_SHA256_HEX   65                  /* 64 hex digits and a NUL */
#define MREG_MAX_BLOB     ((size_t)512 << 20) /* Redis' largest string (proto-max-bulk-len) */
#define MREG_MAX_VERSIONS 4096                /* versions one model may keep at once */
#define MREG_HISTORY_MAX  32                  /* earlier active versions remembered */

typedef enum {
        MREG_OK = 0,
        MREG_NOT_FOUND, /* no such model or version (the message lists what exists) */
        MREG_REFUSED,   /* the change or the blob is invalid: the message says why */
        MREG_IO,        /* Redis unreachable or a protocol error: drop the context */
} mreg_rc_t;

/* One version as the metadata describes it. */
typedef struct mreg_version_s {
        uint32_t version;
        uint64_t size;                /* bytes of the blob */
        char sha256[MREG_SHA256_HEX]; /* of the blob, lowercase hex */
        model_kind_t kind;
        uint32_t input_dim, output_dim;
        uint32_t layers;    /* mlp: number of layers */
        int64_t created_ms; /* when it was pushed (Redis server clock) */
        char *members;      /* ensemble: JSON [{"model","version","weight"}], owned; else NULL */
} mreg_version_t;

typedef struct mreg_meta_s {
        char name[JOB_MODEL_MAX + 1];
        uint32_t active; /* 0 = no active version */
        uint32_t next;   /* the last version number assigned */
        uint64_t seq;    /* changes with every change to the model */
        uint32_t n_history;
        uint32_t history[MREG_HISTORY_MAX]; /* oldest first */
        uint32_t n_versions;
        mreg_version_t *versions; /* ascending by version, owned */
} mreg_meta_t;

/* Key and channel names; buf holds KF_KEY_MAX bytes.  Return the length or
 * -1 if it does not fit. */
int mreg_key_blob(char *buf, const char *prefix, const char *name, uint32_t version);
int mreg_key_meta(char *buf, const char *prefix, const char *name);
int mreg_key_names(char *buf, const char *prefix);
int mreg_channel(char *buf, const char *prefix);

/* SHA-256 of buf as lowercase hex (OpenSSL libcrypto). */
void mreg_sha256_hex(const void *buf, size_t len, char out[MREG_SHA256_HEX]);

/* Builds meta from the field/value pairs of HGETALL (n strings, alternating
 * field and value, each with its length).  Unknown fields are ignored; a
 * version needs at least {v}:sha256 and {v}:size.  Returns 0, or -1 with
 * errstr if a known field is malformed.  Free with mreg_meta_free. */
int mreg_meta_parse(mreg_meta_t *meta, const char *name, size_t n, const char *const *strs,
                    const size_t *lens, char *errstr, size_t errstr_size);
void mreg_meta_free(mreg_meta_t *meta); /* accepts a zeroed one */

/* The version's entry, or NULL. */
const mreg_version_t *mreg_meta_version(const mreg_meta_t *meta, uint32_t version);

/* "1, 2, 5" (or "none") into buf. */
void mreg_meta_versions_str(const mreg_meta_t *meta, char *buf, size_t size);

/* HGETALL of the model's metadata.  MREG_NOT_FOUND if the model was never
 * pushed; MREG_REFUSED if the hash is malformed. */
mreg_rc_t mreg_meta_get(redisContext *c, const char *prefix, const char *name, mreg_meta_t *meta,
                        char *errstr, size_t errstr_size);

/* Checks a blob against its metadata: its size, then its SHA-256.  Returns
 * 0, or -1 with a message saying which differs ("blob has 100 bytes, the
 * registry says 2048: truncated"). */
int mreg_blob_verify(const void *buf, size_t len, const mreg_version_t *v, char *errstr,
                     size_t errstr_size);

/* Decodes a blob (model_file_decode: every size, weight and activation is
 * checked) and checks the name inside it is `name`.  Returns 0 and *out
 * (release with model_file_clear), or -1 with errstr. */
int mreg_blob_decode(const void *buf, size_t len, const char *name, model_file_t *out, char *errstr,
                     size_t errstr_size);

/* GETs version v of name and verifies it (mreg_blob_verify).  MREG_OK with a
 * malloc'd *buf (caller frees); MREG_NOT_FOUND if the blob is gone;
 * MREG_REFUSED if it does not match its metadata. */
mreg_rc_t mreg_blob_get(redisContext *c, const char *prefix, const char *name,
                        const mreg_version_t *v, char **buf, size_t *len, char *errstr,
                        size_t errstr_size);

#endif
