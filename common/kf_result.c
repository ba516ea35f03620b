/* kf_result.c - decodes result values (kf_result.h). */
#include "kf_result.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "mp_field.h"

#define RESULT_MAX_DEPTH 4

int kf_result_decode(const void *buf, size_t len, kf_result_t *r, char *errstr, size_t errstr_size)
{
        const msgpack_object *shape = NULL, *output = NULL;
        msgpack_unpacked up;
        char why[160], status[16] = "";
        int rc = -1;

        memset(r, 0, sizeof(*r));
        msgpack_unpacked_init(&up);
        switch (mp_unpack_one(buf, len, RESULT_MAX_DEPTH, &up, why, sizeof(why))) {
        case MP_UNPACK_BAD:
                kf_errf(errstr, errstr_size, "result is not valid msgpack: %s", why);
                goto out;
        case MP_UNPACK_NOMEM:
                kf_errf(errstr, errstr_size, "result is not valid msgpack");
                goto out;
        case MP_UNPACK_OK:
                break;
        }
        if (up.data.type != MSGPACK_OBJECT_MAP) {
                kf_errf(errstr, errstr_size, "result is not a msgpack map");
                goto out;
        }
        for (uint32_t i = 0; i < up.data.via.map.size; i++) {
                const msgpack_object *k = &up.data.via.map.ptr[i].key;
                const msgpack_object *v = &up.data.via.map.ptr[i].val;
                const char *bad = NULL;
/* An else-if chain of macros, which clang-format cannot lay out. */
/* clang-format off */
#define STR(name, dst)                                                                             \
        else if (mp_str_eq(k, name)) { if (mp_get_str(v, dst, sizeof(dst))) bad = name; }
#define UINT(name, dst)                                                                            \
        else if (mp_str_eq(k, name)) { if (mp_get_u64(v, &dst)) bad = name; }
                if (mp_str_eq(k, "status")) {
                        if (mp_get_str(v, status, sizeof(status)))
                                bad = "status";
                }
                STR("id", r->id) STR("user", r->user) STR("model", r->model)
                STR("worker", r->worker) STR("source", r->source) STR("error", r->error)
                STR("message", r->message)
                UINT("v", r->v) UINT("enqueued", r->enqueued) UINT("started", r->started)
                UINT("done", r->done) UINT("version", r->version)
                UINT("nonfinite", r->nonfinite)
                else if (mp_str_eq(k, "window")) {
                        if (mp_get_u64(v, &r->window))
                                bad = "window";
                        r->has_window = 1;
                } else if (mp_str_eq(k, "retry_after")) {
                        if (mp_get_u64(v, &r->retry_after))
                                bad = "retry_after";
                        r->has_retry_after = 1;
                } else if (mp_str_eq(k, "shape")) {
                        shape = v;
                } else if (mp_str_eq(k, "output")) {
                        output = v;
                }
#undef STR
#undef UINT
                /* clang-format on */
                /* clang-format on */
                if (bad) {
                        kf_errf(errstr, errstr_size,
                                "result field '%s' has the wrong type or "
                                "is too long",
                                bad);
                        goto out;
                }
        }
        if (!status[0] || !r->id[0] || !r->user[0]) {
                kf_errf(errstr, errstr_size, "result lacks %s",
                        !status[0]  ? "'status'"
                        : !r->id[0] ? "'id'"
                                    : "'user'");
                goto out;
        }
        r->ok = !strcmp(status, "ok");
        if (!r->ok && strcmp(status, "error")) {
                kf_errf(errstr, errstr_size, "result status must be ok or error");
                goto out;
        }
        if (r->ok) {
                uint64_t rows, cols;
                if (!shape || shape->type != MSGPACK_OBJECT_ARRAY || shape->via.array.size != 2 ||
                    mp_get_u64(&shape->via.array.ptr[0], &rows) ||
                    mp_get_u64(&shape->via.array.ptr[1], &cols) || rows > UINT32_MAX ||
                    cols > UINT32_MAX) {
                        kf_errf(errstr, errstr_size, "ok result needs 'shape' [rows, cols]");
                        goto out;
                }
                if (!output || output->type != MSGPACK_OBJECT_BIN ||
                    (uint64_t)output->via.bin.size != rows * cols * 4) {
                        kf_errf(errstr, errstr_size,
                                "ok result's 'output' must be %llu x %llu float32 values",
                                (unsigned long long)rows, (unsigned long long)cols);
                        goto out;
                }
                r->rows = (uint32_t)rows;
                r->cols = (uint32_t)cols;
                if (!(r->output = malloc(output->via.bin.size ? output->via.bin.size : 1))) {
                        kf_errf(errstr, errstr_size, "out of memory");
                        goto out;
                }
                mp_f32_le_read(r->output, output->via.bin.ptr, (size_t)rows * cols);
        } else if (!r->error[0]) {
                kf_errf(errstr, errstr_size, "error result lacks 'error'");
                goto out;
        }
        rc = 0;
out:
        msgpack_unpacked_destroy(&up);
        return rc;
}

void kf_result_clear(kf_result_t *r)
{
        free(r->output);
        r->output = NULL;
}
