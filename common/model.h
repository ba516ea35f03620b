/* model.h - a loaded model: the kinfer-model file format and the MLP math.
 *
 * Implemented in layers, each using only those below it (model_internal.h
 * holds what they share privately): model.c the model_t itself (allocation,
 * activations, reference count); model_math.c forward passes and
 * post-processing; model_ensemble.c building ensembles; model_file.c the
 * file format of both kinds.
 *
 * File format (docs/protocol.md, "Model file"): one msgpack map
 *   {format:"kinfer-model", v:1, name, kind:"mlp", input_dim, output_dim,
 *    layers:[{W:<bin f32 LE, row-major in x out>, b:<bin f32 LE, out>,
 *             act:"identity"|"relu"|"tanh"|"sigmoid"|"softmax"}, ...]}
 * Layer i maps in_i -> out_i with in_0 = input_dim, in_{i+1} = out_i and
 * out_last = output_dim.  Every weight must be finite.
 *
 * Or an ensemble, which names other models instead of
 * holding weights:
 *   {format, v, name, kind:"ensemble", input_dim, output_dim,
 *    members:[{model:NAME, version:N (optional, 0 = the member's active
 *              version), weight:W, act:A (optional, format v2)}, ...]}
 * Its output is sum_i W_i * A_i(member_i(x)): A (default identity) is an
 * activation applied to member i's own output before it is weighted, e.g.
 * softmax to average the probabilities of members that output logits
 * (scikit-learn's soft voting) without pushing a softmax copy of each.  A
 * file with an act other than identity is written as v2 so that a worker
 * that predates acts refuses it by version instead of by an unknown key.
 * Its file decodes to a model_ens_spec_t; whoever can find the members
 * (the worker's model store) resolves them and calls model_ens_build().
 *
 * A model_t is immutable once decoded and is shared between threads by
 * reference count: model_ref() before handing it on, model_unref() when done;
 * the last unref frees it.  Thread-safe. */
#ifndef KF_MODEL_H
#define KF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"

#define MODEL_FORMAT_NAME    "kinfer-model"
#define MODEL_FORMAT_V       1 /* what MLP files and ensembles without acts are written as */
#define MODEL_FORMAT_V_MAX   2 /* v2: an ensemble member may have an act */
#define MODEL_MAX_LAYERS     64
#define MODEL_MAX_DIM        (1u << 20) /* widest layer side accepted */
#define MODEL_MAX_MEMBERS    64         /* members of one ensemble, after flattening */
#define MODEL_MAX_DEPTH      8          /* ensembles of ensembles, nested at most this deep */
#define MODEL_MAX_FILE_BYTES ((size_t)4 << 30) /* largest model file read */

typedef enum {
        MODEL_KIND_MLP = 0,  /* layers of weights */
        MODEL_KIND_ENSEMBLE, /* a weighted sum of other models' outputs */
} model_kind_t;

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

struct model_s;

/* One member of a built ensemble: an MLP, the activation applied to its
 * output, and the weight that result gets. */
typedef struct model_member_s {
        struct model_s *model; /* an MLP (nested ensembles are flattened); owned reference */
        float weight;
        model_act_t act; /* applied to the member's output before weighting */
} model_member_t;

