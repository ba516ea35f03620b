/* model_registry_internal.h - private to model_registry_read.c and
 * model_registry_admin.c: turning a failed Redis call into an mreg_rc_t and
 * a message.  Not for other modules. */
#ifndef KF_MODEL_REGISTRY_INTERNAL_H
#define KF_MODEL_REGISTRY_INTERNAL_H

#include <hiredis.h>
#include <stddef.h>

#include "model_registry_read.h"

/* Maps an error reply of a registry script ("REFUSED why", "NOTFOUND why")
 * or of Redis itself to a return code and a message in errstr. */
mreg_rc_t mreg_reply_error(const redisReply *r, char *errstr, size_t errstr_size);

/* The context saw an I/O or protocol error during `what`: MREG_IO, with
 * hiredis' reason in errstr. */
mreg_rc_t mreg_io_error(redisContext *c, const char *what, char *errstr, size_t errstr_size);

#endif
