/* model.h - a loaded model: the kinfer-model file format and the MLP math.
 *
 * File format (docs/protocol.md, "Model file"): one msgpack map
 *   {format:"kinfer-model", v:1, name, kind:"mlp", input_dim, output_dim,
 *    layers:[{W:<bin f32 LE, row-major in x out>, b:<bin f32 LE, out>,
 *             act:"identity"|"relu"|"tanh"|"sigmoid"|"softmax"}, ...]}
 * Layer i maps in_i -> out_i with in_0 = input_dim, in_{i+1} = out_i and
 * out_last = output_dim.  Every weight must be finite.
 *
 * A model_t is immutable once decoded and is shared between threads by
 * reference count: model_ref() before handing it on, model_unref() when done;
 * the last unref frees it.  Thread-safe. */
#ifndef KF_MODEL_H
#define KF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"

#define MODEL_FORMAT_NAME   "kinfer-model"
#define MODEL_FORMAT_V      1
#define MODEL_MAX_LAYERS    64
#define MODEL_MAX_DIM       (1u << 20) /* widest layer side accepted */

typedef enum {
        MODEL_ACT_IDENTITY = 0,
        MODEL_ACT_RELU,
        MODEL_ACT_TANH,
        MODEL_ACT_SIGMOID,
        MODEL_ACT_SOFTMAX, /* over each row */
        MODEL_ACT__CNT
} model_act_t;

typedef struct model_layer_s {
        uint32_t in, out;
        float *W; /* in*out floats, row-major in x out: y = x.W + b */
        float *b; /* out floats */
        model_act_t act;
} model_layer_t;

typedef struct model_s {
        char name[JOB_MODEL_MAX + 1];
        uint32_t version; /* set by whoever loaded it (directory, registry); 0 = unset */
        uint32_t input_dim, output_dim;
        uint32_t n_layers;
        model_layer_t *layers;
        uint32_t max_width;      /* widest in/out of any layer: scratch sizing */
        uint64_t flops_per_row;  /* 2 * sum(in*out) over layers */
        size_t weight_bytes;     /* bytes of W and b */
        int refcnt;              /* atomic; use model_ref/model_unref */
} model_t;

/* Wire name <-> activation.  model_act_parse returns -1 for an unknown name. */
const char *model_act_name(model_act_t act);
int model_act_parse(const char *name, size_t len);

/* Allocates an MLP with the given layer sizes (dims[0] = input_dim,
 * dims[n_layers] = output_dim) and zeroed weights, refcnt 1.  Returns NULL
 * with errstr set on bad arguments or out of memory. */
model_t *model_new_mlp(const char *name, uint32_t n_layers, const uint32_t *dims,
                       const model_act_t *acts, char *errstr, size_t errstr_size);

/* Decodes and fully validates a model file held in memory (the bytes are
 * copied; buf may be freed afterwards).  Returns a model with refcnt 1, or
 * NULL with a message naming the problem in errstr ("layer 2: W has 4096
 * bytes, expected 8192 (32x64 float32)", "layer 0: W[17] is NaN", ...).
 * Like job_decode, it never allocates more than a small multiple of len. */
model_t *model_decode(const void *buf, size_t len, char *errstr, size_t errstr_size);

/* Reads and decodes a model file; errors name the path. */
model_t *model_load_file(const char *path, char *errstr, size_t errstr_size);

/* Encodes a model in the file format.  Returns 0 and a malloc'd buffer in
 * *out and *outlen (caller frees), or -1 with errstr set. */
int model_encode(const model_t *m, char **out, size_t *outlen, char *errstr, size_t errstr_size);

model_t *model_ref(model_t *m);
void model_unref(model_t *m); /* accepts NULL */

/* Per-thread scratch for model_forward; grows on demand, reused across calls. */
typedef struct model_scratch_s {
        float *a, *b;
        size_t cap; /* floats in each of a and b */
} model_scratch_t;

void model_scratch_free(model_scratch_t *s); /* accepts zeroed scratch */

/* Forward pass: X is rows x input_dim (row-major), Y receives rows x
 * output_dim.  One cblas_sgemm per layer over all rows.  Returns 0, or -1
 * only when scratch memory cannot be allocated.  Thread-safe for distinct
 * scratch objects. */
int model_forward(const model_t *m, const float *X, uint32_t rows, float *Y, model_scratch_t *s);

/* Row-wise post-processing of a rows x cols output, as named by a job:
 * RAW copies, SOFTMAX applies a numerically stable softmax per row, ARGMAX
 * writes the index of each row's first maximum as a float.  out must hold
 * rows * model_output_cols(mode, cols) floats. */
uint32_t model_output_cols(job_output_t mode, uint32_t cols);
void model_postprocess(job_output_t mode, const float *Y, uint32_t rows, uint32_t cols,
                       float *out);

#endif