typedef struct model_s {
        char name[JOB_MODEL_MAX + 1];
        uint32_t version; /* set by whoever loaded it (directory, registry); 0 = unset */
        uint32_t input_dim, output_dim;
        uint32_t n_layers;      /* MLP; 0 for an ensemble */
        model_layer_t *layers;  /* MLP; NULL for an ensemble */
        uint32_t max_width;     /* widest in/out of any layer: scratch sizing */
        uint64_t flops_per_row; /* MLP: 2 * sum(in*out) over layers; ensemble: sum of members' */
        size_t weight_bytes;    /* bytes of W and b (an ensemble's: its members') */
        int refcnt;             /* atomic; use model_ref/model_unref */
        model_kind_t kind;
        uint32_t n_members;       /* ensemble: distinct MLPs after flattening */
        model_member_t *members;  /* ensemble: n_members, owned */
        struct model_s *alias_of; /* layers and members borrowed from this model (an owned
                                   * reference, see model_alias); NULL: its own */
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

/* ---- ensembles: files (model_file.c), building (model_ensemble.c) ---- */

/* An ensemble file as written: members named, not yet resolved. */
typedef struct model_member_spec_s {
        char model[JOB_MODEL_MAX + 1];
        uint32_t version; /* 0 = whatever version of the member is active */
        double weight;    /* finite, and finite as a float32 */
        model_act_t act;  /* applied to the member's output; IDENTITY unless the file says */
} model_member_spec_t;

typedef struct model_ens_spec_s {
        char name[JOB_MODEL_MAX + 1];
        uint32_t input_dim, output_dim;
        uint32_t n_members; /* 1..MODEL_MAX_MEMBERS */
        model_member_spec_t *members;
} model_ens_spec_t;

/* What a model file holds: exactly one of mlp and ens is set. */
typedef struct model_file_s {
        model_kind_t kind;
        model_t *mlp;          /* refcnt 1, owned by the caller */
        model_ens_spec_t *ens; /* owned by the caller */
} model_file_t;

/* Decodes either kind of model file with the checks of model_decode (an
 * ensemble's members must be 1..MODEL_MAX_MEMBERS maps of a valid model name,
 * an optional uint32 version and a finite weight; a member that names the
 * ensemble itself without a version is a cycle and refused).  Returns 0 and
 * fills *out (release with model_file_clear), or -1 with errstr.  model_decode
 * itself refuses an ensemble: it has no weights until resolved. */
int model_file_decode(const void *buf, size_t len, model_file_t *out, char *errstr,
                      size_t errstr_size);
void model_file_clear(model_file_t *f); /* accepts a zeroed one */

void model_ens_spec_free(model_ens_spec_t *spec); /* accepts NULL */

/* Encodes an ensemble file (the reverse of model_file_decode).  Returns 0 and
 * a malloc'd buffer (caller frees), or -1 with errstr if spec is invalid. */
int model_ens_encode(const model_ens_spec_t *spec, char **out, size_t *outlen, char *errstr,
                     size_t errstr_size);

/* Builds an ensemble from its spec and its members' models: resolved[i] is
 * member i (an MLP or a built ensemble, whose members are taken over with
 * their weights multiplied and their acts kept: the result always holds
 * MLPs only, each (MLP, act) pair once).  A member with an act other than
 * identity must be an MLP: the act of a sum cannot be flattened.
 * Every member must have the spec's input_dim and output_dim.  Takes new
 * references; resolved[] stays the caller's.  Returns a model (refcnt 1,
 * version 0: the caller sets it) or NULL with errstr naming the member. */
model_t *model_ens_build(const model_ens_spec_t *spec, model_t *const *resolved, char *errstr,
                         size_t errstr_size);

/* Encodes a model in the file format.  Returns 0 and a malloc'd buffer in
 * *out and *outlen (caller frees), or -1 with errstr set. */
int model_encode(const model_t *m, char **out, size_t *outlen, char *errstr, size_t errstr_size);

/* A model with its own header (version) that shares m's weights: two
 * versions pushed with the same blob are served from one copy.  m lives as
 * long as the alias does.  Returns NULL out of memory. */
model_t *model_alias(model_t *m, uint32_t version);

/* The model whose memory holds m's weights: m itself, or what it aliases. */
const model_t *model_weights_owner(const model_t *m);

model_t *model_ref(model_t *m);
void model_unref(model_t *m); /* accepts NULL */

/* Per-thread scratch for model_forward; grows on demand, reused across calls. */
typedef struct model_scratch_s {
        float *a, *b;
        size_t cap; /* floats in each of a and b */
        float *e;   /* an ensemble member's output, before it is weighted and summed */
        size_t ecap;
} model_scratch_t;

void model_scratch_free(model_scratch_t *s); /* accepts zeroed scratch */

/* Forward pass: X is rows x input_dim (row-major), Y receives rows x
 * output_dim.  One cblas_sgemm per layer over all rows; an ensemble runs
 * each member once over all rows and sums weight_i * member_i.  Returns 0,
 * or -1 only when scratch memory cannot be allocated.  Thread-safe for
 * distinct scratch objects. */
int model_forward(const model_t *m, const float *X, uint32_t rows, float *Y, model_scratch_t *s);

/* Row-wise post-processing of a rows x cols output, as named by a job:
 * RAW copies, SOFTMAX applies a numerically stable softmax per row, ARGMAX
 * writes the index of each row's first maximum as a float, TOPK writes per
 * row the indices of the k largest values, largest first (the lower index
 * first on ties; NaN never ranks above a number), then those k values: 2k
 * columns, in O(cols * log k) per row.  k is used by TOPK only and clamped
 * to 1..cols.  out must hold rows * model_output_cols_k(mode, k, cols)
 * floats. */
uint32_t model_output_cols_k(job_output_t mode, uint32_t k, uint32_t cols);
void model_postprocess_k(job_output_t mode, uint32_t k, const float *Y, uint32_t rows,
                         uint32_t cols, float *out);

/* 1 if m's outputs are already probability distributions: an MLP whose
 * last layer is softmax, or an ensemble of such members (or of members
 * whose act is softmax) with weights >= 0 summing to 1. */
int model_outputs_distribution(const model_t *m);

/* Whether job can run on m: its columns must be m's input_dim
 * (KF_ERR_SHAPE_MISMATCH), a TOPK job's k at most m's output_dim, and a
 * SOFTMAX job's model must not output probabilities already
 * (KF_ERR_BAD_REQUEST).  Returns 0, or -1 with *err and a message naming
 * the model and version. */
int model_check_job(const model_t *m, const job_t *job, kf_err_t *err, char *errstr,
                    size_t errstr_size);

#endif
