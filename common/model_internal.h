/* model_internal.h - private to the model_*.c files of common/: what the
 * model_t layer (model.c) offers the file format (model_file.c) beyond
 * model.h.  Not for other modules; model.h is the interface.
 *
 * The model files form layers, each using only those below it:
 *   model.c           the model_t: activations, allocation, reference count
 *   model_math.c      forward passes (MLP and ensemble) and post-processing
 *   model_ensemble.c  building an ensemble from resolved members
 *   model_file.c      the kinfer-model file format, both kinds */
#ifndef KF_MODEL_INTERNAL_H
#define KF_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* File-supplied text in error messages: at most this many bytes (mp_quote). */
#define MODEL_QUOTE_MAX 40

/* Allocates an MLP named name[0..name_len) with zeroed weights for the chain
 * dims[0..n_layers] (refcnt 1), validating the name, the sizes and the
 * activations first: the shared checks behind model_new_mlp and the file
 * decoder.  Returns NULL with errstr naming the problem. */
model_t *model_alloc(const char *name, size_t name_len, uint32_t n_layers, const uint32_t *dims,
                     const model_act_t *acts, char *errstr, size_t errstr_size);

#endif
