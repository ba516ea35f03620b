/* kf_error.h - the error codes a job result can carry.
 *
 * These names are part of the wire contract (docs/protocol.md, result field
 * `error`): add new codes at the end, never rename one. */
#ifndef KF_ERROR_H
#define KF_ERROR_H

typedef enum {
        KF_OK = 0,
        KF_ERR_BAD_REQUEST,    /* the job is not a valid v2 job */
        KF_ERR_UNKNOWN_MODEL,  /* no such model, or no such pinned version */
        KF_ERR_SHAPE_MISMATCH, /* input columns != model input_dim */
        KF_ERR_EXPIRED,        /* picked up after its deadline */
        KF_ERR_TOO_LARGE,      /* over a configured input limit */
        KF_ERR_INTERNAL,       /* the worker failed; not the client's fault */
        KF_ERR_QUOTA_EXCEEDED, /* the user's quota for the current window is used up */
        KF_ERR_UNAUTHORIZED, /* signature missing (when required), invalid, or not the user's key */
        KF_ERR__CNT
} kf_err_t;

/* The wire name of an error code, e.g. "shape_mismatch". Never NULL. */
const char *kf_err_name(kf_err_t err);

#endif
