/* kf_error.c - wire names of result error codes (see kf_error.h). */
#include "kf_error.h"

static const char *const err_names[KF_ERR__CNT] = {
    [KF_OK] = "ok",
    [KF_ERR_BAD_REQUEST] = "bad_request",
    [KF_ERR_UNKNOWN_MODEL] = "unknown_model",
    [KF_ERR_SHAPE_MISMATCH] = "shape_mismatch",
    [KF_ERR_EXPIRED] = "expired",
    [KF_ERR_TOO_LARGE] = "too_large",
    [KF_ERR_INTERNAL] = "internal",
    [KF_ERR_QUOTA_EXCEEDED] = "quota_exceeded",
    [KF_ERR_UNAUTHORIZED] = "unauthorized",
};

const char *kf_err_name(kf_err_t err)
{
        if ((int)err < 0 || err >= KF_ERR__CNT)
                return "internal";
        return err_names[err];
}
