/* model_int.h - private to model.c and model_ensemble.c: the strict msgpack
 * helpers both file kinds are decoded and encoded with.  Not for other
 * modules; model.h is the interface. */
#ifndef KF_MODEL_INT_H
#define KF_MODEL_INT_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Copies a file-supplied string into out for an error message: at most 40
 * bytes, non-printable bytes shown as '?'.  Returns out. */
const char *model_quote(const char *s, size_t len, char *out, size_t outsize);

/* 1 if the msgpack string k is exactly name. */
int model_key_is(const msgpack_object *k, const char *name);

/* Points vals[i] at the value of key names[i] (NULL when absent), refusing
 * keys that are not strings, unknown or repeated; ctx prefixes messages. */
int model_map_fields(const msgpack_object *map, const char *const *names, size_t n_names,
                     const msgpack_object **vals, const char *ctx, char *errstr,
                     size_t errstr_size);

/* A dimension: an unsigned integer in 1..MODEL_MAX_DIM. */
int model_get_dim(const msgpack_object *o, const char *what, uint32_t *out, char *errstr,
                  size_t errstr_size);

/* model_ensemble.c: the members array of an ensemble file (the header,
 * name and dims already validated by model.c).  Returns a spec or NULL with
 * errstr. */
model_ens_spec_t *model_ens_spec_from_object(const msgpack_object *members, const char *name,
                                             size_t name_len, uint32_t input_dim,
                                             uint32_t output_dim, char *errstr, size_t errstr_size);

#endif
